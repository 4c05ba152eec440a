//! The classifier: drop by port, redirect by destination, else end the chain.

use core::ptr;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
};
use foreign_ebpf::{REDIRECT_NEIGH, REDIRECT_PEER, Redirect};

#[map]
static FOREIGN_DROP_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(16, 0);

#[map]
static FOREIGN_REDIRECTS: HashMap<u32, Redirect> = HashMap::with_max_entries(16, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;

#[classifier]
pub fn foreign(ctx: TcContext) -> i32 {
    decide(&ctx).unwrap_or(TC_ACT_OK as i32)
}

fn decide(ctx: &TcContext) -> Result<i32, i64> {
    if u16::from_be(ctx.load::<u16>(12)?) != ETH_P_IP {
        return Ok(TC_ACT_OK as i32);
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN)?;
    let protocol: u8 = ctx.load(ETH_HLEN + 9)?;
    let destination: u32 = ctx.load(ETH_HLEN + 16)?;
    if protocol == IPPROTO_TCP {
        let header = usize::from(version_ihl & 0x0f) * 4;
        let port = u16::from_be(ctx.load::<u16>(ETH_HLEN + header + 2)?);
        // SAFETY: the value is copied out at once; nothing holds the reference.
        if unsafe { FOREIGN_DROP_PORTS.get(&port) }.is_some() {
            return Ok(TC_ACT_SHOT as i32);
        }
    }
    // SAFETY: as above.
    let Some(redirect) = (unsafe { FOREIGN_REDIRECTS.get(&destination) }).copied() else {
        return Ok(TC_ACT_OK as i32);
    };
    if redirect.how == REDIRECT_NEIGH {
        // SAFETY: no neighbour parameters: the kernel looks the next hop up itself.
        return Ok(unsafe { bpf_redirect_neigh(redirect.ifindex, ptr::null_mut(), 0, 0) } as i32);
    }
    ctx.store(0, &redirect.dst_mac, 0)?;
    ctx.store(6, &redirect.src_mac, 0)?;
    // SAFETY: plain helper calls on the current packet.
    let action = unsafe {
        if redirect.how == REDIRECT_PEER {
            bpf_redirect_peer(redirect.ifindex, 0)
        } else {
            bpf_redirect(redirect.ifindex, 0)
        }
    };
    Ok(action as i32)
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
