//! Scenarios: which actor ids and messages a run sends.
//!
//! Contract: [`prepare`] turns a [`ScenarioCfg`] and the calling node into
//! a [`CallFn`] that makes call number `k`. Keys are a pure function of
//! `k` and the seed (so a run repeats exactly), except the activation
//! storm's, which carry a per-run nonce so every run activates new actors
//! even against a long-running cluster. Each call's path (local or remote)
//! is read from the node's routing table before it is sent.
//!
//! | scenario | ids | message |
//! |---|---|---|
//! | `activation-storm` | a new id per call | `Ping` |
//! | `hot` | one id, `hot` | `Ping` |
//! | `uniform` | uniform over `--actors` ids | `Ping` |
//! | `zipf` | Zipf(`--zipf-s`) over `--actors` ranks, ranks hashed to ids | `Ping` |
//! | `fan-out` | uniform over `--actors` hubs | `FanOut`: the hub calls `--fanout` leaves through `ctx.node()` |
//! | `ping-pong` | `--actors` ids (default 16) in turn, one caller | `Ping` |
//! | `payload` | uniform over `--actors` ids | `Ping` echoing `--payload` bytes (default 4096) |
//! | `stateful` | uniform over `--actors` ids (default 1000) of `StatefulBench` | `Write` of `--payload` bytes (default 64): one durable write to the node's state store per call |
//! | `elixir-creation` | as `activation-storm`; 50 000 calls, closed loop, 500 workers | `Ping` |
//! | `elixir-hot` | as `hot`; 10 000 calls, closed loop, 200 workers | `Ping` |
//!
//! The two `elixir-*` presets match the Elixir Mesh library's
//! `scripts/benchmark_singlenode.exs` scenarios (1) and (2).

use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use mesh::Node;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::actors::{Bench, FanOut, Ping, StatefulBench, Write};
use crate::model::{CallFn, CallFuture, CallResult};
use crate::record::{error_kind, Path};
use crate::rng::{mix, unit};

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    /// First calls to new ids: every call activates an actor.
    ActivationStorm,
    /// Every call to one actor.
    Hot,
    /// Keys uniform over N actors.
    Uniform,
    /// Zipf-skewed keys over N actors.
    Zipf,
    /// A handler calls N actors through ctx.node().
    FanOut,
    /// One caller, calls in turn (local or remote: see the path).
    PingPong,
    /// Calls echoing a payload of --payload bytes.
    Payload,
    /// One durable state write per call (the node's state store).
    Stateful,
    /// Elixir Mesh preset: 50 000 creations at concurrency 500.
    ElixirCreation,
    /// Elixir Mesh preset: 10 000 calls to one actor at concurrency 200.
    ElixirHot,
    /// A scenario of the program's own ([`Custom`]): not on the command
    /// line by this name, but by the scenario's.
    #[value(skip)]
    Custom,
}

impl ScenarioKind {
    /// The name used in reports (`hot`, `elixir-creation`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::ActivationStorm => "activation-storm",
            ScenarioKind::Hot => "hot",
            ScenarioKind::Uniform => "uniform",
            ScenarioKind::Zipf => "zipf",
            ScenarioKind::FanOut => "fan-out",
            ScenarioKind::PingPong => "ping-pong",
            ScenarioKind::Payload => "payload",
            ScenarioKind::Stateful => "stateful",
            ScenarioKind::ElixirCreation => "elixir-creation",
            ScenarioKind::ElixirHot => "elixir-hot",
            ScenarioKind::Custom => "custom",
        }
    }

    /// A preset's fixed closed loop: (concurrency, calls).
    pub fn preset(self) -> Option<(usize, u64)> {
        match self {
            ScenarioKind::ElixirCreation => Some((500, 50_000)),
            ScenarioKind::ElixirHot => Some((200, 10_000)),
            _ => None,
        }
    }

    /// The closed-loop concurrency when none is given.
    pub fn default_concurrency(self) -> usize {
        match self {
            ScenarioKind::PingPong => 1,
            _ => self.preset().map_or(64, |p| p.0),
        }
    }

    /// The actor count when `--actors` is not given.
    pub fn default_actors(self) -> u64 {
        match self {
            ScenarioKind::Uniform | ScenarioKind::Zipf => 10_000,
            ScenarioKind::FanOut | ScenarioKind::Payload => 100,
            ScenarioKind::Stateful => 1000,
            ScenarioKind::PingPong => 16,
            _ => 1,
        }
    }

    /// The payload size when `--payload` is not given.
    pub fn default_payload(self) -> usize {
        match self {
            ScenarioKind::Payload => 4096,
            ScenarioKind::Stateful => 64,
            _ => 0,
        }
    }
}

