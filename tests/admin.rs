//! The admin endpoint (feature `admin`) over real HTTP on port 0: the JSON
//! views, `/metrics`, bad input, and the live page in a real headless
//! Chromium (`/usr/bin/chromium`; the test fails, never skips, without it),
//! and the connection limits against 1000 idle connections.
//!
//! Run with `cargo test --features admin --test admin`.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh::admin::Limits;
use mesh::prelude::*;
use mesh::state::{BoxFuture, MemoryStore, StateKey, StateStore, StoreError, Stored};
use mesh::transport::memory::MemoryNetwork;
use mesh::Transport;
use mesh_testkit::actors::{Deposit, Player, Score, StateAccount};
use mesh_testkit::fixture::{member, Cluster};
use mesh_testkit::soon;
use serde_json::Value;

/// Three nodes: `a` (game, with the admin endpoint), `b` (game), `c` (chat).
async fn three(prefix: &str) -> (Node, Node, Node) {
    // The recorder must come before the first node resolves its handles.
    assert!(mesh::admin::prometheus::install());
    let [a, b, c] = Cluster::memory()
        .node(format!("{prefix}-a"), |b| {
            b.capabilities(["game"])
                .actor::<Player>()
                .admin("127.0.0.1:0")
        })
        .node(format!("{prefix}-b"), |b| {
            b.capabilities(["game"]).actor::<Player>()
        })
        .node(format!("{prefix}-c"), |b| b.capabilities(["chat"]))
        .start()
        .await
        .into_array();
    (a, b, c)
}

async fn get(node: &Node, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", node.admin_addr().unwrap());
    let resp = soon(mesh_testkit::http().get(&url).send()).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

async fn get_json(node: &Node, path: &str) -> Value {
    let (status, body) = get(node, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_views_show_members_shards_and_activations() {
    let (a, b, c) = three("j").await;
    let addr = a.admin_addr().unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0);

    let members = get_json(&a, "/admin/members").await;
    assert_eq!(members["self"], "j-a");
    let mut got: Vec<(String, String, Vec<String>)> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["node"].as_str().unwrap().to_owned(),
                m["addr"].as_str().unwrap().to_owned(),
                serde_json::from_value(m["capabilities"].clone()).unwrap(),
            )
        })
        .collect();
    got.sort();
    let caps = |c: &str| vec![c.to_owned()];
    assert_eq!(
        got,
        vec![
            ("j-a".into(), "j-a".into(), caps("game")),
            ("j-b".into(), "j-b".into(), caps("game")),
            ("j-c".into(), "j-c".into(), caps("chat")),
        ]
    );

    // How a is connected to each peer: b and c dialed a (their seed), so
    // a's oldest connection to each is inbound; the handshake's facts.
    for m in members["members"].as_array().unwrap() {
        if m["node"] == "j-a" {
            assert_eq!(m["self"], true, "{m}");
            continue;
        }
        assert_eq!(m["protocol"], mesh::wire::VERSION, "{m}");
        // The actor types it advertised in its handshake.
        let actors = if m["node"] == "j-b" {
            serde_json::json!([{"capability": "game", "actor": "Player", "handlers": 3}])
        } else {
            serde_json::json!([])
        };
        assert_eq!(m["actors"], actors, "{m}");
        assert_eq!(m["discovered_by"], "inbound", "{m}");
        assert!(
            m["since_unix_ms"].as_u64().unwrap() > 1_700_000_000_000,
            "{m}"
        );
        assert!(m["connections"].as_u64().unwrap() >= 1, "{m}");
        assert!(m["identity"].is_null(), "no TLS here: {m}");
    }
    // Static seeds: no authoritative discovery to describe.
    let d = get_json(&a, "/admin/discovery").await;
    assert!(d["discovery"].is_null(), "{d}");

    // Shards: game split between a and b, chat all on c, 4096 each.
    let shards = get_json(&a, "/admin/shards").await;
    assert_eq!(shards["shards"], 4096);
    for cap in shards["capabilities"].as_array().unwrap() {
        let map = cap["map"].as_array().unwrap();
        assert_eq!(map.len(), 4096);
        let owners = cap["owners"].as_array().unwrap();
        // The map agrees with the counts.
        for (i, o) in owners.iter().enumerate() {
            let cells = map.iter().filter(|m| m.as_u64() == Some(i as u64)).count() as u64;
            assert_eq!(cells, o["count"].as_u64().unwrap());
        }
        let total: u64 = owners.iter().map(|o| o["count"].as_u64().unwrap()).sum();
        assert_eq!(total, 4096);
        let names: Vec<&str> = owners.iter().map(|o| o["node"].as_str().unwrap()).collect();
        match cap["capability"].as_str().unwrap() {
            "game" => assert_eq!(names, ["j-a", "j-b"]),
            "chat" => assert_eq!(names, ["j-c"]),
            other => panic!("capability {other}"),
        }
    }
    let one = get_json(&a, "/admin/shards?capability=chat").await;
    assert_eq!(one["capabilities"].as_array().unwrap().len(), 1);

    // Activations: the players a owns are active on a.
    let ids: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
    for id in &ids {
        soon(a.call::<Player, _>(id, Score(1)).into_future())
            .await
            .unwrap();
    }
    let local = ids
        .iter()
        .filter(|id| a.owner_of::<Player>(id).unwrap() == "j-a")
        .count();
    assert!(local > 0);
    let acts = get_json(&a, "/admin/activations").await;
    assert_eq!(acts["total"].as_u64().unwrap() as usize, local);
    assert_eq!(acts["by_type"][0]["type"], "Player");
    assert_eq!(
        acts["by_type"][0]["count"].as_u64().unwrap() as usize,
        local
    );

    // Placement: where an id lives, as the node routes it.
    for id in ["p0", "p1", "p2"] {
        let p = get_json(&a, &format!("/admin/placement?actor=Player&id={id}")).await;
        let owner = a.owner_of::<Player>(id).unwrap();
        assert_eq!(p["owner"].as_str(), Some(owner.as_str()));
        assert_eq!(p["local"], owner == "j-a");
        assert_eq!(p["shard"].as_u64(), Some(u64::from(mesh::ring::shard(id))));
    }
    let (status, body) = get(&a, "/admin/placement?actor=Ghost&id=x").await;
    assert_eq!((status, body.contains("Ghost")), (404, true), "{body}");
    let (status, _) = get(&a, "/admin/placement?actor=Player").await;
    assert_eq!(status, 400);

    let me = get_json(&a, "/admin/node").await;
    assert_eq!(
        (me["node"].as_str(), me["members"].as_u64()),
        (Some("j-a"), Some(3))
    );
    assert_eq!(me["ready"], true);
    assert_eq!(get_json(&a, "/readyz").await["ready"], true);
    assert_eq!(get_json(&a, "/livez").await["status"], "ok");

    // Prometheus: the call histogram has the documented buckets.
    let (status, metrics) = get(&a, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE mesh_call_duration_seconds histogram"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mesh_call_duration_seconds_bucket{le=\"0.0001\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mesh_call_duration_seconds_bucket{le=\"5\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mesh_calls_total{outcome=\"ok\"}"),
        "{metrics}"
    );

    // Bad input: 4xx with a message.
    let (status, body) = get(&a, "/admin/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("/admin/members"), "{body}");
    let (status, body) = get(&a, "/admin/shards?capability=nope").await;
    assert_eq!((status, body.contains("nope")), (404, true));
    let (status, body) = get(&a, "/admin/shards?shard=1").await;
    assert_eq!((status, body.contains("shard=1")), (400, true));
    let url = format!("http://{addr}/admin/members");
    let post = mesh_testkit::http().post(&url).send().await.unwrap();
    assert_eq!(post.status().as_u16(), 405);

    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
}

