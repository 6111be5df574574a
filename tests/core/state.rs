//! The state stores mesh ships against the conformance suite
//! (`mesh_testkit::state`), and what only the embedded store promises:
//! its rows outlive the process that wrote them.

use std::sync::Arc;

use mesh::state::{MemoryStore, RedbOptions, RedbStore, StateKey, StateStore, StoreError};
use mesh_testkit::scratch;

const LIMIT: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_keeps_the_contract() {
    mesh_testkit::state::check(Arc::new(MemoryStore::with_limit(LIMIT)), LIMIT).await;
    mesh_testkit::state::check_reminders(Arc::new(MemoryStore::with_limit(LIMIT)), LIMIT).await;
}

fn redb(dir: &std::path::Path) -> RedbStore {
    let options = RedbOptions {
        max_row: LIMIT,
        ..RedbOptions::default()
    };
    RedbStore::open_with(dir.join("state.redb"), options).expect("the store opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_keeps_the_contract() {
    let dir = scratch("state-redb");
    let store = Arc::new(redb(&dir));
    mesh_testkit::state::check(store.clone(), LIMIT).await;
    mesh_testkit::state::check_reminders(store, LIMIT).await;
}

/// Rows, versions and fences are on disk: a store opened again on the
/// file (the process restarted) has them, and a second open while the
/// first is alive is refused with a message that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_finds_its_rows_again_after_a_reopen() {
    let dir = scratch("state-redb-reopen");
    let key = StateKey::new("bank/Account", "a1");
    {
        let store = redb(&dir);
        assert_eq!(store.load(&key, Some(3)).await.map(|s| s.version), Ok(0));
        assert_eq!(store.save(&key, 0, Some(3), Some(b"42")).await, Ok(1));
        let again = RedbStore::open(dir.join("state.redb")).expect_err("one process at a time");
        assert!(matches!(again, StoreError::Unavailable(_)), "{again}");
    }
    // The last clone's drop waited for the writer: the file is free.
    let store = RedbStore::open(dir.join("state.redb")).expect("opens again");
    let got = store.load(&key, None).await.expect("load");
    assert_eq!((got.version, got.bytes.as_deref()), (1, Some(&b"42"[..])));
    assert!(matches!(
        store.save(&key, 1, Some(2), Some(b"zombie")).await,
        Err(StoreError::Fenced { stored: 3, .. })
    ));
}

// ---- Stateful actors: `#[state]` fields, the output gate, failures ------

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use std::future::IntoFuture;

use mesh::prelude::*;
use mesh::state::{envelope, BoxFuture, State, Stored};
use tokio::sync::{Notify, Semaphore};

/// A counter whose value is durable.
#[derive(Actor)]
#[actor(capability = "st")]
struct Counter {
    #[state]
    n: State<u64>,
    /// Not durable: back to 0 on each activation.
    seen: u64,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
struct Inc;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = (u64, u64, u64))]
struct Get;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = ())]
struct Reset;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = ())]
struct Passivate;

#[mesh::handlers]
impl Counter {
    async fn inc(&mut self, _: Inc) -> u64 {
        self.seen += 1;
        *self.n += 1;
        *self.n
    }

    /// The value, the calls this activation saw, the stored version.
    async fn get(&mut self, _: Get) -> (u64, u64, u64) {
        (*self.n, self.seen, self.n.version())
    }

    async fn reset(&mut self, _: Reset) {
        self.n.clear();
    }

    async fn passivate(&mut self, _: Passivate, ctx: &Ctx) {
        ctx.deactivate();
    }
}

/// A stateless actor beside it: it must not care about the store.
#[derive(Actor, Default)]
#[actor(capability = "st")]
struct Echo;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u32)]
struct Ping(u32);

#[mesh::handlers]
impl Echo {
    async fn ping(&mut self, Ping(n): Ping) -> u32 {
        n
    }
}

/// A store in memory whose saves wait for a permit and say when they
/// start, and which can be taken down.
#[derive(Clone)]
struct Gated {
    inner: MemoryStore,
    permits: Arc<Semaphore>,
    saving: Arc<Notify>,
    down: Arc<AtomicBool>,
    saves: Arc<AtomicUsize>,
}

