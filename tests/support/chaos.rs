//! Load and histories for chaos runs (the chaos suite and the chaos
//! example): steady calls from a driver node, their outcomes, and the
//! activation histories the node processes write.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mesh::history::{overlaps, ActivationEvent, Overlap};
use mesh::{Error, Node};
use tokio::time::Instant;

use crate::actors::{Player, Score};

/// How long a [`Load`] waits for progress before it fails the run.
pub const STEP: Duration = Duration::from_secs(30);

/// A fresh scratch directory for one run's histories.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-chaos-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[derive(Debug)]
pub struct Outcome {
    /// Who owned the actor when the call started (the driver's view).
    pub owner: String,
    /// The serving node, or the error.
    pub result: Result<String, Error>,
    /// How long the call took.
    pub took: Duration,
}

/// Steady load: 8 workers calling 97 players each, one call after the
/// other, each with `deadline`.
pub struct Load {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    progress: Arc<tokio::sync::watch::Sender<usize>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts the workers.
    pub fn start(driver: &Node, deadline: Duration) -> Load {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let progress = Arc::new(tokio::sync::watch::channel(0usize).0);
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..8)
            .map(|w| {
                let (driver, outcomes, progress, stop) = (
                    driver.clone(),
                    outcomes.clone(),
                    progress.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let id = format!("player-{w}-{}", i % 97);
                        let owner = driver.owner_of::<Player>(&id).unwrap_or_default();
                        let started = Instant::now();
                        let result = driver
                            .call::<Player, _>(&id, Score(1))
                            .timeout(deadline)
                            .await
                            .map(|(on, _)| on);
                        let took = started.elapsed();
                        outcomes
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(Outcome {
                                owner,
                                result,
                                took,
                            });
                        progress.send_modify(|n| *n += 1);
                    }
                })
            })
            .collect();
        Load {
            outcomes,
            progress,
            stop,
            tasks,
        }
    }

    /// Waits until `n` more calls have ended.
    pub async fn more(&self, n: usize) {
        let mut rx = self.progress.subscribe();
        let target = *rx.borrow_and_update() + n;
        crate::within(STEP, rx.wait_for(|done| *done >= target))
            .await
            .unwrap();
    }

    /// Stops the workers; every call's outcome.
    pub async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("a load worker panicked");
        }
        std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The activation events every process recorded in `dir`.
pub fn histories(dir: &Path) -> Vec<ActivationEvent> {
    let mut events = Vec::new();
    for entry in std::fs::read_dir(dir).expect("scratch dir").flatten() {
        if let Ok(text) = std::fs::read_to_string(entry.path()) {
            events.extend(text.lines().filter_map(ActivationEvent::parse_line));
        }
    }
    events
}

/// Waits, while `load` goes on, until no two activations of one id are
/// alive at once (at most `limit`); returns every overlap the run had.
pub async fn settled(dir: &Path, load: &Load, limit: Duration) -> Vec<Overlap> {
    let started = Instant::now();
    loop {
        let found = overlaps(&histories(dir));
        if found.iter().all(|o| o.length.is_some()) {
            return found;
        }
        assert!(
            started.elapsed() < limit,
            "duplicates still alive {limit:?} later: {:?}",
            found
                .iter()
                .filter(|o| o.length.is_none())
                .collect::<Vec<_>>()
        );
        load.more(200).await;
    }
}

/// One line: calls, failures by error, slowest call, duplicates.
pub fn summary(outcomes: &[Outcome], found: &[Overlap]) -> String {
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    let longest = found
        .iter()
        .filter_map(|o| o.length)
        .max()
        .unwrap_or_default();
    let by_error = failures(outcomes);
    format!(
        "{} calls, failed {by_error:?}, slowest {slowest:.1?}; {} duplicate activations, longest {longest:.1?}",
        outcomes.len(),
        found.len()
    )
}

/// Failed calls by error variant name.
pub fn failures(outcomes: &[Outcome]) -> std::collections::BTreeMap<String, usize> {
    let mut by_error = std::collections::BTreeMap::new();
    for o in outcomes {
        if let Err(e) = &o.result {
            let kind = format!("{e:?}");
            let kind = kind
                .split([' ', '{', '('])
                .next()
                .unwrap_or_default()
                .to_owned();
            *by_error.entry(kind).or_default() += 1;
        }
    }
    by_error
}

/// A process writing the history `path` was killed at `at`: its last run's
/// activations that never recorded their end are closed then (a killed
/// process cannot say so itself). Returns how many were closed.
pub fn record_kill(path: &Path, at: std::time::SystemTime) -> std::io::Result<usize> {
    use mesh::history::{History, Phase};
    let text = std::fs::read_to_string(path)?;
    let events: Vec<ActivationEvent> = text
        .lines()
        .filter_map(ActivationEvent::parse_line)
        .collect();
    let Some(last) = events.last().map(|e| e.incarnation) else {
        return Ok(0);
    };
    let mut open = std::collections::BTreeMap::new();
    for e in events.iter().filter(|e| e.incarnation == last) {
        let key = (e.actor.clone(), e.id.clone());
        match e.phase {
            Phase::Activated => {
                open.insert(key, e.node.clone());
            }
            Phase::Deactivated | Phase::Lost => {
                open.remove(&key);
            }
            _ => {}
        }
    }
    let file = mesh::history::FileHistory::append(path)?;
    for ((actor, id), node) in &open {
        file.record(ActivationEvent::new(
            Phase::Deactivated,
            at,
            node,
            last,
            actor,
            id,
        ));
    }
    Ok(open.len())
}