/// The page's DOM after its script polled for a (virtual) 3 seconds, in
/// headless Chromium ([`mesh_testkit::chromium`]).
async fn dump_dom(url: String) -> String {
    tokio::task::spawn_blocking(move || {
        let profile = std::env::temp_dir().join(format!(
            "mesh-admin-chromium-{}-{}",
            std::process::id(),
            url.len() + url.as_ptr() as usize % 1000
        ));
        let out = mesh_testkit::chromium(&profile)
            .args(["--virtual-time-budget=3000", "--dump-dom", &url])
            .output()
            .expect("run chromium");
        let _ = std::fs::remove_dir_all(&profile);
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_members_and_follows_a_leave() {
    let (a, b, c) = three("p").await;
    let url = format!("http://{}/", a.admin_addr().unwrap());
    let dom = tokio::time::timeout(Duration::from_secs(60), dump_dom(url.clone()))
        .await
        .unwrap();
    for n in ["p-a", "p-b", "p-c"] {
        assert!(
            dom.contains(&format!("data-node=\"{n}\"")),
            "{n} missing:\n{dom}"
        );
    }
    assert!(dom.contains("data-members=\"3\""), "{dom}");
    assert!(
        !dom.contains("data-polls=\"0\""),
        "the page never polled:\n{dom}"
    );
    assert!(dom.contains("data-capability=\"chat\""), "{dom}");
    // Each peer's row says how a reached it and what it speaks.
    assert!(dom.contains("<td>inbound</td>"), "{dom}");
    assert!(
        dom.contains(&format!("<td>v{}", mesh::wire::VERSION)),
        "{dom}"
    );
    // A map of every shard per capability (game and chat).
    assert_eq!(dom.matches("data-cells=\"4096\"").count(), 2, "{dom}");

    // c leaves: the page (loaded again) shows two members.
    c.shutdown().await.unwrap();
    soon(a.membership_changes().wait_for(|m| m.len() == 2))
        .await
        .unwrap();
    let dom = tokio::time::timeout(Duration::from_secs(60), dump_dom(url))
        .await
        .unwrap();
    assert!(!dom.contains("data-node=\"p-c\""), "{dom}");
    assert!(
        dom.contains("data-node=\"p-b\"") && dom.contains("data-members=\"2\""),
        "{dom}"
    );
    for n in [a, b] {
        n.shutdown().await.unwrap();
    }
}

// ------------------------------------------------------------ slowloris

/// Sets this process's soft descriptor limit to `n` (at most the hard
/// limit); returns the previous soft limit.
fn nofile(n: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let was = getrlimit(Resource::Nofile);
    let hard = was.maximum.unwrap_or(u64::MAX);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(n.min(hard)),
            maximum: was.maximum,
        },
    )
    .expect("set RLIMIT_NOFILE");
    was.current.unwrap_or(u64::MAX)
}

/// Whether the server closed `s`: reads (any answer, e.g. a 408) to the
/// end.
async fn closed_by_server(mut s: tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut sink = Vec::new();
    match s.read_to_end(&mut sink).await {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

async fn cluster_node(name: &str, seeds: &[String], admin: Option<Limits>) -> Node {
    let b = member("flood", name)
        .transport(Transport::tcp())
        .listen("127.0.0.1:0")
        .seeds(seeds.iter().cloned());
    let b = match admin {
        Some(limits) => b
            .capabilities(["game"])
            .actor::<Player>()
            .admin("127.0.0.1:0")
            .admin_limits(limits),
        None => b,
    };
    b.start().await.unwrap()
}

/// 1000 connections to the admin port that send nothing (slowloris): the
/// cap holds 64 of them and closes the rest at once, so the node still
/// accepts a new cluster member and serves its call while they are held;
/// the header read timeout closes the held ones; then the endpoint
/// answers again. The descriptor limit is lowered to what the idle
/// clients, the cap and the rest of the process need, so an admin server
/// without the cap would use up the descriptors the cluster needs.
/// Real time (hyper's timer is tokio's, but the cluster runs over real
/// sockets too): the header read timeout is set to 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_neither_starve_the_cluster_nor_outlive_the_timeout() {
    use std::time::Instant;

    const IDLE: usize = 1000;
    let cap = mesh::admin::DEFAULT_MAX_CONNECTIONS;
    let timeout = Duration::from_secs(5);
    let was = nofile((IDLE + cap + 400) as u64);

    let limits = Limits::default().header_read_timeout(timeout);
    let a = cluster_node("flood-a", &[], Some(limits)).await;
    let admin = a.admin_addr().unwrap();
    let seed = a.addr().unwrap().to_owned();

    // Open them all, then watch each for the server's close.
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut conns = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let s = tokio::net::TcpStream::connect(admin).await.unwrap();
        conns.push((s, Instant::now()));
    }
    for (s, opened) in conns {
        let tx = closed_tx.clone();
        tokio::spawn(async move {
            let closed = closed_by_server(s).await;
            let _ = tx.send((closed, opened, Instant::now()));
        });
    }
    drop(closed_tx);

    // Beyond the cap: closed at once, before any timeout.
    for _ in 0..IDLE - cap {
        let (closed, opened, at) = soon(closed_rx.recv()).await.unwrap();
        assert!(closed);
        assert!(
            at - opened < timeout,
            "a connection beyond the cap was held {:?}",
            at - opened
        );
    }

    // The cap's connections are held: a new member joins over TCP and
    // its call is served meanwhile.
    let b = cluster_node("flood-b", &[seed], None).await;
    soon(b.membership_changes().wait_for(|m| m.len() == 2))
        .await
        .unwrap();
    let (who, _) = soon(b.call::<Player, _>("p1", Score(1)).into_future())
        .await
        .unwrap();
    assert!(!who.is_empty());
    assert!(
        closed_rx.is_empty(),
        "the held connections were closed before the cluster call was served"
    );

    // The held ones are closed by the header read timeout, not before.
    for _ in 0..cap {
        let (closed, opened, at) = soon(closed_rx.recv()).await.unwrap();
        assert!(closed);
        assert!(
            at - opened >= timeout - Duration::from_millis(50),
            "an idle connection was closed after {:?}, before the timeout",
            at - opened
        );
    }
    assert!(closed_rx.recv().await.is_none());

    // The endpoint answers again.
    let (status, _) = get(&a, "/livez").await;
    assert_eq!(status, 200);

    // A client that trickles its head is closed at the header timeout
    // too, although bytes keep coming (the idle timeout is 30 s).
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let opened = Instant::now();
    {
        use tokio::io::AsyncWriteExt;
        s.write_all(b"GET /livez HTTP/1.1\r\n").await.unwrap();
        let mut n = 0;
        while s
            .write_all(format!("x-{n}: y\r\n").as_bytes())
            .await
            .is_ok()
        {
            n += 1;
            let mut probe = [0u8; 1];
            // A read that ends (the server closed) stops the trickle.
            match tokio::time::timeout(Duration::from_millis(500), s.peek(&mut probe)).await {
                Err(_) => continue,
                Ok(_) => break,
            }
        }
    }
    assert!(closed_by_server(s).await);
    let held = opened.elapsed();
    assert!(
        held >= timeout - Duration::from_millis(50) && held < timeout * 3,
        "a trickling head was closed after {held:?}"
    );

    for n in [b, a] {
        n.shutdown().await.unwrap();
    }
    nofile(was);
}

/// Issue 24, point 3: with `min_members(2)`, `/readyz` answers 503 with
/// the reason (the count, the likely causes) while the node is alone, and
/// 200 once a member joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_min_members() {
    let net = Transport::memory(MemoryNetwork::new());
    let guarded = |name: &str, seeds: &[&str], admin: bool| {
        let b = Node::builder()
            .id(name)
            .default_node(false)
            .cluster("test")
            .cookie(mesh_testkit::COOKIE)
            .transport(net.clone())
            .listen(name)
            .seeds(seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .min_members(2)
            .capabilities(["game"])
            .actor::<Player>();
        let b = if admin { b.admin("127.0.0.1:0") } else { b };
        b.start()
    };
    let a = guarded("mm-a", &[], true).await.unwrap();
    let (status, body) = get(&a, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    assert_eq!(v["members"], 1);
    assert_eq!(v["min_members"], 2);
    assert_eq!(v["serving"], false);
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("1 member(s), fewer than the 2") && reason.contains("cookie"),
        "{reason}"
    );
    assert_eq!(get_json(&a, "/admin/node").await["ready"], false);

    let b = guarded("mm-b", &["mm-a"], false).await.unwrap();
    soon(a.membership_changes().wait_for(|m| m.len() == 2))
        .await
        .unwrap();
    let v = get_json(&a, "/readyz").await;
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(v["serving"], true);
    assert!(v.get("reason").is_none(), "{v}");
    assert_eq!(get_json(&a, "/admin/node").await["ready"], true);
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// Issue 20, point 2: a start refused for a setting (here the admin
/// endpoint's port is taken) leaves nothing behind: no registration, no
/// sidecar process. The admin endpoint used to bind after the node had
/// registered and started its sidecar.
#[tokio::test]
async fn a_start_refused_for_its_admin_port_leaves_nothing_registered_and_no_sidecar() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr");
    let dir = std::env::temp_dir().join(format!("mesh-refused-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let marker = dir.join("sidecar-ran");
    let sidecar = mesh::sidecar::Sidecar::command(mesh::sidecar::CommandSettings::new(
        format!("touch {}; exec sleep 600", marker.display()),
        "refused",
    ));
    let discovery = mesh_testkit::fixture::Counting::default();
    let refused = Node::builder()
        .id("refused")
        .default_node(false)
        .cluster("test")
        .cookie(mesh_testkit::COOKIE)
        .listen("127.0.0.1:0")
        .discovery(discovery.clone())
        .through_sidecar(sidecar)
        .admin(port.to_string())
        .start()
        .await
        .expect_err("the admin port is taken");
    assert!(refused.to_string().contains("admin endpoint"), "{refused}");
    assert_eq!(
        discovery.registrations(),
        0,
        "the node registered before it was refused"
    );
    assert!(
        !marker.exists(),
        "the sidecar ran before the node was refused"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A memory store the test can take down.
#[derive(Clone, Default)]
struct Switch {
    rows: MemoryStore,
    down: Arc<AtomicBool>,
}

impl Switch {
    fn check(&self) -> Result<(), StoreError> {
        match self.down.load(Ordering::SeqCst) {
            true => Err(StoreError::Unavailable("the test took it down".into())),
            false => Ok(()),
        }
    }
}

impl StateStore for Switch {
    fn name(&self) -> &'static str {
        "switch"
    }

    fn load<'a>(
        &'a self,
        key: &'a StateKey,
        claim: Option<u64>,
    ) -> BoxFuture<'a, Result<Stored, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.rows.load(key, claim).await
        })
    }

    fn save<'a>(
        &'a self,
        key: &'a StateKey,
        expected: u64,
        token: Option<u64>,
        bytes: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.rows.save(key, expected, token, bytes).await
        })
    }
}

