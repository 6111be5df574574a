//! Strong single activation (`NodeBuilder::strong`, `mesh::lease`) with
//! in-process nodes on loopback and the Consul test agent, its time
//! scaled so that a 10 s session TTL lasts 500 ms (timer 1 s) and the 10 s
//! lock-delay 500 ms; the nodes are told the same scale
//! (`Strong::time_scale`).
//!
//! Every scenario runs steady deposits into accounts whose balance lives
//! in Consul KV (`mesh_testkit::actors::Account`: read at activation,
//! written on every deposit, fenced in strong mode) and then checks:
//!
//! - the history (`mesh::history::violations`): per id, each activation
//!   did its last thing before the next one started, tokens growing;
//! - the balances: every acknowledged deposit is in KV, and nothing more
//!   than was attempted.
//!
//! The same churn in eventual mode is the negative control: the checkers
//! must flag it, or the strong run proves nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::history::{violations, MemoryHistory, Phase, Violation};
use mesh::lease::{Fence, Strong};
use mesh::prelude::*;
use mesh::state::MemoryStore;
use mesh_testkit::actors::{Account, Deposit, StateAccount};
use mesh_testkit::bank::{
    adapter, agent, check_balances, check_state_balances, session_of, Deposits,
};
use mesh_testkit::consul_agent::TestConsul;
use mesh_testkit::consul_kv::{TxnOp, TxnOutcome};
use mesh_testkit::fixture::{member, wait_membership};
use mesh_testkit::within;
use tokio::sync::Notify;
use tokio::time::Instant;

const STEP: Duration = Duration::from_secs(30);
/// Consul's time runs 20x faster for sessions and health checks.
const SCALE: f64 = 0.05;
const ACCOUNTS: usize = 40;
/// Concurrent depositors per account: calls queue behind each other, as
/// under real load, so a handoff has work in flight.
const PER_ACCOUNT: usize = 8;

fn strong() -> Strong {
    Strong::new()
        .time_scale(SCALE)
        .retry(Duration::from_millis(20))
}

async fn node(
    consul: &TestConsul,
    i: usize,
    name: &str,
    mode: Option<Strong>,
    history: &MemoryHistory,
    hosts: bool,
) -> Node {
    node_with(consul, i, name, mode, history, hosts, None).await
}

/// The same; with `state`, the node also hosts `StateAccount`s on that
/// store (one store for the cluster, as a database would be).
async fn node_with(
    consul: &TestConsul,
    i: usize,
    name: &str,
    mode: Option<Strong>,
    history: &MemoryHistory,
    hosts: bool,
    state: Option<&MemoryStore>,
) -> Node {
    let adapter = adapter(consul, i);
    let mut b = member("bank", name)
        .listen("127.0.0.1:0")
        .heartbeat(Duration::from_millis(100), Duration::from_millis(400))
        .provide(adapter.clone())
        .history(history.clone())
        .discovery(adapter);
    if hosts {
        b = b.capabilities(["bank"]).actor::<Account>();
        if state.is_some() {
            b = b.actor::<StateAccount>();
        }
    }
    if let Some(store) = state {
        b = b.state(store.clone());
    }
    if let Some(s) = mode {
        b = b.strong(s);
    }
    b.start().await.expect("node starts")
}

async fn members(n: &Node, want: usize) {
    wait_membership(n, STEP, |m| m.len() == want).await;
}

/// Joins, a graceful leave and a crash, under steady deposits; returns the
/// violations, the accounts whose balance is wrong, the failures and the
/// number of calls.
async fn churn(mode: Option<Strong>, prefix: &str) -> Churned {
    churn_with(mode, prefix, None).await
}

/// What a churn ended with: the violations, the accounts whose balance is
/// wrong (id, acknowledged, stored, attempted), the failures and the
/// number of calls.
type Churned = (
    Vec<Violation>,
    Vec<(String, u64, u64, u64)>,
    Vec<String>,
    u64,
);

/// Strong mode's promise through a churn, checked and printed under
/// `label`: one activation at a time, no acknowledged deposit lost, and
/// only the deposits in flight on the crashed node failed (their outcome
/// is unknown: counted as attempted, not acknowledged).
fn strong_churn_kept(label: &str, (found, wrong, failures, calls): Churned) {
    println!(
        "{label}: {calls} deposits, {} failed, {} violations, {} wrong balances",
        failures.len(),
        found.len(),
        wrong.len()
    );
    assert!(found.is_empty(), "single activation broken: {found:#?}");
    assert!(
        wrong.is_empty(),
        "(id, acked, stored, attempted): {wrong:?}"
    );
    for f in &failures {
        assert!(f.contains("down"), "{f}");
    }
}

