//! Who runs first on a hook. eBPF datapaths (Cilium ≥ 1.16, Calico eBPF) attach to the
//! same veths and end the chain (a policy drop, a redirect): a classifier behind them
//! never sees those packets. So ours goes first, and the periodic resync checks that it
//! still is when another program came later.

use std::io;

use aya::programs::TcAttachType;
use futures::TryStreamExt;
use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};

use super::AttachError;

/// A clsact filter on one hook, in the order the kernel runs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    /// The BPF program's name, for `bpf` filters.
    pub program: Option<String>,
}

/// The TCX programs on `hook` of `interface` ahead of `ours` (by program id), by id, in
/// run order. Empty when ours is first; every program when ours is not there.
pub fn tcx_ahead_of(index: u32, hook: TcAttachType, ours: u32) -> io::Result<Vec<u32>> {
    Ok(tcx_programs(index, hook)?
        .into_iter()
        .take_while(|id| *id != ours)
        .collect())
}

/// Whether `hook` of interface `index` has any TCX program: clsact filters run after all.
pub fn has_tcx_programs(index: u32, hook: TcAttachType) -> bool {
    tcx_programs(index, hook).is_ok_and(|programs| !programs.is_empty())
}

/// `union bpf_attr`'s part for BPF_PROG_QUERY (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// More than any datapath stacks on one hook.
const MAX_TCX_PROGRAMS: usize = 64;

/// The ids of the TCX programs on one hook, in run order. By BPF_PROG_QUERY itself:
/// aya's `query_tcx` also opens each program by id, which needs CAP_SYS_ADMIN, and the
/// agent keeps only CAP_BPF and CAP_NET_ADMIN.
fn tcx_programs(index: u32, hook: TcAttachType) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; MAX_TCX_PROGRAMS];
    let mut query = ProgQuery {
        target_ifindex: index,
        attach_type: match hook {
            TcAttachType::Ingress => BPF_TCX_INGRESS,
            _ => BPF_TCX_EGRESS,
        },
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: MAX_TCX_PROGRAMS as u32,
        ..ProgQuery::default()
    };
    // SAFETY: `query` is a valid BPF_PROG_QUERY attribute whose `prog_ids` points at
    // `prog_cnt` writable u32s, all alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut query as *mut ProgQuery,
            std::mem::size_of::<ProgQuery>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let count = (query.prog_cnt as usize).min(MAX_TCX_PROGRAMS);
    Ok(ids[..count].to_vec())
}

/// The clsact filters on `hook` of interface `index`, in run order (by priority, and
/// within one priority as the kernel lists them, which is the order it runs them).
pub async fn clsact_filters(
    handle: &rtnetlink::Handle,
    index: u32,
    hook: TcAttachType,
) -> Result<Vec<Filter>, AttachError> {
    let request = handle.traffic_filter(index as i32).get();
    let request = match hook {
        TcAttachType::Ingress => request.ingress(),
        _ => request.egress(),
    };
    let mut dump = request.execute();
    let mut filters = Vec::new();
    let result = async {
        while let Some(message) = dump.try_next().await? {
            // A filter dump also lists each priority's head without a handle: skip it.
            if message.header.handle.major == 0 && message.header.handle.minor == 0 {
                continue;
            }
            filters.push(Filter {
                priority: (message.header.info >> 16) as u16,
                program: message
                    .attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        TcAttribute::Options(options) => options.iter().find_map(|o| match o {
                            TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => Some(name.clone()),
                            _ => None,
                        }),
                        _ => None,
                    }),
            });
        }
        Ok::<(), rtnetlink::Error>(())
    }
    .await;
    match result {
        Ok(()) => {
            // Stable: the kernel's order within a priority is kept.
            filters.sort_by_key(|f| f.priority);
            Ok(filters)
        }
        // No clsact qdisc (yet): no filters.
        Err(rtnetlink::Error::NetlinkError(err)) if err.raw_code() == -libc::EINVAL => Ok(vec![]),
        Err(err) => Err(AttachError::ListFilters(err)),
    }
}

/// The filters ahead of ours (`program`): every filter before the first of ours.
pub fn filters_ahead_of<'a>(filters: &'a [Filter], program: &str) -> &'a [Filter] {
    let first_ours = filters
        .iter()
        .position(|f| f.program.as_deref() == Some(program))
        .unwrap_or(filters.len());
    &filters[..first_ours]
}

/// The priority that puts a new filter of ours ahead of every `foreign` one: one below
/// the lowest. At priority 1 (what Cilium uses) there is none lower; a new `bpf` filter
/// at the same priority is put at the head of that priority's list, so 1 it is. `None`
/// with no foreign filter: the kernel's own choice will do.
pub fn priority_ahead_of(foreign: &[Filter]) -> Option<u16> {
    let lowest = foreign.iter().map(|f| f.priority).min()?;
    Some(lowest.saturating_sub(1).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(priority: u16, program: &str) -> Filter {
        Filter {
            priority,
            program: Some(program.to_owned()),
        }
    }

    #[test]
    fn ours_goes_below_the_lowest_foreign_priority() {
        assert_eq!(priority_ahead_of(&[]), None);
        assert_eq!(
            priority_ahead_of(&[filter(49152, "cil_from_container")]),
            Some(49151)
        );
        assert_eq!(
            priority_ahead_of(&[filter(7, "a"), filter(3, "b")]),
            Some(2)
        );
        assert_eq!(
            priority_ahead_of(&[filter(1, "cil_from_container")]),
            Some(1)
        );
    }

    #[test]
    fn filters_ahead_are_those_before_the_first_of_ours() {
        let chain = [
            filter(1, "cil_from_container"),
            filter(2, "netprobe_ingress"),
            filter(3, "other"),
        ];
        assert_eq!(filters_ahead_of(&chain, "netprobe_ingress"), &chain[..1]);
        assert!(filters_ahead_of(&chain[1..], "netprobe_ingress").is_empty());
        // Not there at all: everything is ahead.
        assert_eq!(filters_ahead_of(&chain[2..], "netprobe_ingress").len(), 1);
    }
}
