//! Through HAProxy sidecars vs direct, between two processes, from the
//! same run.
//!
//! `cargo bench --bench sidecar` (HAProxy installed: `apt-get install
//! haproxy`) makes a test CA in Consul Connect's profile, re-runs itself
//! as a server process (`--serve DIR PORT`) hosting three mesh nodes, one
//! over plain TCP (direct), one through its own managed HAProxy sidecar
//! (public mTLS port PORT) and one over in-process mTLS
//! (`mesh::transport::tls`, the same certificates), plus a raw TCP
//! ping-pong; then this process measures over loopback, the sidecar path
//! through its own HAProxy too (both ends):
//! - call throughput with 256 calls in flight, sidecars vs direct, and
//!   in-process mTLS vs direct and vs the sidecars;
//! - sequential call latency p50/p99, sidecars vs direct, and direct vs
//!   a raw 8-byte TCP ping-pong (the floor of any round trip here; the
//!   pipelined raw echo baseline is in `benches/cluster.rs`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use mesh::prelude::*;
use mesh::sidecar::{Certs, HaproxySettings, HaproxyUpstream, Sidecar};
use mesh::Transport;
use mesh_testkit::free_port;
use mesh_testkit::pki::{self, Ca};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const IN_FLIGHT: usize = 256;
const TP_CALLS: usize = 100_000;
const LAT_CALLS: usize = 10_000;
const COOKIE: &str = mesh_testkit::COOKIE;
const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

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

/// In-process mTLS with `who`'s leaf, admitting the other bench identity.
fn tls(dir: &Path, who: &str, other: &str) -> Transport {
    let identity = mesh::identity::FileIdentity::load(
        dir.join(format!("{who}.crt")),
        dir.join(format!("{who}.key")),
        dir.join("roots.pem"),
    )
    .expect("identity files");
    mesh::transport::tls::Tls::new(identity)
        .allow([pki::service_id(TD, other)])
        .transport()
}

fn read_certs(dir: &Path, who: &str) -> Certs {
    let read = |f: String| std::fs::read_to_string(dir.join(f)).expect("certificate file");
    Certs {
        chain_pem: read(format!("{who}.crt")),
        key_pem: read(format!("{who}.key")),
        roots_pem: read("roots.pem".into()),
    }
}

/// A node of cluster `cluster`; the server hosts every echo actor, the
/// client none (every call crosses the link).
async fn node(
    name: &str,
    cluster: &str,
    transport: Option<Transport>,
    sidecar: Option<Sidecar>,
    seeds: &[String],
) -> Node {
    let mut b = Node::builder()
        .id(name)
        .default_node(false)
        .cluster(cluster)
        .cookie(COOKIE)
        .seeds(seeds.iter().cloned());
    if let Some(t) = transport {
        b = b.transport(t).listen("127.0.0.1:0");
    }
    if let Some(s) = sidecar {
        b = b.through_sidecar(s);
    }
    if seeds.is_empty() {
        b = b.capabilities(["echo"]).actor::<Echo>();
    }
    b.start().await.expect("node")
}

