//! Single-node benchmarks, each beside raw baselines measured in the same run.
//!
//! `cargo bench --bench local` prints one table: activation rate, memory per
//! idle activation, call throughput and call latency, for mesh, a raw tokio
//! task + channel per actor, and a raw ractor actor, with the ratios.
//!
//! Activation rate, throughput and memory are measured in child processes
//! (this binary re-run with `--child act|act-warm|tp|mem <kind>`), so every
//! kind starts from a fresh process and none pays for another's teardown.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use mesh::prelude::*;
use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const ACTIVATIONS: usize = 200_000;
const SPAWNERS: usize = 64;
const TP_ACTORS: usize = 1_000;
const TP_CALLERS: usize = 1_000;
const TP_CALLS_PER_CALLER: usize = 1_000;
const LAT_CALLS: usize = 50_000;
const REPEATS: usize = 3;

// ---------------------------------------------------------------- mesh actor

#[derive(Actor, Default)]
#[actor(capability = "bench")]
struct Counter {
    value: i64,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = i64)]
struct Inc(i64);

#[mesh::handlers]
impl Counter {
    async fn inc(&mut self, Inc(n): Inc) -> i64 {
        self.value += n;
        self.value
    }
}

async fn mesh_node() -> Node {
    Node::builder()
        .capabilities(["bench"])
        .actor::<Counter>()
        .default_node(false)
        .start()
        .await
        .expect("bench node starts")
}

// ------------------------------------------------------- raw tokio baseline

type RawMsg = (i64, oneshot::Sender<i64>);

fn raw_spawn() -> mpsc::Sender<RawMsg> {
    raw_spawn_joinable().0
}

fn raw_spawn_joinable() -> (mpsc::Sender<RawMsg>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<RawMsg>(1024);
    let task = tokio::spawn(async move {
        let mut value = 0;
        while let Some((n, reply)) = rx.recv().await {
            value += n;
            let _ = reply.send(value);
        }
    });
    (tx, task)
}

async fn raw_call(tx: &mpsc::Sender<RawMsg>, n: i64) -> i64 {
    let (rtx, rrx) = oneshot::channel();
    tx.send((n, rtx)).await.expect("raw actor alive");
    rrx.await.expect("raw actor replies")
}

// ------------------------------------------------------ raw ractor baseline

struct RCounter;
enum RMsg {
    Inc(i64, RpcReplyPort<i64>),
}

impl ractor::Actor for RCounter {
    type Msg = RMsg;
    type State = i64;
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<RMsg>, _: ()) -> Result<i64, ActorProcessingErr> {
        Ok(0)
    }
    async fn handle(
        &self,
        _: ActorRef<RMsg>,
        msg: RMsg,
        state: &mut i64,
    ) -> Result<(), ActorProcessingErr> {
        let RMsg::Inc(n, reply) = msg;
        *state += n;
        let _ = reply.send(*state);
        Ok(())
    }
}

async fn ractor_spawn() -> ActorRef<RMsg> {
    ractor_spawn_joinable().await.0
}

async fn ractor_spawn_joinable() -> (ActorRef<RMsg>, JoinHandle<()>) {
    <RCounter as ractor::Actor>::spawn(None, RCounter, ())
        .await
        .expect("ractor spawn")
}

async fn ractor_call(r: &ActorRef<RMsg>, n: i64) -> i64 {
    ractor::call!(r, RMsg::Inc, n).expect("ractor call")
}

// ------------------------------------------------------------ measurements

/// The raw baselines' actors: what keeps them alive, and their tasks.
#[derive(Default)]
struct Keep {
    raw: Vec<(mpsc::Sender<RawMsg>, JoinHandle<()>)>,
    ractor: Vec<(ActorRef<RMsg>, JoinHandle<()>)>,
}

impl Keep {
    /// Stops every actor and waits until each has ended.
    async fn teardown(self) {
        let mut tasks = Vec::new();
        for (tx, task) in self.raw {
            drop(tx);
            tasks.push(task);
        }
        for (r, task) in self.ractor {
            r.stop(None);
            tasks.push(task);
        }
        for t in tasks {
            t.await.expect("actor task");
        }
    }
}

/// Brings actor `id` of `kind` to life with its first call.
async fn activate_one(kind: Kind, node: &Node, id: &str, keep: &mut Keep) {
    match kind {
        Kind::Mesh => {
            node.call::<Counter, _>(id, Inc(1)).await.expect("call");
        }
        Kind::Tokio => {
            let (tx, task) = raw_spawn_joinable();
            raw_call(&tx, 1).await;
            keep.raw.push((tx, task));
        }
        Kind::Ractor => {
            let (r, task) = ractor_spawn_joinable().await;
            ractor_call(&r, 1).await;
            keep.ractor.push((r, task));
        }
    }
}

fn ids(n: usize) -> Arc<Vec<String>> {
    Arc::new((0..n).map(|i| format!("actor-{i}")).collect())
}