/// The churn; with `state`, into `StateAccount`s whose balances live in
/// that store (checked there), instead of Consul KV.
async fn churn_with(mode: Option<Strong>, prefix: &str, state: Option<MemoryStore>) -> Churned {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .try_init();
    }
    let consul = agent(4, SCALE).await;
    let history = MemoryHistory::new();
    let st = state.as_ref();
    let a = node_with(&consul, 0, "a", mode, &history, true, st).await;
    let driver = node_with(&consul, 3, "driver", mode, &history, false, st).await;
    members(&driver, 2).await;
    let t0 = Instant::now();
    let deadline = Duration::from_secs(5);
    let load = match st {
        None => Deposits::start(&driver, prefix, ACCOUNTS, PER_ACCOUNT, deadline),
        Some(_) => {
            Deposits::start_for::<StateAccount>(&driver, prefix, ACCOUNTS, PER_ACCOUNT, deadline)
        }
    };
    load.more(200).await;
    println!("{:?} b joins", t0.elapsed());
    let b = node_with(&consul, 1, "b", mode, &history, true, st).await;
    members(&driver, 3).await;
    load.more(300).await;
    println!("{:?} c joins", t0.elapsed());
    let c = node_with(&consul, 2, "c", mode, &history, true, st).await;
    members(&driver, 4).await;
    load.more(300).await;
    println!("{:?} b leaves", t0.elapsed());
    b.shutdown().await.expect("b leaves");
    println!("{:?} b left", t0.elapsed());
    members(&driver, 3).await;
    load.more(300).await;
    // A crash: c stops at once, releasing nothing; in strong mode its
    // shards come back once its session expired.
    println!("{:?} c crashes", t0.elapsed());
    c.sever();
    members(&driver, 2).await;
    load.more(300).await;
    let (acked, failures) = load.finish().await;
    let calls = acked.values().map(|(_, t)| t).sum();
    let wrong = match st {
        None => check_balances(&adapter(&consul, 3), &acked).await,
        Some(store) => check_state_balances(store, &acked).await,
    };
    for n in [&a, &driver] {
        n.shutdown().await.expect("shutdown");
    }
    drop(c); // severed: dropping the handle ends what is left of it
    (violations(&history.events()), wrong, failures, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_mode_hands_shards_over_with_one_activation_at_a_time_and_no_lost_deposit() {
    strong_churn_kept("strong", churn(Some(strong()), "strong").await);
}

/// Issue 22: the same churn into accounts whose balances are `#[state]`
/// in a store the cluster shares. Strong mode: the store fences every
/// write with the shard's token and each activation claims its row, so
/// nothing acknowledged is lost and no call fails on a conflict (the only
/// failures are the deposits in flight on the crashed node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_mode_state_follows_the_actor_through_joins_a_leave_and_a_crash() {
    let store = MemoryStore::new();
    let churned = churn_with(Some(strong()), "strong-state", Some(store)).await;
    strong_churn_kept("strong, state store", churned);
}