impl Default for Gated {
    fn default() -> Self {
        Gated {
            inner: MemoryStore::new(),
            permits: Arc::new(Semaphore::new(0)),
            saving: Arc::default(),
            down: Arc::default(),
            saves: Arc::default(),
        }
    }
}

impl Gated {
    fn open(&self) -> Gated {
        self.permits.add_permits(1 << 20);
        self.clone()
    }
}

impl StateStore for Gated {
    fn name(&self) -> &'static str {
        "gated"
    }

    fn load<'a>(
        &'a self,
        key: &'a StateKey,
        claim: Option<u64>,
    ) -> BoxFuture<'a, Result<Stored, StoreError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("the test took it down".into()));
            }
            self.inner.load(key, claim).await
        })
    }

    fn save<'a>(
        &'a self,
        key: &'a StateKey,
        expected: u64,
        token: Option<u64>,
        bytes: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            self.saves.fetch_add(1, Ordering::SeqCst);
            self.saving.notify_one();
            let permit = self.permits.acquire().await.expect("never closed");
            permit.forget();
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("the test took it down".into()));
            }
            self.inner.save(key, expected, token, bytes).await
        })
    }
}

async fn node_with(store: impl StateStore) -> Node {
    Node::builder()
        .default_node(false)
        .capabilities(["st"])
        .actor::<Counter>()
        .actor::<Echo>()
        .state(store)
        .start()
        .await
        .expect("node starts")
}

fn key(id: &str) -> StateKey {
    StateKey::new("st/Counter", id)
}

/// Durable before visible: the reply of a turn that changed the state
/// waits for its write. Fails if the reply is sent when the handler
/// returns (it would be ready before the write even starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_waits_until_the_turns_write_is_durable() {
    let store = Gated::default();
    let node = node_with(store.clone()).await;
    let saving = store.saving.notified();
    let mut call = std::pin::pin!(node.call::<Counter, _>("c1", Inc).into_future());
    tokio::select! {
        _ = saving => {}
        r = &mut call => panic!("the reply came before the write started: {r:?}"),
    }
    // The write has started and cannot finish: the reply must not be out.
    assert!(
        futures_poll(&mut call).is_none(),
        "the reply went out before the write was durable"
    );
    store.permits.add_permits(1);
    assert_eq!(call.await.expect("the call"), 1);
    // When the reply came, the store had it.
    let stored = store.inner.load(&key("c1"), None).await.expect("load");
    assert_eq!(stored.version, 1);
    // A turn that changes nothing writes nothing and waits for nothing.
    let (n, _, version) = node.call::<Counter, _>("c1", Get).await.expect("get");
    assert_eq!((n, version), (1, 1));
    assert_eq!(
        store.saves.load(Ordering::SeqCst),
        1,
        "one write per changing turn"
    );
    node.shutdown().await.expect("shutdown");
}

/// Polls `f` once: `Some` if it is ready.
fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match std::pin::Pin::new(f).poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// State outlives its activation: passivated, the next activation loads
/// what the last one wrote (and only the `#[state]` field).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_outlives_its_activation_and_clear_deletes_it() {
    let store = Gated::default().open();
    let node = node_with(store.clone()).await;
    for want in 1..=3 {
        assert_eq!(node.call::<Counter, _>("c2", Inc).await.expect("inc"), want);
    }
    node.call::<Counter, _>("c2", Passivate)
        .await
        .expect("passivate");
    let (n, seen, version) = node.call::<Counter, _>("c2", Get).await.expect("get");
    assert_eq!(
        (n, seen, version),
        (3, 0, 3),
        "a new activation, the stored value"
    );
    node.call::<Counter, _>("c2", Reset).await.expect("reset");
    assert_eq!(
        store.inner.load(&key("c2"), None).await.expect("load"),
        Stored {
            version: 4,
            bytes: None
        },
        "a clear is a write that deletes the bytes"
    );
    node.call::<Counter, _>("c2", Passivate)
        .await
        .expect("passivate");
    assert_eq!(node.call::<Counter, _>("c2", Inc).await.expect("inc"), 1);
    node.shutdown().await.expect("shutdown");
}

