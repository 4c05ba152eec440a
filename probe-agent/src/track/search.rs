//! DNS search paths. With `ndots:5`, a pod's one lookup of `api.example.com` is sent as
//! `api.example.com.<ns>.svc.cluster.local`, `….svc.cluster.local`, `….cluster.local`
//! and `api.example.com.`: three NXDOMAINs before the answer. Here those queries are
//! grouped back into the one lookup the pod made, so an NXDOMAIN is a failure only when
//! the whole chain failed.
//!
//! Search suffixes are inferred from the names seen, without the pods' resolv.conf:
//! `<ns>.svc.<domain>`, `svc.<domain>` and `<domain>` for every cluster domain seen in a
//! `<name>.<ns>.svc.<domain>` name (`cluster.local` from the start), and any suffix a
//! lookup went on to after the cluster's (a node's own search domains).

use std::{collections::VecDeque, net::IpAddr, num::NonZeroUsize, time::Duration};

use lru::LruCache;
use probe_ebpf::FlowKey;

/// Clients whose lookups are remembered (least recently active forgotten first).
const CLIENTS: usize = 16_384;
/// Lookups in flight per client; an application resolving many names at once keeps
/// the newest.
const LOOKUPS_PER_CLIENT: usize = 8;
/// Names one lookup tries at most (a search list has at most 32 entries; Kubernetes'
/// is 3 plus the node's).
const NAMES_PER_LOOKUP: usize = 12;
/// Cluster domains and learned suffixes kept.
const DOMAINS: usize = 4;
const LEARNED: usize = 16;
/// A lookup whose last query is older than this is over.
const LOOKUP_IDLE: Duration = Duration::from_secs(30);

/// One pod's lookup of one name, as its resolver expanded it.
#[derive(Clone, Debug)]
struct Lookup {
    /// What the pod may have asked for, most likely first: every way to read the names
    /// tried so far as `<asked>.<search suffix>` or `<asked>`.
    asked: Vec<String>,
    /// The names queried, in order, with the trailing dot.
    tried: Vec<String>,
    /// Flows holding an NXDOMAIN of this lookup until it is known whether it went on.
    held: Vec<(FlowKey, u64)>,
    /// A name of this lookup that was answered NOERROR (with or without records of the
    /// type asked): the name exists, so the lookup's NXDOMAINs are no failure.
    answered: Option<String>,
    last: Duration,
}

/// Lookups in flight and the search suffixes inferred so far.
pub struct SearchPaths {
    domains: VecDeque<String>,
    learned: VecDeque<String>,
    lookups: LruCache<IpAddr, Vec<Lookup>>,
}

/// A whole lookup: what the pod asked for and every name tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub asked: String,
    pub tried: Vec<String>,
}

impl Default for SearchPaths {
    fn default() -> Self {
        Self {
            domains: VecDeque::from(["cluster.local".to_string()]),
            learned: VecDeque::new(),
            lookups: LruCache::new(NonZeroUsize::new(CLIENTS).expect("non-zero")),
        }
    }
}

/// `Name.Example.` → `name.example`: how names are compared.
fn normal(qname: &str) -> String {
    qname.trim_end_matches('.').to_ascii_lowercase()
}

impl SearchPaths {
    /// The readings of `qname` as `<asked>.<search suffix>`, most likely first; empty
    /// when it ends in no known search suffix (an absolute name).
    pub fn expansion_of(&self, qname: &str) -> Vec<String> {
        let name = normal(qname);
        let mut asked = Vec::new();
        let mut push = |base: &str| {
            if !base.is_empty() && !asked.iter().any(|a: &String| a == base) {
                asked.push(base.to_string());
            }
        };
        for domain in &self.domains {
            // `<asked>.<ns>.svc.<domain>`: the pod's own namespace comes first.
            if let Some(head) = name.strip_suffix(&format!(".svc.{domain}"))
                && let Some((base, _namespace)) = head.rsplit_once('.')
            {
                push(base);
            }
            if let Some(base) = name.strip_suffix(&format!(".svc.{domain}")) {
                push(base);
            }
            if let Some(base) = name.strip_suffix(&format!(".{domain}")) {
                push(base);
            }
        }
        for suffix in &self.learned {
            if let Some(base) = name.strip_suffix(&format!(".{suffix}")) {
                push(base);
            }
        }
        asked
    }

