//! `mesh-node`: a mesh node configured from flags or environment variables,
//! hosting the demo actors (`Player` for capability `game`, `Room` for
//! `chat`). It is the binary of the container image (`Dockerfile`) and of
//! the manifests in `deploy/`, and a template for your own: a real
//! service's binary is this file with its own actors.
//!
//! Discovery is one of: none (a single node), `--seeds`, `--dns-seeds` (a
//! headless Service), or `--consul` (with a local agent, or
//! `--consul-mode observe` against agentless Consul's servers). Node links
//! are mTLS when `--tls-dir` holds `cert.pem`, `key.pem` and `bundle.pem`
//! (reloaded when they change). The cookie comes from `MESH_COOKIE` or
//! `--cookie-file`.
//!
//! Signals: SIGTERM or SIGINT starts a clean shutdown (`Node::shutdown`:
//! stop taking new work, hand the shards off, finish what is in flight,
//! leave; at most `--shutdown-timeout`); a second one exits at once. As a
//! container's PID 1 the node therefore stops on `docker stop` and on a
//! pod's termination; the managed HAProxy, its only child, is waited for
//! by the node itself.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use mesh::consul::{Consul, ConsulHaproxy, ConsulSidecar, Mesh, Observe};
use mesh::discovery::DnsSeeds;
use mesh::prelude::*;

mod actors;
mod diagnose;

/// How the node uses Consul.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ConsulMode {
    /// Register with the local client agent (VMs, Nomad host networking).
    Agent,
    /// Agentless (consul-k8s): read the servers, never register.
    Observe,
}

/// Which sidecar carries node traffic in Consul's mesh mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SidecarMode {
    /// A managed HAProxy, configured from Consul (leaf, upstreams,
    /// intentions): the Debian image, which has HAProxy.
    Haproxy,
    /// The platform runs the proxy; the node only registers it.
    External,
}

/// What to do.
#[derive(Subcommand, Debug)]
enum Command {
    /// Check the settings and the surroundings without starting the node;
    /// print each problem with its fix, exit 1 if there is one.
    Diagnose,
}