/// The same in eventual mode: duplicates during the churn may fail calls
/// with a conflict (counted and printed), never lose an acknowledged
/// deposit (the version compare-and-set refuses the stale write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_mode_state_loses_no_acknowledged_deposit_and_counts_its_conflicts() {
    let store = MemoryStore::new();
    let (_, wrong, failures, calls) = churn_with(None, "eventual-state", Some(store)).await;
    let conflicts = failures.iter().filter(|f| f.contains("conflict")).count();
    println!(
        "eventual, state store: {calls} deposits, {} failed ({conflicts} on a conflict), {} wrong balances",
        failures.len(),
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "(id, acked, stored, attempted): {wrong:?}"
    );
    for f in &failures {
        assert!(f.contains("conflict") || f.contains("down"), "{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_churn_in_eventual_mode_is_flagged_by_the_checkers() {
    let (found, wrong, failures, calls) = churn(None, "eventual").await;
    println!(
        "eventual: {calls} deposits, {} failed, {} violations, {} wrong balances",
        failures.len(),
        found.len(),
        wrong.len()
    );
    assert!(
        !found.is_empty() || !wrong.is_empty(),
        "the checkers found nothing in eventual mode: they prove nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_mode_needs_an_authoritative_store() {
    let err = Node::builder()
        .id("alone")
        .cluster("bank")
        .cookie(mesh_testkit::COOKIE)
        .listen("127.0.0.1:0")
        .capabilities(["bank"])
        .actor::<Account>()
        .default_node(false)
        .strong(Strong::new())
        .start()
        .await
        .expect_err("no discovery, no strong mode");
    let text = err.to_string();
    assert!(
        text.contains("authoritative store") && text.contains("Consul"),
        "{text}"
    );
    let err = Node::builder()
        .default_node(false)
        .strong(Strong::new().margins(0.5, Duration::from_secs(5)))
        .start()
        .await
        .expect_err("margins that leave nothing");
    assert!(err.to_string().contains("no validity"), "{err}");
}

/// Issue 19, point 12: a lock-delay shorter than the lease's validity
/// would free the keys, after an explicit `session destroy`, while the old
/// owner still serves until its deadline. The defaults are safe; a shorter
/// lock-delay is refused at start, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_delay_shorter_than_the_lease_validity_is_refused_at_start() {
    let consul = agent(1, SCALE).await;
    let history = MemoryHistory::new();
    // The defaults (10 s TTL, 10 s lock-delay) start.
    let a = node(
        &consul,
        0,
        "a",
        Some(Strong::new().time_scale(SCALE)),
        &history,
        true,
    )
    .await;
    a.shutdown().await.expect("shutdown");
    // The review's case: 5 s against a validity of about 9.5 s.
    let err = Node::builder()
        .cluster("bank")
        .cookie(mesh_testkit::COOKIE)
        .listen("127.0.0.1:0")
        .capabilities(["bank"])
        .actor::<Account>()
        .default_node(false)
        .discovery(adapter(&consul, 0))
        .strong(Strong::new().lock_delay(Duration::from_secs(5)))
        .start()
        .await
        .expect_err("an unsafe lock-delay");
    let text = err.to_string();
    assert!(
        text.contains("lock-delay 5s is shorter than the lease validity")
            && text.contains("session destroy")
            && text.contains("at least 9.495s"),
        "{text}"
    );
}

// ---- Fenced writes: the token, not only the session --------------------

/// A session created on the test agent's state, as a node's keeper would.
fn session(consul: &TestConsul, name: &str) -> String {
    let body =
        serde_json::json!({"Name": name, "TTL": "10s", "LockDelay": "10s", "NodeChecks": []});
    consul.with_catalog(|c| {
        let idx = c.next_index();
        consul.with_kv(|kv| {
            kv.session_create(
                c,
                consul.node(0),
                body.to_string().as_bytes(),
                idx,
                Instant::now(),
            )
            .expect("session created")
        })
    })
}

/// One `lock` or `unlock` of `key` for `session` in a transaction: the
/// key's `ModifyIndex` after it (a lock's fencing token).
fn lock_op(consul: &TestConsul, verb: &str, key: &str, session: &str) -> u64 {
    let op = TxnOp {
        verb: verb.into(),
        key: key.into(),
        value: b"holder".to_vec(),
        flags: 0,
        index: 0,
        session: session.into(),
    };
    let out = consul
        .with_catalog(|c| consul.with_kv(|kv| kv.txn(&[op], || c.next_index(), Instant::now())));
    match out {
        TxnOutcome::Ok(results) => results[0]["KV"]["ModifyIndex"].as_u64().expect("an index"),
        TxnOutcome::Failed(e) => panic!("{verb} {key}: {e:?}"),
    }
}

/// Issue 19, point 11 (review finding 12): a detached task of an earlier
/// activation (token T1) writes after the shard went to another node and
/// came back to this node under the same session (token T3). The session
/// check alone lets it through; the token's `check-index` refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_fenced_by_an_earlier_grant_is_refused_even_under_the_same_session() {
    let consul = agent(1, SCALE).await;
    let store = adapter(&consul, 0);
    let key = "mesh/bank/own/bank/Account/0007";
    let (a, b) = (session(&consul, "mesh/a/1"), session(&consul, "mesh/b/1"));
    let t1 = lock_op(&consul, "lock", key, &a);
    let fence = |token| Fence::new(key, a.clone(), token);
    store
        .fenced_put(&fence(t1), "accounts/x", b"1")
        .await
        .expect("the holder of T1 writes");
    // The shard goes to b, and back to a under the same session.
    lock_op(&consul, "unlock", key, &a);
    let t2 = lock_op(&consul, "lock", key, &b);
    lock_op(&consul, "unlock", key, &b);
    let t3 = lock_op(&consul, "lock", key, &a);
    assert!(t1 < t2 && t2 < t3, "{t1} {t2} {t3}");
    // The late write of the T1 activation: refused, though a holds the key.
    let err = store
        .fenced_put(&fence(t1), "accounts/x", b"stale")
        .await
        .expect_err("a stale token");
    match &err {
        mesh::Error::Fenced { key: k, reason } => {
            assert_eq!(k, key);
            assert!(reason.contains("failed index check"), "{reason}");
        }
        other => panic!("not fenced: {other}"),
    }
    let stored = store.kv_get("accounts/x").await.expect("read");
    assert_eq!(
        stored.as_deref(),
        Some(&b"1"[..]),
        "the stale write was applied"
    );
    // The activation of T3 writes; b's grant under a's session does not.
    store
        .fenced_put(&fence(t3), "accounts/x", b"2")
        .await
        .expect("the holder of T3 writes");
    assert!(store
        .fenced_put(&fence(t2), "accounts/x", b"3")
        .await
        .is_err());
    let stored = store.kv_get("accounts/x").await.expect("read");
    assert_eq!(stored.as_deref(), Some(&b"2"[..]));
}

