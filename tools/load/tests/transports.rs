//! `mesh-load transports`: one invocation runs the same scenario over
//! plain TCP, in-process mTLS and real managed HAProxy sidecars (the
//! Consul test agent's Connect CA), each between server processes it
//! starts, and one report puts them side by side; the page renders in a
//! real headless Chromium.

mod common;

use common::{chromium, json, mesh_load, mesh_load_async, screenshot, text, Scratch};
use mesh_testkit::pki::{service_id, Ca, Files};
use mesh_testkit::{consul_agent::TestConsul, consul_catalog::TimeScale};

const COOKIE: &str = "veCLvSdmubDodCa34gM9yDnYsz5OnvgJ3KZ8WVaiC4A=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invocation_compares_tcp_mtls_and_sidecars_in_one_report() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let url = consul.url(0);
    let dir = Scratch::new("transports");
    let td = "11111111-2222-3333-4444-555555555555.consul";
    let ca = Ca::new(td);
    Files::in_dir(&dir.join("tls")).write(&ca.leaf(&service_id(td, "mesh-load")), &ca.pem);
    let (tls, out) = (dir.join("tls"), dir.join("out"));
    let o = mesh_load_async(&[
        "transports",
        "hot",
        "--calls",
        "300",
        "--concurrency",
        "4",
        "--cookie",
        COOKIE,
        "--tls-dir",
        tls.to_str().unwrap(),
        "--consul",
        &url,
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("per proxy (2 on the path"), "{stdout}");

    let c = json(&out.join("transports.json"));
    let legs = c["legs"].as_array().unwrap();
    let names: Vec<&str> = legs
        .iter()
        .map(|l| l["transport"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tcp", "mtls", "sidecar:haproxy"]);
    for l in legs {
        assert_eq!(l["result"]["summary"]["ok"], 300, "{}", l["transport"]);
        assert_eq!(l["result"]["summary"]["errors"], 0);
        // Every call remote: the runner hosts nothing.
        assert!(l["result"]["summary"]["by_path"]["remote"].is_object());
    }
    assert_eq!(
        legs[0]["overhead_ms"][0], 0.0,
        "the baseline's own overhead"
    );
    assert_eq!(legs[2]["proxies"], 2);
    // Each run's own reports too.
    for sub in ["tcp", "mtls", "sidecar-haproxy"] {
        assert!(out.join(sub).join("result.json").exists(), "{sub}");
    }

    // The page, rendered by Chromium: the table's three rows and the bars.
    let page = out.join("transports.html");
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let o = chromium(&["--dump-dom", &url], &dir.join("profile"));
    assert!(o.status.success(), "chromium failed: {}", text(&o));
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(dom.contains("<h1>mesh-load transports: hot"), "{dom}");
    for t in ["tcp", "mtls", "sidecar:haproxy"] {
        assert!(
            dom.contains(&format!("<td class=\"t\">{t}</td>")),
            "{t}: {dom}"
        );
    }
    assert_eq!(dom.matches("<rect").count(), 9, "three bars per transport");
    assert!(!dom.contains("<script"));
    let png = screenshot(&url, (1250, 560), &dir.0, 5_000);
    if let Ok(keep) = std::env::var("MESH_LOAD_KEEP_SCREENSHOT") {
        std::fs::write(keep, png).unwrap();
    }
}

#[test]
fn a_transport_without_what_it_needs_is_refused_up_front() {
    for (transports, says, code) in [
        ("tcp,mtls", "mtls transport needs --tls-dir", Some(1)),
        ("sidecar", "sidecar transport needs --consul", None),
        ("quic", "no transport \"quic\"", None),
    ] {
        let o = mesh_load(&[
            "transports",
            "hot",
            "--transport",
            transports,
            "--calls",
            "1",
            "--cookie",
            COOKIE,
        ]);
        if code.is_some() {
            assert_eq!(o.status.code(), code, "{}", text(&o));
        }
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(says),
            "{transports}: {}",
            text(&o)
        );
    }
}
