//! Checking the agent's verdicts against the catalog (`lab::incidents::check`): each
//! incident's verdict, cause and reason, as `/v1/verdicts` lists them.

use anyhow::{Context, Result, ensure};
use lab::incidents::{self, CATALOG, Cluster, Incident};
use serde_json::Value;

use super::{agent::Agent, http_get};

/// Looks for each incident's verdicts in `/v1/verdicts`; prints the result and returns
/// what is missing or wrong.
pub(super) fn check_verdicts(agent: &Agent, cluster: &Cluster) -> Result<Vec<String>> {
    let get = |query: &str| -> Result<Value> {
        let path = format!("/v1/verdicts?limit=10000{query}");
        let (status, body) = http_get(agent.listen, &path)?;
        ensure!(status == 200, "GET {path}: HTTP {status}: {body}");
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON"))
    };
    // Every flow, the ones folded under a node-level verdict included.
    let expanded = get("&expand=true")?;
    let listed = get("")?;
    let all: Vec<&Incident> = CATALOG.iter().collect();
    let report = incidents::check(cluster, &all, &expanded, &listed);
    println!(
        "\n== Did every incident get its verdict and cause? ({} verdicts tracked)\n",
        expanded["verdicts"].as_array().map_or(0, Vec::len)
    );
    for line in &report.lines {
        println!("{line}");
    }
    Ok(report.problems)
}
