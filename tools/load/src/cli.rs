//! The command line and what each command does.
//!
//! Contract:
//! - `mesh-load serve --listen ADDR [--seeds A,B] [--cookie C] [--name N]
//!   [--state STORE]` runs a node hosting the benchmark actors (the
//!   stateful ones on STORE, see [`StateArgs`]) and prints
//!   `listening on ADDR` (the bound address, port 0 resolved) as a line on
//!   stdout once it accepts peers; it runs until Ctrl-C or SIGTERM, then
//!   leaves the cluster.
//! - `mesh-load run SCENARIO [...]` drives a scenario, against an embedded
//!   node in this process when neither `--seeds` nor `--consul` is given, or else as a client
//!   node (no capabilities, hosts nothing, unless `--host`) joined to the
//!   cluster; it waits for a member hosting `bench` first. It prints the
//!   summary on stdout, progress on stderr, writes the outputs into `--out`.
//!   Exit codes: 0 ok, 1 a failure to run, 2 bad usage, 3
//!   ([`crate::EXIT_THRESHOLDS`]) a threshold breached or no rate met the SLO.
//! - `mesh-load compare A.json B.json [--fail-if-worse PCT]` prints the
//!   deltas, warns when the configurations differ, and exits 4
//!   ([`crate::EXIT_REGRESSION`]) when B is worse beyond PCT percent.
//!
//! The model: `--rate` is open-loop (`--poisson` for Poisson arrivals),
//! `--slo` the adaptive search (from `--rate`, default 1000/s), and
//! otherwise closed-loop (`--concurrency`, default per scenario).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};
use mesh::Node;
use tokio::time::Instant;

use crate::env::Env;
use crate::model::{self, ClosedLoop, OpenLoop, Search, Stop};
use crate::progress::Progress;
use crate::record::Recorder;
use crate::report::{self, Inputs, ModelCfg, RunConfig, RunResult};
use crate::scenario::{self, Custom, ScenarioCfg, ScenarioKind};
use crate::threshold::Threshold;

/// `mesh-load`: load generator and reports for mesh actor workloads.
#[derive(Debug, Parser)]
#[command(name = "mesh-load", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node hosting the benchmark actors; prints `listening on ADDR`.
    Serve(Box<ServeArgs>),
    /// Drive a scenario against an embedded node or a cluster.
    Run(Box<RunArgs>),
    /// Compare two result.json files.
    Compare(CompareArgs),
    /// The same scenario and load through each transport (plain TCP,
    /// in-process mTLS, Connect sidecars), between server processes this
    /// starts, in one report.
    Transports(Box<crate::transports::TransportsArgs>),
}

/// Joining a cluster.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Peers to dial, comma-separated host:port (none: embedded node).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// The cluster's shared secret (default: $MESH_COOKIE).
    #[arg(long)]
    pub cookie: Option<String>,
    /// The cluster name.
    #[arg(long, default_value = "mesh-load")]
    pub cluster: String,
    /// This node's id (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// Discover peers through the Consul agent at this HTTP address
    /// (e.g. http://127.0.0.1:8500) instead of, or besides, --seeds.
    #[arg(long)]
    pub consul: Option<String>,
    /// mTLS between nodes, in process: a directory holding `cert.pem`,
    /// `key.pem` and `bundle.pem` (as `mesh-node --tls-dir`; every node of
    /// the cluster needs certificates of the same trust domain).
    #[arg(long, conflicts_with_all = ["consul_sidecar", "tls_connect"])]
    pub tls_dir: Option<PathBuf>,
    /// mTLS between nodes, in process, with certificates from Consul
    /// Connect (needs --consul): the agent's leaf for the cluster's
    /// service (`--cluster`) and its roots, renewed as the agent rotates
    /// them.
    #[arg(long, requires = "consul", conflicts_with = "consul_sidecar")]
    pub tls_connect: bool,
    /// Through Consul's service mesh (needs --consul): the node registers
    /// a Connect sidecar for itself and every byte to other nodes goes
    /// through sidecars: `haproxy` (managed by the node) or `external`
    /// (one you run, e.g. `consul connect proxy -sidecar-for ID`).
    #[arg(long, value_enum, requires = "consul")]
    pub consul_sidecar: Option<SidecarMode>,
    /// The managed HAProxy's working directory (default: one per node in
    /// the temporary directory).
    #[arg(long)]
    pub sidecar_dir: Option<PathBuf>,
}

