//! Node-level failures. When most pod pairs on this node time out at once, the cause is
//! the node's datapath (CNI, bridge, routes, node firewall), not each flow: one node
//! verdict says so, instead of a row per flow drowning the signal.
//!
//! The last outcome of every (source, destination) address pair is kept for a window;
//! an incident starts when enough pairs from enough sources fail and they are most of
//! the pairs seen, and ends when that is no longer so.

use std::{collections::HashSet, net::IpAddr, num::NonZeroUsize, time::Duration};

use super::lru_slab::LruSlab;

/// Outcomes older than this no longer count.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Pairs remembered (least recently updated forgotten first).
const PAIRS: usize = 4096;
/// An incident needs at least this many failing pairs, from this many sources...
const MIN_FAILING_PAIRS: usize = 4;
const MIN_SOURCES: usize = 2;
/// ...that are at least this share of the pairs seen in the window (80 %).
const FAILING_SHARE: (usize, usize) = (4, 5);
/// How often the pairs are evaluated.
pub const EVALUATE_EVERY: Duration = Duration::from_millis(100);
/// An ended incident stays listed this long.
const ENDED_KEPT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug)]
struct Outcome {
    failed: bool,
    at: Duration,
}

/// One node-wide failure: since when, until when, how wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incident {
    pub since: Duration,
    pub until: Option<Duration>,
    /// At its widest: failing pairs, pairs seen, distinct failing sources.
    pub failing_pairs: usize,
    pub pairs: usize,
    pub sources: usize,
    /// Flows that timed out while it lasted.
    pub flows: u64,
}

pub struct NodeWatch {
    pairs: LruSlab<(IpAddr, IpAddr), Outcome>,
    current: Option<Incident>,
    ended: Option<Incident>,
    evaluated: Option<Duration>,
}

impl Default for NodeWatch {
    fn default() -> Self {
        Self {
            pairs: LruSlab::new(NonZeroUsize::new(PAIRS).expect("non-zero")),
            current: None,
            ended: None,
            evaluated: None,
        }
    }
}

/// What an outcome changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    None,
    Started,
    Ended,
}

impl NodeWatch {
    /// A flow between `src` and `dst` reached a final verdict: timed out (`failed`) or
    /// answered (OK, refused, an rcode: the datapath carried it).
    /// Cheap: the verdict is re-evaluated by [`NodeWatch::evaluate`], at most every
    /// [`EVALUATE_EVERY`].
    pub fn outcome(&mut self, src: IpAddr, dst: IpAddr, failed: bool, now: Duration) {
        self.pairs.put((src, dst), Outcome { failed, at: now });
        if failed && let Some(incident) = &mut self.current {
            incident.flows += 1;
        }
    }

    /// Re-evaluates the pairs seen (an incident also ends when its failures age out).
    /// A pass reads every pair remembered, so it runs at most every [`EVALUATE_EVERY`].
    pub fn evaluate(&mut self, now: Duration) -> Change {
        if self
            .evaluated
            .is_some_and(|at| now.saturating_sub(at) < EVALUATE_EVERY)
        {
            return Change::None;
        }
        self.evaluated = Some(now);
        let recent = self
            .pairs
            .iter()
            .filter(|(_, o)| now.saturating_sub(o.at) < WINDOW);
        let (mut failing, mut pairs) = (0, 0);
        let mut sources = HashSet::new();
        for ((src, _), outcome) in recent {
            pairs += 1;
            if outcome.failed {
                failing += 1;
                sources.insert(*src);
            }
        }
        let down = failing >= MIN_FAILING_PAIRS
            && sources.len() >= MIN_SOURCES
            && failing * FAILING_SHARE.1 >= pairs * FAILING_SHARE.0;
        match (&mut self.current, down) {
            (Some(incident), true) => {
                if failing > incident.failing_pairs {
                    (incident.failing_pairs, incident.pairs) = (failing, pairs);
                    incident.sources = incident.sources.max(sources.len());
                }
                Change::None
            }
            (None, true) => {
                self.current = Some(Incident {
                    since: now,
                    until: None,
                    failing_pairs: failing,
                    pairs,
                    sources: sources.len(),
                    flows: failing as u64,
                });
                Change::Started
            }
            (Some(_), false) => {
                let mut incident = self.current.take().expect("matched Some");
                incident.until = Some(now);
                self.ended = Some(incident);
                Change::Ended
            }
            (None, false) => Change::None,
        }
    }

