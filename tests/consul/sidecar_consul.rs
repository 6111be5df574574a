//! Issue 9 end to end: three nodes in Consul mesh mode, each with its
//! own managed HAProxy configured from the Consul test agent
//! ([`ConsulSidecar::haproxy`]): the leaf from the agent's Connect CA,
//! upstreams from the per-node registrations, inbound decided by the
//! agent's intentions. Calls route across nodes through the sidecars
//! (listeners on loopback, HAProxy counting sessions); an intention deny
//! refuses new connections; a peer that dies loses its shards to the
//! others; a killed HAProxy is restarted and traffic resumes; a leaf
//! rotation reloads HAProxy with the new leaf while established
//! connections stay on the old worker. Also: a missing HAProxy fails the
//! node's start with the install hint and leaves nothing registered; an
//! external sidecar's dial ports follow the registered upstreams.
//!
//! HAProxy is required: these tests fail (never skip) without it;
//! `scripts/test.sh` installs it. The test agent's simulated agents all
//! share 127.0.0.1, so the sidecars' public ports come from the OS
//! (`Mesh::sidecar_port(0)`).

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use mesh::consul::{Applied, ConsulHaproxy, ConsulSidecar};
use mesh::consul::{Consul, Mesh};
use mesh::prelude::*;
use mesh::sidecar::{Haproxy, SidecarTransport};
use mesh::transport::{self, DialTarget, Inbound, Responder, TransportConfig};
use mesh::wire::{self, Cast, Cookie, Identity, Peer};
use mesh::Error;
use mesh_testkit::actors::{Player, Score};
use mesh_testkit::consul_agent::TestConsul;
use mesh_testkit::consul_catalog::TimeScale;
use mesh_testkit::{require_haproxy, scratch, within};

const STEP: Duration = Duration::from_secs(30);
const NAMES: [&str; 3] = ["a", "b", "c"];

struct Cluster {
    consul: TestConsul,
    meshes: Vec<ConsulSidecar>,
    nodes: Vec<Node>,
}

impl Cluster {
    fn haproxy(&self, i: usize) -> Haproxy {
        self.meshes[i]
            .sidecar()
            .running_haproxy()
            .expect("a running HAProxy")
    }

    async fn stat(&self, i: usize, proxy: &str, server: &str, field: &str) -> u64 {
        self.haproxy(i)
            .stats()
            .await
            .expect("HAProxy stats")
            .iter()
            .find(|r| r.proxy == proxy && r.server == server)
            .map_or(0, |r| r.get(field))
    }

    /// `stot` summed over every worker of node `i`'s HAProxy, the old
    /// ones a reload left with their established connections included
    /// (asked through the master CLI: `show proc`, then `@!<pid> show
    /// stat`), for the rows `pick` selects.
    async fn sessions(&self, i: usize, pick: impl Fn(&str, &str) -> bool) -> u64 {
        self.counted(i, "stot", false, pick).await
    }

    /// Column `field` summed over every worker of node `i`'s HAProxy (see
    /// [`Cluster::sessions`]), or over the old ones only (`old_only`:
    /// those a reload replaced, alive while they hold connections).
    async fn counted(
        &self,
        i: usize,
        field: &str,
        old_only: bool,
        pick: impl Fn(&str, &str) -> bool,
    ) -> u64 {
        let master = self.haproxy(i).dir().join("master.sock");
        let procs = master_cli(&master, "show proc").await;
        // `show proc`: the master, "# workers" (the current one), "# old
        // workers" (replaced by a reload), "# programs".
        let mut old = false;
        let workers: Vec<&str> = procs
            .lines()
            .filter_map(|l| {
                if l.starts_with('#') {
                    old = l.starts_with("# old workers");
                    return None;
                }
                let mut cols = l.split_whitespace();
                let pid = cols.next()?;
                (cols.next()? == "worker" && (old || !old_only)).then_some(pid)
            })
            .collect();
        assert!(old_only || !workers.is_empty(), "no worker in {procs}");
        let mut total = 0;
        for pid in workers {
            let text = master_cli(&master, &format!("@!{pid} show stat")).await;
            let mut lines = text.lines();
            let header: Vec<&str> = lines
                .next()
                .and_then(|h| h.strip_prefix("# "))
                .unwrap_or_else(|| panic!("no stat header from worker {pid}: {text}"))
                .split(',')
                .collect();
            let stot = header.iter().position(|h| *h == field).expect("the column");
            for l in lines {
                let cols: Vec<&str> = l.split(',').collect();
                if cols.len() > stot && pick(cols[0], cols[1]) {
                    total += cols[stot].parse::<u64>().unwrap_or(0);
                }
            }
        }
        total
    }

