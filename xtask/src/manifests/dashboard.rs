//! The Grafana dashboard (deploy/grafana/netprobe.json): its structure, and its queries
//! with Grafana's variables replaced, for promtool and for a real Prometheus.

use super::*;

/// A dashboard query, with Grafana's variables replaced by what "All" and a 1-minute
/// scrape give: `$node`, `$namespace` -> `.*` (their allValue), `$__rate_interval` -> 1m,
/// `$__range` -> 5m.
#[derive(Debug, Clone)]
pub struct Query {
    /// e.g. `panel 5 "Failing flows by verdict" A`
    pub what: String,
    pub expr: String,
}

pub fn dashboard_queries(dashboard: &Value) -> Result<Vec<Query>> {
    let mut values: BTreeMap<String, String> = [
        ("__rate_interval", "1m"),
        ("__interval", "1m"),
        ("__range", "5m"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for var in dashboard["templating"]["list"]
        .as_array()
        .context("no templating.list")?
    {
        if let (Some(name), Some(all)) = (var["name"].as_str(), var["allValue"].as_str()) {
            values.insert(name.to_owned(), all.to_owned());
        }
    }
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let what = format!(
                "panel {} {title:?} {}",
                panel["id"],
                target["refId"].as_str().unwrap_or("?")
            );
            let expr = substitute(expr, &values).with_context(|| what.clone())?;
            queries.push(Query { what, expr });
        }
    }
    Ok(queries)
}

/// Every panel, including those inside collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(p);
        all.extend(p["panels"].as_array().into_iter().flatten());
    }
    all
}

