//! The result document of a run and the files rendered from it.
//!
//! Contract: [`build`] turns a finished recording into a [`RunResult`],
//! the single source every output is rendered from (so any output can be
//! regenerated from `result.json`). [`write_all`] writes, into `--out`:
//!
//! | file | what | module |
//! |---|---|---|
//! | `summary.txt` | the terminal summary (also printed) | [`summary`] |
//! | `result.json` | this document: config, env, summary, thresholds, intervals, errors, full histograms | [`json`] |
//! | `intervals.csv` | the per-second interval log | [`json`] |
//! | `smp_config.json`, `smp_result.json` | Service Mesh Performance config and result | [`smp`] |
//! | `fortio.json` | fortio's `RunnerResults` shape, what Meshery reads | [`fortio`] |
//! | `report.html` | one self-contained page, inline SVG charts, no script | [`html`] |
//!
//! Latency figures are milliseconds throughout, histograms nanoseconds
//! (stated in each histogram's `unit`). Every file carries the [`Env`].

pub mod fortio;
pub mod html;
pub mod json;
pub mod smp;
pub mod summary;

use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::time::SystemTime;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::env::{rfc3339, Env};
use crate::model::{ClosedLoop, OpenLoop, Search, Step};
use crate::record::{new_histogram, Outcome, Path, Recording};
use crate::scenario::ScenarioCfg;
use crate::threshold::{Check, Figures, Threshold};

/// The result file's schema name.
pub const SCHEMA: &str = "mesh-load/1";

/// `ms` formatted with a unit that suits it: `85.2µs`, `1.25ms`, `2.10s`.
pub fn fmt_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.1}µs", ms * 1e3)
    } else if ms < 1000.0 {
        format!("{ms:.2}ms")
    } else {
        format!("{:.2}s", ms / 1e3)
    }
}

/// The load model, with its settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ModelCfg {
    /// Open loop at a rate.
    OpenLoop(OpenLoop),
    /// Closed loop with workers.
    ClosedLoop(ClosedLoop),
    /// SLO search over open-loop steps.
    Adaptive(Search),
}

impl ModelCfg {
    /// `open-loop`, `closed-loop` or `adaptive`.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelCfg::OpenLoop(_) => "open-loop",
            ModelCfg::ClosedLoop(_) => "closed-loop",
            ModelCfg::Adaptive(_) => "adaptive",
        }
    }

    /// A one-line description naming the model.
    pub fn label(&self) -> String {
        match self {
            ModelCfg::OpenLoop(o) => format!(
                "open-loop, {} rate {}/s{}",
                if o.poisson { "Poisson" } else { "fixed" },
                o.rate,
                o.connections
                    .map(|c| format!(", {c} connections"))
                    .unwrap_or_default()
            ),
            ModelCfg::ClosedLoop(c) => format!("closed-loop, {} workers", c.concurrency),
            ModelCfg::Adaptive(s) => format!(
                "adaptive (open-loop steps of {:.1}s, at most {}), SLO {}",
                s.step.as_secs_f64(),
                s.max_steps,
                s.slo
            ),
        }
    }
}

/// What was run, against what.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    /// The scenario.
    pub scenario: ScenarioCfg,
    /// The load model.
    pub model: ModelCfg,
    /// `embedded` (one node in this process) or `cluster`.
    pub target: String,
    /// Seeds dialed (cluster runs).
    pub seeds: Vec<String>,
    /// Members of the cluster when the run started (this node included).
    pub nodes: usize,
    /// How node traffic went: `tcp`, `mtls` (in process) or
    /// `sidecar:haproxy|external` (through Consul's service mesh).
    #[serde(default = "tcp")]
    pub transport: String,
    /// The thresholds given.
    pub thresholds: Vec<String>,
}

fn tcp() -> String {
    "tcp".into()
}

