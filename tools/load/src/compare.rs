//! `mesh-load compare A.json B.json`: deltas between two runs.
//!
//! Contract: reads two `result.json` files; prints a warning line
//! (`warning: configurations differ: ...`) for every configuration or
//! machine difference that makes the comparison unfair (scenario, model
//! and its settings, payload, actors, target, node count, cores, CPU,
//! build), then a table of figures for A and B with the change in percent
//! and whether it is better or worse. [`regressions`] lists the figures
//! worse by more than a given percentage (throughput down, latency, error
//! rate or drops up), for `--fail-if-worse`.

use std::fmt::Write as _;

use crate::report::{fmt_ms, RunResult};

/// A compared figure.
#[derive(Debug, Clone)]
pub struct Delta {
    /// Its name.
    pub name: &'static str,
    /// A's value.
    pub a: f64,
    /// B's value.
    pub b: f64,
    /// Whether higher is better.
    pub higher_is_better: bool,
    /// Whether it is a latency in ms.
    pub latency: bool,
}

impl Delta {
    /// B against A in percent (positive: B is higher).
    pub fn change_pct(&self) -> f64 {
        if self.a == 0.0 {
            if self.b == 0.0 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            100.0 * (self.b - self.a) / self.a
        }
    }

    /// How much worse B is, in percent (negative: better).
    pub fn worse_pct(&self) -> f64 {
        if self.higher_is_better {
            -self.change_pct()
        } else {
            self.change_pct()
        }
    }
}

/// The configuration differences that make a comparison unfair.
pub fn config_differences(a: &RunResult, b: &RunResult) -> Vec<String> {
    let mut d = Vec::new();
    let mut check = |what: &str, x: String, y: String| {
        if x != y {
            d.push(format!("{what}: {x} vs {y}"));
        }
    };
    let (ca, cb) = (&a.config, &b.config);
    check(
        "scenario",
        ca.scenario.name().into(),
        cb.scenario.name().into(),
    );
    check(
        "model",
        a.summary.model_label.clone(),
        b.summary.model_label.clone(),
    );
    check(
        "model settings",
        serde_json::to_string(&ca.model).unwrap_or_default(),
        serde_json::to_string(&cb.model).unwrap_or_default(),
    );
    check(
        "payload bytes",
        ca.scenario.payload.to_string(),
        cb.scenario.payload.to_string(),
    );
    check(
        "actors",
        ca.scenario.actors.to_string(),
        cb.scenario.actors.to_string(),
    );
    check(
        "fan-out",
        ca.scenario.fanout.to_string(),
        cb.scenario.fanout.to_string(),
    );
    check("target", ca.target.clone(), cb.target.clone());
    check("nodes", ca.nodes.to_string(), cb.nodes.to_string());
    check("cores", a.env.cores.to_string(), b.env.cores.to_string());
    check("cpu", a.env.cpu_model.clone(), b.env.cpu_model.clone());
    check(
        "build",
        if a.env.release_build {
            "release"
        } else {
            "debug"
        }
        .into(),
        if b.env.release_build {
            "release"
        } else {
            "debug"
        }
        .into(),
    );
    d
}

/// The figures compared.
pub fn deltas(a: &RunResult, b: &RunResult) -> Vec<Delta> {
    let (sa, sb) = (&a.summary, &b.summary);
    let lat = |name, f: fn(&crate::report::Stats) -> f64| Delta {
        name,
        a: f(&sa.latency),
        b: f(&sb.latency),
        higher_is_better: false,
        latency: true,
    };
    vec![
        Delta {
            name: "throughput (calls/s)",
            a: sa.actual_rps,
            b: sb.actual_rps,
            higher_is_better: true,
            latency: false,
        },
        lat("latency p50", |s| s.p50_ms),
        lat("latency p90", |s| s.p90_ms),
        lat("latency p99", |s| s.p99_ms),
        lat("latency p99.9", |s| s.p999_ms),
        lat("latency max", |s| s.max_ms),
        Delta {
            name: "service p99",
            a: sa.service.p99_ms,
            b: sb.service.p99_ms,
            higher_is_better: false,
            latency: true,
        },
        Delta {
            name: "error rate (%)",
            a: sa.error_rate * 100.0,
            b: sb.error_rate * 100.0,
            higher_is_better: false,
            latency: false,
        },
        Delta {
            name: "dropped",
            a: sa.dropped as f64,
            b: sb.dropped as f64,
            higher_is_better: false,
            latency: false,
        },
    ]
}

/// The figures worse by more than `pct` percent (max excluded: one sample).
pub fn regressions(ds: &[Delta], pct: f64) -> Vec<&Delta> {
    ds.iter()
        .filter(|d| d.name != "latency max" && d.worse_pct() > pct)
        .collect()
}

/// The printed comparison.
pub fn render(a: &RunResult, b: &RunResult, a_name: &str, b_name: &str) -> String {
    let mut out = String::new();
    for w in config_differences(a, b) {
        let _ = writeln!(out, "warning: configurations differ: {w}");
    }
    let _ = writeln!(
        out,
        "A: {a_name} ({}, {})",
        a.start_time, a.summary.model_label
    );
    let _ = writeln!(
        out,
        "B: {b_name} ({}, {})",
        b.start_time, b.summary.model_label
    );
    let _ = writeln!(
        out,
        "\n  {:<22} {:>14} {:>14} {:>10}",
        "figure", "A", "B", "change"
    );
    for d in deltas(a, b) {
        let show = |v: f64| {
            if d.latency {
                fmt_ms(v)
            } else {
                format!("{v:.2}")
            }
        };
        let change = d.change_pct();
        let verdict = if change.abs() < 0.5 {
            ""
        } else if d.worse_pct() > 0.0 {
            " worse"
        } else {
            " better"
        };
        let pct = if change.is_finite() {
            format!("{change:+.1}%")
        } else {
            "new".into()
        };
        let _ = writeln!(
            out,
            "  {:<22} {:>14} {:>14} {:>10}{verdict}",
            d.name,
            show(d.a),
            show(d.b),
            pct
        );
    }
    out
}
