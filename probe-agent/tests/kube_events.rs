//! `--events` against the Kubernetes API stand-in: the real kube-rs client writes
//! events.k8s.io/v1 Events, the stand-in stores them, and the tests read back what a
//! `kubectl describe pod` would list. No root needed.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use probe_agent::{
    kube_events::{self, CauseReport, EventOptions, REPORTING_CONTROLLER},
    metrics::{EventResult, Metrics},
    model::{Cause, Flow, Protocol},
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const NAMESPACE: &str = "production";
const POD: &str = "checkout-api-5d4e3c2f9b-abc12";
/// The pod's uid in tests/kube/20-pods.json.
const POD_UID: &str = "9c1f2e7a-1111-4c4d-9a52-0a1b2c3d4e01";
const NODE: &str = "kind-worker";

mod common;

use common::{StandIn, until};

/// The stand-in with the recorded cluster, a names watcher on it, and an Event writer
/// reading `reports`.
struct Cluster {
    stand_in: StandIn,
    reports: mpsc::Sender<CauseReport>,
}

async fn cluster(window: Duration) -> Cluster {
    let stand_in = StandIn::start("events").await;
    // The writer finds the pod's uid in the names: wait for the first listing.
    until("the recorded pods are listed", || {
        stand_in.names.snapshot().cluster.pods_in(NAMESPACE).len() == 3
    })
    .await;
    let (reports, queue) = mpsc::channel(kube_events::QUEUE_CAPACITY);
    let options = EventOptions {
        window,
        instance: NODE.into(),
    };
    tokio::spawn(kube_events::write(
        stand_in.client.clone(),
        stand_in.names.clone(),
        options,
        Arc::clone(&stand_in.metrics),
        queue,
        stand_in.stopped.clone(),
    ));
    Cluster { stand_in, reports }
}

/// A report of `cause` for a flow from the checkout pod to `dst`, from `src_port`.
fn report(cause: Cause, dst: &str, src_port: u16) -> CauseReport {
    let dst: SocketAddr = dst.parse().unwrap();
    CauseReport {
        namespace: NAMESPACE.into(),
        pod: POD.into(),
        cause,
        reason: format!(
            "{cause} on {dst}: Service production/payment-service has no ready endpoints."
        )
        .into(),
        next: Some("kubectl -n production get endpointslices -l kubernetes.io/service-name=payment-service".into()),
        flow: Flow {
            protocol: Protocol::Tcp,
            src_ip: "10.244.1.5".parse().unwrap(),
            src_port,
            dst_ip: dst.ip(),
            dst_port: dst.port(),
        },
    }
}

impl Cluster {
    async fn send(&self, report: CauseReport) {
        self.reports.send(report).await.unwrap();
    }

    fn count(&self, result: EventResult) -> u64 {
        let sample = format!(
            "netprobe_k8s_events_total{{result=\"{}\"}} ",
            result.as_str()
        );
        let text = self.stand_in.metrics.encode();
        let line = text.lines().find_map(|line| line.strip_prefix(&sample));
        line.expect("the series exists from the start")
            .parse()
            .unwrap()
    }

    /// Waits until the writer has dealt with `n` reports (written, deduplicated, failed
    /// or rate limited), then a little more: nothing further may come.
    async fn settle(&self, n: u64) {
        let handled = || {
            [
                EventResult::Written,
                EventResult::Deduplicated,
                EventResult::Failed,
                EventResult::RateLimited,
            ]
            .map(|result| self.count(result))
            .iter()
            .sum::<u64>()
        };
        until(&format!("{n} reports are handled"), || handled() >= n).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(handled(), n, "more reports handled than sent");
    }

    fn assert_counts(&self, written: u64, deduplicated: u64, failed: u64) {
        self.assert_all_counts([written, deduplicated, failed, 0, 0]);
    }

    fn assert_all_counts(&self, expected: [u64; 5]) {
        let counts = EventResult::ALL.map(|result| self.count(result));
        assert_eq!(
            counts, expected,
            "written, deduplicated, failed, dropped, rate_limited"
        );
    }

