//! Strong mode (`mesh::lease`) against eventual mode, in the same run:
//! the same three nodes (two hosting, one calling), in-process, on
//! loopback TCP, with the Consul test agent (time scaled 20x: session TTL
//! 10 s -> 500 ms, lock-delay 10 s -> 500 ms), once per mode. Eventual mode
//! is the baseline of each figure:
//!
//! - local call throughput (a node calling actors it hosts: the gate's
//!   deadline check per message is the strong mode's whole cost here);
//! - remote call throughput (the caller hosts nothing);
//! - activation rate (calls to new ids: strong activations pass the gate);
//! - join handoff: from a node's start to a call served by it on an id
//!   that moved to it (strong: the old owner drains and unlocks, the new
//!   one locks), with a fixed population of live activations (`FRESH`
//!   plus the working set: about 150 000 per hosting node, a third of
//!   which move to the new node and drain);
//! - leave handoff: from `shutdown()` to a call served elsewhere on an id
//!   the leaving node owned (once the join's drain has ended);
//! - crash failover: from `sever()` (as a crash: nothing released) to a
//!   call served elsewhere, next to the documented bound `check TTL +
//!   lock-delay + retry` (the session is bound to the node's health check,
//!   which goes critical a check TTL after the severed node's last
//!   heartbeat).
//!
//! Each figure is the median of `RUNS` runs, with the spread (min-max) of
//! the ratio. `cargo bench --bench strong`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh::consul::Consul;
use mesh::lease::Strong;
use mesh::prelude::*;
use mesh_testkit::consul_agent::TestConsul;
use mesh_testkit::consul_catalog::TimeScale;

const SCALE: f64 = 0.05;
const RUNS: usize = 3;
const WINDOW: Duration = Duration::from_secs(2);
/// Each mode's `WINDOW` is measured in this many slices, alternating with
/// the other mode's.
const SLICES: usize = 8;
const CALLERS: usize = 64;
/// New ids activated by the activation-rate figure (on the two hosting
/// nodes, about half each): the live population the handoffs then drain.
const FRESH: usize = 300_000;

#[derive(Actor, Default)]
#[actor(capability = "game")]
struct Counter {
    n: u64,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = String)]
struct Hit;

#[mesh::handlers]
impl Counter {
    async fn hit(&mut self, _: Hit, ctx: &Ctx) -> String {
        self.n += 1;
        ctx.node().id().to_owned()
    }
}

/// The nodes' health check TTL, which strong mode binds its session to.
const CHECK_TTL: Duration = Duration::from_secs(6);

fn strong() -> Strong {
    Strong::new()
        .time_scale(SCALE)
        // What docs/benchmarks.md's crash failover figure measures (off by
        // default; see `Strong::bind_to_health_check`).
        .bind_to_health_check(true)
        .retry(Duration::from_millis(20))
}

async fn start(
    consul: &TestConsul,
    agent: usize,
    name: &str,
    strong_mode: bool,
    hosts: bool,
) -> Node {
    let adapter = Consul::new()
        .address(consul.url(agent))
        .heartbeat(Duration::from_millis(100))
        .ttl(CHECK_TTL);
    let mut b = Node::builder()
        .id(name)
        .cluster("bench")
        .cookie(mesh_testkit::COOKIE)
        .listen("127.0.0.1:0")
        .default_node(false)
        .heartbeat(Duration::from_millis(100), Duration::from_millis(400))
        .discovery(adapter);
    if hosts {
        b = b.capabilities(["game"]).actor::<Counter>();
    }
    if strong_mode {
        b = b.strong(strong());
    }
    b.start().await.expect("node starts")
}

async fn until(node: &Node, f: impl Fn(&mesh::Membership) -> bool) {
    node.membership_changes()
        .wait_for(|m| f(m))
        .await
        .expect("membership watch");
}