/// Activations per second: every id gets its first call, SPAWNERS at a time.
/// Runs in a child process, which exits without tearing the actors down.
async fn activation_rate(kind: Kind, node: &Node, ids: Arc<Vec<String>>) -> (f64, Vec<Keep>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..SPAWNERS {
        let ids = ids.clone();
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let mut keep = Keep::default();
            for i in (s..ids.len()).step_by(SPAWNERS) {
                activate_one(kind, &node, &ids[i], &mut keep).await;
            }
            keep
        }));
    }
    let mut kept = Vec::new();
    for t in tasks {
        kept.push(t.await.expect("spawner"));
    }
    let rate = ids.len() as f64 / started.elapsed().as_secs_f64();
    (rate, kept)
}

/// Calls per second: TP_CALLERS callers, each calling the TP_ACTORS actors in turn.
async fn throughput(kind: Kind, ids: Arc<Vec<String>>) -> f64 {
    let node = mesh_node().await;
    let raw: Arc<Vec<_>> = Arc::new(if kind == Kind::Tokio {
        (0..TP_ACTORS).map(|_| raw_spawn()).collect()
    } else {
        vec![]
    });
    let mut rac = Vec::new();
    if kind == Kind::Ractor {
        for _ in 0..TP_ACTORS {
            rac.push(ractor_spawn().await);
        }
    }
    let rac = Arc::new(rac);
    if kind == Kind::Mesh {
        for id in ids.iter() {
            node.call::<Counter, _>(id, Inc(0)).await.expect("warm");
        }
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..TP_CALLERS {
        let (ids, node, raw, rac) = (ids.clone(), node.clone(), raw.clone(), rac.clone());
        tasks.push(tokio::spawn(async move {
            for j in 0..TP_CALLS_PER_CALLER {
                let a = (c + j) % TP_ACTORS;
                match kind {
                    Kind::Mesh => {
                        node.call::<Counter, _>(&ids[a], Inc(1))
                            .await
                            .expect("call");
                    }
                    Kind::Tokio => {
                        raw_call(&raw[a], 1).await;
                    }
                    Kind::Ractor => {
                        ractor_call(&rac[a], 1).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("caller");
    }
    let rate = (TP_CALLERS * TP_CALLS_PER_CALLER) as f64 / started.elapsed().as_secs_f64();
    for r in rac.iter() {
        r.stop(None);
    }
    node.shutdown().await.expect("shutdown");
    rate
}

/// Sequential call latency from one caller to one active actor, in ns.
async fn latency(kind: Kind) -> Histogram<u64> {
    let node = mesh_node().await;
    let raw = raw_spawn();
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..LAT_CALLS + 10_000 {
        let t = Instant::now();
        match kind {
            Kind::Mesh => {
                node.call::<Counter, _>("latency", Inc(1))
                    .await
                    .expect("call");
            }
            _ => {
                raw_call(&raw, 1).await;
            }
        }
        if i >= 10_000 {
            hist.record(t.elapsed().as_nanos() as u64).expect("record");
        }
    }
    node.shutdown().await.expect("shutdown");
    hist
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mesh,
    Tokio,
    Ractor,
}

impl Kind {
    fn parse(s: &str) -> Kind {
        match s {
            "mesh" => Kind::Mesh,
            "tokio" => Kind::Tokio,
            _ => Kind::Ractor,
        }
    }
}

// ------------------------------------------------------------------ memory

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm rss");
    pages * 4096
}

/// Child process: RSS growth for ACTIVATIONS idle actors of one kind.
async fn mem_child(kind: Kind) -> f64 {
    let ids = ids(ACTIVATIONS);
    let node = mesh_node().await;
    warm_up(&node).await;
    let before = rss_bytes();
    let mut keep = Keep::default();
    for id in ids.iter() {
        activate_one(kind, &node, id, &mut keep).await;
    }
    let after = rss_bytes();
    assert!(kind != Kind::Mesh || node.activation_count() >= ACTIVATIONS);
    after.saturating_sub(before) as f64 / ACTIVATIONS as f64
}

/// Child process: activation rate of one kind, from a fresh heap (`warm`
/// false) or after a first round of ACTIVATIONS was activated and torn
/// down completely (`warm` true: the heap has grown already).
async fn act_child(kind: Kind, warm: bool) -> f64 {
    let ids = ids(ACTIVATIONS);
    let mut node = mesh_node().await;
    warm_up(&node).await;
    if warm {
        let (_, kept) = activation_rate(kind, &node, ids.clone()).await;
        for k in kept {
            k.teardown().await;
        }
        node.shutdown().await.expect("shutdown");
        node = mesh_node().await;
    }
    activation_rate(kind, &node, ids).await.0
}

/// One actor of each kind, so that lazily built runtime structures exist.
async fn warm_up(node: &Node) {
    let mut keep = Keep::default();
    for kind in [Kind::Mesh, Kind::Tokio, Kind::Ractor] {
        activate_one(kind, node, "warm-up", &mut keep).await;
    }
}

/// Runs this binary as `--child <what> <kind>` and reads its figure.
fn in_child(what: &str, kind: &str) -> f64 {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .args(["--child", what, kind])
        .output()
        .expect("run child");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("value="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{what} child for {kind} failed: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

// -------------------------------------------------------------------- main

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One table figure: name, formatter, mesh's value, and up to two
/// baselines as (name, value, goal).
type Figure<'a> = (
    String,
    &'a dyn Fn(f64) -> String,
    f64,
    [(&'a str, f64, &'a str); 2],
);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let what = args.get(i + 1).map(String::as_str).unwrap_or("");
        let kind = Kind::parse(args.get(i + 2).map(String::as_str).unwrap_or("mesh"));
        let value = runtime().block_on(async {
            match what {
                "mem" => mem_child(kind).await,
                "act-warm" => act_child(kind, true).await,
                "tp" => throughput(kind, ids(TP_ACTORS)).await,
                _ => act_child(kind, false).await,
            }
        });
        println!("value={value}");
        std::process::exit(0); // skip tearing 200 000 actors down
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("mesh local benchmarks: {cores} cores, tokio multi-thread runtime, median of {REPEATS} runs");
    println!(
        "activations: {SPAWNERS} concurrent callers, each id's first call; fresh process = \
         new heap, warm heap = after {ACTIVATIONS} were activated and torn down in that process"
    );
    let rt = runtime();

    let kinds = ["mesh", "tokio", "ractor"];
    let mut act = [Vec::new(), Vec::new(), Vec::new()];
    let mut act_warm = [Vec::new(), Vec::new(), Vec::new()];
    let mut tp = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..REPEATS {
        for (i, k) in kinds.into_iter().enumerate() {
            act[i].push(in_child("act", k));
            act_warm[i].push(in_child("act-warm", k));
            tp[i].push(in_child("tp", k));
        }
    }
    let act = act.map(median);
    let act_warm = act_warm.map(median);
    let tp = tp.map(median);
    // Latency is bimodal on a multi-thread runtime (caller and actor on one
    // worker, or a cross-worker wake-up): alternate the two, several times,
    // and merge the histograms.
    let mut lat_mesh = Histogram::<u64>::new(3).expect("histogram");
    let mut lat_raw = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..2 * REPEATS {
        lat_mesh
            .add(rt.block_on(latency(Kind::Mesh)))
            .expect("merge");
        lat_raw
            .add(rt.block_on(latency(Kind::Tokio)))
            .expect("merge");
    }
    let mem = kinds.map(|k| in_child("mem", k));

    println!();
    println!(
        "| {:<38} | {:>12} | {:<10} | {:>12} | {:>7} | goal |",
        "figure", "mesh", "baseline", "baseline", "ratio"
    );
    println!("|{}|", "-".repeat(106));
    let per_s = |v: f64| format!("{v:.0}/s");
    let kib = |v: f64| format!("{:.2} KiB", v / 1024.0);
    let us = |v: f64| format!("{v:.2} us");
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let figures: [Figure; 6] = [
        (
            format!("activations of {ACTIVATIONS}, fresh process"),
            &per_s,
            act[0],
            [
                ("raw tokio", act[1], ">= 0.5x"),
                ("raw ractor", act[2], ">= 2x"),
            ],
        ),
        (
            format!("activations of {ACTIVATIONS}, warm heap"),
            &per_s,
            act_warm[0],
            [
                ("raw tokio", act_warm[1], ">= 0.5x"),
                ("raw ractor", act_warm[2], ">= 2x"),
            ],
        ),
        (
            "memory per idle activation".into(),
            &kib,
            mem[0],
            [
                ("raw tokio", mem[1], "<= 2 KiB"),
                ("raw ractor", mem[2], ""),
            ],
        ),
        (
            format!("calls, {TP_CALLERS} callers x {TP_ACTORS} actors"),
            &per_s,
            tp[0],
            [("raw tokio", tp[1], ">= 0.5x"), ("raw ractor", tp[2], "")],
        ),
        (
            "call latency p50, 1 caller".into(),
            &us,
            q(&lat_mesh, 0.5),
            [("raw tokio", q(&lat_raw, 0.5), "<= 1.3x"), ("", 0.0, "")],
        ),
        (
            "call latency p99, 1 caller".into(),
            &us,
            q(&lat_mesh, 0.99),
            [("raw tokio", q(&lat_raw, 0.99), ""), ("", 0.0, "")],
        ),
    ];
    for (name, fmt, value, baselines) in figures {
        let mut first = true;
        for (base_name, base, goal) in baselines {
            if base_name.is_empty() {
                continue;
            }
            let (label, shown) = if first {
                (name.as_str(), fmt(value))
            } else {
                ("", String::new())
            };
            first = false;
            println!(
                "| {label:<38} | {shown:>12} | {base_name:<10} | {:>12} | {:>6.2}x | {goal} |",
                fmt(base),
                value / base
            );
        }
    }
    println!();
    println!("ratios: mesh / baseline (for memory and latency, lower is better).");
}