/// A mesh node.
#[derive(Parser, Debug)]
#[command(name = "mesh-node", version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Node id (default: $POD_NAME, else $HOSTNAME).
    #[arg(long, env = "MESH_NODE_ID")]
    id: Option<String>,
    /// Cluster name (and, with Consul, the service name unless
    /// --consul-service says otherwise).
    #[arg(long, env = "MESH_CLUSTER", default_value = "mesh")]
    cluster: String,
    /// Where the node listens for its peers.
    #[arg(long, env = "MESH_LISTEN", default_value = "0.0.0.0:7000")]
    listen: String,
    /// The address peers dial (default: the listen address; in a pod,
    /// `$(POD_IP):7000`).
    #[arg(long, env = "MESH_ADVERTISE")]
    advertise: Option<String>,
    /// The capabilities this node hosts: `game` (Player), `chat` (Room).
    #[arg(
        long,
        env = "MESH_CAPABILITIES",
        value_delimiter = ',',
        default_value = "game,chat"
    )]
    capabilities: Vec<String>,
    /// A file holding the cluster cookie (default: $MESH_COOKIE).
    #[arg(long, env = "MESH_COOKIE_FILE")]
    cookie_file: Option<PathBuf>,
    /// mTLS between nodes: a directory with `cert.pem`, `key.pem` and
    /// `bundle.pem`.
    #[arg(long, env = "MESH_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// The admin endpoint (`/livez`, `/readyz`, `/metrics`, the page).
    #[arg(long, env = "MESH_ADMIN")]
    admin: Option<String>,
    /// A file holding the admin token that `POST /admin/drain` needs
    /// (default: $MESH_ADMIN_TOKEN; neither: the drain is refused).
    #[arg(long, env = "MESH_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Ready (`/readyz`) once this many members are seen.
    #[arg(long, env = "MESH_MIN_MEMBERS", default_value_t = 1)]
    min_members: usize,
    /// Static seeds, `host:port` (comma-separated).
    #[arg(long, env = "MESH_SEEDS", value_delimiter = ',')]
    seeds: Vec<String>,
    /// DNS seeds: `name:port`, re-resolved every few seconds (a headless
    /// Service that publishes not-ready pods).
    #[arg(long, env = "MESH_DNS_SEEDS")]
    dns_seeds: Option<String>,
    /// Consul's HTTP address: the local agent, or the servers in observe
    /// mode (default: $CONSUL_HTTP_ADDR, else http://127.0.0.1:8500 when
    /// --consul-mode is given).
    #[arg(long, env = "MESH_CONSUL")]
    consul: Option<String>,
    /// How the node uses Consul.
    #[arg(long, env = "MESH_CONSUL_MODE", value_enum)]
    consul_mode: Option<ConsulMode>,
    /// The Consul service to register or follow.
    #[arg(long, env = "MESH_CONSUL_SERVICE")]
    consul_service: Option<String>,
    /// Observe mode: log in with this auth method (the pod's
    /// service-account token).
    #[arg(long, env = "MESH_CONSUL_LOGIN")]
    consul_login: Option<String>,
    /// Observe mode: the bearer token for the login (default: the pod's
    /// service-account token).
    #[arg(long, env = "MESH_CONSUL_BEARER_TOKEN_FILE")]
    consul_bearer_token_file: Option<PathBuf>,
    /// Observe mode: the service meta key naming each member.
    #[arg(long, env = "MESH_CONSUL_NODE_META")]
    consul_node_meta: Option<String>,
    /// Agent mode through the service mesh: the node registers a Connect
    /// sidecar for itself and its traffic goes through it (listen on
    /// loopback then).
    #[arg(long, env = "MESH_CONSUL_SIDECAR", value_enum)]
    consul_sidecar: Option<SidecarMode>,
    /// The managed HAProxy's directory.
    #[arg(long, env = "MESH_SIDECAR_DIR", default_value = "/tmp/mesh-haproxy")]
    sidecar_dir: PathBuf,
    /// For `diagnose`: the pod's downward API directory, holding its
    /// `annotations` (to check the transparent proxy's exclusions).
    #[arg(long, env = "MESH_PODINFO_DIR")]
    podinfo_dir: Option<PathBuf>,
    /// Durable actor state in this redb file, or a `postgres://` URL.
    #[arg(long, env = "MESH_STATE")]
    state: Option<String>,
    /// How long a shutdown may take (the pod's grace period must be
    /// longer, with the preStop pause).
    #[arg(long, env = "MESH_SHUTDOWN_TIMEOUT_SECS", default_value_t = 25)]
    shutdown_timeout_secs: u64,
}

type Error = Box<dyn std::error::Error>;

/// The node id: the flag, else the pod's name, else the host's.
fn node_id(args: &Args) -> Result<String, Error> {
    args.id
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| "no node id: give --id (or MESH_NODE_ID, POD_NAME, HOSTNAME)".into())
}

fn cookie(args: &Args) -> Result<Vec<u8>, Error> {
    match &args.cookie_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--cookie-file {}: {e}", path.display()))?;
            Ok(text.trim().as_bytes().to_vec())
        }
        None => std::env::var("MESH_COOKIE")
            .map(String::into_bytes)
            .map_err(|_| {
                "no cookie: set MESH_COOKIE or --cookie-file (openssl rand -base64 32)".into()
            }),
    }
}