/// Calls per second from `CALLERS` tasks on `from` to `ids` (cycled) for
/// `window`.
async fn throughput(from: &Node, ids: Arc<Vec<String>>, window: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|w| {
            let (from, ids, stop, done) = (from.clone(), ids.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let id = &ids[i % ids.len()];
                    from.call::<Counter, _>(id, Hit).await.expect("call");
                    done.fetch_add(1, Ordering::Relaxed);
                    i += CALLERS;
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let took = t0.elapsed();
    for t in tasks {
        t.await.expect("caller");
    }
    n as f64 / took.as_secs_f64()
}

/// Activations per second: `CALLERS` tasks calling `FRESH` new ids in all.
/// A fixed number, not a time window: the handoffs measured next drain
/// the activations that moved, so their time depends on how many live
/// activations there are; a window would leave more behind in a faster
/// run and make its handoffs look slower.
async fn activations(from: &Node, prefix: &str) -> f64 {
    let per = FRESH / CALLERS;
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|w| {
            let (from, prefix) = (from.clone(), prefix.to_owned());
            tokio::spawn(async move {
                for i in 0..per {
                    from.call::<Counter, _>(&format!("{prefix}-{w}-{i}"), Hit)
                        .await
                        .expect("call");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("caller");
    }
    (per * CALLERS) as f64 / t0.elapsed().as_secs_f64()
}

/// Returns once the activation counts of `nodes` stay the same for 50 ms
/// (a drain has ended; nothing else starts or ends activations here).
async fn settled(nodes: &[&Node]) {
    let count = || nodes.iter().map(|n| n.activation_count()).sum::<usize>();
    let mut last = count();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = count();
        if now == last {
            return;
        }
        last = now;
    }
}

/// Calls `id` from `from` until `want(serving node)` holds; when it did.
async fn served_by(from: &Node, id: &str, want: impl Fn(&str) -> bool) -> Instant {
    loop {
        if let Ok(on) = from
            .call::<Counter, _>(id, Hit)
            .timeout(Duration::from_secs(10))
            .await
        {
            if want(&on) {
                return Instant::now();
            }
        }
    }
}

fn owned_by(n: &Node, node: &str, prefix: &str) -> String {
    (0..)
        .map(|k| format!("{prefix}{k}"))
        .find(|id| n.owner_of::<Counter>(id).is_ok_and(|o| o == node))
        .expect("an id")
}

#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    local: f64,
    remote: f64,
    activations: f64,
    join: Duration,
    leave: Duration,
    crash: Duration,
}

/// One mode's cluster: `a` and `b` host, `c` only calls; every id of the
/// working set is active.
struct Cluster {
    strong: bool,
    consul: TestConsul,
    a: Node,
    b: Node,
    c: Node,
    /// The working set's ids that `a` owns.
    local: Arc<Vec<String>>,
    all: Arc<Vec<String>>,
}

async fn cluster(strong_mode: bool) -> Cluster {
    let consul = TestConsul::start(
        4,
        TimeScale {
            ttl: SCALE,
            deregister: 0.01,
        },
    )
    .await;
    let a = start(&consul, 0, "a", strong_mode, true).await;
    let b = start(&consul, 1, "b", strong_mode, true).await;
    let c = start(&consul, 2, "c", strong_mode, false).await;
    for n in [&a, &b, &c] {
        until(n, |m| m.len() == 3).await;
    }
    // Warm: every id of the working set active.
    let ids: Vec<String> = (0..1000).map(|i| format!("w{i}")).collect();
    let local: Arc<Vec<String>> = Arc::new(
        ids.iter()
            .filter(|id| a.owner_of::<Counter>(id).is_ok_and(|o| o == "a"))
            .cloned()
            .collect(),
    );
    let all = Arc::new(ids);
    for id in all.iter() {
        c.call::<Counter, _>(id, Hit).await.expect("warm");
    }
    Cluster {
        strong: strong_mode,
        consul,
        a,
        b,
        c,
        local,
        all,
    }
}

/// Local and remote call throughput of both modes, measured in `SLICES`
/// alternating slices of each (whichever mode went first last time goes
/// second): the machine's speed drifts within seconds, and two windows
/// measured one after the other would each catch a different speed.
/// Both clusters run throughout; the idle one only heartbeats (and, in
/// strong mode, renews).
async fn interleaved(eventual: &Cluster, strong: &Cluster) -> [(f64, f64); 2] {
    let slice = WINDOW / SLICES as u32;
    let mut sums = [[0.0f64; 2]; 2]; // [local, remote][eventual, strong]
    for k in 0..SLICES {
        let order = if k % 2 == 0 { [0, 1] } else { [1, 0] };
        for mode in order {
            let cl = [eventual, strong][mode];
            sums[0][mode] += throughput(&cl.a, cl.local.clone(), slice).await;
        }
        for mode in order {
            let cl = [eventual, strong][mode];
            sums[1][mode] += throughput(&cl.c, cl.all.clone(), slice).await;
        }
    }
    let n = SLICES as f64;
    [
        (sums[0][0] / n, sums[0][1] / n),
        (sums[1][0] / n, sums[1][1] / n),
    ]
}

/// A round: both clusters, their throughput interleaved, then each one's
/// activations and handoffs in turn (eventual first).
async fn round(round: usize) -> (Figures, Figures) {
    let eventual = cluster(false).await;
    let strong = cluster(true).await;
    let [(el, sl), (er, sr)] = interleaved(&eventual, &strong).await;
    let e = rest(eventual, round, el, er).await;
    let s = rest(strong, round, sl, sr).await;
    (e, s)
}

/// The rest of a round for one cluster: activations, join, leave, crash.
async fn rest(cl: Cluster, round: usize, local: f64, remote: f64) -> Figures {
    let Cluster {
        strong: strong_mode,
        consul,
        a,
        b,
        c,
        ..
    } = cl;
    let before: Vec<usize> = (0..3).map(|i| consul.requests(i, "txn").len()).collect();
    let renews_before: Vec<usize> = (0..3)
        .map(|i| consul.requests(i, "session/renew").len())
        .collect();
    let mut f = Figures {
        local,
        remote,
        activations: activations(&c, &format!("fresh{round}")).await,
        ..Figures::default()
    };
    if std::env::var("MESH_BENCH_DEBUG").is_ok() {
        let after: Vec<usize> = (0..3).map(|i| consul.requests(i, "txn").len()).collect();
        let renews: Vec<usize> = (0..3)
            .map(|i| consul.requests(i, "session/renew").len())
            .collect();
        println!("txns during the activations: {before:?} -> {after:?}; renews {renews_before:?} -> {renews:?}");
    }

    // Join: d starts; an id that moves to d is served by d.
    let t0 = Instant::now();
    let d = start(&consul, 3, "d", strong_mode, true).await;
    until(&c, |m| m.contains("d")).await;
    let moved = owned_by(&c, "d", "j");
    f.join = served_by(&c, &moved, |on| on == "d").await - t0;
    // The join's drain on the old owners ends first (eventual mode serves
    // the moved id before it does): the leave is measured alone.
    settled(&[&a, &b]).await;
    // Leave: d shuts down; its id is served elsewhere.
    let t0 = Instant::now();
    d.shutdown().await.expect("d leaves");
    f.leave = served_by(&c, &moved, |on| on != "d").await - t0;
    // Crash: b is severed (nothing released); its id is served elsewhere.
    let lost = owned_by(&c, "b", "k");
    c.call::<Counter, _>(&lost, Hit).await.expect("on b");
    let t0 = Instant::now();
    b.sever();
    f.crash = served_by(&c, &lost, |on| on != "b").await - t0;
    for n in [a, c] {
        n.shutdown().await.expect("shutdown");
    }
    b.shutdown().await.ok();
    f
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "mesh strong vs eventual: {cores} cores, {RUNS} runs, {CALLERS} callers, {WINDOW:?} windows, test agent time x{}",
        1.0 / SCALE
    );
    let mut eventual = Vec::new();
    let mut strong_runs = Vec::new();
    let runs = std::env::var("MESH_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(RUNS);
    for r in 0..runs {
        let (e, s) = round(r).await;
        eventual.push(e);
        strong_runs.push(s);
        println!("run {r}: eventual {:?}", eventual[r]);
        println!("run {r}: strong   {:?}", strong_runs[r]);
    }
    type Get = fn(&Figures) -> f64;
    let rows: [(&str, Get, &str, &str); 6] = [
        ("local calls/s", |f| f.local, "", ">= 0.95x"),
        ("remote calls/s", |f| f.remote, "", ">= 0.95x"),
        ("activations/s", |f| f.activations, "", ""),
        ("join handoff, ms", |f| ms(f.join), "", ""),
        ("leave handoff, ms", |f| ms(f.leave), "", ""),
        ("crash failover, ms", |f| ms(f.crash), "", ""),
    ];
    println!();
    println!("| figure | strong (median) | eventual (median) | ratio (median, min-max) | goal |");
    println!("|---|---|---|---|---|");
    for (name, get, _, goal) in rows {
        let s: Vec<f64> = strong_runs.iter().map(get).collect();
        let e: Vec<f64> = eventual.iter().map(get).collect();
        let ratios: Vec<f64> = s.iter().zip(&e).map(|(s, e)| s / e).collect();
        let (lo, hi) = spread(&ratios);
        println!(
            "| {name} | {:.1} | {:.1} | {:.3}x ({lo:.3}-{hi:.3}) | {goal} |",
            median(s),
            median(e),
            median(ratios.clone())
        );
    }
    let bound = strong().failover_bound_with_check(CHECK_TTL);
    let crash: Vec<f64> = strong_runs.iter().map(|f| ms(f.crash)).collect();
    let (lo, hi) = spread(&crash);
    println!(
        "| strong crash failover vs its bound (session bound to the health check: check TTL + lock-delay + retry, scaled; unbound it would be 2 x TTL + lock-delay + retry = {:.0} ms) | {:.0} ms ({lo:.0}-{hi:.0}) | bound {:.0} ms | {:.2}x | <= 1x + scheduling |",
        ms(strong().failover_bound()),
        median(crash.clone()),
        ms(bound),
        median(crash) / ms(bound)
    );
}
