//! Durable reminders on the embedded store (redb, fsync on), beside raw
//! baselines measured in the same run.
//!
//! `cargo bench --bench reminders` prints:
//!
//! - **registration latency**: sequential `node.reminders::<A>(id).register(..)`
//!   (a read of the actor's reminders and one compare-and-set write), p50
//!   and p99, beside raw redb single-write commits (the same
//!   read-then-write by hand, one fsync'd commit each);
//! - **firing rate**: 100 000 one-shot reminders due in the same second
//!   on one node (a warm keeper, no budget, the slow start's limit at its
//!   maximum): fires/s from the due second until the last was
//!   acknowledged, with the lateness p50/p99 (delivery minus due time),
//!   beside the two parts of a fire done raw: 100 000 calls to fresh
//!   actors (the activation and the handler, no store) and 100 000 store
//!   deletes through `RedbStore` (the one-shot's advance), at the same
//!   concurrency;
//! - **catch-up after a 10-minute outage**: 50 000 periodic reminders
//!   (every minute, `Missed::Once`) whose last ten ticks were missed,
//!   fired by a node just started with the default throttle (slow start
//!   from 16 in flight doubling every second, 20 000 ticks/s budget): the
//!   ticks fired per 250 ms since the start, until all were.
//!
//! Medians of `REPEATS` runs, with the spread. Everything shares the
//! machine's cores.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mesh::prelude::*;
use mesh::reminder::{Missed, ReminderOptions, Schedule, Tick};
use mesh::state::{RedbStore, StateKey, StateStore};
use redb::{Database, ReadableTable, TableDefinition};

const REPEATS: usize = 3;
const SEQUENTIAL: usize = 1_000;
const DUE_AT_ONCE: usize = 100_000;
const OUTAGE_REMINDERS: usize = 50_000;
const IN_FLIGHT: usize = 256;

static FIRED: AtomicU64 = AtomicU64::new(0);
/// Delivery minus due, in ms, of each tick fired.
static LATE: Mutex<Vec<u64>> = Mutex::new(Vec::new());

#[derive(Actor, Default)]
#[actor(capability = "bench")]
struct Job;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
struct Poke;

