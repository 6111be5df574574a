//! Durable state: stateful counter increments (one save per call) through
//! mesh, beside the raw store doing the same writes in the same run.
//!
//! `cargo bench --bench state` prints, for each store:
//!
//! - **embedded (redb, fsync on)**: writes/s with 256 in flight for raw
//!   redb, one write per commit (what an application writing through
//!   redb by itself does) and batched (256 writes per commit: the bound
//!   group commit can reach), and for mesh's `RedbStore` behind counter
//!   actors; sequential p50/p99 for raw single-write commits and for mesh;
//! - **PostgreSQL (a local server, fsync and synchronous_commit on)**:
//!   the same conditional update through raw tokio-postgres, on one
//!   connection (256 pipelined), on a deadpool pool of 16 (each write
//!   takes a connection, as `PgStore` does) and on 16 connections shared
//!   16 deep, and through mesh's `PgStore` (pool of 16); sequential
//!   p50/p99;
//! - **activation with state**: fresh activations/s of a stateful actor
//!   (a load of a row never written) beside the same actor without state.
//!
//! Medians of `REPEATS` runs, with the spread. The machine's cores are
//! printed; everything shares them (on 2 cores, PostgreSQL competes with
//! the load for the CPU).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mesh::prelude::*;
use mesh::state::{PgOptions, PgStore, RedbStore, State};
use mesh_testkit::pg;
use redb::{Database, Durability, ReadableTable, TableDefinition};

const IN_FLIGHT: usize = 256;
const WRITES: usize = 20_000;
const SEQUENTIAL: usize = 2_000;
const ACTIVATIONS: usize = 20_000;
const REPEATS: usize = 3;

// ---------------------------------------------------------------- actors

#[derive(Actor)]
#[actor(capability = "bench")]
struct Counter {
    #[state]
    n: State<u64>,
}

#[derive(Actor, Default)]
#[actor(capability = "bench")]
struct Plain {
    n: u64,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
struct Inc;

/// Reads: a turn that changes nothing writes nothing.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
struct Peek;

#[mesh::handlers]
impl Counter {
    async fn inc(&mut self, _: Inc) -> u64 {
        *self.n += 1;
        *self.n
    }