/// What a scenario needs to know.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScenarioCfg {
    /// Which scenario.
    pub kind: ScenarioKind,
    /// A [`Custom`] scenario's own name (what every output calls it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Actors the keys spread over (hubs, for fan-out).
    pub actors: u64,
    /// Zipf exponent.
    pub zipf_s: f64,
    /// Leaves each fan-out hub calls.
    pub fanout: u32,
    /// Bytes of payload in every message.
    pub payload: usize,
    /// Each call's deadline.
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// Seed of the key choice.
    pub seed: u64,
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs_f64(f64::deserialize(d)? / 1e3))
    }
}

impl ScenarioCfg {
    /// The name every output gives the scenario: a custom scenario's own,
    /// else the built-in's (`hot`, `elixir-creation`, ...).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.kind.name())
    }
}

/// Makes a custom scenario's call function on a node, for a run's settings.
pub type MakeCalls = Arc<dyn Fn(&Node, &ScenarioCfg) -> CallFn + Send + Sync>;

/// Registers actor types on a node being built.
pub type Host = Arc<dyn Fn(mesh::NodeBuilder) -> mesh::NodeBuilder + Send + Sync>;

/// A scenario over the program's own actor types, run with every option
/// of `mesh-load run` (models, rate, thresholds, outputs) by
/// [`crate::cli::main_with`], and named by its own name in every output
/// (the summary, `result.json`, the HTML, SMP and fortio reports).
///
/// ```no_run
/// use mesh::prelude::*;
/// use mesh_load::scenario::Custom;
///
/// #[derive(Actor, Default)]
/// #[actor(capability = "game")]
/// struct Player { score: u64 }
///
/// #[derive(Message, Serialize, Deserialize)]
/// #[message(reply = u64)]
/// struct Score(u64);
///
/// #[mesh::handlers]
/// impl Player {
///     async fn score(&mut self, Score(n): Score) -> u64 { self.score += n; self.score }
/// }
///
/// let players = Custom::calls::<Player, Score>(
///     "players",
///     |k| format!("player-{}", k % 1000),
///     |k| Score(k % 7),
/// )
/// .host(|b| b.capabilities(["game"]).actor::<Player>());
/// // `my-load run players --rate 5000 --duration 30s --out report`
/// let code = mesh_load::cli::main_with(
///     <mesh_load::cli::Cli as clap::Parser>::parse(),
///     vec![players],
/// );
/// ```
#[derive(Clone)]
pub struct Custom {
    name: String,
    capability: String,
    host: Option<Host>,
    make: MakeCalls,
}

impl std::fmt::Debug for Custom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Custom")
            .field("name", &self.name)
            .field("capability", &self.capability)
            .finish_non_exhaustive()
    }
}

