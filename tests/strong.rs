//! Strong single activation (`NodeBuilder::strong`, `mesh::lease`) with
//! in-process nodes on loopback and the Consul test agent, its time
//! scaled so that a 10 s session TTL lasts 500 ms (timer 1 s) and the 5 s
//! lock-delay 250 ms; the nodes are told the same scale
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

use std::time::Duration;

use mesh::history::{violations, MemoryHistory, Violation};
use mesh::lease::Strong;
use mesh::prelude::*;
use mesh_testkit::actors::{Account, Deposit};
use mesh_testkit::bank::{adapter, agent, check_balances, session_of, Deposits};
use mesh_testkit::consul_agent::TestConsul;
use mesh_testkit::within;
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
    let adapter = adapter(consul, i);
    let mut b = Node::builder()
        .name(name)
        .cluster("bank")
        .cookie(mesh_testkit::COOKIE)
        .listen("127.0.0.1:0")
        .default_node(false)
        .heartbeat(Duration::from_millis(100), Duration::from_millis(400))
        .provide(adapter.clone())
        .history(history.clone())
        .discovery(adapter);
    if hosts {
        b = b.capabilities(["bank"]).actor::<Account>();
    }
    if let Some(s) = mode {
        b = b.strong(s);
    }
    b.start().await.expect("node starts")
}

async fn members(n: &Node, want: usize) {
    let mut rx = n.membership_changes();
    within(STEP, rx.wait_for(|m| m.len() == want))
        .await
        .expect("membership watch");
}

/// Joins, a graceful leave and a crash, under steady deposits; returns the
/// violations, the accounts whose balance is wrong, the failures and the
/// number of calls.
async fn churn(
    mode: Option<Strong>,
    prefix: &str,
) -> (
    Vec<Violation>,
    Vec<(String, u64, u64, u64)>,
    Vec<String>,
    u64,
) {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .try_init();
    }
    let consul = agent(4, SCALE).await;
    let history = MemoryHistory::new();
    let a = node(&consul, 0, "a", mode, &history, true).await;
    let driver = node(&consul, 3, "driver", mode, &history, false).await;
    members(&driver, 2).await;
    let t0 = Instant::now();
    let load = Deposits::start(
        &driver,
        prefix,
        ACCOUNTS,
        PER_ACCOUNT,
        Duration::from_secs(5),
    );
    load.more(200).await;
    println!("{:?} b joins", t0.elapsed());
    let b = node(&consul, 1, "b", mode, &history, true).await;
    members(&driver, 3).await;
    load.more(300).await;
    println!("{:?} c joins", t0.elapsed());
    let c = node(&consul, 2, "c", mode, &history, true).await;
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
    let wrong = check_balances(&adapter(&consul, 3), &acked).await;
    for n in [&a, &driver] {
        n.shutdown().await.expect("shutdown");
    }
    drop(c); // severed: dropping the handle ends what is left of it
    (violations(&history.events()), wrong, failures, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_mode_hands_shards_over_with_one_activation_at_a_time_and_no_lost_deposit() {
    let (found, wrong, failures, calls) = churn(Some(strong()), "strong").await;
    println!(
        "strong: {calls} deposits, {} failed, {} violations, {} wrong balances",
        failures.len(),
        found.len(),
        wrong.len()
    );
    assert!(found.is_empty(), "single activation broken: {found:#?}");
    assert!(
        wrong.is_empty(),
        "(id, acked, stored, attempted): {wrong:?}"
    );
    // Only deposits in flight on the crashed node fail (their outcome is
    // unknown: counted as attempted, not acknowledged).
    for f in &failures {
        assert!(f.contains("down"), "{f}");
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
        .name("alone")
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
    let destroyed = consul.with_kv(|kv| {
        let idx = consul.with_catalog(|c| c.next_index());
        kv.session_destroy(&old, idx, Instant::now())
    });
    assert!(destroyed);
    // The node finds out at its next renew (404) and creates a new
    // session; its next call ends the old activation without its hook
    // (`lost`: the token changed) and activates the id again once its
    // shard is locked anew, from the balance it had written.
    let t0 = Instant::now();
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
