//! How a node ends, written once: [`NodeInner::teardown`] for
//! [`Node::shutdown`](super::Node::shutdown) (after its leave drain),
//! for the last handle dropped without it, and for
//! [`Node::sever`](super::Node::sever).
//!
//! The parts end in one order, each as its [`Exit`] says:
//!
//! | step | `Shutdown` | `Abandon` (dropped) | `Sever` (as a crash) |
//! |---|---|---|---|
//! | 1. new calls fail (`ShuttingDown`); reminders | yes; no new tick | yes; halted | no; halted |
//! | 2. discovery | stopped (heartbeat, then deregister), awaited | stopped in a task (halted without a runtime) | halted: the registration expires |
//! | 3. connections, dialing, cluster tasks | closed | closed | closed |
//! | 4. managed sidecar | stopped, awaited | ends with the node (dropped) | left running |
//! | 5. activations | told to stop | told to stop | keep running |
//! | 6. wait for the activations to end | until the deadline | no | no |
//! | 7. strong-mode leases | released, then the session destroyed | halted: the session expires | halted: the session expires |
//! | 8. the process's default node | cleared if this one | cleared if this one | kept |
//! | 9. the state store | released, awaited (after the reminder ticks in flight) | released in a task | kept |
//!
//! Discovery goes before the connections so that peers stop routing here
//! before the links close; the leases go after the activations (and
//! their fenced writes) have ended. In strong mode a `Shutdown` runs steps
//! 5, 6 and 7 first, then 2, 3 and 4: its session may be bound to the
//! node's health check ([`crate::lease::Strong::bind_to_health_check`]),
//! and then deregistering the check would invalidate the session at once, under
//! activations still writing (their fenced writes refused, their calls
//! failed) and with its keys still held (kept from their new owners for
//! the lock-delay). Peers stopped routing here in the leave drain before
//! the teardown, so the activations' last replies still go out on the
//! open connections. The state store is released last: its
//! file (the embedded store) is free once `shutdown` returns, for a node
//! started again in the same process. `Abandon` never waits: it runs from a
//! `Drop`, so its teardown completes without awaiting anything (every step
//! that would wait is spawned or skipped), which `abandon` checks.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{NodeInner, DEFAULT};

/// How a node ends. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// `Node::shutdown`, after the leave drain: every step, awaited, until
    /// `deadline`.
    Shutdown {
        /// When the shutdown timeout runs out.
        deadline: Instant,
    },
    /// The last handle was dropped without `shutdown`: at once, no wait.
    Abandon,
    /// `Node::sever`: cut off as a crash looks to peers.
    Sever,
}

impl NodeInner {
    /// Ends the parts `exit` ends, in the one order of the [module
    /// docs](self). Returns whether the activations ended before the
    /// deadline (always true unless `Shutdown`).
    pub(crate) async fn teardown(self: &Arc<Self>, exit: Exit) -> bool {
        // 1.
        if exit != Exit::Sever {
            self.shared.begin_shutdown();
        }
        // With 1: no new reminder tick; on `Shutdown` those in flight end
        // with the activations (their store is released after, step 9).
        if let Some(reminders) = &self.reminders {
            match exit {
                Exit::Shutdown { .. } => reminders.stop(),
                Exit::Abandon | Exit::Sever => reminders.halt(),
            }
        }
        // 5, 6 and 7 first in strong mode: see the module docs.
        let strong_first = self.keeper.is_some() && matches!(exit, Exit::Shutdown { .. });
        let mut in_time = true;
        if strong_first {
            in_time = self.end_activations_and_leases(exit).await;
        }
        if let Some(cluster) = &self.cluster {
            // 2.
            if let Some(d) = cluster.discovery() {
                match exit {
                    Exit::Shutdown { .. } => {
                        if let Err(e) = d.stop().await {
                            tracing::warn!(node = %self.id, "leaving discovery: {e}");
                        }
                    }
                    Exit::Abandon => match tokio::runtime::Handle::try_current() {
                        Ok(rt) => {
                            let id = self.id.clone();
                            rt.spawn(async move {
                                if let Err(e) = d.stop().await {
                                    tracing::warn!(node = %id, "leaving discovery: {e}");
                                }
                            });
                        }
                        Err(_) => d.halt(),
                    },
                    Exit::Sever => d.halt(),
                }
            }
            // 3.
            cluster.stop();
            // 4. Drained and disconnected: nothing left to carry.
            #[cfg(feature = "sidecar")]
            if matches!(exit, Exit::Shutdown { .. }) {
                if let Some(sidecar) = cluster.sidecar() {
                    sidecar.stop().await;
                }
            }
        }
        if !strong_first {
            in_time = self.end_activations_and_leases(exit).await;
        }
        // 8.
        if exit != Exit::Sever {
            let current = DEFAULT.load();
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, self)) {
                DEFAULT.compare_and_swap(&*current, None);
            }
        }
        // 9. The last reference may close a file and join a thread (the
        // embedded store): on a blocking thread, not this one. The
        // reminder ticks still in flight hold it: awaited first.
        if let (Some(reminders), Exit::Shutdown { deadline }) = (&self.reminders, exit) {
            if tokio::time::timeout_at(deadline, reminders.stopped())
                .await
                .is_err()
            {
                reminders.halt();
            }
        }
        if exit != Exit::Sever {
            let store = crate::util::lock(&self.state).take();
            if let Some(store) = store {
                let closing = tokio::task::spawn_blocking(move || drop(store));
                if matches!(exit, Exit::Shutdown { .. }) {
                    let _ = closing.await;
                }
            }
        }
        in_time
    }

    /// Steps 5, 6 and 7: the activations told to stop, awaited (until the
    /// deadline), then the leases released. Whether the activations ended
    /// in time.
    async fn end_activations_and_leases(&self, exit: Exit) -> bool {
        // 5.
        if exit != Exit::Sever {
            self.catalog.stop_all();
        }
        // 6.
        let mut in_time = true;
        if let Exit::Shutdown { deadline } = exit {
            let drained = self.shared.drained(|| self.catalog.is_idle());
            in_time = tokio::time::timeout_at(deadline, drained).await.is_ok();
        }
        // 7.
        if let Some(keeper) = &self.keeper {
            match exit {
                Exit::Shutdown { deadline } => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    keeper.leave(left.max(Duration::from_secs(1))).await;
                }
                Exit::Abandon | Exit::Sever => keeper.halt(),
            }
        }
        in_time
    }

    /// The last user handle was dropped without `shutdown`: stop at once,
    /// without waiting (see [`Node`](super::Node)'s drop contract).
    pub(crate) fn abandon(self: &Arc<Self>) {
        if self.shared.is_shutting_down() {
            return;
        }
        tracing::warn!(node = %self.id, "the last handle was dropped without shutdown(): stopping the node");
        use std::future::Future as _;
        let mut teardown = std::pin::pin!(self.teardown(Exit::Abandon));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // `Abandon` awaits nothing (module docs): done in one poll.
        let done = teardown.as_mut().poll(&mut cx).is_ready();
        debug_assert!(done, "an abandoned node's teardown waited");
    }
}