impl Custom {
    /// Call number `k` calls actor type `A` at id `key(k)` with
    /// `message(k)`, within the run's `--timeout`; its path (local or
    /// remote) is read from the node's routing, as the built-in
    /// scenarios' are.
    pub fn calls<A, M>(
        name: impl Into<String>,
        key: impl Fn(u64) -> String + Send + Sync + 'static,
        message: impl Fn(u64) -> M + Send + Sync + 'static,
    ) -> Custom
    where
        A: mesh::Handler<M>,
        M: mesh::Message,
    {
        let (key, message) = (Arc::new(key), Arc::new(message));
        let make: MakeCalls = Arc::new(move |node, cfg| -> CallFn {
            let (node, timeout) = (node.clone(), cfg.timeout);
            let (key, message) = (key.clone(), message.clone());
            Arc::new(move |k| -> CallFuture {
                let (node, id, msg) = (node.clone(), key(k), message(k));
                Box::pin(async move {
                    let p = path::<A>(&node, &id);
                    let r = node.call::<A, M>(&id, msg).timeout(timeout).await;
                    finish(p, r)
                })
            })
        });
        Custom {
            name: name.into(),
            capability: A::CAPABILITY.to_owned(),
            host: None,
            make,
        }
    }

    /// The most general form: `make(node, settings)` gives the function
    /// that makes call number `k` (and reports its path and outcome).
    /// `capability` is what a cluster's members must host for the run to
    /// start.
    pub fn new(
        name: impl Into<String>,
        capability: impl Into<String>,
        make: impl Fn(&Node, &ScenarioCfg) -> CallFn + Send + Sync + 'static,
    ) -> Custom {
        Custom {
            name: name.into(),
            capability: capability.into(),
            host: None,
            make: Arc::new(make),
        }
    }

    /// Registers the scenario's actors on a node `mesh-load` starts: the
    /// embedded node of a run without `--seeds`, or a cluster run's own
    /// with `--host`. Without it, such a node hosts nothing of the
    /// scenario's, and an embedded run fails at its first call.
    pub fn host(
        mut self,
        f: impl Fn(mesh::NodeBuilder) -> mesh::NodeBuilder + Send + Sync + 'static,
    ) -> Custom {
        self.host = Some(Arc::new(f));
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The capability cluster members must host.
    pub fn capability(&self) -> &str {
        &self.capability
    }

    /// What hosts its actors, if it said ([`Custom::host`]).
    pub fn hosting(&self) -> Option<&Host> {
        self.host.as_ref()
    }

    /// Its call function on `node` for `cfg`.
    pub fn prepare(&self, node: &Node, cfg: &ScenarioCfg) -> Prepared {
        Prepared {
            call: (self.make)(node, cfg),
            notes: Vec::new(),
        }
    }
}

/// A scenario ready to run.
pub struct Prepared {
    /// Makes call `k`.
    pub call: CallFn,
    /// Facts about the keys, for the report (`top1_share`, ...).
    pub notes: Vec<(String, String)>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("notes", &self.notes)
            .finish_non_exhaustive()
    }
}

