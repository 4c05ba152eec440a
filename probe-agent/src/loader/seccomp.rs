//! Telling a seccomp refusal of bpf() from a missing capability.
//!
//! The kernel answers bpf() with EPERM when the caller lacks CAP_BPF, and so does a
//! seccomp filter that forbids the syscall: podman's and CRI-O's default profiles
//! (containers/common's seccomp.json) allow bpf() and perf_event_open() only to a
//! container holding CAP_SYS_ADMIN, while containerd's also allows them with CAP_BPF and
//! CAP_PERFMON. The agent holds CAP_BPF and not CAP_SYS_ADMIN, so under the former it
//! fails with a bare "Operation not permitted" that reads like a missing capability.
//! When the thread holds CAP_BPF and runs under a seccomp filter, an EPERM from loading
//! can only be the filter's: [`refusal`] says so, and what to do.

use std::{error::Error, io};

/// CAP_BPF's bit in the capability sets (include/uapi/linux/capability.h).
const CAP_BPF: u32 = 39;

/// What the agent says when seccomp refused bpf().
pub const REFUSED: &str = "bpf() was refused (EPERM) although the agent holds CAP_BPF: the \
     container's seccomp profile forbids it (podman's and CRI-O's default profiles allow \
     bpf() only with CAP_SYS_ADMIN). Use the netprobe seccomp profile \
     (deploy/components/seccomp, see deploy/README.md) or Unconfined";

/// What /proc/<pid>/status says about seccomp and the effective capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// `Seccomp: 2`: a filter (mode 1, strict, would have killed the process).
    pub seccomp_filter: bool,
    /// CAP_BPF in `CapEff`.
    pub cap_bpf: bool,
}

impl Status {
    /// Parses the text of /proc/<pid>/status; `None` when the fields are missing (a
    /// kernel without seccomp, or not that file).
    pub fn parse(text: &str) -> Option<Status> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let seccomp: u32 = field("Seccomp")?.parse().ok()?;
        let cap_eff = u64::from_str_radix(field("CapEff")?, 16).ok()?;
        Some(Status {
            seccomp_filter: seccomp == 2,
            cap_bpf: cap_eff & (1 << CAP_BPF) != 0,
        })
    }

    /// The calling thread's (capabilities are per thread).
    pub fn current() -> Option<Status> {
        Status::parse(&std::fs::read_to_string("/proc/thread-self/status").ok()?)
    }
}

/// Whether `error` (or one of its sources) is an EPERM from the kernel.
pub fn is_eperm(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            == Some(libc::EPERM)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Whether a load that failed with `error` was refused by a seccomp filter: EPERM while
/// the thread holds CAP_BPF under a filter.
pub fn refusal(error: &(dyn Error + 'static), status: Option<Status>) -> bool {
    matches!(
        status,
        Some(Status {
            seccomp_filter: true,
            cap_bpf: true
        })
    ) && is_eperm(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/self/status of the agent under podman's default profile with the
    /// DaemonSet's capabilities (BPF, NET_ADMIN, PERFMON), trimmed.
    const IN_PODMAN: &str = "Name:\tprobe-agent\nUmask:\t0022\nState:\tR (running)\n\
        CapInh:\t0000000000000000\nCapPrm:\t000000c000001000\nCapEff:\t000000c000001000\n\
        CapBnd:\t000000c000001000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n\
        Seccomp:\t2\nSeccomp_filters:\t1\n";

    #[test]
    fn a_filtered_container_holding_cap_bpf() {
        assert_eq!(
            Status::parse(IN_PODMAN),
            Some(Status {
                seccomp_filter: true,
                cap_bpf: true
            })
        );
    }

    #[test]
    fn no_filter_or_no_cap_bpf() {
        let host = IN_PODMAN.replace("Seccomp:\t2", "Seccomp:\t0");
        assert!(!Status::parse(&host).unwrap().seccomp_filter);
        // NET_ADMIN (12) and PERFMON (38) only.
        let without_bpf =
            IN_PODMAN.replace("CapEff:\t000000c000001000", "CapEff:\t0000004000001000");
        assert!(!Status::parse(&without_bpf).unwrap().cap_bpf);
        assert_eq!(Status::parse("Name:\tx\n"), None);
        assert_eq!(Status::parse("Seccomp:\tx\nCapEff:\t0\n"), None);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("failed to create map")]
    struct Wrapped(#[source] io::Error);

    #[test]
    fn eperm_is_found_down_the_chain() {
        let status = Status::parse(IN_PODMAN);
        let eperm = Wrapped(io::Error::from_raw_os_error(libc::EPERM));
        assert!(refusal(&eperm, status));
        let einval = Wrapped(io::Error::from_raw_os_error(libc::EINVAL));
        assert!(!refusal(&einval, status));
        let unfiltered = Status {
            seccomp_filter: false,
            cap_bpf: true,
        };
        assert!(!refusal(&eperm, Some(unfiltered)));
        assert!(!refusal(&eperm, None));
    }

    #[test]
    fn the_message_names_seccomp_the_profiles_and_the_fix() {
        for words in [
            "seccomp",
            "CAP_BPF",
            "CAP_SYS_ADMIN",
            "deploy/components/seccomp",
            "Unconfined",
        ] {
            assert!(REFUSED.contains(words), "{words}");
        }
    }
}