/// Which sidecar carries node traffic through Consul's mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarMode {
    /// A HAProxy the node renders and supervises.
    Haproxy,
    /// A sidecar the operator runs (Consul's proxy, Envoy).
    External,
}

impl ClusterArgs {
    fn cookie(&self) -> Result<String, String> {
        self.cookie
            .clone()
            .or_else(|| std::env::var("MESH_COOKIE").ok())
            .ok_or_else(|| "a cluster needs a cookie: --cookie or MESH_COOKIE".to_owned())
    }

    async fn builder(&self) -> Result<mesh::NodeBuilder, String> {
        let mut b = Node::builder()
            .cluster(&self.cluster)
            .cookie(self.cookie()?)
            .seeds(self.seeds.iter().cloned());
        if let Some(n) = &self.name {
            b = b.id(n);
        }
        if let Some(dir) = &self.tls_dir {
            let identity = mesh::identity::FileIdentity::load(
                dir.join("cert.pem"),
                dir.join("key.pem"),
                dir.join("bundle.pem"),
            )
            .map_err(|e| format!("--tls-dir {}: {e}", dir.display()))?;
            b = b.transport(mesh::transport::tls::Tls::new(identity).transport());
        }
        if let (true, Some(url)) = (self.tls_connect, &self.consul) {
            let identity = mesh::consul::ConsulIdentity::start(url, &self.cluster)
                .await
                .map_err(|e| {
                    format!("--tls-connect: the Connect leaf of {:?}: {e}", self.cluster)
                })?;
            b = b.transport(mesh::transport::tls::Tls::new(identity).transport());
        }
        if let Some(url) = &self.consul {
            let consul = mesh::consul::Consul::new().address(url);
            b = match self.consul_sidecar {
                None => b.discovery(consul),
                Some(mode) => {
                    use mesh::consul::{ConsulHaproxy, ConsulSidecar, Mesh};
                    let consul = consul.through_sidecar(Mesh::new());
                    b.mesh(match mode {
                        SidecarMode::Haproxy => {
                            let dir = self.sidecar_dir.clone().unwrap_or_else(|| {
                                std::env::temp_dir().join(format!(
                                    "mesh-load-haproxy-{}-{}",
                                    self.name.as_deref().unwrap_or("node"),
                                    std::process::id()
                                ))
                            });
                            ConsulSidecar::haproxy(consul, ConsulHaproxy::new(dir))
                        }
                        SidecarMode::External => ConsulSidecar::external(consul),
                    })
                }
            };
        }
        Ok(b)
    }

    /// How node traffic goes: `tcp`, `mtls`, `mtls:connect` or
    /// `sidecar:haproxy|external`
    /// (for the report).
    pub fn transport(&self) -> String {
        match (&self.tls_dir, self.consul_sidecar) {
            (_, Some(SidecarMode::Haproxy)) => "sidecar:haproxy".into(),
            (_, Some(SidecarMode::External)) => "sidecar:external".into(),
            (Some(_), None) => "mtls".into(),
            (None, None) if self.tls_connect => "mtls:connect".into(),
            (None, None) => "tcp".into(),
        }
    }

    /// Whether a cluster is to be joined at all.
    fn clustered(&self) -> bool {
        !self.seeds.is_empty() || self.consul.is_some()
    }
}

/// Where this node's stateful benchmark actors keep their state.
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// The state store of this node's `StatefulBench` actors (the
    /// `stateful` scenario): `redb:PATH` (the embedded store, fsync on),
    /// `postgres:CONFIG` (a libpq connection string or a postgresql://
    /// URL), or `memory`. Default: none, except that an embedded `run
    /// stateful` uses a redb file in a temporary directory.
    #[arg(long)]
    pub state: Option<String>,
    /// With `postgres:`: the PEM roots of the server's CA, for TLS
    /// (verified; `mesh::state::PgOptions::ca`).
    #[arg(long)]
    pub state_ca: Option<PathBuf>,
    /// With `postgres:`: the pool's connections.
    #[arg(long, default_value_t = 16)]
    pub state_pool: usize,
}

