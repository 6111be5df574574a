//! Nodes using the Consul adapter against the test agent (real HTTP, real
//! TCP between nodes): discovery, routing, TTL failure, agent restart,
//! agent outage, ACL refusal, index going backwards, backoff, shutdown.

use std::future::IntoFuture;
use std::time::Duration;

use mesh::consul::{AgentTls, Consul};
use mesh::prelude::*;
use mesh::NodeBuilder;
use mesh_testkit::actors::{Player, Score};
use mesh_testkit::consul_agent::{Acl, TestConsul, Token};
use mesh_testkit::consul_catalog::{Status, TimeScale};
use mesh_testkit::fixture::{member, wait_member_names, Cluster};
use mesh_testkit::within;

/// The limit of a step against the agents: longer than `soon`'s, as these
/// steps wait out TTLs, deregistration and backoff over real HTTP.
const STEP: Duration = Duration::from_secs(30);

const HEARTBEAT: Duration = Duration::from_millis(100);
const TTL: Duration = Duration::from_millis(300);

/// DeregisterCriticalServiceAfter's 1 minute floor becomes 600 ms.
fn time() -> TimeScale {
    TimeScale {
        ttl: 1.0,
        deregister: 0.01,
    }
}

fn adapter(consul: &TestConsul, agent: usize) -> Consul {
    Consul::new()
        .address(consul.url(agent))
        .heartbeat(HEARTBEAT)
        .ttl(TTL)
        .wait(Duration::from_secs(5))
}

async fn start(name: &str, consul: Consul) -> Result<Node, StartError> {
    game(member("game", name).listen("127.0.0.1:0"), consul)
        .start()
        .await
}

/// `b` as a game node found through `consul`.
fn game(b: NodeBuilder, consul: Consul) -> NodeBuilder {
    b.capabilities(["game"]).actor::<Player>().discovery(consul)
}

/// Waits until `node`'s membership is exactly `want`.
async fn members(node: &Node, want: &[&str]) {
    wait_member_names(node, STEP, want).await;
}

struct Three {
    consul: TestConsul,
    adapters: Vec<Consul>,
    nodes: Vec<Node>,
}

const NAMES: [&str; 3] = ["a", "b", "c"];

/// Three nodes, each on its own simulated agent, all discovered.
async fn three() -> Three {
    let consul = TestConsul::start(3, time()).await;
    let adapters: Vec<Consul> = (0..NAMES.len()).map(|i| adapter(&consul, i)).collect();
    let mut cluster = Cluster::discovered().cluster("game");
    for (name, a) in NAMES.iter().zip(&adapters) {
        let a = a.clone();
        cluster = cluster.node(*name, move |b| game(b, a));
    }
    let nodes = cluster.start_unwaited().await.into_nodes();
    for n in &nodes {
        members(n, &NAMES).await;
    }
    Three {
        consul,
        adapters,
        nodes,
    }
}

/// Ids of players owned by `owner`, as `by` routes them.
fn owned_by(by: &Node, owner: &str, n: usize) -> Vec<String> {
    (0..10_000)
        .map(|i| format!("p{i}"))
        .filter(|id| by.owner_of::<Player>(id).ok().as_deref() == Some(owner))
        .take(n)
        .collect()
}

/// Calls every id from every node: each call must succeed on its owner.
async fn calls_succeed(nodes: &[&Node], ids: &[String]) {
    for node in nodes {
        for id in ids {
            let (served_by, _) = within(STEP, node.call::<Player, _>(id, Score(1)).into_future())
                .await
                .unwrap_or_else(|e| panic!("{} calling {id}: {e}", node.id()));
            assert_eq!(served_by, node.owner_of::<Player>(id).expect("owner"));
        }
    }
}