// ---- Reentrant turns: every call of the chain passes the gate ------------

/// A reentrant host: `Visit` calls a `Guest`, which calls the host back
/// (`Note`) while the visit waits, in the same turn.
#[derive(Actor, Default)]
#[actor(capability = "turns")]
struct Host;

#[derive(Actor, Default)]
#[actor(capability = "turns")]
struct Guest;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<u64, String>)]
struct Visit {
    via: String,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
struct Note;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<u64, String>)]
struct Knock {
    host: String,
}

/// What the test sees of a turn, and the door the guest waits behind.
struct Turns {
    knocked: Notify,
    go: Notify,
    /// (handler, its activation's token, when it ran).
    served: Mutex<Vec<(&'static str, u64, Instant)>>,
    /// How many handlers ran.
    count: tokio::sync::watch::Sender<usize>,
}

impl Turns {
    fn new() -> Arc<Turns> {
        Arc::new(Turns {
            knocked: Notify::new(),
            go: Notify::new(),
            served: Mutex::new(Vec::new()),
            count: tokio::sync::watch::channel(0).0,
        })
    }

    /// Waits until `n` handlers ran; returns what they saw.
    async fn served(&self, n: usize) -> Vec<(&'static str, u64, Instant)> {
        let mut rx = self.count.subscribe();
        within(STEP, rx.wait_for(|c| *c >= n))
            .await
            .expect("the count");
        self.served.lock().unwrap().clone()
    }
}

fn served(ctx: &Ctx, what: &'static str) -> u64 {
    let token = ctx.fence().map_or(0, |f| f.token);
    if let Ok(t) = ctx.get::<Arc<Turns>>() {
        t.served.lock().unwrap().push((what, token, Instant::now()));
        t.count.send_modify(|c| *c += 1);
    }
    token
}

#[mesh::handlers(reentrant)]
impl Host {
    async fn visit(&self, v: Visit, ctx: &Ctx) -> Result<u64, String> {
        served(ctx, "visit");
        let knock = Knock {
            host: ctx.id().into(),
        };
        let r = ctx.node().call::<Guest, _>(&v.via, knock).await;
        r.map_err(|e| e.to_string())?
    }

