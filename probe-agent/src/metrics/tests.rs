use super::*;
use crate::model::{Counts, Flow, Protocol, VerdictKind};

fn verdict(
    kind: VerdictKind,
    dst_port: u16,
    src: Option<Arc<Endpoint>>,
    dst: Option<Arc<Endpoint>>,
) -> Verdict {
    let t = "2026-11-23T10:00:00.123Z".parse().unwrap();
    Verdict {
        flow: Flow {
            protocol: Protocol::Tcp,
            src_ip: "10.244.1.5".parse().unwrap(),
            src_port: 41234,
            dst_ip: "10.96.45.123".parse().unwrap(),
            dst_port,
        },
        verdict: kind,
        reason: "".into(),
        cause: None,
        next: None,
        counts: Counts::default(),
        first_seen: t,
        last_seen: t,
        interface: "veth3f2a".into(),
        src,
        dst,
        dns: None,
        backend: None,
    }
}

fn endpoint(
    namespace: &str,
    workload: Option<&str>,
    service: Option<&str>,
) -> Option<Arc<Endpoint>> {
    Some(Arc::new(Endpoint {
        namespace: Some(namespace.into()),
        pod: Some("ignored-pod-name-abc12".into()),
        workload: workload.map(Into::into),
        service: service.map(Into::into),
        node: None,
    }))
}

/// The sample lines of one metric, in exposition order.
fn samples(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .map(String::from)
        .collect()
}

