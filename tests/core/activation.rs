//! Activation lifecycle on one node: single flight, turn-based order, idle
//! passivation on a paused clock, panic isolation, fallible activation,
//! deadlines, bounded mailboxes and shutdown.

use std::future::{poll_fn, Future, IntoFuture};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::Duration;

use mesh::prelude::*;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

async fn node_with<F>(f: F) -> Node
where
    F: FnOnce(mesh::NodeBuilder) -> mesh::NodeBuilder,
{
    f(Node::builder().default_node(false))
        .start()
        .await
        .expect("node starts")
}

// ------------------------------------------------------------ single flight

static SF_ACTIVATIONS: AtomicUsize = AtomicUsize::new(0);
static SF_GATE: Semaphore = Semaphore::const_new(0);

#[derive(Actor)]
#[actor(capability = "sf", activate = SingleFlight::load, mailbox = 20000)]
struct SingleFlight {
    calls: u64,
}

impl SingleFlight {
    async fn load(_id: &str) -> Result<Self, String> {
        SF_ACTIVATIONS.fetch_add(1, Ordering::SeqCst);
        // Hold the activation open until every first call is queued.
        let _permit = SF_GATE.acquire().await.map_err(|e| e.to_string())?;
        Ok(SingleFlight { calls: 0 })
    }
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
struct Hit;

#[mesh::handlers]
impl SingleFlight {
    async fn hit(&mut self, _: Hit) -> u64 {
        self.calls += 1;
        self.calls
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_first_calls_activate_once() {
    const CALLERS: usize = 10_000;
    let node = node_with(|b| b.capabilities(["sf"]).actor::<SingleFlight>()).await;
    let queued = Arc::new(Semaphore::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let (node, queued) = (node.clone(), queued.clone());
        tasks.push(tokio::spawn(async move {
            let mut call = pin!(node.call::<SingleFlight, _>("the-one", Hit).into_future());
            // The first poll routes and enqueues the call.
            let first = poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
            queued.add_permits(1);
            match first {
                Poll::Ready(r) => r,
                Poll::Pending => call.await,
            }
        }));
    }
    // Every call is queued behind the one activation in progress.
    let _all = queued.acquire_many(CALLERS as u32).await.unwrap();
    assert_eq!(SF_ACTIVATIONS.load(Ordering::SeqCst), 1);
    SF_GATE.add_permits(1);
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap().expect("call succeeds"));
    }
    replies.sort_unstable();
    assert_eq!(replies, (1..=CALLERS as u64).collect::<Vec<_>>());
    assert_eq!(
        SF_ACTIVATIONS.load(Ordering::SeqCst),
        1,
        "exactly one activation"
    );
    assert_eq!(node.activation_count(), 1);
    node.shutdown().await.unwrap();
}

// ------------------------------------------------------------ turn-based order

#[derive(Actor, Default)]
#[actor(capability = "order")]
struct Recorder {
    seen: Vec<u32>,
    busy: bool,
}

#[derive(Message, Serialize, Deserialize)]
struct Record(u32);

#[derive(Message, Serialize, Deserialize)]
#[message(reply = Vec<u32>)]
struct Seen;

#[mesh::handlers]
impl Recorder {
    async fn record(&mut self, Record(n): Record) {
        assert!(!self.busy, "two messages ran at once");
        self.busy = true;
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        self.seen.push(n);
        self.busy = false;
    }