    async fn note(&self, _: Note, ctx: &Ctx) -> u64 {
        served(ctx, "note")
    }
}

#[mesh::handlers]
impl Guest {
    async fn knock(&mut self, k: Knock, ctx: &Ctx) -> Result<u64, String> {
        let turns = ctx.get::<Arc<Turns>>().map_err(|e| e.to_string())?;
        turns.knocked.notify_one();
        turns.go.notified().await;
        let r = ctx
            .node()
            .call::<Host, _>(&k.host, Note)
            .timeout(STEP)
            .await;
        r.map_err(|e| e.to_string())
    }
}

async fn turns_node(
    consul: &TestConsul,
    scale: f64,
    turns: &Arc<Turns>,
    history: &MemoryHistory,
    bind_health: bool,
) -> Node {
    Node::builder()
        .id("a")
        .cluster("turns")
        .cookie(mesh_testkit::COOKIE)
        .listen("127.0.0.1:0")
        .default_node(false)
        .capabilities(["turns"])
        .actor::<Host>()
        .actor::<Guest>()
        .provide(turns.clone())
        .history(history.clone())
        .discovery(adapter(consul, 0))
        .strong(
            Strong::new()
                .time_scale(scale)
                .retry(Duration::from_millis(20))
                .bind_to_health_check(bind_health),
        )
        .start()
        .await
        .expect("node starts")
}

/// Issue 19, point 9 (review finding 5): the session is lost while a
/// reentrant turn waits on its chain; the call back into the host must not
/// start in that turn, on the old grant. The turn ends as lost and the
/// call is served by a new activation, under the new session's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_of_a_reentrant_turn_does_not_start_once_the_lease_is_lost() {
    let consul = agent(1, SCALE).await;
    let (turns, history) = (Turns::new(), MemoryHistory::new());
    let a = turns_node(&consul, SCALE, &turns, &history, true).await;
    let visit = {
        let a = a.clone();
        tokio::spawn(async move {
            a.call::<Host, _>("h", Visit { via: "g".into() })
                .timeout(STEP)
                .await
        })
    };
    within(STEP, turns.knocked.notified()).await;
    // The session destroyed behind the node's back; it learns at its next
    // renew (404), clears every shard, then creates a new session.
    let old = session_of(&consul, "a").expect("a session");
    let t0 = Instant::now();
    // The index first: the agent locks its catalog before its KV, and so
    // must the test (the other order deadlocks with the agent's tick).
    let idx = consul.with_catalog(|c| c.next_index());
    let destroyed = consul.with_kv(|kv| kv.session_destroy(&old, idx, Instant::now()));
    assert!(destroyed);
    within(
        STEP,
        consul.wait_logged(|l| l.path.starts_with("session/create") && l.at > t0),
    )
    .await;
    // Now the guest calls the host back, in the visit's chain.
    turns.go.notify_one();
    let served = turns.served(2).await;
    let outcome = within(STEP, visit).await.expect("the visit task");
    let tokens: Vec<(&str, u64)> = served.iter().map(|(w, t, _)| (*w, *t)).collect();
    assert_eq!(tokens.len(), 2, "{tokens:?} {outcome:?}");
    let (visit_token, note_token) = (tokens[0].1, tokens[1].1);
    assert_eq!(tokens[0].0, "visit");
    assert_eq!(tokens[1].0, "note");
    assert!(visit_token > 0);
    assert!(
        note_token > visit_token,
        "the call back ran on the lost grant {visit_token}: {tokens:?}"
    );
    // The visit was in the lost turn: its caller learns it did not end.
    assert!(!matches!(outcome, Ok(Ok(_))), "{outcome:?}");
    let events = history.events();
    assert!(events.iter().any(|e| e.phase == Phase::Lost), "{events:?}");
    assert!(violations(&events).is_empty(), "{events:?}");
    a.shutdown().await.expect("shutdown");
}

