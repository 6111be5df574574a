//! The output files of a real run parse back (serde_json) and carry the
//! documented field names: result.json (into `RunResult`, histograms
//! lossless), SMP config and result (snake_case proto names, RFC 3339
//! timestamps with a `Z`), fortio's `RunnerResults` names, the interval
//! log, and the environment in each.

mod common;

use common::{json, mesh_load, text, Scratch};
use mesh_load::report::RunResult;

fn is_rfc3339_z(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() >= 20
        && s.ends_with('Z')
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && s[..4].chars().all(|c| c.is_ascii_digit())
}

#[test]
fn open_loop_run_writes_every_documented_file() {
    let dir = Scratch::new("outputs");
    let out = dir.join("out");
    let o = mesh_load(&[
        "run",
        "uniform",
        "--rate",
        "500",
        "--duration",
        "1s",
        "--actors",
        "50",
        "--payload",
        "64",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("open-loop, fixed rate 500/s"), "{stdout}");
    assert!(stdout.contains("TOTAL RESULTS"), "{stdout}");

    // result.json parses back into the document, histograms lossless.
    let text_json = std::fs::read_to_string(out.join("result.json")).unwrap();
    let r: RunResult = serde_json::from_str(&text_json).expect("result.json parses back");
    assert_eq!(r.schema, "mesh-load/1");
    assert_eq!(r.summary.model, "open-loop");
    assert_eq!(r.summary.ok + r.summary.errors, 500, "{:?}", r.summary);
    assert_eq!(r.summary.requested_rps, Some(500.0));
    assert!(r.summary.latency.p99_ms > 0.0);
    assert!(r.summary.lag.is_some());
    assert!(r.summary.by_path.contains_key("local"));
    assert_eq!(r.summary.activations_after, 50, "uniform over 50 actors");
    assert!(is_rfc3339_z(&r.start_time) && is_rfc3339_z(&r.end_time));
    let lat: u64 = r
        .histograms
        .iter()
        .filter(|h| h.kind == "latency")
        .map(|h| h.to_histogram().len())
        .sum();
    assert_eq!(lat, 500, "histograms round-trip every sample");
    assert!(r.histograms.iter().any(|h| h.kind == "service"));
    assert!(r.histograms.iter().any(|h| h.kind == "lag"));
    assert!(!r.intervals.is_empty());
    assert!(!r.env.cpu_model.is_empty() && r.env.cores >= 1);
    assert!(r.env.rustc.starts_with("rustc "), "{}", r.env.rustc);
    assert!(r.env.command_line.contains("uniform"));
    let raw = json(&out.join("result.json"));
    for key in [
        "env",
        "config",
        "summary",
        "histograms",
        "intervals",
        "errors",
        "thresholds",
    ] {
        assert!(raw.get(key).is_some(), "result.json lacks {key}");
    }

    // SMP result: the proto's snake_case names.
    let smp = json(&out.join("smp_result.json"));
    for key in [
        "smp_version",
        "id",
        "labels",
        "start_time",
        "end_time",
        "latencies_ms",
        "actual_qps",
        "details_uri",
        "test_id",
        "env_id",
    ] {
        assert!(smp.get(key).is_some(), "smp_result.json lacks {key}: {smp}");
    }
    for key in ["min", "average", "p50", "p90", "p99", "max"] {
        assert!(smp["latencies_ms"][key].is_f64(), "latencies_ms.{key}");
    }
    assert!(is_rfc3339_z(smp["start_time"].as_str().unwrap()));
    assert!(is_rfc3339_z(smp["end_time"].as_str().unwrap()));
    let labels = smp["labels"].as_object().unwrap();
    for key in [
        "p99_9_ms",
        "errors",
        "requested_rps",
        "model",
        "cpu_model",
        "rustc",
        "command_line",
    ] {
        assert!(labels[key].is_string(), "labels.{key} is a string");
    }
    assert_eq!(smp["labels"]["model"], "open-loop");

    // SMP config: {test: PerformanceTestConfig} as mesheryctl reads it.
    let cfg = json(&out.join("smp_config.json"));
    let test = &cfg["test"];
    for key in ["smp_version", "id", "name", "labels", "clients", "duration"] {
        assert!(test.get(key).is_some(), "smp_config.json test lacks {key}");
    }
    let client = &test["clients"][0];
    for key in [
        "load_generator",
        "protocol",
        "connections",
        "rps",
        "endpoint_urls",
    ] {
        assert!(client.get(key).is_some(), "client lacks {key}");
    }
    assert_eq!(client["rps"], 500);
    assert_eq!(test["id"], smp["test_id"], "the result names its config");

    // fortio's RunnerResults.
    let f = json(&out.join("fortio.json"));
    for key in [
        "RunType",
        "Labels",
        "StartTime",
        "RequestedQPS",
        "RequestedDuration",
        "ActualQPS",
        "ActualDuration",
        "NumThreads",
        "Version",
        "DurationHistogram",
        "ErrorsDurationHistogram",
        "Exactly",
        "Jitter",
        "Uniform",
        "NoCatchUp",
        "RunID",
        "ID",
        "RetCodes",
    ] {
        assert!(f.get(key).is_some(), "fortio.json lacks {key}");
    }
    assert!(
        f["RequestedQPS"].is_string(),
        "fortio's RequestedQPS is a string"
    );
    let h = &f["DurationHistogram"];
    for key in [
        "Count",
        "Min",
        "Max",
        "Sum",
        "Avg",
        "StdDev",
        "Data",
        "Percentiles",
    ] {
        assert!(h.get(key).is_some(), "DurationHistogram lacks {key}");
    }
    assert_eq!(h["Count"], 500);
    let data = h["Data"].as_array().unwrap();
    assert!(!data.is_empty());
    for key in ["Start", "End", "Percent", "Count"] {
        assert!(data[0].get(key).is_some(), "Data[0] lacks {key}");
    }
    let last = data.last().unwrap()["Percent"].as_f64().unwrap();
    assert!(
        (last - 100.0).abs() < 1e-6,
        "cumulative percent ends at 100: {last}"
    );
    let total: u64 = data.iter().map(|d| d["Count"].as_u64().unwrap()).sum();
    assert_eq!(total, 500);
    // Seconds, not nanoseconds: a loopback call is well under a second.
    assert!(h["Avg"].as_f64().unwrap() < 1.0);
    assert!(h["Percentiles"][0].get("Percentile").is_some());
    assert_eq!(f["RetCodes"]["OK"], 500);

    // Interval log and summary.
    let csv = std::fs::read_to_string(out.join("intervals.csv")).unwrap();
    assert!(csv.contains("second,ok,errors,dropped,p50_ms,p99_ms,max_ms"));
    assert!(
        csv.contains("# cpu "),
        "the interval log records the machine"
    );
    assert!(std::fs::read_to_string(out.join("summary.txt"))
        .unwrap()
        .contains("open-loop"));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(!html.contains("<script"), "no script in the report");
    assert!(
        !html.contains(" src=") && !html.contains(" href="),
        "nothing loaded"
    );
    assert!(html.contains("<h2>Environment</h2>") && html.contains(&r.env.rustc));
}

#[test]
fn closed_loop_runs_are_labelled_closed_loop_everywhere() {
    let dir = Scratch::new("closed");
    let out = dir.join("out");
    let o = mesh_load(&[
        "run",
        "hot",
        "--concurrency",
        "4",
        "--calls",
        "300",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("closed-loop, 4 workers"), "{stdout}");
    assert!(stdout.contains("coordinated omission"), "{stdout}");
    let r = json(&out.join("result.json"));
    assert_eq!(r["summary"]["model"], "closed-loop");
    assert_eq!(r["config"]["model"]["kind"], "closed-loop");
    assert_eq!(r["summary"]["ok"], 300);
    let f = json(&out.join("fortio.json"));
    assert!(f["RunType"].as_str().unwrap().contains("closed-loop"));
    assert_eq!(f["RequestedQPS"], "max");
    assert_eq!(
        json(&out.join("smp_result.json"))["labels"]["model"],
        "closed-loop"
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("closed-loop"));
}

#[test]
fn fan_out_and_zipf_scenarios_record_their_facts() {
    let dir = Scratch::new("fanout");
    let out = dir.join("out");
    let o = mesh_load(&[
        "run",
        "fan-out",
        "--fanout",
        "4",
        "--actors",
        "10",
        "--calls",
        "100",
        "--concurrency",
        "8",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = json(&out.join("result.json"));
    assert_eq!(r["summary"]["ok"], 100);
    // 10 hubs, each with its 4 leaves.
    assert_eq!(r["summary"]["activations_after"], 50);

    let out2 = dir.join("zipf");
    let o = mesh_load(&[
        "run",
        "zipf",
        "--actors",
        "1000",
        "--calls",
        "2000",
        "--quiet",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = json(&out2.join("result.json"));
    let top1: f64 = r["notes"]["zipf_top1_share"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(top1 > 0.1 && top1 < 0.3, "top1 share {top1}");
    // Skewed: far fewer distinct actors than calls.
    assert!(r["summary"]["activations_after"].as_u64().unwrap() < 1000);
}