    async fn peek(&mut self, _: Peek) -> u64 {
        *self.n
    }
}

#[mesh::handlers]
impl Plain {
    async fn peek(&mut self, _: Peek) -> u64 {
        self.n
    }
}

async fn node(store: impl mesh::state::StateStore) -> Node {
    Node::builder()
        .default_node(false)
        .capabilities(["bench"])
        .actor::<Counter>()
        .actor::<Plain>()
        .state(store)
        .start()
        .await
        .expect("node starts")
}

/// `IN_FLIGHT` callers, each on its own counter, `WRITES` calls in all:
/// calls/s.
async fn mesh_writes(node: &Node, prefix: &str) -> f64 {
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..IN_FLIGHT {
        let (node, id) = (node.clone(), format!("{prefix}-{c}"));
        tasks.spawn(async move {
            for _ in 0..WRITES / IN_FLIGHT {
                node.call::<Counter, _>(id.as_str(), Inc)
                    .await
                    .expect("inc");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("caller");
    }
    (WRITES / IN_FLIGHT * IN_FLIGHT) as f64 / t0.elapsed().as_secs_f64()
}

/// One caller, `SEQUENTIAL` calls: latency (µs).
async fn mesh_sequential(node: &Node, id: &str) -> Histogram<u64> {
    let mut h = Histogram::new(3).expect("histogram");
    for _ in 0..SEQUENTIAL {
        let t = Instant::now();
        node.call::<Counter, _>(id, Inc).await.expect("inc");
        h.record(t.elapsed().as_micros() as u64).expect("record");
    }
    h
}

/// Fresh activations/s of `A` (a first call to each of `ACTIVATIONS` ids).
async fn activations<A: mesh::Handler<Peek>>(node: &Node, prefix: &str) -> f64 {
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..IN_FLIGHT {
        let (node, prefix) = (node.clone(), prefix.to_owned());
        tasks.spawn(async move {
            for i in (c..ACTIVATIONS).step_by(IN_FLIGHT) {
                // A read-only first call: the load is the only store work.
                let _ = node
                    .call::<A, _>(format!("{prefix}-{i}").as_str(), Peek)
                    .await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("caller");
    }
    ACTIVATIONS as f64 / t0.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------- raw redb

const RAW: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("raw");

/// The compare-and-set mesh does, by hand: read the version, check it,
/// write version + 1.
fn raw_cas(t: &mut redb::Table<&str, (u64, &[u8])>, key: &str, bytes: &[u8]) {
    let v = t.get(key).expect("get").map_or(0, |g| g.value().0);
    t.insert(key, (v + 1, bytes)).expect("insert");
}

/// Raw redb, `IN_FLIGHT` writers on the blocking pool, each write its own
/// commit (fsync): writes/s.
async fn raw_redb_single(db: &Arc<Database>) -> f64 {
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..IN_FLIGHT {
        let db = db.clone();
        tasks.spawn_blocking(move || {
            let key = format!("single-{c}");
            for _ in 0..WRITES / IN_FLIGHT {
                let tx = db.begin_write().expect("begin");
                raw_cas(&mut tx.open_table(RAW).expect("table"), &key, b"12345678");
                tx.commit().expect("commit");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer");
    }
    (WRITES / IN_FLIGHT * IN_FLIGHT) as f64 / t0.elapsed().as_secs_f64()
}

/// Raw redb, `IN_FLIGHT` writes per commit: writes/s (group commit's
/// bound).
fn raw_redb_batched(db: &Database) -> f64 {
    let t0 = Instant::now();
    for _ in 0..WRITES / IN_FLIGHT {
        let tx = db.begin_write().expect("begin");
        {
            let mut t = tx.open_table(RAW).expect("table");
            for c in 0..IN_FLIGHT {
                raw_cas(&mut t, &format!("batched-{c}"), b"12345678");
            }
        }
        tx.commit().expect("commit");
    }
    (WRITES / IN_FLIGHT * IN_FLIGHT) as f64 / t0.elapsed().as_secs_f64()
}

fn raw_redb_sequential(db: &Database) -> Histogram<u64> {
    let mut h = Histogram::new(3).expect("histogram");
    for _ in 0..SEQUENTIAL {
        let t = Instant::now();
        let tx = db.begin_write().expect("begin");
        raw_cas(&mut tx.open_table(RAW).expect("table"), "seq", b"12345678");
        tx.commit().expect("commit");
        h.record(t.elapsed().as_micros() as u64).expect("record");
    }
    h
}

// ------------------------------------------------------- raw tokio-postgres

const PG_UPDATE: &str =
    "UPDATE raw_state SET version = version + 1, payload = $2 WHERE id = $1 AND version = $3";

async fn pg_client(server: &pg::Server) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&server.config(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

async fn pg_prepare(server: &pg::Server) {
    let c = pg_client(server).await;
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS raw_state (id text PRIMARY KEY, version bigint NOT NULL, payload bytea)",
    )
    .await
    .expect("create");
    c.execute("TRUNCATE raw_state", &[])
        .await
        .expect("truncate");
    for i in 0..IN_FLIGHT {
        c.execute(
            "INSERT INTO raw_state VALUES ($1, 0, NULL)",
            &[&format!("r-{i}")],
        )
        .await
        .expect("insert");
    }
    c.execute("INSERT INTO raw_state VALUES ('seq', 0, NULL)", &[])
        .await
        .expect("insert");
}

/// `IN_FLIGHT` writers on a deadpool pool of 16 connections, each write
/// taking a connection for itself (what mesh's `PgStore` does): writes/s.
async fn raw_pg_pool(pool: &deadpool_postgres::Pool) -> f64 {
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..IN_FLIGHT {
        let pool = pool.clone();
        tasks.spawn(async move {
            let id = format!("r-{c}");
            let from: i64 = {
                let client = pool.get().await.expect("a connection");
                let row = client
                    .query_one("SELECT version FROM raw_state WHERE id = $1", &[&id])
                    .await
                    .expect("version");
                row.get(0)
            };
            for v in from..from + (WRITES / IN_FLIGHT) as i64 {
                let client = pool.get().await.expect("a connection");
                let st = client.prepare_cached(PG_UPDATE).await.expect("prepare");
                let n = client
                    .execute(&st, &[&id, &&b"12345678"[..], &v])
                    .await
                    .expect("update");
                assert_eq!(n, 1, "the compare-and-set holds");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer");
    }
    (WRITES / IN_FLIGHT * IN_FLIGHT) as f64 / t0.elapsed().as_secs_f64()
}

/// `IN_FLIGHT` writers sharing `clients` round-robin (one client: all
/// pipelined on one connection; 16: 16 deep on each); each keeps its
/// row's version: writes/s.
async fn raw_pg(clients: &[Arc<tokio_postgres::Client>]) -> f64 {
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..IN_FLIGHT {
        let client = clients[c % clients.len()].clone();
        tasks.spawn(async move {
            let st = client.prepare(PG_UPDATE).await.expect("prepare");
            let id = format!("r-{c}");
            let row = client
                .query_one("SELECT version FROM raw_state WHERE id = $1", &[&id])
                .await
                .expect("version");
            let from: i64 = row.get(0);
            for v in from..from + (WRITES / IN_FLIGHT) as i64 {
                let n = client
                    .execute(&st, &[&id, &&b"12345678"[..], &v])
                    .await
                    .expect("update");
                assert_eq!(n, 1, "the compare-and-set holds");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer");
    }
    (WRITES / IN_FLIGHT * IN_FLIGHT) as f64 / t0.elapsed().as_secs_f64()
}

async fn raw_pg_sequential(client: &tokio_postgres::Client) -> Histogram<u64> {
    let st = client.prepare(PG_UPDATE).await.expect("prepare");
    let row = client
        .query_one("SELECT version FROM raw_state WHERE id = 'seq'", &[])
        .await
        .expect("version");
    let from: i64 = row.get(0);
    let mut h = Histogram::new(3).expect("histogram");
    for v in from..from + SEQUENTIAL as i64 {
        let t = Instant::now();
        client
            .execute(&st, &[&"seq", &&b"12345678"[..], &v])
            .await
            .expect("update");
        h.record(t.elapsed().as_micros() as u64).expect("record");
    }
    h
}

// ---------------------------------------------------------------- report

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn rate(label: &str, runs: Vec<f64>, base: Option<(&str, f64)>) {
    let (m, lo, hi) = median(runs);
    let ratio = base.map_or(String::new(), |(name, b)| format!("{:.2}x {name}", m / b));
    println!("| {label:<52} | {m:>10.0} | {lo:>9.0}-{hi:<9.0} | {ratio:<28} |");
}

fn lat(label: &str, h: &Histogram<u64>) {
    println!(
        "| {label:<52} | p50 {:>6} us | p99 {:>6} us |",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99)
    );
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("mesh state benchmarks: {cores} cores, median of {REPEATS} runs (spread), {IN_FLIGHT} in flight, {WRITES} writes a run");
        let dir = mesh_testkit::scratch("bench-state");

        // -------- embedded
        println!("\nembedded store (redb 4, fsync on: Durability::Immediate)\n");
        println!("| {:<52} | {:>10} | {:^19} | {:<28} |", "writes/s", "median", "spread", "ratio");
        let raw_db = Arc::new(Database::create(dir.join("raw.redb")).expect("raw db"));
        {
            let mut tx = raw_db.begin_write().expect("begin");
            tx.set_durability(Durability::Immediate).expect("durability");
            tx.open_table(RAW).expect("table");
            tx.commit().expect("commit");
        }
        let mut single = Vec::new();
        let mut batched = Vec::new();
        let mut meshed = Vec::new();
        let store = RedbStore::open(dir.join("mesh.redb")).expect("store");
        let n = node(store).await;
        for r in 0..REPEATS {
            single.push(raw_redb_single(&raw_db).await);
            let db = raw_db.clone();
            batched.push(tokio::task::spawn_blocking(move || raw_redb_batched(&db)).await.expect("batched"));
            meshed.push(mesh_writes(&n, &format!("e{r}")).await);
        }
        let base = median(single.clone()).0;
        rate("raw redb, one write per commit", single, None);
        rate("raw redb, 256 writes per commit", batched.clone(), Some(("single", base)));
        let (b, _, _) = median(batched);
        rate("mesh RedbStore (group commit), counter actors", meshed.clone(), Some(("single", base)));
        println!("|   (mesh / raw batched: {:.2}x)", median(meshed).0 / b);
        let db = raw_db.clone();
        let raw_seq = tokio::task::spawn_blocking(move || raw_redb_sequential(&db)).await.expect("seq");
        let mesh_seq = mesh_sequential(&n, "seq").await;
        lat("sequential: raw redb, one write per commit", &raw_seq);
        lat("sequential: mesh RedbStore", &mesh_seq);
        let plain = activations::<Plain>(&n, "pa").await;
        let stateful = activations::<Counter>(&n, "sa").await;
        println!(
            "| activations/s: without state {plain:.0}, with state (a load, no row) {stateful:.0}: {:.2}x",
            stateful / plain
        );
        n.shutdown().await.expect("shutdown");
        drop(n);

        // -------- PostgreSQL
        let server = pg::Server::start_with(true);
        pg_prepare(&server).await;
        println!("\nPostgreSQL 15 (local server, Unix socket, fsync and synchronous_commit on)\n");
        println!("| {:<52} | {:>10} | {:^19} | {:<28} |", "writes/s", "median", "spread", "ratio");
        let one = vec![Arc::new(pg_client(&server).await)];
        let mut pool = Vec::new();
        for _ in 0..16 {
            pool.push(Arc::new(pg_client(&server).await));
        }
        let options = PgOptions {
            timeout: Duration::from_secs(30),
            ..PgOptions::default()
        };
        let n = node(PgStore::with_options(&server.config(), options).expect("store")).await;
        let deadpool = {
            let cfg: tokio_postgres::Config = server.config().parse().expect("config");
            let mgr = deadpool_postgres::Manager::from_config(
                cfg,
                tokio_postgres::NoTls,
                deadpool_postgres::ManagerConfig {
                    recycling_method: deadpool_postgres::RecyclingMethod::Fast,
                },
            );
            deadpool_postgres::Pool::builder(mgr).max_size(16).build().expect("pool")
        };
        let (mut raw_one, mut raw_pool, mut raw_shared, mut meshed) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..REPEATS {
            raw_one.push(raw_pg(&one).await);
            raw_pool.push(raw_pg_pool(&deadpool).await);
            raw_shared.push(raw_pg(&pool).await);
            meshed.push(mesh_writes(&n, &format!("p{r}")).await);
        }
        let base_one = median(raw_one.clone()).0;
        let base_pool = median(raw_pool.clone()).0;
        let base_shared = median(raw_shared.clone()).0;
        rate("raw tokio-postgres, one connection (pipelined)", raw_one, None);
        rate("raw tokio-postgres, deadpool of 16 (one op each)", raw_pool, None);
        rate("raw tokio-postgres, 16 connections, 16 deep each", raw_shared, None);
        rate("mesh PgStore (pool of 16), counter actors", meshed.clone(), Some(("deadpool of 16", base_pool)));
        let m = median(meshed).0;
        println!(
            "|   (mesh / one connection: {:.2}x; mesh / 16 connections 16 deep: {:.2}x)",
            m / base_one,
            m / base_shared
        );
        let raw_seq = raw_pg_sequential(&one[0]).await;
        let mesh_seq = mesh_sequential(&n, "seq").await;
        lat("sequential: raw tokio-postgres", &raw_seq);
        lat("sequential: mesh PgStore", &mesh_seq);
        let plain = activations::<Plain>(&n, "pa").await;
        let stateful = activations::<Counter>(&n, "sa").await;
        println!(
            "| activations/s: without state {plain:.0}, with state (a SELECT, no row) {stateful:.0}: {:.2}x",
            stateful / plain
        );
        n.shutdown().await.expect("shutdown");
    });
}
