//! The Prometheus text exposition format, version 0.0.4: `# HELP` and
//! `# TYPE` lines, then the samples of that family, one per line. A
//! [`Family`] borrows the [`Exposition`] while its samples are written, so
//! the samples of one metric name can only come together, as the format
//! requires. Label values and help texts are escaped here; metric and label
//! names are the daemons' own constants (checked in debug builds).

use std::fmt::Write as _;

use crate::histogram::HistogramSnapshot;

/// The `Content-Type` of what [`Exposition::finish`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value: counters and most gauges are whole numbers, which a
/// float would round above 2^53 (byte counters get there).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v.into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

/// The text being built.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts the family `name`: its HELP and TYPE lines.
    pub fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &str) -> Family<'a> {
        debug_assert!(valid_name(name), "metric name {name:?}");
        let _ = writeln!(self.out, "# HELP {name} {}", escape(help, false));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        Family { x: self, name }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// The samples of one family.
pub struct Family<'a> {
    x: &'a mut Exposition,
    name: &'a str,
}

impl Family<'_> {
    /// One sample of a counter or gauge.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        line(&mut self.x.out, self.name, "", labels, None, value.into());
        self
    }

    /// One histogram: its cumulative buckets, `+Inf`, `_sum` and `_count`.
    pub fn histogram(&mut self, labels: &[(&str, &str)], h: &HistogramSnapshot) -> &mut Self {
        let out = &mut self.x.out;
        for (bound, n) in h.bounds.iter().zip(&h.cumulative) {
            let le = format_float(*bound);
            line(out, self.name, "_bucket", labels, Some(&le), Value::Int(*n));
        }
        line(
            out,
            self.name,
            "_bucket",
            labels,
            Some("+Inf"),
            Value::Int(h.count),
        );
        line(out, self.name, "_sum", labels, None, Value::Float(h.sum));
        line(out, self.name, "_count", labels, None, Value::Int(h.count));
        self
    }
}

fn line(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    le: Option<&str>,
    value: Value,
) {
    out.push_str(name);
    out.push_str(suffix);
    let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
    for (i, (k, v)) in all.enumerate() {
        debug_assert!(valid_name(k) && !k.contains(':'), "label name {k:?}");
        out.push(if i == 0 { '{' } else { ',' });
        let _ = write!(out, "{k}=\"{}\"", escape(v, true));
    }
    if !labels.is_empty() || le.is_some() {
        out.push('}');
    }
    out.push(' ');
    match value {
        Value::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Float(f) => out.push_str(&format_float(f)),
    }
    out.push('\n');
}

/// Go's `ParseFloat` reads Rust's `Display` of a finite f64 (no exponent);
/// the infinities and NaN have the format's own spellings.
fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f == f64::INFINITY {
        "+Inf".into()
    } else if f == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        f.to_string()
    }
}

/// Backslash and newline in help texts; also the double quote in label
/// values.
fn escape(s: &str, quote: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples() {
        let mut x = Exposition::new();
        x.family("hast_a_total", Kind::Counter, "A counter.")
            .sample(&[("resource", "r0")], 7u64)
            .sample(&[("resource", "r1")], u64::MAX);
        x.family("hast_b", Kind::Gauge, "No labels.")
            .sample(&[], true);
        x.family("hast_c", Kind::Gauge, "Floats.")
            .sample(&[("x", "a")], 0.25)
            .sample(&[("x", "b")], f64::INFINITY)
            .sample(&[("x", "c")], f64::NAN)
            .sample(&[("x", "d")], 3.0);
        let want = "\
# HELP hast_a_total A counter.
# TYPE hast_a_total counter
hast_a_total{resource=\"r0\"} 7
hast_a_total{resource=\"r1\"} 18446744073709551615
# HELP hast_b No labels.
# TYPE hast_b gauge
hast_b 1
# HELP hast_c Floats.
# TYPE hast_c gauge
hast_c{x=\"a\"} 0.25
hast_c{x=\"b\"} +Inf
hast_c{x=\"c\"} NaN
hast_c{x=\"d\"} 3
";
        assert_eq!(x.finish(), want);
    }

    #[test]
    fn escaping() {
        // (label value, as written)
        let cases = [
            ("plain", "plain"),
            ("a\"b", "a\\\"b"),
            ("back\\slash", "back\\\\slash"),
            ("new\nline", "new\\nline"),
            ("tcp://[::1]:9100", "tcp://[::1]:9100"),
            ("é", "é"),
        ];
        for (value, written) in cases {
            let mut x = Exposition::new();
            x.family("m", Kind::Gauge, "h")
                .sample(&[("l", value)], 1u64);
            let text = x.finish();
            assert_eq!(
                text.lines().nth(2),
                Some(format!("m{{l=\"{written}\"}} 1").as_str()),
                "{value:?}"
            );
        }
        let mut x = Exposition::new();
        x.family("m", Kind::Gauge, "a \"quoted\" \\ help\nline");
        assert_eq!(
            x.finish().lines().next(),
            Some("# HELP m a \"quoted\" \\\\ help\\nline")
        );
    }

    #[test]
    fn histogram_lines() {
        let h = HistogramSnapshot {
            bounds: &[0.001, 0.5, 1.0],
            cumulative: vec![1, 3, 3],
            count: 4,
            sum: 2.5,
        };
        let mut x = Exposition::new();
        x.family("hast_d_seconds", Kind::Histogram, "Durations.")
            .histogram(&[("resource", "r0"), ("op", "read")], &h);
        let want = "\
# HELP hast_d_seconds Durations.
# TYPE hast_d_seconds histogram
hast_d_seconds_bucket{resource=\"r0\",op=\"read\",le=\"0.001\"} 1
hast_d_seconds_bucket{resource=\"r0\",op=\"read\",le=\"0.5\"} 3
hast_d_seconds_bucket{resource=\"r0\",op=\"read\",le=\"1\"} 3
hast_d_seconds_bucket{resource=\"r0\",op=\"read\",le=\"+Inf\"} 4
hast_d_seconds_sum{resource=\"r0\",op=\"read\"} 2.5
hast_d_seconds_count{resource=\"r0\",op=\"read\"} 4
";
        assert_eq!(x.finish(), want);
    }

    #[test]
    fn names() {
        for (name, ok) in [
            ("hast_x", true),
            ("_x:y9", true),
            ("9x", false),
            ("", false),
            ("a-b", false),
        ] {
            assert_eq!(valid_name(name), ok, "{name:?}");
        }
    }
}