    async fn seen(&mut self, _: Seen) -> Vec<u32> {
        std::mem::take(&mut self.seen)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_run_one_at_a_time_in_arrival_order() {
    let node = node_with(|b| b.capabilities(["order"]).actor::<Recorder>()).await;
    for n in 0..500 {
        node.cast::<Recorder, _>("r", Record(n)).unwrap();
    }
    let seen = node.call::<Recorder, _>("r", Seen).await.unwrap();
    assert_eq!(seen, (0..500).collect::<Vec<_>>());

    // Concurrent callers: every message handled, never two at once (the
    // handler asserts), each caller's own messages in its order.
    let mut tasks = Vec::new();
    for c in 0..20u32 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u32 {
                node.call::<Recorder, _>("r", Record(c * 1000 + i))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = node.call::<Recorder, _>("r", Seen).await.unwrap();
    assert_eq!(seen.len(), 1000);
    for c in 0..20u32 {
        let mine: Vec<u32> = seen.iter().copied().filter(|v| v / 1000 == c).collect();
        assert_eq!(mine, (0..50).map(|i| c * 1000 + i).collect::<Vec<_>>());
    }
    node.shutdown().await.unwrap();
}

// ------------------------------------------------------------ idle passivation

type HookEvents = Mutex<Option<mpsc::UnboundedSender<(String, i64)>>>;

fn idle_events() -> &'static HookEvents {
    static TX: OnceLock<HookEvents> = OnceLock::new();
    TX.get_or_init(|| Mutex::new(None))
}

static IDLE_ACTIVATIONS: AtomicUsize = AtomicUsize::new(0);

#[derive(Actor)]
#[actor(
    capability = "idle",
    idle_timeout = "10s",
    activate = Sleepy::load,
    on_deactivate = Sleepy::saved
)]
struct Sleepy {
    value: i64,
}

impl Sleepy {
    async fn load(_id: &str) -> Result<Self, mesh::BoxError> {
        IDLE_ACTIVATIONS.fetch_add(1, Ordering::SeqCst);
        Ok(Sleepy { value: 0 })
    }

    async fn saved(&mut self, ctx: &Ctx) {
        if let Some(tx) = &*idle_events().lock().unwrap() {
            let _ = tx.send((ctx.id().to_owned(), self.value));
        }
    }
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = i64)]
struct Add(i64);

#[mesh::handlers]
impl Sleepy {
    async fn add(&mut self, Add(n): Add) -> i64 {
        self.value += n;
        self.value
    }
}

#[tokio::test(start_paused = true)]
async fn idle_actor_is_passivated_after_its_timeout_with_its_hook() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    *idle_events().lock().unwrap() = Some(tx);
    let node = node_with(|b| b.capabilities(["idle"]).actor::<Sleepy>()).await;

    let t0 = Instant::now();
    assert_eq!(node.call::<Sleepy, _>("s", Add(5)).await.unwrap(), 5);
    // Activity keeps it alive: a call at 8 s restarts the idle period.
    tokio::time::sleep(Duration::from_secs(8)).await; // start_paused: virtual time
    assert_eq!(node.call::<Sleepy, _>("s", Add(1)).await.unwrap(), 6);
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_secs(9)).await; // start_paused: virtual time
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(rx.try_recv().is_err(), "passivated before its idle timeout");
    assert_eq!(node.activation_count(), 1);

    // The paused clock advances to the sweeper's next tick by itself.
    let (id, value) = rx.recv().await.unwrap();
    let idle_for = Instant::now() - t1;
    assert_eq!(
        (id.as_str(), value),
        ("s", 6),
        "the hook saw the final state"
    );
    assert!(
        idle_for >= Duration::from_secs(10),
        "passivated after {idle_for:?}"
    );
    assert!(
        idle_for <= Duration::from_millis(12_500),
        "passivated after {idle_for:?}"
    );
    assert!(Instant::now() - t0 >= Duration::from_secs(18));
    // Its removal from the table follows the hook.
    while node.activation_count() != 0 {
        tokio::task::yield_now().await;
    }

    // The next call activates a fresh instance.
    assert_eq!(node.call::<Sleepy, _>("s", Add(1)).await.unwrap(), 1);
    assert_eq!(IDLE_ACTIVATIONS.load(Ordering::SeqCst), 2);
    node.shutdown().await.unwrap();
    assert_eq!(
        rx.recv().await.unwrap(),
        ("s".to_owned(), 1),
        "shutdown runs the hook"
    );
}

// ------------------------------------------------------------ panics

static PANICKY_ACTIVATIONS: AtomicUsize = AtomicUsize::new(0);

#[derive(Actor)]
#[actor(capability = "panicky", activate = Panicky::load)]
struct Panicky {
    value: i64,
}

impl Panicky {
    async fn load(id: &str) -> Result<Self, mesh::BoxError> {
        if id == "victim" {
            PANICKY_ACTIVATIONS.fetch_add(1, Ordering::SeqCst);
        }
        Ok(Panicky { value: 0 })
    }
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = i64)]
struct Bump;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = i64)]
struct Boom;

#[mesh::handlers]
impl Panicky {
    async fn bump(&mut self, _: Bump) -> i64 {
        self.value += 1;
        self.value
    }

