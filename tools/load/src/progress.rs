//! Progress while a run goes on, drawn off the request path.
//!
//! Contract: one task wakes on its own timer and reads the current
//! recorder's atomic counters (never its lock), then writes to stderr: on a
//! terminal (`std::io::IsTerminal`) one line redrawn in place 5 times a
//! second; otherwise a plain line every second, for CI logs. The calls
//! never wait for it. [`Progress::finish`] stops it and clears the line.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::record::Recorder;

/// The recorder being followed, with its label.
type Slot = Arc<Mutex<Option<(String, Arc<Recorder>)>>>;

/// A running progress display.
#[derive(Debug)]
pub struct Progress {
    slot: Slot,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    tty: bool,
}

impl Progress {
    /// Starts the display (nothing is drawn when `quiet`), for runs
    /// expected to make `total` calls, if known.
    pub fn start(total: Option<u64>, quiet: bool) -> Self {
        let slot: Slot = Arc::default();
        let (stop, mut stopped) = watch::channel(false);
        let tty = std::io::stderr().is_terminal();
        let task = (!quiet).then(|| {
            let slot = slot.clone();
            tokio::spawn(async move {
                let period = if tty {
                    Duration::from_millis(200)
                } else {
                    Duration::from_secs(1)
                };
                let mut tick = tokio::time::interval_at(Instant::now() + period, period);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped.changed() => return,
                    }
                    let current = slot.lock().expect("progress slot").clone();
                    if let Some((label, rec)) = current {
                        let line = render(&label, &rec, total);
                        let mut err = std::io::stderr().lock();
                        let _ = if tty {
                            write!(err, "\r\x1b[2K{line}")
                        } else {
                            writeln!(err, "{line}")
                        };
                        let _ = err.flush();
                    }
                }
            })
        });
        Progress {
            slot,
            stop,
            task,
            tty,
        }
    }

    /// Follows `rec` from now on, under `label`.
    pub fn watch(&self, label: impl Into<String>, rec: Arc<Recorder>) {
        *self.slot.lock().expect("progress slot") = Some((label.into(), rec));
    }

    /// Stops the display and clears its line.
    pub async fn finish(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
            if self.tty {
                eprint!("\r\x1b[2K");
            }
        }
    }
}

/// One progress line.
pub fn render(label: &str, rec: &Recorder, total: Option<u64>) -> String {
    let c = &rec.counters;
    let secs = Instant::now()
        .saturating_duration_since(rec.origin())
        .as_secs_f64();
    let ok = c.ok.load(Ordering::Relaxed);
    let errors = c.errors.load(Ordering::Relaxed);
    let done = ok + errors;
    let of = total.map(|t| format!("/{t}")).unwrap_or_default();
    format!(
        "[{secs:6.1}s] {label}: {done}{of} calls ({:.0}/s), {errors} errors, {} dropped, {} in flight",
        if secs > 0.0 { done as f64 / secs } else { 0.0 },
        c.dropped.load(Ordering::Relaxed),
        c.in_flight.load(Ordering::Relaxed),
    )
}
