//! `mesh-node diagnose`: checks a node's settings (the same flags and
//! `MESH_*` variables as a run) and its surroundings without starting the
//! node, and prints each problem with its fix; exits 1 when there is one.
//!
//! Checked: the node id; the cookie's strength; the TLS files; that the
//! listen address can be bound; each seed (looked up as the node would,
//! then dialed); the DNS seeds' name (its addresses, each dialed); with
//! Consul, everything `Consul::diagnose` checks (reachable, leader, clock,
//! login, token, the service and this node's entry, Connect); the managed
//! sidecar's HAProxy; and, in a pod whose annotations the downward API
//! exposes (`--podinfo-dir`), that a transparent proxy lets the cluster
//! port through both ways.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use mesh::consul::Finding;

use crate::{consul, cookie, dns_seeds, node_id, Args, ConsulMode, SidecarMode};

/// How long one dial may take.
const DIAL: Duration = Duration::from_secs(3);

/// Every check, in order.
pub async fn run(args: &Args) -> Vec<Finding> {
    let mut out = Vec::new();
    let id = match node_id(args) {
        Ok(id) => {
            out.push(Finding::pass("node id", id.clone()));
            id
        }
        Err(e) => {
            out.push(Finding::fail(
                "node id",
                e.to_string(),
                "set MESH_NODE_ID, or POD_NAME from the downward API (fieldRef metadata.name)",
            ));
            String::from("?")
        }
    };
    match cookie(args) {
        Ok(c) => {
            let bits = mesh::wire::cookie_bits(&c);
            if bits >= mesh::wire::MIN_COOKIE_BITS {
                out.push(Finding::pass("cookie", format!("about {bits:.0} bits")));
            } else {
                out.push(Finding::fail(
                    "cookie",
                    format!("about {bits:.0} bits: a node refuses less than 128"),
                    "generate one: openssl rand -base64 32 (the same on every node)",
                ));
            }
        }
        Err(e) => out.push(Finding::fail(
            "cookie",
            e.to_string(),
            "mount the cluster's secret and set MESH_COOKIE_FILE, or MESH_COOKIE",
        )),
    }
    match &args.tls_dir {
        None => out.push(Finding::pass(
            "tls",
            "no --tls-dir: node links are plain TCP, for a trusted network only",
        )),
        Some(dir) => match mesh::identity::FileIdentity::load(
            dir.join("cert.pem"),
            dir.join("key.pem"),
            dir.join("bundle.pem"),
        ) {
            Ok(_) => out.push(Finding::pass(
                "tls",
                format!("{}: cert.pem, key.pem and bundle.pem load", dir.display()),
            )),
            Err(e) => out.push(Finding::fail(
                "tls",
                format!("{}: {e}", dir.display()),
                "the directory must hold cert.pem (the chain), key.pem (its PKCS#8 key) and bundle.pem (the roots peers are checked against); mount the TLS secret there",
            )),
        },
    }
    match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(_) => out.push(Finding::pass("listen", format!("{} can be bound", args.listen))),
        Err(e) => out.push(Finding::fail(
            "listen",
            format!("{}: {e}", args.listen),
            "another process holds the port, or the address is not this host's: listen on 0.0.0.0:<port> and advertise the pod IP (MESH_ADVERTISE)",
        )),
    }
    for seed in &args.seeds {
        dial(&format!("seed {seed}"), seed, &mut out).await;
    }
    if let Some(spec) = &args.dns_seeds {
        dns(spec, &mut out).await;
    }
    if args.consul.is_some() || args.consul_mode.is_some() {
        out.extend(consul(args).diagnose(&args.cluster, &id).await);
    }
    if args.consul_sidecar == Some(SidecarMode::Haproxy) {
        haproxy(&mut out).await;
    }
    if let Some(dir) = &args.podinfo_dir {
        exclusions(args, dir, &mut out);
    }
    out
}

/// Looks `addr` up as the node would and dials each address.
async fn dial(check: &str, addr: &str, out: &mut Vec<Finding>) {
    let addrs = match mesh::discovery::lookup(addr).await {
        Ok(a) if !a.is_empty() => a,
        Ok(_) | Err(_) => {
            out.push(Finding::fail(
                check,
                format!("{addr} has no address"),
                "check the name and the resolver (/etc/resolv.conf)",
            ));
            return;
        }
    };
    for a in addrs {
        match tokio::time::timeout(DIAL, tokio::net::TcpStream::connect(a)).await {
            Ok(Ok(_)) => out.push(Finding::pass(check, format!("{a} accepts connections"))),
            Ok(Err(e)) => out.push(Finding::fail(
                check,
                format!("{a}: {e}"),
                "is a node running there, on that port? (a seed that is down is fine while others answer)",
            )),
            Err(_) => out.push(Finding::fail(
                check,
                format!("{a}: no answer within {DIAL:?}"),
                "a firewall or NetworkPolicy drops the cluster port, or the host is gone",
            )),
        }
    }
}

