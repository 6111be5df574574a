//! Threshold expressions: the SLO of the adaptive search and the CI gates.
//!
//! Grammar: `METRIC OP VALUE`, spaces allowed, where
//! - METRIC is a latency figure `p50`, `p99`, `p99.9` (any percentile),
//!   `mean`, `min`, `max` (prefix `service_` for service time instead of
//!   latency: `service_p99`), or `error_rate` (a fraction, `1%` allowed),
//!   `errors`, `dropped` (counts) or `rps` (calls answered per second);
//! - OP is `<`, `<=`, `>` or `>=`;
//! - a latency VALUE takes a unit: `ns`, `us` (or `µs`), `ms`, `s`.
//!
//! Contract: [`Threshold::parse`] rejects anything else with a message
//! naming the expected form; [`Threshold::observe`] reads the figure from a
//! [`Figures`] (latencies in milliseconds) and [`Threshold::holds`]
//! compares it.

use std::fmt;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A latency figure's source.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    Latency,
    Service,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Metric {
    Quantile(Source, f64),
    Mean(Source),
    Min(Source),
    Max(Source),
    ErrorRate,
    Errors,
    Dropped,
    Rps,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    expr: String,
    metric: Metric,
    op: Op,
    /// Milliseconds for latency metrics, else the plain number.
    value: f64,
}

/// The figures a threshold reads.
#[derive(Debug)]
pub struct Figures<'a> {
    /// Latency from the intended start, ns.
    pub latency: &'a Histogram<u64>,
    /// Service time, ns.
    pub service: &'a Histogram<u64>,
    /// Calls answered.
    pub ok: u64,
    /// Calls failed.
    pub errors: u64,
    /// Intended calls dropped.
    pub dropped: u64,
    /// Seconds the run took.
    pub seconds: f64,
}

/// A threshold's verdict, as stored in the result file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    /// The expression as given.
    pub expr: String,
    /// The observed figure (ms for latency metrics).
    pub observed: f64,
    /// Whether it held.
    pub pass: bool,
}

fn parse_latency(v: &str) -> Result<f64, String> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{v:?} needs a unit: ns, us, ms or s"))?;
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad number {num:?}"))?;
    let scale = match unit.trim() {
        "ns" => 1e-6,
        "us" | "µs" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        u => return Err(format!("unknown unit {u:?}: use ns, us, ms or s")),
    };
    Ok(n * scale)
}

fn parse_plain(v: &str) -> Result<f64, String> {
    let v = v.trim();
    if let Some(p) = v.strip_suffix('%') {
        return p
            .trim()
            .parse::<f64>()
            .map(|x| x / 100.0)
            .map_err(|_| format!("bad number {v:?}"));
    }
    v.parse().map_err(|_| format!("bad number {v:?}"))
}

impl Threshold {
    /// Parses `p99<2ms`, `error_rate<=1%`, `rps>=1000`, ...
    pub fn parse(expr: &str) -> Result<Self, String> {
        let form = "expected METRIC OP VALUE, e.g. 'p99<2ms', 'error_rate<1%', 'rps>1000'";
        let pos = expr
            .find(['<', '>'])
            .ok_or_else(|| format!("{expr:?}: {form}"))?;
        let (name, rest) = expr.split_at(pos);
        let (op, value) = if let Some(v) = rest.strip_prefix("<=") {
            (Op::Le, v)
        } else if let Some(v) = rest.strip_prefix(">=") {
            (Op::Ge, v)
        } else if let Some(v) = rest.strip_prefix('<') {
            (Op::Lt, v)
        } else {
            (Op::Gt, &rest[1..])
        };
        let name = name.trim().to_ascii_lowercase();
        let (source, base) = match name.strip_prefix("service_") {
            Some(b) => (Source::Service, b.to_owned()),
            None => (Source::Latency, name.clone()),
        };
        let latency = |m| -> Result<(Metric, f64), String> {
            Ok((
                m,
                parse_latency(value).map_err(|e| format!("{expr:?}: {e}"))?,
            ))
        };
        let (metric, value) = match base.as_str() {
            "mean" | "avg" => latency(Metric::Mean(source))?,
            "min" => latency(Metric::Min(source))?,
            "max" => latency(Metric::Max(source))?,
            "med" => latency(Metric::Quantile(source, 0.5))?,
            "error_rate" | "errors" | "dropped" | "rps" if source == Source::Latency => {
                let m = match base.as_str() {
                    "error_rate" => Metric::ErrorRate,
                    "errors" => Metric::Errors,
                    "dropped" => Metric::Dropped,
                    _ => Metric::Rps,
                };
                (m, parse_plain(value).map_err(|e| format!("{expr:?}: {e}"))?)
            }
            p if p.starts_with('p') => {
                let q: f64 = p[1..]
                    .parse()
                    .map_err(|_| format!("{expr:?}: bad percentile {p:?}; {form}"))?;
                if !(0.0..=100.0).contains(&q) {
                    return Err(format!("{expr:?}: percentile out of 0..=100"));
                }
                latency(Metric::Quantile(source, q / 100.0))?
            }
            _ => return Err(format!("{expr:?}: unknown metric {name:?}; {form}")),
        };
        Ok(Threshold {
            expr: expr.trim().to_owned(),
            metric,
            op,
            value,
        })
    }

