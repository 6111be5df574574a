//! mTLS vs plain TCP between two processes, from the same run.
//!
//! `cargo bench --bench tls` writes a test CA's identity files to a
//! scratch directory, re-runs itself as a server process (`--serve DIR`)
//! hosting two mesh nodes (one over plain TCP, one over mTLS with those
//! files) and two bare listeners, then measures from this process over
//! loopback:
//! - call throughput with 256 calls in flight, mTLS vs plain;
//! - sequential call latency p50/p99, mTLS vs plain;
//! - one connection set-up (TCP connect, TLS handshake with both
//!   certificates checked, cookie handshake), mTLS vs plain.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mesh::identity::FileIdentity;
use mesh::prelude::*;
use mesh::transport::tls::Tls;
use mesh::transport::{DialTarget, Inbound, Responder, TransportConfig};
use mesh::wire::{self, Cast, Cookie, Identity, Peer};
use mesh::Transport;
use mesh_testkit::pki::{self, Ca, Files};
use tokio::io::{AsyncBufReadExt, BufReader};

const IN_FLIGHT: usize = 256;
const TP_CALLS: usize = 100_000;
const LAT_CALLS: usize = 10_000;
const DIALS: usize = 200;
const COOKIE: &str = mesh_testkit::COOKIE;

#[derive(Actor, Default)]
#[actor(capability = "echo", idle_timeout = "never")]
struct Echo;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
struct Ping(u64);

#[mesh::handlers]
impl Echo {
    async fn ping(&mut self, Ping(n): Ping) -> u64 {
        n
    }
}

/// The bare listeners' inbound: nothing is called on them.
struct Nothing;

impl Inbound for Nothing {
    fn call(&self, _: &Peer, _: wire::CallFrame, reply: Responder) {
        reply.send(Ok(Vec::new()));
    }
    fn cast(&self, _: &Peer, _: Cast) {}
}

fn tls(dir: &Path) -> Transport {
    let files = Files::in_dir(dir);
    Tls::new(FileIdentity::load(&files.chain, &files.key, &files.bundle).expect("identity"))
        .transport()
}

fn probe_config(node: &str) -> TransportConfig {
    TransportConfig::new(
        Identity {
            cluster: "probe".into(),
            node: node.into(),
            capabilities: vec![],
            addr: String::new(),
            incarnation: 1,
            actors: Vec::new(),
        },
        Cookie::new(COOKIE),
    )
}

/// A node; the server hosts every echo actor, the client none (every call
/// crosses the link).
async fn node(name: &str, cluster: &str, t: Transport, seeds: &[String]) -> Node {
    let b = Node::builder()
        .id(name)
        .default_node(false)
        .cluster(cluster)
        .cookie(COOKIE)
        .transport(t)
        .listen("127.0.0.1:0")
        .seeds(seeds.iter().cloned());
    let b = if seeds.is_empty() {
        b.capabilities(["echo"]).actor::<Echo>()
    } else {
        b
    };
    b.start().await.expect("node")
}

async fn serve(dir: PathBuf) {
    let plain = node("server", "plain", Transport::tcp(), &[]).await;
    let secure = node("server", "tls", tls(&dir), &[]).await;
    let probe_plain = Transport::tcp()
        .listen("127.0.0.1:0", probe_config("s"), Arc::new(Nothing))
        .await
        .expect("probe");
    let probe_tls = tls(&dir)
        .listen("127.0.0.1:0", probe_config("s"), Arc::new(Nothing))
        .await
        .expect("probe");
    println!(
        "{} {} {} {}",
        plain.addr().expect("addr"),
        secure.addr().expect("addr"),
        probe_plain.addr(),
        probe_tls.addr()
    );
    let mut line = String::new();
    let _ = BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await;
}

struct Figures {
    throughput: f64,
    p50: f64,
    p99: f64,
    setup: f64,
}

