//! Keeps the classifiers attached to every matching interface: the ones there at start,
//! the ones netlink announces, minus the ones that go away. Ours run first on each hook
//! ([`chain`]): a CNI's eBPF program that drops or redirects ends the chain there.

mod chain;
mod discover;

use std::{
    collections::{HashMap, HashSet},
    io,
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
    },
};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage, route::RouteMessage};
use netlink_sys::{AsyncSocket, SocketAddr};
use probe_ebpf::{EGRESS_PROGRAM, INGRESS_PROGRAM};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub use discover::{AUTO, Link, Selector};

use crate::{
    config::AttachModeArg,
    loader,
    model::{AttachMode, InterfaceStatus},
};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("bad interface glob {glob:?}: {source}")]
    Glob {
        glob: String,
        #[source]
        source: globset::Error,
    },
    #[error(transparent)]
    Load(#[from] loader::LoadError),
    #[error("attaching {program} to {interface} with TCX: {source}")]
    Tcx {
        program: &'static str,
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("adding the clsact qdisc to {interface}: {source}")]
    Clsact {
        interface: String,
        #[source]
        source: TcError,
    },
    #[error("attaching {program} to {interface} with a clsact filter: {source}")]
    Filter {
        program: &'static str,
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("netlink: {0}")]
    Netlink(#[from] io::Error),
    #[error("listing interfaces: {0}")]
    ListLinks(#[from] rtnetlink::Error),
    #[error("listing the TCX programs of {interface}: {source}")]
    Query {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("listing clsact filters: {0}")]
    ListFilters(rtnetlink::Error),
    #[error("reading the id of program {program}: {source}")]
    ProgramId {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
}

/// One interface with both hooks attached.
struct Attachment {
    status: InterfaceStatus,
    /// By hook, as in [`HOOKS`]; `None` only while a hook is being moved.
    links: [Option<SchedClassifierLinkId>; 2],
    /// A clsact attachment behind TCX programs was told about once.
    warned_behind_tcx: bool,
}

/// The two hooks, with the program each runs.
const HOOKS: [(TcAttachType, &str); 2] = [
    (TcAttachType::Ingress, INGRESS_PROGRAM),
    (TcAttachType::Egress, EGRESS_PROGRAM),
];

/// Another program was found ahead of ours on a hook, and ours was put first again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reheaded {
    pub interface: String,
    pub program: &'static str,
    /// What ran ahead, by name.
    pub ahead: Vec<String>,
}

/// Owns the loaded programs and their attachments.
pub struct Attacher {
    ebpf: Ebpf,
    selector: Selector,
    /// Interfaces carrying the node's default routes, as last listed: never pod-facing.
    uplinks: HashSet<u32>,
    mode: AttachModeArg,
    /// The kernel's ids of our ingress and egress programs, to find them in a TCX chain.
    program_ids: [u32; 2],
    attached: HashMap<u32, Attachment>,
    /// Interfaces forgotten since the last [`Attacher::take_forgotten`].
    forgotten: Vec<u32>,
    /// One netlink connection for the filter dumps of every check, opened at first use.
    netlink: Option<rtnetlink::Handle>,
}

/// A change netlink reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    Added(Link),
    Removed {
        index: u32,
    },
    /// The watch socket overflowed (ENOBUFS): the kernel dropped link messages, so
    /// only a full listing can tell what changed. The socket itself stays usable.
    Resync,
}

impl Attacher {
    pub fn new(
        mut ebpf: Ebpf,
        selector: Selector,
        mode: AttachModeArg,
    ) -> Result<Self, AttachError> {
        let mut program_ids = [0; 2];
        for (id, (_, program)) in program_ids.iter_mut().zip(HOOKS) {
            *id = loader::classifier(&mut ebpf, program)?
                .info()
                .map_err(|source| AttachError::ProgramId { program, source })?
                .id();
        }
        Ok(Self {
            ebpf,
            selector,
            uplinks: HashSet::new(),
            mode,
            program_ids,
            attached: HashMap::new(),
            forgotten: Vec::new(),
            netlink: None,
        })
    }

    /// The clsact filters on a hook, over the kept netlink connection; a failed dump
    /// drops it, so the next one reconnects.
    async fn clsact_filters(
        &mut self,
        index: u32,
        hook: TcAttachType,
    ) -> Result<Vec<chain::Filter>, AttachError> {
        let handle = match &self.netlink {
            Some(handle) => handle.clone(),
            None => {
                let (connection, handle, _) = rtnetlink::new_connection()?;
                tokio::spawn(connection);
                self.netlink.insert(handle).clone()
            }
        };
        let filters = chain::clsact_filters(&handle, index, hook).await;
        if filters.is_err() {
            self.netlink = None;
        }
        filters
    }

    pub fn selects(&self, link: &Link) -> bool {
        self.selector.selects(link, &self.uplinks)
    }

    pub fn statuses(&self) -> Vec<InterfaceStatus> {
        let mut out: Vec<_> = self.attached.values().map(|a| a.status.clone()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn attached_indices(&self) -> std::collections::HashSet<u32> {
        self.attached.keys().copied().collect()
    }

    pub fn is_attached(&self, index: u32) -> bool {
        self.attached.contains_key(&index)
    }

    /// Attaches both hooks of `name`, ahead of any program already there. Returns the
    /// mode used.
    pub async fn attach(&mut self, index: u32, name: &str) -> Result<AttachMode, AttachError> {
        if let Some(existing) = self.attached.get(&index) {
            if existing.status.name == name {
                return Ok(existing.status.mode);
            }
            // The index was reused by a new interface: the old links died with the old one.
            self.forget(index);
        }
        // Not attached by us, so any filter of ours on it is a killed agent's leftover.
        remove_stale_filters(name);
        let (mode, ingress, egress) = match self.mode {
            AttachModeArg::Tcx => self.attach_tcx(index, name).await?,
            AttachModeArg::Clsact => self.attach_clsact(index, name).await?,
            AttachModeArg::Auto => match self.attach_tcx(index, name).await {
                Ok(links) => links,
                Err(err) => {
                    debug!(interface = name, "TCX unavailable ({err}); using clsact");
                    self.attach_clsact(index, name).await?
                }
            },
        };
        self.attached.insert(
            index,
            Attachment {
                status: InterfaceStatus {
                    name: name.to_string(),
                    ifindex: index,
                    mode,
                    attached_at: Utc::now(),
                    events: 0,
                },
                links: [Some(ingress), Some(egress)],
                warned_behind_tcx: false,
            },
        );
        Ok(mode)
    }

    async fn attach_tcx(
        &mut self,
        index: u32,
        name: &str,
    ) -> Result<(AttachMode, SchedClassifierLinkId, SchedClassifierLinkId), AttachError> {
        let (ingress, egress) = self.attach_both(index, name, AttachMode::Tcx).await?;
        Ok((AttachMode::Tcx, ingress, egress))
    }

    async fn attach_clsact(
        &mut self,
        index: u32,
        name: &str,
    ) -> Result<(AttachMode, SchedClassifierLinkId, SchedClassifierLinkId), AttachError> {
        match tc::qdisc_add_clsact(name) {
            Ok(()) => {}
            // Another program (the CNI's, or ours from before) already added it.
            Err(TcError::NetlinkError(err)) if err.raw_os_error() == Some(libc::EEXIST) => {}
            Err(source) => {
                return Err(AttachError::Clsact {
                    interface: name.to_string(),
                    source,
                });
            }
        }
        let (ingress, egress) = self.attach_both(index, name, AttachMode::Clsact).await?;
        Ok((AttachMode::Clsact, ingress, egress))
    }

    /// Attaches the ingress and egress programs; undoes the first if the second fails.
    async fn attach_both(
        &mut self,
        index: u32,
        name: &str,
        mode: AttachMode,
    ) -> Result<(SchedClassifierLinkId, SchedClassifierLinkId), AttachError> {
        let [
            (ingress_hook, ingress_program),
            (egress_hook, egress_program),
        ] = HOOKS;
        let ingress = self
            .attach_first(index, name, mode, ingress_hook, ingress_program)
            .await?;
        match self
            .attach_first(index, name, mode, egress_hook, egress_program)
            .await
        {
            Ok(egress) => Ok((ingress, egress)),
            Err(err) => {
                self.detach_link(ingress_program, ingress, name);
                Err(err)
            }
        }
    }

    /// Attaches `program` to one hook, at the head of its chain: TCX's first position, or
    /// a clsact priority ahead of every filter already there.
    async fn attach_first(
        &mut self,
        index: u32,
        name: &str,
        mode: AttachMode,
        hook: TcAttachType,
        program: &'static str,
    ) -> Result<SchedClassifierLinkId, AttachError> {
        let options = match mode {
            AttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::first()),
            AttachMode::Clsact => {
                let filters = self.clsact_filters(index, hook).await?;
                let priority = chain::priority_ahead_of(chain::filters_ahead_of(&filters, program));
                TcAttachOptions::Netlink(NlOptions {
                    priority: priority.unwrap_or(0),
                    ..NlOptions::default()
                })
            }
        };
        let interface = name.to_string();
        loader::classifier(&mut self.ebpf, program)?
            .attach_with_options(name, hook, options)
            .map_err(|source| match mode {
                AttachMode::Tcx => AttachError::Tcx {
                    program,
                    interface,
                    source,
                },
                AttachMode::Clsact => AttachError::Filter {
                    program,
                    interface,
                    source,
                },
            })
    }

    /// Puts ours first again wherever another program was put ahead of it since it was
    /// attached (a CNI agent restarting, a second tool). The move detaches and attaches
    /// again: packets in between, microseconds, pass unseen. A hook that cannot be
    /// attached again drops the interface, so the next resync attaches it afresh.
    pub async fn keep_first(&mut self) -> Vec<Reheaded> {
        let mut moved = Vec::new();
        let mut lost = Vec::new();
        let indices: Vec<u32> = self.attached.keys().copied().collect();
        for index in indices {
            let (name, mode) = {
                let status = &self.attached[&index].status;
                (status.name.clone(), status.mode)
            };
            for (slot, (hook, program)) in HOOKS.into_iter().enumerate() {
                let ahead = match self.ahead_of_ours(index, &name, mode, hook, slot).await {
                    Ok(ahead) if ahead.is_empty() => continue,
                    Ok(ahead) => ahead,
                    // Usually the interface is going away; the watch will say so.
                    Err(err) => {
                        debug!(
                            interface = name,
                            program, "checking the hook's order: {err}"
                        );
                        continue;
                    }
                };
                let attachment = self.attached.get_mut(&index).expect("still attached");
                if let Some(link) = attachment.links[slot].take() {
                    self.detach_link(program, link, &name);
                }
                match self.attach_first(index, &name, mode, hook, program).await {
                    Ok(link) => {
                        let attachment = self.attached.get_mut(&index).expect("still attached");
                        attachment.links[slot] = Some(link);
                        warn!(
                            interface = name,
                            program,
                            ahead = ahead.join(","),
                            "another program was put ahead of ours: ours is first again"
                        );
                        moved.push(Reheaded {
                            interface: name.clone(),
                            program,
                            ahead,
                        });
                    }
                    Err(err) => {
                        warn!(
                            interface = name,
                            program, "attaching first again failed: {err}"
                        );
                        lost.push(index);
                        break;
                    }
                }
            }
            if mode == AttachMode::Clsact {
                self.warn_if_behind_tcx(index, &name);
            }
        }
        for index in lost {
            // Its other hook is still ours: forget detaches it, the resync starts over.
            self.forget(index);
        }
        moved
    }

    /// The programs ahead of ours on one hook, by name (empty: ours is first).
    async fn ahead_of_ours(
        &mut self,
        index: u32,
        name: &str,
        mode: AttachMode,
        hook: TcAttachType,
        slot: usize,
    ) -> Result<Vec<String>, AttachError> {
        match mode {
            AttachMode::Tcx => Ok(chain::tcx_ahead_of(index, hook, self.program_ids[slot])
                .map_err(|source| AttachError::Query {
                    interface: name.to_string(),
                    source,
                })?
                .into_iter()
                .map(|id| format!("program {id}"))
                .collect()),
            AttachMode::Clsact => {
                let filters = self.clsact_filters(index, hook).await?;
                Ok(chain::filters_ahead_of(&filters, HOOKS[slot].1)
                    .iter()
                    .map(|f| {
                        f.program
                            .clone()
                            .unwrap_or_else(|| format!("pref {}", f.priority))
                    })
                    .collect())
            }
        }
    }

    /// clsact filters run after every TCX program, whatever their priority: say so once.
    fn warn_if_behind_tcx(&mut self, index: u32, name: &str) {
        let Some(attachment) = self.attached.get_mut(&index) else {
            return;
        };
        if attachment.warned_behind_tcx {
            return;
        }
        if HOOKS
            .iter()
            .any(|(hook, _)| chain::has_tcx_programs(index, *hook))
        {
            attachment.warned_behind_tcx = true;
            warn!(
                interface = name,
                "TCX programs run ahead of every clsact filter here: what they drop or \
                 redirect is never seen; run with --attach-mode tcx"
            );
        }
    }

    fn detach_link(&mut self, program: &'static str, link: SchedClassifierLinkId, name: &str) {
        let result = loader::classifier(&mut self.ebpf, program)
            .map_err(|e| e.to_string())
            .and_then(|p: &mut SchedClassifier| p.detach(link).map_err(|e| e.to_string()));
        if let Err(err) = result {
            // The interface is usually gone already, and its hooks with it.
            debug!(interface = name, program, "detach: {err}");
        }
    }

    /// Forgets an interface that went away; its hooks went with it.
    pub fn forget(&mut self, index: u32) -> Option<String> {
        let attachment = self.attached.remove(&index)?;
        self.forgotten.push(index);
        let name = attachment.status.name;
        for ((_, program), link) in HOOKS.into_iter().zip(attachment.links) {
            if let Some(link) = link {
                self.detach_link(program, link, &name);
            }
        }
        Some(name)
    }

    /// The interfaces forgotten since the last call, so per-interface state kept
    /// elsewhere (the tracker's names) does not grow with every pod ever seen.
    pub fn take_forgotten(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.forgotten)
    }

    /// Detaches from every interface (clsact filters outlive the process otherwise).
    pub fn detach_all(&mut self) {
        let indexes: Vec<u32> = self.attached.keys().copied().collect();
        for index in indexes {
            if let Some(name) = self.forget(index) {
                info!(interface = name, "detached");
            }
        }
    }

    /// Counts an event seen on `index`.
    pub fn count_event(&mut self, index: u32, n: u64) {
        if let Some(attachment) = self.attached.get_mut(&index) {
            attachment.status.events += n;
        }
    }

    /// Applies a netlink change. Returns the interface newly attached, if any.
    pub async fn apply(&mut self, change: &LinkChange) -> Option<(u32, String, AttachMode)> {
        match change {
            LinkChange::Added(link) if self.selects(link) && !self.is_attached(link.index) => {
                let (index, name) = (&link.index, &link.name);
                match self.attach(*index, name).await {
                    Ok(mode) => {
                        info!(interface = %name, ?mode, "attached");
                        Some((*index, name.clone(), mode))
                    }
                    Err(err) => {
                        // Often a veth that disappeared between the event and the attach.
                        warn!(interface = %name, "attach failed: {err}");
                        None
                    }
                }
            }
            LinkChange::Added(link) if !self.selects(link) && self.is_attached(link.index) => {
                // Renamed away from the globs, or now carrying the default route.
                self.forget(link.index);
                None
            }
            LinkChange::Removed { index } => {
                if let Some(name) = self.forget(*index) {
                    info!(interface = name, "interface removed");
                }
                None
            }
            LinkChange::Added(_) | LinkChange::Resync => None,
        }
    }

    /// Brings the attached set in line with a full listing: attaches what is missing,
    /// forgets what is gone. Covers netlink messages lost to a socket overrun.
    pub async fn resync(&mut self, listing: &Links) -> Vec<(u32, String, AttachMode)> {
        let links = &listing.links;
        self.uplinks.clone_from(&listing.uplinks);
        let gone: Vec<u32> = self
            .attached
            .keys()
            .copied()
            .filter(|index| !links.iter().any(|link| link.index == *index))
            .collect();
        for index in gone {
            self.apply(&LinkChange::Removed { index }).await;
        }
        let mut attached = Vec::new();
        for link in links {
            attached.extend(self.apply(&LinkChange::Added(link.clone())).await);
        }
        attached
    }
}

/// Removes the clsact filters running our programs from `name`. Only a killed agent
/// leaves them (TCX links die with their process; clsact filters do not, and a restarted
/// agent would otherwise run next to its dead predecessor's programs, whose maps nobody
/// reads). They are ours by their BPF name, `netprobe_ingress` / `netprobe_egress`: aya
/// names every filter after its program, and the kernel reports that name in filter
/// dumps (`tc filter show` prints it too). Priority and handle are left to the kernel,
/// so they identify nothing. Runs before every attach, in both modes: a TCX agent must
/// also clear what a clsact one left.
fn remove_stale_filters(name: &str) {
    for (hook, program) in HOOKS {
        match tc::qdisc_detach_program(name, hook, program) {
            Ok(()) => info!(
                interface = name,
                program, "removed a clsact filter left behind by an earlier agent"
            ),
            Err(TcError::IoError(err)) if err.kind() == io::ErrorKind::NotFound => {}
            // Usually no clsact qdisc on the interface: then nothing can be left on it.
            Err(err) => debug!(
                interface = name,
                program, "looking for stale filters: {err}"
            ),
        }
    }
}

/// The interfaces of a network namespace, as listed at one moment.
#[derive(Clone, Debug, Default)]
pub struct Links {
    pub links: Vec<Link>,
    /// The interfaces the default routes (IPv4, IPv6) leave by.
    pub uplinks: HashSet<u32>,
}

/// Lists the interfaces of the current network namespace, and which carry its default
/// routes.
pub async fn list_links() -> Result<Links, AttachError> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(connection);
    let mut listing = Links::default();
    let mut links = handle.link().get().execute();
    while let Some(message) = links.try_next().await? {
        listing.links.extend(Link::from_message(&message));
    }
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        let mut routes = handle.route().get(request).execute();
        while let Some(route) = routes.try_next().await? {
            listing
                .uplinks
                .extend(discover::default_route_interface(&route));
        }
    }
    task.abort();
    Ok(listing)
}

