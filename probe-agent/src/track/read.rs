//! What the API reads: verdicts and events, newest kept, and the node-wide verdicts.

use super::*;
use crate::serve::HeadFilter;

impl Tracker {
    /// Verdicts accepted by `keep`: the `limit` most recently seen, oldest first.
    pub fn verdicts(&self, keep: &dyn Fn(&Verdict) -> bool, limit: usize) -> Vec<Verdict> {
        self.verdicts_where(&|_, _, _| true, keep, limit)
    }

    /// The same, of the flows `head` accepts (asked of the flow as held, before its
    /// verdict is built).
    pub fn verdicts_where(
        &self,
        head: &HeadFilter,
        keep: &dyn Fn(&Verdict) -> bool,
        limit: usize,
    ) -> Vec<Verdict> {
        // The newest `limit` by (last_seen, first_seen), kept in a min-heap: memory stays
        // O(limit) on a full table, and a flow older than the heap's oldest is skipped
        // before its verdict is even built. Walked the most recent first, and no flow
        // after one marked active before the heap's oldest was seen can be newer (see
        // `TableMarks::activity`): a full heap ends the walk there, so the API's
        // usual question reads `limit` flows and a few, not the whole table.
        // (Sized by the table too: "all" may be asked as usize::MAX.)
        let mut newest: BinaryHeap<Reverse<Ranked>> =
            BinaryHeap::with_capacity(limit.min(self.flows.len()) + 1);
        if limit == 0 {
            return Vec::new();
        }
        for (_, state) in self.flows.iter() {
            let rank = (state.last_seen, state.first_seen, state.generation);
            if newest.len() == limit
                && let Some(Reverse(min)) = newest.peek()
            {
                if state.active_at < min.0.0 {
                    break;
                }
                if rank <= min.0 {
                    continue;
                }
            }
            if !head(&state.flow, state.verdict, state.cause) {
                continue;
            }
            let verdict = self.journal.verdict_of(state);
            if !keep(&verdict) {
                continue;
            }
            newest.push(Reverse(Ranked(rank, verdict)));
            if newest.len() > limit {
                newest.pop();
            }
        }
        let mut out: Vec<Ranked> = newest.into_iter().map(|Reverse(r)| r).collect();
        out.sort_by_key(|ranked| ranked.0);
        out.into_iter().map(|ranked| ranked.1).collect()
    }

    /// Recent events accepted by `keep`: the newest `limit`, oldest first.
    pub fn events(&self, keep: &dyn Fn(&FlowEvent) -> bool, limit: usize) -> Vec<FlowEvent> {
        let mut out: Vec<FlowEvent> = self
            .journal
            .events
            .iter()
            .rev()
            .map(|entry| self.journal.event_of(entry))
            .filter(|event| keep(event))
            .take(limit)
            .collect();
        out.reverse();
        out
    }

    /// Node-level verdicts: the node-wide incident going on, and the last one ended.
    pub fn node_verdicts(&self, now: Duration) -> Vec<NodeVerdict> {
        self.context
            .node
            .incidents(now)
            .into_iter()
            .map(|incident| {
                let diagnosis = node_datapath(&incident, self.context.node_name.as_ref());
                NodeVerdict {
                    verdict: VerdictKind::Timeout,
                    cause: diagnosis.cause,
                    reason: diagnosis.reason.to_string(),
                    next: diagnosis.next.map(|next| next.to_string()),
                    since: self.journal.clock.to_utc(incident.since),
                    until: incident.until.map(|until| self.journal.clock.to_utc(until)),
                    failing_pairs: incident.failing_pairs,
                    pairs: incident.pairs,
                    sources: incident.sources,
                    flows: incident.flows,
                }
            })
            .collect()
    }
}