impl StateArgs {
    /// `b` with the store `spec` names (see [`StateArgs::state`]); what to
    /// call it in the report.
    fn apply(
        &self,
        b: mesh::NodeBuilder,
        spec: &str,
    ) -> Result<(mesh::NodeBuilder, String), String> {
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        match kind {
            "memory" => Ok((b.state(mesh::state::MemoryStore::new()), "memory".into())),
            "redb" if !rest.is_empty() => {
                let store = mesh::state::RedbStore::open(rest)
                    .map_err(|e| format!("--state {spec}: {e}"))?;
                Ok((b.state(store), format!("redb ({rest}, fsync on)")))
            }
            "postgres" if !rest.is_empty() => {
                let ca = match &self.state_ca {
                    Some(path) => Some(
                        std::fs::read(path)
                            .map_err(|e| format!("--state-ca {}: {e}", path.display()))?,
                    ),
                    None => None,
                };
                let tls = if ca.is_some() { ", TLS" } else { "" };
                let options = mesh::state::PgOptions {
                    pool: self.state_pool,
                    ca,
                    ..mesh::state::PgOptions::default()
                };
                let store = mesh::state::PgStore::with_options(rest, options)
                    .map_err(|e| format!("--state {spec}: {e}"))?;
                let label = format!("postgres (pool {}{tls})", self.state_pool);
                Ok((b.state(store), label))
            }
            _ => Err(format!(
                "--state {spec:?}: expected memory, redb:PATH or postgres:CONFIG"
            )),
        }
    }
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// host:port to accept peers on (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// The address peers are told to dial, when not --listen's (a node
    /// listening on 0.0.0.0:7101 advertises 10.0.0.5:7101).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Cluster settings.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The state store.
    #[command(flatten)]
    pub state: StateArgs,
}

/// `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The scenario: activation-storm, hot, uniform, zipf, fan-out,
    /// ping-pong, payload, stateful, elixir-creation, elixir-hot, or one of
    /// the program's own (`mesh_load::scenario::Custom`).
    #[arg(value_name = "SCENARIO")]
    pub scenario: String,
    /// Open-loop: intended calls per second (with --slo: the first step's rate).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open-loop arrivals as a Poisson process instead of a fixed interval.
    #[arg(long)]
    pub poisson: bool,
    /// Closed-loop: this many workers (default: per scenario).
    #[arg(long, conflicts_with_all = ["rate", "slo"])]
    pub concurrency: Option<usize>,
    /// Adaptive: find the highest rate meeting this SLO, e.g. 'p99<5ms'.
    #[arg(long)]
    pub slo: Option<String>,
    /// Adaptive: at most this many steps.
    #[arg(long, default_value_t = 6)]
    pub steps: usize,
    /// Adaptive: how long each step runs.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub step_duration: Duration,
    /// How long to run (default 10s, unless --calls or a preset says).
    #[arg(long, value_parser = parse_duration, conflicts_with = "calls")]
    pub duration: Option<Duration>,
    /// Make exactly this many calls.
    #[arg(long)]
    pub calls: Option<u64>,
    /// Open-loop: calls intended and not completed beyond which one is dropped.
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: u64,
    /// Open-loop: calls sent at once (like wrk2 connections); others wait,
    /// in latency but not service time. Default: no limit.
    #[arg(long)]
    pub connections: Option<usize>,
    /// Actors the keys spread over (default: per scenario).
    #[arg(long)]
    pub actors: Option<u64>,
    /// Zipf exponent (zipf scenario).
    #[arg(long, default_value_t = 1.1)]
    pub zipf_s: f64,
    /// Leaves each hub calls (fan-out scenario).
    #[arg(long, default_value_t = 8)]
    pub fanout: u32,
    /// Payload bytes in every message (default: 0; payload scenario 4096).
    #[arg(long)]
    pub payload: Option<usize>,
    /// Each call's deadline.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Seed of the key choice and Poisson gaps.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A CI gate, e.g. 'p99<2ms', 'error_rate<1%', 'rps>1000' (repeatable):
    /// exit 3 when one is breached.
    #[arg(long = "threshold")]
    pub thresholds: Vec<String>,
    /// Write the reports into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Cluster settings (no --seeds: an embedded node).
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The state store of the embedded node, or of this one with --host.
    #[command(flatten)]
    pub state: StateArgs,
    /// In a cluster, host benchmark actors on this node too (some calls
    /// are then local); it listens on --listen.
    #[arg(long)]
    pub host: bool,
    /// Where a hosting (or Consul-registered) client node listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// How long to wait for the members hosting `bench`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub wait: Duration,
    /// Wait until this many other members host `bench` before the load
    /// starts (a cluster still forming would be measured otherwise).
    #[arg(long, default_value_t = 1)]
    pub expect: usize,
}

