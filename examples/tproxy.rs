//! Node traffic under a transparent proxy, for real: what consul-k8s's
//! transparent proxy does to a pod's connections, made with iptables and a
//! real HAProxy standing in for the injected Envoy, with the cluster port
//! excluded both ways (the `transparent-proxy-exclude-inbound-ports` and
//! `-outbound-ports` annotations), the nodes in Consul's observe mode and
//! in-process mTLS between them.
//!
//! It changes network namespaces, links and iptables rules, so it runs only
//! with `MESH_TPROXY_NETNS=1`, inside a network and mount namespace made
//! for it (the test `tests/tproxy.rs` runs it so):
//!
//! ```sh
//! cargo build --example tproxy --example consul_mesh
//! unshare --net --mount -- sh -c 'mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns \
//!     && ip link set lo up && MESH_TPROXY_NETNS=1 exec target/debug/examples/tproxy'
//! ```
//!
//! The layout, all inside that namespace:
//!
//! - a bridge `br0` at 10.77.0.254: the "cluster network", where the Consul
//!   test agent listens (it stands in for the Consul servers) and a driver
//!   node runs (the calls' origin);
//! - one network namespace per node ("pod") `tp-<i>` at 10.77.0.<i+1>, with
//!   - a HAProxy (user `haproxy`) with an outbound listener on
//!     127.0.0.1:15001 whose server `0.0.0.0:0` connects to each
//!     connection's original destination, and an inbound one on :20000
//!     doing the same, logging every connection as soon as it opens;
//!   - consul-k8s's rules: every outbound TCP connection redirected to
//!     15001 except the proxy's own (owner match on its uid, as consul-k8s
//!     excludes Envoy's 5995) and the excluded cluster port 7000; every
//!     inbound one redirected to 20000 except port 7000;
//!   - the node process (`consul_mesh --observe --login ...`) listening
//!     on 7000 with mTLS (one SPIFFE identity, the service's, as Connect
//!     gives every pod of a service).
//!
//! The example plays consul-k8s's endpoints controller (it registers each
//! pod in the catalog, and marks the killed one not ready), then checks:
//! the nodes log in through the proxy, form a cluster and route calls
//! over mTLS on the excluded port; not one connection to port 7000 went
//! through either proxy listener while every node's Consul traffic did; a
//! SIGKILLed node's actors move to the others with no failed call. It
//! prints one table and exits with an error when a check fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::consul::{Consul, Observe};
use mesh::identity::FileIdentity;
use mesh::prelude::*;
use mesh::transport::tls::Tls;
use mesh_testkit::chaos::scratch;
use mesh_testkit::consul_agent::TestConsul;
use mesh_testkit::consul_catalog::TimeScale;
use mesh_testkit::consul_servers::K8sPod;
use mesh_testkit::pki::{self, Ca, Files};
use mesh_testkit::procs::{example_binary, Proc};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

// Only the actors are used here.
#[allow(dead_code)]
#[path = "common/mod.rs"]
mod common;

use common::{Player, Score};

const COOKIE: &str = mesh_testkit::COOKIE;
const NODES: usize = 3;
const PORT: u16 = 7000;
const OUTBOUND: u16 = 15001;
const INBOUND: u16 = 20000;
const HOST: &str = "10.77.0.254";
const METHOD: &str = "consul-k8s-auth-method";
const CONTROLLER: &str = "controller-token";
const TD: &str = "11111111-2222-3333-4444-555555555555.consul";
/// How long one step may take.
const STEP: Duration = Duration::from_secs(60);

type Error = Box<dyn std::error::Error>;

