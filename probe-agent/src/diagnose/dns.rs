//! DNS causes: a name that does not exist (with the Services it was probably meant to
//! be), a failing DNS server, queries that get no answer.

use crate::text::text;
use strsim::levenshtein;

use super::Diagnosis;
use crate::{enrich::ClusterView, model::Cause};

/// How many suggestions a reason names at most.
const SUGGESTIONS: usize = 2;

/// The Service and namespace a name asks for: `<service>.<namespace>.svc.<domain>.`.
pub fn service_of(qname: &str) -> Option<(&str, &str)> {
    let name = qname.trim_end_matches('.');
    let (head, _domain) = name.split_once(".svc.")?;
    let (service, namespace) = head.split_once('.')?;
    (!namespace.contains('.') && !service.is_empty() && !namespace.is_empty())
        .then_some((service, namespace))
}

/// The lookup of `asked` failed for every name tried (`tried`, in order; the last is
/// the one whose NXDOMAIN ended it).
pub fn name_not_found(view: &ClusterView, asked: &str, tried: &[String]) -> Diagnosis {
    let wanted = tried.iter().find_map(|name| service_of(name));
    let Some((service, namespace)) = wanted else {
        return Diagnosis {
            cause: Cause::NameNotFound,
            reason: text!(
                "no such name: {asked} is neither a Service nor an external name the DNS server knows"
            ),
            next: Some(text!("nslookup {asked}")),
        };
    };
    let exists = view
        .services
        .keys()
        .any(|(ns, name)| &**ns == namespace && &**name == service);
    if exists {
        // The Service is there: DNS has no record for it.
        return Diagnosis {
            cause: Cause::NameNotFound,
            reason: text!(
                "Service {namespace}/{service} exists but DNS has no record for it (a headless Service without ready endpoints, or the DNS server does not serve the cluster domain)"
            ),
            next: Some(text!(
                "kubectl get endpointslices -l kubernetes.io/service-name={service} -n {namespace}"
            )),
        };
    }
    let mut elsewhere: Vec<&str> = view
        .services
        .keys()
        .filter(|(ns, name)| &**name == service && &**ns != namespace)
        .map(|(ns, _)| &**ns)
        .collect();
    elsewhere.sort_unstable();
    let namespace_missing = !view.namespaces.is_empty() && !view.namespaces.contains_key(namespace);
    let closest_namespace = if namespace_missing {
        closest(namespace, view.namespaces.keys().map(|n| &**n))
            .first()
            .copied()
    } else {
        None
    };
    if namespace_missing && elsewhere.is_empty() && closest_namespace.is_none() {
        // `api.exmaple.com` expands to `api.exmaple.com.svc.cluster.local.`, which reads as
        // a Service in namespace `com`: with no such namespace nor anything like it, the
        // pod meant an external name.
        return Diagnosis {
            cause: Cause::NameNotFound,
            reason: text!(
                "no such name: {asked} is neither a Service (there is no namespace {namespace}) nor an external name the DNS server knows"
            ),
            next: Some(text!("nslookup {asked}")),
        };
    }
    let mut parts = vec![if namespace_missing {
        format!("no namespace {namespace}, so no Service {service} in it")
    } else {
        format!("no Service {service} in {namespace}")
    }];
    let mut next = if namespace_missing {
        "kubectl get namespaces".to_string()
    } else {
        format!("kubectl get services -n {namespace}")
    };
    // Same namespace first: a typo or a prefix left out, in the namespace the pod asked.
    let mut suggested = false;
    if !namespace_missing {
        let in_namespace = view
            .services
            .keys()
            .filter(|(ns, _)| &**ns == namespace)
            .map(|(_, name)| &**name);
        let suggestions = closest(service, in_namespace);
        if let Some(best) = suggestions.first() {
            parts.push(format!("did you mean {}?", suggestions.join(" or ")));
            next = format!("kubectl get service {best} -n {namespace}");
            suggested = true;
        }
    }
    // Then the same name in another namespace.
    if let Some(other) = elsewhere.first() {
        parts.push(format!(
            "a Service {service} exists in namespace {other} ({service}.{other})"
        ));
        if !suggested {
            next = format!("kubectl get service {service} -n {other}");
        }
    } else if let Some(closest) = closest_namespace {
        parts.push(format!("did you mean namespace {closest}?"));
    }
    let reason = parts.join("; ");
    Diagnosis {
        cause: Cause::NameNotFound,
        reason: reason.into(),
        next: Some(next.into()),
    }
}

