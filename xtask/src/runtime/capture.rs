//! tshark display filters for the counts the agent reports, to hold them against a
//! capture on a container's veth ([`lab::Capture`]).

use std::net::IpAddr;

/// The display filter for what the agent counts as `count` on a flow from the client to
/// `server:port` (`qname` for DNS, without the trailing dot as tshark shows it).
pub fn filter(count: &str, server: IpAddr, port: u16, qname: Option<&str>) -> String {
    let dns = qname
        .map(|q| format!(" && dns.qry.name == \"{}\"", q.trim_end_matches('.')))
        .unwrap_or_default();
    match count {
        "syn" => format!(
            "ip.dst == {server} && tcp.dstport == {port} && tcp.flags.syn == 1 && tcp.flags.ack == 0"
        ),
        "syn_ack" => format!(
            "ip.src == {server} && tcp.srcport == {port} && tcp.flags.syn == 1 && tcp.flags.ack == 1"
        ),
        "rst" => format!("ip.addr == {server} && tcp.port == {port} && tcp.flags.reset == 1"),
        "icmp_unreachable" => format!("ip.src == {server} && icmp.type == 3"),
        "dns_queries" => {
            format!("ip.dst == {server} && udp.dstport == {port} && dns.flags.response == 0{dns}")
        }
        "dns_responses" => {
            format!("ip.src == {server} && udp.srcport == {port} && dns.flags.response == 1{dns}")
        }
        other => panic!("no capture filter for count {other}"),
    }
}