/// `name:port`.
fn dns_seeds(spec: &str) -> Result<DnsSeeds, Error> {
    let (name, port) = spec
        .rsplit_once(':')
        .ok_or_else(|| format!("--dns-seeds {spec:?}: expected name:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("--dns-seeds {spec:?}: {port:?} is not a port"))?;
    Ok(DnsSeeds::new(name, port))
}

fn consul(args: &Args) -> Consul {
    let mut c = Consul::new();
    if let Some(addr) = &args.consul {
        c = c.address(addr);
    }
    if let Some(s) = &args.consul_service {
        c = c.service(s);
    }
    if args.consul_mode == Some(ConsulMode::Observe) {
        let mut o = Observe::new();
        if let Some(key) = &args.consul_node_meta {
            o = o.node_meta(key);
        }
        if let Some(method) = &args.consul_login {
            o = o.login(method);
            if let Some(path) = &args.consul_bearer_token_file {
                o = o.bearer_token_file(path);
            }
            if let Ok(ns) = std::env::var("POD_NAMESPACE") {
                if let Ok(pod) = std::env::var("POD_NAME") {
                    o = o.login_meta("pod", format!("{ns}/{pod}"));
                }
            }
        }
        c = c.observe(o);
    }
    c
}

fn builder(args: &Args) -> Result<mesh::NodeBuilder, Error> {
    let id = node_id(args)?;
    let mut b = Node::builder()
        .id(&id)
        .cluster(&args.cluster)
        .cookie(cookie(args)?)
        .listen(&args.listen)
        .capabilities(args.capabilities.iter().cloned())
        .min_members(args.min_members)
        .shutdown_timeout(Duration::from_secs(args.shutdown_timeout_secs));
    b = actors::register(b, &args.capabilities);
    if let Some(addr) = &args.advertise {
        b = b.advertise(addr);
    }
    if let Some(addr) = &args.admin {
        b = b.admin(addr);
        let token = match &args.admin_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("--admin-token-file {}: {e}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => std::env::var("MESH_ADMIN_TOKEN").ok(),
        };
        if let Some(token) = token {
            b = b.admin_token(token);
        }
    }
    if let Some(dir) = &args.tls_dir {
        let identity = mesh::identity::FileIdentity::load(
            dir.join("cert.pem"),
            dir.join("key.pem"),
            dir.join("bundle.pem"),
        )?;
        b = b.transport(mesh::transport::tls::Tls::new(identity).transport());
    }
    match &args.state {
        None => {}
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            b = b.state(mesh::state::PgStore::new(url)?);
        }
        Some(path) => b = b.state(mesh::state::RedbStore::open(path)?),
    }
    let sources = [
        !args.seeds.is_empty(),
        args.dns_seeds.is_some(),
        args.consul.is_some() || args.consul_mode.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        return Err("give one discovery: --seeds, --dns-seeds or --consul".into());
    }
    if !args.seeds.is_empty() {
        b = b.seeds(args.seeds.iter().cloned());
    }
    if let Some(spec) = &args.dns_seeds {
        b = b.dns_seeds(dns_seeds(spec)?);
    }
    if sources[2] {
        let c = consul(args);
        b = match args.consul_sidecar {
            None => b.discovery(c),
            Some(_) if args.consul_mode == Some(ConsulMode::Observe) => {
                return Err("--consul-sidecar needs agent mode: an agentless deployment cannot express per-node upstreams".into());
            }
            Some(SidecarMode::Haproxy) => {
                let c = c.through_sidecar(Mesh::new());
                b.mesh(ConsulSidecar::haproxy(
                    c,
                    ConsulHaproxy::new(&args.sidecar_dir),
                ))
            }
            Some(SidecarMode::External) => {
                let c = c.through_sidecar(Mesh::new());
                b.mesh(ConsulSidecar::external(c))
            }
        };
    } else if args.consul_sidecar.is_some() {
        return Err("--consul-sidecar needs --consul".into());
    }
    Ok(b)
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once.
/// The handlers are installed when this is called (before the node
/// starts), so a stop during a slow start is not lost; as PID 1, a signal
/// with no handler would be dropped by the kernel.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("second stop signal: exiting now");
            std::process::exit(130);
        });
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let args = Args::parse();
    if let Some(Command::Diagnose) = args.command {
        let findings = diagnose::run(&args).await;
        for f in &findings {
            println!("{f}");
        }
        let problems = findings.iter().filter(|f| !f.ok).count();
        println!("{problems} problem(s)");
        std::process::exit(if problems == 0 { 0 } else { 1 });
    }
    let stop = stop_signal()?;
    let node = builder(&args)?.start().await?;
    println!(
        "{} listening on {}, cluster {}, capabilities {:?}",
        node.id(),
        node.addr().unwrap_or("?"),
        args.cluster,
        node.capabilities()
    );
    if let Some(admin) = node.admin_addr() {
        println!("admin: http://{admin}/");
    }
    stop.await;
    println!("{}: stopping (shutdown)", node.id());
    node.shutdown().await?;
    println!("{}: left the cluster", node.id());
    Ok(())
}
