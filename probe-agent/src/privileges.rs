//! The agent's capabilities: which it holds, and dropping those it no longer needs once
//! its programs are loaded.
//!
//! Loading needs CAP_BPF, CAP_PERFMON (the verifier allows pointer arithmetic on packet
//! data only to perfmon-capable loaders) and CAP_NET_ADMIN; afterwards attaching to a new
//! veth needs CAP_NET_ADMIN (TCX links, clsact filters) and CAP_BPF (every bpf() call, as
//! unprivileged BPF is disabled), nothing else. Capabilities are per thread and new
//! threads inherit them: drop before the runtime starts its threads.

use caps::{CapSet, Capability, CapsHashSet};

/// What attaching new veths and reading the maps needs, kept for the agent's lifetime.
pub const KEPT: [Capability; 2] = [Capability::CAP_BPF, Capability::CAP_NET_ADMIN];

#[derive(Debug, thiserror::Error)]
#[error("changing capabilities: {0}")]
pub struct CapsError(#[from] caps::errors::CapsError);

/// The effective capabilities of the calling thread, by name, sorted.
pub fn effective() -> Result<Vec<String>, CapsError> {
    Ok(names(&caps::read(None, CapSet::Effective)?))
}

/// Drops every capability but [`KEPT`] from the calling thread's effective, permitted,
/// inheritable and ambient sets, and from its bounding set when it may (CAP_SETPCAP),
/// so neither this process nor anything it could start gets them back. Returns what
/// is held afterwards.
pub fn drop_unneeded() -> Result<Vec<String>, CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let keep: CapsHashSet = KEPT
        .into_iter()
        .filter(|cap| permitted.contains(cap))
        .collect();
    // Bounding first: removing from it needs CAP_SETPCAP, which goes next.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::read(None, CapSet::Bounding)? {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    effective()
}

fn names(set: &CapsHashSet) -> Vec<String> {
    let mut names: Vec<String> = set.iter().map(ToString::to_string).collect();
    names.sort();
    names
}