    async fn applied(&self, i: usize, what: &str, f: impl FnMut(&Applied) -> bool) {
        let mut rx = self.meshes[i].applied();
        within(STEP, rx.wait_for(f))
            .await
            .unwrap_or_else(|_| panic!("node {}: {what}", NAMES[i]));
    }

    /// Calls `Player` ids from every live node until each of `owners`
    /// has served one; every call must succeed.
    async fn route(&self, live: &[usize], owners: usize) {
        let mut served = std::collections::BTreeSet::new();
        for i in 0..60 {
            let pid = format!("p{i}");
            for &n in live {
                let from = &self.nodes[n];
                let (by, _) = within(STEP, from.call::<Player, _>(&pid, Score(1)).into_future())
                    .await
                    .unwrap_or_else(|e| panic!("{pid} from {}: {e}", NAMES[n]));
                assert_eq!(by, from.owner_of::<Player>(&pid).expect("an owner"));
                served.insert(by);
            }
        }
        assert_eq!(served.len(), owners, "{served:?}");
    }
}

/// One command on a HAProxy master CLI socket, its whole answer.
async fn master_cli(socket: &std::path::Path, command: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(STEP, async {
        // The master re-executes itself at a reload: its socket refuses
        // connections for that moment.
        let mut s = loop {
            match tokio::net::UnixStream::connect(socket).await {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tokio::task::yield_now().await
                }
                Err(e) => panic!("the master CLI {}: {e}", socket.display()),
            }
        };
        s.write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write");
        s.shutdown().await.expect("shutdown");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    })
    .await
}