/// Issue 22, point 7: `/admin/state` reports the store's health, its
/// write and load latency, and the writes by outcome (a conflict among
/// them); `null` on a node without a store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_view_shows_the_stores_health_latency_and_conflicts() {
    let store = Switch::default();
    let node = Node::builder()
        .default_node(false)
        .capabilities(["bank"])
        .actor::<StateAccount>()
        .state(store.clone())
        .admin("127.0.0.1:0")
        .start()
        .await
        .expect("node starts");
    let deposit = |id: &'static str| {
        let node = node.clone();
        async move { node.call::<StateAccount, _>(id, Deposit(1)).await }
    };
    assert_eq!(deposit("a").await.expect("served"), Ok(1));
    let v = get_json(&node, "/admin/state").await;
    let s = &v["store"];
    assert_eq!(s["name"], "switch", "{v}");
    assert_eq!(s["healthy"], true, "{v}");
    assert_eq!(s["writes"]["ok"], 1, "{v}");
    assert_eq!(s["loads"]["ok"], 1, "{v}");
    assert_eq!(s["write_latency"]["count"], 1, "{v}");
    assert!(s["write_latency"]["p99_ms"].as_f64().is_some(), "{v}");
    assert!(s["last_error"].is_null(), "{v}");
    // Another writer moves the row on: the next deposit conflicts.
    let row = StateKey::new("bank/StateAccount", "a");
    let other = mesh::state::envelope::encode(1, &10u64).expect("encodes");
    assert_eq!(store.rows.save(&row, 1, None, Some(&other)).await, Ok(2));
    let conflict = deposit("a").await;
    assert!(
        matches!(
            conflict,
            Err(mesh::Error::State {
                error: StoreError::Conflict { .. },
                ..
            })
        ),
        "{conflict:?}"
    );
    let v = get_json(&node, "/admin/state").await;
    assert_eq!(v["store"]["writes"]["conflict"], 1, "{v}");
    assert_eq!(v["store"]["healthy"], true, "a conflict is an answer: {v}");
    // Down: unhealthy, saying why; back: healthy again.
    store.down.store(true, Ordering::SeqCst);
    assert!(deposit("b").await.is_err());
    let v = get_json(&node, "/admin/state").await;
    assert_eq!(v["store"]["healthy"], false, "{v}");
    assert_eq!(v["store"]["loads"]["failed"], 1, "{v}");
    let error = v["store"]["last_error"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("the test took it down"), "{v}");
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(deposit("b").await.expect("served"), Ok(1));
    let v = get_json(&node, "/admin/state").await;
    assert_eq!(v["store"]["healthy"], true, "{v}");
    assert_eq!(v["store"]["writes"]["ok"], 2, "{v}");
    // The same in Prometheus' terms.
    let (_, text) = get(&node, "/metrics").await;
    for series in [
        "mesh_state_writes_total{outcome=\"ok\"}",
        "mesh_state_writes_total{outcome=\"conflict\"}",
        "mesh_state_writes_total{outcome=\"fenced\"}",
        "mesh_state_write_seconds",
        "mesh_state_load_seconds",
    ] {
        assert!(text.contains(series), "{series} missing from /metrics");
    }
    node.shutdown().await.expect("shutdown");
    // A node without a store says so.
    let bare = Node::builder()
        .default_node(false)
        .admin("127.0.0.1:0")
        .start()
        .await
        .expect("node starts");
    let v = get_json(&bare, "/admin/state").await;
    assert!(v["store"].is_null(), "{v}");
    bare.shutdown().await.expect("shutdown");
}

