//! Arbitrary decoded key/value pairs through the API's query parser (`Filter::parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use probe_agent_fuzz::check_query;

fuzz_target!(|pairs: Vec<(String, String)>| {
    check_query(&pairs);
});