/// `compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The baseline result.json.
    pub a: PathBuf,
    /// The result.json compared with it.
    pub b: PathBuf,
    /// Exit 4 when a figure of B is worse than A's by more than this percent.
    #[arg(long)]
    pub fail_if_worse: Option<f64>,
}

/// Parses `500ms`, `2s`, `1m`, `1.5s`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit {unit:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs a parsed command line; returns the exit code.
pub fn main(cli: Cli) -> Result<i32, String> {
    main_with(cli, Vec::new())
}

/// [`main`] for a program with scenarios of its own: `run NAME` runs the
/// [`Custom`] scenario of that name with every option of `run` (models,
/// rate, thresholds, outputs, cluster, `--host`), and every output names
/// it. A name of a built-in scenario runs the built-in one.
pub fn main_with(cli: Cli, scenarios: Vec<Custom>) -> Result<i32, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(a) => serve(*a, &scenarios).await,
            Command::Transports(a) => crate::transports::run(*a, &scenarios).await,
            Command::Run(a) => run(*a, &scenarios).await,
            Command::Compare(a) => compare(a),
        }
    })
}

async fn serve(a: ServeArgs, customs: &[Custom]) -> Result<i32, String> {
    let mut b = a.cluster.builder().await?.listen(&a.listen);
    if let Some(addr) = &a.advertise {
        b = b.advertise(addr);
    }
    // The benchmark actors, and the program's own scenarios' (what a
    // `main_with` program serves).
    let mut b = crate::actors::host(b);
    for host in customs.iter().filter_map(Custom::hosting) {
        b = host(b);
    }
    if let Some(spec) = &a.state.state {
        b = a.state.apply(b, spec)?.0;
    }
    let node = b
        .start()
        .await
        .map_err(|e| format!("starting the node: {e}"))?;
    let addr = node.addr().unwrap_or("?").to_owned();
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {addr}");
        let _ = writeln!(out, "node {}", node.id());
        let _ = out.flush();
    }
    wait_for_signal().await;
    node.shutdown().await.map_err(|e| e.to_string())?;
    Ok(0)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

impl RunArgs {
    /// The built-in scenario it names, or [`ScenarioKind::Custom`].
    pub fn kind(&self) -> ScenarioKind {
        <ScenarioKind as ValueEnum>::from_str(&self.scenario, false).unwrap_or(ScenarioKind::Custom)
    }
}

/// The model a run's arguments ask for.
pub fn model_of(a: &RunArgs) -> ModelCfg {
    let preset = a.kind().preset();
    let stop = match (a.calls, a.duration, preset) {
        (Some(n), _, _) => Stop::Calls(n),
        (None, Some(d), _) => Stop::Duration(d),
        (None, None, Some((_, n))) => Stop::Calls(n),
        (None, None, None) => Stop::Duration(Duration::from_secs(10)),
    };
    if let Some(slo) = &a.slo {
        ModelCfg::Adaptive(Search {
            slo: slo.clone(),
            start_rate: a.rate.unwrap_or(1000.0),
            step: a.step_duration,
            max_steps: a.steps,
            poisson: a.poisson,
            seed: a.seed,
            max_in_flight: a.max_in_flight,
            connections: a.connections,
        })
    } else if let Some(rate) = a.rate {
        ModelCfg::OpenLoop(OpenLoop {
            rate,
            poisson: a.poisson,
            seed: a.seed,
            max_in_flight: a.max_in_flight,
            connections: a.connections,
            stop,
            pacing: model::Pacing::Thread,
        })
    } else {
        ModelCfg::ClosedLoop(ClosedLoop {
            concurrency: a
                .concurrency
                .unwrap_or_else(|| a.kind().default_concurrency()),
            stop,
        })
    }
}

