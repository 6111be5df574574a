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

/// The chaos suite's reminder probe (capability `bank`, on nodes with a
/// state store): armed with [`Arm`], it takes a periodic reminder
/// `"beat"` and keeps in its `#[state]` what its ticks were ([`Beats`]);
/// idle 300 ms, so with a longer period each tick finds it passivated and
/// activates it again. A node that provides a [`TickLog`] has each tick
/// appended to it: `<id> <due_ms> <node> <start_ms> <end_ms>`.
#[derive(Actor)]
#[actor(capability = "bank", idle_timeout = "300ms")]
pub struct Beacon {
    #[state]
    beats: mesh::state::State<Beats>,
}

/// What a [`Beacon`]'s ticks were, durable with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beats {
    /// The reminder's period.
    pub period_ms: u64,
    /// Ticks acknowledged.
    pub count: u64,
    /// The last acknowledged tick's due time.
    pub last_due: u64,
    /// Ticks at or before the last acknowledged (delivered again).
    pub duplicates: u64,
    /// `(last, next)` where a tick came that was not the next one due
    /// (after `tick.missed` is counted).
    pub gaps: Vec<(u64, u64)>,
    /// The largest `tick.missed` seen.
    pub most_missed: u64,
}

/// Arms a [`Beacon`]: a reminder every `every_ms`, first one period from
/// now, with missed-tick policy `missed` (`skip`, `once`, or `burst:<n>`).
#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<(), String>)]
pub struct Arm {
    /// The period.
    pub every_ms: u64,
    /// The missed-tick policy.
    pub missed: String,
}

/// Reads a [`Beacon`]'s [`Beats`].
#[derive(Message, Serialize, Deserialize)]
#[message(reply = Beats)]
pub struct Report;

/// Where a node's [`Beacon`]s log their ticks (give it with
/// `NodeBuilder::provide`).
#[derive(Debug)]
pub struct TickLog(std::sync::Mutex<std::fs::File>);

impl TickLog {
    /// Appends to `path` (created if missing).
    pub fn append(path: &std::path::Path) -> std::io::Result<TickLog> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(TickLog(std::sync::Mutex::new(f)))
    }

    /// The ticks in the logs at `paths`: `(id, due_ms, node, start_ms,
    /// end_ms)` (a torn last line, from a killed process, is skipped).
    pub fn read(paths: &[std::path::PathBuf]) -> Vec<(String, u64, String, u64, u64)> {
        let mut out = Vec::new();
        for p in paths {
            let Ok(text) = std::fs::read_to_string(p) else {
                continue;
            };
            for line in text.lines() {
                let f: Vec<&str> = line.split(' ').collect();
                if let [id, due, node, start, end] = f[..] {
                    if let (Ok(due), Ok(start), Ok(end)) = (due.parse(), start.parse(), end.parse())
                    {
                        out.push((id.to_owned(), due, node.to_owned(), start, end));
                    }
                }
            }
        }
        out
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[mesh::handlers]
impl Beacon {
    async fn arm(&mut self, a: Arm, ctx: &Ctx) -> Result<(), String> {
        use mesh::reminder::{Missed, Schedule};
        let missed = match a.missed.split_once(':') {
            None if a.missed == "skip" => Missed::Skip,
            None if a.missed == "once" => Missed::Once,
            Some(("burst", n)) => Missed::Burst(n.parse().map_err(|_| "burst:<n>")?),
            _ => return Err(format!("unknown policy {:?}", a.missed)),
        };
        self.beats.period_ms = a.every_ms;
        let every = std::time::Duration::from_millis(a.every_ms);
        ctx.reminders()
            .register("beat", Schedule::every(every).missed(missed), &())
            .await
            .map_err(|e| e.to_string())
    }

    async fn report(&mut self, _: Report) -> Beats {
        (*self.beats).clone()
    }

    async fn tick(&mut self, tick: mesh::reminder::Tick, ctx: &Ctx) -> Result<(), String> {
        let start = unix_ms();
        let b = &mut *self.beats;
        if tick.due_ms <= b.last_due {
            b.duplicates += 1;
        } else {
            let expected = b.last_due + b.period_ms * (tick.missed + 1);
            if b.last_due != 0 && tick.due_ms != expected {
                b.gaps.push((b.last_due, tick.due_ms));
            }
            b.last_due = tick.due_ms;
            b.count += 1;
            b.most_missed = b.most_missed.max(tick.missed);
        }
        if let Ok(log) = ctx.get::<TickLog>() {
            use std::io::Write;
            let line = format!(
                "{} {} {} {start} {}\n",
                ctx.id(),
                tick.due_ms,
                ctx.node().id(),
                unix_ms()
            );
            let mut f = log
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = f.write_all(line.as_bytes());
        }
        Ok(())
    }
}