/// The cumulative Zipf distribution over ranks 1..=n with exponent s.
pub fn zipf_cdf(n: u64, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n.max(1))
        .map(|r| {
            acc += (r as f64).powf(-s);
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

fn path<A: mesh::Actor>(node: &Node, id: &str) -> Path {
    match node.owner_of::<A>(id) {
        Ok(owner) if owner == node.id() => Path::Local,
        _ => Path::Remote,
    }
}

fn finish<T>(path: Path, r: Result<T, mesh::Error>) -> CallResult {
    CallResult {
        path,
        result: r.map(drop).map_err(|e| error_kind(&e)),
    }
}

/// Builds the call function of `cfg` on `node`.
pub fn prepare(node: &Node, cfg: &ScenarioCfg) -> Prepared {
    let node = node.clone();
    let payload = ByteBuf::from(vec![0xa5u8; cfg.payload]);
    let timeout = cfg.timeout;
    let seed = cfg.seed;
    let n = cfg.actors.max(1);
    let mut notes = Vec::new();
    let key: Arc<dyn Fn(u64) -> String + Send + Sync> = match cfg.kind {
        ScenarioKind::ActivationStorm | ScenarioKind::ElixirCreation => {
            let nonce = mix(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64
                ^ u64::from(std::process::id()))
                & 0xffff_ffff;
            notes.push(("id_prefix".into(), format!("storm-{nonce:08x}-")));
            Arc::new(move |k| format!("storm-{nonce:08x}-{k}"))
        }
        ScenarioKind::Hot | ScenarioKind::ElixirHot | ScenarioKind::Custom => {
            Arc::new(|_| "hot".to_owned())
        }
        ScenarioKind::Uniform | ScenarioKind::Payload => {
            Arc::new(move |k| format!("u-{}", mix(seed ^ mix(k)) % n))
        }
        ScenarioKind::Stateful => Arc::new(move |k| format!("s-{}", mix(seed ^ mix(k)) % n)),
        ScenarioKind::FanOut => Arc::new(move |k| format!("hub-{}", mix(seed ^ mix(k)) % n)),
        ScenarioKind::PingPong => Arc::new(move |k| format!("ping-{}", k % n)),
        ScenarioKind::Zipf => {
            let cdf = zipf_cdf(n, cfg.zipf_s);
            notes.push(("zipf_top1_share".into(), format!("{:.4}", cdf[0])));
            let top10 = cdf[(n.min(10) - 1) as usize];
            notes.push(("zipf_top10_share".into(), format!("{top10:.4}")));
            let cdf = Arc::new(cdf);
            Arc::new(move |k| {
                let u = unit(mix(seed ^ mix(k)));
                let rank = cdf.partition_point(|&c| c <= u) as u64 + 1;
                // A seeded permutation: hot ranks land on unrelated shards.
                format!("z-{:016x}", mix(rank ^ mix(seed.wrapping_add(0x5a))))
            })
        }
    };
    match cfg.kind {
        ScenarioKind::ElixirCreation => notes.push((
            "elixir_mesh_published".into(),
            "~16 000 creations/s (scripts/README.md, closed loop, no hardware given)".into(),
        )),
        ScenarioKind::ElixirHot => notes.push((
            "elixir_mesh_published".into(),
            "~30 000 req/s (scripts/README.md, closed loop, no hardware given)".into(),
        )),
        _ => {}
    }
    let echo = cfg.kind == ScenarioKind::Payload;
    let call: CallFn = if cfg.kind == ScenarioKind::FanOut {
        let fanout = cfg.fanout;
        Arc::new(move |k| -> CallFuture {
            let (node, id) = (node.clone(), key(k));
            let msg = FanOut {
                n: fanout,
                payload: payload.clone(),
            };
            Box::pin(async move {
                let p = path::<Bench>(&node, &id);
                let r = node.call::<Bench, FanOut>(&id, msg).timeout(timeout).await;
                match r {
                    Ok(0) => finish(p, Ok(())),
                    Ok(_) => CallResult {
                        path: p,
                        result: Err("LeafFailed".into()),
                    },
                    Err(e) => finish::<()>(p, Err(e)),
                }
            })
        })
    } else if cfg.kind == ScenarioKind::Stateful {
        Arc::new(move |k| -> CallFuture {
            let (node, id) = (node.clone(), key(k));
            let msg = Write {
                payload: payload.clone(),
            };
            Box::pin(async move {
                let p = path::<StatefulBench>(&node, &id);
                let r = node
                    .call::<StatefulBench, Write>(&id, msg)
                    .timeout(timeout)
                    .await;
                finish(p, r)
            })
        })
    } else {
        Arc::new(move |k| -> CallFuture {
            let (node, id) = (node.clone(), key(k));
            let msg = Ping {
                payload: payload.clone(),
                echo,
            };
            Box::pin(async move {
                let p = path::<Bench>(&node, &id);
                let r = node.call::<Bench, Ping>(&id, msg).timeout(timeout).await;
                finish(p, r)
            })
        })
    };
    Prepared { call, notes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_shares_match_the_reference_check() {
        // reference: n = 10 000, s = 1.1, 1e5 draws: rank 1 got 14 977.
        let cdf = zipf_cdf(10_000, 1.1);
        assert!((cdf[0] - 0.15).abs() < 0.01, "top1 {}", cdf[0]);
        assert!((cdf[9999] - 1.0).abs() < 1e-9);
        let uniform = zipf_cdf(4, 0.0);
        assert!((uniform[1] - 0.5).abs() < 1e-12);
    }
}
