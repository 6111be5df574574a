//! Durable reminders (`mesh::reminder`) in one process: ticks in turn that
//! activate a passivated actor, never early, delivered again when the
//! handler fails; periodic schedules and cancel; reminders that outlive
//! the node on the embedded store, with missed ticks per policy; the
//! catch-up throttle; a reminder that moves with its shard when its owner
//! is cut off.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use mesh::prelude::*;
use mesh::reminder::{Missed, ReminderOptions, Schedule, Tick};
use mesh::state::MemoryStore;
use mesh::NodeBuilder;
use mesh_testkit::{scratch, soon, within};
use tokio::sync::mpsc;

/// What a handler saw: the tick, when it ran, and on which node.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    tick: Tick,
    at: SystemTime,
    node: String,
}

type Sinks = Mutex<Option<HashMap<String, mpsc::UnboundedSender<Seen>>>>;
/// Per actor id, where its handler reports ticks.
static SINKS: Sinks = Mutex::new(None);

/// A receiver of the ticks of actor `id`.
fn watch(id: &str) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    SINKS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(id.to_owned(), tx);
    rx
}

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static MOST_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Woken when more than four slow ticks are in flight at once.
static OVER: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Takes reminders; fails the first `fail_first` ticks of each name, and
/// a tick whose data is `"slow"` stays in flight a while (see `tick`).
#[derive(Actor, Default)]
#[actor(capability = "rem", idle_timeout = "100ms")]
struct Alarm {
    failed: HashMap<String, u32>,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<(), String>)]
struct Set {
    name: String,
    after_ms: u64,
    every_ms: u64,
    fail_first: u32,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = usize)]
struct Count;

#[mesh::handlers]
impl Alarm {
    async fn set(&mut self, s: Set, ctx: &Ctx) -> Result<(), String> {
        let schedule = if s.every_ms > 0 {
            Schedule::every(Duration::from_millis(s.every_ms))
                .starting_after(Duration::from_millis(s.after_ms))
        } else {
            Schedule::after(Duration::from_millis(s.after_ms))
        };
        ctx.reminders()
            .register(&s.name, schedule, &s.fail_first)
            .await
            .map_err(|e| e.to_string())
    }

    async fn count(&mut self, _: Count, ctx: &Ctx) -> usize {
        ctx.reminders().list().await.map_or(usize::MAX, |l| l.len())
    }

    async fn tick(&mut self, tick: Tick, ctx: &Ctx) -> Result<(), String> {
        // Only the catch-up test's ticks are "slow": it alone counts. A
        // slow tick stays in flight 20 ms, or until a fifth is in flight
        // beside it (over that test's limit of four: the count shows it,
        // and the others need not wait any longer).
        if tick.data::<String>().is_ok_and(|d| d == "slow") {
            let over = OVER.notified();
            let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
            MOST_IN_FLIGHT.fetch_max(now, Ordering::SeqCst);
            if now > 4 {
                OVER.notify_waiters();
            } else {
                let _ = tokio::time::timeout(Duration::from_millis(20), over).await;
            }
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        }
        let seen = Seen {
            id: ctx.id().to_owned(),
            tick: tick.clone(),
            at: SystemTime::now(),
            node: ctx.node().id().to_owned(),
        };
        if let Some(tx) = SINKS.lock().unwrap().as_ref().and_then(|s| s.get(ctx.id())) {
            let _ = tx.send(seen);
        }
        let fail_first = tick.data::<u32>().unwrap_or(0);
        let failed = self.failed.entry(tick.name.clone()).or_default();
        if *failed < fail_first {
            *failed += 1;
            return Err(format!("failing tick {} on purpose", *failed));
        }
        Ok(())
    }
}

/// Quick reminder settings for tests: loads every 100 ms, retries after
/// 50 ms.
fn quick() -> ReminderOptions {
    ReminderOptions {
        refresh: Duration::from_millis(100),
        retry: Duration::from_millis(50),
        max_retry: Duration::from_millis(200),
        ..ReminderOptions::default()
    }
}

