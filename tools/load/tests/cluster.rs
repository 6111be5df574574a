//! `serve` and `run` as separate processes on 127.0.0.1: the server binds
//! port 0 and prints `listening on ADDR`; the runner joins it as a client
//! node (no capabilities), so every call is remote; with `--host` the
//! runner hosts actors too and the report splits calls by path. With
//! `--consul`, both find each other through the Consul test agent.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{bin, json, mesh_load, mesh_load_async, text, Scratch};

/// A strong cookie, as nodes require (`openssl rand -base64 32`).
const COOKIE: &str = "veCLvSdmubDodCa34gM9yDnYsz5OnvgJ3KZ8WVaiC4A=";

/// A `mesh-load serve` process, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(name: &str, extra: &[&str]) -> Server {
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cookie",
            COOKIE,
            "--name",
            name,
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mesh-load serve starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!("mesh-load serve printed no 'listening on' line within 15 s");
        }
    };
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    Server { child, addr }
}

#[test]
fn run_drives_a_served_node_in_another_process() {
    let server = serve("load-server", &[]);
    let dir = Scratch::new("cluster");
    let out = dir.join("remote");
    let o = mesh_load(&[
        "run",
        "uniform",
        "--seeds",
        &server.addr,
        "--cookie",
        COOKIE,
        "--name",
        "load-client",
        "--actors",
        "20",
        "--calls",
        "400",
        "--concurrency",
        "8",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = json(&out.join("result.json"));
    assert_eq!(r["config"]["target"], "cluster");
    assert_eq!(r["config"]["nodes"], 2, "server and client");
    assert_eq!(r["summary"]["ok"], 400, "{}", r["summary"]);
    assert_eq!(r["summary"]["errors"], 0);
    let paths = r["summary"]["by_path"].as_object().unwrap();
    assert_eq!(
        paths.keys().collect::<Vec<_>>(),
        ["remote"],
        "a client hosts nothing"
    );
    assert_eq!(
        r["summary"]["activations_after"], 0,
        "no activation on the client"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("cluster (2 nodes)"));

    // A hosting runner: ping-pong over 16 ids, some here, some there.
    let out = dir.join("pingpong");
    let o = mesh_load(&[
        "run",
        "ping-pong",
        "--seeds",
        &server.addr,
        "--cookie",
        COOKIE,
        "--name",
        "load-host",
        "--host",
        "--calls",
        "64",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = json(&out.join("result.json"));
    assert_eq!(r["summary"]["ok"], 64);
    let paths = r["summary"]["by_path"].as_object().unwrap();
    assert!(
        paths.contains_key("local") && paths.contains_key("remote"),
        "both paths reported: {paths:?}"
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("{ path:local }") && stdout.contains("{ path:remote }"),
        "{stdout}"
    );
}

#[test]
fn run_without_a_reachable_cluster_fails_clearly() {
    // Nothing listens on this port (bound and dropped).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let seed = format!("127.0.0.1:{port}");
    let o = mesh_load(&[
        "run", "hot", "--seeds", &seed, "--cookie", COOKIE, "--wait", "1s", "--calls", "1",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("could not join the cluster: no member answered"),
        "{}",
        text(&o)
    );
    let o = Command::new(bin())
        .args(["run", "hot", "--seeds", &seed, "--calls", "1"])
        .env_remove("MESH_COOKIE")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cookie"));
}

#[test]
fn serve_and_run_over_mtls_and_a_plain_runner_cannot_join() {
    use mesh_testkit::pki::{service_id, Ca, Files};
    let dir = Scratch::new("mtls");
    let td = "11111111-2222-3333-4444-555555555555.consul";
    let ca = Ca::new(td);
    let id = service_id(td, "mesh-load");
    for n in ["server", "runner"] {
        Files::in_dir(&dir.join(n)).write(&ca.leaf(&id), &ca.pem);
    }
    let server_dir = dir.join("server");
    let server = serve("tls-server", &["--tls-dir", server_dir.to_str().unwrap()]);
    let out = dir.join("out");
    let runner = dir.join("runner");
    let o = mesh_load(&[
        "run",
        "hot",
        "--seeds",
        &server.addr,
        "--cookie",
        COOKIE,
        "--tls-dir",
        runner.to_str().unwrap(),
        "--calls",
        "200",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = json(&out.join("result.json"));
    assert_eq!(r["config"]["transport"], "mtls");
    assert_eq!(r["summary"]["ok"], 200);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(", mtls)"),
        "{}",
        text(&o)
    );
    // Without certificates the runner's handshake is refused: it joins
    // nobody, and says so.
    let o = mesh_load(&[
        "run",
        "hot",
        "--seeds",
        &server.addr,
        "--cookie",
        COOKIE,
        "--wait",
        "2s",
        "--calls",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("could not join the cluster"),
        "{}",
        text(&o)
    );
}

/// A user's own actor type, hosted by a node of theirs (not `bench`).
#[derive(mesh::Actor, Default)]
#[actor(capability = "game")]
struct Player;

#[derive(mesh::Message, serde::Serialize, serde::Deserialize)]
#[message(reply = ())]
struct Nudge;

#[mesh::handlers]
impl Player {
    async fn nudge(&mut self, _: Nudge) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_a_cluster_where_nobody_hosts_bench_says_that_and_not_unreachable() {
    let node = mesh::Node::builder()
        .id("game-1")
        .cluster("mesh-load")
        .cookie(COOKIE)
        .listen("127.0.0.1:0")
        .default_node(false)
        .capabilities(["game"])
        .actor::<Player>()
        .start()
        .await
        .unwrap();
    let seed = node.addr().unwrap().to_owned();
    let o = mesh_load_async(&[
        "run", "hot", "--seeds", &seed, "--cookie", COOKIE, "--wait", "2s", "--calls", "1",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "joined the cluster (1 member: game-1 hosts [game]), but 0 of them host \"bench\""
        ),
        "{}",
        text(&o)
    );
    assert!(!err.contains("could not join"), "{err}");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_run_find_each_other_through_consul() {
    use mesh_testkit::{consul_agent::TestConsul, consul_catalog::TimeScale};
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let url = consul.url(0);
    let server = tokio::task::spawn_blocking({
        let url = url.clone();
        move || serve("consul-server", &["--consul", &url])
    })
    .await
    .unwrap();
    let dir = Scratch::new("consul");
    let out = dir.join("out");
    let o = mesh_load_async(&[
        "run",
        "hot",
        "--consul",
        &url,
        "--cookie",
        COOKIE,
        "--name",
        "consul-client",
        "--calls",
        "100",
        "--concurrency",
        "4",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = json(&out.join("result.json"));
    assert_eq!(r["config"]["target"], "cluster");
    assert_eq!(r["summary"]["ok"], 100);
    assert!(r["summary"]["by_path"]["remote"].is_object());
    // Both registered in the agent's catalog under the cluster's name.
    let registered = consul.with_catalog(|c| format!("{c:?}"));
    assert!(registered.contains("consul-server"), "{registered}");
    drop(server);
}

/// Through Consul's service mesh: both processes register a Connect
/// sidecar and every byte between them goes through two real HAProxy
/// sidecars (mTLS between them, the test agent's Connect CA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_run_through_managed_haproxy_sidecars() {
    use mesh_testkit::{consul_agent::TestConsul, consul_catalog::TimeScale};
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let url = consul.url(0);
    let dir = Scratch::new("sidecars");
    let server_dir = dir.join("haproxy-server");
    let server = tokio::task::spawn_blocking({
        let (url, d) = (url.clone(), server_dir.to_str().unwrap().to_owned());
        move || {
            serve(
                "sidecar-server",
                &[
                    "--consul",
                    &url,
                    "--consul-sidecar",
                    "haproxy",
                    "--sidecar-dir",
                    &d,
                ],
            )
        }
    })
    .await
    .unwrap();
    let out = dir.join("out");
    let o = mesh_load_async(&[
        "run",
        "hot",
        "--consul",
        &url,
        "--consul-sidecar",
        "haproxy",
        "--sidecar-dir",
        dir.join("haproxy-runner").to_str().unwrap(),
        "--cookie",
        COOKIE,
        "--name",
        "sidecar-runner",
        "--calls",
        "200",
        "--concurrency",
        "4",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = json(&out.join("result.json"));
    assert_eq!(r["config"]["transport"], "sidecar:haproxy");
    assert_eq!(r["summary"]["ok"], 200);
    // The server's HAProxy carried it: its rendered configuration has the
    // public mTLS frontend, and the runner's an upstream to the server.
    let rendered = std::fs::read_dir(&server_dir)
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .find(|t| t.contains("frontend public"));
    assert!(rendered.is_some_and(|t| t.contains("ssl crt-list")));
    let upstream = std::fs::read_dir(dir.join("haproxy-runner"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .any(|t| t.contains("# Upstream to node sidecar-server"));
    assert!(
        upstream,
        "the runner's sidecar has no upstream to the server"
    );
    drop(server);
}

/// In-process mTLS with certificates from Consul Connect: both processes
/// take the agent's leaf for the cluster's service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_run_over_mtls_from_connect() {
    use mesh_testkit::{consul_agent::TestConsul, consul_catalog::TimeScale};
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let url = consul.url(0);
    let server = tokio::task::spawn_blocking({
        let url = url.clone();
        move || serve("connect-server", &["--consul", &url, "--tls-connect"])
    })
    .await
    .unwrap();
    let dir = Scratch::new("connect");
    let out = dir.join("out");
    let o = mesh_load_async(&[
        "run",
        "hot",
        "--consul",
        &url,
        "--tls-connect",
        "--cookie",
        COOKIE,
        "--name",
        "connect-runner",
        "--calls",
        "100",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = json(&out.join("result.json"));
    assert_eq!(r["config"]["transport"], "mtls:connect");
    assert_eq!(r["summary"]["ok"], 100);
    // Both asked the agent for the service's leaf.
    assert!(
        consul.requests(0, "agent/connect/ca/leaf/").len() >= 2,
        "{:?}",
        consul.requests(0, "agent/connect/ca/leaf/")
    );
    drop(server);
}