#[tokio::test]
async fn three_nodes_discover_each_other_and_route_calls() {
    let t = three().await;
    // Registration as DESIGN.md section 6 says, read back from the agent.
    let holds = t.consul.with_catalog(|c| {
        let node = &c.nodes["agent-1"];
        let s = node.services["game-b"].clone();
        let check = node.checks["service:game-b"].clone();
        (s, check)
    });
    assert_eq!(holds.0.name, "game");
    assert_eq!(holds.0.tags, ["game"]);
    assert_eq!(holds.0.meta["mesh_node"], "b");
    assert_eq!(
        holds.0.meta["mesh_protocol"],
        mesh::wire::VERSION.to_string()
    );
    assert_eq!(
        holds.0.meta["mesh_addr"],
        format!("{}:{}", holds.0.address, holds.0.port)
    );
    assert_eq!(holds.1.status, Status::Passing, "registered passing");
    assert_eq!(holds.1.ttl.map(|(t, _)| t), Some(TTL));
    assert_eq!(holds.1.deregister_after, Some(Duration::from_millis(600)));
    // Operator functions.
    assert_eq!(t.adapters[1].services().await.expect("list"), ["game-b"]);
    let info = t.adapters[1].info("game-b").await.expect("info");
    assert_eq!(info["Service"], "game");
    assert_eq!(info["Meta"]["mesh_node"], "b");
    assert!(info["ContentHash"].is_string());
    assert_eq!(t.adapters[1].upstreams().await.expect("upstreams"), []);
    assert!(t.adapters[1].info("nope").await.is_err());
    // What the admin endpoint's /admin/discovery shows, with no request.
    let described = mesh::discovery::Discovery::describe(&t.adapters[1]);
    assert_eq!(described.kind(), "consul");
    assert_eq!(
        described.get::<String>("service_id").as_deref(),
        Some("game-b")
    );
    let d = serde_json::to_value(&described).expect("json");
    assert_eq!(d.to_string(), described.to_string());
    assert_eq!(d["kind"], "consul");
    assert_eq!(d["registered"], true);
    assert_eq!(d["service_id"], "game-b");
    assert_eq!(d["check_id"], "service:game-b");
    assert_eq!(d["agent"], t.consul.url(1));
    // Every member is known with the address it listens on, whichever
    // side dialed.
    for n in &t.nodes {
        for (peer, info) in n.membership().iter() {
            assert!(
                info.addr.starts_with("127.0.0.1:"),
                "{} sees {peer} at {:?}",
                n.id(),
                info.addr
            );
        }
    }
    // Calls from every node reach every owner.
    let mut ids = Vec::new();
    for owner in NAMES {
        ids.extend(owned_by(&t.nodes[0], owner, 5));
    }
    let refs: Vec<&Node> = t.nodes.iter().collect();
    calls_succeed(&refs, &ids).await;
}

#[tokio::test]
async fn a_node_whose_heartbeat_stops_is_dropped_and_its_shards_move() {
    let t = three().await;
    let (a, b) = (&t.nodes[0], &t.nodes[1]);
    let lost = owned_by(a, "c", 10);
    calls_succeed(&[a, b], &lost).await;
    t.adapters[2].pause_heartbeat(true);
    // The TTL runs out, the check goes critical, the others drop c.
    members(a, &["a", "b"]).await;
    members(b, &["a", "b"]).await;
    let check = t
        .consul
        .with_catalog(|c| c.nodes["agent-2"].checks["service:game-c"].clone());
    assert_eq!(check.status, Status::Critical);
    assert_eq!(check.output, "TTL expired");
    // c's shards are served by a and b now.
    for id in &lost {
        assert_ne!(a.owner_of::<Player>(id).expect("owner"), "c");
    }
    calls_succeed(&[a, b], &lost).await;
    // Passing again: c is back, and owns its shards again.
    t.adapters[2].pause_heartbeat(false);
    members(a, &["a", "b", "c"]).await;
    members(b, &["a", "b", "c"]).await;
    assert_eq!(a.owner_of::<Player>(&lost[0]).expect("owner"), "c");
}

#[tokio::test]
async fn nodes_register_again_after_an_agent_restart() {
    let t = three().await;
    let registers_before = t.consul.requests(1, "agent/service/register").len();
    t.consul.restart_agent(1);
    // The worker's next pass gets 404 and registers again, by itself.
    within(
        STEP,
        t.consul.until(|c| {
            c.nodes["agent-1"]
                .checks
                .get("service:game-b")
                .is_some_and(|k| k.status == Status::Passing)
        }),
    )
    .await;
    assert!(t.consul.requests(1, "agent/service/register").len() > registers_before);
    for n in &t.nodes {
        members(n, &NAMES).await;
    }
    let ids = owned_by(&t.nodes[0], "b", 5);
    let refs: Vec<&Node> = t.nodes.iter().collect();
    calls_succeed(&refs, &ids).await;
}