async fn cluster(recheck: Duration) -> Cluster {
    require_haproxy();
    let consul = TestConsul::start(
        3,
        TimeScale {
            ttl: 1.0,
            deregister: 0.01,
        },
    )
    .await;
    let mut meshes = Vec::new();
    let mut nodes = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let adapter = Consul::new()
            .address(consul.url(i))
            .heartbeat(Duration::from_millis(100))
            .ttl(Duration::from_millis(300))
            .wait(Duration::from_secs(5))
            .through_sidecar(Mesh::new().sidecar_port(0));
        let m = ConsulSidecar::haproxy(
            adapter,
            ConsulHaproxy::new(scratch(&format!("sidecar-consul-{name}"))),
        )
        .recheck(recheck);
        let node = Node::builder()
            .id(*name)
            .cluster("game")
            .cookie(mesh_testkit::COOKIE)
            .capabilities(["game"])
            .actor::<Player>()
            .default_node(false)
            .heartbeat(Duration::from_millis(100), Duration::from_secs(2))
            .shutdown_timeout(Duration::from_secs(5))
            .mesh(m.clone())
            .start()
            .await
            .expect("node starts");
        meshes.push(m);
        nodes.push(node);
    }
    let c = Cluster {
        consul,
        meshes,
        nodes,
    };
    for i in 0..3 {
        c.applied(i, "HAProxy upstreams to both peers", |a| {
            a.upstreams.len() == 2 && a.allow.len() == 2
        })
        .await;
        within(
            STEP,
            c.nodes[i].membership_changes().wait_for(|m| m.len() == 3),
        )
        .await
        .expect("membership");
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_route_through_haproxy_sidecars_configured_from_consul() {
    let mut c = cluster(Duration::from_secs(10)).await;
    for (i, name) in NAMES.iter().enumerate() {
        let local = c.meshes[i].consul().local_sidecar().expect("mesh mode");
        // The node listens on loopback only; its sidecar forwards there.
        assert_eq!(
            c.nodes[i].addr(),
            Some(local.local_service.to_string().as_str())
        );
        assert!(local.local_service.ip().is_loopback());
        // HAProxy serves what Consul holds: public = the registered
        // sidecar port, each upstream = the peer's sidecar and local bind.
        let cfg = c.haproxy(i).config();
        assert_eq!(cfg.public, local.public.to_string());
        assert_eq!(cfg.app, local.local_service.to_string());
        let ups = c.meshes[i].consul().sidecar_upstreams().borrow().clone();
        for u in &ups {
            let remote = u.remote.as_ref().expect("the peer's sidecar is known");
            let h = cfg
                .upstreams
                .iter()
                .find(|h| h.node == u.node)
                .expect("an upstream");
            assert_eq!(h.local_port, u.local_bind.port());
            assert_eq!(h.peer_addr, remote.addr.to_string());
            assert_eq!(h.peer_id, remote.spiffe_id);
            assert!(cfg.allow.contains(&remote.spiffe_id), "{name}");
            assert_eq!(
                c.meshes[i].sidecar().ports().get(&u.node),
                Some(h.local_port)
            );
        }
        // Its leaf is the agent's, for the per-node service.
        assert!(cfg.certs.chain_pem.contains("BEGIN CERTIFICATE"));
    }
    c.route(&[0, 1, 2], 3).await;
    // Through the sidecars: every node's public frontend led sessions to
    // its app, and sessions went out through upstream frontends.
    // (Counted over every worker: the connections opened before the
    // last reload live on an old one.)
    let (mut inbound, mut out) = (0, 0);
    for (i, name) in NAMES.iter().enumerate() {
        let to_app = c.sessions(i, |p, s| p == "app" && s == "BACKEND").await;
        let public = c.sessions(i, |p, s| p == "public" && s == "FRONTEND").await;
        assert!(
            public >= to_app,
            "node {name}: {public} in, {to_app} to the app"
        );
        inbound += to_app;
        out += c
            .sessions(i, |p, s| p.starts_with("upstream_") && s == "FRONTEND")
            .await;
    }
    // Three pairs of nodes, at least one connection each, every one out
    // through a sidecar and in through another.
    assert!(out >= 3, "{out} sessions out");
    assert!(inbound >= 3, "{inbound} sessions in");

    // c dies with its sidecar: its registration expires, a and b drop it
    // (upstream and allow), and c's shards move to them.
    let before: Vec<String> = (0..60)
        .map(|i| format!("p{i}"))
        .filter(|p| c.nodes[0].owner_of::<Player>(p).ok().as_deref() == Some("c"))
        .collect();
    assert!(!before.is_empty());
    let dead = c.nodes.pop().expect("c");
    dead.sever();
    c.meshes[2].sidecar().stop().await;
    for i in 0..2 {
        within(
            STEP,
            c.nodes[i].membership_changes().wait_for(|m| m.len() == 2),
        )
        .await
        .expect("membership");
        c.applied(i, "c's upstream removed", |a| {
            a.upstreams.len() == 1 && a.allow.len() == 1
        })
        .await;
    }
    for p in &before {
        let owner = c.nodes[0].owner_of::<Player>(p).expect("an owner");
        assert_ne!(owner, "c");
    }
    c.route(&[0, 1], 2).await;
    for n in c.nodes.drain(..) {
        n.shutdown().await.expect("shutdown");
    }
    // Shutdown stops each node's HAProxy after it has drained.
    for m in &c.meshes[..2] {
        assert!(m.sidecar().running_haproxy().is_none());
    }
    drop(c.consul);
}

/// Answers nothing: the dials of these tests are refused before.
struct Nobody;

impl Inbound for Nobody {
    fn call(&self, _: &Peer, _: wire::CallFrame, _: Responder) {}
    fn cast(&self, _: &Peer, _: Cast) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intention_deny_refuses_new_connections() {
    let c = cluster(Duration::from_millis(100)).await;
    c.route(&[0, 1, 2], 3).await;
    let a = c.meshes[0].consul().local_sidecar().expect("mesh mode");
    let b = c.meshes[1].consul().local_sidecar().expect("mesh mode");
    // An operator denies b -> a.
    c.consul.intention(&b.service_name, &a.service_name, false);
    c.applied(0, "b no longer allowed", |x| {
        !x.allow.contains(&b.spiffe_id) && x.allow.len() == 1
    })
    .await;
    assert!(c.haproxy(0).config().allow.len() == 1);
    // A new connection from b's side to a: a's sidecar refuses it after
    // TLS (counted as a denied request); nothing reaches node a.
    let app_before = c.stat(0, "app", "BACKEND", "stot").await;
    let denied_before = c.stat(0, "public", "FRONTEND", "dreq").await;
    let mut config = TransportConfig::new(
        Identity {
            cluster: "game".into(),
            node: "probe".into(),
            capabilities: vec![],
            addr: String::new(),
            incarnation: 1,
            actors: Vec::new(),
        },
        Cookie::new(mesh_testkit::COOKIE),
    );
    config.handshake_timeout = Duration::from_secs(10);
    let through_b = SidecarTransport::new(c.meshes[1].sidecar().ports().clone());
    let err = within(
        STEP,
        transport::dial(
            &through_b,
            &DialTarget::node("a", "10.255.255.1:1"),
            &config,
            Arc::new(Nobody),
        ),
    )
    .await
    .expect_err("refused");
    assert!(matches!(err, Error::Refused { .. }), "{err:?}");
    assert!(!err.to_string().is_empty());
    assert!(c.stat(0, "public", "FRONTEND", "dreq").await > denied_before);
    assert_eq!(c.stat(0, "app", "BACKEND", "stot").await, app_before);
    // c, still allowed, is untouched; the intention back to allow lets b
    // in again.
    assert!(c.meshes[0]
        .applied()
        .borrow()
        .allow
        .iter()
        .any(|id| id.ends_with("/svc/game-c")));
    c.consul.intention(&b.service_name, &a.service_name, true);
    c.applied(0, "b allowed again", |x| x.allow.contains(&b.spiffe_id))
        .await;
    c.route(&[0, 1, 2], 3).await;
    for n in &c.nodes {
        n.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_haproxy_is_restarted_and_a_leaf_rotation_reloads() {
    let c = cluster(Duration::from_secs(10)).await;
    c.route(&[0, 1, 2], 3).await;
    // a's HAProxy is killed: the supervisor starts it again.
    let h = c.haproxy(0);
    let mut status = h.status();
    let first = h.pid().expect("running");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let now = within(STEP, status.wait_for(|s| s.starts == 2 && s.pid.is_some()))
        .await
        .expect("restarted")
        .clone();
    assert_ne!(now.pid, Some(first));
    // Traffic resumes: calls from every node to every owner succeed
    // once the peer tables have redialed.
    within(STEP, async {
        loop {
            let mut ok = true;
            for n in &c.nodes {
                for i in 0..30 {
                    if n.call::<Player, _>(&format!("p{i}"), Score(1))
                        .await
                        .is_err()
                    {
                        ok = false;
                    }
                }
            }
            if ok {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    // Every node routes by the same view again (a peer can be briefly
    // missing from a membership while its connections are redialed; a
    // call then lands on a node that serves it, not on its owner).
    for n in &c.nodes {
        within(STEP, n.membership_changes().wait_for(|m| m.len() == 3))
            .await
            .expect("membership");
    }
    c.route(&[0, 1, 2], 3).await;

    // The CA renews b's leaf: b's HAProxy reloads (same master, no new
    // start) with the new leaf; the node connections it carries stay
    // open (on the old worker), and calls keep working.
    let open = |p: &str, s: &str| (p == "public" || p.starts_with("upstream_")) && s == "FRONTEND";
    for n in &c.nodes {
        within(STEP, n.membership_changes().wait_for(|m| m.len() == 3))
            .await
            .expect("membership");
    }
    let hb = c.haproxy(1);
    let old = hb.config().certs.chain_pem;
    let master = hb.pid();
    let b = c.meshes[1].consul().local_sidecar().expect("mesh mode");
    c.consul.rotate_leaf(&b.service_name);
    c.applied(1, "the new leaf applied", |x| {
        x.renewals >= 1 && x.error.is_none()
    })
    .await;
    let new = hb.config().certs.chain_pem;
    assert_ne!(new, old);
    assert_eq!(hb.pid(), master);
    assert_eq!(hb.status().borrow().starts, 1);
    let kept = c.counted(1, "scur", true, open).await;
    assert!(
        kept >= 1,
        "no established connection left on b's old worker"
    );
    for n in &c.nodes {
        let m = n.membership_changes().borrow().clone();
        assert_eq!(m.len(), 3, "{}: {:?}", n.id(), m);
    }
    c.route(&[0, 1, 2], 3).await;
    for n in &c.nodes {
        n.shutdown().await.expect("shutdown");
    }
}

fn adapter(consul: &TestConsul, agent: usize) -> Consul {
    Consul::new()
        .address(consul.url(agent))
        .heartbeat(Duration::from_millis(100))
        .ttl(Duration::from_millis(300))
        .wait(Duration::from_secs(5))
        .through_sidecar(Mesh::new().sidecar_port(0))
}

fn builder(name: &str, m: &ConsulSidecar) -> mesh::NodeBuilder {
    Node::builder()
        .id(name)
        .cluster("game")
        .cookie(mesh_testkit::COOKIE)
        .capabilities(["game"])
        .actor::<Player>()
        .default_node(false)
        .mesh(m.clone())
}

#[tokio::test]
async fn a_missing_haproxy_fails_the_start_and_leaves_nothing_registered() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let m = ConsulSidecar::haproxy(
        adapter(&consul, 0),
        ConsulHaproxy::new(scratch("sidecar-consul-missing")).binary("/nonexistent/haproxy"),
    );
    let err = builder("a", &m).start().await.expect_err("the start fails");
    let text = err.to_string();
    assert!(matches!(err, mesh::StartError::Sidecar { .. }), "{err:?}");
    assert!(
        text.contains("sidecar:") && text.contains("apt-get install haproxy"),
        "{text}"
    );
    // The node and its per-node service were deregistered.
    within(
        STEP,
        consul.until(|cat| cat.nodes["agent-0"].services.is_empty()),
    )
    .await;
    assert!(m.consul().local_sidecar().is_none());
}

#[tokio::test]
async fn an_external_sidecar_dials_the_registered_upstream_ports() {
    let consul = TestConsul::start(2, TimeScale::default()).await;
    let ma = ConsulSidecar::external(adapter(&consul, 0));
    let mb = ConsulSidecar::external(adapter(&consul, 1));
    let a = builder("a", &ma).start().await.expect("a starts");
    let b = builder("b", &mb).start().await.expect("b starts");
    // Nothing runs; the node listens on loopback only; the ports a dials
    // are the upstreams Consul holds for it.
    assert!(ma.sidecar().running_haproxy().is_none());
    assert!(a.addr().expect("listening").starts_with("127.0.0.1:"));
    let mut ups = ma.consul().sidecar_upstreams();
    let to_b = within(STEP, ups.wait_for(|u| u.len() == 1))
        .await
        .expect("the adapter runs")[0]
        .clone();
    let mut applied = ma.applied();
    within(STEP, applied.wait_for(|x| x.upstreams.len() == 1))
        .await
        .expect("applied");
    assert_eq!(ma.sidecar().ports().get("b"), Some(to_b.local_bind.port()));
    // b leaves: its port goes.
    b.shutdown().await.expect("b leaves");
    within(STEP, applied.wait_for(|x| x.upstreams.is_empty()))
        .await
        .expect("applied");
    assert_eq!(ma.sidecar().ports().get("b"), None);
    a.shutdown().await.expect("a leaves");
}

#[tokio::test]
async fn a_command_sidecar_starts_once_registered_with_the_per_node_service_id() {
    require_haproxy();
    let consul = TestConsul::start(1, TimeScale::default()).await;
    // A stand-in for `consul connect proxy -sidecar-for {{id}}` (neither
    // consul nor envoy is installed here): it notes the id it was given,
    // then serves the registered public port (HAProxy as a plain TCP
    // listener), which is what the start waits for.
    let dir = scratch("sidecar-consul-command");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let cfg = dir.join("standin.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 1m\n  timeout server 1m\nlisten standin\n  bind 127.0.0.1:{port}\n  server none 127.0.0.1:1\n"
        ),
    )
    .expect("stand-in config");
    let noted = dir.join("id");
    let template = format!(
        "echo {{{{id}}}} > {}; exec {} -db -f {}",
        noted.display(),
        mesh::sidecar::DEFAULT_HAPROXY,
        cfg.display()
    );
    let adapter = Consul::new()
        .address(consul.url(0))
        .heartbeat(Duration::from_millis(100))
        .ttl(Duration::from_millis(300))
        .through_sidecar(Mesh::new().sidecar_port(port));
    let m = ConsulSidecar::command(adapter, template);
    let a = builder("a", &m).start().await.expect("a starts");
    let running = m.sidecar().running_command().expect("the command runs");
    assert!(running.pid().is_some());
    assert_eq!(
        std::fs::read_to_string(&noted)
            .expect("the id noted")
            .trim(),
        "game-a-connect"
    );
    let mut status = running.status();
    a.shutdown().await.expect("a leaves");
    // Stopped by the node's shutdown.
    within(STEP, status.wait_for(|s| s.stopped))
        .await
        .expect("stopped");
    assert!(m.sidecar().running_command().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_acls_on_the_sidecar_asks_consul_with_the_nodes_token() {
    use mesh_testkit::consul_agent::{Acl, Token};
    require_haproxy();
    let consul = TestConsul::start(2, TimeScale::default()).await;
    let mut acl = Acl::default();
    for n in ["a", "b"] {
        acl.tokens.insert(
            format!("token-{n}"),
            Token {
                accessor: format!("acc-{n}"),
                write: vec!["game".into(), format!("game-{n}")],
            },
        );
    }
    consul.set_acl(Some(acl));
    // ACLs default to deny: the intentions let the two nodes in.
    consul.intention("game-a", "game-b", true);
    consul.intention("game-b", "game-a", true);
    let ma = ConsulSidecar::haproxy(
        adapter(&consul, 0).token("token-a"),
        ConsulHaproxy::new(scratch("sidecar-consul-acl-a")),
    );
    let mb = ConsulSidecar::haproxy(
        adapter(&consul, 1).token("token-b"),
        ConsulHaproxy::new(scratch("sidecar-consul-acl-b")),
    );
    let a = builder("a", &ma).start().await.expect("a starts");
    let b = builder("b", &mb).start().await.expect("b starts");
    for m in [&ma, &mb] {
        let mut applied = m.applied();
        within(
            STEP,
            applied.wait_for(|a| a.upstreams.len() == 1 && a.allow.len() == 1),
        )
        .await
        .expect("the peer is let in by the intentions, asked with the token");
    }
    within(STEP, a.membership_changes().wait_for(|m| m.len() == 2))
        .await
        .expect("membership");
    let mut served = std::collections::BTreeSet::new();
    for i in 0..40 {
        let (by, _) = within(
            STEP,
            a.call::<Player, _>(&format!("p{i}"), Score(1))
                .into_future(),
        )
        .await
        .expect("a call through the sidecars");
        served.insert(by);
    }
    assert!(served.contains("b"), "{served:?}");
    // Every Connect request (leaf, roots, authorize) carried its node's
    // token.
    let connect: Vec<_> = consul
        .log()
        .into_iter()
        .filter(|l| l.path.starts_with("agent/connect/"))
        .map(|l| (l.agent, l.path, l.token))
        .collect();
    assert!(connect
        .iter()
        .any(|(_, p, _)| p == "agent/connect/authorize"));
    for (agent, path, token) in &connect {
        let want = if agent == "agent-0" {
            "token-a"
        } else {
            "token-b"
        };
        assert_eq!(token.as_deref(), Some(want), "{agent} {path}");
    }
    a.shutdown().await.expect("a leaves");
    b.shutdown().await.expect("b leaves");
}

/// Issue 24, point 1: three nodes through managed HAProxy sidecars, with
/// the default heartbeat (500 ms, so a dial backoff of up to 16 s), form
/// a full membership on every node within 2 s of the last node's start.
/// A peer's first dials fail ("no sidecar upstream for node .. yet"):
/// its upstream going live must reset that peer's backoff and dial it at
/// once, not at the next backoff tick; and peers learn of a sidecar only
/// once its TCP check passes, so that check must not wait 10 s (Consul's
/// default interval) after a first failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_through_sidecars_forms_within_2_s_of_the_last_start() {
    require_haproxy();
    let consul = TestConsul::start(
        3,
        TimeScale {
            ttl: 1.0,
            deregister: 0.01,
        },
    )
    .await;
    let mut meshes = Vec::new();
    let mut nodes = Vec::new();
    let mut last_called = tokio::time::Instant::now();
    for (i, name) in NAMES.iter().enumerate() {
        let m = ConsulSidecar::haproxy(
            adapter(&consul, i),
            ConsulHaproxy::new(scratch(&format!("sidecar-form-{name}"))),
        );
        last_called = tokio::time::Instant::now();
        let node = within(STEP, builder(name, &m).start())
            .await
            .expect("node starts");
        meshes.push(m);
        nodes.push(node);
    }
    let last_started = tokio::time::Instant::now();
    let mut formed = Vec::new();
    for n in &nodes {
        within(STEP, n.membership_changes().wait_for(|m| m.len() == 3))
            .await
            .expect("membership");
        formed.push(last_started.elapsed());
    }
    let took = last_started.elapsed();
    eprintln!(
        "formation: full membership on every node {took:?} after the last start returned \
         ({:?} after it was called; per node {formed:?})",
        last_called.elapsed()
    );
    assert!(
        took <= Duration::from_secs(2),
        "the cluster formed {took:?} after the last start (per node {formed:?})"
    );
    for n in nodes {
        n.shutdown().await.expect("shutdown");
    }
    drop(meshes);
}

/// Issue 24, point 2: a node process (the `consul_mesh` example, with a
/// managed HAProxy) killed with SIGKILL takes its HAProxy with it: the
/// master gets the parent-death signal and its worker exits with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_takes_its_haproxy_along() {
    use mesh_testkit::procs::{await_gone, example_binary, master_and_workers, Proc};
    require_haproxy();
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let dir = scratch("sidecar-kill9");
    let mut cmd = tokio::process::Command::new(example_binary("consul_mesh"));
    cmd.args(["--consul", &consul.url(0)])
        .args(["--name", "a", "--listen", "127.0.0.1:0"])
        .args(["--capabilities", "game"])
        .args(["--sidecar", "haproxy", "--sidecar-port", "0"])
        .arg("--sidecar-dir")
        .arg(&dir);
    let mut node = Proc::spawn(cmd, "a", mesh_testkit::COOKIE).await;
    let (master, workers) = master_and_workers(&dir.join("haproxy.pid"), STEP).await;
    node.signal("KILL");
    assert!(!node.exited(STEP).await);
    let mut all = workers.clone();
    all.push(master);
    await_gone(&all, Duration::from_secs(10)).await;
}