    /// A query was sent. If it goes on with a lookup whose NXDOMAINs are held, those
    /// were search-path expansions: returns the flows holding them.
    pub fn on_query(&mut self, client: IpAddr, qname: &str, now: Duration) -> Vec<(FlowKey, u64)> {
        self.learn_domain(qname);
        let name = normal(qname);
        let expansion = self.expansion_of(qname);
        let lookups = self.lookups.get_or_insert_mut(client, Vec::new);
        lookups.retain(|l| now.saturating_sub(l.last) < LOOKUP_IDLE);
        let going_on = lookups.iter().rposition(|l| {
            !l.tried.iter().any(|t| normal(t) == name)
                && l.asked
                    .iter()
                    .any(|a| continues(&self.domains, &self.learned, l, a, &name))
        });
        // Else the name a lookup asked last, asked again: A and AAAA on two sockets, or
        // a retry.
        if going_on.is_none()
            && lookups
                .iter()
                .any(|l| l.tried.last().is_some_and(|t| normal(t) == name))
        {
            return Vec::new();
        }
        let mut learned = None;
        let released = match going_on {
            Some(i) => {
                let lookup = &mut lookups[i];
                let asked = std::mem::take(&mut lookup.asked);
                lookup.asked = asked
                    .into_iter()
                    .filter(|a| continues(&self.domains, &self.learned, lookup, a, &name))
                    .collect();
                if let Some(asked) = lookup.asked.first()
                    && let Some(suffix) = name.strip_prefix(&format!("{asked}."))
                {
                    learned = Some(suffix.to_string());
                }
                if lookup.tried.len() < NAMES_PER_LOOKUP {
                    lookup.tried.push(qname.to_string());
                }
                lookup.last = now;
                std::mem::take(&mut lookup.held)
            }
            None => {
                // A new lookup (an earlier name asked again starts one too: the same
                // name resolved once more, or for the other address family).
                if lookups.len() == LOOKUPS_PER_CLIENT {
                    lookups.remove(0);
                }
                let mut asked = expansion;
                asked.push(name.clone());
                lookups.push(Lookup {
                    asked,
                    tried: vec![qname.to_string()],
                    held: Vec::new(),
                    answered: None,
                    last: now,
                });
                Vec::new()
            }
        };
        if let Some(suffix) = learned {
            self.learn_suffix(suffix);
        }
        released
    }

    /// An NXDOMAIN for an expansion: `flow` holds it until the lookup goes on (an
    /// expansion after all) or does not (the lookup failed there).
    pub fn hold(&mut self, client: IpAddr, qname: &str, flow: (FlowKey, u64), now: Duration) {
        let name = normal(qname);
        let lookups = self.lookups.get_or_insert_mut(client, Vec::new);
        let lookup = match lookups
            .iter()
            .rposition(|l| l.tried.iter().any(|t| normal(t) == name))
        {
            Some(i) => &mut lookups[i],
            None => {
                // Its query was not seen (an event lost): the lookup starts here.
                if lookups.len() == LOOKUPS_PER_CLIENT {
                    lookups.remove(0);
                }
                lookups.push(Lookup {
                    asked: Vec::new(),
                    tried: vec![qname.to_string()],
                    held: Vec::new(),
                    answered: None,
                    last: now,
                });
                lookups.last_mut().expect("just pushed")
            }
        };
        if !lookup.held.contains(&flow) {
            lookup.held.push(flow);
        }
    }

    /// `qname` was answered NOERROR: its lookup found a name that exists.
    pub fn answered(&mut self, client: IpAddr, qname: &str) {
        let name = normal(qname);
        if let Some(lookup) = self.lookups.peek_mut(&client).and_then(|lookups| {
            lookups
                .iter_mut()
                .rfind(|l| l.tried.iter().any(|t| normal(t) == name))
        }) {
            lookup.answered.get_or_insert_with(|| qname.to_string());
        }
    }

    /// `qname` is the first name its lookup tried: a resolver tries a name with enough
    /// dots (`ndots`) as it is before its search list, so an NXDOMAIN for it may be
    /// followed by the expansions.
    pub fn opens_lookup(&self, client: IpAddr, qname: &str) -> bool {
        let name = normal(qname);
        self.lookups.peek(&client).is_some_and(|lookups| {
            lookups
                .iter()
                .rfind(|l| l.tried.iter().any(|t| normal(t) == name))
                .is_some_and(|l| l.tried.len() == 1)
        })
    }

    /// The name answered NOERROR in the lookup `qname` belongs to, if any.
    pub fn answered_in_lookup(&self, client: IpAddr, qname: &str) -> Option<String> {
        let name = normal(qname);
        self.lookups
            .peek(&client)?
            .iter()
            .rfind(|l| l.tried.iter().any(|t| normal(t) == name))?
            .answered
            .clone()
    }

    /// The lookup `qname` belongs to, for a client whose lookup ended on it.
    pub fn chain(&self, client: IpAddr, qname: &str) -> Option<Chain> {
        let name = normal(qname);
        let lookup = self
            .lookups
            .peek(&client)?
            .iter()
            .rfind(|l| l.tried.iter().any(|t| normal(t) == name))?;
        let asked = lookup
            .asked
            .first()
            .cloned()
            .or_else(|| self.expansion_of(qname).into_iter().next())
            .unwrap_or(name);
        Some(Chain {
            asked,
            tried: lookup.tried.clone(),
        })
    }

