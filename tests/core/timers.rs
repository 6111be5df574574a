//! Timers bound to an activation, and values provided to a node: on a
//! paused clock, so every tick is counted exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh::prelude::*;
use mesh::timer::{Timer, TimerError};
use mesh_testkit::fixture::local;

/// Counters for one test each (tests run in parallel in this binary).
struct Counts {
    ticks: AtomicU64,
    activations: AtomicU64,
    deactivations: AtomicU64,
}

impl Counts {
    const fn new() -> Self {
        Counts {
            ticks: AtomicU64::new(0),
            activations: AtomicU64::new(0),
            deactivations: AtomicU64::new(0),
        }
    }
}

static COUNTS: [Counts; 5] = [
    Counts::new(),
    Counts::new(),
    Counts::new(),
    Counts::new(),
    Counts::new(),
];

/// The id says which counters: "t0".."t4".
fn counts(id: &str) -> &'static Counts {
    &COUNTS[id[1..].parse::<usize>().unwrap_or(0)]
}

#[derive(Actor)]
#[actor(capability = "tick", idle_timeout = "1s", activate = Ticker::open, on_deactivate = Ticker::close)]
struct Ticker {
    ticks: u64,
}

impl Ticker {
    async fn open(id: &str) -> Result<Self, String> {
        counts(id).activations.fetch_add(1, Ordering::SeqCst);
        Ok(Ticker { ticks: 0 })
    }

    async fn close(&mut self, ctx: &Ctx) {
        counts(ctx.id())
            .deactivations
            .fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Message, Clone, Serialize, Deserialize)]
struct Tick;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = ())]
struct Start {
    every_ms: u64,
    keep_alive: bool,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
struct Count;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = bool)]
struct StopTimer;

#[derive(Message, Serialize, Deserialize)]
struct Leave;

#[derive(Message, Serialize, Deserialize)]
struct Boom;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = String)]
struct WrongType;

#[mesh::handlers]
impl Ticker {
    async fn tick(&mut self, _: Tick, ctx: &Ctx) {
        self.ticks += 1;
        counts(ctx.id()).ticks.fetch_add(1, Ordering::SeqCst);
    }

    async fn start(&mut self, s: Start, ctx: &Ctx) {
        let mut when = Timer::every(Duration::from_millis(s.every_ms));
        if s.keep_alive {
            when = when.keep_alive();
        }
        ctx.timer::<Ticker, _>("t", when, Tick).expect("a timer");
    }

    async fn count(&mut self, _: Count) -> u64 {
        self.ticks
    }

    async fn stop_timer(&mut self, _: StopTimer, ctx: &Ctx) -> bool {
        ctx.cancel_timer("t")
    }

    async fn leave(&mut self, _: Leave, ctx: &Ctx) {
        ctx.deactivate();
    }

    async fn boom(&mut self, _: Boom) {
        panic!("boom");
    }

    async fn wrong_type(&mut self, _: WrongType, ctx: &Ctx) -> String {
        match ctx.timer::<Other, _>("x", Timer::once(Duration::from_secs(1)), Ping) {
            Err(e) => e.to_string(),
            Ok(()) => "set".into(),
        }
    }
}

#[derive(Actor, Default)]
#[actor(capability = "tick")]
struct Other;

#[derive(Message, Clone, Serialize, Deserialize)]
struct Ping;

#[mesh::handlers]
impl Other {
    async fn ping(&mut self, _: Ping) {}
}

/// Lets `d` of virtual time pass, every timer due in it firing in order
/// (the tests run on a paused clock: nothing real is waited for).
async fn elapse(d: Duration) {
    tokio::time::sleep(d).await; // start_paused: virtual time, auto-advanced
}

async fn node() -> Node {
    local(|b| b.capabilities(["tick"]).actor::<Ticker>().actor::<Other>()).await
}