fn alarm_node(b: NodeBuilder) -> NodeBuilder {
    b.capabilities(["rem"]).actor::<Alarm>().reminders(quick())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A node with the store and no actor taking reminders (so no keeper),
/// to write reminders that no one fires yet.
async fn writer(store: impl mesh::state::StateStore) -> Node {
    mesh_testkit::fixture::local(|b| b.capabilities(["none"]).state(store)).await
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    within(Duration::from_secs(10), rx.recv())
        .await
        .expect("the sink is open")
}

/// A one-shot fires after its delay (never before), in turn, on an actor
/// passivated meanwhile (it activates it again); a tick whose handler
/// fails is delivered again; once acknowledged, the one-shot is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_activates_a_passivated_actor_and_a_failed_tick_is_delivered_again() {
    let node = mesh_testkit::fixture::local(|b| alarm_node(b).state(MemoryStore::new())).await;
    let mut ticks = watch("one-shot");
    let registered = SystemTime::now();
    node.call::<Alarm, _>(
        "one-shot",
        Set {
            name: "wake".into(),
            after_ms: 300,
            every_ms: 0,
            fail_first: 1,
        },
    )
    .await
    .unwrap()
    .unwrap();
    // Idle 100 ms: passivated before its tick is due.
    soon(async {
        while node.activation_count() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let first = next(&mut ticks).await;
    assert_eq!(first.tick.name, "wake");
    assert!(
        first.at >= first.tick.due(),
        "delivered before its time: {first:?}"
    );
    assert!(first.tick.due_ms >= unix_ms(registered) + 300, "{first:?}");
    let again = next(&mut ticks).await;
    assert_eq!(again.tick.due_ms, first.tick.due_ms, "the same tick, again");
    // Acknowledged: deleted (the store says so, through the actor).
    soon(async {
        while node.call::<Alarm, _>("one-shot", Count).await.unwrap() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    node.shutdown().await.unwrap();
}

/// A periodic reminder ticks on its schedule (each tick one period after
/// the last, none early); cancelled from outside the actor, it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_reminder_keeps_its_period_until_cancelled_from_outside() {
    let node = mesh_testkit::fixture::local(|b| alarm_node(b).state(MemoryStore::new())).await;
    let mut ticks = watch("periodic");
    node.call::<Alarm, _>(
        "periodic",
        Set {
            name: "beat".into(),
            after_ms: 100,
            every_ms: 100,
            fail_first: 0,
        },
    )
    .await
    .unwrap()
    .unwrap();
    let mut last = None;
    for _ in 0..4 {
        let seen = next(&mut ticks).await;
        assert!(seen.at >= seen.tick.due(), "early: {seen:?}");
        if let Some(prev) = last {
            assert_eq!(seen.tick.due_ms, prev + 100, "one period after the last");
        }
        last = Some(seen.tick.due_ms);
    }
    let reminders = node.reminders::<Alarm>("periodic");
    assert_eq!(reminders.list().await.unwrap().len(), 1);
    assert!(reminders.cancel("beat").await.unwrap());
    assert!(!reminders.cancel("beat").await.unwrap(), "already gone");
    // At most the tick in flight at the cancel lands; then nothing for
    // five periods.
    while let Ok(Some(seen)) = tokio::time::timeout(Duration::from_millis(500), ticks.recv()).await
    {
        assert!(
            seen.tick.due_ms <= last.unwrap() + 100,
            "a tick after the cancel: {seen:?}"
        );
        last = Some(seen.tick.due_ms);
    }
    assert!(reminders.list().await.unwrap().is_empty());
    node.shutdown().await.unwrap();
}

/// Registered on one node over the embedded store, reminders fire after
/// the node is gone and another starts on the file; ticks missed while
/// no node ran follow each reminder's policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_outlive_the_node_on_the_embedded_store_and_missed_ticks_follow_their_policy() {
    let dir = scratch("reminders-redb");
    let file = dir.join("state.redb");
    let started_at = SystemTime::now();
    // Seven ticks (every 100 ms from 650 ms ago) are already missed when
    // the second node starts.
    let first = started_at - Duration::from_millis(650);
    {
        let node = writer(mesh::state::RedbStore::open(&file).unwrap()).await;
        for (id, missed) in [
            ("skip", Missed::Skip),
            ("once", Missed::Once),
            ("burst", Missed::Burst(3)),
        ] {
            node.reminders::<Alarm>(id)
                .register(
                    "r",
                    Schedule::every(Duration::from_millis(100))
                        .starting_at(first)
                        .missed(missed),
                    &0u32,
                )
                .await
                .unwrap();
        }
        // Its store released with it: the file is free for the next.
        node.shutdown().await.unwrap();
    }
    let (mut skip, mut once, mut burst) = (watch("skip"), watch("once"), watch("burst"));
    let node = mesh_testkit::fixture::local(|b| {
        alarm_node(b).state(mesh::state::RedbStore::open(&file).unwrap())
    })
    .await;
    let restarted = unix_ms(SystemTime::now());
    // Skip: none of the missed; the first is the next tick after now.
    let s = next(&mut skip).await;
    assert!(s.tick.due_ms >= restarted.saturating_sub(100), "{s:?}");
    assert_eq!(s.tick.missed, 0);
    // Once: one tick for all the missed (at least the 7 before the start).
    let o = next(&mut once).await;
    assert!(o.tick.missed >= 6, "{o:?}");
    let o2 = next(&mut once).await;
    assert_eq!(o2.tick.due_ms, o.tick.due_ms + 100);
    assert_eq!(o2.tick.missed, 0);
    // Burst(3): the latest three missed, one after the other (the older
    // dropped and counted in the first), then on schedule.
    let b1 = next(&mut burst).await;
    let b2 = next(&mut burst).await;
    let b3 = next(&mut burst).await;
    assert!(b1.tick.missed >= 4, "{b1:?}");
    assert_eq!((b2.tick.missed, b3.tick.missed), (0, 0));
    assert_eq!(b2.tick.due_ms, b1.tick.due_ms + 100);
    assert_eq!(b3.tick.due_ms, b2.tick.due_ms + 100);
    for t in [&s, &o, &o2, &b1, &b2, &b3] {
        assert!(t.at >= t.tick.due(), "early: {t:?}");
    }
    node.shutdown().await.unwrap();
}

/// `n` reminders of ids `<prefix>-<i>`, all due ten minutes ago, then a
/// node started with `options`: how long it took to fire them all.
async fn backlog(prefix: &str, n: usize, data: &str, options: ReminderOptions) -> Duration {
    let store = MemoryStore::new();
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let writer = writer(store.clone()).await;
    for id in &ids {
        writer
            .reminders::<Alarm>(id)
            .register(
                "late",
                Schedule::at(SystemTime::now() - Duration::from_secs(600)),
                data,
            )
            .await
            .unwrap();
    }
    writer.shutdown().await.unwrap();
    let (tx, mut all) = mpsc::unbounded_channel();
    {
        let mut sinks = SINKS.lock().unwrap();
        let sinks = sinks.get_or_insert_with(HashMap::new);
        for id in &ids {
            sinks.insert(id.clone(), tx.clone());
        }
    }
    let began = std::time::Instant::now();
    let node = mesh_testkit::fixture::local(|b| {
        b.capabilities(["rem"])
            .actor::<Alarm>()
            .state(store.clone())
            .reminders(options)
    })
    .await;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < ids.len() {
        let s = next(&mut all).await;
        assert!(s.at >= s.tick.due());
        seen.insert(s.id);
    }
    let took = began.elapsed();
    node.shutdown().await.unwrap();
    took
}

/// 200 reminders due when a node starts, each tick's handler in flight
/// for 20 ms: the keeper has at most its slow start's limit in flight
/// (4, not ramping within the test), and reaches it. With a limit of 8
/// the check fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_after_a_start_keeps_to_the_slow_start() {
    MOST_IN_FLIGHT.store(0, Ordering::SeqCst);
    let options = ReminderOptions {
        initial_concurrency: 4,
        ramp: Duration::from_secs(3600),
        budget: 0,
        ..quick()
    };
    let took = backlog("slow-start", 200, "slow", options).await;
    let most = MOST_IN_FLIGHT.load(Ordering::SeqCst);
    println!("catch-up of 200 ticks, 4 at once: {took:?}, at most {most} in flight");
    assert_eq!(
        most, 4,
        "{most} in flight at most; the slow start's limit is 4"
    );
}

/// 100 reminders due when a node starts, their handlers instant, the
/// budget 100 ticks a second from an empty bucket: firing them takes a
/// second, not the milliseconds it would unthrottled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_after_a_start_keeps_to_the_budget() {
    let options = ReminderOptions {
        budget: 100,
        ..quick()
    };
    let took = backlog("budget", 100, "fast", options).await;
    println!("catch-up of 100 ticks at 100/s: {took:?}");
    assert!(took >= Duration::from_millis(950), "over budget: {took:?}");
}