/// A write refused (another writer moved the version: eventual mode's
/// duplicate) fails the call that made the change, typed, and drops the
/// activation; the next call loads afresh and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_write_fails_its_call_and_the_next_call_loads_afresh() {
    let store = Gated::default().open();
    let node = node_with(store.clone()).await;
    assert_eq!(node.call::<Counter, _>("c3", Inc).await.expect("inc"), 1);
    // Another activation of c3 (elsewhere) writes 41 on top of version 1.
    let other = envelope::encode(1, &41u64).expect("encodes");
    assert_eq!(
        store.inner.save(&key("c3"), 1, None, Some(&other)).await,
        Ok(2)
    );
    let err = node
        .call::<Counter, _>("c3", Inc)
        .await
        .expect_err("a conflict");
    match &err {
        mesh::Error::State {
            actor,
            id,
            error:
                StoreError::Conflict {
                    expected: 1,
                    stored: 2,
                },
        } if actor == "Counter" && id == "c3" => {}
        other => panic!("want a typed conflict, got {other:?}"),
    }
    // The lost increment was never acknowledged; the other writer's is
    // there, and the next call builds on it.
    assert_eq!(node.call::<Counter, _>("c3", Inc).await.expect("inc"), 42);
    assert_eq!(
        store.inner.load(&key("c3"), None).await.map(|s| s.version),
        Ok(3)
    );
    node.shutdown().await.expect("shutdown");
}

/// A store that cannot be reached fails calls to stateful actors at once,
/// typed; stateless actors keep working; service resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_fails_stateful_calls_typed_and_service_resumes_after() {
    let store = Gated::default().open();
    let node = node_with(store.clone()).await;
    assert_eq!(node.call::<Counter, _>("c4", Inc).await.expect("inc"), 1);
    store.down.store(true, Ordering::SeqCst);
    // The write of a live activation fails; then its next activation's load.
    for _ in 0..2 {
        let err = node.call::<Counter, _>("c4", Inc).await.expect_err("down");
        assert!(
            matches!(
                err,
                mesh::Error::State {
                    error: StoreError::Unavailable(_),
                    ..
                }
            ),
            "{err:?}"
        );
    }
    assert_eq!(
        node.call::<Echo, _>("e", Ping(7)).await.expect("stateless"),
        7
    );
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(node.call::<Counter, _>("c4", Inc).await.expect("inc"), 2);
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_actor_on_a_node_without_a_store_fails_saying_so() {
    let node = Node::builder()
        .default_node(false)
        .capabilities(["st"])
        .actor::<Counter>()
        .start()
        .await
        .expect("node starts");
    let err = node
        .call::<Counter, _>("c5", Inc)
        .await
        .expect_err("no store");
    assert!(err.to_string().contains("NodeBuilder::state"), "{err}");
    node.shutdown().await.expect("shutdown");
}

/// The embedded store across a node restart: the second node, on the
/// same file, serves the values the first acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_values_survive_a_node_restart_on_the_embedded_store() {
    let dir = scratch("state-restart");
    let node = node_with(redb(&dir)).await;
    for want in 1..=5 {
        assert_eq!(node.call::<Counter, _>("r1", Inc).await.expect("inc"), want);
    }
    node.shutdown().await.expect("shutdown");
    drop(node);
    let node = node_with(redb(&dir)).await;
    let (n, _, version) = node.call::<Counter, _>("r1", Get).await.expect("get");
    assert_eq!((n, version), (5, 5));
    node.shutdown().await.expect("shutdown");
}

// ---- Schemas ---------------------------------------------------------------

/// Version 1 of a wallet's state.
#[derive(Serialize, Deserialize)]
struct WalletV1 {
    cents: u32,
}

/// Version 2: the field changed type and name, which serde's defaults
/// cannot bridge: an upgrade function reads version 1.
#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
struct WalletV2 {
    millis: u64,
}

impl WalletV2 {
    fn upgrade(schema: u32, payload: &[u8]) -> Result<Self, mesh::BoxError> {
        match schema {
            1 => {
                let v1: WalletV1 = envelope::decode(payload)?;
                Ok(WalletV2 {
                    millis: u64::from(v1.cents) * 10,
                })
            }
            other => Err(format!("no upgrade from schema {other}").into()),
        }
    }
}

