//! `mesh-load transports`: what the service mesh costs, measured. The same
//! scenario and load model run through each transport in turn, between
//! server processes this command starts for each (`serve`, this very
//! binary) and a runner node in this process, and one report puts them
//! side by side.
//!
//! | transport | how nodes talk | needs |
//! |---|---|---|
//! | `tcp` | plain TCP (the baseline) | |
//! | `mtls` | in-process mTLS (`mesh::transport::tls`) | `--tls-dir` |
//! | `sidecar` | Consul Connect sidecars, each node its own managed HAProxy | `--consul` (an agent with Connect) |
//!
//! The overhead is stated per call (p50, p99, p99.9 of the latency from
//! the intended start, over the `tcp` run's) and, for the sidecars, per
//! proxy: a call crosses two sidecars (the runner's and the server's),
//! each both ways, so the per-proxy figure is half the per-call one.
//!
//! Contract: the runs share everything but the transport (scenario,
//! model, rate, seed, thresholds); each gets fresh server processes and a
//! cluster name of its own, so no run warms another's actors. A server
//! that does not come up fails the command, naming the transport. With
//! `--out DIR`: `transports.json` (every run's result and the overheads),
//! `transports.html` (the table, self-contained), and each run's own
//! reports under `DIR/<transport>/`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::cli::RunArgs;
use crate::report::{self, fmt_ms, RunResult};
use crate::scenario::Custom;

/// `transports`.
#[derive(Debug, Args)]
pub struct TransportsArgs {
    /// The run: scenario, model, rate, thresholds, outputs; `--tls-dir`
    /// (the certificates of the `mtls` run) and `--consul` (the agent of
    /// the `sidecar` run).
    #[command(flatten)]
    pub run: RunArgs,
    /// The transports, in order (comma-separated): `tcp`, `mtls`,
    /// `sidecar`. Default: `tcp`, then `mtls` with --tls-dir and `sidecar`
    /// with --consul.
    #[arg(long = "transport", value_delimiter = ',')]
    pub transports: Vec<String>,
    /// Server processes per transport.
    #[arg(long, default_value_t = 1)]
    pub servers: usize,
}

/// One transport's run and its overhead over the baseline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Leg {
    /// `tcp`, `mtls`, `sidecar:haproxy`.
    pub transport: String,
    /// The run's result.
    pub result: RunResult,
    /// Latency p50, p99, p99.9 over the first transport's, per call (ms).
    pub overhead_ms: [f64; 3],
    /// Proxies a call crosses (each both ways): 2 through sidecars.
    pub proxies: u32,
}