/// The DNS seeds' name: its addresses, each dialed.
async fn dns(spec: &str, out: &mut Vec<Finding>) {
    if let Err(e) = dns_seeds(spec) {
        out.push(Finding::fail(
            "dns seeds",
            e.to_string(),
            "give name:port, e.g. mesh-peers.apps.svc.cluster.local:7000",
        ));
        return;
    }
    match mesh::discovery::lookup(spec).await {
        Ok(addrs) if !addrs.is_empty() => {
            out.push(Finding::pass(
                "dns seeds",
                format!("{spec}: {} addresses", addrs.len()),
            ));
            for a in addrs {
                dial(&format!("dns seed {a}"), &a.to_string(), out).await;
            }
        }
        Ok(_) | Err(_) => out.push(Finding::fail(
            "dns seeds",
            format!("{spec}: no address"),
            "the headless Service's full name (<service>.<namespace>.svc.cluster.local), with publishNotReadyAddresses: true so that pods are listed before they are ready",
        )),
    }
}

/// Consul's default sidecar port range (`ports.sidecar_min_port` to
/// `sidecar_max_port`), where the agent places a node's sidecar.
const SIDECAR_PORTS: std::ops::RangeInclusive<u16> = 21000..=21255;

/// The managed sidecar's HAProxy, and a free port for it to listen on.
async fn haproxy(out: &mut Vec<Finding>) {
    let mut free = 0;
    for port in SIDECAR_PORTS {
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            free += 1;
        }
    }
    if free == 0 {
        out.push(Finding::fail(
            "sidecar ports",
            format!("no port of Consul's sidecar range {SIDECAR_PORTS:?} is free here"),
            "free some, or move the range (the agent's ports.sidecar_min_port and sidecar_max_port)",
        ));
    } else {
        out.push(Finding::pass(
            "sidecar ports",
            format!("{free} ports of Consul's sidecar range {SIDECAR_PORTS:?} are free"),
        ));
    }
    match tokio::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .await
    {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout);
            out.push(Finding::pass(
                "sidecar",
                v.lines().next().unwrap_or("haproxy").trim().to_owned(),
            ));
        }
        _ => out.push(Finding::fail(
            "sidecar",
            "MESH_CONSUL_SIDECAR=haproxy but haproxy does not run here",
            "install HAProxy (2.6 or later): use the Debian image, deploy/image/Dockerfile.haproxy",
        )),
    }
}

/// Reads the downward API's `annotations` file (`key="value"` lines).
fn annotations(dir: &Path) -> Option<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("annotations")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
            .collect(),
    )
}

/// Under consul-k8s's transparent proxy, the cluster port must be excluded
/// both ways (the guide's "Deploying", `docs/guide/08-deploying.md`).
fn exclusions(args: &Args, dir: &Path, out: &mut Vec<Finding>) {
    let Some(ann) = annotations(dir) else {
        out.push(Finding::fail(
            "proxy exclusions",
            format!("no annotations file in {}", dir.display()),
            "mount the pod's annotations with a downwardAPI volume (items: path annotations, fieldRef metadata.annotations)",
        ));
        return;
    };
    let injected = ann
        .get("consul.hashicorp.com/connect-inject")
        .map(String::as_str)
        == Some("true");
    let tproxy = ann
        .get("consul.hashicorp.com/transparent-proxy")
        .map(String::as_str)
        != Some("false");
    if !injected || !tproxy {
        out.push(Finding::pass(
            "proxy exclusions",
            "no transparent proxy in this pod: nothing to exclude",
        ));
        return;
    }
    let port = args.listen.rsplit(':').next().unwrap_or("7000").to_owned();
    for way in ["inbound", "outbound"] {
        let key = format!("consul.hashicorp.com/transparent-proxy-exclude-{way}-ports");
        let listed = ann
            .get(&key)
            .is_some_and(|v| v.split(',').any(|p| p.trim() == port));
        if listed {
            out.push(Finding::pass(
                "proxy exclusions",
                format!("{way}: port {port} is excluded"),
            ));
        } else {
            out.push(Finding::fail(
                "proxy exclusions",
                format!("{way}: port {port} goes through the transparent proxy, which never routes a service to itself"),
                format!("annotate the pod: {key}: \"{port}\" (and keep mTLS in process: MESH_TLS_DIR)"),
            ));
        }
    }
    if args.consul_mode != Some(ConsulMode::Observe) {
        out.push(Finding::fail(
            "proxy exclusions",
            "consul-k8s injects this pod, but the node does not run in observe mode",
            "set MESH_CONSUL_MODE=observe: consul-k8s registers the pod, there is no local agent",
        ));
    }
}