    pub fn current(&self) -> Option<&Incident> {
        self.current.as_ref()
    }

    /// The incident going on, and the last one that ended less than [`ENDED_KEPT`] ago.
    pub fn incidents(&self, now: Duration) -> Vec<Incident> {
        self.current
            .iter()
            .chain(self.ended.iter().filter(|i| {
                i.until
                    .is_some_and(|until| now.saturating_sub(until) < ENDED_KEPT)
            }))
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 244, 0, last))
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn most_pairs_failing_from_several_sources_is_a_node_incident() {
        let mut node = NodeWatch::default();
        node.outcome(ip(1), ip(10), true, s(1));
        node.outcome(ip(1), ip(11), true, s(1));
        node.outcome(ip(2), ip(10), true, s(1));
        assert_eq!(node.evaluate(s(1)), Change::None);
        node.outcome(ip(2), ip(11), true, s(2));
        assert_eq!(node.evaluate(s(2)), Change::Started);
        let incident = *node.current().unwrap();
        assert_eq!(
            (incident.failing_pairs, incident.pairs, incident.sources),
            (4, 4, 2)
        );
        assert_eq!(incident.since, s(2));
    }

    #[test]
    fn one_client_failing_everywhere_is_not_the_node() {
        let mut node = NodeWatch::default();
        for dst in 10..20 {
            node.outcome(ip(1), ip(dst), true, s(1));
        }
        assert_eq!(node.evaluate(s(1)), Change::None);
    }

    #[test]
    fn failures_among_healthy_pairs_are_not_the_node() {
        let mut node = NodeWatch::default();
        for src in 1..=4 {
            node.outcome(ip(src), ip(10), true, s(1));
            node.outcome(ip(src), ip(11), false, s(1));
        }
        node.evaluate(s(1));
        assert!(node.current().is_none(), "4 of 8 failing is not most");
    }

    #[test]
    fn the_incident_ends_when_pairs_answer_again_and_stays_listed() {
        let mut node = NodeWatch::default();
        for (src, dst) in [(1, 10), (1, 11), (2, 10), (2, 11)] {
            node.outcome(ip(src), ip(dst), true, s(1));
        }
        node.evaluate(s(1));
        assert!(node.current().is_some());
        for (src, dst) in [(1, 10), (1, 11), (2, 10)] {
            node.outcome(ip(src), ip(dst), false, s(3));
        }
        node.evaluate(s(3));
        assert!(node.current().is_none());
        let listed = node.incidents(s(4));
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].until, Some(s(3)));
        assert!(node.incidents(s(3) + ENDED_KEPT).is_empty());
    }

    #[test]
    fn evaluation_is_throttled() {
        let mut node = NodeWatch::default();
        assert_eq!(node.evaluate(s(1)), Change::None);
        for (src, dst) in [(1, 10), (1, 11), (2, 10), (2, 11)] {
            node.outcome(ip(src), ip(dst), true, s(1));
        }
        assert_eq!(node.evaluate(s(1) + EVALUATE_EVERY / 2), Change::None);
        assert_eq!(node.evaluate(s(1) + EVALUATE_EVERY), Change::Started);
    }

    #[test]
    fn the_incident_ends_when_its_failures_age_out() {
        let mut node = NodeWatch::default();
        for (src, dst) in [(1, 10), (1, 11), (2, 10), (2, 11)] {
            node.outcome(ip(src), ip(dst), true, s(1));
        }
        assert_eq!(node.evaluate(s(1)), Change::Started);
        assert_eq!(node.evaluate(s(5)), Change::None);
        assert_eq!(node.evaluate(s(1) + WINDOW), Change::Ended);
    }
}
