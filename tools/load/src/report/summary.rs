//! The terminal summary, in the spirit of k6's end-of-test summary: the
//! thresholds first as ✓/✗ lines, then one line per figure with dotted
//! leaders.
//!
//! Contract: the first line names the scenario, the load model (its label
//! always says `open-loop`, `closed-loop` or `adaptive`) and the target; a
//! closed-loop summary also says its latency is service time
//! (coordinated omission). `color` adds ANSI colours to the marks only.

use std::fmt::Write as _;

use super::{fmt_ms, RunResult, Stats};

fn line(out: &mut String, name: &str, value: &str) {
    let dots = 26usize.saturating_sub(name.chars().count());
    let _ = writeln!(out, "    {name}{}: {value}", ".".repeat(dots));
}

fn trend(s: &Stats) -> String {
    format!(
        "avg={} min={} med={} p(90)={} p(99)={} p(99.9)={} max={}",
        fmt_ms(s.mean_ms),
        fmt_ms(s.min_ms),
        fmt_ms(s.p50_ms),
        fmt_ms(s.p90_ms),
        fmt_ms(s.p99_ms),
        fmt_ms(s.p999_ms),
        fmt_ms(s.max_ms)
    )
}

/// The summary as text.
pub fn render(r: &RunResult, color: bool) -> String {
    let (ok_mark, bad_mark) = if color {
        ("\x1b[32m✓\x1b[0m", "\x1b[31m✗\x1b[0m")
    } else {
        ("✓", "✗")
    };
    let s = &r.summary;
    let c = &r.config;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n  mesh-load · {} · {} · {} ({} node{}{})\n",
        c.scenario.name(),
        s.model_label,
        c.target,
        c.nodes,
        if c.nodes == 1 { "" } else { "s" },
        if c.transport == "tcp" {
            String::new()
        } else {
            format!(", {}", c.transport)
        }
    );
    if s.model == "closed-loop" {
        let _ = writeln!(
            out,
            "  closed-loop: each worker waits for its reply, so latency = service time\n  and queueing is hidden (coordinated omission); use --rate for open-loop.\n"
        );
    }
    if !r.thresholds.is_empty() || r.search.is_some() {
        let _ = writeln!(out, "  █ THRESHOLDS\n");
        if let Some(search) = &r.search {
            let mark = if search.best_rate.is_some() {
                ok_mark
            } else {
                bad_mark
            };
            let best = search
                .best_rate
                .map_or("no rate met it".to_owned(), |b| format!("best {b:.0}/s"));
            let _ = writeln!(out, "    {mark} SLO '{}' {best}", search.slo);
            for st in &search.steps {
                let _ = writeln!(
                    out,
                    "        step {:>9.0}/s → {:>9.1}/s answered, SLO figure {:.4}, dropped {}, errors {} {}",
                    st.rate,
                    st.achieved_rps,
                    st.observed,
                    st.dropped,
                    st.errors,
                    if st.pass { ok_mark } else { bad_mark }
                );
            }
        }
        for t in &r.thresholds {
            let mark = if t.pass { ok_mark } else { bad_mark };
            let shown = crate::threshold::Threshold::parse(&t.expr)
                .map(|th| format!("{}={}", th.metric_name(), th.format(t.observed)))
                .unwrap_or_else(|_| format!("{}", t.observed));
            let _ = writeln!(out, "    {mark} '{}' {shown}", t.expr);
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "  █ TOTAL RESULTS\n");
    if let Some(search) = &r.search {
        let which = search
            .best_rate
            .map_or("the last step (none passed)".to_owned(), |b| {
                format!("the best passing step ({b:.0}/s)")
            });
        let _ = writeln!(out, "    figures of {which}\n");
    }
    let completed = s.ok + s.errors;
    line(
        &mut out,
        "calls",
        &format!(
            "{completed} completed, {:.1}/s{}",
            s.actual_rps,
            s.requested_rps
                .map(|q| format!(" (intended {q:.0}/s)"))
                .unwrap_or_default()
        ),
    );
    let pct = |n: u64| {
        if completed == 0 {
            0.0
        } else {
            100.0 * n as f64 / completed as f64
        }
    };
    line(&mut out, "ok", &format!("{} ({:.2}%)", s.ok, pct(s.ok)));
    line(
        &mut out,
        "errors",
        &format!("{} ({:.2}%)", s.errors, pct(s.errors)),
    );
    for (kind, n) in &r.errors {
        line(&mut out, &format!("  {{ kind:{kind} }}"), &n.to_string());
    }
    if s.model != "closed-loop" {
        line(&mut out, "dropped", &s.dropped.to_string());
    }
    let lat_name = if s.model == "closed-loop" {
        "latency (= service)"
    } else {
        "latency (from intended)"
    };
    line(&mut out, lat_name, &trend(&s.latency));
    for (path, p) in &s.by_path {
        line(
            &mut out,
            &format!("  {{ path:{path} }}"),
            &format!("{} calls, {}", p.calls, trend(&p.latency)),
        );
    }
    if s.model != "closed-loop" {
        line(&mut out, "service time", &trend(&s.service));
    }
    if let Some(lag) = &s.lag {
        line(
            &mut out,
            "scheduler lag",
            &format!(
                "avg={} p(99)={} max={}",
                fmt_ms(lag.mean_ms),
                fmt_ms(lag.p99_ms),
                fmt_ms(lag.max_ms)
            ),
        );
    }
    line(
        &mut out,
        "activations (this node)",
        &format!("{} (before {})", s.activations_after, s.activations_before),
    );
    for (k, v) in &r.notes {
        line(&mut out, k, v);
    }
    line(&mut out, "duration", &fmt_ms(r.duration_s * 1e3));
    let e = &r.env;
    line(
        &mut out,
        "machine",
        &format!("{} · {} cores · {}", e.cpu_model, e.cores, e.os),
    );
    line(
        &mut out,
        "build",
        &format!(
            "{} · {} · {}",
            e.rustc,
            e.git_commit,
            if e.release_build { "release" } else { "debug" }
        ),
    );
    out
}
