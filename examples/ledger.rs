//! Durable state on one machine: account actors whose balances live in
//! the embedded store (`mesh::state::RedbStore`), deposited into by
//! concurrent callers. Stop it any way you like (Ctrl-C, `kill -9`) and
//! run it again on the same file: every deposit it acknowledged is there.
//!
//! ```sh
//! cargo run --example ledger -- --store /tmp/ledger.redb --accounts 20
//! ```
//!
//! Each acknowledged deposit is printed as `acked <account> <balance>`
//! once the call returned: after the balance was written and fsync'd
//! (`tests/processes.rs` kills it with SIGKILL and checks the file).
//!
//! With `--remind-ms 100` a clock actor also ticks every 100 ms from a
//! durable reminder (`mesh::reminder`), printed as `tick <due_ms>
//! <missed>`: kill the process, run it again, and the ticks go on from
//! where they were.

use std::path::PathBuf;

use clap::Parser;
use mesh::prelude::*;
use mesh::reminder::{Missed, Schedule};
use mesh::state::{RedbStore, State};
use tokio::io::AsyncWriteExt;

/// An account: its balance is durable.
#[derive(Actor)]
#[actor(capability = "bank")]
pub struct Account {
    #[state]
    balance: State<u64>,
}

/// Adds to the balance; replies with the new balance.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
pub struct Deposit(pub u64);

#[mesh::handlers]
impl Account {
    async fn deposit(&mut self, Deposit(n): Deposit) -> u64 {
        // Written when the turn ends, before the reply leaves.
        *self.balance += n;
        *self.balance
    }
}

/// A clock (`--remind-ms`): a durable reminder ticks it, and it prints
/// each tick as `tick <due_ms> <missed>`. The reminder outlives the
/// process: run the example again on the same file and the ticks go on
/// from where they were, those missed meanwhile fired one after the
/// other (`Missed::Burst`).
#[derive(Actor, Default)]
#[actor(capability = "bank")]
pub struct Clock;

/// Where the clock prints.
struct Out(tokio::sync::mpsc::UnboundedSender<String>);

#[mesh::handlers]
impl Clock {
    async fn tick(&mut self, tick: mesh::reminder::Tick, ctx: &Ctx) -> Result<(), String> {
        let out = ctx.get::<Out>().map_err(|e| e.to_string())?;
        out.0
            .send(format!("tick {} {}\n", tick.due_ms, tick.missed))
            .map_err(|_| "stdout closed".to_string())
    }
}

#[derive(Parser)]
struct Args {
    /// The embedded store's file.
    #[arg(long, default_value = "ledger.redb")]
    store: PathBuf,
    /// How many accounts take deposits (one caller each).
    #[arg(long, default_value_t = 20)]
    accounts: usize,
    /// Deposits per account; 0 deposits until stopped.
    #[arg(long, default_value_t = 0)]
    deposits: u64,
    /// Also tick a clock with a durable reminder every this many
    /// milliseconds (kept if the file has it already).
    #[arg(long)]
    remind_ms: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let store = RedbStore::open(&args.store)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut builder = Node::builder()
        .capabilities(["bank"])
        .actor::<Account>()
        .actor::<Clock>()
        .state(store);
    if args.remind_ms.is_some() {
        // The clock keeps a sender: with it, the example runs until stopped.
        builder = builder.provide(Out(tx.clone()));
    }
    let node = builder.start().await?;
    println!("ledger on {}", args.store.display());
    if let Some(ms) = args.remind_ms {
        let clock = node.reminders::<Clock>("clock");
        // Registered once: a run on a file that has it keeps its schedule.
        if !clock.list().await?.iter().any(|r| r.name == "tick") {
            let every = Schedule::every(std::time::Duration::from_millis(ms));
            clock
                .register("tick", every.missed(Missed::Burst(100_000)), &())
                .await?;
        }
    }
    let mut callers = tokio::task::JoinSet::new();
    for a in 0..args.accounts {
        let tx = tx.clone();
        let deposits = args.deposits;
        callers.spawn(async move {
            let id = format!("account-{a}");
            let mut n = 0;
            while deposits == 0 || n < deposits {
                let balance = mesh::call::<Account, _>(&id, Deposit(1)).await?;
                n += 1;
                if tx.send(format!("acked {id} {balance}\n")).is_err() {
                    break;
                }
            }
            Ok::<_, mesh::Error>(())
        });
    }
    drop(tx);
    // One writer for stdout: a line is printed whole or not at all.
    let mut out = tokio::io::stdout();
    while let Some(line) = rx.recv().await {
        out.write_all(line.as_bytes()).await?;
        out.flush().await?;
    }
    while let Some(r) = callers.join_next().await {
        r??;
    }
    node.shutdown().await?;
    Ok(())
}
