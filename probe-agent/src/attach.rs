//! Keeps the classifiers attached to every matching interface: the ones there at start,
//! the ones netlink announces, minus the ones that go away.

use std::{collections::HashMap, io};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
    },
};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use globset::{Glob, GlobSet, GlobSetBuilder};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::{AsyncSocket, SocketAddr};
use probe_ebpf::{EGRESS_PROGRAM, INGRESS_PROGRAM};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

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
}

/// One interface with both hooks attached.
struct Attachment {
    status: InterfaceStatus,
    ingress: SchedClassifierLinkId,
    egress: SchedClassifierLinkId,
}

/// Owns the loaded programs and their attachments.
pub struct Attacher {
    ebpf: Ebpf,
    patterns: GlobSet,
    mode: AttachModeArg,
    attached: HashMap<u32, Attachment>,
    /// Interfaces forgotten since the last [`Attacher::take_forgotten`].
    forgotten: Vec<u32>,
}

/// A change netlink reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    Added {
        index: u32,
        name: String,
    },
    Removed {
        index: u32,
    },
    /// The watch socket overflowed (ENOBUFS): the kernel dropped link messages, so
    /// only a full listing can tell what changed. The socket itself stays usable.
    Resync,
}

/// Compiles the interface globs (`veth*,lxc*`).
pub fn interface_globs(globs: &[String]) -> Result<GlobSet, AttachError> {
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        builder.add(Glob::new(glob).map_err(|source| AttachError::Glob {
            glob: glob.clone(),
            source,
        })?);
    }
    builder.build().map_err(|source| AttachError::Glob {
        glob: globs.join(","),
        source,
    })
}

impl Attacher {
    pub fn new(ebpf: Ebpf, patterns: GlobSet, mode: AttachModeArg) -> Self {
        Self {
            ebpf,
            patterns,
            mode,
            attached: HashMap::new(),
            forgotten: Vec::new(),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        self.patterns.is_match(name)
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

    /// Attaches both hooks of `name`. Returns the mode used.
    pub fn attach(&mut self, index: u32, name: &str) -> Result<AttachMode, AttachError> {
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
            AttachModeArg::Tcx => self.attach_tcx(name)?,
            AttachModeArg::Clsact => self.attach_clsact(name)?,
            AttachModeArg::Auto => match self.attach_tcx(name) {
                Ok(links) => links,
                Err(err) => {
                    debug!(interface = name, "TCX unavailable ({err}); using clsact");
                    self.attach_clsact(name)?
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
                ingress,
                egress,
            },
        );
        Ok(mode)
    }

    fn attach_tcx(
        &mut self,
        name: &str,
    ) -> Result<(AttachMode, SchedClassifierLinkId, SchedClassifierLinkId), AttachError> {
        let (ingress, egress) = self.attach_both(name, AttachMode::Tcx)?;
        Ok((AttachMode::Tcx, ingress, egress))
    }

    fn attach_clsact(
        &mut self,
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
        let (ingress, egress) = self.attach_both(name, AttachMode::Clsact)?;
        Ok((AttachMode::Clsact, ingress, egress))
    }

    /// Attaches the ingress and egress programs; undoes the first if the second fails.
    fn attach_both(
        &mut self,
        name: &str,
        mode: AttachMode,
    ) -> Result<(SchedClassifierLinkId, SchedClassifierLinkId), AttachError> {
        let attach = |ebpf: &mut Ebpf, program: &'static str, hook| {
            let options = match mode {
                AttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
                AttachMode::Clsact => TcAttachOptions::Netlink(NlOptions::default()),
            };
            let interface = name.to_string();
            loader::classifier(ebpf, program)?
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
        };
        let ingress = attach(&mut self.ebpf, INGRESS_PROGRAM, TcAttachType::Ingress)?;
        match attach(&mut self.ebpf, EGRESS_PROGRAM, TcAttachType::Egress) {
            Ok(egress) => Ok((ingress, egress)),
            Err(err) => {
                self.detach_link(INGRESS_PROGRAM, ingress, name);
                Err(err)
            }
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
        self.detach_link(INGRESS_PROGRAM, attachment.ingress, &name);
        self.detach_link(EGRESS_PROGRAM, attachment.egress, &name);
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
    pub fn apply(&mut self, change: &LinkChange) -> Option<(u32, String, AttachMode)> {
        match change {
            LinkChange::Added { index, name }
                if self.matches(name) && !self.is_attached(*index) =>
            {
                match self.attach(*index, name) {
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
            LinkChange::Added { index, name }
                if !self.matches(name) && self.is_attached(*index) =>
            {
                // Renamed away from the globs.
                self.forget(*index);
                None
            }
            LinkChange::Removed { index } => {
                if let Some(name) = self.forget(*index) {
                    info!(interface = name, "interface removed");
                }
                None
            }
            LinkChange::Added { .. } | LinkChange::Resync => None,
        }
    }

    /// Brings the attached set in line with a full listing: attaches what is missing,
    /// forgets what is gone. Covers netlink messages lost to a socket overrun.
    pub fn resync(&mut self, links: &[(u32, String)]) -> Vec<(u32, String, AttachMode)> {
        let gone: Vec<u32> = self
            .attached
            .keys()
            .copied()
            .filter(|index| !links.iter().any(|(i, _)| i == index))
            .collect();
        for index in gone {
            self.apply(&LinkChange::Removed { index });
        }
        links
            .iter()
            .filter_map(|(index, name)| {
                self.apply(&LinkChange::Added {
                    index: *index,
                    name: name.clone(),
                })
            })
            .collect()
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
    for (hook, program) in [
        (TcAttachType::Ingress, INGRESS_PROGRAM),
        (TcAttachType::Egress, EGRESS_PROGRAM),
    ] {
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

fn link_name(message: &LinkMessage) -> Option<String> {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
}

/// Lists the interfaces of the current network namespace.
pub async fn list_links() -> Result<Vec<(u32, String)>, AttachError> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(connection);
    let mut links = handle.link().get().execute();
    let mut out = Vec::new();
    while let Some(message) = links.try_next().await? {
        if let Some(name) = link_name(&message) {
            out.push((message.header.index, name));
        }
    }
    task.abort();
    Ok(out)
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
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => link_name(&link)
                .map(|name| LinkChange::Added {
                    index: link.header.index,
                    name,
                }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_globs_match_pod_veths_only() {
        let globs = interface_globs(&["veth*".into(), "lxc*".into(), "cali*".into()]).unwrap();
        for name in ["veth3f2a", "lxc12ab", "cali0123456789a"] {
            assert!(globs.is_match(name), "{name}");
        }
        for name in ["eth0", "lo", "cni0", "docker0", "uplink0"] {
            assert!(!globs.is_match(name), "{name}");
        }
        assert!(interface_globs(&["veth[".into()]).is_err());
    }
}
