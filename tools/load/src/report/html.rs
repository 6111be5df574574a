//! `report.html`: one self-contained page (inline CSS and SVG; no script,
//! no font, no network) that explains itself.
//!
//! Contract: four charts, each an inline `<svg>` with its axes, ticks,
//! legend and one `<polyline>` per series, drawn by hand here:
//! 1. latency percentile spectrum (latency from the intended start and
//!    service time against percentile, on a "nines" axis: 0, 90, 99,
//!    99.9 ...);
//! 2. p50 and p99 latency per second;
//! 3. throughput per second (answered, failed);
//! 4. errors and dropped calls per second.
//!
//! Then the tables: thresholds, figures per path, errors by kind, the
//! configuration and the environment. Every value is HTML-escaped.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::{fmt_ms, RunResult, Stats};

const W: f64 = 760.0;
const H: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 46.0;

/// Escapes `&`, `<`, `>` and quotes.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Stroke colour.
    pub color: &'static str,
    /// (x, y) points, in data units.
    pub points: Vec<(f64, f64)>,
}

fn nice_step(range: f64) -> f64 {
    let raw = (range / 5.0).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn ticks(max: f64) -> Vec<f64> {
    let max = if max > 0.0 { max } else { 1.0 };
    let step = nice_step(max);
    (0..=((max / step).ceil() as usize))
        .map(|i| i as f64 * step)
        .collect()
}

fn num(v: f64) -> String {
    let s = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// An SVG line chart. `x_ticks` replaces the numeric x ticks (labels at
/// data positions); the y axis starts at 0.
pub fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    x_ticks: Option<Vec<(f64, String)>>,
) -> String {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let x_max = xs.fold(0.0f64, f64::max);
    let y_ticks = ticks(ys.fold(0.0f64, f64::max));
    let y_top = *y_ticks.last().expect("at least one tick");
    let x_ticks =
        x_ticks.unwrap_or_else(|| ticks(x_max).into_iter().map(|t| (t, num(t))).collect());
    let x_top = x_ticks.iter().map(|t| t.0).fold(x_max, f64::max).max(1e-9);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let px = |x: f64| LEFT + x / x_top * pw;
    let py = |y: f64| TOP + ph - y / y_top * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{t}">"#,
        t = esc(title)
    );
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="20" class="title">{}</text>"#,
        esc(title)
    );
    for &t in &y_ticks {
        let y = py(t);
        let _ = write!(
            s,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            esc(&num(t))
        );
    }
    for (t, label) in &x_ticks {
        let x = px(*t);
        let _ = write!(
            s,
            r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" class="grid"/><text x="{x:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#,
            TOP + ph,
            TOP + ph + 16.0,
            esc(label)
        );
    }
    let _ = write!(
        s,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b:.1}" class="axis"/><line x1="{LEFT}" y1="{b:.1}" x2="{r:.1}" y2="{b:.1}" class="axis"/>"#,
        b = TOP + ph,
        r = W - RIGHT
    );
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" class="label" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 8.0,
        esc(x_label)
    );
    let _ = write!(
        s,
        r#"<text x="14" y="{:.1}" class="label" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(y_label)
    );
    for (i, se) in series.iter().enumerate() {
        let pts: Vec<String> = se
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{p}"><title>{n}</title></polyline>"#,
            c = se.color,
            p = pts.join(" "),
            n = esc(&se.name)
        );
        let lx = W - RIGHT - 170.0;
        let ly = TOP + 8.0 + i as f64 * 16.0;
        let _ = write!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="4" fill="{c}"/><text x="{:.1}" y="{:.1}" class="legend">{n}</text>"#,
            ly - 4.0,
            lx + 18.0,
            ly + 1.0,
            c = se.color,
            n = esc(&se.name)
        );
    }
    s.push_str("</svg>");
    s
}

/// Points of a percentile spectrum: x in "nines" (`log10(1/(1-q))`), y in ms.
pub fn spectrum(h: &Histogram<u64>, max_nines: f64) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return vec![(0.0, 0.0)];
    }
    (0..=120)
        .map(|i| {
            let x = max_nines * i as f64 / 120.0;
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q) as f64 / 1e6)
        })
        .collect()
}

fn stats_row(name: &str, s: &Stats) -> String {
    format!(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        esc(name),
        s.count,
        fmt_ms(s.min_ms),
        fmt_ms(s.mean_ms),
        fmt_ms(s.p50_ms),
        fmt_ms(s.p90_ms),
        fmt_ms(s.p99_ms),
        fmt_ms(s.p999_ms),
        fmt_ms(s.max_ms)
    )
}