/// The names among `candidates` close enough to `wanted` to be what was meant, closest
/// first: a few edits away (a typo), or one containing the other (a prefix or suffix
/// left out, `flagsmith-postgresql` for `flagsmith-dev-postgresql`).
fn closest<'a>(wanted: &str, candidates: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let budget = (wanted.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = candidates
        .filter(|name| *name != wanted)
        .filter_map(|name| {
            let distance = levenshtein(wanted, name);
            let related = distance <= budget || contains_all_parts(name, wanted);
            related.then_some((distance, name))
        })
        .collect();
    scored.sort_unstable();
    scored
        .into_iter()
        .take(SUGGESTIONS)
        .map(|(_, name)| name)
        .collect()
}

/// Every `-`-separated part of `wanted` appears in `name`, in order.
fn contains_all_parts(name: &str, wanted: &str) -> bool {
    let mut rest = name;
    for part in wanted.split('-').filter(|p| !p.is_empty()) {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// SERVFAIL, REFUSED or another error rcode from the DNS server (`server`: its words;
/// `logs`: the command that shows its logs).
pub fn server_error(server: &str, logs: String) -> Diagnosis {
    Diagnosis {
        cause: Cause::DnsServerError,
        reason: text!(
            "the DNS server {server} cannot resolve it: it cannot reach its upstream, or refuses this client"
        ),
        next: Some(logs.into()),
    }
}

/// Queries that got no answer at all.
pub fn no_answer(server: &str) -> Diagnosis {
    Diagnosis {
        cause: Cause::DnsNoAnswer,
        reason: text!(
            "the DNS server {server} never answered: port 53 blocked (NetworkPolicy egress, node firewall) or the DNS pods down"
        ),
        next: Some("kubectl get pods -n kube-system -l k8s-app=kube-dns -o wide".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::enrich::{NamespaceRecord, ServiceRecord};

    fn view(services: &[(&str, &str)]) -> ClusterView {
        let mut view = ClusterView::default();
        for (namespace, name) in services {
            let record = ServiceRecord {
                namespace: (*namespace).into(),
                name: (*name).into(),
                cluster_ips: vec![],
                selector: None,
                ports: vec![],
            };
            view.services
                .insert(((*namespace).into(), (*name).into()), Arc::new(record));
            view.namespaces.insert(
                (*namespace).into(),
                Arc::new(NamespaceRecord {
                    name: (*namespace).into(),
                    labels: Default::default(),
                }),
            );
        }
        view
    }

    fn chain(name: &str, namespace: &str) -> Vec<String> {
        vec![
            format!("{name}.{namespace}.svc.cluster.local."),
            format!("{name}.svc.cluster.local."),
            format!("{name}.cluster.local."),
            format!("{name}."),
        ]
    }

    #[test]
    fn service_names_parse_only_in_the_service_form() {
        assert_eq!(
            service_of("payment.production.svc.cluster.local."),
            Some(("payment", "production"))
        );
        assert_eq!(service_of("payment.svc.cluster.local."), None);
        assert_eq!(service_of("a.b.c.svc.cluster.local."), None);
        assert_eq!(service_of("example.com."), None);
    }

    #[test]
    fn a_typo_in_the_same_namespace_is_suggested() {
        let view = view(&[("production", "payment-service"), ("production", "orders")]);
        let d = name_not_found(
            &view,
            "paymnt-service",
            &chain("paymnt-service", "production"),
        );
        assert_eq!(d.cause, Cause::NameNotFound);
        assert_eq!(
            &*d.reason,
            "no Service paymnt-service in production; did you mean payment-service?"
        );
        assert_eq!(
            d.next.as_deref(),
            Some("kubectl get service payment-service -n production")
        );
    }

    #[test]
    fn a_left_out_part_is_suggested() {
        let view = view(&[
            ("flagsmith", "flagsmith-dev-postgresql"),
            ("flagsmith", "flagsmith-api"),
        ]);
        let d = name_not_found(
            &view,
            "flagsmith-postgresql.flagsmith",
            &["flagsmith-postgresql.flagsmith.svc.cluster.local.".to_string()],
        );
        assert_eq!(
            &*d.reason,
            "no Service flagsmith-postgresql in flagsmith; did you mean flagsmith-dev-postgresql?"
        );
    }

    #[test]
    fn the_same_name_in_another_namespace_is_named() {
        let view = view(&[("billing", "ledger"), ("production", "orders")]);
        let d = name_not_found(&view, "ledger", &chain("ledger", "production"));
        assert_eq!(
            &*d.reason,
            "no Service ledger in production; a Service ledger exists in namespace billing (ledger.billing)"
        );
        assert_eq!(
            d.next.as_deref(),
            Some("kubectl get service ledger -n billing")
        );
    }

    #[test]
    fn the_same_namespace_is_suggested_before_another_namespace() {
        let view = view(&[
            ("flagsmith", "flagsmith-dev-postgresql"),
            ("db", "flagsmith-postgresql"),
        ]);
        let d = name_not_found(
            &view,
            "flagsmith-postgresql",
            &chain("flagsmith-postgresql", "flagsmith"),
        );
        assert_eq!(
            &*d.reason,
            "no Service flagsmith-postgresql in flagsmith; did you mean flagsmith-dev-postgresql?; a Service flagsmith-postgresql exists in namespace db (flagsmith-postgresql.db)"
        );
        assert_eq!(
            d.next.as_deref(),
            Some("kubectl get service flagsmith-dev-postgresql -n flagsmith")
        );
    }

    #[test]
    fn an_external_name_that_reads_as_a_service_is_not_taken_for_one() {
        let view = view(&[("production", "orders")]);
        let d = name_not_found(&view, "exmaple.com", &chain("exmaple.com", "production"));
        assert_eq!(
            &*d.reason,
            "no such name: exmaple.com is neither a Service (there is no namespace com) nor an external name the DNS server knows"
        );
        assert_eq!(d.next.as_deref(), Some("nslookup exmaple.com"));
    }

    #[test]
    fn unrelated_names_are_not_suggested() {
        let view = view(&[("production", "orders"), ("production", "inventory")]);
        let d = name_not_found(&view, "payment", &chain("payment", "production"));
        assert_eq!(&*d.reason, "no Service payment in production");
        assert_eq!(
            d.next.as_deref(),
            Some("kubectl get services -n production")
        );
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let view = view(&[("production", "orders")]);
        let d = name_not_found(
            &view,
            "orders.prodution",
            &["orders.prodution.svc.cluster.local.".to_string()],
        );
        assert_eq!(
            &*d.reason,
            "no namespace prodution, so no Service orders in it; a Service orders exists in namespace production (orders.production)"
        );
    }

    #[test]
    fn an_external_name_is_just_not_found() {
        let d = name_not_found(
            &ClusterView::default(),
            "api.example.com",
            &chain("api.example.com", "production")[3..],
        );
        assert_eq!(d.next.as_deref(), Some("nslookup api.example.com"));
    }

    #[test]
    fn without_a_cluster_the_service_is_named_without_suggestions() {
        let d = name_not_found(
            &ClusterView::default(),
            "payment",
            &chain("payment", "production"),
        );
        assert_eq!(&*d.reason, "no Service payment in production");
    }
}