/// Runs `sh -c script`, failing with its stderr.
async fn sh(script: &str) -> Result<(), Error> {
    let out = Command::new("sh").args(["-c", script]).output().await?;
    if !out.status.success() {
        return Err(format!(
            "`{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

fn ip_of(i: usize) -> String {
    format!("10.77.0.{}", i + 1)
}

fn ns_of(i: usize) -> String {
    format!("tp-{i}")
}

/// The pod's namespace, link and consul-k8s's iptables rules.
async fn make_pod(i: usize) -> Result<(), Error> {
    let (ns, ip) = (ns_of(i), ip_of(i));
    sh(&format!(
        "ip netns add {ns} \
         && ip link add h{i} type veth peer name eth0 netns {ns} \
         && ip link set h{i} master br0 up \
         && ip -n {ns} addr add {ip}/24 dev eth0 \
         && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up"
    ))
    .await?;
    // consul-k8s's init container: the proxy's own connections and the
    // excluded port go out as they are, the rest into the proxy;
    // inbound, everything but the excluded port into the proxy.
    let rules = [
        "-t nat -A OUTPUT -p tcp -m owner --uid-owner haproxy -j RETURN".to_owned(),
        "-t nat -A OUTPUT -p tcp -o lo -j RETURN".to_owned(),
        format!("-t nat -A OUTPUT -p tcp --dport {PORT} -j RETURN"),
        format!("-t nat -A OUTPUT -p tcp -j REDIRECT --to-ports {OUTBOUND}"),
        format!("-t nat -A PREROUTING -p tcp --dport {PORT} -j RETURN"),
        format!("-t nat -A PREROUTING -p tcp -j REDIRECT --to-ports {INBOUND}"),
    ];
    for r in rules {
        sh(&format!("ip netns exec {ns} iptables {r}")).await?;
    }
    Ok(())
}

/// One pod's proxy: its connection log, as `<listener> <destination>`.
struct Proxy {
    child: tokio::process::Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start(i: usize, dir: &Path) -> Result<Proxy, Error> {
        let cfg = dir.join(format!("haproxy-{i}.cfg"));
        std::fs::write(
            &cfg,
            format!(
                "global\n  user haproxy\n  group haproxy\n  log stdout format raw local0\n\
                 defaults\n  mode tcp\n  log global\n  option logasap\n  log-format \"%ft %si:%sp\"\n\
                 \x20 timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
                 frontend outbound\n  bind 127.0.0.1:{OUTBOUND}\n  default_backend original\n\
                 frontend inbound\n  bind 0.0.0.0:{INBOUND}\n  default_backend original\n\
                 backend original\n  server o 0.0.0.0:0\n"
            ),
        )?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns_of(i), "haproxy", "-db", "-f"])
            .arg(&cfg)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().ok_or("haproxy's stdout")?;
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().expect("log").push(line);
            }
        });
        // Listening once `ss` in its namespace shows both ports.
        let ns = ns_of(i);
        tokio::time::timeout(STEP, async {
            loop {
                let out = Command::new("ip")
                    .args(["netns", "exec", &ns, "ss", "-Hltn"])
                    .output()
                    .await?;
                let text = String::from_utf8_lossy(&out.stdout);
                if text.contains(&format!(":{OUTBOUND} ")) && text.contains(&format!(":{INBOUND} "))
                {
                    return Ok::<_, Error>(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .map_err(|_| format!("haproxy in {ns} is not listening after {STEP:?}"))??;
        Ok(Proxy { child, log })
    }

    /// Connections logged by `listener` (`outbound`/`inbound`) to a
    /// destination ending in `:port`.
    fn count(&self, listener: &str, port: u16) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(listener)
                    && w.next().is_some_and(|d| d.ends_with(&format!(":{port}")))
            })
            .count()
    }
}

fn pod(name: &str, addr: &str) -> Result<K8sPod, Error> {
    Ok(K8sPod {
        name: name.to_owned(),
        namespace: "apps".into(),
        uid: format!("uid-{name}"),
        k8s_node: "kind-worker".into(),
        host_ip: HOST.into(),
        addr: addr.parse()?,
        service: "mesh".into(),
    })
}

/// The controller's `PUT /v1/catalog/register`.
async fn register(consul: &TestConsul, pod: &K8sPod, ready: bool) -> Result<(), Error> {
    let resp = mesh_testkit::http()
        .put(format!("{}/v1/catalog/register", consul.url(0)))
        .header("X-Consul-Token", CONTROLLER)
        .json(&pod.registration(ready))
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(format!("catalog/register: {}", resp.text().await?).into());
    }
    Ok(())
}

fn identity(ca: &Ca, dir: &Path, name: &str) -> Files {
    let f = Files::in_dir(&dir.join(name));
    f.write(&ca.leaf(&pki::service_id(TD, "mesh")), &ca.pem);
    f
}

fn token_file(dir: &Path, name: &str) -> Result<PathBuf, Error> {
    let path = dir.join(format!("{name}.jwt"));
    std::fs::write(&path, format!("jwt-{name}"))?;
    Ok(path)
}

async fn wait_members(node: &Node, n: usize) -> Result<(), Error> {
    let mut changes = node.membership_changes();
    tokio::time::timeout(STEP, changes.wait_for(|m| m.len() == n))
        .await
        .map_err(|_| format!("{} did not see {n} members within {STEP:?}", node.id()))??;
    Ok(())
}

