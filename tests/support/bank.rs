//! Steady deposits into bank accounts (`actors::Account`, or any actor
//! named `Account` of capability `bank` with a `Deposit` message, such as
//! the `consul_mesh` example's), and the check of their balances in Consul
//! KV: the strong mode's chaos workload.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mesh::consul::Consul;
use mesh::Node;
use tokio::time::Instant;

use crate::actors::{Account, Deposit};
use crate::consul_agent::TestConsul;
use crate::consul_catalog::TimeScale;
use crate::within;

/// A test agent of `agents` simulated agents whose session and health
/// TTLs run `1 / scale` times faster (the strong-mode suites tell their
/// nodes the same with `Strong::time_scale`).
pub async fn agent(agents: usize, scale: f64) -> Arc<TestConsul> {
    Arc::new(
        TestConsul::start(
            agents,
            TimeScale {
                ttl: scale,
                deregister: 0.01,
            },
        )
        .await,
    )
}

/// The adapter of a strong-mode suite's node on agent `i`: heartbeat
/// 100 ms, health TTL 6 s before scaling.
pub fn adapter(consul: &TestConsul, i: usize) -> Consul {
    Consul::new()
        .address(consul.url(i))
        .heartbeat(Duration::from_millis(100))
        .ttl(Duration::from_secs(6))
        .wait(Duration::from_secs(5))
}

const STEP: Duration = Duration::from_secs(30);

/// Deposits of 1 into `accounts` accounts, `per_account` workers each,
/// through the driver, each call with `deadline`; counts what was acknowledged and attempted per account.
pub struct Deposits {
    acked: Arc<Mutex<BTreeMap<String, (u64, u64)>>>,
    failures: Arc<Mutex<Vec<String>>>,
    done: Arc<tokio::sync::watch::Sender<usize>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Deposits {
    /// Starts the workers, depositing into [`Account`]s.
    pub fn start(
        driver: &Node,
        prefix: &str,
        accounts: usize,
        per_account: usize,
        deadline: Duration,
    ) -> Deposits {
        Deposits::start_for::<Account>(driver, prefix, accounts, per_account, deadline)
    }

    /// The same into accounts of type `A` (such as
    /// [`crate::actors::StateAccount`]).
    pub fn start_for<A: mesh::Handler<Deposit>>(
        driver: &Node,
        prefix: &str,
        accounts: usize,
        per_account: usize,
        deadline: Duration,
    ) -> Deposits {
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(tokio::sync::watch::channel(0usize).0);
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..accounts * per_account)
            .map(|w| {
                let id = format!("{prefix}-{}", w % accounts);
                let (driver, acked, failures, done, stop) = (
                    driver.clone(),
                    acked.clone(),
                    failures.clone(),
                    done.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        let result = driver.call::<A, _>(&id, Deposit(1)).timeout(deadline).await;
                        let refused = matches!(&result, Ok(Err(_)));
                        {
                            let mut table = acked.lock().unwrap_or_else(PoisonError::into_inner);
                            let entry = table.entry(id.clone()).or_insert((0, 0));
                            entry.1 += 1;
                            match result {
                                Ok(Ok(_)) => entry.0 += 1,
                                Ok(Err(e)) => failures
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .push(format!("{id}: refused: {e}")),
                                Err(e) => failures
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .push(format!(
                                        "{id}: {e} (sent {:?} before it failed, at {:?})",
                                        started.elapsed(),
                                        std::time::SystemTime::now()
                                    )),
                            }
                        }
                        done.send_modify(|n| *n += 1);
                        // As a client would: a refusal (no node, not
                        // enough members) comes back at once, and retrying
                        // in a tight loop only piles up failures.
                        if refused {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                })
            })
            .collect();
        Deposits {
            acked,
            failures,
            done,
            stop,
            tasks,
        }
    }

    /// Waits until `n` more deposits have ended.
    pub async fn more(&self, n: usize) {
        let mut rx = self.done.subscribe();
        let target = *rx.borrow_and_update() + n;
        within(STEP, rx.wait_for(|d| *d >= target))
            .await
            .expect("deposits go on");
    }

    /// Stops; per account (acknowledged, attempted), and the failures.
    pub async fn finish(self) -> (BTreeMap<String, (u64, u64)>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("a depositor panicked");
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap_or_else(PoisonError::into_inner));
        let failures =
            std::mem::take(&mut *self.failures.lock().unwrap_or_else(PoisonError::into_inner));
        (acked, failures)
    }
}

/// The balances in KV against what was acknowledged and attempted:
/// the accounts that lost an acknowledged deposit or gained more than
/// was attempted.
pub async fn check_balances(
    consul: &Consul,
    acked: &BTreeMap<String, (u64, u64)>,
) -> Vec<(String, u64, u64, u64)> {
    let mut wrong = Vec::new();
    for (id, (ok, tried)) in acked {
        let stored = consul
            .kv_get(&format!("accounts/{id}"))
            .await
            .expect("read a balance")
            .map(|v| {
                String::from_utf8_lossy(&v)
                    .parse::<u64>()
                    .expect("a number")
            })
            .unwrap_or(0);
        if stored < *ok || stored > *tried {
            wrong.push((id.clone(), *ok, stored, *tried));
        }
    }
    wrong
}

/// The balances in a state store (`actors::StateAccount`'s rows) against
/// what was acknowledged and attempted: the accounts that lost an
/// acknowledged deposit or gained more than was attempted.
pub async fn check_state_balances(
    store: &dyn mesh::state::StateStore,
    acked: &BTreeMap<String, (u64, u64)>,
) -> Vec<(String, u64, u64, u64)> {
    use mesh::state::{envelope, StateKey};
    let mut wrong = Vec::new();
    for (id, (ok, tried)) in acked {
        let row = store
            .load(&StateKey::new("bank/StateAccount", id.as_str()), None)
            .await
            .expect("read a balance");
        let stored = match row.bytes {
            Some(b) => {
                let (_, payload) = envelope::open(&b).expect("an envelope");
                envelope::decode::<u64>(payload).expect("a number")
            }
            None => 0,
        };
        if stored < *ok || stored > *tried {
            wrong.push((id.clone(), *ok, stored, *tried));
        }
    }
    wrong
}

/// The session id of node `name` (its newest, if several).
pub fn session_of(consul: &TestConsul, name: &str) -> Option<String> {
    let (list, _) = consul.with_kv(|kv| kv.session_list(None));
    list.as_array()?
        .iter()
        .filter(|s| {
            s["Name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("mesh/{name}/")))
        })
        .max_by_key(|s| s["CreateIndex"].as_u64())
        .and_then(|s| s["ID"].as_str())
        .map(str::to_owned)
}

/// The session holding lock key `key`, if any.
pub fn holder(consul: &TestConsul, key: &str) -> Option<String> {
    consul.with_kv(|kv| {
        let (entries, _) = kv.list(key);
        entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.session.clone())
            .filter(|s| !s.is_empty())
    })
}
