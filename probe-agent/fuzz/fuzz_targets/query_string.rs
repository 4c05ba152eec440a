//! Raw query strings the way the API gets them: a request target with its limit
//! (8 KiB, else a 414), parsed as a URI (else the server answers 400 before any handler),
//! decoded by axum's `Query` (else a 400) and then by `Filter::parse`.
#![no_main]

use axum::{extract::Query, http::Uri};
use libfuzzer_sys::fuzz_target;
use probe_agent::serve::Limits;
use probe_agent_fuzz::check_query;

fuzz_target!(|data: &[u8]| {
    let target = [b"/v1/verdicts?".as_slice(), data].concat();
    if target.len() > Limits::default().max_uri_bytes {
        return;
    }
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    match Query::<Vec<(String, String)>>::try_from_uri(&uri) {
        Ok(Query(pairs)) => check_query(&pairs),
        Err(rejection) => assert!(!rejection.body_text().is_empty()),
    }
});
