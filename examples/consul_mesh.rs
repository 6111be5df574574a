//! The cluster example with Consul as the discovery: each node registers
//! with its local agent and finds its peers there, no seeds needed.
//!
//! Against a real agent (`consul agent -dev` listens on 127.0.0.1:8500):
//!
//! ```sh
//! export MESH_COOKIE=$(openssl rand -base64 32)   # the same on every node
//! cargo run --example consul_mesh -- --consul http://127.0.0.1:8500 --name game-1 --listen 127.0.0.1:7001 --capabilities game
//! cargo run --example consul_mesh -- --consul http://127.0.0.1:8500 --name chat-1 --listen 127.0.0.1:7002 --capabilities chat
//! cargo run --example consul_mesh -- --consul http://127.0.0.1:8500 --name both-1 --listen 127.0.0.1:7003 \
//!     --capabilities game,chat --expect 3 --drive 12
//! ```
//!
//! `consul catalog services -tags` then lists the `example` service with
//! the capabilities as tags. Without Consul, the test agent the test suite
//! uses stands in: `cargo run --example consul_test_agent`. The token comes
//! from `--token` or CONSUL_HTTP_TOKEN; the address from `--consul` or
//! CONSUL_HTTP_ADDR.
//!
//! Plain TCP between nodes assumes a trusted network: in production, run
//! the nodes through the sidecars (below), which carry every frame over
//! mTLS.
//!
//! Through the service mesh (Consul Connect), `--sidecar` puts every byte
//! between nodes through a sidecar proxy (see "Through the service mesh"
//! in `docs/guide/04-mesh-and-tls.md`); the node then listens on loopback only:
//!
//! ```sh
//! # a managed HAProxy per node, configured from Consul (leaf, upstreams, intentions)
//! cargo run --example consul_mesh -- --name a --listen 127.0.0.1:7001 --capabilities game --sidecar haproxy
//! # the platform runs the proxy (the node only registers it)
//! cargo run --example consul_mesh -- --name a --listen 127.0.0.1:7001 --capabilities game --sidecar external
//! # a supervised command; {{id}} is the per-node service ID
//! cargo run --example consul_mesh -- --name a --listen 127.0.0.1:7001 --capabilities game \
//!     --sidecar command "consul connect proxy -sidecar-for {{id}}"
//! ```
//!
//! **Agentless Consul** (`--observe`, `Consul::observe`): the platform
//! (consul-k8s) registers the node, which only reads the servers, named by
//! its `pod-name` meta (= `--name`); `--login <auth method>` logs in with
//! `--bearer-token-file` (`tests/tproxy.rs` runs it so, in namespaces):
//!
//! ```sh
//! cargo run --example consul_mesh -- --name mesh-0 --listen 10.1.2.3:7000 --capabilities game \
//!     --consul https://consul-server.consul.svc:8501 --service mesh --observe --login consul-k8s-auth-method
//! ```
//!
//! **Strong single activation** (`--strong`, see `mesh::lease`): at most
//! one activation of an id at a time across the cluster, under Consul
//! leases. With `--capabilities bank` the node hosts `Account`, whose
//! balance lives in Consul KV and is written with a fenced write:
//!
//! ```sh
//! cargo run --example consul_mesh -- --name a --listen 127.0.0.1:7001 --capabilities bank --strong
//! ```
//!
//! With `--pg "host=/run/postgresql dbname=bank"` it also hosts
//! `StateAccount`, whose balance is a `#[state]` field in PostgreSQL
//! (`mesh::state::PgStore`): the state store the cluster shares, the
//! writes fenced by the store itself in strong mode. It also hosts the
//! chaos suite's reminder probe (`mesh_testkit::actors::Beacon`, durable
//! reminders: `mesh::reminder`), logging its ticks to `--ticks`.

use std::time::Duration;

use clap::Parser;
use mesh::consul::{Consul, Mesh, Observe};
use mesh::consul::{ConsulHaproxy, ConsulSidecar};
use mesh::lease::Strong;
use mesh::prelude::*;

#[path = "common/mod.rs"]
mod common;

