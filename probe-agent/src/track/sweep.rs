//! The passing of time: the deadlines that expired, and held NXDOMAINs released as
//! search-path expansions.

use super::*;

impl Tracker {
    /// The lookup a held NXDOMAIN belonged to went on to `next`: it was a search-path
    /// expansion, not a failure.
    pub(super) fn release_expansion(
        &mut self,
        key: FlowKey,
        generation: u64,
        next: &str,
        now: Duration,
    ) {
        let Some(state) = self.flows.peek_mut(&key) else {
            return;
        };
        if state.generation != generation {
            return;
        }
        let Some((summary, _)) = state.dns.held.take().map(|held| *held) else {
            return;
        };
        self.journal.metrics.dns_search_expansion();
        let before = state.verdict;
        state.dns.expansion = Some(Box::new((summary, format!("the lookup went on to {next}"))));
        settle_dns(state);
        Explainer::new(&self.journal, &self.context, &self.pairing).refresh(state, before);
        self.journal
            .record(state, before, FlowEventKind::SearchExpansion, now);
    }

    /// Declares the timeouts that have expired by `now` (monotonic).
    pub fn sweep(&mut self, now: Duration) {
        while let Some(Reverse(Deadline {
            at,
            generation,
            slot,
        })) = self.deadlines.peek().copied()
        {
            if at.get() > now {
                break;
            }
            self.deadlines.pop();
            // A timeout is not a use: it must not refresh the flow's LRU rank.
            let Some((key, state)) = self.flows.at_slot_mut(slot) else {
                continue;
            };
            if state.generation != generation {
                continue;
            }
            let before = state.verdict;
            let past_the_veth = dns_answers_past_the_veth(state, now);
            if !past_the_veth.is_empty() {
                for dns in &past_the_veth {
                    self.journal.metrics.packets(PacketKind::DnsResponse, 1);
                    let deadlines = dns_message(
                        state,
                        &mut self.context.search,
                        &self.journal.metrics,
                        key,
                        dns,
                        now,
                        self.config.dns_timeout,
                    );
                    self.deadlines.extend(deadlines.into_iter().map(|at| {
                        Reverse(Deadline {
                            at: at.into(),
                            generation,
                            slot,
                        })
                    }));
                }
                state.reason = format!(
                    "{}; the answer went into the client past its veth (a datapath \
                     redirecting into pods)",
                    state.reason
                )
                .into();
                node_outcome(&mut self.context.node, &self.journal, state, before, now);
                Explainer::new(&self.journal, &self.context, &self.pairing).refresh(state, before);
                self.journal
                    .record(state, before, FlowEventKind::DnsResponse, now);
                continue;
            }
            if tcp::syn_due(state, now, self.config.syn_timeout) {
                match tcp::answer_past_the_veth(state, now) {
                    tcp::PastTheVeth::WaitUntil(at) => {
                        self.deadlines.push(Reverse(Deadline {
                            at: at.into(),
                            generation,
                            slot,
                        }));
                        continue;
                    }
                    tcp::PastTheVeth::Delivered(kind, n) => {
                        self.journal.metrics.packets(kind.into(), u64::from(n));
                        node_outcome(&mut self.context.node, &self.journal, state, before, now);
                        Explainer::new(&self.journal, &self.context, &self.pairing)
                            .refresh(state, before);
                        let event = if kind == EventKind::SynAck {
                            FlowEventKind::SynAck
                        } else {
                            FlowEventKind::Rst
                        };
                        self.journal.record(state, before, event, now);
                        continue;
                    }
                    tcp::PastTheVeth::No | tcp::PastTheVeth::Lost => {}
                }
            }
            // Each runs: any may have expired (DNS over TCP has a handshake and queries).
            let syn = state.flow.protocol == Protocol::Tcp
                && (expire_syn(state, now, self.config.syn_timeout)
                    | tcp::expire_early_answer(state, now));
            let held = expire_held(state, &self.context.search, now);
            let retry_since = self
                .dns_tcp_attempts
                .peek(&(state.flow.src_ip, state.flow.dst_ip))
                .copied();
            let expired = expire_dns(state, now, self.config.dns_timeout, retry_since) | held | syn;
            if expired {
                node_outcome(&mut self.context.node, &self.journal, state, before, now);
                Explainer::new(&self.journal, &self.context, &self.pairing).refresh(state, before);
                self.journal
                    .record(state, before, FlowEventKind::Timeout, now);
                if syn {
                    self.tcp_retry_failed(key, before, now);
                }
            }
        }
        let change = self.context.node.evaluate(now);
        self.on_node_change(change, now);
        self.journal.release_reports(
            now,
            self.context.node.current(),
            self.context.node_name.as_ref(),
        );
        self.compact_deadlines();
    }
}
