//! The two text expositions of `/metrics`: OpenMetrics 1.0 (what Prometheus asks for) and
//! Prometheus's text format 0.0.4 (for every other client: curl, `promtool check metrics`),
//! chosen by the request's `Accept` header as Prometheus's own client libraries do.

/// `Content-Type` of the OpenMetrics exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text exposition.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which exposition a client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Text,
}

impl Format {
    /// OpenMetrics when `accept` lists `application/openmetrics-text` (with a `q` above 0),
    /// else the text format, which every Prometheus client reads.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let openmetrics = accept
            .into_iter()
            .flat_map(|accept| accept.split(','))
            .any(|range| {
                let mut parts = range.split(';');
                let media = parts.next().unwrap_or_default().trim();
                media.eq_ignore_ascii_case("application/openmetrics-text")
                    && parts.all(|param| match param.split_once('=') {
                        Some((key, q)) if key.trim().eq_ignore_ascii_case("q") => {
                            q.trim().parse::<f32>().is_ok_and(|q| q > 0.0)
                        }
                        _ => true,
                    })
            });
        if openmetrics {
            Self::OpenMetrics
        } else {
            Self::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::Text => TEXT_CONTENT_TYPE,
        }
    }
}

/// Prometheus's text format from the OpenMetrics text of prometheus-client: a counter's
/// metadata names its samples (`x_total`, not the family `x`), no `# UNIT`, no `# EOF`,
/// `unknown` is `untyped`. The samples are the same lines (no exemplars or `_created`
/// samples are written).
pub fn to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP, held until its TYPE says what the family's name is in this format.
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.replace(rest));
            continue;
        }
        if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|t| t.split_once(' ')) {
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), kind),
                "unknown" => (name.to_owned(), "untyped"),
                _ => (name.to_owned(), kind),
            };
            if let Some(rest) = help.take() {
                let text = rest.split_once(' ').map_or("", |(_, text)| text);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        flush_help(&mut out, help.take());
        out.push_str(line);
        out.push('\n');
    }
    flush_help(&mut out, help);
    out
}

fn flush_help(out: &mut String, help: Option<&str>) {
    if let Some(rest) = help {
        out.push_str("# HELP ");
        out.push_str(rest);
        out.push('\n');
    }
}

/// Sorts each run of sample lines by label set; `#` lines (HELP, TYPE, EOF) stay where
/// they are, so every family keeps its samples together after its own header. A
/// histogram's `_sum`, `_count` and `_bucket` samples of one label set stay together, in
/// the order written (buckets by increasing `le`).
pub fn sort_samples(exposition: &str) -> String {
    let mut out = String::with_capacity(exposition.len());
    let mut run: Vec<(&str, usize, &str)> = Vec::new();
    let flush = |run: &mut Vec<(&str, usize, &str)>, out: &mut String| {
        run.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (_, _, line) in run.drain(..) {
            out.push_str(line);
            out.push('\n');
        }
    };
    for line in exposition.lines() {
        if line.starts_with('#') {
            flush(&mut run, &mut out);
            out.push_str(line);
            out.push('\n');
        } else {
            run.push((series_key(line), run.len(), line));
        }
    }
    flush(&mut run, &mut out);
    out
}

/// The label set of a sample line, without a histogram bucket's `le`: `a="1",b="2"` of
/// `x_bucket{le="0.5",a="1",b="2"} 3`.
fn series_key(line: &str) -> &str {
    let Some(open) = line.find('{') else {
        return "";
    };
    let name = &line[..open];
    let labels = &line[open + 1..];
    let mut quoted = false;
    let mut escaped = false;
    let mut end = labels.len();
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let labels = &labels[..end];
    if !name.ends_with("_bucket") {
        return labels;
    }
    // prometheus-client writes `le` first; other writers put it last.
    if let Some(value) = labels.strip_prefix("le=\"") {
        let rest = value.split_once('"').map_or("", |(_, rest)| rest);
        return rest.strip_prefix(',').unwrap_or(rest);
    }
    labels.rfind(",le=\"").map_or(labels, |at| &labels[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_asks_for_openmetrics_and_others_get_the_text_format() {
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text; q=0.2")),
            Format::OpenMetrics
        );
        for other in [
            None,
            Some("*/*"),
            Some("text/plain"),
            Some("application/openmetrics-text;q=0, text/plain"),
            Some("application/json"),
        ] {
            assert_eq!(Format::negotiate(other), Format::Text, "{other:?}");
        }
    }

    #[test]
    fn the_text_format_names_counters_by_their_samples() {
        let openmetrics = "\
# HELP x_seen Things seen.
# TYPE x_seen counter
x_seen_total{a=\"1\"} 2
# HELP x_level A level.
# TYPE x_level gauge
x_level 3
# HELP x_took Time taken.
# TYPE x_took histogram
x_took_sum 0.5
x_took_count 1
x_took_bucket{le=\"1.0\"} 1
x_took_bucket{le=\"+Inf\"} 1
# HELP x_odd Of unknown type.
# TYPE x_odd unknown
x_odd 1
# EOF
";
        assert_eq!(
            to_text(openmetrics),
            "\
# HELP x_seen_total Things seen.
# TYPE x_seen_total counter
x_seen_total{a=\"1\"} 2
# HELP x_level A level.
# TYPE x_level gauge
x_level 3
# HELP x_took Time taken.
# TYPE x_took histogram
x_took_sum 0.5
x_took_count 1
x_took_bucket{le=\"1.0\"} 1
x_took_bucket{le=\"+Inf\"} 1
# HELP x_odd Of unknown type.
# TYPE x_odd untyped
x_odd 1
"
        );
    }

    #[test]
    fn histogram_series_stay_together_with_their_buckets_in_order() {
        let written = "\
# TYPE h histogram
h_sum{w=\"b\"} 1
h_count{w=\"b\"} 1
h_bucket{w=\"b\",le=\"0.5\"} 0
h_bucket{w=\"b\",le=\"+Inf\"} 1
h_sum{w=\"a\"} 2
h_count{w=\"a\"} 1
h_bucket{le=\"0.5\",w=\"a\"} 0
h_bucket{le=\"+Inf\",w=\"a\"} 1
# TYPE c counter
c_total{k=\"z\"} 1
c_total{k=\"a} 9\"} 1
c_total{k=\"m\"} 1
";
        assert_eq!(
            sort_samples(written),
            "\
# TYPE h histogram
h_sum{w=\"a\"} 2
h_count{w=\"a\"} 1
h_bucket{le=\"0.5\",w=\"a\"} 0
h_bucket{le=\"+Inf\",w=\"a\"} 1
h_sum{w=\"b\"} 1
h_count{w=\"b\"} 1
h_bucket{w=\"b\",le=\"0.5\"} 0
h_bucket{w=\"b\",le=\"+Inf\"} 1
# TYPE c counter
c_total{k=\"a} 9\"} 1
c_total{k=\"m\"} 1
c_total{k=\"z\"} 1
"
        );
    }
}