/// `transports.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Comparison {
    /// `mesh-load-transports/1`.
    pub schema: String,
    /// The scenario's name.
    pub scenario: String,
    /// The model, in one line.
    pub model: String,
    /// The runs, in order; the first is the baseline.
    pub legs: Vec<Leg>,
}

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the comparison; returns the exit code (thresholds: every run's).
pub async fn run(a: TransportsArgs, customs: &[Custom]) -> Result<i32, String> {
    let base = &a.run;
    let transports = if a.transports.is_empty() {
        let mut t = vec!["tcp".to_owned()];
        if base.cluster.tls_dir.is_some() {
            t.push("mtls".into());
        }
        if base.cluster.consul.is_some() {
            t.push("sidecar".into());
        }
        t
    } else {
        a.transports.clone()
    };
    for t in &transports {
        match t.as_str() {
            "tcp" => {}
            "mtls" if base.cluster.tls_dir.is_none() => {
                return Err(
                    "the mtls transport needs --tls-dir (cert.pem, key.pem, bundle.pem)".into(),
                )
            }
            "sidecar" if base.cluster.consul.is_none() => {
                return Err("the sidecar transport needs --consul (an agent with Connect)".into())
            }
            "mtls" | "sidecar" => {}
            other => return Err(format!("no transport {other:?}: tcp, mtls, sidecar")),
        }
    }
    let cookie = match &base.cluster.cookie {
        Some(c) => c.clone(),
        None => match std::env::var("MESH_COOKIE") {
            Ok(c) => c,
            Err(_) => fresh_cookie()?,
        },
    };
    let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
    let scratch = std::env::temp_dir().join(format!("mesh-load-transports-{}", std::process::id()));
    let mut legs: Vec<Leg> = Vec::new();
    for t in &transports {
        let cluster = format!("mesh-load-{t}-{}", std::process::id());
        let flags = |name: &str| -> Vec<String> {
            let mut f = vec![
                "--cookie".to_owned(),
                cookie.clone(),
                "--cluster".into(),
                cluster.clone(),
                "--name".into(),
                name.to_owned(),
            ];
            match t.as_str() {
                "mtls" => {
                    let dir = base.cluster.tls_dir.as_ref().expect("checked above");
                    f.extend(["--tls-dir".into(), dir.display().to_string()]);
                }
                "sidecar" => {
                    let url = base.cluster.consul.as_ref().expect("checked above");
                    f.extend([
                        "--consul".into(),
                        url.clone(),
                        "--consul-sidecar".into(),
                        "haproxy".into(),
                        "--sidecar-dir".into(),
                        scratch.join(name).display().to_string(),
                    ]);
                }
                _ => {}
            }
            f
        };
        let mut servers = Vec::new();
        let mut first = None::<String>;
        for i in 0..a.servers.max(1) {
            let name = format!("{t}-server-{i}");
            let mut cmd = Command::new(&exe);
            cmd.args(["serve", "--listen", "127.0.0.1:0"])
                .args(flags(&name))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            if let (Some(seed), "tcp" | "mtls") = (&first, t.as_str()) {
                cmd.args(["--seeds", seed]);
            }
            let (server, addr) = start_server(cmd, t)?;
            servers.push(server);
            first.get_or_insert(addr);
        }
        let mut r: RunArgs = base.clone();
        r.cluster.cookie = Some(cookie.clone());
        r.cluster.cluster = cluster.clone();
        r.cluster.name = Some(format!("{t}-runner"));
        r.cluster.tls_dir = None;
        r.cluster.tls_connect = false;
        r.cluster.consul_sidecar = None;
        r.cluster.sidecar_dir = None;
        r.expect = a.servers.max(1);
        r.out = None;
        match t.as_str() {
            "tcp" | "mtls" => {
                r.cluster.consul = None;
                r.cluster.seeds = first.iter().cloned().collect();
                if t == "mtls" {
                    r.cluster.tls_dir = base.cluster.tls_dir.clone();
                }
            }
            _ => {
                r.cluster.seeds = Vec::new();
                r.cluster.consul_sidecar = Some(crate::cli::SidecarMode::Haproxy);
                r.cluster.sidecar_dir = Some(scratch.join(format!("{t}-runner")));
            }
        }
        if !base.quiet {
            eprintln!("mesh-load: {t}: {} server(s) up, running", servers.len());
        }
        let result = crate::cli::execute(&r, customs)
            .await
            .map_err(|e| format!("{t}: {e}"))?;
        drop(servers);
        let transport = result.config.transport.clone();
        legs.push(Leg {
            transport,
            result,
            overhead_ms: [0.0; 3],
            proxies: if t == "sidecar" { 2 } else { 0 },
        });
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let lat = |l: &Leg| {
        let s = &l.result.summary.latency;
        [s.p50_ms, s.p99_ms, s.p999_ms]
    };
    let baseline = lat(&legs[0]);
    for leg in &mut legs {
        let mine = lat(leg);
        leg.overhead_ms = [0, 1, 2].map(|i| mine[i] - baseline[i]);
    }
    let first = &legs[0].result;
    let comparison = Comparison {
        schema: "mesh-load-transports/1".into(),
        scenario: first.config.scenario.name().to_owned(),
        model: first.summary.model_label.clone(),
        legs,
    };
    print!(
        "{}",
        render_text(&comparison, std::io::stdout().is_terminal())
    );
    if let Some(dir) = &base.out {
        write(dir, &comparison).map_err(|e| format!("writing {}: {e}", dir.display()))?;
        println!("\n  report: {}", dir.join("transports.html").display());
    }
    let _ = std::io::stdout().flush();
    Ok(if comparison.legs.iter().all(|l| l.result.passed()) {
        0
    } else {
        crate::EXIT_THRESHOLDS
    })
}

/// Starts a server and reads its `listening on ADDR` line (15 s at most).
fn start_server(mut cmd: Command, transport: &str) -> Result<(Server, String), String> {
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{transport}: starting a server: {e}"))?;
    let stdout = child.stdout.take().ok_or("a server's stdout")?;
    let server = Server(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(addr) => Ok((server, addr)),
        Err(_) => Err(format!(
            "{transport}: a server printed no 'listening on' line within 15 s"
        )),
    }
}

/// A strong cookie for the servers this command starts (64 hex digits).
fn fresh_cookie() -> Result<String, String> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("a cookie from /dev/urandom: {e} (give --cookie)"))?;
    Ok(b.iter().map(|b| format!("{b:02x}")).collect())
}

fn per_proxy(l: &Leg, i: usize) -> Option<f64> {
    (l.proxies > 0).then(|| l.overhead_ms[i] / f64::from(l.proxies))
}