async fn serve(dir: PathBuf, public: u16) {
    let direct = node("server", "direct", Some(Transport::tcp()), None, &[]).await;
    let sidecar = Sidecar::haproxy(
        HaproxySettings::new(
            dir.join("server-haproxy"),
            format!("127.0.0.1:{public}"),
            read_certs(&dir, "server"),
        )
        .allow([pki::service_id(TD, "bench-client")]),
    );
    let meshed = node("server", "mesh", None, Some(sidecar), &[]).await;
    let tls_node = node(
        "server",
        "tls",
        Some(tls(&dir, "server", "bench-client")),
        None,
        &[],
    )
    .await;
    let raw = TcpListener::bind("127.0.0.1:0").await.expect("raw");
    let raw_addr = raw.local_addr().expect("raw addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = raw.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut b = [0u8; 8];
                while s.read_exact(&mut b).await.is_ok() {
                    if s.write_all(&b).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    println!(
        "{} {raw_addr} {}",
        direct.addr().expect("addr"),
        tls_node.addr().expect("addr")
    );
    let mut line = String::new();
    let _ = BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await;
    let _ = meshed.shutdown().await;
    let _ = tls_node.shutdown().await;
    let _ = direct.shutdown().await;
}

struct Figures {
    throughput: f64,
    p50: f64,
    p99: f64,
}

async fn figures(node: Node) -> Figures {
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
    let _ = node.shutdown().await;
    Figures {
        throughput: runs[1],
        p50: lat.value_at_quantile(0.5) as f64 / 1000.0,
        p99: lat.value_at_quantile(0.99) as f64 / 1000.0,
    }
}

async fn raw_latency(addr: &str) -> (f64, f64) {
    let mut s = TcpStream::connect(addr).await.expect("raw connect");
    let _ = s.set_nodelay(true);
    let mut lat = Histogram::<u64>::new(3).expect("histogram");
    let mut b = [0u8; 8];
    for round in 0..2 {
        for i in 0..LAT_CALLS as u64 {
            let t = Instant::now();
            s.write_all(&i.to_le_bytes()).await.expect("raw write");
            s.read_exact(&mut b).await.expect("raw read");
            if round > 0 {
                lat.record(t.elapsed().as_nanos() as u64).expect("record");
            }
        }
    }
    (
        lat.value_at_quantile(0.5) as f64 / 1000.0,
        lat.value_at_quantile(0.99) as f64 / 1000.0,
    )
}

async fn measure() {
    assert!(
        Path::new(mesh::sidecar::DEFAULT_HAPROXY).exists(),
        "this benchmark runs HAProxy: apt-get install haproxy"
    );
    let dir = std::env::temp_dir().join(format!("mesh-bench-sidecar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let ca = Ca::new(TD);
    for who in ["server", "client"] {
        let leaf = ca.leaf(&pki::service_id(TD, &format!("bench-{who}")));
        std::fs::write(dir.join(format!("{who}.crt")), leaf.cert).expect("write");
        std::fs::write(dir.join(format!("{who}.key")), leaf.key).expect("write");
    }
    std::fs::write(dir.join("roots.pem"), &ca.pem).expect("write");
    let public = free_port();

    let exe = std::env::current_exe().expect("bench binary");
    let mut child = tokio::process::Command::new(exe)
        .arg("--serve")
        .arg(&dir)
        .arg(public.to_string())
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

    let direct = figures(
        node(
            "client",
            "direct",
            Some(Transport::tcp()),
            None,
            &[addrs[0].clone()],
        )
        .await,
    )
    .await;
    let upstream = free_port();
    let sidecar = Sidecar::haproxy(
        HaproxySettings::new(
            dir.join("client-haproxy"),
            format!("127.0.0.1:{}", free_port()),
            read_certs(&dir, "client"),
        )
        .upstreams(vec![HaproxyUpstream {
            node: "server".into(),
            destination: "bench-server".into(),
            local_port: upstream,
            peer_addr: format!("127.0.0.1:{public}"),
            peer_id: pki::service_id(TD, "bench-server"),
        }]),
    );
    let meshed = figures(
        node(
            "client",
            "mesh",
            None,
            Some(sidecar),
            &[format!("127.0.0.1:{upstream}")],
        )
        .await,
    )
    .await;
    let mtls = figures(
        node(
            "client",
            "tls",
            Some(tls(&dir, "client", "bench-server")),
            None,
            &[addrs[2].clone()],
        )
        .await,
    )
    .await;
    let (raw50, raw99) = raw_latency(&addrs[1]).await;
    drop(child.stdin.take());
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&dir);

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("mesh through HAProxy sidecars (both ends, mTLS between them) vs direct TCP: {cores} cores, two processes on loopback, HAProxy 2.6, median of 3 throughput runs");
    println!();
    println!("| figure | sidecars | direct | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| calls/s, {IN_FLIGHT} in flight | {:.0}/s | {:.0}/s | {:.2}x | >= 0.5x |",
        meshed.throughput,
        direct.throughput,
        meshed.throughput / direct.throughput
    );
    println!(
        "| latency p50, sequential | {:.1} us | {:.1} us | +{:.1} us | <= +150 us |",
        meshed.p50,
        direct.p50,
        meshed.p50 - direct.p50
    );
    println!(
        "| latency p99, sequential | {:.1} us | {:.1} us | +{:.1} us | |",
        meshed.p99,
        direct.p99,
        meshed.p99 - direct.p99
    );
    println!();
    println!("| figure | in-process mTLS | direct | ratio | sidecars | mTLS / sidecars |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| calls/s, {IN_FLIGHT} in flight | {:.0}/s | {:.0}/s | {:.2}x | {:.0}/s | {:.2}x |",
        mtls.throughput,
        direct.throughput,
        mtls.throughput / direct.throughput,
        meshed.throughput,
        mtls.throughput / meshed.throughput
    );
    println!(
        "| latency p50, sequential | {:.1} us | {:.1} us | {:.2}x | {:.1} us | {:.2}x |",
        mtls.p50,
        direct.p50,
        mtls.p50 / direct.p50,
        meshed.p50,
        mtls.p50 / meshed.p50
    );
    println!(
        "| latency p99, sequential | {:.1} us | {:.1} us | {:.2}x | {:.1} us | {:.2}x |",
        mtls.p99,
        direct.p99,
        mtls.p99 / direct.p99,
        meshed.p99,
        mtls.p99 / meshed.p99
    );
    println!();
    println!("| figure | direct | raw 8-byte TCP ping-pong | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| latency p50, sequential | {:.1} us | {raw50:.1} us | {:.2}x |",
        direct.p50,
        direct.p50 / raw50
    );
    println!(
        "| latency p99, sequential | {:.1} us | {raw99:.1} us | {:.2}x |",
        direct.p99,
        direct.p99 / raw99
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--serve") {
        Some(i) => {
            let port = args[i + 2].parse().expect("public port");
            rt.block_on(serve(PathBuf::from(&args[i + 1]), port))
        }
        None => rt.block_on(measure()),
    }
}