/// Issue 23: `/admin/reminders` lists an actor's durable reminders from
/// the store, with what the node's keeper has done; the ticks show in
/// `/metrics`. An actor type the node does not host, or a missing id, is
/// an error that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reminders_view_lists_an_actors_reminders_and_the_keepers_work() {
    use mesh_testkit::actors::{Arm, Beacon};
    let node = Node::builder()
        .default_node(false)
        .capabilities(["bank"])
        .actor::<Beacon>()
        .state(mesh::state::MemoryStore::new())
        .admin("127.0.0.1:0")
        .start()
        .await
        .expect("node starts");
    let arm = Arm {
        every_ms: 100,
        missed: "once".into(),
    };
    node.call::<Beacon, _>("b 1", arm).await.unwrap().unwrap();
    let v = soon(async {
        loop {
            let v = get_json(&node, "/admin/reminders?actor=Beacon&id=b%201").await;
            if v["keeper"]["fired"].as_u64() >= Some(1) {
                return v;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(v["id"], "b 1", "{v}");
    let r = &v["reminders"][0];
    assert_eq!(r["name"], "beat", "{v}");
    assert_eq!(r["period_ms"], 100, "{v}");
    assert_eq!(r["missed"], "Once", "{v}");
    assert!(
        r["version"].as_u64() >= Some(2),
        "registered and advanced: {v}"
    );
    let none = get_json(&node, "/admin/reminders?actor=Beacon&id=nobody").await;
    assert_eq!(
        none["reminders"].as_array().map(Vec::len),
        Some(0),
        "{none}"
    );
    let (status, body) = get(&node, "/admin/reminders?actor=Nope&id=x").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no actor type \"Nope\""), "{body}");
    let (status, body) = get(&node, "/admin/reminders?actor=Beacon").await;
    assert_eq!(status, 400, "{body}");
    let (_, text) = get(&node, "/metrics").await;
    for series in [
        "mesh_reminder_ticks_total{outcome=\"ok\"}",
        "mesh_reminder_lateness_seconds",
        "mesh_reminders_held",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    node.shutdown().await.unwrap();
}

// ------------------------------------------- the cluster view, lookup, drain

/// A room that sets a timer when opened (the lookup lists its timers).
#[derive(Actor, Default)]
#[actor(capability = "game")]
struct Room;

#[derive(Message, Serialize, Deserialize, Clone)]
#[message(reply = ())]
struct Open;

#[derive(Message, Serialize, Deserialize, Clone)]
#[message(reply = ())]
struct Flush;

#[mesh::handlers]
impl Room {
    async fn open(&mut self, _: Open, ctx: &Ctx) {
        let every = mesh::timer::Timer::every(Duration::from_secs(60));
        ctx.timer::<Room, _>("flush", every, Flush)
            .expect("the timer is set");
    }

    async fn flush(&mut self, _: Flush) {}
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Issue 26, items 3 and 4, on three nodes over TCP: `a` (game, with the
/// admin endpoint), `b` (game), `c` (bank, with a state store whose view
/// it grants). `a`'s page and JSON show every member's activations and
/// calls per type, gathered over the cluster connections; an actor is
/// found wherever it lives (its timers, mailbox, stored version and,
/// granted, its state); the active ids are listed a page at a time; a
/// member that does not answer is marked, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_and_the_actor_lookup_cover_every_member() {
    assert!(mesh::admin::prometheus::install());
    let store = MemoryStore::new();
    let [a, b, c] = Cluster::tcp()
        .node("v-a", |b| {
            b.capabilities(["game"])
                .actor::<Player>()
                .actor::<Room>()
                .admin("127.0.0.1:0")
        })
        .node("v-b", |b| {
            b.capabilities(["game"]).actor::<Player>().actor::<Room>()
        })
        .node("v-c", move |b| {
            b.capabilities(["bank"])
                .actor::<StateAccount>()
                .state(store.clone())
                .admin_state_view::<StateAccount>()
        })
        .start()
        .await
        .into_array();
    let before = unix_ms();
    for i in 0..40 {
        a.call::<Player, _>(&format!("p-{i:02}"), Score(1))
            .await
            .expect("scored");
    }
    a.call::<Room, _>("r-1", Open).await.expect("opened");
    for _ in 0..5 {
        a.call::<StateAccount, _>("acct-1", Deposit(2))
            .await
            .expect("served")
            .expect("deposited");
    }

    // The cluster: three members answered, each with its own figures.
    let v = get_json(&a, "/admin/cluster").await;
    assert_eq!(v["answered"], 3, "{v}");
    let members = v["members"].as_array().unwrap();
    let names: Vec<&str> = members
        .iter()
        .map(|m| m["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["v-a", "v-b", "v-c"], "{v}");
    let players = |m: &Value| {
        m["types"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["actor"] == "Player")
            .map_or(0, |t| t["activations"].as_u64().unwrap())
    };
    assert_eq!(players(&members[0]) + players(&members[1]), 40, "{v}");
    assert!(players(&members[0]) > 0 && players(&members[1]) > 0, "{v}");
    for m in members {
        assert_eq!(m["state"], "serving", "{v}");
        assert_eq!(m["member"], true, "{v}");
    }
    assert_eq!(members[0]["self"], true, "{v}");
    // The calls a's callers made, per type: 40 + 1 + 5.
    let calls = members[0]["calls"].as_array().unwrap();
    let of = |t: &str| calls.iter().find(|c| c["actor"] == t).unwrap();
    assert_eq!(of("Player")["calls_total"], 40, "{v}");
    assert_eq!(of("StateAccount")["calls_total"], 5, "{v}");
    assert_eq!(of("Player")["errors_total"], 0, "{v}");
    let by_type = v["by_type"].as_array().unwrap();
    let player = by_type.iter().find(|t| t["actor"] == "Player").unwrap();
    assert_eq!(player["activations"], 40, "{v}");
    assert!(player["calls_per_s"].as_f64().unwrap() > 0.0, "{v}");
    let p50 = player["p50_ms"].as_f64().unwrap();
    let p99 = player["p99_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p99 >= p50, "{v}");
    let accounts = by_type
        .iter()
        .find(|t| t["actor"] == "StateAccount")
        .unwrap();
    assert_eq!(accounts["activations"], 1, "{v}");

    // The lookup: where r-1 lives and what it is doing.
    let v = get_json(&a, "/admin/actor?actor=Room&id=r-1").await;
    let placed = get_json(&a, "/admin/placement?actor=Room&id=r-1").await;
    assert_eq!(v["owner"], placed["owner"], "{v}");
    assert_eq!(v["answered"], true, "{v}");
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["mailbox_depth"], 0, "{v}");
    let since = v["since_unix_ms"].as_u64().unwrap();
    let last = v["last_message_unix_ms"].as_u64().unwrap();
    // The coarse clock is at most 100 ms old (a 1 s margin for a slow
    // machine).
    assert!(
        since + 1000 >= before && last >= since && last <= unix_ms() + 1000,
        "{v}"
    );
    let timers = v["timers"].as_array().unwrap();
    assert_eq!(timers.len(), 1, "{v}");
    assert_eq!(timers[0]["key"], "flush", "{v}");
    assert_eq!(timers[0]["every_ms"], 60_000, "{v}");
    let next = timers[0]["next_unix_ms"].as_u64().unwrap();
    assert!(next > unix_ms() + 50_000, "{v}");
    assert!(v["stored"].is_null(), "game nodes have no store: {v}");
    // An actor of a type a does not host: found on c, with its row.
    let v = get_json(&a, "/admin/actor?actor=StateAccount&id=acct-1").await;
    assert_eq!(v["owner"], "v-c", "{v}");
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["stored"]["version"], 5, "{v}");
    assert!(v["stored"]["size"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["stored"]["state"], 10, "the view was granted: {v}");
    // Never called: placed, not active.
    let v = get_json(&a, "/admin/actor?actor=Player&id=nobody").await;
    assert_eq!(v["active"], false, "{v}");
    assert!(v["since_unix_ms"].is_null(), "{v}");
    let (status, body) = get(&a, "/admin/actor?actor=Nope&id=x").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no member hosts an actor type \"Nope\""),
        "{body}"
    );

    // The listing, 7 at a time: every id once, in order, with its node.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let v = get_json(
            &a,
            &format!("/admin/actors?actor=Player&limit=7&after={after}"),
        )
        .await;
        let ids = v["ids"].as_array().unwrap();
        assert!(ids.len() <= 7, "{v}");
        for id in ids {
            assert!(
                ["v-a", "v-b"].contains(&id["node"].as_str().unwrap()),
                "{v}"
            );
            seen.push(id["id"].as_str().unwrap().to_owned());
        }
        match v["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    let want: Vec<String> = (0..40).map(|i| format!("p-{i:02}")).collect();
    assert_eq!(seen, want);
    let (status, _) = get(&a, "/admin/actors?actor=Player&limit=0").await;
    assert_eq!(status, 400);

    // The page: the cluster, a lookup and a listing, in a real browser.
    let url = format!("http://{}/", a.admin_addr().unwrap());
    let dom = tokio::time::timeout(
        Duration::from_secs(60),
        dump_dom(format!("{url}?actor=Room&id=r-1")),
    )
    .await
    .unwrap();
    for n in ["v-a", "v-b", "v-c"] {
        assert!(
            dom.contains(&format!(
                "data-member=\"{n}\" data-answered=\"true\" data-state=\"serving\""
            )),
            "{n} missing:\n{dom}"
        );
    }
    assert!(dom.contains("data-type-total=\"Player\""), "{dom}");
    let owner = placed["owner"].as_str().unwrap();
    assert!(
        dom.contains(&format!("data-owner=\"{owner}\" data-active=\"true\"")),
        "{dom}"
    );
    assert!(dom.contains("flush every 60000 ms"), "{dom}");
    // The members table names the types each member hosts.
    assert!(dom.contains("<td>Player, Room</td>"), "{dom}");
    let dom = tokio::time::timeout(
        Duration::from_secs(60),
        dump_dom(format!("{url}?list=Player")),
    )
    .await
    .unwrap();
    assert_eq!(dom.matches("<tr data-id=\"p-").count(), 40, "{dom}");
    assert!(dom.contains("data-next=\"\" data-count=\"40\""), "{dom}");

    // c is cut off: it is still a member for a while, marked as not
    // answering rather than left out.
    c.sever();
    let v = get_json(&a, "/admin/cluster").await;
    let gone = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node"] == "v-c")
        .cloned();
    if let Some(gone) = gone {
        assert_eq!(gone["answered"], false, "{v}");
        assert!(gone["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        assert_eq!(v["answered"], 2, "{v}");
    }
    for n in [a, b] {
        n.shutdown().await.unwrap();
    }
}

async fn post(node: &Node, path: &str, token: Option<&str>) -> (u16, String) {
    let url = format!("http://{}{path}", node.admin_addr().unwrap());
    let mut req = mesh_testkit::http().post(&url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = soon(req.send()).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

const TOKEN: &str = "drain-token-0123456789abcdef";

/// Issue 26, item 5: draining `b` (an authenticated admin action) while
/// `a` and `c` keep depositing into 60 accounts with durable state moves
/// `b`'s activations to `a` and `c` with no failed call and no lost
/// deposit; `b` stays up, not ready, and `a`'s cluster view shows it
/// drained. Without the token, with a wrong one, or on a node that has
/// none, the drain is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_the_nodes_actors_with_no_failed_call_and_needs_the_token() {
    let store = MemoryStore::new();
    let [a, b, c] = Cluster::tcp()
        .all(move |n| {
            n.capabilities(["bank"])
                .actor::<StateAccount>()
                .state(store.clone())
        })
        .node("d-a", |n| n.admin("127.0.0.1:0"))
        .node("d-b", |n| n.admin("127.0.0.1:0").admin_token(TOKEN))
        .node("d-c", |n| n)
        .start()
        .await
        .into_array();
    let ids: Vec<String> = (0..60).map(|i| format!("acct-{i}")).collect();
    // Every account active first (a balance read each), so b holds some.
    for id in &ids {
        a.call::<StateAccount, _>(id, Deposit(0))
            .await
            .expect("served")
            .expect("read");
    }
    assert!(b.activation_count() > 5, "{}", b.activation_count());
    // Callers on a and c deposit 1 into every account, round after round,
    // until told to stop; each counts what was acknowledged per account
    // and says how many rounds it has done.
    let stop = Arc::new(AtomicBool::new(false));
    let caller = |node: Node| {
        let (ids, stop) = (ids.clone(), stop.clone());
        let (done, rounds) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            let mut acked = std::collections::HashMap::<String, u64>::new();
            let mut failed = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                for id in &ids {
                    match node.call::<StateAccount, _>(id, Deposit(1)).await {
                        Ok(Ok(_)) => *acked.entry(id.clone()).or_default() += 1,
                        other => failed.push(format!("{id}: {other:?}")),
                    }
                }
                done.send_modify(|n| *n += 1);
            }
            (acked, failed)
        });
        (task, rounds)
    };
    let callers = [caller(a.clone()), caller(c.clone())];

    // Refused: no token, a wrong one, the wrong method, a node with none.
    let (status, body) = post(&b, "/admin/drain", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(&b, "/admin/drain", Some("drain-token-0123456789abcdeX")).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = get(&b, "/admin/drain").await;
    assert_eq!(status, 405);
    let (status, body) = post(&a, "/admin/drain", Some(TOKEN)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("NodeBuilder::admin_token"), "{body}");
    assert_eq!(b.drain_state(), "serving");

    // Accepted: b drains while the deposits go on.
    let (status, body) = post(&b, "/admin/drain", Some(TOKEN)).await;
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("\"was\":\"serving\""), "{body}");
    // The endpoint started it before answering.
    assert_ne!(b.drain_state(), "serving");
    // Under way already: this waits for that drain's end.
    b.drain().await.expect("drained");
    assert_eq!(b.drain_state(), "drained");
    assert_eq!(b.activation_count(), 0);
    // Two more rounds of each caller: the accounts live on a and c.
    for (_, rounds) in &callers {
        let mut rounds = rounds.clone();
        let now = *rounds.borrow();
        soon(rounds.wait_for(|n| *n >= now + 2))
            .await
            .expect("rounds");
    }
    assert_eq!(b.activation_count(), 0);
    assert!(a.activation_count() + c.activation_count() >= 60);
    // b is still up, answering its views, but not ready.
    let (status, _) = get(&b, "/readyz").await;
    assert_eq!(status, 503);
    let v = get_json(&a, "/admin/cluster").await;
    let drained = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node"] == "d-b")
        .cloned()
        .unwrap_or_else(|| panic!("b is not in the view: {v}"));
    assert_eq!(drained["state"], "drained", "{v}");
    assert_eq!(drained["member"], false, "{v}");
    assert_eq!(drained["activations"], 0, "{v}");
    stop.store(true, Ordering::SeqCst);
    let mut acked = std::collections::HashMap::<String, u64>::new();
    for (caller, _) in callers {
        let (got, failed) = caller.await.unwrap();
        assert!(
            failed.is_empty(),
            "calls failed during the drain: {failed:?}"
        );
        for (id, n) in got {
            *acked.entry(id).or_default() += n;
        }
    }
    // Every acknowledged deposit is in the balance.
    for id in &ids {
        let balance = a
            .call::<StateAccount, _>(id, Deposit(0))
            .await
            .expect("served")
            .expect("read");
        assert_eq!(balance, acked[id], "{id}");
    }
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
}