/// Issue 19, point 9, the other answer of the gate: the lease lapses
/// (renews fail) while a reentrant turn waits on its chain; the call back
/// into the host waits, queued, and starts in the same turn, on the same
/// grant, once a renew succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_of_a_reentrant_turn_waits_while_the_lease_has_lapsed() {
    // Slower than the other suites: the session (timer 2 x TTL = 4 s
    // after the last renew received) must outlive the lapse (deadline
    // 1.88 s after the last renew sent) and the wait after it.
    // The session is not bound to the node's health check here: the
    // agent's failing answers stop the check's passes too, and a bound
    // session would be invalidated once the check TTL ran out (the
    // binding's liveness cost, `mesh::lease` "Crash"; the lost session's
    // answer is the test above).
    const SLOW: f64 = 0.2;
    let consul = agent(1, SLOW).await;
    let (turns, history) = (Turns::new(), MemoryHistory::new());
    let a = turns_node(&consul, SLOW, &turns, &history, false).await;
    let visit = {
        let a = a.clone();
        tokio::spawn(async move {
            a.call::<Host, _>("h", Visit { via: "g".into() })
                .timeout(STEP)
                .await
        })
    };
    within(STEP, turns.knocked.notified()).await;
    // Consul answers nothing but 500 from now on: the last successful
    // renew was sent before this, so the lease lapses within its
    // validity (10 s x 0.99 - 0.5 s, scaled: 1.88 s).
    let failing = Instant::now();
    consul.fail_with(Some((500, "test: no leader")));
    let validity = Duration::from_millis(1_880);
    tokio::time::sleep_until(failing + validity + Duration::from_millis(20)).await;
    turns.go.notify_one();
    // The call back is queued at the gate: not served while the renews
    // keep failing (one more renew attempt is seen failing meanwhile).
    let after = Instant::now();
    within(STEP, consul.wait_requests(0, "session/renew", after, 1)).await;
    assert_eq!(
        turns.served.lock().unwrap().len(),
        1,
        "the call back ran while the lease had lapsed"
    );
    let healed = Instant::now();
    consul.fail_with(None);
    let outcome = within(STEP, visit).await.expect("the visit task");
    let served = turns.served(2).await;
    assert_eq!(served.len(), 2, "{served:?}");
    let ((v, visit_token, _), (n, note_token, note_at)) = (served[0], served[1]);
    assert_eq!((v, n), ("visit", "note"));
    assert!(note_at >= healed, "served before the lease held again");
    // Same turn, same grant: the visit returns the note's token.
    assert_eq!(note_token, visit_token);
    assert!(
        matches!(outcome, Ok(Ok(t)) if t == visit_token),
        "{outcome:?}"
    );
    let events = history.events();
    assert!(!events.iter().any(|e| e.phase == Phase::Lost), "{events:?}");
    a.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_ends_the_activations_and_they_return_under_a_new_one() {
    let consul = agent(1, SCALE).await;
    let history = MemoryHistory::new();
    let a = node(&consul, 0, "a", Some(strong()), &history, true).await;
    let first = a
        .call::<Account, _>("lost-1", Deposit(5))
        .await
        .expect("served");
    assert_eq!(first, Ok(5));
    let old = session_of(&consul, "a").expect("a session");
    // Destroyed behind the node's back (an operator, or the servers
    // invalidating it): the next renew answers 404.
    // The index first: the agent locks its catalog before its KV, and so
    // must the test (the other order deadlocks with the agent's tick).
    // `t0` is taken before the destroy: a renew may find the session gone
    // and create the new one before this task runs again, and a create
    // logged before a later `t0` would never be seen (issue 24, point 7).
    let t0 = Instant::now();
    let idx = consul.with_catalog(|c| c.next_index());
    let destroyed = consul.with_kv(|kv| kv.session_destroy(&old, idx, Instant::now()));
    assert!(destroyed);
    // The node finds out at its next renew (404) and creates a new
    // session; its next call ends the old activation without its hook
    // (`lost`: the token changed) and activates the id again once its
    // shard is locked anew, from the balance it had written.
    within(
        STEP,
        consul.wait_logged(|l| l.path.starts_with("session/create") && l.at > t0),
    )
    .await;
    let again = a
        .call::<Account, _>("lost-1", Deposit(1))
        .await
        .expect("served again");
    assert_eq!(again, Ok(6));
    let new = session_of(&consul, "a").expect("a new session");
    assert_ne!(new, old);
    let events = history.events();
    assert!(
        events.iter().any(|e| e.phase == mesh::history::Phase::Lost),
        "{events:?}"
    );
    let tokens: Vec<u64> = events
        .iter()
        .filter(|e| e.phase == mesh::history::Phase::Activated)
        .map(|e| e.token)
        .collect();
    assert_eq!(tokens.len(), 2, "{events:?}");
    assert!(tokens[1] > tokens[0], "tokens grow: {tokens:?}");
    assert!(violations(&events).is_empty());
    a.shutdown().await.expect("shutdown");
    // Leaving destroys the session.
    assert_eq!(session_of(&consul, "a"), None);
}