/// A tuple struct, its state second, a schema and an upgrade.
#[derive(Actor)]
#[actor(capability = "st")]
struct Wallet(
    u8,
    #[state(schema = 2, upgrade = WalletV2::upgrade)] State<WalletV2>,
);

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
struct Balance;

#[mesh::handlers]
impl Wallet {
    /// Field 0 is not durable: always its default here.
    async fn balance(&mut self, _: Balance) -> u64 {
        self.1.millis + u64::from(self.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_schema_is_upgraded_and_a_newer_one_refused() {
    let store = MemoryStore::new();
    let wallet = |id: &str| StateKey::new("st/Wallet", id);
    let v1 = envelope::encode(1, &WalletV1 { cents: 12 }).expect("encodes");
    assert_eq!(store.save(&wallet("old"), 0, None, Some(&v1)).await, Ok(1));
    let v3 = envelope::encode(3, &WalletV2 { millis: 5 }).expect("encodes");
    assert_eq!(store.save(&wallet("new"), 0, None, Some(&v3)).await, Ok(1));
    let node = Node::builder()
        .default_node(false)
        .capabilities(["st"])
        .actor::<Wallet>()
        .state(store)
        .start()
        .await
        .expect("node starts");
    assert_eq!(
        node.call::<Wallet, _>("old", Balance)
            .await
            .expect("upgraded"),
        120
    );
    let err = node
        .call::<Wallet, _>("new", Balance)
        .await
        .expect_err("newer");
    assert!(
        matches!(&err, mesh::Error::State { error: StoreError::Codec(m), .. } if m.contains("schema 3")),
        "{err:?}"
    );
    node.shutdown().await.expect("shutdown");
}

// ---- PostgreSQL: a real server per test ------------------------------------

use mesh::state::{PgOptions, PgStore};
use mesh_testkit::pg;

fn pg_store(server: &pg::Server, limit: usize) -> PgStore {
    let options = PgOptions {
        max_row: limit,
        timeout: Duration::from_secs(2),
        ..PgOptions::default()
    };
    PgStore::with_options(&server.config(), options).expect("a valid configuration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_keeps_the_contract() {
    let server = pg::Server::start();
    mesh_testkit::state::check(Arc::new(pg_store(&server, LIMIT)), LIMIT).await;
    mesh_testkit::state::check_reminders(Arc::new(pg_store(&server, LIMIT)), LIMIT).await;
    // A second store on the same server (another node) sees the rows and
    // creates nothing twice.
    let other = pg_store(&server, LIMIT);
    let key = StateKey::new("conformance-shared/Actor", "x");
    assert_eq!(other.save(&key, 0, None, Some(b"1")).await, Ok(1));
    let first = pg_store(&server, LIMIT);
    assert_eq!(first.load(&key, None).await.map(|s| s.version), Ok(1));
}

/// PostgreSQL over TLS (rustls on mesh's crypto provider), against a
/// server that lets TCP clients in over TLS only: with its CA's roots the
/// store keeps the contract (so TLS was used); without roots it connects
/// in plain text and the server refuses it; with another CA's roots the
/// server's certificate is refused; `sslmode=require` without roots is
/// refused when the store is made (it could not verify anyone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_over_tls_verifies_the_server() {
    let server = pg::Server::start_tls();
    let tls = |ca: Option<&str>| PgOptions {
        max_row: LIMIT,
        timeout: Duration::from_secs(2),
        ca: ca.map(|c| c.as_bytes().to_vec()),
        ..PgOptions::default()
    };
    let url = server.tcp_config();
    let store = PgStore::with_options(&url, tls(Some(server.ca()))).expect("a valid store");
    mesh_testkit::state::check(Arc::new(store), LIMIT).await;
    let key = StateKey::new("tls/Actor", "x");
    let unavailable = |got: &Result<u64, StoreError>, what: &str| matches!(got, Err(StoreError::Unavailable(m)) if m.contains(what));
    let plain = PgStore::with_options(&url, tls(None)).expect("a valid store");
    let got = plain.save(&key, 0, None, Some(b"1")).await;
    assert!(unavailable(&got, "no encryption"), "{got:?}");
    let elsewhere = mesh_testkit::pki::Ca::new("elsewhere.test");
    let wrong = PgStore::with_options(&url, tls(Some(&elsewhere.pem))).expect("a valid store");
    let got = wrong.save(&key, 0, None, Some(b"1")).await;
    assert!(unavailable(&got, "UnknownIssuer"), "{got:?}");
    let require = PgStore::with_options(&format!("{url} sslmode=require"), tls(None)).err();
    assert!(
        matches!(&require, Some(StoreError::Unavailable(m)) if m.contains("PgOptions::ca")),
        "{require:?}"
    );
}

/// The PostgreSQL store shares its connections: 64 saves at once on a
/// store of one connection all land, on one server backend (their
/// statements pipelined on it); when the server ends that backend, the
/// operation in flight on it fails and the next one takes a new
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_share_pipelined_connections_and_a_broken_one_is_replaced() {
    let server = pg::Server::start();
    let options = PgOptions {
        pool: 1,
        timeout: Duration::from_secs(5),
        ..PgOptions::default()
    };
    let store = PgStore::with_options(&server.config(), options).expect("a valid store");
    let mut saves = tokio::task::JoinSet::new();
    for i in 0..64 {
        let store = store.clone();
        saves.spawn(async move {
            let key = StateKey::new("lanes/Actor", format!("{i}"));
            store.save(&key, 0, None, Some(b"1")).await
        });
    }
    let got = saves.join_all().await;
    assert!(got.iter().all(|r| *r == Ok(1)), "{got:?}");
    let (client, conn) = tokio_postgres::connect(&server.config(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let backends = || async {
        client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' \
                 AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .iter()
            .map(|r| r.get::<_, i32>(0))
            .collect::<Vec<i32>>()
    };
    let first = backends().await;
    assert_eq!(first.len(), 1, "the store's backends: {first:?}");
    client
        .execute("SELECT pg_terminate_backend($1)", &[&first[0]])
        .await
        .expect("terminate");
    let key = StateKey::new("lanes/Actor", "0");
    // The first load may meet the broken connection; the next takes a
    // new one.
    let mut loads = Vec::new();
    for _ in 0..2 {
        let load = store.load(&key, None).await;
        let ok = load.is_ok();
        loads.push(load.map(|s| s.version));
        if ok {
            break;
        }
    }
    assert_eq!(loads.last(), Some(&Ok(1)), "{loads:?}");
    let now = backends().await;
    assert!(
        now.len() == 1 && now != first,
        "before {first:?}, now {now:?}"
    );
}

/// Nodes that start together each create the table on their first use,
/// at once: every one of them succeeds (`CREATE TABLE IF NOT EXISTS`
/// alone lets the losers of that race fail with "type already exists";
/// the chaos suite's rolling restarts met it under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_creating_the_table_at_once_all_succeed() {
    for round in 0..5 {
        let server = pg::Server::start();
        let mut firsts = tokio::task::JoinSet::new();
        for i in 0..8 {
            let store = pg_store(&server, LIMIT);
            firsts.spawn(async move {
                let key = StateKey::new("race/Actor", format!("{i}"));
                store.save(&key, 0, None, Some(b"1")).await
            });
        }
        let got = firsts.join_all().await;
        assert!(got.iter().all(|r| *r == Ok(1)), "round {round}: {got:?}");
    }
}

/// PostgreSQL stopped and started again under load: calls to stateful
/// actors fail typed while it is down, stateless ones keep working, service
/// resumes by itself, and nothing acknowledged is lost (acknowledged <=
/// stored <= attempted, per counter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_restarted_under_load_loses_nothing_acknowledged() {
    const COUNTERS: usize = 8;
    let mut server = pg::Server::start();
    let node = node_with(pg_store(&server, LIMIT)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let successes = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Notify::new());
    let mut load = tokio::task::JoinSet::new();
    for i in 0..COUNTERS {
        let (node, stop) = (node.clone(), stop.clone());
        let (failures, successes) = (failures.clone(), successes.clone());
        let progress = progress.clone();
        load.spawn(async move {
            let id = format!("pg-{i}");
            let (mut acked, mut attempted) = (0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                attempted += 1;
                match node.call::<Counter, _>(id.as_str(), Inc).await {
                    Ok(_) => {
                        acked += 1;
                        successes.fetch_add(1, Ordering::SeqCst);
                        progress.notify_waiters();
                    }
                    Err(mesh::Error::State { error, .. }) => {
                        assert!(
                            matches!(error, StoreError::Unavailable(_) | StoreError::Uncertain(_)),
                            "a stopped server fails typed: {error:?}"
                        );
                        failures.fetch_add(1, Ordering::SeqCst);
                        progress.notify_waiters();
                        tokio::task::yield_now().await;
                    }
                    Err(e) => panic!("{id}: {e}"),
                }
            }
            (id, acked, attempted)
        });
    }
    let ok = || successes.load(Ordering::SeqCst);
    until("some calls succeed", || ok() >= 100, &progress).await;
    server.stop();
    until(
        "calls fail while the server is down",
        &|| failures.load(Ordering::SeqCst) >= 20,
        &progress,
    )
    .await;
    assert_eq!(
        node.call::<Echo, _>("e", Ping(3)).await.expect("stateless"),
        3
    );
    server.resume();
    let before = ok();
    until("calls succeed again", || ok() >= before + 100, &progress).await;
    stop.store(true, Ordering::SeqCst);
    let store = pg_store(&server, LIMIT);
    while let Some(r) = load.join_next().await {
        let (id, acked, attempted) = r.expect("a load task");
        let stored = store.load(&key(&id), None).await.expect("load");
        let value = match stored.bytes {
            Some(b) => {
                let (_, payload) = envelope::open(&b).expect("an envelope");
                envelope::decode::<u64>(payload).expect("a counter")
            }
            None => 0,
        };
        assert!(
            acked <= value && value <= attempted,
            "{id}: acknowledged {acked}, stored {value}, attempted {attempted}"
        );
    }
    println!(
        "{} calls acknowledged, {} failed typed while the server was down",
        successes.load(Ordering::SeqCst),
        failures.load(Ordering::SeqCst)
    );
    node.shutdown().await.expect("shutdown");
}

/// Waits until `f` holds, looking again at each outcome (`progress`);
/// fails past 60 s, naming `what`.
async fn until(what: &str, f: impl Fn() -> bool, progress: &Notify) {
    let t0 = std::time::Instant::now();
    loop {
        let next = progress.notified();
        if f() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not within 60 s: {what}"
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), next).await;
    }
}

// ---- Casts wait for the turn's write ---------------------------------------

/// What the witness received, in order, and a wake-up per message.
#[derive(Default)]
struct Seen {
    values: std::sync::Mutex<Vec<u64>>,
    more: Notify,
}

#[derive(Actor, Default)]
#[actor(capability = "st")]
struct Witness;

#[derive(Message, Serialize, Deserialize)]
struct Tell(u64);

#[mesh::handlers]
impl Witness {
    async fn tell(&mut self, Tell(n): Tell, ctx: &Ctx) {
        let seen = ctx.get::<Arc<Seen>>().expect("provided");
        seen.values.lock().expect("lock").push(n);
        seen.more.notify_waiters();
    }
}

/// A stateful actor that tells the witness about each change.
#[derive(Actor)]
#[actor(capability = "st")]
struct Teller {
    #[state]
    n: State<u64>,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
struct IncAndTell;

#[mesh::handlers]
impl Teller {
    async fn inc_and_tell(&mut self, _: IncAndTell, ctx: &Ctx) -> u64 {
        *self.n += 1;
        ctx.node()
            .cast::<Witness, _>("w", Tell(*self.n))
            .expect("cast");
        *self.n
    }
}

async fn until_seen(seen: &Seen, want: u64) -> Vec<u64> {
    mesh_testkit::within(Duration::from_secs(10), async {
        loop {
            let more = seen.more.notified();
            let values = seen.values.lock().expect("lock").clone();
            if values.contains(&want) {
                return values;
            }
            more.await;
        }
    })
    .await
}

/// A cast made by a turn that changed the state leaves after the write
/// (the witness never hears of a change the store does not have), and is
/// dropped when the write fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cast_made_by_a_changing_turn_waits_for_its_write_and_dies_with_it() {
    let store = Gated::default();
    let seen = Arc::new(Seen::default());
    let node = Node::builder()
        .default_node(false)
        .capabilities(["st"])
        .actor::<Teller>()
        .actor::<Witness>()
        .state(store.clone())
        .provide(seen.clone())
        .start()
        .await
        .expect("node starts");
    let saving = store.saving.notified();
    let call = tokio::spawn({
        let node = node.clone();
        async move { node.call::<Teller, _>("t", IncAndTell).await }
    });
    saving.await;
    // The write is blocked: a marker cast from outside overtakes the
    // held one (both go to the same mailbox, in the order sent).
    node.cast::<Witness, _>("w", Tell(100)).expect("marker");
    assert_eq!(
        until_seen(&seen, 100).await,
        vec![100],
        "the held cast went out before the write"
    );
    store.permits.add_permits(1);
    assert_eq!(call.await.expect("task").expect("call"), 1);
    assert_eq!(until_seen(&seen, 1).await, vec![100, 1]);
    // A failed write: the call fails and the cast is never sent.
    store.down.store(true, Ordering::SeqCst);
    store.permits.add_permits(1);
    let err = node
        .call::<Teller, _>("t", IncAndTell)
        .await
        .expect_err("down");
    assert!(matches!(err, mesh::Error::State { .. }), "{err:?}");
    node.cast::<Witness, _>("w", Tell(200)).expect("marker");
    assert_eq!(
        until_seen(&seen, 200).await,
        vec![100, 1, 200],
        "a cast of a turn whose write failed must not be sent"
    );
    node.shutdown().await.expect("shutdown");
}

/// A state whose hook counts the activation's ends.
#[derive(Default, Serialize, Deserialize)]
struct Ends {
    ends: u64,
}

#[derive(Actor)]
#[actor(capability = "st", on_deactivate = Visits::ended)]
struct Visits {
    #[state]
    s: State<Ends>,
}

impl Visits {
    async fn ended(&mut self) {
        self.s.ends += 1;
    }
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
struct Ended;

#[mesh::handlers]
impl Visits {
    async fn ended_count(&mut self, _: Ended, ctx: &Ctx) -> u64 {
        ctx.deactivate();
        self.s.ends
    }
}

/// `on_deactivate` is the last turn: what it changes is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_on_deactivate_changes_is_written() {
    let node = Node::builder()
        .default_node(false)
        .capabilities(["st"])
        .actor::<Visits>()
        .state(MemoryStore::new())
        .start()
        .await
        .expect("node starts");
    for want in 0..3 {
        // Each call reads the count, then ends its activation.
        assert_eq!(
            node.call::<Visits, _>("v", Ended).await.expect("call"),
            want
        );
    }
    node.shutdown().await.expect("shutdown");
}

/// A store slower than the caller's deadline: the held reply is answered
/// `Timeout` at the deadline (a call never waits longer); the write goes
/// on, and its effect stands, as a timed-out call's may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_reply_times_out_at_its_deadline_while_the_write_goes_on() {
    let store = Gated::default();
    let node = node_with(store.clone()).await;
    let call = node
        .call::<Counter, _>("slow", Inc)
        .timeout(Duration::from_millis(100));
    let err = mesh_testkit::within(Duration::from_secs(10), call.into_future())
        .await
        .expect_err("the write cannot finish");
    assert!(matches!(err, mesh::Error::Timeout { .. }), "{err:?}");
    store.permits.add_permits(1);
    let (n, _, version) = node.call::<Counter, _>("slow", Get).await.expect("get");
    assert_eq!((n, version), (1, 1), "the write went on");
    node.shutdown().await.expect("shutdown");
}

/// A store written before reminders (it implements none of their methods)
/// still builds, and refuses them saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_reminders_refuses_them_saying_so() {
    let store = Gated::default().open();
    let got = store.reminders_of(&key("r")).await;
    assert!(
        matches!(&got, Err(StoreError::Unavailable(m)) if m.contains("gated store keeps no reminders")),
        "{got:?}"
    );
}
