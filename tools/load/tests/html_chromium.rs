//! The HTML report rendered by a real headless Chromium: the page loads
//! offline from a file:// URL and its four SVG charts (with their
//! polylines) are in the rendered DOM.
//!
//! Needs `/usr/bin/chromium` (Debian: `apt-get install -y chromium`). When
//! it is missing this test FAILS, saying so: it is never skipped.

mod common;

use common::{chromium, mesh_load, screenshot, text, Scratch};

#[test]
fn report_html_renders_its_svg_charts_in_chromium() {
    let dir = Scratch::new("chromium");
    let out = dir.join("out");
    let o = mesh_load(&[
        "run",
        "uniform",
        "--rate",
        "400",
        "--duration",
        "1500ms",
        "--actors",
        "20",
        "--quiet",
        "--threshold",
        "p99<10s",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let report = out.join("report.html");
    let url = format!("file://{}", report.canonicalize().unwrap().display());

    let o = chromium(&["--dump-dom", &url], &dir.join("profile"));
    assert!(o.status.success(), "chromium failed: {}", text(&o));
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(
        dom.contains("<h1>mesh-load: uniform"),
        "rendered DOM: {dom}"
    );
    let svgs = dom.matches("<svg").count();
    let polylines = dom.matches("<polyline").count();
    assert_eq!(svgs, 4, "four charts: {svgs}");
    assert!(polylines >= 8, "two series per chart: {polylines}");
    // The spectrum's series carry real points, not a placeholder.
    let first = dom.split("<polyline").nth(1).unwrap();
    let points = first
        .split("points=\"")
        .nth(1)
        .and_then(|p| p.split('"').next())
        .unwrap();
    assert!(points.split(' ').count() > 100, "spectrum points: {points}");
    assert!(dom.contains("✓"), "threshold mark rendered");
    assert!(!dom.contains("<script"), "no script in the page");

    // And it paints: a screenshot is written.
    screenshot(&url, (900, 1600), &dir.0, 10_000);
}