#[tokio::test]
async fn the_cluster_keeps_serving_while_the_agents_are_down_and_recovers() {
    let t = three().await;
    let mut ids = Vec::new();
    for owner in NAMES {
        ids.extend(owned_by(&t.nodes[0], owner, 3));
    }
    let refs: Vec<&Node> = t.nodes.iter().collect();
    for i in 0..3 {
        t.consul.stop_agent(i);
    }
    // Every TTL runs out in the catalog meanwhile (the servers live on).
    within(
        STEP,
        t.consul.until(|c| {
            c.nodes
                .values()
                .flat_map(|n| n.checks.values())
                .all(|k| k.status == Status::Critical)
        }),
    )
    .await;
    // The nodes cannot reach consul, keep the last view, and serve.
    for n in &t.nodes {
        assert_eq!(n.membership().len(), 3, "{} kept its view", n.id());
    }
    calls_succeed(&refs, &ids).await;
    for i in 0..3 {
        t.consul.start_agent(i).await;
    }
    // Heartbeats pass again by themselves; discovery resumes.
    within(
        STEP,
        t.consul.until(|c| {
            c.nodes
                .values()
                .flat_map(|n| n.checks.values())
                .all(|k| k.status == Status::Passing)
        }),
    )
    .await;
    for n in &t.nodes {
        members(n, &NAMES).await;
    }
    calls_succeed(&refs, &ids).await;
}

#[tokio::test]
async fn a_wrong_acl_token_is_a_clear_error_at_start() {
    let consul = TestConsul::start(1, time()).await;
    let mut acl = Acl::default();
    acl.tokens.insert(
        "good".into(),
        Token {
            accessor: "acc-good".into(),
            write: vec!["game".into()],
        },
    );
    consul.set_acl(Some(acl));
    let err = start("a", adapter(&consul, 0).token("bad"))
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(matches!(err, StartError::Discovery(_)), "{err:?}");
    assert!(
        text.contains("403") && text.contains("ACL not found"),
        "{text}"
    );
    assert!(
        text.contains("CONSUL_HTTP_TOKEN"),
        "says where the token comes from: {text}"
    );
    let err = start("a", adapter(&consul, 0)).await.expect_err("refused");
    assert!(
        err.to_string()
            .contains("anonymous token lacks permission 'service:write' on \"game\""),
        "{err}"
    );
    // Nothing was left registered by the refused starts; the right token works.
    assert!(consul.with_catalog(|c| c.nodes["agent-0"].services.is_empty()));
    let node = start("a", adapter(&consul, 0).token("good"))
        .await
        .expect("starts with the right token");
    node.shutdown().await.expect("shutdown");
    assert!(consul.with_catalog(|c| c.nodes["agent-0"].services.is_empty()));
}