/// A directory removed when dropped (the embedded `run stateful`'s store).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The node the run drives; with a store, what it is (for the report).
async fn start_node(
    a: &RunArgs,
    state: Option<&str>,
    custom: Option<&Custom>,
) -> Result<(Node, String, Option<String>), String> {
    // The actors a node started here hosts: the scenario's own, or the
    // benchmark actors.
    let host = |b: mesh::NodeBuilder| match custom.and_then(Custom::hosting) {
        Some(h) => h(b),
        None if custom.is_some() => b,
        None => crate::actors::host(b),
    };
    let capability = custom.map_or(crate::actors::CAPABILITY, Custom::capability);
    let mut store = None;
    if !a.cluster.clustered() {
        let mut b = host(Node::builder());
        if let Some(n) = &a.cluster.name {
            b = b.id(n);
        }
        if let Some(spec) = state {
            let (with, label) = a.state.apply(b, spec)?;
            (b, store) = (with, Some(label));
        }
        let node = b
            .start()
            .await
            .map_err(|e| format!("starting the node: {e}"))?;
        return Ok((node, "embedded".into(), store));
    }
    let mut b = a.cluster.builder().await?;
    if a.host {
        b = host(b);
        if let Some(spec) = state {
            let (with, label) = a.state.apply(b, spec)?;
            (b, store) = (with, Some(label));
        }
    }
    if a.host || a.cluster.consul.is_some() {
        // Hosting, peers must reach it; with Consul, its registration
        // needs an address.
        b = b.listen(&a.listen);
    }
    let node = b
        .start()
        .await
        .map_err(|e| format!("starting the client node: {e}"))?;
    let mut changes = node.membership_changes();
    let found = tokio::time::timeout(
        a.wait,
        changes.wait_for(|m| {
            m.iter()
                .filter(|(id, info)| {
                    *id != node.id() && info.capabilities.iter().any(|c| c == capability)
                })
                .count()
                >= a.expect.max(1)
        }),
    )
    .await;
    if !matches!(found, Ok(Ok(_))) {
        let seen = node.membership();
        let where_ = format!(
            "seeds {}{}",
            if a.cluster.seeds.is_empty() {
                "none".to_owned()
            } else {
                a.cluster.seeds.join(",")
            },
            a.cluster
                .consul
                .as_ref()
                .map(|c| format!(", consul {c}"))
                .unwrap_or_default()
        );
        return Err(not_joined(
            &seen,
            node.id(),
            (capability, a.expect.max(1)),
            a.wait,
            &where_,
        ));
    }
    Ok((node, "cluster".into(), store))
}

/// Why the run could not start on the cluster: nobody answered at all
/// (the seeds, Consul, the cookie or the network), or members joined but
/// fewer than `want` host the scenario's actors.
fn not_joined(
    seen: &mesh::Membership,
    me: &str,
    (capability, want): (&str, usize),
    wait: std::time::Duration,
    where_: &str,
) -> String {
    let others: Vec<(&str, &mesh::MemberInfo)> = seen.iter().filter(|(id, _)| *id != me).collect();
    if others.is_empty() {
        return format!(
            "could not join the cluster: no member answered within {wait:?} ({where_}; \
             check the addresses, the cookie and the cluster name)"
        );
    }
    let hosting = others
        .iter()
        .filter(|(_, m)| m.capabilities.iter().any(|c| c == capability))
        .count();
    let members: Vec<String> = others
        .iter()
        .map(|(id, m)| format!("{id} hosts [{}]", m.capabilities.join(", ")))
        .collect();
    format!(
        "joined the cluster ({} member{}: {}), but {hosting} of them host {:?} and the run \
         wants {want} within {wait:?}: start `mesh-load serve` nodes in it, or pass --host to \
         host them in this process too",
        others.len(),
        if others.len() == 1 { "" } else { "s" },
        members.join("; "),
        capability,
    )
}

