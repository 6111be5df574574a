//! `fortio.json`: the run in fortio's `RunnerResults` JSON shape, which
//! Meshery stores as `runner_results` and fortio's own `report` UI plots.
//!
//! Contract: fortio's field names (`RunType`, `Labels`, `StartTime`,
//! `RequestedQPS` as a string, `"max"` for a closed loop, `RequestedDuration`,
//! `ActualQPS`, `ActualDuration` in ns, `NumThreads`, `Version`,
//! `DurationHistogram` and `ErrorsDurationHistogram` as `HistogramData`
//! `{Count, Min, Max, Sum, Avg, StdDev, Data:[{Start, End, Percent, Count}],
//! Percentiles:[{Percentile, Value}]}` in **seconds**, `Exactly`, `Jitter`,
//! `Uniform`, `NoCatchUp`, `RunID`, `ID`), plus `RetCodes` keyed by outcome
//! (`OK` or a `mesh::Error` variant), as fortio's gRPC runner keys them by
//! status. The duration histogram is the latency from the intended start
//! (fortio itself records service time: see `ServiceTimeHistogram`, an
//! extra field). Buckets come from the HDR histogram at log steps (x1.25).

use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use super::{ModelCfg, RunResult};
use crate::record::new_histogram;

/// The percentiles listed, as fortio's default `-p`.
pub const PERCENTILES: [f64; 5] = [50.0, 75.0, 90.0, 99.0, 99.9];

/// A histogram (ns) as fortio's `HistogramData` (seconds).
pub fn histogram_data(h: &Histogram<u64>) -> Value {
    let s = |ns: f64| ns / 1e9;
    if h.is_empty() {
        return json!({"Count": 0, "Min": 0.0, "Max": 0.0, "Sum": 0.0, "Avg": 0.0,
                      "StdDev": 0.0, "Data": [], "Percentiles": []});
    }
    let total = h.len() as f64;
    let mut data = Vec::new();
    let mut start = h.min() as f64;
    let mut cum = 0u64;
    for v in h.iter_log(1_000, 1.25) {
        let n = v.count_since_last_iteration();
        let end = v.value_iterated_to() as f64;
        if n > 0 {
            cum += n;
            data.push(json!({
                "Start": s(start),
                "End": s(end.min(h.max() as f64).max(start)),
                "Percent": 100.0 * cum as f64 / total,
                "Count": n,
            }));
        }
        start = end;
    }
    let percentiles: Vec<Value> = PERCENTILES
        .iter()
        .map(|&p| json!({"Percentile": p, "Value": s(h.value_at_percentile(p) as f64)}))
        .collect();
    json!({
        "Count": h.len(),
        "Min": s(h.min() as f64),
        "Max": s(h.max() as f64),
        "Sum": s(h.mean() * total),
        "Avg": s(h.mean()),
        "StdDev": s(h.stdev()),
        "Data": data,
        "Percentiles": percentiles,
    })
}

/// The `RunnerResults` document.
pub fn document(r: &RunResult) -> Value {
    let merged = |kind: &str, outcome: Option<&str>| {
        let mut all = new_histogram(3);
        for h in r.histograms.iter().filter(|h| h.kind == kind) {
            let o = h.outcome.map(|o| o.as_str());
            if outcome.is_none() || o == outcome {
                all.add(h.to_histogram()).expect("same bounds");
            }
        }
        all
    };
    let (requested, threads, exactly, duration) = match &r.config.model {
        ModelCfg::OpenLoop(o) => (
            format!("{}", o.rate),
            o.connections.unwrap_or(o.max_in_flight as usize),
            matches!(o.stop, crate::model::Stop::Calls(_)),
            o.stop,
        ),
        ModelCfg::ClosedLoop(c) => (
            "max".to_owned(),
            c.concurrency,
            matches!(c.stop, crate::model::Stop::Calls(_)),
            c.stop,
        ),
        ModelCfg::Adaptive(s) => (
            format!("{}", r.summary.requested_rps.unwrap_or(s.start_rate)),
            s.connections.unwrap_or(s.max_in_flight as usize),
            false,
            crate::model::Stop::Duration(s.step),
        ),
    };
    let requested_duration = match duration {
        crate::model::Stop::Duration(d) => format!("{}s", d.as_secs_f64()),
        crate::model::Stop::Calls(n) => format!("exactly {n} calls"),
    };
    let mut codes = Map::new();
    codes.insert("OK".into(), json!(r.summary.ok));
    for (kind, n) in &r.errors {
        codes.insert(kind.clone(), json!(n));
    }
    json!({
        "RunType": format!("mesh-load {} ({})", r.config.scenario.name(), r.summary.model),
        "Labels": format!("{} {} {}", r.config.scenario.name(), r.summary.model_label, r.config.target),
        "StartTime": r.start_time,
        "RequestedQPS": requested,
        "RequestedDuration": requested_duration,
        "ActualQPS": r.summary.actual_rps,
        "ActualDuration": (r.duration_s * 1e9) as u64,
        "NumThreads": threads,
        "Version": format!("mesh-load {}", r.env.tool_version),
        "DurationHistogram": histogram_data(&merged("latency", None)),
        "ErrorsDurationHistogram": histogram_data(&merged("latency", Some("error"))),
        "ServiceTimeHistogram": histogram_data(&merged("service", None)),
        "Exactly": if exactly { r.summary.intended } else { 0 },
        "Jitter": false,
        "Uniform": false,
        "NoCatchUp": false,
        "RunID": 0,
        "ID": super::smp::run_id(r),
        "RetCodes": codes,
        "Environment": r.env,
    })
}

/// Writes `fortio.json` into `dir`.
pub fn write(dir: &Path, r: &RunResult) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(&document(r)).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("fortio.json"), text)
}