/// Figures of one histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Standard deviation.
    pub stdev_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Stats {
    /// The figures of `h` (nanoseconds).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Stats::default();
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Stats {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1e6,
            stdev_ms: h.stdev() / 1e6,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Calls on one path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PathStats {
    /// Calls completed on this path (both outcomes).
    pub calls: u64,
    /// Their latency.
    pub latency: Stats,
}

/// The run's headline figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// `open-loop`, `closed-loop` or `adaptive`.
    pub model: String,
    /// The model in one line.
    pub model_label: String,
    /// Calls the model intended.
    pub intended: u64,
    /// Calls sent.
    pub sent: u64,
    /// Calls answered.
    pub ok: u64,
    /// Calls failed.
    pub errors: u64,
    /// Intended calls dropped (in-flight bound reached).
    pub dropped: u64,
    /// errors / (ok + errors).
    pub error_rate: f64,
    /// Calls completed per second.
    pub actual_rps: f64,
    /// The intended rate (open loop and search), if any.
    pub requested_rps: Option<f64>,
    /// Latency from the intended start, every completed call.
    pub latency: Stats,
    /// Service time (from the send), every completed call.
    pub service: Stats,
    /// Scheduler lag (open loop).
    pub lag: Option<Stats>,
    /// Per path: `local`, `remote`.
    pub by_path: BTreeMap<String, PathStats>,
    /// `node.activation_count()` on the calling node before the run.
    pub activations_before: usize,
    /// ... and after it.
    pub activations_after: usize,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Interval {
    /// Seconds since the start.
    pub second: u64,
    /// How much of this second the run covered (the last one is partial).
    pub span_s: f64,
    /// Calls answered in it.
    pub ok: u64,
    /// Calls failed in it.
    pub errors: u64,
    /// Intended calls dropped in it.
    pub dropped: u64,
    /// Median latency of its calls.
    pub p50_ms: f64,
    /// 99th percentile latency of its calls.
    pub p99_ms: f64,
    /// Largest latency of its calls.
    pub max_ms: f64,
}

/// A histogram, lossless: every recorded value with its count.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistogramData {
    /// `latency`, `service` or `lag`.
    pub kind: String,
    /// `local` / `remote` (none for lag).
    pub path: Option<Path>,
    /// `ok` / `error` (none for lag).
    pub outcome: Option<Outcome>,
    /// Always `ns`.
    pub unit: String,
    /// Precision of the recording.
    pub significant_figures: u8,
    /// Samples.
    pub count: u64,
    /// Its figures.
    pub stats: Stats,
    /// `[value, count]` for every distinct recorded value (HDR bucket).
    pub counts: Vec<[u64; 2]>,
}

impl HistogramData {
    fn of(kind: &str, path: Option<Path>, outcome: Option<Outcome>, h: &Histogram<u64>) -> Self {
        HistogramData {
            kind: kind.into(),
            path,
            outcome,
            unit: "ns".into(),
            significant_figures: h.sigfig(),
            count: h.len(),
            stats: Stats::of(h),
            counts: h
                .iter_recorded()
                .map(|v| [v.value_iterated_to(), v.count_at_value()])
                .collect(),
        }
    }

    /// The histogram back, as recorded.
    pub fn to_histogram(&self) -> Histogram<u64> {
        let mut h = new_histogram(self.significant_figures);
        for &[v, n] in &self.counts {
            h.saturating_record_n(v, n);
        }
        h
    }
}

/// The adaptive search's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SearchResult {
    /// The SLO.
    pub slo: String,
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// The highest rate that met the SLO (none if no step did).
    pub best_rate: Option<f64>,
}

/// Everything about one run: what every output renders.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    /// [`SCHEMA`].
    pub schema: String,
    /// Where it ran.
    pub env: Env,
    /// What ran.
    pub config: RunConfig,
    /// RFC 3339 UTC.
    pub start_time: String,
    /// RFC 3339 UTC.
    pub end_time: String,
    /// Seconds from the first intended call to the last completion.
    pub duration_s: f64,
    /// Headline figures.
    pub summary: Summary,
    /// Threshold verdicts.
    pub thresholds: Vec<Check>,
    /// The search's steps (adaptive runs).
    pub search: Option<SearchResult>,
    /// Failed calls by `mesh::Error` variant (`LeafFailed`: a fan-out leaf).
    pub errors: BTreeMap<String, u64>,
    /// Per-second intervals.
    pub intervals: Vec<Interval>,
    /// Latency and service time per (path, outcome), and lag.
    pub histograms: Vec<HistogramData>,
    /// Scenario facts (Zipf shares, id prefix).
    pub notes: BTreeMap<String, String>,
}

impl RunResult {
    /// Whether every threshold held (and an SLO search found a rate).
    pub fn passed(&self) -> bool {
        self.thresholds.iter().all(|c| c.pass)
            && self.search.as_ref().is_none_or(|s| s.best_rate.is_some())
    }

    /// The merged histogram of one kind (`latency`, `service`).
    pub fn merged(&self, kind: &str) -> Histogram<u64> {
        let mut all = new_histogram(3);
        for h in self.histograms.iter().filter(|h| h.kind == kind) {
            all.add(h.to_histogram()).expect("same bounds");
        }
        all
    }
}

