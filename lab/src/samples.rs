//! A Prometheus exposition (an agent's `/metrics`) read back as samples with
//! prometheus-parse, for the figures the soak and the checks take from it.

use anyhow::Result;
use prometheus_parse::{Scrape, Value};

/// The samples of one exposition.
pub struct Samples(Vec<prometheus_parse::Sample>);

impl Samples {
    pub fn parse(text: &str) -> Result<Samples> {
        let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))?;
        Ok(Samples(scrape.samples))
    }

    /// The sum over every series of `name`, whatever its labels (0 if none is exposed).
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|sample| sample.metric == name)
            .filter_map(|sample| single(&sample.value))
            .sum()
    }

    /// The series of `name` with exactly `labels`, if exposed.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .iter()
            .filter(|sample| sample.metric == name && sample.labels.len() == labels.len())
            .find(|sample| labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v)))
            .and_then(|sample| single(&sample.value))
    }
}

/// A counter's, gauge's or untyped series' value (histograms and summaries have many).
fn single(value: &Value) -> Option<f64> {
    match value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
        Value::Histogram(_) | Value::Summary(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_summed_over_labels_and_read_by_their_labels() {
        let samples = Samples::parse(
            "# TYPE x counter\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3\nx_totally 7\ny 1\n\
             z{a=\"1\",b=\"2\"} 4\n# EOF\n",
        )
        .unwrap();
        assert_eq!(samples.sum("x_total"), 5.0);
        assert_eq!(samples.sum("y"), 1.0);
        assert_eq!(samples.sum("absent"), 0.0);
        assert_eq!(samples.value("x_total", &[("a", "2")]), Some(3.0));
        assert_eq!(samples.value("x_total", &[]), None);
        assert_eq!(samples.value("z", &[("b", "2"), ("a", "1")]), Some(4.0));
        assert_eq!(samples.value("z", &[("a", "1")]), None);
        assert_eq!(samples.value("y", &[]), Some(1.0));
    }
}
