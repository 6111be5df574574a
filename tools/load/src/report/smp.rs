//! Service Mesh Performance (SMP) files: `smp_config.json` and
//! `smp_result.json`.
//!
//! Contract: the field names are the `smp` protos' snake_case JSON names
//! (`PerformanceTestConfig`, `PerformanceTestResult`), timestamps are RFC
//! 3339 UTC with a `Z`. The config file is `{"test": PerformanceTestConfig}`,
//! the shape `mesheryctl perf apply -f` reads (JSON is valid YAML); its
//! client's `protocol` is 2 (TCP), `load_generator` is `mesh-load`, and the
//! endpoint is `mesh://capability/bench`. What SMP has no field for (p95,
//! p99.9, errors, drops, the requested rate, the model, the environment)
//! goes in `labels`, as strings; the full data is behind `details_uri`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use super::{ModelCfg, RunResult};
use crate::rng::mix;

/// The SMP spec version these files follow.
pub const SMP_VERSION: &str = "v0.0.1";

fn hash(s: &str) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in s.bytes() {
        h = mix(h ^ u64::from(b));
    }
    format!("{h:016x}")
}

/// The config id: a hash of the configuration.
pub fn config_id(r: &RunResult) -> String {
    hash(&serde_json::to_string(&r.config).unwrap_or_default())
}

/// The run id: a hash of the configuration, start time and host.
pub fn run_id(r: &RunResult) -> String {
    hash(&format!(
        "{}{}{}",
        config_id(r),
        r.start_time,
        r.env.hostname
    ))
}

fn labels(r: &RunResult) -> BTreeMap<String, String> {
    let s = &r.summary;
    let c = &r.config;
    let mut l = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        l.insert(k.to_owned(), v);
    };
    put("tool", "mesh-load".into());
    put("scenario", c.scenario.name().into());
    put("model", s.model.clone());
    put("model_label", s.model_label.clone());
    put("target", c.target.clone());
    put("transport", c.transport.clone());
    put("nodes", c.nodes.to_string());
    put("actors", c.scenario.actors.to_string());
    put("payload_bytes", c.scenario.payload.to_string());
    put(
        "path",
        s.by_path.keys().cloned().collect::<Vec<_>>().join(","),
    );
    put("p95_ms", format!("{:.4}", s.latency.p95_ms));
    put("p99_9_ms", format!("{:.4}", s.latency.p999_ms));
    put("service_p99_ms", format!("{:.4}", s.service.p99_ms));
    put("errors", s.errors.to_string());
    put("dropped", s.dropped.to_string());
    put(
        "requested_rps",
        s.requested_rps.map_or("max".into(), |r| format!("{r}")),
    );
    put("cpu_model", r.env.cpu_model.clone());
    put("cores", r.env.cores.to_string());
    put("os", r.env.os.clone());
    put("rustc", r.env.rustc.clone());
    put("git_commit", r.env.git_commit.clone());
    put("command_line", r.env.command_line.clone());
    l
}

/// `{"test": PerformanceTestConfig}`.
pub fn config(r: &RunResult) -> Value {
    let (connections, rps) = match &r.config.model {
        ModelCfg::OpenLoop(o) => (o.connections.unwrap_or(0) as u64, o.rate as i64),
        ModelCfg::ClosedLoop(c) => (c.concurrency as u64, 0),
        ModelCfg::Adaptive(s) => (s.connections.unwrap_or(0) as u64, s.start_rate as i64),
    };
    json!({
        "test": {
            "smp_version": SMP_VERSION,
            "id": config_id(r),
            "name": format!("mesh-load {} {}", r.config.scenario.name(), r.summary.model),
            "labels": labels(r),
            "clients": [{
                "internal": false,
                "load_generator": "mesh-load",
                "protocol": 2,
                "connections": connections,
                "rps": rps,
                "endpoint_urls": ["mesh://capability/bench"],
                "additional_options": r.env.command_line,
            }],
            "duration": format!("{:.0}s", r.duration_s.ceil()),
        }
    })
}

/// `PerformanceTestResult`.
pub fn result(r: &RunResult) -> Value {
    let l = &r.summary.latency;
    json!({
        "smp_version": SMP_VERSION,
        "id": run_id(r),
        "test_id": config_id(r),
        "mesh_config_id": "",
        "env_id": r.env.hostname,
        "labels": labels(r),
        "start_time": r.start_time,
        "end_time": r.end_time,
        "latencies_ms": {
            "min": l.min_ms,
            "average": l.mean_ms,
            "p50": l.p50_ms,
            "p90": l.p90_ms,
            "p99": l.p99_ms,
            "max": l.max_ms,
        },
        "actual_qps": r.summary.actual_rps,
        "details_uri": "report.html",
    })
}

/// Writes both files into `dir`.
pub fn write(dir: &Path, r: &RunResult) -> std::io::Result<()> {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).map_err(std::io::Error::other);
    std::fs::write(dir.join("smp_config.json"), pretty(&config(r))?)?;
    std::fs::write(dir.join("smp_result.json"), pretty(&result(r))?)
}