/// Issue 24, point 4: every node of a strong cluster stopped at once,
/// under calls. Each leave drain must end once its own activations have
/// ended and its peers' calls are answered, never wait on peers that are
/// leaving too: all three return, cleanly, well within the 30 s shutdown
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_strong_cluster_stopped_at_once_stops_promptly() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .try_init();
    }
    let consul = agent(3, SCALE).await;
    let history = MemoryHistory::new();
    let mut nodes = Vec::new();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        nodes.push(node(&consul, i, name, Some(strong()), &history, true).await);
    }
    for n in &nodes {
        members(n, 3).await;
    }
    // Activations everywhere, each with a written balance.
    for k in 0..30 {
        let id = format!("all-{k}");
        let served = nodes[k % 3].call::<Account, _>(&id, Deposit(1)).await;
        assert_eq!(served.expect("served"), Ok(1));
    }
    // Calls go on through every node while they all stop: each caller
    // ends at its first failure once the shutdown began.
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for (i, n) in nodes.iter().enumerate() {
        for w in 0..4 {
            let (n, stopping) = (n.clone(), stopping.clone());
            load.spawn(async move {
                let id = format!("all-{}", (i * 4 + w) % 30);
                loop {
                    let r = n
                        .call::<Account, _>(&id, Deposit(1))
                        .timeout(Duration::from_secs(2))
                        .await;
                    if r.is_err() && stopping.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                }
            });
        }
    }
    let started = Instant::now();
    stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ra, rb, rc) = within(STEP * 2, async {
        tokio::join!(
            nodes[0].shutdown(),
            nodes[1].shutdown(),
            nodes[2].shutdown()
        )
    })
    .await;
    let took = started.elapsed();
    println!("all three stopped in {took:?}: {ra:?} {rb:?} {rc:?}");
    within(STEP, async { while load.join_next().await.is_some() {} }).await;
    for r in [ra, rb, rc] {
        r.expect("a clean shutdown");
    }
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    assert!(violations(&history.events()).is_empty());
}

/// Issue 24, point 4, the cause: a strong node leaving while its store
/// is unreachable (Consul stopped with the rest of the cluster). Its
/// activations end only under a valid lease (their hooks run under it),
/// so the leave drain used to wait for a renew that never came, the whole
/// 30 s shutdown timeout, and then fail with a bare `Timeout`. Now the
/// drain ends once the lease has lapsed, and the shutdown is prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strong_node_leaving_while_its_store_is_down_stops_promptly() {
    let consul = agent(1, SCALE).await;
    let history = MemoryHistory::new();
    let a = node(&consul, 0, "a", Some(strong()), &history, true).await;
    for k in 0..10 {
        let served = a.call::<Account, _>(&format!("down-{k}"), Deposit(1)).await;
        assert_eq!(served.expect("served"), Ok(1));
    }
    // The store goes away: no renew succeeds from now on.
    consul.stop_agent(0);
    // Until the lease has lapsed: a call then waits at the gate (here
    // until its own short deadline).
    within(STEP, async {
        loop {
            let r = a
                .call::<Account, _>("down-0", Deposit(0))
                .timeout(Duration::from_millis(200))
                .await;
            if matches!(r, Err(Error::Timeout { .. })) {
                return;
            }
        }
    })
    .await;
    let started = Instant::now();
    let r = within(STEP * 2, a.shutdown()).await;
    let took = started.elapsed();
    println!("shut down in {took:?}: {r:?}");
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?}: {r:?}"
    );
    r.expect("a clean shutdown");
}

/// Issue 24, point 8, in figures: with the bounded-load placement, a
/// crash of one of three nodes also moves some shards between the two
/// survivors (the cap on each node's load rises from 1.1 x 4096 / 3 to
/// 1.1 x 4096 / 2, so a shard that overflowed to its second choice goes
/// back to its first). Few, and each such handoff is a clean one (the old
/// owner drains and unlocks, no lock-delay): printed, and bounded here.
#[test]
fn a_crash_moves_few_shards_between_the_survivors() {
    use mesh::ring::{Placement, Rendezvous, SHARDS};
    let nodes = ["p-0", "p-1", "p-2"];
    let survivors = ["p-0", "p-2"];
    let mut before = vec![0u16; SHARDS];
    let mut after = vec![0u16; SHARDS];
    Rendezvous.assign(&nodes, &mut before);
    Rendezvous.assign(&survivors, &mut after);
    let (mut orphaned, mut between) = (0, 0);
    for s in 0..SHARDS {
        let (b, a) = (nodes[before[s] as usize], survivors[after[s] as usize]);
        if b == "p-1" {
            orphaned += 1;
        } else if a != b {
            between += 1;
        }
    }
    println!("p-1 crashed: {orphaned} shards of its own move, and {between} between the survivors");
    assert!(
        between * 20 < SHARDS,
        "{between} shards moved between survivors"
    );
}

