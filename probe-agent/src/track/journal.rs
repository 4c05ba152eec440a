//! Where changes of flows are reported: the recent-event ring, followers, metrics and
//! the Kubernetes Event writer.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{broadcast, mpsc};

use super::{
    Clock, FlowState, HELD_REPORTS, REPORT_HOLD, UnixNanos, dns::dns_summary, joined_reason,
    node::Incident, node_datapath, orient::Side, shown_reason,
};
use crate::{
    enrich::{CachedNames, Names},
    kube_events::{self, CauseReport},
    metrics::{FlowLabels, Latency, Metrics},
    model::{Cause, DnsSummary, Endpoint, Flow, FlowEvent, FlowEventKind, Verdict, VerdictKind},
};

/// One change of a flow as recorded: what a [`FlowEvent`] is made of, without the words
/// that only a reader needs (joined and formatted when read). Its ends are named as they
/// were when it happened: a pod deleted since, or its IP's next owner, does not rename it.
pub(super) struct Entry {
    time: UnixNanos,
    flow: Flow,
    event: FlowEventKind,
    verdict: VerdictKind,
    cause: Option<Cause>,
    ifindex: u32,
    src: Option<Arc<Endpoint>>,
    dst: Option<Arc<Endpoint>>,
    /// What was seen, and why (shown joined as the reason).
    reason: Arc<str>,
    explanation: Option<Arc<str>>,
    next: Option<Arc<str>>,
    dns: Option<Box<DnsSummary>>,
}

/// Where changes are reported: the recent-event ring, followers, metrics. Kept apart
/// from the flow table so a flow's state can be reported while it is borrowed.
pub(super) struct Journal {
    pub(super) clock: Clock,
    pub(super) events: VecDeque<Entry>,
    pub(super) capacity: usize,
    pub(super) events_tx: broadcast::Sender<FlowEvent>,
    pub(super) interfaces: HashMap<u32, Arc<str>>,
    /// Removed interfaces whose names are still kept, oldest first.
    pub(super) departed: VecDeque<(u32, Arc<str>)>,
    pub(super) metrics: Arc<Metrics>,
    /// Kubernetes names of flow ends, read when a verdict or event is reported.
    pub(super) names: Names,
    /// The same, as read on the packet path (see [`Names::cached`]).
    pub(super) named: CachedNames,
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
        let reached = verdict_changed && state.verdict.is_final();
        let (src, dst) = self.named.ends(&state.flow);
        // DNS summaries are built only for what is counted: a timing or a new final verdict.
        if timed.is_some() || reached {
            let dns = dns_summary(state);
            let labels = FlowLabels {
                verdict: state.verdict,
                dst_port: state.flow.dst_port,
                src: src.as_ref(),
                dst: dst.as_ref(),
                dns: dns.as_ref(),
            };
            if let Some((latency, took)) = timed {
                self.metrics.latency(latency, labels, took);
            }
            if reached {
                self.metrics.verdict_reached(labels);
                if let Some(cause) = state.cause.filter(|c| c.is_failure()) {
                    self.metrics.cause_reached(cause);
                    self.report(state, src.as_deref(), cause, now);
                }
            }
        }
        let entry = Entry {
            time: self.clock.to_unix_nanos(now),
            flow: state.flow,
            event: kind,
            verdict: state.verdict,
            cause: state.cause,
            ifindex: state.ifindex,
            src,
            dst,
            reason: Arc::clone(&state.reason),
            explanation: state.explanation.clone(),
            next: state.next.clone(),
            dns: super::dns::is_dns(state)
                .then(|| dns_summary(state).map(Box::new))
                .flatten(),
        };
        if self.events_tx.receiver_count() > 0 {
            // A follower that went away in between is fine.
            let _ = self.events_tx.send(self.event_of(&entry));
        }
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(entry);
    }

    /// The event an entry records, with its words joined.
    pub(super) fn event_of(&self, entry: &Entry) -> FlowEvent {
        FlowEvent {
            time: entry.time.to_utc(),
            flow: entry.flow,
            event: entry.event,
            verdict: entry.verdict,
            reason: joined_reason(&entry.reason, entry.explanation.as_ref()),
            cause: entry.cause,
            next: entry.next.clone(),
            interface: self.interface_name(entry.ifindex),
            src: entry.src.clone(),
            dst: entry.dst.clone(),
            dns: entry.dns.as_deref().cloned(),
        }
    }

    /// Hands a new failing cause of a flow from a known pod to the Event writer; a
    /// timeout's waits [`REPORT_HOLD`] first.
    fn report(&mut self, state: &FlowState, src: Option<&Endpoint>, cause: Cause, now: Duration) {
        let Some(reports) = &self.reports else {
            return;
        };
        let Some((namespace, pod)) =
            src.and_then(|src| Some((src.namespace.clone()?, src.pod.clone()?)))
        else {
            return;
        };
        // Never waits on the packet path: a full channel loses this report (counted).
        let report = CauseReport {
            namespace,
            pod,
            cause,
            reason: shown_reason(state),
            next: state.next.clone(),
            flow: state.flow,
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
                report.reason = diagnosis.reason;
                report.next = diagnosis.next;
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
