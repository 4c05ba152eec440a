//! Playing the catalog's incidents (`lab::incidents`), printing what each client saw.

use anyhow::Result;
use lab::{
    Node,
    incidents::{CATALOG, Cluster, Incident, Outcome, Runner},
};

use super::OUTAGE_QUIET;

/// Plays every incident of the catalog; `alive` is called between them (agent still up,
/// no Ctrl-C). `with_agent`: wait before the node-wide outage so that the agent does not
/// mix it up with the incidents before it (it compares the pod pairs of the last 10 s).
pub(super) fn play(
    node: &Node,
    cluster: &Cluster,
    with_agent: bool,
    alive: &mut dyn FnMut() -> Result<()>,
) -> Result<Vec<Outcome>> {
    let incidents: Vec<&'static Incident> = CATALOG.iter().collect();
    let background: Vec<&str> = incidents
        .iter()
        .filter(|i| i.hangs())
        .map(|i| i.name)
        .collect();
    println!(
        "  (in the background, at once: {}; the node-wide outage comes last{})\n",
        background.join(", "),
        if with_agent {
            format!(
                ", {} s after the others, once their pairs have left the agent's 10 s window",
                OUTAGE_QUIET.as_secs()
            )
        } else {
            String::new()
        }
    );
    let mut report = |o: &Outcome| {
        let mark = if o.as_expected { "ok " } else { "BAD" };
        println!(
            "  [{mark}] {}: {}\n        saw: {}\n        netprobe should say: {}",
            o.incident.name,
            o.incident.title,
            o.saw,
            should_say(o.incident)
        );
    };
    Runner {
        node,
        cluster,
        quiet_before_node_wide: if with_agent {
            OUTAGE_QUIET
        } else {
            std::time::Duration::ZERO
        },
        alive,
        report: &mut report,
    }
    .play(&incidents)
}

/// The verdicts and causes an incident must get, in a line.
fn should_say(incident: &Incident) -> String {
    let mut said: Vec<String> = Vec::new();
    for expect in incident.expect {
        let mut s = match expect.cause {
            Some(cause) => format!("{} [{cause}]", expect.verdict),
            None => format!("{}, no cause", expect.verdict),
        };
        if let Some(first) = expect.reason.first() {
            s.push_str(&format!(" ({:?})", first.trim_start_matches([' ', ':'])));
        }
        if !said.contains(&s) {
            said.push(s);
        }
    }
    said.join("; ")
}