/// One mesh node discovering its peers through Consul. The cookie comes
/// from MESH_COOKIE.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    node: common::NodeArgs,
    /// The Consul agent's HTTP address (default: CONSUL_HTTP_ADDR, else
    /// http://127.0.0.1:8500).
    #[arg(long)]
    consul: Option<String>,
    /// ACL token (default: CONSUL_HTTP_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// Leave (deregister) after driving instead of waiting for Ctrl-C.
    #[arg(long)]
    exit: bool,
    /// Health check heartbeat in milliseconds (TTL: 3 of them unless
    /// `--ttl-ms` says).
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// The health check's TTL in milliseconds.
    #[arg(long)]
    ttl_ms: Option<u64>,
    /// Strong single activation: Consul leases per shard (`mesh::lease`).
    #[arg(long)]
    strong: bool,
    /// Keep bank balances in PostgreSQL (`mesh::state::PgStore`): with
    /// `--capabilities bank` the node also hosts `StateAccount`, whose
    /// balance is a `#[state]` field (a libpq connection string or URL).
    #[arg(long)]
    pg: Option<String>,
    /// With `--pg`: where the chaos suite's reminder probes
    /// (`mesh_testkit::actors::Beacon`) log their ticks.
    #[arg(long)]
    ticks: Option<std::path::PathBuf>,
    /// The reminder keeper's budget, in ticks per second
    /// (`ReminderOptions::budget`).
    #[arg(long)]
    reminder_budget: Option<u32>,
    /// How often the reminder keeper loads, in milliseconds
    /// (`ReminderOptions::refresh`).
    #[arg(long)]
    reminder_refresh_ms: Option<u64>,
    /// Strong mode against a test agent whose time runs faster
    /// (`Strong::time_scale`); 1 with a real Consul.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Through the service mesh: `haproxy` (managed), `external`, or
    /// `command "<template>"` (`{{id}}` = the per-node service ID). The
    /// node registers a Connect sidecar for itself and listens on
    /// loopback only.
    #[arg(long, num_args = 1..=2, value_names = ["MODE", "TEMPLATE"])]
    sidecar: Vec<String>,
    /// The sidecar's public port (default: the agent's choice from
    /// 21000-21255; 0: a free one, for several nodes on one host with the
    /// test agent).
    #[arg(long)]
    sidecar_port: Option<u16>,
    /// The managed HAProxy's directory (default: a temporary one per node).
    #[arg(long)]
    sidecar_dir: Option<std::path::PathBuf>,
    /// Observe mode, for agentless Consul (`Consul::observe`): read the
    /// servers' API only, never register; the platform (consul-k8s)
    /// registers the node, named by its `pod-name` meta (= `--name`).
    #[arg(long)]
    observe: bool,
    /// The Consul service to follow (default: the cluster name).
    #[arg(long)]
    service: Option<String>,
    /// With `--observe`: log in with this auth method
    /// (`POST /v1/acl/login`).
    #[arg(long, requires = "observe")]
    login: Option<String>,
    /// With `--login`: the bearer token file (default: the Kubernetes
    /// service-account token).
    #[arg(long, requires = "login")]
    bearer_token_file: Option<std::path::PathBuf>,
    /// With `--login`: meta of the login token, `key=value` (repeatable).
    #[arg(long, requires = "login")]
    login_meta: Vec<String>,
}