/// The page.
pub fn render(r: &RunResult) -> String {
    let s = &r.summary;
    let c = &r.config;
    let lat = r.merged("latency");
    let svc = r.merged("service");
    let max_nines = (lat.len().max(10) as f64).log10().clamp(1.0, 5.0).floor();
    let nine_ticks: Vec<(f64, String)> = (0..=max_nines as usize)
        .map(|n| {
            let label = match n {
                0 => "0%".to_owned(),
                n => format!("{}%", 100.0 - 100.0 * 10f64.powi(-(n as i32))),
            };
            (n as f64, label)
        })
        .collect();
    let spectrum_chart = chart(
        "Latency by percentile",
        "percentile",
        "milliseconds",
        &[
            Series {
                name: "latency (from intended start)".into(),
                color: "#d62728",
                points: spectrum(&lat, max_nines),
            },
            Series {
                name: "service time".into(),
                color: "#1f77b4",
                points: spectrum(&svc, max_nines),
            },
        ],
        Some(nine_ticks),
    );
    let iv = |f: &dyn Fn(&super::Interval) -> f64| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = r
            .intervals
            .iter()
            .map(|i| (i.second as f64 + 0.5, f(i)))
            .collect();
        if v.is_empty() {
            v.push((0.0, 0.0));
        }
        v
    };
    let over_time = chart(
        "Latency per second",
        "seconds since start",
        "milliseconds",
        &[
            Series {
                name: "p50".into(),
                color: "#1f77b4",
                points: iv(&|i| i.p50_ms),
            },
            Series {
                name: "p99".into(),
                color: "#d62728",
                points: iv(&|i| i.p99_ms),
            },
        ],
        None,
    );
    // Rates per second of run covered; a last sliver under 0.25 s is left
    // out (too short to be a rate).
    let rate = |f: &dyn Fn(&super::Interval) -> u64| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = r
            .intervals
            .iter()
            .filter(|i| i.span_s >= 0.25)
            .map(|i| (i.second as f64 + 0.5, f(i) as f64 / i.span_s))
            .collect();
        if v.is_empty() {
            v.push((0.0, 0.0));
        }
        v
    };
    let throughput = chart(
        "Throughput per second",
        "seconds since start",
        "calls per second",
        &[
            Series {
                name: "answered".into(),
                color: "#2ca02c",
                points: rate(&|i| i.ok),
            },
            Series {
                name: "failed".into(),
                color: "#d62728",
                points: rate(&|i| i.errors),
            },
        ],
        None,
    );
    let errors = chart(
        "Errors and dropped calls per second",
        "seconds since start",
        "calls",
        &[
            Series {
                name: "errors".into(),
                color: "#d62728",
                points: iv(&|i| i.errors as f64),
            },
            Series {
                name: "dropped".into(),
                color: "#ff7f0e",
                points: iv(&|i| i.dropped as f64),
            },
        ],
        None,
    );

    let mut h = String::new();
    let title = format!("mesh-load: {} · {}", c.scenario.name(), s.model_label);
    let _ = write!(
        h,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{t}</title><style>
body{{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:800px;color:#222;padding:0 1em}}
h1{{font-size:1.4em}} h2{{font-size:1.1em;margin-top:1.6em}} table{{border-collapse:collapse;margin:.5em 0;font-size:.9em}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}} th{{background:#f4f4f4}}
.pass{{color:#2a7a2a}} .fail{{color:#b00020;font-weight:bold}} .note{{color:#555;font-size:.9em}}
svg{{display:block;margin:1em 0;background:#fff}} svg .title{{font-size:14px;font-weight:600}} svg .tick{{font-size:11px;fill:#444}}
svg .label{{font-size:12px;fill:#222}} svg .legend{{font-size:11px}} svg .grid{{stroke:#e6e6e6}} svg .axis{{stroke:#333}}
</style></head><body><h1>{t}</h1>"#,
        t = esc(&title)
    );
    let _ = write!(
        h,
        r#"<p>{} against the {} target ({} node(s)), {} → {}, {:.2}s. <b>{}</b> calls completed ({:.1}/s), {} errors, {} dropped.</p>"#,
        esc(c.scenario.name()),
        esc(&c.target),
        c.nodes,
        esc(&r.start_time),
        esc(&r.end_time),
        r.duration_s,
        s.ok + s.errors,
        s.actual_rps,
        s.errors,
        s.dropped
    );
    let explain = if s.model == "closed-loop" {
        "Closed-loop: each worker waits for its reply before the next call, so latency equals service time and queueing delay is hidden (coordinated omission)."
    } else {
        "Open-loop: calls are intended on a schedule whatever happened to earlier ones. Latency counts from each call's intended start (as wrk2 does), so a stall shows in it; service time counts from the actual send."
    };
    let _ = write!(h, r#"<p class="note">{}</p>"#, esc(explain));
    if let Some(search) = &r.search {
        let which = search
            .best_rate
            .map_or("the last step (no step met the SLO)".to_owned(), |b| {
                format!("the best passing step, {b:.0} calls/s")
            });
        let _ = write!(
            h,
            r#"<p class="note">Adaptive search: the figures and charts below are those of {}.</p>"#,
            esc(&which)
        );
    }
    if !r.thresholds.is_empty() || r.search.is_some() {
        h.push_str(
            "<h2>Thresholds</h2><table><tr><th></th><th>threshold</th><th>observed</th></tr>",
        );
        for t in &r.thresholds {
            let (cls, mark) = if t.pass {
                ("pass", "✓")
            } else {
                ("fail", "✗")
            };
            let shown = crate::threshold::Threshold::parse(&t.expr)
                .map(|th| th.format(t.observed))
                .unwrap_or_else(|_| t.observed.to_string());
            let _ = write!(
                h,
                r#"<tr><td class="{cls}">{mark}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&t.expr),
                esc(&shown)
            );
        }
        if let Some(search) = &r.search {
            let (cls, mark) = if search.best_rate.is_some() {
                ("pass", "✓")
            } else {
                ("fail", "✗")
            };
            let _ = write!(
                h,
                r#"<tr><td class="{cls}">{mark}</td><td>SLO {}</td><td>best rate {}</td></tr>"#,
                esc(&search.slo),
                search
                    .best_rate
                    .map_or("none".into(), |b| format!("{b:.0}/s"))
            );
        }
        h.push_str("</table>");
        if let Some(search) = &r.search {
            h.push_str("<table><tr><th>step rate</th><th>answered/s</th><th>SLO figure</th><th>dropped</th><th>errors</th><th></th></tr>");
            for st in &search.steps {
                let _ = write!(
                    h,
                    "<tr><td>{:.0}/s</td><td>{:.1}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    st.rate,
                    st.achieved_rps,
                    st.observed,
                    st.dropped,
                    st.errors,
                    if st.pass { "✓" } else { "✗" }
                );
            }
            h.push_str("</table>");
        }
    }
    h.push_str("<h2>Latency</h2>");
    h.push_str(&spectrum_chart);
    h.push_str("<table><tr><th></th><th>count</th><th>min</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    h.push_str(&stats_row("latency (from intended start)", &s.latency));
    h.push_str(&stats_row("service time", &s.service));
    for (path, p) in &s.by_path {
        h.push_str(&stats_row(&format!("latency, path {path}"), &p.latency));
    }
    if let Some(lag) = &s.lag {
        h.push_str(&stats_row("scheduler lag", lag));
    }
    h.push_str("</table><h2>Over time</h2>");
    h.push_str(&over_time);
    h.push_str(&throughput);
    h.push_str(&errors);
    h.push_str("<h2>Errors by kind</h2><table><tr><th>kind</th><th>count</th></tr>");
    if r.errors.is_empty() {
        h.push_str("<tr><td colspan=\"2\">none</td></tr>");
    }
    for (k, n) in &r.errors {
        let _ = write!(h, "<tr><td>{}</td><td>{n}</td></tr>", esc(k));
    }
    h.push_str("</table><h2>Configuration</h2><table>");
    let sc = &c.scenario;
    let rows = [
        ("scenario", sc.name().to_owned()),
        ("model", s.model_label.clone()),
        ("target", c.target.clone()),
        ("transport", c.transport.clone()),
        ("seeds", c.seeds.join(", ")),
        ("actors", sc.actors.to_string()),
        ("payload bytes", sc.payload.to_string()),
        ("fan-out", sc.fanout.to_string()),
        ("zipf s", sc.zipf_s.to_string()),
        ("call timeout", fmt_ms(sc.timeout.as_secs_f64() * 1e3)),
        ("seed", sc.seed.to_string()),
        (
            "activations (this node)",
            format!("{} → {}", s.activations_before, s.activations_after),
        ),
    ];
    for (k, v) in rows.iter() {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    for (k, v) in &r.notes {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    h.push_str("</table><h2>Environment</h2><table>");
    let e = &r.env;
    let rows = [
        ("CPU", e.cpu_model.clone()),
        ("cores", format!("{} (listed: {})", e.cores, e.cpus_listed)),
        ("OS", e.os.clone()),
        ("host", e.hostname.clone()),
        ("rustc", e.rustc.clone()),
        ("git commit", e.git_commit.clone()),
        (
            "build",
            if e.release_build { "release" } else { "debug" }.to_owned(),
        ),
        ("mesh-load", e.tool_version.clone()),
        ("command line", e.command_line.clone()),
    ];
    for (k, v) in rows.iter() {
        let _ = write!(
            h,
            "<tr><th>{}</th><td><code>{}</code></td></tr>",
            esc(k),
            esc(v)
        );
    }
    h.push_str("</table></body></html>\n");
    h
}
