//! docs/demo.md's incident table, generated from the catalog; a unit test holds the
//! document to it.

use std::fmt::Write as _;

use super::{CATALOG, Flows, Incident};

/// The lines around the generated table in docs/demo.md.
pub const TABLE_BEGIN: &str = "<!-- incidents: generated from lab/src/incidents/catalog.rs; regenerate with `NETPROBE_WRITE_DOCS=1 cargo test -p lab incident_table` -->";
pub const TABLE_END: &str = "<!-- end of incidents -->";

/// The incident table, in markdown: one row per incident of the catalog.
pub fn markdown_table() -> String {
    let mut s = String::from(
        "| incident | what runs | what the user sees | verdict | cause |\n|---|---|---|---|---|\n",
    );
    for incident in CATALOG {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            incident.name,
            incident.runs,
            incident.sees.describe(),
            verdicts(incident),
            causes(incident),
        );
    }
    s
}

/// The verdicts an incident gets, each once, in the catalog's order.
fn verdicts(incident: &Incident) -> String {
    let node_wide = incident
        .expect
        .iter()
        .any(|e| matches!(e.flows, Flows::Node { .. }));
    let mut out: Vec<String> = Vec::new();
    for expect in incident.expect {
        if node_wide && !matches!(expect.flows, Flows::Node { .. }) {
            continue;
        }
        let v = match expect.flows {
            Flows::Node { .. } => format!("one node verdict `{}`", expect.verdict),
            _ => format!("`{}`", expect.verdict),
        };
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out.join(", ")
}

/// The causes an incident gets; `—` for none.
fn causes(incident: &Incident) -> String {
    let mut out: Vec<String> = Vec::new();
    for expect in incident.expect {
        let c = match expect.cause {
            None => continue,
            Some(c) if !expect.is_failure() => format!("`{c}` (no failure)"),
            Some(c) => format!("`{c}`"),
        };
        if !out.contains(&c) {
            out.push(c);
        }
    }
    if out.is_empty() {
        "—".into()
    } else {
        out.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incident_table_in_docs_is_the_catalogs() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/demo.md");
        let doc = std::fs::read_to_string(path).expect("docs/demo.md");
        let begin = doc
            .find(TABLE_BEGIN)
            .unwrap_or_else(|| panic!("docs/demo.md lacks the line {TABLE_BEGIN}"));
        let start = begin + TABLE_BEGIN.len() + 1;
        let end = start
            + doc[start..]
                .find(TABLE_END)
                .unwrap_or_else(|| panic!("docs/demo.md lacks the line {TABLE_END}"));
        let table = markdown_table();
        if doc[start..end] == table {
            return;
        }
        if std::env::var_os("NETPROBE_WRITE_DOCS").is_some() {
            let updated = format!("{}{table}{}", &doc[..start], &doc[end..]);
            std::fs::write(path, updated).expect("writing docs/demo.md");
            return;
        }
        panic!(
            "docs/demo.md's incident table is not the catalog's (lab/src/incidents/catalog.rs): \
             regenerate it with `NETPROBE_WRITE_DOCS=1 cargo test -p lab incident_table`\n\
             expected:\n{table}"
        );
    }

    #[test]
    fn every_incident_is_whole() {
        let mut names = std::collections::HashSet::new();
        for incident in CATALOG {
            assert!(names.insert(incident.name), "{} twice", incident.name);
            assert!(
                !incident.expect.is_empty(),
                "{}: no expectation",
                incident.name
            );
            assert!(
                incident.expect.iter().any(|e| e.is_failure()) || !incident.hangs(),
                "{}: its client hangs, yet nothing fails",
                incident.name
            );
        }
    }
}