#[test]
fn fresh_metrics_expose_every_family_with_fixed_series_at_zero() {
    let text = Metrics::default().encode();
    assert_eq!(
        text,
        "\
# HELP netprobe_verdicts Flows that reached a final verdict.
# TYPE netprobe_verdicts counter
# HELP netprobe_dns_failures Failed DNS lookups (final verdicts) by client workload, name and rcode (TIMEOUT: no answer).
# TYPE netprobe_dns_failures counter
# HELP netprobe_packets Verdict-relevant packets seen by the kernel program.
# TYPE netprobe_packets counter
netprobe_packets_total{kind=\"dns_query\"} 0
netprobe_packets_total{kind=\"dns_response\"} 0
netprobe_packets_total{kind=\"dns_tcp_segment\"} 0
netprobe_packets_total{kind=\"icmp_unreachable\"} 0
netprobe_packets_total{kind=\"rst\"} 0
netprobe_packets_total{kind=\"syn\"} 0
netprobe_packets_total{kind=\"syn_ack\"} 0
netprobe_packets_total{kind=\"syn_delivered\"} 0
# HELP netprobe_dns_responses DNS responses by response code.
# TYPE netprobe_dns_responses counter
# HELP netprobe_events_lost Events lost before tracking (kernel: ring buffer full, agent: queue full).
# TYPE netprobe_events_lost counter
netprobe_events_lost_total{source=\"agent\"} 0
netprobe_events_lost_total{source=\"kernel\"} 0
# HELP netprobe_decode_errors Kernel events the agent could not decode.
# TYPE netprobe_decode_errors counter
netprobe_decode_errors_total{reason=\"kind\"} 0
netprobe_decode_errors_total{reason=\"malformed\"} 0
netprobe_decode_errors_total{reason=\"truncated\"} 0
netprobe_decode_errors_total{reason=\"version\"} 0
# HELP netprobe_flows_tracked Flows in the tracking table.
# TYPE netprobe_flows_tracked gauge
netprobe_flows_tracked 0
# HELP netprobe_attached_interfaces Interfaces the probe is attached to.
# TYPE netprobe_attached_interfaces gauge
netprobe_attached_interfaces 0
# HELP netprobe_netlink_overruns Overflows of the interface watch (netlink ENOBUFS), each answered by a full relisting.
# TYPE netprobe_netlink_overruns counter
netprobe_netlink_overruns_total 0
# HELP netprobe_reattached Hooks where another program had been put ahead of the probe's, which was put first again (checked every 5 s).
# TYPE netprobe_reattached counter
netprobe_reattached_total 0
# HELP netprobe_kernel_events Events the kernel program emitted (handed over or lost to a full ring buffer); equals processed + lost + decode errors once the agent has caught up.
# TYPE netprobe_kernel_events counter
netprobe_kernel_events_total 0
# HELP netprobe_events_processed Kernel events decoded and tracked by the agent.
# TYPE netprobe_events_processed counter
netprobe_events_processed_total 0
# HELP netprobe_ready 1 once the eBPF programs are loaded and attached.
# TYPE netprobe_ready gauge
netprobe_ready 0
# HELP netprobe_kube_objects Kubernetes objects known for naming flows.
# TYPE netprobe_kube_objects gauge
# HELP netprobe_kube_watch_errors Failed Kubernetes watches (retried with backoff).
# TYPE netprobe_kube_watch_errors counter
netprobe_kube_watch_errors_total{kind=\"endpointslices\"} 0
netprobe_kube_watch_errors_total{kind=\"namespaces\"} 0
netprobe_kube_watch_errors_total{kind=\"networkpolicies\"} 0
netprobe_kube_watch_errors_total{kind=\"pods\"} 0
netprobe_kube_watch_errors_total{kind=\"services\"} 0
# HELP netprobe_causes Flows that reached a failing verdict, by why (the cause field of the API).
# TYPE netprobe_causes counter
netprobe_causes_total{cause=\"connection_reset\"} 0
netprobe_causes_total{cause=\"destination_unreachable\"} 0
netprobe_causes_total{cause=\"dns_no_answer\"} 0
netprobe_causes_total{cause=\"dns_server_error\"} 0
netprobe_causes_total{cause=\"dns_tcp_blocked\"} 0
netprobe_causes_total{cause=\"dropped_between\"} 0
netprobe_causes_total{cause=\"late_answer\"} 0
netprobe_causes_total{cause=\"name_not_found\"} 0
netprobe_causes_total{cause=\"network_policy\"} 0
netprobe_causes_total{cause=\"no_answer\"} 0
netprobe_causes_total{cause=\"no_ready_endpoints\"} 0
netprobe_causes_total{cause=\"node_datapath\"} 0
netprobe_causes_total{cause=\"nothing_listening\"} 0
netprobe_causes_total{cause=\"server_silent\"} 0
netprobe_causes_total{cause=\"target_port_mismatch\"} 0
# HELP netprobe_dns_search_expansions NXDOMAIN answers to search-path expansions of a lookup that went on (not failures).
# TYPE netprobe_dns_search_expansions counter
netprobe_dns_search_expansions_total 0
# HELP netprobe_node_datapath_down 1 while most pod pairs on this node time out at once (cause node_datapath).
# TYPE netprobe_node_datapath_down gauge
netprobe_node_datapath_down 0
# HELP netprobe_k8s_events Kubernetes Events for failing causes (--events): written, deduplicated within the window, failed to write, dropped (the writer's queue was full), rate_limited (the source pod had its 10 Events of the window).
# TYPE netprobe_k8s_events counter
netprobe_k8s_events_total{result=\"deduplicated\"} 0
netprobe_k8s_events_total{result=\"dropped\"} 0
netprobe_k8s_events_total{result=\"failed\"} 0
netprobe_k8s_events_total{result=\"rate_limited\"} 0
netprobe_k8s_events_total{result=\"written\"} 0
# HELP netprobe_api_auth API requests checked with --api-auth kube: allowed, unauthenticated (401), forbidden (403), unavailable (503: the Kubernetes API could not answer).
# TYPE netprobe_api_auth counter
netprobe_api_auth_total{result=\"allowed\"} 0
netprobe_api_auth_total{result=\"forbidden\"} 0
netprobe_api_auth_total{result=\"unauthenticated\"} 0
netprobe_api_auth_total{result=\"unavailable\"} 0
# HELP netprobe_tcp_handshake_seconds TCP handshakes from the client's first SYN to the SYN-ACK, at the client pod's veth.
# TYPE netprobe_tcp_handshake_seconds histogram
# HELP netprobe_dns_response_seconds DNS exchanges from a query to its response, at the client pod's veth.
# TYPE netprobe_dns_response_seconds histogram
# EOF
"
    );
}

#[test]
fn counters_and_gauges_show_exact_values() {
    let m = Metrics::default();
    m.packets(PacketKind::Syn, 3);
    m.packets(PacketKind::Syn, 2);
    m.packets(PacketKind::IcmpUnreachable, 1);
    m.packets(PacketKind::SynDelivered, 1);
    m.events_lost(LossSource::Kernel, 7);
    m.decode_error(DecodeErrorKind::Truncated);
    m.decode_error(DecodeErrorKind::Truncated);
    m.set_flows_tracked(42);
    m.set_attached_interfaces(3);
    m.set_attached_interfaces(2);
    let text = m.encode();
    assert_eq!(
        samples(&text, "netprobe_packets_total"),
        [
            "netprobe_packets_total{kind=\"dns_query\"} 0",
            "netprobe_packets_total{kind=\"dns_response\"} 0",
            "netprobe_packets_total{kind=\"dns_tcp_segment\"} 0",
            "netprobe_packets_total{kind=\"icmp_unreachable\"} 1",
            "netprobe_packets_total{kind=\"rst\"} 0",
            "netprobe_packets_total{kind=\"syn\"} 5",
            "netprobe_packets_total{kind=\"syn_ack\"} 0",
            "netprobe_packets_total{kind=\"syn_delivered\"} 1",
        ]
    );
    assert_eq!(
        samples(&text, "netprobe_events_lost_total"),
        [
            "netprobe_events_lost_total{source=\"agent\"} 0",
            "netprobe_events_lost_total{source=\"kernel\"} 7",
        ]
    );
    assert!(text.contains("\nnetprobe_decode_errors_total{reason=\"truncated\"} 2\n"));
    assert!(text.contains("\nnetprobe_flows_tracked 42\n"));
    assert!(text.contains("\nnetprobe_attached_interfaces 2\n"));
}

#[test]
fn dns_rcodes_are_named_upper_case_and_unknown_ones_go_to_other() {
    let m = Metrics::default();
    for rcode in [
        "NXDOMAIN", "nxdomain", "3", "NOERROR", "ServFail", "15", "4000", "Bogus", "",
    ] {
        m.dns_response(rcode);
    }
    assert_eq!(
        samples(&m.encode(), "netprobe_dns_responses_total"),
        [
            "netprobe_dns_responses_total{rcode=\"NOERROR\"} 1",
            "netprobe_dns_responses_total{rcode=\"NXDOMAIN\"} 3",
            "netprobe_dns_responses_total{rcode=\"SERVFAIL\"} 1",
            "netprobe_dns_responses_total{rcode=\"other\"} 4",
        ]
    );
}

#[test]
fn verdict_labels_come_from_endpoints_and_are_empty_where_unknown() {
    let m = Metrics::default();
    let src = endpoint("production", Some("checkout-api"), None);
    let dst = endpoint("production", None, Some("payment-service"));
    m.verdict_reached(&verdict(
        VerdictKind::Timeout,
        8080,
        src.clone(),
        dst.clone(),
    ));
    m.verdict_reached(&verdict(VerdictKind::Timeout, 8080, src, dst));
    m.verdict_reached(&verdict(VerdictKind::Refused, 80, None, None));
    assert_eq!(
        samples(&m.encode(), "netprobe_verdicts_total"),
        [
            "netprobe_verdicts_total{verdict=\"REFUSED\",src_namespace=\"\",src_workload=\"\",dst_namespace=\"\",dst_workload=\"\",dst_service=\"\",dst_port=\"80\"} 1",
            "netprobe_verdicts_total{verdict=\"TIMEOUT\",src_namespace=\"production\",src_workload=\"checkout-api\",dst_namespace=\"production\",dst_workload=\"\",dst_service=\"payment-service\",dst_port=\"8080\"} 2",
        ]
    );
}

#[test]
fn verdict_label_sets_beyond_the_cap_are_counted_under_other() {
    let m = Metrics::new(2);
    for port in [80, 443, 8080, 9090] {
        m.verdict_reached(&verdict(VerdictKind::Timeout, port, None, None));
    }
    // An existing set keeps counting after the cap is reached.
    m.verdict_reached(&verdict(VerdictKind::Timeout, 80, None, None));
    m.verdict_reached(&verdict(VerdictKind::Ok, 53, None, None));
    assert_eq!(
        samples(&m.encode(), "netprobe_verdicts_total"),
        [
            "netprobe_verdicts_total{verdict=\"OK\",src_namespace=\"other\",src_workload=\"other\",dst_namespace=\"other\",dst_workload=\"other\",dst_service=\"other\",dst_port=\"other\"} 1",
            "netprobe_verdicts_total{verdict=\"TIMEOUT\",src_namespace=\"\",src_workload=\"\",dst_namespace=\"\",dst_workload=\"\",dst_service=\"\",dst_port=\"443\"} 1",
            "netprobe_verdicts_total{verdict=\"TIMEOUT\",src_namespace=\"\",src_workload=\"\",dst_namespace=\"\",dst_workload=\"\",dst_service=\"\",dst_port=\"80\"} 2",
            "netprobe_verdicts_total{verdict=\"TIMEOUT\",src_namespace=\"other\",src_workload=\"other\",dst_namespace=\"other\",dst_workload=\"other\",dst_service=\"other\",dst_port=\"other\"} 2",
        ]
    );
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::default();
    let odd = endpoint("a\"b\\c\nd", None, None);
    m.verdict_reached(&verdict(VerdictKind::Reset, 1, odd, None));
    assert_eq!(
        samples(&m.encode(), "netprobe_verdicts_total"),
        [
            "netprobe_verdicts_total{verdict=\"RESET\",src_namespace=\"a\\\"b\\\\c\\nd\",src_workload=\"\",dst_namespace=\"\",dst_workload=\"\",dst_service=\"\",dst_port=\"1\"} 1"
        ]
    );
}

#[test]
fn latencies_are_histograms_by_source_and_destination() {
    let m = Metrics::default();
    let src = endpoint("production", Some("checkout-api"), None);
    let dst = endpoint("production", Some("payment"), Some("payment-service"));
    let v = verdict(VerdictKind::Ok, 8080, src, dst);
    m.latency(Latency::TcpHandshake, &v, Duration::from_micros(70));
    m.latency(Latency::TcpHandshake, &v, Duration::from_millis(30));
    m.latency(Latency::TcpHandshake, &v, Duration::from_secs(7));
    m.latency(
        Latency::DnsResponse,
        &verdict(VerdictKind::Ok, 53, None, None),
        Duration::from_micros(40),
    );
    let text = m.encode();
    let labels = "src_namespace=\"production\",src_workload=\"checkout-api\",dst_namespace=\"production\",dst_workload=\"payment\",dst_service=\"payment-service\",dst_port=\"8080\"";
    let handshakes = samples(&text, "netprobe_tcp_handshake_seconds");
    assert_eq!(handshakes.len(), 2 + BUCKETS.len() + 1, "{handshakes:#?}");
    assert_eq!(
        handshakes[0],
        format!("netprobe_tcp_handshake_seconds_sum{{{labels}}} 7.03007")
    );
    assert_eq!(
        handshakes[1],
        format!("netprobe_tcp_handshake_seconds_count{{{labels}}} 3")
    );
    let buckets: Vec<(&str, &str)> = handshakes[2..]
        .iter()
        .map(|line| {
            let le = line
                .split("le=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            (le, line.rsplit(' ').next().unwrap())
        })
        .collect();
    // Cumulative, by increasing bound: 70 µs, 30 ms, and 7 s only in +Inf.
    assert_eq!(buckets.first(), Some(&("0.00005", "0")));
    assert_eq!(buckets[1], ("0.0001", "1"));
    assert_eq!(buckets[8], ("0.025", "1"));
    assert_eq!(buckets[9], ("0.05", "2"));
    assert_eq!(buckets[15], ("5.0", "2"));
    assert_eq!(buckets[16], ("+Inf", "3"));
    assert!(text.contains(
        "\nnetprobe_dns_response_seconds_bucket{le=\"0.00005\",src_namespace=\"\",src_workload=\"\",dst_namespace=\"\",dst_workload=\"\",dst_service=\"\",dst_port=\"53\"} 1\n"
    ));
}

#[test]
fn latency_label_sets_beyond_the_cap_are_observed_under_other() {
    // A quarter of the verdicts' cap: 2 label sets.
    let m = Metrics::new(8);
    for port in [80, 443, 8080] {
        m.latency(
            Latency::TcpHandshake,
            &verdict(VerdictKind::Ok, port, None, None),
            Duration::from_millis(1),
        );
    }
    let counts = samples(&m.encode(), "netprobe_tcp_handshake_seconds_count");
    assert_eq!(
        counts,
        [
            "netprobe_tcp_handshake_seconds_count{src_namespace=\"\",src_workload=\"\",dst_namespace=\"\",dst_workload=\"\",dst_service=\"\",dst_port=\"443\"} 1",
            "netprobe_tcp_handshake_seconds_count{src_namespace=\"\",src_workload=\"\",dst_namespace=\"\",dst_workload=\"\",dst_service=\"\",dst_port=\"80\"} 1",
            "netprobe_tcp_handshake_seconds_count{src_namespace=\"other\",src_workload=\"other\",dst_namespace=\"other\",dst_workload=\"other\",dst_service=\"other\",dst_port=\"other\"} 1",
        ]
    );
}

#[test]
fn the_text_format_is_the_same_samples_with_counters_named_by_them() {
    let m = Metrics::default();
    m.latency(
        Latency::DnsResponse,
        &verdict(VerdictKind::Ok, 53, None, None),
        Duration::from_millis(2),
    );
    let openmetrics = m.encode();
    let text = m.encode_as(Format::Text);
    assert!(openmetrics.ends_with("# EOF\n"));
    assert!(!text.contains("# EOF"));
    assert!(text.contains("\n# HELP netprobe_packets_total Verdict-relevant packets seen by the kernel program.\n# TYPE netprobe_packets_total counter\n"));
    assert!(text.contains("\n# TYPE netprobe_dns_response_seconds histogram\n"));
    let samples_of = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(String::from)
            .collect()
    };
    assert_eq!(samples_of(&text), samples_of(&openmetrics));
    assert_eq!(m.encode_as(Format::OpenMetrics), openmetrics);
}