#[tokio::test]
async fn an_unreachable_agent_or_bad_settings_fail_the_start() {
    let consul = TestConsul::start(1, time()).await;
    consul.stop_agent(0);
    let err = start("a", adapter(&consul, 0)).await.expect_err("no agent");
    assert!(err.to_string().contains("is the agent running"), "{err}");
    let err = start("a", adapter(&consul, 0).ttl(Duration::from_millis(200)))
        .await
        .expect_err("TTL under 3x the heartbeat");
    assert!(
        matches!(
            err,
            StartError::InvalidSetting {
                setting: "Consul::ttl",
                ..
            }
        ),
        "{err:?}"
    );
    let err = start("a", Consul::new().address("unix:///tmp/consul.sock"))
        .await
        .expect_err("no unix sockets");
    assert!(
        matches!(
            err,
            StartError::InvalidSetting {
                setting: "Consul::address",
                ..
            }
        ),
        "{err:?}"
    );
    let err = start(
        "a",
        Consul::new()
            .address("https://127.0.0.1:8501")
            .agent_tls(AgentTls::new().ca_file("/nonexistent/ca.pem")),
    )
    .await
    .expect_err("an unreadable CA file");
    assert!(
        matches!(
            err,
            StartError::InvalidSetting {
                setting: "Consul::agent_tls",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

#[tokio::test]
async fn an_index_going_backwards_is_handled() {
    let t = three().await;
    // The index drops below what every watch blocks on (as a failover to
    // a server that is behind can make it), then a node joins.
    let reset_at = tokio::time::Instant::now();
    t.consul.reset_index(1);
    let d = start("d", adapter(&t.consul, 0)).await.expect("d starts");
    for n in t.nodes.iter().chain([&d]) {
        members(n, &["a", "b", "c", "d"]).await;
    }
    // The watches started over (an index=0 query after the drop), from b
    // or c (d registers at agent-0 and asks without an index anyway). The
    // query may follow the convergence: await it (a hang fails the step).
    within(
        STEP,
        t.consul.wait_logged(|l| {
            l.agent != "agent-0"
                && l.at > reset_at
                && l.path.starts_with("health/service/game")
                && !l.query.contains("index=")
        }),
    )
    .await;
    d.shutdown().await.expect("shutdown");
    for n in &t.nodes {
        members(n, &NAMES).await;
    }
}

#[tokio::test]
async fn a_failing_agent_is_not_flooded() {
    let t = three().await;
    t.consul
        .fail_with(Some((500, "rpc error making call: No cluster leader")));
    let from = tokio::time::Instant::now();
    // Let the worker fail a few times (awaiting the agent's own log).
    within(
        STEP,
        t.consul.wait_requests(0, "agent/check/pass/", from, 4),
    )
    .await;
    t.consul.fail_with(None);
    let beats = t
        .consul
        .wait_requests(0, "agent/check/pass/", from, 4)
        .await;
    // After the first failure, each try waits at least twice the
    // heartbeat (doubling, capped at the TTL).
    for w in beats.windows(2).skip(1) {
        let gap = w[1] - w[0];
        assert!(
            gap >= HEARTBEAT * 2 - Duration::from_millis(10),
            "gap {gap:?}"
        );
    }
    let watches: Vec<_> = t
        .consul
        .requests(0, "health/service/")
        .into_iter()
        .filter(|at| *at > from)
        .collect();
    for w in watches.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(90),
            "watch retried after {:?}",
            w[1] - w[0]
        );
    }
    // Recovered: passing and all members again.
    for n in &t.nodes {
        members(n, &NAMES).await;
    }
}

#[tokio::test]
async fn shutdown_stops_the_heartbeat_then_deregisters() {
    let t = three().await;
    let c = &t.nodes[2];
    c.shutdown().await.expect("shutdown");
    assert!(t
        .consul
        .with_catalog(|cat| cat.nodes["agent-2"].services.is_empty()));
    let log = t.consul.log();
    let dereg = log
        .iter()
        .position(|l| l.agent == "agent-2" && l.path.starts_with("agent/service/deregister/game-c"))
        .expect("deregistered");
    assert!(
        !log[dereg..]
            .iter()
            .any(|l| l.agent == "agent-2" && l.path.starts_with("agent/check/pass/")),
        "no heartbeat after the deregistration"
    );
    members(&t.nodes[0], &["a", "b"]).await;
    members(&t.nodes[1], &["a", "b"]).await;
    assert_eq!(t.adapters[2].services().await, Err(mesh::Error::NotStarted));
    let d =
        serde_json::to_value(mesh::discovery::Discovery::describe(&t.adapters[2])).expect("json");
    assert_eq!(d["registered"], false, "{d}");
    assert!(d["service_id"].is_null(), "{d}");
}

#[tokio::test]
async fn a_killed_node_is_dropped_and_then_reaped_from_consul() {
    let t = three().await;
    t.nodes[2].sever(); // as a crash: no deregistration
    members(&t.nodes[0], &["a", "b"]).await;
    // DeregisterCriticalServiceAfter (1 minute floor, scaled to 600 ms)
    // removes the registration a crash left behind.
    within(
        STEP,
        t.consul.until(|c| c.nodes["agent-2"].services.is_empty()),
    )
    .await;
    let ids = owned_by(&t.nodes[0], "b", 3);
    calls_succeed(&[&t.nodes[0], &t.nodes[1]], &ids).await;
}

// ------------------------------------------------------------ https agents

/// An HTTPS front for the test agent at `upstream` (`http://host:port`):
/// TLS with `server` (a certificate for `consul.test`), client
/// certificates of `clients` required, bytes relayed to the agent.
async fn https_front(
    upstream: &str,
    server: &mesh_testkit::pki::Leaf,
    clients: &mesh_testkit::pki::Ca,
) -> (String, tokio::task::JoinHandle<()>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = mesh::transport::tls::crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(clients.pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(server.cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(server.key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            conns.spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut agent) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut agent).await;
            });
            while conns.try_join_next().is_some() {}
        }
    });
    (format!("https://{addr}"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_agent_with_a_ca_file_and_a_client_certificate() {
    use mesh_testkit::pki::{self, Ca};
    let consul = TestConsul::start(1, time()).await;
    let ca = Ca::new("consul");
    let (url, _front) = https_front(&consul.url(0), &ca.server_leaf("consul.test"), &ca).await;
    let dir = std::env::temp_dir().join(format!("mesh-https-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cli = ca.leaf(&pki::service_id("consul", "cli"));
    let ca_file = write("ca.pem", &ca.pem);
    let (cert, key) = (write("cli.pem", &cli.cert), write("cli-key.pem", &cli.key));
    // The certificate names consul.test, not the address's IP: the
    // server name setting is what lets the check pass.
    let tls = AgentTls::new()
        .ca_file(&ca_file)
        .client_cert(&cert, &key)
        .server_name("consul.test");
    let https = |tls: AgentTls| adapter(&consul, 0).address(url.clone()).agent_tls(tls);
    let a = start("a", https(tls.clone()))
        .await
        .expect("registers over https");
    let b = start("b", https(tls.clone()))
        .await
        .expect("registers over https");
    members(&a, &["a", "b"]).await;
    members(&b, &["a", "b"]).await;
    assert_eq!(
        consul.with_catalog(|c| c.nodes["agent-0"].services.len()),
        2
    );

    // A wrong CA, no server name, no client certificate: each refused,
    // with the reason.
    let other = Ca::new("other");
    let wrong = write("other.pem", &other.pem);
    let err = start(
        "c",
        https(
            AgentTls::new()
                .ca_file(&wrong)
                .client_cert(&cert, &key)
                .server_name("consul.test"),
        ),
    )
    .await
    .expect_err("a wrong CA");
    let text = err.to_string();
    assert!(
        text.contains("certificate") && text.contains("CONSUL_CACERT"),
        "{text}"
    );
    let err = start(
        "c",
        https(AgentTls::new().ca_file(&ca_file).client_cert(&cert, &key)),
    )
    .await
    .expect_err("the certificate does not name the IP");
    assert!(err.to_string().contains("certificate"), "{err}");
    let err = start(
        "c",
        https(AgentTls::new().ca_file(&ca_file).server_name("consul.test")),
    )
    .await
    .expect_err("no client certificate");
    assert!(matches!(err, StartError::Discovery(_)), "{err:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn kv_keys_with_dot_segments_are_refused_not_read_elsewhere() {
    // `kv_get("wallets/x/../victim")` would be sent as `kv/wallets/victim`
    // (URL parsing drops dot segments) while a write names the literal
    // key: such keys are refused with a clear error instead.
    let consul = TestConsul::start(1, time()).await;
    let c = adapter(&consul, 0);
    c.kv_put("wallets/victim", b"secret").await.unwrap();
    for key in ["wallets/x/../victim", "wallets/./victim", "wallets/.."] {
        let err = c.kv_get(key).await.unwrap_err().to_string();
        assert!(err.contains("\"..\" segment"), "{key}: {err}");
    }
    assert_eq!(
        c.kv_get("wallets/victim").await.unwrap().as_deref(),
        Some(&b"secret"[..])
    );
}
