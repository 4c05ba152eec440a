//! Search-path expansions folded into their lookup. With `ndots:5` one lookup of
//! `api.example.com` is three NXDOMAINs for `api.example.com.<suffix>` before the
//! answer; the agent marks those `search_path_expansion` (not failures), and a reader
//! wants the one lookup, not four rows.

use chrono::TimeDelta;

use super::Row;
use crate::model::Cause;

/// Queries of one lookup are this close in time (the agent's own lookup window is 30 s).
const LOOKUP_WINDOW: TimeDelta = TimeDelta::seconds(30);

/// Drops each expansion whose lookup is among `rows` and counts it on that lookup's row:
/// the DNS row of the same agent, client address and query type whose name starts with
/// the same label (every name a lookup tries is `<asked>.<suffix>` or `<asked>.`),
/// nearest in time. An expansion whose lookup is not listed stays.
pub fn fold_expansions(rows: Vec<Row>) -> Vec<Row> {
    let is_expansion = |row: &Row| row.verdict.cause == Some(Cause::SearchPathExpansion);
    let first_label = |row: &Row| {
        let dns = row.verdict.dns.as_ref()?;
        Some((dns.qname.split('.').next()?.to_string(), dns.qtype.clone()))
    };
    let mut counted = vec![0; rows.len()];
    let mut folded = vec![false; rows.len()];
    for (i, expansion) in rows.iter().enumerate() {
        let Some(label) = first_label(expansion).filter(|_| is_expansion(expansion)) else {
            continue;
        };
        let v = &expansion.verdict;
        let lookup = rows
            .iter()
            .enumerate()
            .filter(|(_, row)| !is_expansion(row))
            .filter(|(_, row)| row.node == expansion.node)
            .filter(|(_, row)| row.verdict.flow.src_ip == v.flow.src_ip)
            .filter(|(_, row)| first_label(row).as_ref() == Some(&label))
            .map(|(j, row)| ((row.verdict.first_seen - v.last_seen).abs(), j))
            .filter(|(apart, _)| *apart <= LOOKUP_WINDOW)
            .min();
        if let Some((_, j)) = lookup {
            counted[j] += 1;
            folded[i] = true;
        }
    }
    rows.into_iter()
        .zip(counted)
        .zip(folded)
        .filter(|(_, folded)| !folded)
        .map(|((mut row, counted), _)| {
            row.expansions += counted;
            row
        })
        .collect()
}