/// What the run calls its scenario.
fn scenario_name(a: &RunArgs, custom: &Option<Custom>) -> String {
    match custom {
        Some(c) => c.name().to_owned(),
        None => a.kind().name().to_owned(),
    }
}

fn unknown_scenario(name: &str, customs: &[Custom]) -> String {
    let builtin: Vec<&str> = ScenarioKind::value_variants()
        .iter()
        .map(|k| k.name())
        .collect();
    let own: Vec<&str> = customs.iter().map(Custom::name).collect();
    format!(
        "no scenario {name:?}: the built-in ones are {}{}",
        builtin.join(", "),
        if own.is_empty() {
            String::new()
        } else {
            format!("; this program's own: {}", own.join(", "))
        }
    )
}

async fn run(a: RunArgs, customs: &[Custom]) -> Result<i32, String> {
    let result = execute(&a, customs).await?;
    print!(
        "{}",
        report::summary::render(&result, std::io::stdout().is_terminal())
    );
    if let Some(dir) = &a.out {
        report::write_all(dir, &result).map_err(|e| format!("writing {}: {e}", dir.display()))?;
        println!("\n  reports: {}", dir.join("report.html").display());
    }
    let _ = std::io::stdout().flush();
    Ok(if result.passed() {
        0
    } else {
        crate::EXIT_THRESHOLDS
    })
}

