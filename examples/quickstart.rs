//! Quickstart: 10 000 counter actors on the embedded default (one node, no
//! Consul), driven by concurrent callers, and one durable actor whose
//! state is in the embedded store (`quickstart.redb` in the current
//! directory): it counts the quickstart's runs, across restarts.
//!
//! Run with `cargo run --example quickstart` (add `--release` for speed).

use std::time::Instant;

use mesh::prelude::*;
use mesh::state::{RedbStore, State};

/// How many times the quickstart ran here: its count is durable (written
/// to the node's store before the reply leaves), so it survives the
/// process, a crash included.
#[derive(Actor)]
#[actor(capability = "counter")]
pub struct Runs {
    #[state]
    count: State<u64>,
}

/// Counts one more run; replies with the count.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
pub struct Started;

#[mesh::handlers]
impl Runs {
    async fn started(&mut self, _: Started) -> u64 {
        *self.count += 1;
        *self.count
    }
}

/// A counter per id: activated on first use, passivated after 10 idle minutes.
#[derive(Actor, Default)]
#[actor(capability = "counter", idle_timeout = "10m")]
pub struct Counter {
    value: i64,
}

/// Adds to the counter; replies with the new value.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = i64)]
pub struct Increment(pub i64);

/// Reads the counter.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = i64)]
pub struct Get;

#[mesh::handlers]
impl Counter {
    async fn increment(&mut self, Increment(n): Increment) -> i64 {
        self.value += n;
        self.value
    }

    async fn get(&mut self, _: Get) -> i64 {
        self.value
    }
}

const ACTORS: usize = 10_000;
const CALLERS: usize = 64;
const ROUNDS: usize = 20;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_logs();
    let node = Node::builder()
        .capabilities(["counter"])
        .actor::<Counter>()
        .actor::<Runs>()
        .state(RedbStore::open("quickstart.redb")?)
        .start()
        .await?;
    println!("node {} hosts {:?}", node.id(), node.capabilities());

    // The workload, unless Ctrl-C (SIGINT) or SIGTERM comes first: either
    // way the node shuts down cleanly (hooks run, nothing is left behind).
    let wrong = tokio::select! {
        wrong = workload(&node) => Some(wrong?),
        () = stop_signal() => {
            println!("stopping early");
            None
        }
    };

    let run = mesh::call::<Runs, _>("quickstart", Started).await?;
    println!("run #{run} of the quickstart here (a durable count, in quickstart.redb)");
    node.shutdown().await?;
    println!("shut down: {} activations left", node.activation_count());
    if wrong.is_some_and(|w| w > 0) {
        std::process::exit(1);
    }
    Ok(())
}

/// Activates the counters, drives them, and checks them: how many are wrong.
async fn workload(node: &Node) -> Result<usize, mesh::Error> {
    // Phase 1: first calls activate 10 000 actors, from 64 concurrent callers.
    let started = Instant::now();
    run(ACTORS, 1).await?;
    let activation_time = started.elapsed();
    println!(
        "activated {} actors in {:.1} ms ({:.0} activations/s)",
        node.activation_count(),
        activation_time.as_secs_f64() * 1e3,
        ACTORS as f64 / activation_time.as_secs_f64()
    );

    // Phase 2: every actor gets ROUNDS more increments, concurrently.
    let started = Instant::now();
    run(ACTORS, ROUNDS).await?;
    let elapsed = started.elapsed();
    let calls = ACTORS * ROUNDS;
    println!(
        "{calls} calls in {:.1} ms ({:.0} calls/s) from {CALLERS} concurrent callers",
        elapsed.as_secs_f64() * 1e3,
        calls as f64 / elapsed.as_secs_f64()
    );

    // Check: every counter saw exactly 1 + ROUNDS increments.
    let mut wrong = 0;
    for i in 0..ACTORS {
        let v = mesh::call::<Counter, _>(&format!("counter_{i}"), Get).await?;
        if v != 1 + ROUNDS as i64 {
            wrong += 1;
        }
    }
    println!(
        "checked {ACTORS} counters: {} correct, {wrong} wrong",
        ACTORS - wrong
    );
    let sample = mesh::call::<Counter, _>("counter_42", Get).await?;
    println!("counter_42 = {sample}");

    mesh::cast::<Counter, _>("counter_42", Increment(100))?;
    let after = mesh::call::<Counter, _>("counter_42", Get).await?;
    println!("after a cast of +100, counter_42 = {after}");

    Ok(wrong)
}

/// Logs to stderr, filtered by `RUST_LOG` (`info` when unset; for example
/// `RUST_LOG=mesh=debug`).
fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what systemd and Kubernetes send).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Sends `rounds` increments to each of `actors` counters from CALLERS tasks.
async fn run(actors: usize, rounds: usize) -> Result<(), mesh::Error> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CALLERS {
        tasks.spawn(async move {
            for _ in 0..rounds {
                for i in (c..actors).step_by(CALLERS) {
                    mesh::call::<Counter, _>(&format!("counter_{i}"), Increment(1)).await?;
                }
            }
            Ok::<_, mesh::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        // A caller task that panicked panics here too.
        r.expect("caller task failed")?;
    }
    Ok(())
}
