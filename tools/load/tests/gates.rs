//! CI gates and compare, through the built binary: exit codes, the ✓/✗
//! lines, and compare's deltas and configuration warnings.

mod common;

use common::{mesh_load, text, Scratch};

#[test]
fn thresholds_pass_with_0_and_breach_with_3() {
    let dir = Scratch::new("gates");
    let o = mesh_load(&[
        "run",
        "hot",
        "--calls",
        "200",
        "--concurrency",
        "2",
        "--quiet",
        "--threshold",
        "p99<10s",
        "--threshold",
        "error_rate<1%",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("✓ 'p99<10s'"), "{stdout}");
    assert!(stdout.contains("✓ 'error_rate<1%'"), "{stdout}");

    let out = dir.join("out");
    let o = mesh_load(&[
        "run",
        "hot",
        "--calls",
        "200",
        "--concurrency",
        "2",
        "--quiet",
        "--threshold",
        "p99<10s",
        "--threshold",
        "max<1ns",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("✗ 'max<1ns'"), "{stdout}");
    assert!(stdout.contains("✓ 'p99<10s'"), "{stdout}");
    let r = common::json(&out.join("result.json"));
    let checks = r["thresholds"].as_array().unwrap();
    assert_eq!(checks.len(), 2);
    assert_eq!(checks[1]["pass"], false);
}

#[test]
fn a_bad_threshold_is_an_error_not_a_breach() {
    let o = mesh_load(&["run", "hot", "--calls", "10", "--threshold", "p99<fast"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--threshold"),
        "{}",
        text(&o)
    );
    let o = mesh_load(&["run", "hot", "--rate", "10", "--concurrency", "2"]);
    assert_eq!(o.status.code(), Some(2), "clap usage error: {}", text(&o));
}

#[test]
fn slo_search_reports_its_steps() {
    let o = mesh_load(&[
        "run",
        "hot",
        "--slo",
        "p99<2s",
        "--rate",
        "200",
        "--steps",
        "3",
        "--step-duration",
        "300ms",
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("adaptive"), "{stdout}");
    assert!(
        stdout.contains("✓ SLO 'p99<2s' best 800/s"),
        "doubles while passing: {stdout}"
    );
    let steps = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("step "))
        .count();
    assert_eq!(steps, 3, "{stdout}");

    let o = mesh_load(&[
        "run",
        "hot",
        "--slo",
        "max<1ns",
        "--rate",
        "100",
        "--steps",
        "2",
        "--step-duration",
        "200ms",
        "--quiet",
    ]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "no rate met the SLO: {}",
        text(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("no rate met it"));
}

#[test]
fn compare_prints_deltas_warns_on_differences_and_gates() {
    let dir = Scratch::new("compare");
    let a = dir.join("a");
    let b = dir.join("b");
    let c = dir.join("c");
    for (out, extra) in [(&a, "4"), (&b, "4"), (&c, "8")] {
        let o = mesh_load(&[
            "run",
            "hot",
            "--calls",
            "300",
            "--concurrency",
            extra,
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let ra = a.join("result.json");
    let rb = b.join("result.json");
    let rc = c.join("result.json");
    let o = mesh_load(&["compare", ra.to_str().unwrap(), rb.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("latency p99"), "{stdout}");
    assert!(stdout.contains("throughput"), "{stdout}");
    assert!(stdout.contains('%'), "{stdout}");
    assert!(!stdout.contains("warning"), "same configuration: {stdout}");

    let o = mesh_load(&["compare", ra.to_str().unwrap(), rc.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("warning: configurations differ: model: closed-loop, 4 workers vs closed-loop, 8 workers"),
        "{stdout}"
    );

    // A file compared with itself is never worse; with a gate of -1% (any
    // figure not strictly better fails) it is.
    let o = mesh_load(&[
        "compare",
        ra.to_str().unwrap(),
        ra.to_str().unwrap(),
        "--fail-if-worse",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = mesh_load(&[
        "compare",
        ra.to_str().unwrap(),
        ra.to_str().unwrap(),
        "--fail-if-worse=-1",
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));

    let o = mesh_load(&[
        "compare",
        ra.to_str().unwrap(),
        dir.join("missing.json").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}