/// The comparison as the terminal shows it.
pub fn render_text(c: &Comparison, _color: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n  mesh-load transports · {} · {}\n",
        c.scenario, c.model
    );
    let _ = writeln!(
        out,
        "  {:<18} {:>10} {:>10} {:>10} {:>10} {:>7}   {:>30}",
        "transport",
        "calls/s",
        "p50",
        "p99",
        "p99.9",
        "errors",
        "over the first: p50 / p99 / p99.9"
    );
    for l in &c.legs {
        let s = &l.result.summary;
        let o = l.overhead_ms;
        let _ = writeln!(
            out,
            "  {:<18} {:>10.0} {:>10} {:>10} {:>10} {:>7}   {:>30}",
            l.transport,
            s.actual_rps,
            fmt_ms(s.latency.p50_ms),
            fmt_ms(s.latency.p99_ms),
            fmt_ms(s.latency.p999_ms),
            s.errors,
            format!("{} / {} / {}", signed(o[0]), signed(o[1]), signed(o[2])),
        );
        if let (Some(a), Some(b), Some(d)) = (per_proxy(l, 0), per_proxy(l, 1), per_proxy(l, 2)) {
            let _ = writeln!(
                out,
                "  {:<18} per proxy ({} on the path, each both ways): {} / {} / {}",
                "",
                l.proxies,
                signed(a),
                signed(b),
                signed(d)
            );
        }
    }
    out
}

fn signed(ms: f64) -> String {
    if ms < 0.0 {
        format!("-{}", fmt_ms(-ms))
    } else {
        format!("+{}", fmt_ms(ms))
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The comparison as a self-contained page (no script): the table, and a
/// bar per transport for p50, p99 and p99.9.
pub fn render_html(c: &Comparison) -> String {
    let mut h = String::new();
    let title = format!("mesh-load transports: {} · {}", c.scenario, c.model);
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}} \
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} th{{background:#f3f3f3}} \
         td.t{{text-align:left}} svg{{display:block;margin:1em 0;background:#fff}}\
         </style></head><body><h1>{t}</h1>",
        t = esc(&title)
    );
    h.push_str(
        "<table><tr><th>transport</th><th>calls/s</th><th>p50</th><th>p99</th><th>p99.9</th>\
         <th>errors</th><th>over the first: p50</th><th>p99</th><th>p99.9</th>\
         <th>per proxy: p50</th><th>p99</th><th>p99.9</th></tr>",
    );
    for l in &c.legs {
        let s = &l.result.summary;
        let o = l.overhead_ms;
        let pp = |i| per_proxy(l, i).map_or("".to_owned(), signed);
        let _ = write!(
            h,
            "<tr><td class=\"t\">{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&l.transport),
            s.actual_rps,
            fmt_ms(s.latency.p50_ms),
            fmt_ms(s.latency.p99_ms),
            fmt_ms(s.latency.p999_ms),
            s.errors,
            signed(o[0]),
            signed(o[1]),
            signed(o[2]),
            pp(0),
            pp(1),
            pp(2),
        );
    }
    h.push_str("</table>");
    // Bars: latency per transport, on one scale.
    let max = c
        .legs
        .iter()
        .map(|l| l.result.summary.latency.p999_ms)
        .fold(0.0f64, f64::max)
        .max(1e-6);
    let (w, row) = (640.0, 22.0);
    let height = 30.0 + row * 3.0 * c.legs.len() as f64;
    let _ = write!(
        h,
        "<svg width=\"{w}\" height=\"{height}\" viewBox=\"0 0 {w} {height}\" role=\"img\" aria-label=\"latency per transport\">"
    );
    let mut y = 20.0;
    for l in &c.legs {
        let s = &l.result.summary.latency;
        for (q, v) in [("p50", s.p50_ms), ("p99", s.p99_ms), ("p99.9", s.p999_ms)] {
            let len = (v / max) * (w - 260.0);
            let _ = write!(
                h,
                "<text x=\"4\" y=\"{:.0}\" font-size=\"12\">{} {q}</text>\
                 <rect x=\"170\" y=\"{:.0}\" width=\"{len:.1}\" height=\"14\" fill=\"#4a7bd0\"/>\
                 <text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\">{}</text>",
                y + 11.0,
                esc(&l.transport),
                y,
                175.0 + len,
                y + 11.0,
                fmt_ms(v)
            );
            y += row;
        }
    }
    h.push_str("</svg>");
    h.push_str(
        "<p>Latency from the intended start of each call. A call through sidecars crosses \
         two proxies (the caller's and the callee's), each both ways: the per-proxy overhead \
         is half the per-call one.</p></body></html>",
    );
    h
}

/// Writes `transports.json`, `transports.html` and each run's reports.
pub fn write(dir: &std::path::Path, c: &Comparison) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(c).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("transports.json"), json)?;
    std::fs::write(dir.join("transports.html"), render_html(c))?;
    for l in &c.legs {
        let sub: PathBuf = dir.join(l.transport.replace(':', "-"));
        report::write_all(&sub, &l.result)?;
    }
    Ok(())
}
