//! The maps of the foreign test program, shared with the tests that fill them.
//!
//! The program stands for a CNI's eBPF datapath (Cilium, Calico eBPF) on a pod's host
//! veth: it drops TCP to the ports in [`DROP_PORTS_MAP`] (a policy drop) and redirects
//! IPv4 packets whose destination is in [`REDIRECTS_MAP`] straight to another interface,
//! and it ends the chain (TC_ACT_OK) for everything else, as those datapaths do.
#![no_std]

/// The classifier's name in the object.
pub const PROGRAM: &str = "foreign";
/// Hash map: TCP destination port (host order) → 1. Matching packets are dropped.
pub const DROP_PORTS_MAP: &str = "FOREIGN_DROP_PORTS";
/// Hash map: IPv4 destination (the header's four bytes, read as a native u32) → [`Redirect`].
pub const REDIRECTS_MAP: &str = "FOREIGN_REDIRECTS";

/// `bpf_redirect_peer`: into the peer of a veth (the pod's side), skipping the host side's
/// egress hook and the node's stack, as Cilium and Calico eBPF deliver to local pods.
pub const REDIRECT_PEER: u32 = 0;
/// `bpf_redirect` to the egress of an interface (its egress hook runs).
pub const REDIRECT_EGRESS: u32 = 1;
/// `bpf_redirect_neigh`: egress of an interface, the kernel filling in the MACs.
pub const REDIRECT_NEIGH: u32 = 2;

/// Where a redirected packet goes, and the MACs it gets on the way (but for
/// [`REDIRECT_NEIGH`], which resolves them itself).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub ifindex: u32,
    /// [`REDIRECT_PEER`], [`REDIRECT_EGRESS`] or [`REDIRECT_NEIGH`].
    pub how: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only integers and byte arrays, no padding (4 + 4 + 6 + 6 bytes).
unsafe impl aya::Pod for Redirect {}