    fn reasons(&self) -> Vec<String> {
        let events = self.stand_in.api.events();
        events
            .iter()
            .map(|event| event["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cause_is_a_warning_event_on_the_source_pod() {
    let cluster = cluster(Duration::from_secs(600)).await;
    let sent = report(Cause::NoReadyEndpoints, "10.96.45.123:80", 41234);
    cluster.send(sent.clone()).await;
    cluster.settle(1).await;
    cluster.assert_counts(1, 0, 0);

    let events = cluster.stand_in.api.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event["apiVersion"], "events.k8s.io/v1");
    assert_eq!(event["kind"], "Event");
    assert_eq!(event["metadata"]["namespace"], NAMESPACE);
    let name = event["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with(&format!("{POD}.")), "{name}");
    assert!(event["metadata"]["resourceVersion"].is_string());
    // What `kubectl describe pod` matches: the pod's kind, namespace, name and uid.
    assert_eq!(
        event["regarding"],
        json!({"apiVersion": "v1", "kind": "Pod", "namespace": NAMESPACE, "name": POD, "uid": POD_UID})
    );
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "NoReadyEndpoints");
    assert_eq!(event["action"], "Connect");
    assert_eq!(event["reportingController"], REPORTING_CONTROLLER);
    assert_eq!(event["reportingInstance"], NODE);
    assert!(event["eventTime"].is_string(), "{event}");
    assert_eq!(
        event["note"],
        format!("{} Next: {}", sent.reason, sent.next.unwrap())
    );
    let requests = cluster.stand_in.api.requests();
    let created = |(method, path): &(String, String)| {
        method == "POST" && path.starts_with("/apis/events.k8s.io/v1/namespaces/production/events")
    };
    assert_eq!(
        requests.iter().filter(|r| created(r)).count(),
        1,
        "{requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_failing_to_reach_many_peers_gets_its_share_of_events() {
    let cluster = cluster(Duration::from_secs(600)).await;
    let peers = kube_events::PER_POD as u16 + 3;
    for i in 0..peers {
        let dst = format!("10.244.2.{}:8080", 10 + i);
        cluster.send(report(Cause::NoAnswer, &dst, 42000 + i)).await;
    }
    cluster.settle(u64::from(peers)).await;
    cluster.assert_all_counts([u64::from(kube_events::PER_POD), 0, 0, 0, 3]);
    assert_eq!(
        cluster.stand_in.api.events().len(),
        kube_events::PER_POD as usize
    );
    // A limited report is not remembered as written: the same one again is limited
    // again, not deduplicated.
    cluster
        .send(report(Cause::NoAnswer, "10.244.2.22:8080", 43000))
        .await;
    cluster.settle(u64::from(peers) + 1).await;
    cluster.assert_all_counts([u64::from(kube_events::PER_POD), 0, 0, 0, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_per_pod_cause_and_destination_within_the_window() {
    let cluster = cluster(Duration::from_secs(600)).await;
    // Not a failure: no Event, not counted.
    cluster
        .send(report(Cause::SearchPathExpansion, "10.96.0.10:53", 40000))
        .await;
    // New connections (new source ports) failing the same way: one Event.
    cluster
        .send(report(Cause::NoReadyEndpoints, "10.96.45.123:80", 41234))
        .await;
    cluster
        .send(report(Cause::NoReadyEndpoints, "10.96.45.123:80", 41235))
        .await;
    // Another cause to the same destination, the same cause to another port: new Events.
    cluster
        .send(report(Cause::NothingListening, "10.96.45.123:80", 41236))
        .await;
    cluster
        .send(report(Cause::NoReadyEndpoints, "10.96.45.123:8080", 41237))
        .await;
    cluster
        .send(report(Cause::NothingListening, "10.96.45.123:80", 41238))
        .await;
    cluster.settle(5).await;
    cluster.assert_counts(3, 2, 0);
    assert_eq!(
        cluster.reasons(),
        ["NoReadyEndpoints", "NothingListening", "NoReadyEndpoints"]
    );
    let notes: Vec<Value> = cluster
        .stand_in
        .api
        .events()
        .iter()
        .map(|e| e["note"].clone())
        .collect();
    assert!(notes[2].as_str().unwrap().contains("10.96.45.123:8080"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_after_the_window_writes_again() {
    let window = Duration::from_millis(200);
    let cluster = cluster(window).await;
    cluster
        .send(report(Cause::NoReadyEndpoints, "10.96.45.123:80", 41234))
        .await;
    cluster.settle(1).await;
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    cluster
        .send(report(Cause::NoReadyEndpoints, "10.96.45.123:80", 41235))
        .await;
    cluster.settle(2).await;
    cluster.assert_counts(2, 0, 0);
    let events = cluster.stand_in.api.events();
    assert_eq!(cluster.reasons(), ["NoReadyEndpoints", "NoReadyEndpoints"]);
    assert_ne!(events[0]["metadata"]["name"], events[1]["metadata"]["name"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_is_counted_failed_and_the_next_report_retries() {
    let cluster = cluster(Duration::from_secs(600)).await;
    let addr = cluster.stand_in.api.url().replace("http://", "");
    let listening = || std::net::TcpStream::connect(&addr).is_ok();
    cluster.stand_in.api.set_down(true);
    // It stops listening on its own thread: wait for that.
    until("the stand-in refuses connections", || !listening()).await;
    cluster
        .send(report(Cause::NoReadyEndpoints, "10.96.45.123:80", 41234))
        .await;
    cluster.settle(1).await;
    cluster.assert_counts(0, 0, 1);
    assert!(cluster.stand_in.api.events().is_empty());

    // The failed write did not use up the window: back up, the next report is written.
    cluster.stand_in.api.set_down(false);
    until("the stand-in listens again", listening).await;
    cluster
        .send(report(Cause::NoReadyEndpoints, "10.96.45.123:80", 41235))
        .await;
    cluster.settle(2).await;
    cluster.assert_counts(1, 0, 1);
    assert_eq!(cluster.reasons(), ["NoReadyEndpoints"]);
}

#[test]
fn a_full_queue_drops_and_counts_without_waiting() {
    let metrics = Metrics::default();
    let (reports, _queue) = mpsc::channel(1);
    let flow = report(Cause::NothingListening, "10.244.2.7:5432", 41000);
    kube_events::offer(&reports, flow.clone(), &metrics);
    kube_events::offer(&reports, flow.clone(), &metrics);
    kube_events::offer(&reports, flow, &metrics);
    assert!(
        metrics
            .encode()
            .contains("\nnetprobe_k8s_events_total{result=\"dropped\"} 2\n")
    );
}
