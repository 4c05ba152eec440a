//! What a stopped agent may leave in the kernel: its programs, attached.
//!
//! A TCX link or a clsact filter holds its program: a program of the agent that is still
//! loaded once the agent's process is gone is attached somewhere. So the check is on the
//! programs the agent's process held, plus the veths' clsact filters, which is where the
//! agent attaches in its fallback mode.

use anyhow::{Context, Result};
use lab::exec;
use serde_json::Value;

/// A loaded program: id and name.
pub type Program = (u64, String);

fn programs() -> Result<Vec<Value>> {
    let out = exec::run(&mut exec::command("bpftool", ["--json", "prog", "show"]))?;
    let all: Value = serde_json::from_str(&out).context("bpftool's JSON")?;
    Ok(all.as_array().cloned().unwrap_or_default())
}

/// The programs process `pid` holds: those its descriptors (programs, TCX links) refer
/// to, from /proc/<pid>/fdinfo (Debian's bpftool does not list holders).
pub fn held_by(pid: u32) -> Result<Vec<Program>> {
    let mut ids = Vec::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // A descriptor closed meanwhile is no longer held.
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let id = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|id| id.trim().parse::<u64>().ok());
        if let Some(id) = id
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    Ok(programs()?
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_owned())))
        .filter(|(id, _)| ids.contains(id))
        .collect())
}

/// Those of `ids` still loaded.
pub fn still_loaded(ids: &[Program]) -> Result<Vec<Program>> {
    let loaded: Vec<u64> = programs()?
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect();
    Ok(ids
        .iter()
        .filter(|(id, _)| loaded.contains(id))
        .cloned()
        .collect())
}

/// The tc filters on `dev`'s ingress and egress hooks (empty when none, or no clsact).
pub fn tc_filters(dev: &str) -> Result<String> {
    let mut found = String::new();
    for hook in ["ingress", "egress"] {
        let out = exec::run(&mut exec::command(
            "tc",
            ["filter", "show", "dev", dev, hook],
        ))?;
        if !out.trim().is_empty() {
            found.push_str(&format!("{dev} {hook}: {}\n", out.trim()));
        }
    }
    Ok(found)
}