    async fn boom(&mut self, _: Boom) -> i64 {
        tokio::task::yield_now().await;
        panic!("boom at {}", self.value);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_its_caller_and_restarts_only_that_actor() {
    let node = node_with(|b| b.capabilities(["panicky"]).actor::<Panicky>()).await;
    for _ in 0..3 {
        node.call::<Panicky, _>("victim", Bump).await.unwrap();
    }
    assert_eq!(node.call::<Panicky, _>("bystander", Bump).await.unwrap(), 1);

    let err = node.call::<Panicky, _>("victim", Boom).await.unwrap_err();
    match &err {
        Error::HandlerPanicked { actor, id, message } => {
            assert_eq!((actor.as_str(), id.as_str()), ("Panicky", "victim"));
            assert_eq!(message, "boom at 3");
        }
        other => panic!("expected HandlerPanicked, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "handler of Panicky \"victim\" panicked: boom at 3"
    );

    // The bystander kept its state; the victim starts over.
    assert_eq!(node.call::<Panicky, _>("bystander", Bump).await.unwrap(), 2);
    assert_eq!(node.call::<Panicky, _>("victim", Bump).await.unwrap(), 1);
    assert_eq!(
        PANICKY_ACTIVATIONS.load(Ordering::SeqCst),
        2,
        "victim activated twice"
    );

    // Messages queued behind a panic are served by the next activation.
    node.cast::<Panicky, _>("queued", Boom).unwrap();
    let after = node.call::<Panicky, _>("queued", Bump).await.unwrap();
    assert_eq!(after, 1, "served by a fresh activation, not lost");
    node.shutdown().await.unwrap();
}

// ------------------------------------------------------------ fallible activation

static FLAKY_FAILURES_LEFT: AtomicUsize = AtomicUsize::new(1);

#[derive(Actor)]
#[actor(capability = "flaky", activate = Flaky::load)]
struct Flaky {
    loaded_for: String,
}

impl Flaky {
    async fn load(id: &str) -> Result<Self, String> {
        tokio::task::yield_now().await;
        if id == "never" {
            return Err("no such account".into());
        }
        if FLAKY_FAILURES_LEFT
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("database unavailable".into());
        }
        Ok(Flaky {
            loaded_for: id.to_owned(),
        })
    }
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = String)]
struct Whoami;

#[mesh::handlers]
impl Flaky {
    async fn whoami(&mut self, _: Whoami) -> String {
        self.loaded_for.clone()
    }
}

#[tokio::test]
async fn activation_errors_reach_every_waiting_caller_and_the_next_call_retries() {
    let node = node_with(|b| b.capabilities(["flaky"]).actor::<Flaky>()).await;
    // Three callers wait on the same failing activation.
    let (a, b, c) = tokio::join!(
        node.call::<Flaky, _>("acct-1", Whoami).into_future(),
        node.call::<Flaky, _>("acct-1", Whoami).into_future(),
        node.call::<Flaky, _>("acct-1", Whoami).into_future(),
    );
    for r in [a, b, c] {
        match r {
            Err(Error::ActivationFailed { actor, id, reason }) => {
                assert_eq!((actor.as_str(), id.as_str()), ("Flaky", "acct-1"));
                assert_eq!(reason, "database unavailable");
            }
            other => panic!("expected ActivationFailed, got {other:?}"),
        }
    }
    assert_eq!(
        node.activation_count(),
        0,
        "a failed activation leaves nothing behind"
    );
    // The next call tries again, and the state was loaded from the id.
    assert_eq!(
        node.call::<Flaky, _>("acct-1", Whoami).await.unwrap(),
        "acct-1"
    );
    let err = node.call::<Flaky, _>("never", Whoami).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "activation of Flaky \"never\" failed: no such account"
    );
    node.shutdown().await.unwrap();
}

// ------------------------------------------------------------ deadlines and mailboxes

static SLOW_RAN: AtomicUsize = AtomicUsize::new(0);
static SLOW_GATE: Semaphore = Semaphore::const_new(0);
static SLOW_STARTED: Semaphore = Semaphore::const_new(0);

#[derive(Actor, Default)]
#[actor(capability = "slow", mailbox = 2)]
struct Slow;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = usize)]
struct Wait;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = usize)]
struct Quick;

#[mesh::handlers]
impl Slow {
    async fn wait(&mut self, _: Wait) -> usize {
        SLOW_STARTED.add_permits(1);
        SLOW_GATE.acquire().await.unwrap().forget();
        SLOW_RAN.fetch_add(1, Ordering::SeqCst)
    }

