//! Which interfaces face pods. By name (`veth*`, `lxc*`, `cali*`: each CNI has its own), or
//! `auto`, by shape: a veth or netkit device whose peer lives in another network namespace,
//! the pod's, and that does not carry the node's default route (Kind's node `eth0` is such a
//! veth too, facing the host). No CNI's naming needs to be known then.

use std::collections::HashSet;

use globset::{Glob, GlobSet, GlobSetBuilder};
use netlink_packet_route::{
    AddressFamily,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    route::{RouteAttribute, RouteMessage, RouteType},
};

use super::AttachError;

/// The word in `--interfaces` that selects pod-facing devices by shape.
pub const AUTO: &str = "auto";

/// An interface of the node, as netlink lists or announces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// A veth or netkit device whose peer is in another network namespace.
    pub peer_elsewhere: bool,
}

impl Link {
    /// `None` for a bridge's messages about its ports (family AF_BRIDGE): they say how
    /// the bridge forwards, carry no device kind, and are no news of the device itself.
    pub fn from_message(message: &LinkMessage) -> Option<Link> {
        if message.header.interface_family == AddressFamily::Bridge {
            return None;
        }
        let mut name = None;
        let mut pair_device = false;
        let mut peer_elsewhere = false;
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    pair_device = infos.iter().any(|info| {
                        matches!(info, LinkInfo::Kind(InfoKind::Veth | InfoKind::Netkit))
                    })
                }
                // Only set when the peer is in another namespace than the device.
                LinkAttribute::LinkNetNsId(_) => peer_elsewhere = true,
                _ => {}
            }
        }
        Some(Link {
            index: message.header.index,
            name: name?,
            peer_elsewhere: pair_device && peer_elsewhere,
        })
    }
}

/// What `--interfaces` selects: name globs, and with `auto` every pod-facing device.
#[derive(Clone, Debug)]
pub struct Selector {
    globs: GlobSet,
    auto: bool,
}

impl Selector {
    /// From `--interfaces`: globs (`veth*,lxc*`), and/or the word `auto`.
    pub fn parse(entries: &[String]) -> Result<Selector, AttachError> {
        let mut builder = GlobSetBuilder::new();
        let mut auto = false;
        for entry in entries {
            if entry == AUTO {
                auto = true;
                continue;
            }
            builder.add(Glob::new(entry).map_err(|source| AttachError::Glob {
                glob: entry.clone(),
                source,
            })?);
        }
        let globs = builder.build().map_err(|source| AttachError::Glob {
            glob: entries.join(","),
            source,
        })?;
        Ok(Selector { globs, auto })
    }

    /// Whether to attach to `link`; `uplinks` carry the node's default routes.
    pub fn selects(&self, link: &Link, uplinks: &HashSet<u32>) -> bool {
        self.globs.is_match(&link.name)
            || (self.auto && link.peer_elsewhere && !uplinks.contains(&link.index))
    }
}

/// The interface a default route leaves by, if `route` is one (main table, unicast).
pub fn default_route_interface(route: &RouteMessage) -> Option<u32> {
    let header = &route.header;
    if header.destination_prefix_length != 0 || header.kind != RouteType::Unicast {
        return None;
    }
    route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Oif(index) => Some(*index),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, peer_elsewhere: bool) -> Link {
        Link {
            index,
            name: name.to_owned(),
            peer_elsewhere,
        }
    }

    fn message(family: AddressFamily, attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.header.interface_family = family;
        message.header.index = 7;
        message.attributes = attributes;
        message
    }

    #[test]
    fn a_veth_facing_another_namespace_is_told_from_the_bridges_word_on_it() {
        let veth = vec![
            LinkAttribute::IfName("cni0p3".into()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
            LinkAttribute::LinkNetNsId(2),
        ];
        let link = Link::from_message(&message(AddressFamily::Unspec, veth.clone())).unwrap();
        assert_eq!(link, self::link(7, "cni0p3", true));
        // Same device, both ends here.
        let local = message(AddressFamily::Unspec, veth[..2].to_vec());
        assert!(!Link::from_message(&local).unwrap().peer_elsewhere);
        // A bridge port's state, from the bridge: no kind, and not about the device.
        let port = vec![
            LinkAttribute::IfName("cni0p3".into()),
            LinkAttribute::Controller(4),
        ];
        assert_eq!(
            Link::from_message(&message(AddressFamily::Bridge, port)),
            None
        );
    }

    #[test]
    fn default_globs_match_pod_veths_only() {
        let selector = Selector::parse(&["veth*".into(), "lxc*".into(), "cali*".into()]).unwrap();
        let none = HashSet::new();
        for name in ["veth3f2a", "lxc12ab", "cali0123456789a"] {
            assert!(selector.selects(&link(1, name, false), &none), "{name}");
        }
        for name in ["eth0", "lo", "cni0", "docker0", "uplink0", "eni3f2a"] {
            assert!(!selector.selects(&link(1, name, true), &none), "{name}");
        }
        assert!(Selector::parse(&["veth[".into()]).is_err());
    }

    #[test]
    fn auto_selects_pair_devices_facing_another_namespace_but_not_the_uplink() {
        let selector = Selector::parse(&["auto".into()]).unwrap();
        let uplinks = HashSet::from([2]);
        // AWS VPC CNI, Weave, Antrea, Calico: names of their own, one shape.
        for name in [
            "eni3f2a1b",
            "vethweplc0a",
            "web-7f9c-3a1e2b",
            "cali0123456789a",
        ] {
            assert!(selector.selects(&link(9, name, true), &uplinks), "{name}");
        }
        // Kind's node eth0 is a veth to the host: it carries the default route.
        assert!(!selector.selects(&link(2, "eth0", true), &uplinks));
        // Both ends in the node (or no pair device at all).
        assert!(!selector.selects(&link(3, "vethpair", false), &uplinks));
        // Globs still add to it.
        let both = Selector::parse(&["auto".into(), "eth0".into()]).unwrap();
        assert!(both.selects(&link(2, "eth0", true), &uplinks));
    }
}