    fn learn_domain(&mut self, qname: &str) {
        let name = normal(qname);
        let Some((head, domain)) = name.rsplit_once(".svc.") else {
            return;
        };
        // `<name>.<ns>.svc.<domain>`: a Service name, so `<domain>` is a cluster domain.
        if head.contains('.') && !domain.is_empty() && !self.domains.iter().any(|d| d == domain) {
            if self.domains.len() == DOMAINS {
                self.domains.pop_back();
            }
            self.domains.push_back(domain.to_string());
        }
    }

    fn learn_suffix(&mut self, suffix: String) {
        let is_cluster = self.domains.iter().any(|d| {
            suffix == *d || suffix == format!("svc.{d}") || suffix.ends_with(&format!(".svc.{d}"))
        });
        if is_cluster || self.learned.contains(&suffix) {
            return;
        }
        if self.learned.len() == LEARNED {
            self.learned.pop_front();
        }
        self.learned.push_back(suffix);
    }
}

/// `name` can be the next name a resolver tries in `lookup` of `asked`: `asked` itself
/// (absolute, last), or `asked` under a search suffix. Within the cluster domains only the
/// suffixes of a pod's search list count (`<ns>.svc.<domain>` only right after the name
/// was tried as it is, since it otherwise comes first): `db.other.svc.cluster.local` is a
/// new lookup of `db.other`, not the lookup of `db` going on. Any other suffix may be a
/// node's own search domain, still to be learned.
fn continues(
    domains: &VecDeque<String>,
    learned: &VecDeque<String>,
    lookup: &Lookup,
    asked: &str,
    name: &str,
) -> bool {
    if name == asked {
        return true;
    }
    let Some(rest) = name
        .strip_prefix(asked)
        .and_then(|rest| rest.strip_prefix('.'))
    else {
        return false;
    };
    if learned.iter().any(|suffix| suffix == rest) {
        return true;
    }
    for domain in domains {
        if rest == domain || rest == format!("svc.{domain}") {
            return true;
        }
        if let Some(namespace) = rest.strip_suffix(&format!(".svc.{domain}")) {
            let tried_as_is = lookup.tried.len() == 1 && normal(&lookup.tried[0]) == asked;
            return !namespace.contains('.') && tried_as_is;
        }
        if rest.ends_with(&format!(".{domain}")) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> (FlowKey, u64) {
        (
            FlowKey {
                src_port: port,
                ..FlowKey::default()
            },
            u64::from(port),
        )
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 5));

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn kubernetes_search_suffixes_are_recognised() {
        let paths = SearchPaths::default();
        assert_eq!(
            paths.expansion_of("api.example.com.production.svc.cluster.local."),
            [
                "api.example.com",
                "api.example.com.production",
                "api.example.com.production.svc"
            ]
        );
        assert_eq!(
            paths.expansion_of("api.example.com.svc.cluster.local."),
            ["api.example", "api.example.com", "api.example.com.svc"]
        );
        assert!(paths.expansion_of("api.example.com.").is_empty());
    }

    #[test]
    fn a_glibc_chain_releases_each_nxdomain_when_the_next_name_is_asked() {
        let mut paths = SearchPaths::default();
        let names = [
            "api.example.com.production.svc.cluster.local.",
            "api.example.com.svc.cluster.local.",
            "api.example.com.cluster.local.",
            "api.example.com.",
        ];
        assert!(paths.on_query(CLIENT, names[0], at(0)).is_empty());
        paths.hold(CLIENT, names[0], key(1), at(1));
        assert_eq!(paths.on_query(CLIENT, names[1], at(2)), [key(1)]);
        paths.hold(CLIENT, names[1], key(2), at(3));
        assert_eq!(paths.on_query(CLIENT, names[2], at(4)), [key(2)]);
        paths.hold(CLIENT, names[2], key(3), at(5));
        assert_eq!(paths.on_query(CLIENT, names[3], at(6)), [key(3)]);
        let chain = paths.chain(CLIENT, names[3]).unwrap();
        assert_eq!(chain.asked, "api.example.com");
        assert_eq!(chain.tried, names);
    }

    #[test]
    fn a_name_answered_without_records_is_remembered_for_its_lookup() {
        let mut paths = SearchPaths::default();
        let names = ["db.production.svc.cluster.local.", "db.svc.cluster.local."];
        paths.on_query(CLIENT, names[0], at(0));
        paths.answered(CLIENT, names[0]);
        paths.on_query(CLIENT, names[1], at(1));
        assert_eq!(
            paths.answered_in_lookup(CLIENT, names[1]).as_deref(),
            Some(names[0])
        );
        assert_eq!(
            paths.answered_in_lookup(CLIENT, "other.svc.cluster.local."),
            None
        );
    }

    #[test]
    fn a_retransmission_is_not_the_lookup_going_on() {
        let mut paths = SearchPaths::default();
        let name = "payment.production.svc.cluster.local.";
        paths.on_query(CLIENT, name, at(0));
        paths.hold(CLIENT, name, key(1), at(1));
        assert!(paths.on_query(CLIENT, name, at(2)).is_empty());
    }

    #[test]
    fn the_same_name_resolved_again_is_a_new_lookup() {
        let mut paths = SearchPaths::default();
        let names = ["a.production.svc.cluster.local.", "a.svc.cluster.local."];
        for round in 0..2u16 {
            let t = u64::from(round) * 100;
            assert!(paths.on_query(CLIENT, names[0], at(t)).is_empty());
            paths.hold(CLIENT, names[0], key(round + 1), at(t + 1));
            assert_eq!(
                paths.on_query(CLIENT, names[1], at(t + 2)),
                [key(round + 1)]
            );
        }
    }

    #[test]
    fn another_client_or_another_name_does_not_release() {
        let mut paths = SearchPaths::default();
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 6));
        paths.on_query(CLIENT, "a.production.svc.cluster.local.", at(0));
        paths.hold(CLIENT, "a.production.svc.cluster.local.", key(1), at(1));
        assert!(
            paths
                .on_query(other, "a.svc.cluster.local.", at(2))
                .is_empty()
        );
        assert!(
            paths
                .on_query(CLIENT, "b.svc.cluster.local.", at(3))
                .is_empty()
        );
        assert_eq!(
            paths.on_query(CLIENT, "a.svc.cluster.local.", at(4)),
            [key(1)]
        );
    }

    #[test]
    fn node_search_domains_are_learned_from_lookups_that_go_on() {
        let mut paths = SearchPaths::default();
        for (i, name) in [
            "db.production.svc.cluster.local.",
            "db.svc.cluster.local.",
            "db.cluster.local.",
            "db.ec2.internal.",
        ]
        .iter()
        .enumerate()
        {
            paths.on_query(CLIENT, name, at(i as u64));
        }
        assert_eq!(paths.expansion_of("cache.ec2.internal."), ["cache"]);
    }

    #[test]
    fn other_cluster_domains_are_learned_from_service_names() {
        let mut paths = SearchPaths::default();
        paths.on_query(CLIENT, "kube-dns.kube-system.svc.corp.example.", at(0));
        assert_eq!(paths.expansion_of("x.svc.corp.example.")[0], "x");
    }

    #[test]
    fn memory_is_bounded_per_client() {
        let mut paths = SearchPaths::default();
        for i in 0..100u64 {
            paths.on_query(
                CLIENT,
                &format!("n{i}.production.svc.cluster.local."),
                at(i),
            );
        }
        assert_eq!(
            paths.lookups.peek(&CLIENT).unwrap().len(),
            LOOKUPS_PER_CLIENT
        );
    }

    #[test]
    fn a_name_tried_as_it_is_first_goes_on_with_the_search_list() {
        let mut paths = SearchPaths::default();
        let names = [
            "a.b.c.d.e.example.",
            "a.b.c.d.e.example.production.svc.cluster.local.",
            "a.b.c.d.e.example.svc.cluster.local.",
        ];
        assert!(paths.on_query(CLIENT, names[0], at(0)).is_empty());
        assert!(paths.opens_lookup(CLIENT, names[0]));
        paths.hold(CLIENT, names[0], key(1), at(1));
        assert_eq!(paths.on_query(CLIENT, names[1], at(2)), [key(1)]);
        assert!(!paths.opens_lookup(CLIENT, names[1]));
        paths.hold(CLIENT, names[1], key(2), at(3));
        assert_eq!(paths.on_query(CLIENT, names[2], at(4)), [key(2)]);
        assert_eq!(
            paths.chain(CLIENT, names[2]).unwrap().asked,
            "a.b.c.d.e.example"
        );
    }

    #[test]
    fn a_lookup_of_a_longer_name_is_not_the_shorter_ones_going_on() {
        let mut paths = SearchPaths::default();
        let db = "db.production.svc.cluster.local.";
        paths.on_query(CLIENT, db, at(0));
        paths.hold(CLIENT, db, key(1), at(1));
        for (i, name) in [
            "db.other.production.svc.cluster.local.",
            "db.other.svc.cluster.local.",
        ]
        .iter()
        .enumerate()
        {
            assert!(
                paths.on_query(CLIENT, name, at(2 + i as u64)).is_empty(),
                "{name}"
            );
        }
        assert_eq!(paths.chain(CLIENT, db).unwrap().tried, [db]);
        // db's own next name still releases it.
        assert_eq!(
            paths.on_query(CLIENT, "db.svc.cluster.local.", at(5)),
            [key(1)]
        );
    }
}