#[mesh::handlers]
impl Job {
    async fn tick(&mut self, tick: Tick) -> Result<(), String> {
        let late = unix_ms().saturating_sub(tick.due_ms);
        LATE.lock().unwrap().push(late);
        FIRED.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn poke(&mut self, _: Poke) -> u64 {
        FIRED.fetch_add(1, Ordering::Relaxed)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn node(store: RedbStore, options: ReminderOptions, actors: bool) -> Node {
    let b = Node::builder()
        .default_node(false)
        .state(store)
        .reminders(options);
    let b = if actors {
        b.capabilities(["bench"]).actor::<Job>()
    } else {
        b.capabilities(["none"])
    };
    b.start().await.expect("node starts")
}

/// Registers `n` reminders `schedule` of ids `<prefix>-<i>` through
/// `node`, `IN_FLIGHT` at once.
async fn register_many(node: &Node, prefix: &str, n: usize, schedule: Schedule) {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..IN_FLIGHT {
        let (node, prefix) = (node.clone(), prefix.to_owned());
        tasks.spawn(async move {
            for i in (c..n).step_by(IN_FLIGHT) {
                node.reminders::<Job>(&format!("{prefix}-{i}"))
                    .register("r", schedule, &())
                    .await
                    .expect("register");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("registrar");
    }
}

// ---------------------------------------------------------------- raw redb

const RAW: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("raw");

fn raw_redb_sequential(db: &Database) -> Histogram<u64> {
    let mut h = Histogram::new(3).expect("histogram");
    for i in 0..SEQUENTIAL {
        let key = format!("seq-{i}");
        let t = Instant::now();
        let tx = db.begin_write().expect("begin");
        {
            let mut table = tx.open_table(RAW).expect("table");
            let v = table
                .get(key.as_str())
                .expect("get")
                .map_or(0, |g| g.value().0);
            table
                .insert(key.as_str(), (v + 1, &b"12345678"[..]))
                .expect("insert");
        }
        tx.commit().expect("commit");
        h.record(t.elapsed().as_micros() as u64).expect("record");
    }
    h
}

// ---------------------------------------------------------------- phases

async fn registration(dir: &std::path::Path, run: usize) -> (Histogram<u64>, Histogram<u64>) {
    let db = Database::create(dir.join(format!("raw-{run}.redb"))).expect("raw db");
    let raw = tokio::task::block_in_place(|| raw_redb_sequential(&db));
    drop(db);
    let store = RedbStore::open(dir.join(format!("reg-{run}.redb"))).expect("store");
    let n = node(store, ReminderOptions::default(), true).await;
    let mut h = Histogram::new(3).expect("histogram");
    for i in 0..SEQUENTIAL {
        let r = n.reminders::<Job>(&format!("reg-{i}"));
        let t = Instant::now();
        r.register("r", Schedule::after(Duration::from_secs(86_400)), &())
            .await
            .expect("register");
        h.record(t.elapsed().as_micros() as u64).expect("record");
    }
    n.shutdown().await.expect("shutdown");
    (h, raw)
}

/// Fires/s and lateness p50/p99 (ms) of `DUE_AT_ONCE` one-shots due in
/// the same second.
async fn firing(dir: &std::path::Path, run: usize) -> (f64, u64, u64) {
    let file = dir.join(format!("fire-{run}.redb"));
    // Written with no keeper running; due a few seconds after.
    let due = unix_ms() + 15_000;
    {
        let w = node(
            RedbStore::open(&file).expect("store"),
            ReminderOptions::default(),
            false,
        )
        .await;
        let at = UNIX_EPOCH + Duration::from_millis(due);
        register_many(&w, &format!("fire{run}"), DUE_AT_ONCE, Schedule::at(at)).await;
        w.shutdown().await.expect("shutdown");
    }
    let left = due.saturating_sub(unix_ms());
    assert!(
        left > 3_000,
        "registering took too long: only {left} ms before the due time"
    );
    // The firing node starts 3 s before: its first load holds them all.
    tokio::time::sleep(Duration::from_millis(left - 3_000)).await;
    let options = ReminderOptions {
        initial_concurrency: 4096,
        budget: 0,
        max_loaded: DUE_AT_ONCE * 2,
        ..ReminderOptions::default()
    };
    FIRED.store(0, Ordering::SeqCst);
    LATE.lock().unwrap().clear();
    let n = node(RedbStore::open(&file).expect("store"), options, true).await;
    while FIRED.load(Ordering::SeqCst) < DUE_AT_ONCE as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = unix_ms().saturating_sub(due).max(1);
    n.shutdown().await.expect("shutdown");
    let mut late = std::mem::take(&mut *LATE.lock().unwrap());
    late.sort_unstable();
    let q = |p: f64| late[((late.len() - 1) as f64 * p) as usize];
    (DUE_AT_ONCE as f64 * 1000.0 / took as f64, q(0.5), q(0.99))
}

/// The raw parts of a fire: calls/s to fresh actors, and store deletes/s.
async fn raw_parts(dir: &std::path::Path, run: usize) -> (f64, f64) {
    let store = RedbStore::open(dir.join(format!("parts-{run}.redb"))).expect("store");
    let n = node(store.clone(), ReminderOptions::default(), true).await;
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..IN_FLIGHT {
        let n = n.clone();
        tasks.spawn(async move {
            for i in (c..DUE_AT_ONCE).step_by(IN_FLIGHT) {
                n.call::<Job, _>(format!("call{run}-{i}").as_str(), Poke)
                    .await
                    .expect("call");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("caller");
    }
    let calls = DUE_AT_ONCE as f64 / t.elapsed().as_secs_f64();
    n.shutdown().await.expect("shutdown");
    // The deletes a one-shot's advance does, on rows written first.
    let rows: Vec<mesh::state::ReminderRow> = (0..DUE_AT_ONCE)
        .map(|i| mesh::state::ReminderRow {
            key: StateKey::new("bench/Job", format!("del{run}-{i}")),
            name: "r".into(),
            due_ms: 0,
            period_ms: 0,
            payload: b"MS\x01\0\0\0\x01\x80".to_vec(),
            version: 0,
        })
        .collect();
    let rows = std::sync::Arc::new(rows);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..IN_FLIGHT {
        let (store, rows) = (store.clone(), rows.clone());
        tasks.spawn(async move {
            for i in (c..DUE_AT_ONCE).step_by(IN_FLIGHT) {
                store.put_reminder(&rows[i], 0, None).await.expect("put");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer");
    }
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..IN_FLIGHT {
        let (store, rows) = (store.clone(), rows.clone());
        tasks.spawn(async move {
            for i in (c..DUE_AT_ONCE).step_by(IN_FLIGHT) {
                let r = &rows[i];
                store
                    .delete_reminder(&r.key, &r.name, 1, None)
                    .await
                    .expect("delete");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer");
    }
    (calls, DUE_AT_ONCE as f64 / t.elapsed().as_secs_f64())
}

/// Ticks fired per 250 ms after a start with the default throttle, for
/// `OUTAGE_REMINDERS` periodic reminders that missed ten minutes.
async fn catch_up(dir: &std::path::Path) -> Vec<u64> {
    let file = dir.join("outage.redb");
    {
        let w = node(
            RedbStore::open(&file).expect("store"),
            ReminderOptions::default(),
            false,
        )
        .await;
        let started = SystemTime::now() - Duration::from_secs(600);
        let schedule = Schedule::every(Duration::from_secs(60))
            .starting_at(started)
            .missed(Missed::Once);
        register_many(&w, "outage", OUTAGE_REMINDERS, schedule).await;
        w.shutdown().await.expect("shutdown");
    }
    FIRED.store(0, Ordering::SeqCst);
    let n = node(
        RedbStore::open(&file).expect("store"),
        ReminderOptions::default(),
        true,
    )
    .await;
    let mut curve = Vec::new();
    let t0 = Instant::now();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(250),
        Duration::from_millis(250),
    );
    while FIRED.load(Ordering::SeqCst) < OUTAGE_REMINDERS as u64
        && t0.elapsed() < Duration::from_secs(60)
    {
        tick.tick().await;
        curve.push(FIRED.load(Ordering::SeqCst));
    }
    n.shutdown().await.expect("shutdown");
    curve
}

// ---------------------------------------------------------------- report

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("mesh reminder benchmarks: {cores} cores, embedded store (redb, fsync on), median of {REPEATS} runs (spread)");
        let dir = mesh_testkit::scratch("bench-reminders");

        println!("\nregistration, sequential ({SEQUENTIAL} a run)\n");
        println!("| {:<44} | {:>17} | {:>17} | {:<16} |", "", "p50 us (spread)", "p99 us (spread)", "ratio p50");
        println!("|{:-<46}|{:-<19}|{:-<19}|{:-<18}|", "", "", "", "");
        let (mut reg50, mut reg99, mut raw50, mut raw99) = (vec![], vec![], vec![], vec![]);
        for run in 0..REPEATS {
            let (h, raw) = registration(&dir, run).await;
            reg50.push(h.value_at_quantile(0.5) as f64);
            reg99.push(h.value_at_quantile(0.99) as f64);
            raw50.push(raw.value_at_quantile(0.5) as f64);
            raw99.push(raw.value_at_quantile(0.99) as f64);
        }
        let (r50, r99) = (median(raw50.clone()), median(raw99));
        let (m50, m99) = (median(reg50), median(reg99));
        println!("| {:<44} | {:>6.0} ({:.0}-{:.0}) | {:>6.0} ({:.0}-{:.0}) | {:<16} |", "raw redb: read + write, one fsync'd commit", r50.0, r50.1, r50.2, r99.0, r99.1, r99.2, "1.00x");
        println!("| {:<44} | {:>6.0} ({:.0}-{:.0}) | {:>6.0} ({:.0}-{:.0}) | {:<16} |", "mesh: node.reminders(id).register(..)", m50.0, m50.1, m50.2, m99.0, m99.1, m99.2, format!("{:.2}x raw", m50.0 / r50.0));

        println!("\n{DUE_AT_ONCE} one-shot reminders due in the same second, one node, {IN_FLIGHT}-way raw baselines\n");
        println!("| {:<52} | {:>10} | {:^19} | {:<24} |", "per second", "median", "spread", "ratio");
        println!("|{:-<54}|{:-<12}|{:-<21}|{:-<26}|", "", "", "", "");
        let (mut fires, mut p50s, mut p99s, mut calls, mut deletes) = (vec![], vec![], vec![], vec![], vec![]);
        for run in 0..REPEATS {
            let (c, d) = raw_parts(&dir, run).await;
            calls.push(c);
            deletes.push(d);
            let (f, p50, p99) = firing(&dir, run).await;
            fires.push(f);
            p50s.push(p50 as f64);
            p99s.push(p99 as f64);
        }
        let (c, d, f) = (median(calls), median(deletes), median(fires));
        // One fire is a call and a delete, one after the other.
        let bound = 1.0 / (1.0 / c.0 + 1.0 / d.0);
        println!("| {:<52} | {:>10.0} | {:>9.0}-{:<9.0} | {:<24} |", "raw: calls to fresh actors (no store)", c.0, c.1, c.2, "");
        println!("| {:<52} | {:>10.0} | {:>9.0}-{:<9.0} | {:<24} |", "raw: RedbStore::delete_reminder", d.0, d.1, d.2, "");
        println!("| {:<52} | {:>10.0} | {:>9} {:<9} | {:<24} |", "raw: a call then a delete (1 / (1/calls + 1/deletes))", bound, "", "", "1.00x");
        println!("| {:<52} | {:>10.0} | {:>9.0}-{:<9.0} | {:<24} |", "mesh: reminders fired and acknowledged", f.0, f.1, f.2, format!("{:.2}x raw call+delete", f.0 / bound));
        let (l50, l99) = (median(p50s), median(p99s));
        println!("\nlateness (delivery minus due): p50 {:.0} ms ({:.0}-{:.0}), p99 {:.0} ms ({:.0}-{:.0})", l50.0, l50.1, l50.2, l99.0, l99.1, l99.2);

        println!("\ncatch-up after a 10-minute outage: {OUTAGE_REMINDERS} reminders every minute (Missed::Once), default throttle (16 in flight doubling every 1 s, 20 000/s)\n");
        println!("| {:>8} | {:>10} | {:>12} |", "t (s)", "fired", "rate (/s)");
        println!("|{:-<10}|{:-<12}|{:-<14}|", "", "", "");
        let curve = catch_up(&dir).await;
        let mut prev = 0;
        for (i, &n) in curve.iter().enumerate() {
            println!("| {:>8.2} | {:>10} | {:>12.0} |", (i + 1) as f64 * 0.25, n, (n - prev) as f64 * 4.0);
            prev = n;
        }
    });
}