    async fn quick(&mut self, _: Quick) -> usize {
        SLOW_RAN.fetch_add(1, Ordering::SeqCst)
    }
}

#[tokio::test(start_paused = true)]
async fn deadlines_time_out_calls_and_expired_work_is_skipped() {
    let node = node_with(|b| {
        b.capabilities(["slow"])
            .actor::<Slow>()
            .call_timeout(Duration::from_secs(30))
    })
    .await;
    // A call stuck in its handler times out at its own deadline.
    let t0 = Instant::now();
    let blocked = tokio::spawn({
        let node = node.clone();
        async move {
            node.call::<Slow, _>("s", Wait)
                .timeout(Duration::from_millis(200))
                .await
        }
    });
    SLOW_STARTED.acquire().await.unwrap().forget();
    // A second call queues behind it and gives up first.
    let queued = node
        .call::<Slow, _>("s", Quick)
        .timeout(Duration::from_millis(50))
        .await;
    // The error names the call: message, actor type and id.
    let queued = queued.unwrap_err();
    assert!(matches!(queued, Error::Timeout { .. }), "{queued:?}");
    assert_eq!(queued.to_string(), r#"call Quick to Slow "s" timed out"#);
    let blocked = blocked.await.unwrap().unwrap_err();
    assert_eq!(blocked.to_string(), r#"call Wait to Slow "s" timed out"#);
    assert_eq!(Instant::now() - t0, Duration::from_millis(200));

    // Free the handler: the timed-out `Quick` had not started, so it is skipped.
    SLOW_GATE.add_permits(1);
    assert_eq!(node.call::<Slow, _>("s", Quick).await, Ok(1));
    assert_eq!(
        SLOW_RAN.load(Ordering::SeqCst),
        2,
        "the expired Quick never ran"
    );

    // The node's default deadline applies to calls without one.
    let t1 = Instant::now();
    let r = node.call::<Slow, _>("s", Wait).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert_eq!(Instant::now() - t1, Duration::from_secs(30));
    SLOW_GATE.add_permits(1);
    node.shutdown().await.unwrap();
}

static FULL_GATE: Semaphore = Semaphore::const_new(0);
static FULL_STARTED: Semaphore = Semaphore::const_new(0);

#[derive(Actor, Default)]
#[actor(capability = "full", mailbox = 2)]
struct Tiny;

#[derive(Message, Serialize, Deserialize)]
struct Block;

#[mesh::handlers]
impl Tiny {
    async fn block(&mut self, _: Block) {
        FULL_STARTED.add_permits(1);
        FULL_GATE.acquire().await.unwrap().forget();
    }
}

#[tokio::test]
async fn a_full_mailbox_refuses_at_once() {
    let node = node_with(|b| b.capabilities(["full"]).actor::<Tiny>()).await;
    node.cast::<Tiny, _>("t", Block).unwrap();
    FULL_STARTED.acquire().await.unwrap().forget();
    // The handler holds one message; the mailbox holds two more.
    node.cast::<Tiny, _>("t", Block).unwrap();
    node.cast::<Tiny, _>("t", Block).unwrap();
    let err = node.cast::<Tiny, _>("t", Block).unwrap_err();
    assert_eq!(
        err,
        Error::MailboxFull {
            actor: "Tiny".into(),
            id: "t".into()
        }
    );
    assert_eq!(
        node.call::<Tiny, _>("t", Block).await,
        Err(Error::MailboxFull {
            actor: "Tiny".into(),
            id: "t".into()
        })
    );
    // Another id has its own mailbox.
    node.cast::<Tiny, _>("u", Block).unwrap();
    FULL_GATE.add_permits(4);
    node.shutdown().await.unwrap();
}

// ------------------------------------------------------------ shutdown

static SHUTDOWN_HOOKS: AtomicUsize = AtomicUsize::new(0);
static SHUTDOWN_HANDLED: AtomicUsize = AtomicUsize::new(0);

#[derive(Actor, Default)]
#[actor(capability = "stopping", on_deactivate = Stopping::bye)]
struct Stopping;

impl Stopping {
    async fn bye(&mut self, _ctx: &Ctx) {
        tokio::task::yield_now().await;
        SHUTDOWN_HOOKS.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Message, Serialize, Deserialize)]
struct Touch;

#[mesh::handlers]
impl Stopping {
    async fn touch(&mut self, _: Touch) {
        SHUTDOWN_HANDLED.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_queues_runs_every_hook_and_refuses_new_calls() {
    let node = node_with(|b| b.capabilities(["stopping"]).actor::<Stopping>()).await;
    for i in 0..100 {
        node.call::<Stopping, _>(&format!("a{i}"), Touch)
            .await
            .unwrap();
        // Queued work is finished, not dropped.
        node.cast::<Stopping, _>(&format!("a{i}"), Touch).unwrap();
    }
    node.shutdown().await.unwrap();
    assert_eq!(SHUTDOWN_HOOKS.load(Ordering::SeqCst), 100);
    assert_eq!(SHUTDOWN_HANDLED.load(Ordering::SeqCst), 200);
    assert_eq!(node.activation_count(), 0);
    assert_eq!(
        node.call::<Stopping, _>("a1", Touch).await,
        Err(Error::ShuttingDown)
    );
    assert_eq!(
        node.cast::<Stopping, _>("new", Touch),
        Err(Error::ShuttingDown)
    );
    node.shutdown().await.unwrap(); // twice is fine
}

// ------------------------------------------------------------ ctx, replies, routing errors

static SELF_STOPS: AtomicUsize = AtomicUsize::new(0);

#[derive(Actor, Default)]
#[actor(capability = "ctx", name = "Session", on_deactivate = Session::ended)]
struct Session {
    n: u32,
}

impl Session {
    async fn ended(&mut self, ctx: &Ctx) {
        if ctx.id() == "u1" {
            SELF_STOPS.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = String)]
struct Describe;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u32)]
struct Logout;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<u32, String>, name = "session.Divide")]
struct Divide(u32);

#[mesh::handlers]
impl Session {
    async fn describe(&mut self, _: Describe, ctx: &Ctx) -> String {
        self.n += 1;
        format!(
            "{} {} on {} ({})",
            ctx.actor_name(),
            ctx.id(),
            ctx.node().id(),
            self.n
        )
    }

    async fn logout(&mut self, _: Logout, ctx: &Ctx) -> u32 {
        ctx.deactivate();
        self.n
    }

    async fn divide(&mut self, Divide(d): Divide) -> Result<u32, String> {
        100u32
            .checked_div(d)
            .ok_or_else(|| "division by zero".to_owned())
    }
}

#[tokio::test]
async fn handlers_see_their_context_and_domain_results_pass_through() {
    let node = node_with(|b| b.id("n1").capabilities(["ctx"]).actor::<Session>()).await;
    assert_eq!(
        node.call::<Session, _>("u1", Describe).await.unwrap(),
        "Session u1 on n1 (1)"
    );
    assert_eq!(node.call::<Session, _>("u1", Logout).await.unwrap(), 1);
    // ctx.deactivate() ended the activation after that message.
    assert_eq!(
        node.call::<Session, _>("u1", Describe).await.unwrap(),
        "Session u1 on n1 (1)"
    );
    assert_eq!(SELF_STOPS.load(Ordering::SeqCst), 1);
    assert_eq!(
        node.call::<Session, _>("u1", Divide(4)).await.unwrap(),
        Ok(25)
    );
    assert_eq!(
        node.call::<Session, _>("u1", Divide(0)).await.unwrap(),
        Err("division by zero".to_owned())
    );
    node.shutdown().await.unwrap();
}

#[derive(Actor, Default)]
#[actor(capability = "elsewhere")]
struct Elsewhere;

#[mesh::handlers]
impl Elsewhere {
    async fn describe(&mut self, _: Describe) -> String {
        String::new()
    }
}

#[derive(Actor, Default)]
#[actor(capability = "ctx")]
struct NotRegistered;

#[mesh::handlers]
impl NotRegistered {
    async fn describe(&mut self, _: Describe) -> String {
        String::new()
    }
}

/// A task looping on calls that fail at once (here: no node hosts the
/// actor) still yields to the runtime: each call spends a unit of the
/// task's budget. On a one-thread runtime the other task gets its turn
/// within a budget's worth of calls (128); without it the loop ran all
/// its calls first (seen as a hung test, the driver spinning on refusals).
#[tokio::test(flavor = "current_thread")]
async fn a_loop_of_calls_that_fail_at_once_yields_to_the_runtime() {
    let node = node_with(|b| b.capabilities(["ctx"]).actor::<Session>()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let spinner = {
        let (node, calls) = (node.clone(), calls.clone());
        tokio::spawn(async move {
            for _ in 0..100_000 {
                assert!(node.call::<Elsewhere, _>("x", Describe).await.is_err());
                calls.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Let the spinner start, then see how far it got before this task ran
    // again.
    tokio::task::yield_now().await;
    let seen = calls.load(Ordering::Relaxed);
    spinner.abort();
    assert!(seen <= 1_000, "the loop ran {seen} calls before yielding");
}

#[tokio::test]
async fn routing_errors_are_typed() {
    let node = node_with(|b| b.capabilities(["ctx"]).actor::<Session>()).await;
    let err = node.call::<Elsewhere, _>("x", Describe).await.unwrap_err();
    assert_eq!(
        err,
        Error::NoNodeForCapability {
            capability: "elsewhere".into(),
            actor: "Elsewhere".into(),
            id: "x".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "call to Elsewhere \"x\": no node hosts Elsewhere (capability \"elsewhere\"); \
         start one with `.actor::<Elsewhere>()`, or look in the logs for the connections to \
         the nodes that do (a refused one names the cookie, cluster or protocol version)"
    );
    // The node hosts the capability but not the type: placement by actor
    // type finds no node for it (it never routes it to a node without it).
    let err = node.cast::<NotRegistered, _>("x", Describe).unwrap_err();
    assert!(
        matches!(&err, Error::NoNodeForCapability { actor, .. } if actor == "NotRegistered"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("no node hosts NotRegistered (capability \"ctx\"); start one with `.actor::<NotRegistered>()`"),
        "{err}"
    );
    assert_eq!(node.owner_of::<Session>("anything").unwrap(), node.id());
    node.shutdown().await.unwrap();
}

// ------------------------------------------------------------ node configuration

#[derive(Actor, Default)]
#[actor(capability = "dup")]
struct Dup;

#[derive(Message, Serialize, Deserialize)]
#[message(name = "same")]
struct First;

#[derive(Message, Serialize, Deserialize)]
#[message(name = "same")]
struct Second;

#[mesh::handlers]
impl Dup {
    async fn first(&mut self, _: First) {}
    async fn second(&mut self, _: Second) {}
}

#[derive(Actor, Default)]
#[actor(capability = "ctx", name = "Rival")]
struct Rival;

/// Another type that calls itself `Rival` in the same capability.
#[derive(Actor, Default)]
#[actor(capability = "ctx", name = "Rival")]
struct RivalTwin;

#[mesh::handlers]
impl RivalTwin {}

#[mesh::handlers]
impl Rival {
    async fn divide(&mut self, _: Divide) -> Result<u32, String> {
        Ok(0)
    }
}

#[tokio::test]
async fn a_node_refuses_inconsistent_configuration() {
    let start =
        |b: mesh::NodeBuilder| async move { b.default_node(false).start().await.unwrap_err() };
    match start(Node::builder().capabilities(["dup"]).actor::<Dup>()).await {
        StartError::TagCollision { tag, first, second } => {
            assert_eq!(tag, mesh::wire::tag("dup", "Dup", "same"));
            assert_eq!(
                (first.as_str(), second.as_str()),
                ("Dup::same", "Dup::same")
            );
        }
        other => panic!("expected TagCollision, got {other:?}"),
    }
    // The text says the fix.
    let err = start(Node::builder().capabilities(["dup"]).actor::<Dup>()).await;
    assert!(
        err.to_string()
            .ends_with("rename one message with `#[message(name = \"...\")]`"),
        "{err}"
    );
    // Two actor types of one name in one capability: refused, the fix said.
    let err = start(
        Node::builder()
            .capabilities(["ctx"])
            .actor::<Rival>()
            .actor::<RivalTwin>(),
    )
    .await;
    assert_eq!(
        err.to_string(),
        "invalid configuration: two actor types named Rival in capability \"ctx\": the name \
         identifies the type on the wire; rename one with `#[actor(name = \"...\")]`"
    );
    let err = start(Node::builder().capabilities(["other"]).actor::<Session>()).await;
    assert_eq!(
        err.to_string(),
        "invalid configuration: actor Session needs capability \"ctx\", which this node does not host: \
         add it to NodeBuilder::capabilities, or remove `.actor::<Session>()`"
    );
    let err = start(
        Node::builder()
            .capabilities(["ctx"])
            .actor::<Session>()
            .actor::<Session>(),
    )
    .await;
    assert!(
        matches!(
            err,
            StartError::InvalidSetting {
                setting: "NodeBuilder::actor",
                ..
            }
        ),
        "{err:?}"
    );
    let err = start(Node::builder().capabilities([""])).await;
    assert!(
        matches!(
            err,
            StartError::InvalidSetting {
                setting: "NodeBuilder::capabilities",
                ..
            }
        ),
        "{err:?}"
    );
    // `?` in a function returning `mesh::Error` wraps it, Display unchanged.
    let wrapped = Error::from(err.clone());
    assert_eq!(wrapped, Error::Start(err.clone()));
    assert_eq!(wrapped.to_string(), err.to_string());
}

// ------------------------------------------------------------ wire dispatch table

#[tokio::test]
async fn calls_round_trip_through_the_wire_table() {
    use mesh::tag_of;
    use mesh::wire::{decode, encode};
    let node = node_with(|b| {
        b.capabilities(["panicky", "ctx"])
            .actor::<Panicky>()
            .actor::<Session>()
    })
    .await;
    let bump = tag_of::<Panicky, Bump>();
    assert_eq!(bump, mesh::wire::tag("panicky", "Panicky", "Bump"));
    assert_eq!(
        tag_of::<Session, Divide>(),
        mesh::wire::tag("ctx", "Session", "session.Divide")
    );

    // Wire and typed calls reach the same activation.
    let reply = node
        .call_wire(bump, "w", encode(&Bump).unwrap())
        .await
        .unwrap();
    assert_eq!(decode::<i64>(&reply).unwrap(), 1);
    assert_eq!(node.call::<Panicky, _>("w", Bump).await.unwrap(), 2);
    let reply = node
        .call_wire(bump, "w", encode(&Bump).unwrap())
        .await
        .unwrap();
    assert_eq!(decode::<i64>(&reply).unwrap(), 3);

    // A domain Result crosses the wire intact.
    let div = tag_of::<Session, Divide>();
    let reply = node
        .call_wire(div, "w", encode(&Divide(0)).unwrap())
        .await
        .unwrap();
    assert_eq!(
        decode::<Result<u32, String>>(&reply).unwrap(),
        Err("division by zero".to_owned())
    );

    // Bad input is an error, never a panic, and the actor lives on.
    let err = node
        .call_wire(div, "w", vec![0xc1, 0xff, 0x00])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Codec(_)), "{err:?}");
    let err = node
        .call_wire(bump, "w", encode(&"not a unit struct").unwrap())
        .await;
    assert!(
        err.is_ok() || matches!(err, Err(Error::Codec(_))),
        "{err:?}"
    );
    let err = node
        .call_wire(0xdead_beef, "w", Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnknownMessage {
                tag: 0xdead_beef,
                ..
            }
        ),
        "{err:?}"
    );

    // A panic behind the wire comes back typed as well.
    let boom = tag_of::<Panicky, Boom>();
    let err = node
        .call_wire(boom, "w", encode(&Boom).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::HandlerPanicked { .. }), "{err:?}");
    assert_eq!(node.call::<Panicky, _>("w", Bump).await.unwrap(), 1);
    node.shutdown().await.unwrap();
}

// ------------------------------------------------------------ many actors

#[derive(Actor, Default)]
#[actor(capability = "many")]
struct Tally {
    n: u64,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
struct Count;

#[mesh::handlers]
impl Tally {
    async fn count(&mut self, _: Count) -> u64 {
        self.n += 1;
        self.n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_callers_over_many_actors_lose_nothing() {
    let node = node_with(|b| b.capabilities(["many"]).actor::<Tally>()).await;
    let mut tasks = Vec::new();
    for c in 0..50 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..40 {
                for a in 0..100 {
                    let id = format!("t{}", (a + c + round) % 100);
                    node.call::<Tally, _>(&id, Count).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut total = 0;
    for a in 0..100 {
        total += node
            .call::<Tally, _>(&format!("t{a}"), Count)
            .await
            .unwrap()
            - 1;
    }
    assert_eq!(total, 50 * 40 * 100);
    assert_eq!(node.activation_count(), 100);
    node.shutdown().await.unwrap();
}

// ------------------------------------------------------------ Send and Sync

#[test]
fn handles_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<Node>();
    send_sync::<Error>();
    send_sync::<StartError>();
    send_sync::<Ctx>();
    let node: Option<Node> = None;
    if let Some(node) = &node {
        send(&node.call::<Tally, _>("x", Count).into_future());
        send(&node.shutdown());
        send(&node.call_wire(0, "x", Vec::new()));
    }
    send(&mesh::call::<Tally, _>("x", Count).into_future());
    send(&Node::builder().start());
}

// ------------------------------------------------------------ deadlines behind slow work

static GLACIAL_GATE: Semaphore = Semaphore::const_new(0);

#[derive(Actor)]
#[actor(capability = "glacial", activate = Glacial::load)]
struct Glacial;

impl Glacial {
    async fn load(_id: &str) -> Result<Self, String> {
        GLACIAL_GATE
            .acquire()
            .await
            .map_err(|e| e.to_string())?
            .forget();
        Ok(Glacial)
    }
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u8)]
struct Poke;

#[mesh::handlers]
impl Glacial {
    async fn poke(&mut self, _: Poke) -> u8 {
        7
    }
}

#[tokio::test(start_paused = true)]
async fn queued_calls_time_out_on_time_behind_a_slow_activation() {
    let node = node_with(|b| b.capabilities(["glacial"]).actor::<Glacial>()).await;
    let t0 = Instant::now();
    let timed = |d: Duration| {
        let node = node.clone();
        async move {
            let r = node.call::<Glacial, _>("g", Poke).timeout(d).await;
            (r, Instant::now() - t0)
        }
    };
    let (slow, fast, late, ()) = tokio::join!(
        // Queued first, with the later deadline...
        timed(Duration::from_secs(1)),
        // ...then a call with an earlier one: the timer moves up for it.
        async {
            tokio::task::yield_now().await;
            timed(Duration::from_millis(100)).await
        },
        // A call still waiting when the activation completes is served.
        async {
            tokio::time::sleep(Duration::from_millis(1500)).await; // start_paused
            timed(Duration::from_secs(10)).await
        },
        async {
            tokio::time::sleep(Duration::from_secs(2)).await; // start_paused
            GLACIAL_GATE.add_permits(1);
        },
    );
    assert!(matches!(fast.0, Err(Error::Timeout { .. })), "{fast:?}");
    assert_eq!(fast.1, Duration::from_millis(100));
    assert!(matches!(slow.0, Err(Error::Timeout { .. })), "{slow:?}");
    assert_eq!(slow.1, Duration::from_secs(1));
    assert_eq!(late, (Ok(7), Duration::from_secs(2)));
    node.shutdown().await.unwrap();
}

/// The common start mistakes are variants of their own, so a caller can
/// match them (`StartError::Config(String)` before issue 20); the others
/// name their setting. And the renamed builder methods' old names still
/// work, deprecated, for one release.
#[tokio::test]
async fn start_errors_are_typed() {
    let start = |b: mesh::NodeBuilder| async move {
        b.default_node(false)
            .start()
            .await
            .expect_err("a refused start")
    };
    // Clustered (a listener) without a cookie.
    let err = start(Node::builder().listen("127.0.0.1:0")).await;
    assert_eq!(err, StartError::MissingCookie);
    assert_eq!(
        err.to_string(),
        "invalid configuration: a clustered node needs a cookie (NodeBuilder::cookie)"
    );
    // Strong mode on a node without a discovery.
    let err = start(Node::builder().strong(mesh::lease::Strong::default())).await;
    assert_eq!(
        err,
        StartError::NoLeaseStore {
            has_discovery: false
        }
    );
    assert!(err.to_string().contains("lease"), "{err}");
    // A setting out of place names itself.
    let err = start(Node::builder().id("")).await;
    assert!(
        matches!(
            &err,
            StartError::InvalidSetting {
                setting: "NodeBuilder::id",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(StartError::SETTINGS.contains(&"NodeBuilder::id"));
    // Outside a tokio runtime: refused before the first await.
    let outside = std::thread::spawn(|| {
        let mut fut = std::pin::pin!(Node::builder().default_node(false).start());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Err(e)) => e,
            Poll::Ready(Ok(_)) => panic!("started outside a runtime"),
            Poll::Pending => panic!("waited outside a runtime"),
        }
    })
    .join()
    .expect("the thread");
    assert_eq!(outside, StartError::NoRuntime);
    // The old builder names forward to the new ones.
    #[allow(deprecated)]
    let node = Node::builder()
        .name("old-name")
        .default_timeout(Duration::from_millis(1500))
        .default_node(false)
        .start()
        .await
        .expect("start");
    assert_eq!(node.id(), "old-name");
    node.shutdown().await.expect("shutdown");
}