/// Replaces `$name` and `${name}` with `values[name]`; an unknown variable is an error.
fn substitute(expr: &str, values: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').context("unclosed ${")?;
            (&inner[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        let value = values
            .get(name)
            .with_context(|| format!("unknown variable ${name} in {expr:?}"))?;
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Grafana metric families the dashboard must show.
const DASHBOARD_METRICS: &[&str] = &[
    "netprobe_verdicts_total",
    "netprobe_dns_failures_total",
    "netprobe_attached_interfaces",
    "netprobe_ready",
    "netprobe_events_lost_total",
    "netprobe_decode_errors_total",
    "netprobe_tcp_handshake_seconds_bucket",
    "netprobe_dns_response_seconds_bucket",
];

/// The dashboard's structure: data source only through `${datasource}`, the variables,
/// panel kinds, range selectors through Grafana's interval variables.
pub fn dashboard_checks(dashboard: &Value) -> Checks {
    let mut c = Checks::default();
    const DS: &str = "${datasource}";

    // No literal data source anywhere: every `datasource` is the variable, and the only
    // other `uid` is the dashboard's own.
    fn walk(v: &Value, path: &str, top: bool, c: &mut Checks) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let here = format!("{path}.{k}");
                    if k == "datasource" {
                        let uid = match child {
                            Value::String(s) => Some(s.as_str()),
                            Value::Object(o) => o.get("uid").and_then(Value::as_str),
                            _ => None,
                        };
                        c.check(uid == Some(DS), || {
                            format!("dashboard {here}: {child}, want uid {DS}")
                        });
                        if let Value::Object(o) = child {
                            c.check(
                                o.get("type").and_then(Value::as_str) == Some("prometheus"),
                                || format!("dashboard {here}: type is not prometheus"),
                            );
                        }
                    } else if k == "uid" && !top {
                        c.check(child == DS, || {
                            format!("dashboard {here}: a literal uid {child}")
                        });
                    } else {
                        walk(child, &here, false, c);
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{path}[{i}]"), false, c);
                }
            }
            _ => {}
        }
    }
    walk(dashboard, "", true, &mut c);

    let vars: BTreeMap<&str, &Value> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?, v)))
        .collect();
    c.eq(
        "variable datasource",
        vars.get("datasource")
            .map(|v| (str_at(v, "/type"), str_at(v, "/query"))),
        Some((Some("datasource"), Some("prometheus"))),
    );
    for (name, label) in [("node", "node"), ("namespace", "src_namespace")] {
        let v = vars.get(name);
        c.check(
            v.is_some_and(|v| {
                v["type"] == "query"
                    && v["includeAll"] == true
                    && v["allValue"] == ".*"
                    && v["query"]
                        .as_str()
                        .is_some_and(|q| q.starts_with("label_values(") && q.contains(label))
            }),
            || format!("dashboard variable {name}: want a label_values(..., {label}) query with All = .*"),
        );
    }

    let all = panels(dashboard);
    let mut ids = BTreeSet::new();
    let mut exprs = String::new();
    for p in &all {
        let title = p["title"].as_str().unwrap_or("?");
        c.check(ids.insert(p["id"].to_string()), || {
            format!("panel {title:?}: duplicate id {}", p["id"])
        });
        let kind = p["type"].as_str().unwrap_or("");
        c.check(matches!(kind, "timeseries" | "table" | "stat"), || {
            format!("panel {title:?}: type {kind:?}, want timeseries, table or stat")
        });
        c.check(p.get("gridPos").is_some(), || {
            format!("panel {title:?}: no gridPos")
        });
        let targets = p["targets"].as_array().map_or(&[][..], Vec::as_slice);
        c.check(!targets.is_empty(), || format!("panel {title:?}: no query"));
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            c.check(!expr.trim().is_empty(), || {
                format!("panel {title:?}: an empty query")
            });
            // Range selectors follow the dashboard's interval: $__rate_interval (rates),
            // $__range (totals over the time picked).
            for window in expr.split('[').skip(1) {
                let window = window.split(']').next().unwrap_or("");
                c.check(window == "$__rate_interval" || window == "$__range", || {
                    format!("panel {title:?}: range [{window}], want $__rate_interval or $__range")
                });
            }
            c.check(!expr.contains("$datasource"), || {
                format!("panel {title:?}: the query mentions $datasource")
            });
            exprs.push_str(expr);
            exprs.push('\n');
        }
        if kind == "table" {
            c.check(
                targets
                    .iter()
                    .all(|t| t["expr"].as_str().is_some_and(|e| e.contains("topk("))),
                || format!("table {title:?}: not bounded by topk"),
            );
        }
    }
    for metric in DASHBOARD_METRICS {
        c.check(exprs.contains(metric), || {
            format!("no dashboard panel shows {metric}")
        });
    }
    c.check(exprs.contains("$__rate_interval"), || {
        "no panel uses $__rate_interval".into()
    });
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_datasource_uid_is_caught() {
        let mut dashboard = read_dashboard().unwrap();
        dashboard["panels"][0]["datasource"] =
            json!({"type": "prometheus", "uid": "P1809F7CD0C75ACF3"});
        let problems = dashboard_checks(&dashboard).problems().to_vec();
        assert!(
            problems.iter().any(|p| p.contains("P1809F7CD0C75ACF3")),
            "{problems:?}"
        );
        let mut dashboard = read_dashboard().unwrap();
        dashboard["panels"][1]["targets"][0]["expr"] = json!("rate(netprobe_packets_total[5m])");
        let problems = dashboard_checks(&dashboard).problems().to_vec();
        assert!(problems.iter().any(|p| p.contains("[5m]")), "{problems:?}");
    }

    #[test]
    fn dashboard_queries_have_their_variables_replaced() {
        let queries = dashboard_queries(&read_dashboard().unwrap()).unwrap();
        assert!(queries.len() >= 10, "{queries:?}");
        for q in &queries {
            assert!(!q.expr.contains('$'), "{q:?}");
        }
        let values: BTreeMap<String, String> = [("node".to_owned(), ".*".to_owned())].into();
        assert_eq!(
            substitute(r#"up{node=~"$node"} + up{node=~"${node}"}"#, &values).unwrap(),
            r#"up{node=~".*"} + up{node=~".*"}"#
        );
        assert!(substitute("up{x=\"$nope\"}", &values).is_err());
    }
}