/// Calls `ids` from the driver; every call must succeed. Returns who
/// served each.
async fn call_all(driver: &Node, ids: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut served = BTreeMap::new();
    for id in ids {
        let (on, _) = tokio::time::timeout(STEP, driver.call::<Player, _>(id, Score(1)))
            .await
            .map_err(|_| format!("calling {id}: no answer within {STEP:?}"))?
            .map_err(|e| format!("calling {id}: {e}"))?;
        served.insert(id.clone(), on);
    }
    Ok(served)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    common::init_logs();
    if std::env::var("MESH_TPROXY_NETNS").ok().as_deref() != Some("1") {
        return Err("this example changes namespaces, links and iptables rules: run it in a network and mount namespace of its own, with MESH_TPROXY_NETNS=1 (see its docs)".into());
    }
    let dir = scratch("tproxy");
    sh(&format!(
        "ip link add br0 type bridge && ip addr add {HOST}/24 dev br0 && ip link set br0 up"
    ))
    .await?;
    let mut proxies = Vec::new();
    for i in 0..NODES {
        make_pod(i).await?;
        proxies.push(Proxy::start(i, &dir).await?);
    }

    // The Consul servers (the test agent) on the cluster network, in ACL
    // mode with the Kubernetes auth method.
    let consul = TestConsul::start_at(&[format!("{HOST}:0")], TimeScale::default()).await?;
    let names: Vec<String> = (0..NODES)
        .map(|i| format!("mesh-{i}"))
        .chain(["driver".to_owned()])
        .collect();
    let pods: Vec<&str> = names.iter().map(String::as_str).collect();
    consul.acl_like_consul_k8s(CONTROLLER, METHOD, "mesh", &pods);
    let consul_port: u16 = consul
        .url(0)
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or("the agent's port")?;

    // The pods: each node in its namespace, behind its proxy.
    let ca = Ca::new(TD);
    let mut procs = Vec::new();
    for (i, name) in names.iter().take(NODES).enumerate() {
        let f = identity(&ca, &dir, name);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns_of(i)])
            .arg(example_binary("consul_mesh"))
            .args([
                "--name",
                name,
                "--cluster",
                "mesh",
                "--capabilities",
                "game",
            ])
            .args(["--listen", &format!("{}:{PORT}", ip_of(i))])
            .args(["--consul", &consul.url(0), "--service", "mesh", "--observe"])
            .args([
                "--login",
                METHOD,
                "--login-meta",
                &format!("pod=apps/{name}"),
            ])
            .arg("--bearer-token-file")
            .arg(token_file(&dir, name)?)
            .arg("--tls-cert")
            .arg(&f.chain)
            .arg("--tls-key")
            .arg(&f.key)
            .arg("--tls-roots")
            .arg(&f.bundle);
        procs.push(Proc::spawn(cmd, name, COOKIE).await);
    }
    let mut pods = Vec::new();
    for p in &procs {
        let pod = pod(&p.name, &p.addr)?;
        register(&consul, &pod, true).await?;
        pods.push(pod);
    }

    // The driver, on the cluster network (no proxy there), a member too.
    let f = identity(&ca, &dir, "driver");
    let driver = Node::builder()
        .id("driver")
        .default_node(false)
        .cluster("mesh")
        .cookie(COOKIE)
        .listen(format!("{HOST}:{PORT}"))
        .transport(Tls::new(FileIdentity::load(&f.chain, &f.key, &f.bundle)?).transport())
        .discovery(
            Consul::new()
                .address(consul.url(0))
                .service("mesh")
                .wait(Duration::from_secs(5))
                .observe(
                    Observe::new()
                        .login(METHOD)
                        .bearer_token_file(token_file(&dir, "driver")?),
                ),
        )
        .start()
        .await?;
    register(&consul, &pod("driver", &format!("{HOST}:{PORT}"))?, true).await?;
    wait_members(&driver, NODES + 1).await?;

    let ids: Vec<String> = (0..300).map(|i| format!("player-{i}")).collect();
    let before = call_all(&driver, &ids).await?;
    let owners: std::collections::BTreeSet<&String> = before.values().collect();
    let spread = owners.len();

    // A pod dies: SIGKILL, then the controller marks it not ready (its
    // readiness probe fails); its actors move to the others.
    let killed = procs.pop().ok_or("a node")?;
    killed.signal("KILL");
    register(&consul, &pods[NODES - 1], false).await?;
    wait_members(&driver, NODES).await?;
    let moved: Vec<String> = before
        .iter()
        .filter(|(_, on)| **on == killed.name)
        .map(|(id, _)| id.clone())
        .collect();
    let after = call_all(&driver, &moved).await?;
    let stayed_away = after.values().all(|on| *on != killed.name);

    println!("| pod | outbound via the proxy: to Consul | outbound via the proxy: to :{PORT} | inbound via the proxy: to :{PORT} |");
    println!("|---|---|---|---|");
    let mut failures = Vec::new();
    for (i, proxy) in proxies.iter().enumerate() {
        let to_consul = proxy.count("outbound", consul_port);
        let out_cluster = proxy.count("outbound", PORT);
        let in_cluster = proxy.count("inbound", PORT);
        println!(
            "| {} ({}) | {to_consul} | {out_cluster} | {in_cluster} |",
            names[i],
            ip_of(i)
        );
        if to_consul == 0 {
            failures.push(format!(
                "{}: no Consul connection went through the proxy",
                names[i]
            ));
        }
        if out_cluster + in_cluster > 0 {
            failures.push(format!(
                "{}: {} cluster connections went through the proxy",
                names[i],
                out_cluster + in_cluster
            ));
        }
    }
    println!(
        "calls before the kill: {} ok, served by {spread} nodes; after: {} moved calls ok, none on {}",
        before.len(),
        after.len(),
        killed.name
    );
    if spread != NODES {
        failures.push(format!(
            "the calls were served by {spread} nodes, not {NODES}"
        ));
    }
    if moved.is_empty() || !stayed_away {
        failures.push(format!(
            "{} owned {} ids; after the kill they were served by {:?}",
            killed.name,
            moved.len(),
            after.values().collect::<Vec<_>>()
        ));
    }
    driver.shutdown().await?;
    drop(procs);
    for mut p in proxies {
        let _ = p.child.kill().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    if failures.is_empty() {
        println!("transparent proxy: every check holds");
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}
