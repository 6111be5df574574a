//! `result.json` (the [`RunResult`], pretty-printed) and `intervals.csv`.
//!
//! Contract: `result.json` parses back into a [`RunResult`] with
//! `serde_json` (what `compare` reads); its histograms are lossless
//! (`[value_ns, count]` pairs). `intervals.csv` has one line per second:
//! `second,ok,errors,dropped,p50_ms,p99_ms,max_ms`, after `#` lines
//! naming the run and its environment.

use std::fmt::Write as _;
use std::path::Path;

use super::RunResult;

/// Writes `result.json` and `intervals.csv` into `dir`.
pub fn write(dir: &Path, r: &RunResult) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(r).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("result.json"), json)?;
    std::fs::write(dir.join("intervals.csv"), intervals_csv(r))
}

/// The interval log as CSV: `#` comment lines with the run and its
/// environment, then a header line and one line per second.
pub fn intervals_csv(r: &RunResult) -> String {
    let mut s = String::new();
    let e = &r.env;
    let _ = writeln!(
        s,
        "# mesh-load {} {}",
        r.config.scenario.name(),
        r.summary.model_label
    );
    let _ = writeln!(s, "# start {} command {}", r.start_time, e.command_line);
    let _ = writeln!(
        s,
        "# cpu {} cores {} os {} rustc {} git {}",
        e.cpu_model, e.cores, e.os, e.rustc, e.git_commit
    );
    s.push_str("second,ok,errors,dropped,p50_ms,p99_ms,max_ms\n");
    for i in &r.intervals {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.4},{:.4},{:.4}",
            i.second, i.ok, i.errors, i.dropped, i.p50_ms, i.p99_ms, i.max_ms
        );
    }
    s
}
