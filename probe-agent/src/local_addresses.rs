//! Pod addresses behind the attached veths, from the node's own tables: the host routes a
//! routed CNI installs per pod (`10.244.0.7/32 dev veth…`), and the neighbours resolved on
//! those veths. Any CNI, with or without a cluster: a pod that has not sent a packet yet
//! (or only answers) is still known to live on this node.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};

/// Lists the host routes and neighbours whose interface is one of `interfaces`: pod
/// address → the veth behind which it lives.
pub async fn behind(interfaces: &HashSet<u32>) -> anyhow::Result<HashMap<IpAddr, u32>> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(connection);
    let mut found = HashMap::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        let mut routes = handle.route().get(request).execute();
        while let Some(route) = routes.try_next().await? {
            if let Some((ip, index)) = host_route(&route).filter(|(_, i)| interfaces.contains(i)) {
                found.insert(ip, index);
            }
        }
    }
    let mut neighbours = handle.neighbours().get().execute();
    while let Some(neighbour) = neighbours.try_next().await? {
        if let Some((ip, index)) = resolved(&neighbour).filter(|(_, i)| interfaces.contains(i)) {
            found.entry(ip).or_insert(index);
        }
    }
    task.abort();
    Ok(found)
}

/// A unicast route to one address (/32, /128) out of one interface.
fn host_route(route: &RouteMessage) -> Option<(IpAddr, u32)> {
    let full = match route.header.address_family {
        AddressFamily::Inet => 32,
        AddressFamily::Inet6 => 128,
        _ => return None,
    };
    if route.header.kind != RouteType::Unicast || route.header.destination_prefix_length != full {
        return None;
    }
    let mut destination = None;
    let mut oif = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => {
                destination = Some(IpAddr::V4(*v4))
            }
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
                destination = Some(IpAddr::V6(*v6))
            }
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    Some((destination?, oif?)).filter(|(ip, _)| is_pod_address(ip))
}

/// A neighbour the node has resolved (or was told, `permanent`) on an interface.
fn resolved(neighbour: &NeighbourMessage) -> Option<(IpAddr, u32)> {
    let live = matches!(
        neighbour.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
    );
    if !live {
        return None;
    }
    let ip = neighbour
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        })?;
    Some((ip, neighbour.header.ifindex)).filter(|(ip, _)| is_pod_address(ip))
}

/// Link-local and multicast addresses are the link's, not a pod's.
fn is_pod_address(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_multicast() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_unicast_link_local() && !v6.is_multicast() && !v6.is_unspecified(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn route(family: AddressFamily, prefix: u8, attributes: Vec<RouteAttribute>) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.address_family = family;
        route.header.destination_prefix_length = prefix;
        route.header.kind = RouteType::Unicast;
        route.attributes = attributes;
        route
    }

    #[test]
    fn only_host_routes_out_of_an_interface_name_a_pod() {
        let pod = Ipv4Addr::new(10, 244, 0, 7);
        let to_pod = route(
            AddressFamily::Inet,
            32,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet(pod)),
                RouteAttribute::Oif(12),
            ],
        );
        assert_eq!(host_route(&to_pod), Some((IpAddr::V4(pod), 12)));
        let subnet = route(
            AddressFamily::Inet,
            24,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet(pod)),
                RouteAttribute::Oif(12),
            ],
        );
        assert_eq!(host_route(&subnet), None);
        let v6 = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 7);
        let to_pod6 = route(
            AddressFamily::Inet6,
            128,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet6(v6)),
                RouteAttribute::Oif(12),
            ],
        );
        assert_eq!(host_route(&to_pod6), Some((IpAddr::V6(v6), 12)));
        let mut local = to_pod.clone();
        local.header.kind = RouteType::Local;
        assert_eq!(host_route(&local), None);
        let no_interface = route(
            AddressFamily::Inet,
            32,
            vec![RouteAttribute::Destination(RouteAddress::Inet(pod))],
        );
        assert_eq!(host_route(&no_interface), None);
    }

    #[test]
    fn failed_and_link_local_neighbours_name_no_pod() {
        let neighbour = |state, ip: IpAddr| {
            let mut message = NeighbourMessage::default();
            message.header.ifindex = 9;
            message.header.state = state;
            message.attributes = vec![NeighbourAttribute::Destination(match ip {
                IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
                IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
            })];
            message
        };
        let pod = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 9));
        assert_eq!(
            resolved(&neighbour(NeighbourState::Stale, pod)),
            Some((pod, 9))
        );
        assert_eq!(resolved(&neighbour(NeighbourState::Failed, pod)), None);
        assert_eq!(resolved(&neighbour(NeighbourState::Incomplete, pod)), None);
        let link = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1));
        assert_eq!(resolved(&neighbour(NeighbourState::Reachable, link)), None);
    }
}
