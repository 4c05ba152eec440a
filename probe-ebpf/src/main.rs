//! netprobe's kernel program: a TC/TCX classifier for the host side of pod veths.
//!
//! It parses Ethernet (802.1Q/802.1ad) → IPv4/IPv6 → TCP/UDP/ICMP/ICMPv6, passes every
//! packet on unchanged, and for the few packets that can change a connection's verdict
//! (SYN, SYN-ACK, RST, ICMP destination-unreachable, DNS) bumps a per-flow counter and
//! hands the packet's leading bytes to userspace through a ring buffer.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    allow(internal_features)
)]

#[cfg(target_arch = "bpf")]
mod classifier;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "probe-ebpf is netprobe's kernel program; it is built for the BPF target by probe-agent's build script"
    );
}
