//! Where changes of flows are reported: the recent-event ring, followers, metrics and
//! the Kubernetes Event writer.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{broadcast, mpsc};

use super::{
    Clock, FlowState, HELD_REPORTS, REPORT_HOLD, dns::dns_summary, node::Incident, node_datapath,
    orient::Side, shown_reason,
};
use crate::{
    enrich::Names,
    kube_events::{self, CauseReport},
    metrics::{Latency, Metrics},
    model::{Cause, FlowEvent, FlowEventKind, Verdict, VerdictKind},
};

/// Where changes are reported: the recent-event ring, followers, metrics. Kept apart
/// from the flow table so a flow's state can be reported while it is borrowed.
pub(super) struct Journal {
    pub(super) clock: Clock,
    pub(super) events: VecDeque<FlowEvent>,
    pub(super) capacity: usize,
    pub(super) events_tx: broadcast::Sender<FlowEvent>,
    pub(super) interfaces: HashMap<u32, Arc<str>>,
    /// Removed interfaces whose names are still kept, oldest first.
    pub(super) departed: VecDeque<(u32, Arc<str>)>,
    pub(super) metrics: Arc<Metrics>,
    /// Kubernetes names of flow ends, read when a verdict or event is reported.
    pub(super) names: Names,
    /// Where new failing causes of known pods go (`--events`); full means dropped.
    pub(super) reports: Option<mpsc::Sender<CauseReport>>,
    /// Reports of timeouts, held until it is known whether they are part of a node-wide
    /// failure (see [`REPORT_HOLD`]), with when each is due.
    pub(super) held_reports: VecDeque<(Duration, CauseReport)>,
}

impl Journal {
    /// Records a change of `state`, counts a verdict when the flow reaches a new final
    /// one, and observes what the change timed.
    pub(super) fn record(
        &mut self,
        state: &mut FlowState,
        before: VerdictKind,
        kind: FlowEventKind,
        now: Duration,
    ) {
        let timed = timed(state, before, kind);
        let verdict_changed = state.verdict != before;
        if matches!(kind, FlowEventKind::Timeout) && !verdict_changed {
            return;
        }
        let verdict = self.verdict_of(state);
        if let Some((latency, took)) = timed {
            self.metrics.latency(latency, &verdict, took);
        }
        if verdict_changed && state.verdict.is_final() {
            self.metrics.verdict_reached(&verdict);
            if let Some(cause) = verdict.cause.filter(|c| c.is_failure()) {
                self.metrics.cause_reached(cause);
                self.report(&verdict, cause, now);
            }
        }
        // The event shares the verdict's names, interface and DNS summary: looked up once.
        let event = FlowEvent {
            time: self.clock.to_utc(now),
            flow: verdict.flow,
            event: kind,
            verdict: verdict.verdict,
            reason: verdict.reason,
            cause: verdict.cause,
            next: verdict.next,
            interface: verdict.interface,
            src: verdict.src,
            dst: verdict.dst,
            dns: verdict.dns,
        };
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        if self.events_tx.receiver_count() > 0 {
            // A follower that went away in between is fine.
            let _ = self.events_tx.send(event.clone());
        }
        self.events.push_back(event);
    }

    /// Hands a new failing cause of a flow from a known pod to the Event writer; a
    /// timeout's waits [`REPORT_HOLD`] first.
    fn report(&mut self, verdict: &Verdict, cause: Cause, now: Duration) {
        let Some(reports) = &self.reports else {
            return;
        };
        let Some((namespace, pod)) = verdict
            .src
            .as_ref()
            .and_then(|src| Some((src.namespace.clone()?, src.pod.clone()?)))
        else {
            return;
        };
        // Never waits on the packet path: a full channel loses this report (counted).
        let report = CauseReport {
            namespace,
            pod,
            cause,
            reason: Arc::clone(&verdict.reason),
            next: verdict.next.clone(),
            flow: verdict.flow,
        };
        let timeout = matches!(
            cause,
            Cause::DroppedBetween | Cause::ServerSilent | Cause::NoAnswer | Cause::DnsNoAnswer
        );
        if timeout && self.held_reports.len() < HELD_REPORTS {
            self.held_reports.push_back((now + REPORT_HOLD, report));
        } else {
            kube_events::offer(reports, report, &self.metrics);
        }
    }

    /// Sends the held reports that are due: as they are, or, while a node-wide failure
    /// goes on, as that failure (the timeout was the node's, not its own).
    pub(super) fn release_reports(
        &mut self,
        now: Duration,
        incident: Option<&Incident>,
        node: Option<&Arc<str>>,
    ) {
        let Some(reports) = &self.reports else {
            return;
        };
        while let Some((due, _)) = self.held_reports.front() {
            if *due > now {
                break;
            }
            let (_, mut report) = self.held_reports.pop_front().expect("checked");
            if let Some(incident) = incident {
                let diagnosis = node_datapath(incident, node);
                report.cause = diagnosis.cause;
                report.reason = diagnosis.reason.into();
                report.next = diagnosis.next.map(Arc::from);
            }
            kube_events::offer(reports, report, &self.metrics);
        }
    }

    pub(super) fn interface_name(&self, ifindex: u32) -> Arc<str> {
        match self.interfaces.get(&ifindex) {
            Some(name) => Arc::clone(name),
            None if ifindex == 0 => "".into(),
            None => format!("if{ifindex}").into(),
        }
    }

    pub(super) fn verdict_of(&self, state: &FlowState) -> Verdict {
        Verdict {
            flow: state.flow,
            verdict: state.verdict,
            reason: shown_reason(state),
            cause: state.cause,
            next: state.next.clone(),
            counts: state.counts,
            first_seen: self.clock.to_utc(state.first_seen),
            last_seen: self.clock.to_utc(state.last_seen),
            interface: self.interface_name(state.ifindex),
            src: self.names.source(state.flow.src_ip),
            dst: self
                .names
                .destination(state.flow.dst_ip, state.flow.dst_port),
            dns: dns_summary(state),
            backend: state.far.as_ref().map(|far| far.backend),
        }
    }
}

/// What a change of `state` timed, once: the handshake its SYN-ACK completed (from the
/// attempt's first SYN), or the DNS response to a query it saw. Only where the flow is
/// counted at its client's veth (the server's sees only its own turnaround), and not
/// from counts recovered after lost events (their times are the hook's, not a packet's).
fn timed(
    state: &mut FlowState,
    before: VerdictKind,
    kind: FlowEventKind,
) -> Option<(Latency, Duration)> {
    // Read first: writing a flow's DNS state allocates it.
    let dns = state
        .dns
        .answered_in
        .is_some()
        .then(|| state.dns.answered_in.take());
    if state.counted_at != Side::Client || kind == FlowEventKind::Recovered {
        return None;
    }
    if let Some(took) = dns.flatten() {
        return Some((Latency::DnsResponse, took));
    }
    let answered = matches!(kind, FlowEventKind::Syn | FlowEventKind::SynAck)
        && matches!(before, VerdictKind::Pending | VerdictKind::Timeout)
        && state.verdict == VerdictKind::Ok;
    let took = state.answered_at?.saturating_sub(state.attempt_start?);
    answered.then_some((Latency::TcpHandshake, took))
}
