//! Nodes using the Consul adapter in mesh mode (`Consul::through_sidecar`)
//! against the test agent: each registers a Connect sidecar for itself
//! under its own name with one upstream per peer, upstreams follow
//! membership, the peers' sidecars are learned from
//! `/v1/health/connect/<name>`, and shutdown removes the node and its
//! sidecar. No proxy runs here: what a sidecar serves is another suite's.

use std::collections::BTreeSet;
use std::time::Duration;

use mesh::consul::{Consul, Mesh, PortPolicy, SidecarUpstream};
use mesh::prelude::*;
use mesh::NodeBuilder;
use mesh_testkit::actors::Player;
use mesh_testkit::consul_agent::{Acl, TestConsul, Token};
use mesh_testkit::consul_catalog::{Catalog, TimeScale, SIDECAR_PORTS};
use mesh_testkit::fixture::{member, Cluster};
use mesh_testkit::within;

const STEP: Duration = Duration::from_secs(30);
const NAMES: [&str; 3] = ["a", "b", "c"];

fn time() -> TimeScale {
    TimeScale {
        ttl: 1.0,
        deregister: 0.01,
    }
}

fn adapter(consul: &TestConsul, agent: usize, mesh: Mesh) -> Consul {
    Consul::new()
        .address(consul.url(agent))
        .heartbeat(Duration::from_millis(100))
        .ttl(Duration::from_millis(300))
        .wait(Duration::from_secs(5))
        .through_sidecar(mesh)
}

async fn start(name: &str, consul: Consul) -> Node {
    game(member("game", name).listen("127.0.0.1:0"), consul)
        .start()
        .await
        .expect("node starts")
}

/// `b` as a game node found through `consul`.
fn game(b: NodeBuilder, consul: Consul) -> NodeBuilder {
    b.capabilities(["game"]).actor::<Player>().discovery(consul)
}

/// Waits until `consul`'s published upstreams lead to exactly `peers`,
/// and returns them.
async fn upstreams_to(consul: &Consul, peers: &[&str]) -> Vec<SidecarUpstream> {
    let want: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    let mut rx = consul.sidecar_upstreams();
    let seen = within(
        STEP,
        rx.wait_for(|ups| ups.iter().map(|u| u.node.clone()).collect::<Vec<_>>() == want),
    )
    .await
    .expect("the adapter is alive")
    .clone();
    seen
}

/// The sidecar registration of node `n` on `agent`, if held.
fn sidecar_of(c: &Catalog, agent: &str, n: &str) -> Option<mesh_testkit::consul_catalog::Service> {
    c.nodes[agent]
        .services
        .get(&format!("game-{n}-connect-sidecar-proxy"))
        .cloned()
}