    /// The expression as given.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// Whether the metric is a latency (its figures are milliseconds).
    pub fn is_latency(&self) -> bool {
        matches!(
            self.metric,
            Metric::Quantile(..) | Metric::Mean(_) | Metric::Min(_) | Metric::Max(_)
        )
    }

    /// The figure this threshold reads (ms for latencies).
    pub fn observe(&self, f: &Figures<'_>) -> f64 {
        let h = |s: Source| match s {
            Source::Latency => f.latency,
            Source::Service => f.service,
        };
        let ms = |ns: f64| ns / 1e6;
        match self.metric {
            Metric::Quantile(s, q) => ms(h(s).value_at_quantile(q) as f64),
            Metric::Mean(s) => ms(h(s).mean()),
            Metric::Min(s) => ms(h(s).min() as f64),
            Metric::Max(s) => ms(h(s).max() as f64),
            Metric::ErrorRate => {
                let n = f.ok + f.errors;
                if n == 0 {
                    0.0
                } else {
                    f.errors as f64 / n as f64
                }
            }
            Metric::Errors => f.errors as f64,
            Metric::Dropped => f.dropped as f64,
            Metric::Rps => {
                if f.seconds > 0.0 {
                    f.ok as f64 / f.seconds
                } else {
                    0.0
                }
            }
        }
    }

    /// Whether `observed` meets the threshold.
    pub fn holds(&self, observed: f64) -> bool {
        match self.op {
            Op::Lt => observed < self.value,
            Op::Le => observed <= self.value,
            Op::Gt => observed > self.value,
            Op::Ge => observed >= self.value,
        }
    }

    /// Observes and judges.
    pub fn check(&self, f: &Figures<'_>) -> Check {
        let observed = self.observe(f);
        Check {
            expr: self.expr.clone(),
            observed,
            pass: self.holds(observed),
        }
    }

    /// The observed figure, formatted with its unit.
    pub fn format(&self, observed: f64) -> String {
        match self.metric {
            Metric::ErrorRate => format!("{:.2}%", observed * 100.0),
            Metric::Errors | Metric::Dropped => format!("{observed:.0}"),
            Metric::Rps => format!("{observed:.1}/s"),
            _ => crate::report::fmt_ms(observed),
        }
    }

    /// The metric's name, as written (`p99`, `error_rate`, ...).
    pub fn metric_name(&self) -> &str {
        self.expr
            .split(['<', '>'])
            .next()
            .unwrap_or(&self.expr)
            .trim()
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let t = Threshold::parse("p99<2ms").unwrap();
        assert!(t.is_latency());
        assert!(t.holds(1.9) && !t.holds(2.0));
        let t = Threshold::parse("p99.9 <= 500us").unwrap();
        assert!(t.holds(0.5) && !t.holds(0.51));
        let t = Threshold::parse("error_rate<1%").unwrap();
        assert!(t.holds(0.009) && !t.holds(0.01));
        let t = Threshold::parse("rps>=1000").unwrap();
        assert!(t.holds(1000.0));
        assert!(Threshold::parse("service_max<1s").unwrap().holds(999.0));
        for bad in [
            "p99",
            "p99<2",
            "p999x<1ms",
            "foo<1ms",
            "p101<1ms",
            "p99<2parsecs",
        ] {
            assert!(Threshold::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn observes_percentiles_in_ms() {
        let mut h = crate::record::new_histogram(3);
        for _ in 0..99 {
            h.record(1_000_000).unwrap();
        }
        h.record(100_000_000).unwrap();
        let f = Figures {
            latency: &h,
            service: &h,
            ok: 100,
            errors: 0,
            dropped: 0,
            seconds: 1.0,
        };
        let p99 = Threshold::parse("p99<2ms").unwrap().check(&f);
        assert!(p99.pass, "{p99:?}");
        let max = Threshold::parse("max<2ms").unwrap().check(&f);
        assert!(!max.pass && max.observed > 99.0, "{max:?}");
    }
}