/// What [`build`] needs besides the recording.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The environment.
    pub env: Env,
    /// The configuration.
    pub config: RunConfig,
    /// Wall-clock start.
    pub start: SystemTime,
    /// Wall-clock end.
    pub end: SystemTime,
    /// The recording (of the best step, for a search).
    pub recording: &'a Recording,
    /// Thresholds to judge.
    pub thresholds: &'a [Threshold],
    /// The search's steps and best rate.
    pub search: Option<(Vec<Step>, Option<f64>)>,
    /// Activations before and after.
    pub activations: (usize, usize),
    /// Scenario notes.
    pub notes: Vec<(String, String)>,
}

/// Builds the result document.
pub fn build(i: Inputs<'_>) -> RunResult {
    let r = i.recording;
    let lat = r.latency_all();
    let svc = r.service_all();
    let seconds = r.elapsed.as_secs_f64();
    let figures = Figures {
        latency: &lat,
        service: &svc,
        ok: r.ok,
        errors: r.failed,
        dropped: r.dropped,
        seconds,
    };
    let thresholds = i.thresholds.iter().map(|t| t.check(&figures)).collect();
    let mut by_path = BTreeMap::new();
    for p in [Path::Local, Path::Remote] {
        let hs: Vec<_> = r
            .latency
            .iter()
            .filter(|((q, _), _)| *q == p)
            .map(|(_, h)| h)
            .collect();
        if hs.is_empty() {
            continue;
        }
        let m = crate::record::merged(hs.into_iter());
        by_path.insert(
            p.as_str().to_owned(),
            PathStats {
                calls: m.len(),
                latency: Stats::of(&m),
            },
        );
    }
    let (requested_rps, lag) = match &i.config.model {
        ModelCfg::OpenLoop(o) => (Some(o.rate), Some(Stats::of(&r.lag))),
        ModelCfg::Adaptive(_) => (i.search.as_ref().and_then(|s| s.1), Some(Stats::of(&r.lag))),
        ModelCfg::ClosedLoop(_) => (None, None),
    };
    let completed = r.ok + r.failed;
    let summary = Summary {
        model: i.config.model.kind().into(),
        model_label: i.config.model.label(),
        intended: r.intended,
        sent: r.sent,
        ok: r.ok,
        errors: r.failed,
        dropped: r.dropped,
        error_rate: if completed == 0 {
            0.0
        } else {
            r.failed as f64 / completed as f64
        },
        actual_rps: if seconds > 0.0 {
            completed as f64 / seconds
        } else {
            0.0
        },
        requested_rps,
        latency: Stats::of(&lat),
        service: Stats::of(&svc),
        lag,
        by_path,
        activations_before: i.activations.0,
        activations_after: i.activations.1,
    };
    let intervals = r
        .intervals
        .iter()
        .enumerate()
        .map(|(s, iv)| {
            let ms = |ns: u64| ns as f64 / 1e6;
            Interval {
                second: s as u64,
                span_s: (seconds - s as f64).clamp(0.0, 1.0),
                ok: iv.ok,
                errors: iv.errors,
                dropped: iv.dropped,
                p50_ms: ms(iv.latency.value_at_quantile(0.5)),
                p99_ms: ms(iv.latency.value_at_quantile(0.99)),
                max_ms: ms(iv.latency.max()),
            }
        })
        .collect();
    let mut histograms = Vec::new();
    for ((p, o), h) in &r.latency {
        histograms.push(HistogramData::of("latency", Some(*p), Some(*o), h));
    }
    for ((p, o), h) in &r.service {
        histograms.push(HistogramData::of("service", Some(*p), Some(*o), h));
    }
    if !r.lag.is_empty() {
        histograms.push(HistogramData::of("lag", None, None, &r.lag));
    }
    let search = match (&i.config.model, i.search) {
        (ModelCfg::Adaptive(s), Some((steps, best_rate))) => Some(SearchResult {
            slo: s.slo.clone(),
            steps,
            best_rate,
        }),
        _ => None,
    };
    RunResult {
        schema: SCHEMA.into(),
        env: i.env,
        config: i.config,
        start_time: rfc3339(i.start),
        end_time: rfc3339(i.end),
        duration_s: seconds,
        summary,
        thresholds,
        search,
        errors: r.errors.clone(),
        intervals,
        histograms,
        notes: i.notes.into_iter().collect(),
    }
}

/// Writes every output file into `dir` (created if missing).
pub fn write_all(dir: &FsPath, r: &RunResult) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("summary.txt"), summary::render(r, false))?;
    json::write(dir, r)?;
    smp::write(dir, r)?;
    fortio::write(dir, r)?;
    std::fs::write(dir.join("report.html"), html::render(r))?;
    Ok(())
}

/// Reads a `result.json`.
pub fn read(path: &FsPath) -> Result<RunResult, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a mesh-load result: {e}", path.display()))
}