/// The sidecar asked for on the command line, if any.
fn sidecar(args: &Args, consul: &Consul) -> Result<Option<ConsulSidecar>, String> {
    let Some(mode) = args.sidecar.first() else {
        return Ok(None);
    };
    let consul = consul.clone();
    match (mode.as_str(), args.sidecar.get(1)) {
        ("haproxy", None) => {
            let dir = args.sidecar_dir.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("mesh-sidecar-{}", args.node.name))
            });
            Ok(Some(ConsulSidecar::haproxy(consul, ConsulHaproxy::new(dir))))
        }
        ("external", None) => Ok(Some(ConsulSidecar::external(consul))),
        ("command", Some(template)) => Ok(Some(ConsulSidecar::command(consul, template))),
        ("command", None) => Err("--sidecar command needs a template: --sidecar command \"consul connect proxy -sidecar-for {{id}}\"".into()),
        (other, _) => Err(format!(
            "--sidecar {other}: expected haproxy, external or command \"<template>\""
        )),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logs();
    let args = Args::parse();
    let mut consul = Consul::new().heartbeat(Duration::from_millis(args.heartbeat_ms));
    if let Some(addr) = &args.consul {
        consul = consul.address(addr);
    }
    if let Some(token) = &args.token {
        consul = consul.token(token);
    }
    if let Some(ttl) = args.ttl_ms {
        consul = consul.ttl(Duration::from_millis(ttl));
    }
    if let Some(service) = &args.service {
        consul = consul.service(service);
    }
    if args.observe {
        let mut o = Observe::new();
        if let Some(method) = &args.login {
            o = o.login(method);
            if let Some(path) = &args.bearer_token_file {
                o = o.bearer_token_file(path);
            }
            for kv in &args.login_meta {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--login-meta {kv:?}: expected key=value"))?;
                o = o.login_meta(k, v);
            }
        }
        consul = consul.observe(o);
    }
    if !args.sidecar.is_empty() {
        let mut m = Mesh::new();
        if let Some(port) = args.sidecar_port {
            m = m.sidecar_port(port);
        }
        consul = consul.through_sidecar(m);
    }
    let mut builder = common::builder(&args.node)?;
    if args.node.capabilities.iter().any(|c| c == "bank") {
        builder = builder.actor::<Account>().provide(consul.clone());
        if let Some(pg) = &args.pg {
            builder = builder
                .actor::<StateAccount>()
                .actor::<mesh_testkit::actors::Beacon>()
                .state(mesh::state::PgStore::new(pg)?);
            let mut reminders = mesh::reminder::ReminderOptions::default();
            if let Some(budget) = args.reminder_budget {
                reminders.budget = budget;
            }
            if let Some(ms) = args.reminder_refresh_ms {
                reminders.refresh = Duration::from_millis(ms);
            }
            builder = builder.reminders(reminders);
            if let Some(path) = &args.ticks {
                builder = builder.provide(mesh_testkit::actors::TickLog::append(path)?);
            }
        }
    }
    if args.strong {
        builder = builder.strong(Strong::new().time_scale(args.time_scale));
    }
    let node = match sidecar(&args, &consul)? {
        None => builder.discovery(consul.clone()).start().await?,
        Some(s) => builder.mesh(s).start().await?,
    };
    if let Some(local) = consul.local_sidecar() {
        println!(
            "through the mesh: {} (sidecar {} on {}, SPIFFE ID {})",
            local.service_name, local.proxy_id, local.public, local.spiffe_id
        );
    }
    if args.observe {
        println!(
            "{} listening on {}, observing consul (nothing registered)",
            node.id(),
            node.addr().unwrap_or("?"),
        );
    } else {
        println!(
            "{} listening on {}, registered in consul as {:?}",
            node.id(),
            node.addr().unwrap_or("?"),
            consul.services().await?
        );
    }
    #[cfg(feature = "admin")]
    if let Some(admin) = node.admin_addr() {
        println!("admin page: http://{admin}/");
    }
    let watcher = common::print_membership(&node);
    if args.node.drive > 0 {
        common::drive(&node, args.node.expect, args.node.drive).await?;
    }
    if !args.exit {
        common::stop_signal().await;
    }
    watcher.abort();
    node.shutdown().await?;
    println!("{} deregistered and left the cluster", args.node.name);
    Ok(())
}

/// A bank account (capability `bank`): its balance lives in Consul KV at
/// `accounts/<id>`, read when it activates and written on every deposit,
/// with a fenced write on a strong node (`Consul::fenced_put`: refused
/// once another node owns the account), a plain one otherwise.
#[derive(Actor)]
#[actor(capability = "bank", activate = Account::load)]
struct Account {
    balance: u64,
    key: String,
}

impl Account {
    async fn load(id: &str, ctx: &Ctx) -> Result<Self, String> {
        let consul = ctx.get::<Consul>().map_err(|e| e.to_string())?;
        let key = format!("accounts/{id}");
        let balance = match consul.kv_get(&key).await.map_err(|e| e.to_string())? {
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("{key}: not a number"))?,
            None => 0,
        };
        Ok(Account { balance, key })
    }
}

/// Adds to the balance; replies with the new balance, or why the write
/// was refused.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<u64, String>)]
struct Deposit(u64);

#[mesh::handlers]
impl Account {
    async fn deposit(&mut self, Deposit(n): Deposit, ctx: &Ctx) -> Result<u64, String> {
        let consul = ctx.get::<Consul>().map_err(|e| e.to_string())?;
        let next = self.balance + n;
        let value = next.to_string();
        let written = match ctx.fence() {
            Some(fence) => consul
                .fenced_put(&fence, &self.key, value.as_bytes())
                .await
                .map(drop),
            None => consul.kv_put(&self.key, value.as_bytes()).await,
        };
        match written {
            Ok(()) => {
                self.balance = next;
                Ok(next)
            }
            Err(e) => {
                // Stale: another node may own this account now.
                ctx.deactivate();
                Err(e.to_string())
            }
        }
    }
}

/// The same account with its balance in the node's state store (`--pg`):
/// a `#[state]` field, loaded (and in strong mode claimed with the shard's
/// fencing token) at activation, written before each deposit's reply; the
/// store refuses a stale or fenced write, and the call then fails with
/// `Error::State`.
#[derive(Actor)]
#[actor(capability = "bank")]
struct StateAccount {
    #[state]
    balance: mesh::state::State<u64>,
}

#[mesh::handlers]
impl StateAccount {
    async fn deposit(&mut self, Deposit(n): Deposit) -> Result<u64, String> {
        *self.balance += n;
        Ok(*self.balance)
    }
}