/// Issue 20, point 2: every setting is checked before the first side
/// effect. A strong node whose discovery has no lease store used to be
/// refused only after it had registered (and started its sidecar).
#[tokio::test]
async fn a_strong_node_without_a_lease_store_is_refused_before_it_registers() {
    let discovery = mesh_testkit::fixture::Counting::default();
    let refused = Node::builder()
        .id("no-store")
        .cluster("bank")
        .cookie(mesh_testkit::COOKIE)
        .listen("127.0.0.1:0")
        .default_node(false)
        .capabilities(["bank"])
        .actor::<Account>()
        .discovery(discovery.clone())
        .strong(strong())
        .start()
        .await
        .expect_err("strong mode without a lease store");
    assert!(refused.to_string().contains("lease store"), "{refused}");
    assert_eq!(
        discovery.registrations(),
        0,
        "the node registered before it was refused"
    );
}

/// Issue 22, point 5: strong mode binds its session to the node's own
/// health check (`ServiceChecks`). With the heartbeat paused while the
/// session is still renewed, the check goes critical and the store
/// invalidates the session at once, so a crashed process's shards come
/// back a check TTL after its last heartbeat instead of up to twice the
/// session TTL. Once the heartbeat resumes, the node takes a new session
/// and serves again. Unbound (the negative control), the same session
/// outlives the critical check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_bound_to_the_health_check_ends_when_the_check_goes_critical() {
    assert!(!heartbeat_paused(true).await, "the bound session survived");
    assert!(heartbeat_paused(false).await, "the unbound session ended");
}

/// Runs the scene above; whether the first session lived through it.
async fn heartbeat_paused(bind: bool) -> bool {
    let consul = agent(1, SCALE).await;
    let adapter = adapter(&consul, 0);
    let a = member("bank", "a")
        .listen("127.0.0.1:0")
        .heartbeat(Duration::from_millis(100), Duration::from_millis(400))
        .provide(adapter.clone())
        .discovery(adapter.clone())
        .capabilities(["bank"])
        .actor::<Account>()
        .strong(strong().bind_to_health_check(bind))
        .start()
        .await
        .expect("node starts");
    let first = a
        .call::<Account, _>("bound-1", Deposit(1))
        .timeout(STEP)
        .await;
    assert!(matches!(first, Ok(Ok(_))), "{first:?}");
    let session = session_of(&consul, "a").expect("a session");
    let info = |id: &str| consul.with_kv(|kv| kv.session_info(id)).0;
    let checks: Vec<String> = info(&session)[0]["ServiceChecks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["ID"].as_str().map(str::to_owned))
        .collect();
    let check = format!("service:{}", adapter.service_id().expect("registered"));
    let want = if bind {
        vec![check.clone()]
    } else {
        Vec::new()
    };
    assert_eq!(checks, want, "the session's ServiceChecks");
    adapter.pause_heartbeat(true);
    let node = consul.node(0).to_owned();
    // Re-checked on every change of the catalog.
    within(
        STEP,
        consul.until(|c| c.agent_checks(&node)[&check]["Status"] == "critical"),
    )
    .await;
    let alive = |id: &str| info(id).as_array().is_some_and(|l| !l.is_empty());
    if bind {
        // Re-checked on every request the node sends (its renews, then
        // its attempts at a new session).
        within(STEP, consul.wait_logged(|_| !alive(&session))).await;
    } else {
        // Two renews after the check went critical, each answered.
        let after = Instant::now();
        within(STEP, consul.wait_requests(0, "session/renew", after, 2)).await;
    }
    let survived = alive(&session);
    adapter.pause_heartbeat(false);
    if !survived {
        // Until the node saw its session end (a renew answered 404) and
        // took a new one: meanwhile its activations may still serve under
        // their old grants, and their fenced writes are refused.
        within(
            STEP,
            consul.wait_logged(|_| session_of(&consul, "a").is_some_and(|s| s != session)),
        )
        .await;
    }
    let again = a
        .call::<Account, _>("bound-1", Deposit(1))
        .timeout(STEP)
        .await;
    assert!(matches!(again, Ok(Ok(_))), "served again: {again:?}");
    a.shutdown().await.expect("shutdown");
    survived
}
