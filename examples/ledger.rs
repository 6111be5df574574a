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

use std::path::PathBuf;

use clap::Parser;
use mesh::prelude::*;
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
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let store = RedbStore::open(&args.store)?;
    let node = Node::builder()
        .capabilities(["bank"])
        .actor::<Account>()
        .state(store)
        .start()
        .await?;
    println!("ledger on {}", args.store.display());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
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
