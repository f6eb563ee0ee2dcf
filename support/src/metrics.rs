//! Prometheus text with a lookup by name and labels ([`MetricsText`]): the executor's `/metrics`
//! and the simulator's read the same way.

use std::collections::HashMap;

/// Prometheus text, with a lookup by name and labels.
#[derive(Debug)]
pub struct MetricsText(pub String);

impl MetricsText {
    /// The sum of the samples of `name` whose labels include `labels` (0 when there is none).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(parse_sample)
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, value)| value)
            .sum()
    }

    /// The value of the one sample written `series` (`name` or `name{label="value",...}`, labels
    /// in any order); `None` when there is no sample with exactly that name and those labels.
    pub fn series(&self, series: &str) -> Option<f64> {
        let (name, labels, _) = parse_sample(&format!("{} 0", series.trim()))?;
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(parse_sample)
            .find(|(n, l, _)| *n == name && *l == labels)
            .map(|(_, _, value)| value)
    }
}

fn parse_sample(line: &str) -> Option<(String, HashMap<String, String>, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.to_owned(), HashMap::new()),
        Some((name, rest)) => {
            let labels = rest
                .trim_end_matches('}')
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
                .collect();
            (name.to_owned(), labels)
        }
    };
    Some((name, labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_found_by_its_exact_labels_in_any_order() {
        let text = MetricsText("# TYPE a counter\na{x=\"1\",y=\"2\"} 3\na{x=\"1\"} 4\nb 5\n".into());
        assert_eq!(text.series(r#"a{y="2", x="1"}"#), Some(3.0));
        assert_eq!(text.series(r#"a{x="1"}"#), Some(4.0));
        assert_eq!(text.series("b"), Some(5.0));
        assert_eq!(text.series("a"), None);
        assert_eq!(text.series(r#"a{x="2"}"#), None);
    }

    #[test]
    fn samples_are_summed_over_matching_labels() {
        let text = MetricsText("# HELP x y\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"1\",b=\"3\"} 4\ny 7\n".to_owned());
        assert_eq!(text.get("x_total", &[("a", "1")]), 7.0);
        assert_eq!(text.get("x_total", &[("b", "3")]), 4.0);
        assert_eq!(text.get("y", &[]), 7.0);
        assert_eq!(text.get("z", &[]), 0.0);
    }
}