/// rtnetlink multicast group of link changes (RTNLGRP_LINK, as a bind mask).
const RTMGRP_LINK: u32 = 1;

/// Streams link additions and removals into `changes` until the receiver goes away or
/// the socket fails. A burst of link changes faster than the agent reads them overflows
/// the socket's receive buffer: the kernel drops messages and the next read fails with
/// ENOBUFS, which netlink-proto hands over as an `Overrun` message (and then reads on,
/// the socket stays valid). That becomes [`LinkChange::Resync`], so the caller relists
/// at once instead of missing interfaces until its periodic resync.
///
/// `rcvbuf`: the socket's receive buffer in bytes (the kernel doubles it), above
/// `net.core.rmem_max` too (SO_RCVBUFFORCE, with CAP_NET_ADMIN); `None` keeps the
/// kernel's default.
pub async fn watch_links(
    changes: mpsc::Sender<LinkChange>,
    rcvbuf: Option<usize>,
) -> Result<(), AttachError> {
    let (mut connection, _handle, mut messages) = rtnetlink::new_connection()?;
    let socket = connection.socket_mut().socket_mut();
    if let Some(bytes) = rcvbuf {
        set_receive_buffer(socket, bytes)?;
    }
    socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
    let task = tokio::spawn(connection);
    while let Some((message, _)) = messages.next().await {
        let change = match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                Link::from_message(&link).map(LinkChange::Added)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                Some(LinkChange::Removed {
                    index: link.header.index,
                })
            }
            NetlinkPayload::Overrun(_) => Some(LinkChange::Resync),
            _ => None,
        };
        if let Some(change) = change
            && changes.send(change).await.is_err()
        {
            // The agent is stopping.
            task.abort();
            return Ok(());
        }
    }
    task.abort();
    // netlink-proto ends the stream on a read error other than ENOBUFS.
    Err(AttachError::Netlink(io::Error::other(
        "the link watch socket stopped delivering messages",
    )))
}

fn set_receive_buffer(socket: &netlink_sys::Socket, bytes: usize) -> Result<(), AttachError> {
    use nix::sys::socket::{setsockopt, sockopt};
    // Forcing needs CAP_NET_ADMIN, which the agent has; without it, up to rmem_max.
    setsockopt(socket, sockopt::RcvBufForce, &bytes)
        .or_else(|_| setsockopt(socket, sockopt::RcvBuf, &bytes))
        .map_err(|errno| AttachError::Netlink(errno.into()))
}