/// The upstream destinations (name, port) of a sidecar registration.
fn destinations(s: &mesh_testkit::consul_catalog::Service) -> BTreeSet<(String, u64)> {
    s.upstreams()
        .iter()
        .map(|u| {
            (
                u["DestinationName"].as_str().unwrap_or("").to_owned(),
                u["LocalBindPort"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

struct Three {
    consul: TestConsul,
    adapters: Vec<Consul>,
    nodes: Vec<Node>,
}

async fn three(mesh: impl Fn() -> Mesh) -> Three {
    let consul = TestConsul::start(3, time()).await;
    let adapters: Vec<Consul> = (0..NAMES.len())
        .map(|i| adapter(&consul, i, mesh()))
        .collect();
    let mut cluster = Cluster::discovered().cluster("game");
    for (name, a) in NAMES.iter().zip(&adapters) {
        let a = a.clone();
        cluster = cluster.node(*name, move |b| game(b, a));
    }
    // No membership wait: no sidecar runs, so the peers are not reachable.
    let nodes = cluster.start_unwaited().await.into_nodes();
    for (i, a) in adapters.iter().enumerate() {
        let peers: Vec<&str> = NAMES.iter().copied().filter(|n| *n != NAMES[i]).collect();
        upstreams_to(a, &peers).await;
    }
    Three {
        consul,
        adapters,
        nodes,
    }
}

#[tokio::test]
async fn three_nodes_register_a_sidecar_each_with_one_upstream_per_peer() {
    let t = three(Mesh::new).await;
    for (i, name) in NAMES.iter().enumerate() {
        let agent = t.consul.node(i).to_owned();
        let ups = t.adapters[i].sidecar_upstreams().borrow().clone();
        // The view: one upstream per peer, on distinct loopback ports,
        // destination = the peer's own service name.
        let peers: Vec<&str> = NAMES.iter().copied().filter(|n| n != name).collect();
        assert_eq!(
            ups.iter().map(|u| u.node.as_str()).collect::<Vec<_>>(),
            peers
        );
        for u in &ups {
            assert_eq!(u.destination, format!("game-{}", u.node));
            assert!(u.local_bind.ip().is_loopback());
            assert!(u.remote.is_none(), "no sidecar listens here: none passing");
        }
        assert_ne!(ups[0].local_bind, ups[1].local_bind);
        // The catalog: the cluster registration (discovery unchanged), the
        // per-node service named for the node, and its sidecar with a port
        // from the agent's range and the same upstreams.
        let want: BTreeSet<(String, u64)> = ups
            .iter()
            .map(|u| (u.destination.clone(), u64::from(u.local_bind.port())))
            .collect();
        let (per_node, sidecar, checks) = t.consul.with_catalog(|c| {
            let n = &c.nodes[&agent];
            (
                n.services[&format!("game-{name}-connect")].clone(),
                sidecar_of(c, &agent, name).expect("the sidecar is registered"),
                n.checks.keys().cloned().collect::<Vec<_>>(),
            )
        });
        assert!(t.consul.with_catalog(|c| c.nodes[&agent]
            .services
            .contains_key(&format!("game-{name}"))));
        assert_eq!(per_node.name, format!("game-{name}"));
        assert_eq!(per_node.meta["mesh_node"], *name);
        assert_eq!(sidecar.kind.as_deref(), Some("connect-proxy"));
        assert_eq!(sidecar.name, format!("game-{name}-sidecar-proxy"));
        assert!((SIDECAR_PORTS.0..=SIDECAR_PORTS.1).contains(&sidecar.port));
        let proxy = sidecar.proxy.clone().expect("a Proxy block");
        assert_eq!(proxy["DestinationServiceName"], format!("game-{name}"));
        assert_eq!(proxy["LocalServiceAddress"], "127.0.0.1");
        let listens: std::net::SocketAddr = t.nodes[i]
            .addr()
            .expect("listening")
            .parse()
            .expect("ip:port");
        assert_eq!(
            proxy["LocalServicePort"].as_u64(),
            Some(u64::from(listens.port()))
        );
        assert_eq!(destinations(&sidecar), want);
        // Checks: the heartbeat, the per-node alias of it, the sidecar's two.
        assert_eq!(
            checks,
            [
                format!("service:game-{name}"),
                format!("service:game-{name}-connect"),
                format!("service:game-{name}-connect-sidecar-proxy:1"),
                format!("service:game-{name}-connect-sidecar-proxy:2"),
            ]
        );
        // What this node's own sidecar serves.
        let local = t.adapters[i].local_sidecar().expect("mesh mode");
        assert_eq!(local.service_id, format!("game-{name}-connect"));
        assert_eq!(local.service_name, format!("game-{name}"));
        assert_eq!(local.proxy_id, format!("game-{name}-connect-sidecar-proxy"));
        assert_eq!(u64::from(local.public.port()), sidecar.port);
        assert_eq!(
            local.spiffe_id,
            format!(
                "spiffe://{}/ns/default/dc/dc1/svc/game-{name}",
                t.consul.trust_domain()
            )
        );
        // What the admin endpoint's /admin/discovery shows: the sidecar
        // and one upstream per peer, as held (no request).
        let d = serde_json::to_value(mesh::discovery::Discovery::describe(&t.adapters[i]))
            .expect("json");
        assert_eq!(d["sidecar"]["proxy_id"], local.proxy_id, "{d}");
        assert_eq!(d["sidecar"]["public"], local.public.to_string(), "{d}");
        let shown: Vec<(String, String)> = d["upstreams"]
            .as_array()
            .expect("upstreams")
            .iter()
            .map(|u| {
                (
                    u["destination"].as_str().unwrap_or("").to_owned(),
                    u["local_bind"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let held: Vec<(String, String)> = ups
            .iter()
            .map(|u| (u.destination.clone(), u.local_bind.to_string()))
            .collect();
        assert_eq!(shown, held, "{d}");
        // Operator functions see the same.
        let mut ids = t.adapters[i].services().await.expect("services");
        ids.sort();
        assert_eq!(
            ids,
            [
                format!("game-{name}"),
                format!("game-{name}-connect"),
                format!("game-{name}-connect-sidecar-proxy")
            ]
        );
        let registered: BTreeSet<(String, u64)> = t.adapters[i]
            .upstreams()
            .await
            .expect("upstreams")
            .into_iter()
            .map(|u| (u.destination_name, u64::from(u.local_bind_port)))
            .collect();
        assert_eq!(registered, want);
    }
    // Discovery of the cluster is unchanged: all three are members.
    let mut rx = t.nodes[0].membership_changes();
    within(STEP, rx.wait_for(|m| m.nodes().count() == 3))
        .await
        .expect("watch");
}

#[tokio::test]
async fn a_leaving_peer_leaves_the_upstreams_and_shutdown_removes_node_and_sidecar() {
    let mut t = three(Mesh::new).await;
    let before = t.adapters[0].sidecar_upstreams().borrow().clone();
    let c = t.nodes.pop().expect("c");
    c.shutdown().await.expect("c leaves");
    // c's agent holds nothing of c any more: node, per-node service, sidecar.
    within(
        STEP,
        t.consul.until(|cat| {
            cat.nodes["agent-2"].services.is_empty() && cat.nodes["agent-2"].checks.is_empty()
        }),
    )
    .await;
    // a and b register their upstreams again without c; the remaining
    // peer keeps its local port.
    for (i, other) in [(0, "b"), (1, "a")] {
        let ups = upstreams_to(&t.adapters[i], &[other]).await;
        if i == 0 {
            assert_eq!(ups[0].local_bind, before[0].local_bind, "b keeps its port");
        }
        let agent = t.consul.node(i).to_owned();
        let me = NAMES[i];
        within(
            STEP,
            t.consul.until(|cat| {
                sidecar_of(cat, &agent, me).is_some_and(|s| {
                    destinations(&s)
                        .iter()
                        .map(|(d, _)| d.clone())
                        .collect::<Vec<_>>()
                        == [format!("game-{other}")]
                })
            }),
        )
        .await;
    }
    // Shutdown of a: its registrations go, sidecar included.
    let b = t.nodes.pop().expect("b");
    let a = t.nodes.pop().expect("a");
    a.shutdown().await.expect("a leaves");
    within(
        STEP,
        t.consul
            .until(|cat| cat.nodes["agent-0"].services.is_empty()),
    )
    .await;
    assert!(t.adapters[0].local_sidecar().is_none());
    upstreams_to(&t.adapters[1], &[]).await;
    b.shutdown().await.expect("b leaves");
}

#[tokio::test]
async fn peers_sidecars_are_learned_from_health_connect() {
    // The sidecars' public ports come from the OS (Mesh::sidecar_port(0))
    // and a listener stands in for each sidecar, so the agent's TCP check
    // passes (every 100 ms here) and the sidecar is listed passing.
    let consul = TestConsul::start(2, time()).await;
    consul.with_catalog(|c| c.scale_intervals(0.01));
    let (ca, cb) = (
        adapter(&consul, 0, Mesh::new().sidecar_port(0)),
        adapter(&consul, 1, Mesh::new().sidecar_port(0)),
    );
    let a = start("a", ca.clone()).await;
    let b = start("b", cb.clone()).await;
    upstreams_to(&ca, &["b"]).await;
    let b_side = cb.local_sidecar().expect("mesh mode");
    let listener = tokio::net::TcpListener::bind(b_side.public)
        .await
        .expect("the sidecar's port is free");
    let mut rx = ca.sidecar_upstreams();
    let seen = within(
        STEP,
        rx.wait_for(|ups| ups.first().is_some_and(|u| u.remote.is_some())),
    )
    .await
    .expect("watch")
    .clone();
    let remote = seen[0].remote.clone().expect("remote");
    assert_eq!(remote.addr, b_side.public);
    assert_eq!(remote.spiffe_id, b_side.spiffe_id);
    assert_eq!(
        remote.spiffe_id,
        format!(
            "spiffe://{}/ns/default/dc/dc1/svc/game-b",
            consul.trust_domain()
        )
    );
    // b's sidecar stops listening: its check fails, and a forgets it.
    drop(listener);
    within(
        STEP,
        rx.wait_for(|ups| ups.first().is_some_and(|u| u.remote.is_none())),
    )
    .await
    .expect("watch");
    // b's agent restarts and forgets everything: b's heartbeat registers
    // the node and its sidecar again.
    consul.restart_agent(1);
    within(
        STEP,
        consul.until(|c| sidecar_of(c, "agent-1", "b").is_some_and(|s| s.upstreams().len() == 1)),
    )
    .await;
    a.shutdown().await.expect("a leaves");
    b.shutdown().await.expect("b leaves");
}

#[tokio::test]
async fn a_refused_sidecar_registration_fails_the_start_and_leaves_nothing() {
    // The token may write the cluster service but not the node's own name.
    let consul = TestConsul::start(1, time()).await;
    let mut acl = Acl::default();
    acl.tokens.insert(
        "t".into(),
        Token {
            accessor: "acc".into(),
            write: vec!["game".into()],
        },
    );
    consul.set_acl(Some(acl));
    let refused = Node::builder()
        .id("a")
        .cluster("game")
        .cookie(mesh_testkit::COOKIE)
        .listen("127.0.0.1:0")
        .default_node(false)
        .discovery(adapter(&consul, 0, Mesh::new()).token("t"))
        .start()
        .await;
    let Err(StartError::Discovery(why)) = refused else {
        panic!("the start must fail in the agent's words: {refused:?}");
    };
    let why = why.message();
    assert!(
        why.contains("registering game-a-connect with its sidecar"),
        "{why}"
    );
    assert!(
        why.contains("lacks permission 'service:write' on \"game-a\""),
        "{why}"
    );
    // The node's own registration, accepted first, was taken back.
    within(
        STEP,
        consul.until(|c| c.nodes["agent-0"].services.is_empty()),
    )
    .await;
}

#[tokio::test]
async fn a_full_upstream_port_range_leaves_the_extra_peer_out() {
    // One port for two peers: the first peer (by node id) gets it, the
    // other gets no upstream, and the node keeps running.
    let consul = TestConsul::start(3, time()).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let narrow = move || {
        Mesh::new().upstream_ports(PortPolicy::Range {
            first: port,
            count: 1,
        })
    };
    // b and c first, so that a's first registration holds both peers.
    let b = start("b", adapter(&consul, 1, narrow())).await;
    let c = start("c", adapter(&consul, 2, narrow())).await;
    let mut m = b.membership_changes();
    within(STEP, m.wait_for(|m| m.nodes().count() == 2))
        .await
        .expect("watch");
    let ca = adapter(&consul, 0, narrow());
    let a = start("a", ca.clone()).await;
    let nodes = [a, b, c];
    let ups = upstreams_to(&ca, &["b"]).await;
    assert_eq!(ups[0].local_bind.port(), port);
    within(
        STEP,
        consul.until(|c| sidecar_of(c, "agent-0", "a").is_some_and(|s| s.upstreams().len() == 1)),
    )
    .await;
    for n in nodes {
        n.shutdown().await.expect("leaves");
    }
}