/// Two nodes over one store: a periodic reminder of an actor the first
/// owns goes on firing on the second once the first is cut off (its
/// keeper halted as in a crash), with no tick lost: the first tick the
/// survivor delivers is the one after the last acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_moves_with_its_shard_when_its_owner_is_cut_off() {
    use mesh_testkit::fixture::{fast, Cluster, Removal};
    let store = MemoryStore::new();
    let mut cluster = Cluster::memory()
        .all({
            let store = store.clone();
            move |b| fast(alarm_node(b).state(store.clone()))
        })
        .node("a", |b| b)
        .node("b", |b| b)
        .start()
        .await;
    // An id the first node owns.
    let owner = cluster.node(0).id().to_owned();
    let id = (0..)
        .map(|i| format!("moving-{i}"))
        .find(|id| {
            cluster
                .node(0)
                .owner_of::<Alarm>(id)
                .is_ok_and(|o| o == owner)
        })
        .unwrap();
    let mut ticks = watch(&id);
    cluster
        .node(1)
        .call::<Alarm, _>(
            &id,
            Set {
                name: "beat".into(),
                after_ms: 50,
                every_ms: 100,
                fail_first: 0,
            },
        )
        .await
        .unwrap()
        .unwrap();
    let mut last = next(&mut ticks).await;
    assert_eq!(last.node, owner);
    last = next(&mut ticks).await;
    cluster.remove(0, Removal::Sever).await;
    let survivor = cluster.node(1).id().to_owned();
    loop {
        let seen = next(&mut ticks).await;
        assert!(
            seen.tick.due_ms <= last.tick.due_ms + 100,
            "a tick lost between {last:?} and {seen:?}"
        );
        if seen.node == survivor {
            break;
        }
        last = seen;
    }
    cluster.shutdown().await;
}