async fn figures(t: Transport, cluster: &str, seed: String, probe: &str) -> Figures {
    let node = node("client", cluster, t.clone(), &[seed]).await;
    node.membership_changes()
        .wait_for(|m| m.len() == 2)
        .await
        .expect("joined");
    let ids: Arc<Vec<String>> = Arc::new((0..IN_FLIGHT).map(|i| format!("echo-{i}")).collect());
    for id in ids.iter() {
        node.call::<Echo, _>(id, Ping(0)).await.expect("warm");
    }
    let mut runs = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..IN_FLIGHT {
            let (node, ids) = (node.clone(), ids.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..TP_CALLS / IN_FLIGHT {
                    node.call::<Echo, _>(&ids[w], Ping(i as u64))
                        .await
                        .expect("call");
                }
            }));
        }
        for t in tasks {
            t.await.expect("caller");
        }
        runs.push(TP_CALLS as f64 / started.elapsed().as_secs_f64());
    }
    runs.sort_by(f64::total_cmp);
    let mut lat = Histogram::<u64>::new(3).expect("histogram");
    for round in 0..2 {
        for i in 0..LAT_CALLS {
            let t = Instant::now();
            node.call::<Echo, _>("latency", Ping(i as u64))
                .await
                .expect("call");
            if round > 0 {
                lat.record(t.elapsed().as_nanos() as u64).expect("record");
            }
        }
    }
    // Connection set-up, sequential, each connection closed at once.
    let target = DialTarget::addr(probe);
    let cfg = probe_config("c");
    let mut took = Duration::ZERO;
    for _ in 0..DIALS {
        let started = Instant::now();
        let conn = t
            .dial(&target, &cfg, Arc::new(Nothing))
            .await
            .expect("dial");
        took += started.elapsed();
        conn.close();
    }
    let _ = node.shutdown().await;
    Figures {
        throughput: runs[1],
        p50: lat.value_at_quantile(0.5) as f64 / 1000.0,
        p99: lat.value_at_quantile(0.99) as f64 / 1000.0,
        setup: took.as_secs_f64() * 1e6 / DIALS as f64,
    }
}

async fn measure() {
    let dir = std::env::temp_dir().join(format!("mesh-bench-tls-{}", std::process::id()));
    let ca = Ca::new("11111111-2222-3333-4444-555555555555.consul");
    let id = pki::service_id("11111111-2222-3333-4444-555555555555.consul", "bench");
    Files::in_dir(&dir).write(&ca.leaf(&id), &ca.pem);

    let exe = std::env::current_exe().expect("bench binary");
    let mut child = tokio::process::Command::new(exe)
        .arg("--serve")
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn server process");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = lines
        .next_line()
        .await
        .expect("server output")
        .expect("server line");
    let addrs: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    let plain = figures(Transport::tcp(), "plain", addrs[0].clone(), &addrs[2]).await;
    let secure = figures(tls(&dir), "tls", addrs[1].clone(), &addrs[3]).await;
    drop(child.stdin.take());
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&dir);

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let provider = if cfg!(feature = "aws-lc-rs") {
        "aws-lc-rs"
    } else {
        "ring"
    };
    let group = mesh::transport::tls::crypto_provider().kx_groups[0].name();
    println!(
        "mesh mTLS vs plain TCP: {cores} cores, two processes on loopback, TLS 1.3 \
         ({provider}, key exchange {group:?}), median of 3 throughput runs"
    );
    println!();
    println!("| figure | mTLS | plain TCP | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| calls/s, {IN_FLIGHT} in flight | {:.0}/s | {:.0}/s | {:.2}x | >= 0.7x |",
        secure.throughput,
        plain.throughput,
        secure.throughput / plain.throughput
    );
    println!(
        "| latency p50, sequential | {:.1} us | {:.1} us | {:.2}x | <= 1.2x |",
        secure.p50,
        plain.p50,
        secure.p50 / plain.p50
    );
    println!(
        "| latency p99, sequential | {:.1} us | {:.1} us | {:.2}x | |",
        secure.p99,
        plain.p99,
        secure.p99 / plain.p99
    );
    println!(
        "| connection set-up (connect + handshakes) | {:.0} us | {:.0} us | {:.2}x | |",
        secure.setup,
        plain.setup,
        secure.setup / plain.setup
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--serve") {
        Some(i) => rt.block_on(serve(PathBuf::from(&args[i + 1]))),
        None => rt.block_on(measure()),
    }
}