/// Runs `a` and gives back its result (nothing printed but the progress
/// line, nothing written): `run` and `transports` render it.
pub(crate) async fn execute(a: &RunArgs, customs: &[Custom]) -> Result<RunResult, String> {
    let thresholds = a
        .thresholds
        .iter()
        .map(|t| Threshold::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--threshold {e}"))?;
    if let Some(slo) = &a.slo {
        Threshold::parse(slo).map_err(|e| format!("--slo {e}"))?;
    }
    if a.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be a positive number".into());
    }
    let env = Env::capture();
    // An embedded stateful run without --state: the embedded default, in
    // a directory of its own, removed after the run.
    let mut temp = None;
    let mut state = a.state.state.clone();
    let kind = a.kind();
    let custom = match kind {
        ScenarioKind::Custom => Some(
            customs
                .iter()
                .find(|c| c.name() == a.scenario)
                .ok_or_else(|| unknown_scenario(&a.scenario, customs))?
                .clone(),
        ),
        _ => None,
    };
    if state.is_none() && kind == ScenarioKind::Stateful && !a.cluster.clustered() {
        let nanos = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("mesh-load-state-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        state = Some(format!("redb:{}", dir.join("state.redb").display()));
        temp = Some(TempDir(dir));
    }
    let (node, target, store) = start_node(a, state.as_deref(), custom.as_ref()).await?;
    let scenario = ScenarioCfg {
        kind,
        name: custom.as_ref().map(|c| c.name().to_owned()),
        actors: a.actors.unwrap_or_else(|| kind.default_actors()),
        zipf_s: a.zipf_s,
        fanout: a.fanout,
        payload: a.payload.unwrap_or_else(|| kind.default_payload()),
        timeout: a.timeout,
        seed: a.seed,
    };
    let mut prepared = match &custom {
        Some(c) => c.prepare(&node, &scenario),
        None => scenario::prepare(&node, &scenario),
    };
    if let Some(store) = store {
        let store = match temp {
            Some(_) => format!("{store}, a temporary file"),
            None => store,
        };
        prepared.notes.push(("state_store".into(), store));
    }
    let model = model_of(a);
    let config = RunConfig {
        scenario,
        model: model.clone(),
        target,
        seeds: a.cluster.seeds.clone(),
        nodes: node.membership().len(),
        transport: a.cluster.transport(),
        thresholds: a.thresholds.clone(),
    };
    let total = match &model {
        ModelCfg::OpenLoop(o) => Some(match o.stop {
            Stop::Calls(n) => n,
            Stop::Duration(d) => (d.as_secs_f64() * o.rate).ceil() as u64,
        }),
        ModelCfg::ClosedLoop(c) => match c.stop {
            Stop::Calls(n) => Some(n),
            Stop::Duration(_) => None,
        },
        ModelCfg::Adaptive(_) => None,
    };
    let label = format!("{} {}", scenario_name(a, &custom), model.kind());
    let activations_before = node.activation_count();
    let progress = Progress::start(total, a.quiet);
    let start = SystemTime::now();
    let call = prepared.call.clone();
    let (recording, search) = match &model {
        ModelCfg::OpenLoop(o) => {
            let rec = Arc::new(Recorder::new(Instant::now()));
            progress.watch(label, rec.clone());
            model::open_loop(&call, o, &rec).await;
            (rec.finish(Instant::now()), None)
        }
        ModelCfg::ClosedLoop(c) => {
            let rec = Arc::new(Recorder::new(Instant::now()));
            progress.watch(label, rec.clone());
            model::closed_loop(&call, c, &rec).await;
            (rec.finish(Instant::now()), None)
        }
        ModelCfg::Adaptive(s) => {
            let quiet = a.quiet;
            let (steps, rec, _rate) = model::search(
                &call,
                s,
                |step, _| {
                    if !quiet {
                        eprintln!(
                            "step {:.0}/s: answered {:.1}/s, SLO figure {:.4}, dropped {}, {}",
                            step.rate,
                            step.achieved_rps,
                            step.observed,
                            step.dropped,
                            if step.pass { "pass" } else { "fail" }
                        );
                    }
                },
                || {
                    let rec = Arc::new(Recorder::new(Instant::now()));
                    progress.watch(label.clone(), rec.clone());
                    rec
                },
            )
            .await?;
            let best = steps
                .iter()
                .filter(|s| s.pass)
                .map(|s| s.rate)
                .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
            (rec, Some((steps, best)))
        }
    };
    let end = SystemTime::now();
    progress.finish().await;
    let activations_after = node.activation_count();
    let result = report::build(Inputs {
        env,
        config,
        start,
        end,
        recording: &recording,
        thresholds: &thresholds,
        search,
        activations: (activations_before, activations_after),
        notes: prepared.notes.clone(),
    });
    if let Err(e) = node.shutdown().await {
        eprintln!("mesh-load: shutting the node down: {e}");
    }
    drop(temp);
    Ok(result)
}

fn compare(a: CompareArgs) -> Result<i32, String> {
    let ra = report::read(&a.a)?;
    let rb = report::read(&a.b)?;
    print!(
        "{}",
        crate::compare::render(
            &ra,
            &rb,
            &a.a.display().to_string(),
            &a.b.display().to_string()
        )
    );
    if let Some(pct) = a.fail_if_worse {
        let ds = crate::compare::deltas(&ra, &rb);
        let worse = crate::compare::regressions(&ds, pct);
        if !worse.is_empty() {
            let names: Vec<_> = worse.iter().map(|d| d.name).collect();
            println!("\nworse by more than {pct}%: {}", names.join(", "));
            return Ok(crate::EXIT_REGRESSION);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn models_from_flags() {
        let parse = |args: &[&str]| {
            let mut v = vec!["mesh-load", "run"];
            v.extend_from_slice(args);
            match Cli::try_parse_from(v).unwrap().command {
                Command::Run(r) => model_of(&r),
                _ => unreachable!(),
            }
        };
        assert_eq!(parse(&["hot"]).kind(), "closed-loop");
        assert_eq!(parse(&["hot", "--rate", "100"]).kind(), "open-loop");
        assert_eq!(parse(&["hot", "--slo", "p99<5ms"]).kind(), "adaptive");
        match parse(&["elixir-creation"]) {
            ModelCfg::ClosedLoop(c) => {
                assert_eq!(c.concurrency, 500);
                assert_eq!(c.stop, Stop::Calls(50_000));
            }
            m => panic!("{m:?}"),
        }
        match parse(&["elixir-hot"]) {
            ModelCfg::ClosedLoop(c) => {
                assert_eq!(c.concurrency, 200);
                assert_eq!(c.stop, Stop::Calls(10_000));
            }
            m => panic!("{m:?}"),
        }
        assert!(Cli::try_parse_from([
            "mesh-load",
            "run",
            "hot",
            "--rate",
            "1",
            "--concurrency",
            "2"
        ])
        .is_err());
    }
}
