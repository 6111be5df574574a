//! Test actors that more than one suite uses (`tests/core/cluster.rs`,
//! `tests/consul/consul.rs`). Their wire names are their type names, as for any
//! actor: tests that match on `"Player"` or on `tag_of::<Player, Score>()`
//! rely on that. Actors that only one suite uses stay in that suite.

use mesh::consul::Consul;
use mesh::prelude::*;

/// A player of capability `game` keeping a score, for routing tests: its
/// replies name the node that served them.
#[derive(Actor, Default)]
#[actor(capability = "game")]
pub struct Player {
    score: u64,
}

/// Adds to the player's score; replies with the serving node's id and the
/// new score (`Score(0)` reads it).
#[derive(Message, Serialize, Deserialize)]
#[message(reply = (String, u64))]
pub struct Score(pub u64);

/// Makes the handler panic with `"remote boom"`.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = ())]
pub struct Crash;

/// Never replies: the handler waits forever.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = ())]
pub struct Hang;

#[mesh::handlers]
impl Player {
    async fn score(&mut self, Score(n): Score, ctx: &Ctx) -> (String, u64) {
        self.score += n;
        (ctx.node().id().to_owned(), self.score)
    }

    async fn crash(&mut self, _: Crash) {
        panic!("remote boom");
    }

    async fn hang(&mut self, _: Hang) {
        std::future::pending::<()>().await;
    }
}

/// A bank account of capability `bank` whose balance lives in Consul KV
/// (`accounts/<id>`), read at activation and written on every deposit:
/// fenced with the activation's lease in strong mode
/// ([`Consul::fenced_put`]), plain otherwise. The node must
/// `provide(consul)`. A refused write deactivates it (its state is stale)
/// and answers the error.
#[derive(Actor)]
#[actor(capability = "bank", activate = Account::load)]
pub struct Account {
    balance: u64,
    key: String,
}

impl Account {
    async fn load(id: &str, ctx: &Ctx) -> Result<Self, String> {
        let consul = ctx.get::<Consul>().map_err(|e| e.to_string())?;
        let key = format!("accounts/{id}");
        let balance = match consul.kv_get(&key).await.map_err(|e| e.to_string())? {
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("{key}: not a number"))?,
            None => 0,
        };
        Ok(Account { balance, key })
    }
}

/// Adds to the balance; replies with the new balance, or why the write
/// was refused.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<u64, String>)]
pub struct Deposit(pub u64);

#[mesh::handlers]
impl Account {
    async fn deposit(&mut self, Deposit(n): Deposit, ctx: &Ctx) -> Result<u64, String> {
        let consul = ctx.get::<Consul>().map_err(|e| e.to_string())?;
        let next = self.balance + n;
        let value = next.to_string();
        let written = match ctx.fence() {
            Some(fence) => consul
                .fenced_put(&fence, &self.key, value.as_bytes())
                .await
                .map(drop),
            None => consul.kv_put(&self.key, value.as_bytes()).await,
        };
        match written {
            Ok(()) => {
                self.balance = next;
                Ok(next)
            }
            Err(e) => {
                ctx.deactivate();
                Err(e.to_string())
            }
        }
    }
}

/// The same bank account with its balance in the node's state store
/// (`#[state]`): loaded and claimed at activation, written at the end of
/// each deposit before its reply, fenced by the store in strong mode. The
/// same `Deposit` message; a refused write is the call's
/// `Error::State`.
#[derive(Actor)]
#[actor(capability = "bank")]
pub struct StateAccount {
    #[state]
    balance: mesh::state::State<u64>,
}

#[mesh::handlers]
impl StateAccount {
    async fn deposit(&mut self, Deposit(n): Deposit) -> Result<u64, String> {
        *self.balance += n;
        Ok(*self.balance)
    }
}