async fn start(node: &Node, id: &str, every_ms: u64, keep_alive: bool) {
    node.call::<Ticker, _>(
        id,
        Start {
            every_ms,
            keep_alive,
        },
    )
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_periodic_timer_ticks_in_turn_until_cancelled() {
    let node = node().await;
    start(&node, "t0", 100, true).await;
    elapse(Duration::from_millis(1050)).await;
    assert_eq!(node.call::<Ticker, _>("t0", Count).await, Ok(10));
    assert_eq!(node.call::<Ticker, _>("t0", StopTimer).await, Ok(true));
    elapse(Duration::from_secs(1)).await;
    assert_eq!(node.call::<Ticker, _>("t0", Count).await, Ok(10));
    assert_eq!(node.call::<Ticker, _>("t0", StopTimer).await, Ok(false));
    assert_eq!(
        node.call::<Ticker, _>("t0", WrongType).await.unwrap(),
        "a timer for Other cannot be set from an activation of Ticker"
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn timers_end_with_the_activation_and_never_activate_it_again() {
    let node = node().await;
    let c = counts("t1");
    start(&node, "t1", 100, true).await;
    elapse(Duration::from_millis(350)).await;
    node.cast::<Ticker, _>("t1", Leave).unwrap();
    elapse(Duration::from_millis(10)).await;
    let ticks = c.ticks.load(Ordering::SeqCst);
    assert_eq!(ticks, 3);
    // A second later: no tick was handled, nothing was activated again.
    elapse(Duration::from_secs(1)).await;
    assert_eq!(c.ticks.load(Ordering::SeqCst), ticks);
    assert_eq!(c.activations.load(Ordering::SeqCst), 1);
    assert_eq!(c.deactivations.load(Ordering::SeqCst), 1);
    assert_eq!(node.activation_count(), 0);
    node.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_panic_ends_the_timers_too() {
    let node = node().await;
    let c = counts("t2");
    start(&node, "t2", 100, true).await;
    elapse(Duration::from_millis(250)).await;
    assert!(matches!(
        node.call::<Ticker, _>("t2", Boom).await,
        Err(Error::HandlerPanicked { .. })
    ));
    let ticks = c.ticks.load(Ordering::SeqCst);
    elapse(Duration::from_secs(1)).await;
    assert_eq!(c.ticks.load(Ordering::SeqCst), ticks);
    assert_eq!(node.activation_count(), 0);
    node.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn ticks_do_not_keep_an_actor_alive_unless_asked() {
    let node = node().await;
    // idle_timeout 1 s; ticks every 100 ms that do not count as activity.
    start(&node, "t3", 100, false).await;
    elapse(Duration::from_millis(1500)).await;
    assert_eq!(
        counts("t3").deactivations.load(Ordering::SeqCst),
        1,
        "passivated"
    );
    assert_eq!(node.activation_count(), 0);
    let ticks = counts("t3").ticks.load(Ordering::SeqCst);
    assert!(
        (9..=13).contains(&ticks),
        "{ticks} ticks before passivation"
    );
    // keep_alive ticks do count: still active three idle timeouts later.
    start(&node, "t4", 100, true).await;
    elapse(Duration::from_secs(3)).await;
    assert_eq!(counts("t4").deactivations.load(Ordering::SeqCst), 0);
    assert_eq!(node.activation_count(), 1);
    node.shutdown().await.unwrap();
}

/// What the node gives its actors.
struct Greeting(String);

#[derive(Actor)]
#[actor(capability = "hello", activate = Greeter::open)]
struct Greeter {
    text: String,
}

impl Greeter {
    async fn open(id: &str, ctx: &Ctx) -> Result<Self, mesh::BoxError> {
        let g: &Greeting = ctx.get()?;
        Ok(Greeter {
            text: format!("{} {id}", g.0),
        })
    }
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = (String, usize))]
struct Hello;

#[mesh::handlers]
impl Greeter {
    async fn hello(&mut self, _: Hello, ctx: &Ctx) -> (String, usize) {
        let limit = ctx.get::<usize>().copied().unwrap_or(0);
        (self.text.clone(), limit)
    }
}

#[tokio::test]
async fn actors_read_what_the_node_provides_and_a_missing_value_says_so() {
    let node = Node::builder()
        .default_node(false)
        .capabilities(["hello"])
        .actor::<Greeter>()
        .provide(Greeting("hello".into()))
        .provide(7usize)
        .start()
        .await
        .unwrap();
    assert_eq!(
        node.call::<Greeter, _>("world", Hello).await,
        Ok(("hello world".to_owned(), 7))
    );
    assert_eq!(node.get::<usize>().copied(), Ok(7));
    node.shutdown().await.unwrap();

    let bare = Node::builder()
        .default_node(false)
        .capabilities(["hello"])
        .actor::<Greeter>()
        .start()
        .await
        .unwrap();
    match bare.call::<Greeter, _>("world", Hello).await {
        Err(Error::ActivationFailed { reason, .. }) => assert!(
            reason.contains("Greeting was provided") || reason.contains("NodeBuilder::provide"),
            "{reason}"
        ),
        other => panic!("expected ActivationFailed, got {other:?}"),
    }
    bare.shutdown().await.unwrap();
    let _ = TimerError::Ended;
}

/// A timer armed in `activate`: how an actor re-arms after a move, a
/// passivation or a restart (the new activation starts with no timer).
#[derive(Actor)]
#[actor(capability = "rearm", activate = Alarm::open)]
struct Alarm {
    rings: u64,
}

#[derive(Message, Clone, Serialize, Deserialize)]
struct Ring;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
struct Rings;

impl Alarm {
    async fn open(_id: &str, ctx: &Ctx) -> Result<Self, mesh::BoxError> {
        ctx.timer::<Alarm, _>("ring", Timer::every(Duration::from_secs(1)), Ring)?;
        Ok(Alarm { rings: 0 })
    }
}

#[mesh::handlers]
impl Alarm {
    async fn ring(&mut self, _: Ring) {
        self.rings += 1;
    }
    async fn rings(&mut self, _: Rings) -> u64 {
        self.rings
    }
}

#[tokio::test(start_paused = true)]
async fn a_timer_armed_in_activate_ticks() {
    let node = Node::builder()
        .default_node(false)
        .capabilities(["rearm"])
        .actor::<Alarm>()
        .start()
        .await
        .unwrap();
    assert_eq!(node.call::<Alarm, _>("a", Rings).await, Ok(0));
    // The clock is paused: this sleep auto-advances virtual time, firing
    // the ticks in order, and costs no real time.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let rings = node.call::<Alarm, _>("a", Rings).await.unwrap();
    assert!(
        (2..=4).contains(&rings),
        "{rings} rings in 3.5 s of a 1 s timer"
    );
    node.shutdown().await.unwrap();
}
