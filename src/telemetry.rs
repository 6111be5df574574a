//! Metric names and the handles the hot paths use.
//!
//! Metrics go through the [`metrics`] facade: install a recorder (for
//! example a Prometheus exporter) **before** starting the first node, because
//! the handles are resolved once, at that start, and reused on every call.
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `mesh_activations_live` | gauge | | activations currently running on this process |
//! | `mesh_activations_total` | counter | | activations started (successful activation functions) |
//! | `mesh_activation_failures_total` | counter | | activation functions that returned an error or panicked |
//! | `mesh_deactivations_total` | counter | `reason` = `idle`, `requested`, `panic`, `shutdown`, `moved`, `lost` (strong mode: the lease was lost), `state` (a durable state write failed) | activations ended |
//! | `mesh_calls_total` | counter | `outcome` = `ok`, `timeout`, `mailbox_full`, `panicked`, `activation_failed`, `shutting_down`, `error` | calls completed, by outcome |
//! | `mesh_casts_total` | counter | `outcome` = `ok`, `error` | casts enqueued or refused |
//! | `mesh_call_duration_seconds` | histogram | | call latency as the caller saw it |
//! | `mesh_mailbox_depth` | histogram | | messages an activation took from its mailbox in one batch |
//! | `mesh_abandoned_total` | counter | | messages skipped because their caller had already given up or its deadline passed |
//! | `mesh_frame_errors_total` | counter | | malformed frames received (each closed its connection) |
//! | `mesh_state_writes_total` | counter | `outcome` = `ok`, `conflict`, `fenced`, `too_large`, `unavailable`, `uncertain`, `codec` | durable state writes (`mesh::state`), by outcome |
//! | `mesh_state_write_seconds` | histogram | | durable state write latency (the output gate holds the turn's reply this long) |
//! | `mesh_state_load_seconds` | histogram | | durable state load latency, at activation |
//! | `mesh_reminder_ticks_total` | counter | `outcome` = `ok` (delivered and acknowledged), `failed` (to be delivered again), `skipped` (missed, [`crate::reminder::Missed::Skip`]) | reminder ticks this node fired |
//! | `mesh_reminder_lateness_seconds` | histogram | | how long after its due time a reminder tick was sent |
//! | `mesh_reminders_held` | gauge | | reminders the node's keeper holds in memory (due within its window) |
//! | `mesh_connections_closed_total` | counter | `reason` = `denied`, `max_lifetime` | accepted connections this node closed on its transport's demand: a re-authorization refused (closed at once), or the maximum lifetime reached (retired gracefully) |
//!
//! Every call runs in a `tracing` span named `mesh.call` (or `mesh.cast`) at
//! `DEBUG` level, with fields `actor`, `id` and `message`.
//!
//! With the `admin` feature, `mesh::admin::prometheus` renders these in the
//! Prometheus text format (`/metrics` on the admin endpoint), with
//! `mesh_call_duration_seconds` as a histogram of buckets 100 µs to 5 s. With
//! the `otel` feature, the spans join the callers' OpenTelemetry traces
//! across nodes (see "Observability" in `docs/guide/07-operating.md`).

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram};

use crate::Error;

/// Gauge: live activations.
pub const ACTIVATIONS_LIVE: &str = "mesh_activations_live";
/// Counter: activations started.
pub const ACTIVATIONS_TOTAL: &str = "mesh_activations_total";
/// Counter: activation functions that failed.
pub const ACTIVATION_FAILURES_TOTAL: &str = "mesh_activation_failures_total";
/// Counter: activations ended, by `reason`.
pub const DEACTIVATIONS_TOTAL: &str = "mesh_deactivations_total";
/// Counter: calls completed, by `outcome`.
pub const CALLS_TOTAL: &str = "mesh_calls_total";
/// Counter: casts, by `outcome`.
pub const CASTS_TOTAL: &str = "mesh_casts_total";
/// Histogram: call latency in seconds.
pub const CALL_DURATION_SECONDS: &str = "mesh_call_duration_seconds";
/// Histogram: messages taken from a mailbox in one batch.
pub const MAILBOX_DEPTH: &str = "mesh_mailbox_depth";
/// Counter: messages skipped because their caller gave up.
pub const ABANDONED_TOTAL: &str = "mesh_abandoned_total";
/// Counter: malformed frames received.
pub const FRAME_ERRORS_TOTAL: &str = "mesh_frame_errors_total";
/// Counter: connections closed on their transport's demand, by `reason`
/// (`denied`, `max_lifetime`).
pub const CONNECTIONS_CLOSED_TOTAL: &str = "mesh_connections_closed_total";

/// Counter: durable state writes, by `outcome`.
pub const STATE_WRITES_TOTAL: &str = "mesh_state_writes_total";
/// Histogram: durable state write latency in seconds.
pub const STATE_WRITE_SECONDS: &str = "mesh_state_write_seconds";
/// Histogram: durable state load latency in seconds.
pub const STATE_LOAD_SECONDS: &str = "mesh_state_load_seconds";

/// Counter: reminder ticks fired, by `outcome` (`ok`, `failed`, `skipped`).
pub const REMINDER_TICKS_TOTAL: &str = "mesh_reminder_ticks_total";
/// Histogram: how late a reminder tick was sent, in seconds.
pub const REMINDER_LATENESS_SECONDS: &str = "mesh_reminder_lateness_seconds";
/// Gauge: reminders held in memory by the node's keeper.
pub const REMINDERS_HELD: &str = "mesh_reminders_held";

/// Why an activation ended (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    Idle,
    Requested,
    Panic,
    Shutdown,
    Moved,
    /// Strong mode: the lease was lost; ended without its hook.
    Lost,
    /// Its durable state could not be written; ended without its hook.
    StateFailed,
}

/// Resolved metric handles, shared by every node of the process.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) live: Gauge,
    pub(crate) activations: Counter,
    pub(crate) activation_failures: Counter,
    deactivations: [Counter; 7],
    calls_ok: Counter,
    calls_timeout: Counter,
    calls_full: Counter,
    calls_panicked: Counter,
    calls_activation_failed: Counter,
    calls_shutting_down: Counter,
    calls_error: Counter,
    pub(crate) casts_ok: Counter,
    pub(crate) casts_error: Counter,
    pub(crate) call_duration: Histogram,
    pub(crate) mailbox_depth: Histogram,
    pub(crate) abandoned: Counter,
    pub(crate) frame_errors: Counter,
    /// By outcome: ok, conflict, fenced, too_large, unavailable,
    /// uncertain, codec.
    state_writes: [Counter; 7],
    pub(crate) state_write: Histogram,
    pub(crate) state_load: Histogram,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The `outcome` labels of [`STATE_WRITES_TOTAL`], in index order.
pub(crate) const STATE_OUTCOMES: [&str; 7] = [
    "ok",
    "conflict",
    "fenced",
    "too_large",
    "unavailable",
    "uncertain",
    "codec",
];

/// The index in [`STATE_OUTCOMES`] of a write's outcome.
pub(crate) fn state_outcome(result: &Result<u64, crate::error::StoreError>) -> usize {
    use crate::error::StoreError as E;
    match result {
        Ok(_) => 0,
        Err(E::Conflict { .. }) => 1,
        Err(E::Fenced { .. }) => 2,
        Err(E::TooLarge { .. }) => 3,
        Err(E::Unavailable(_)) => 4,
        Err(E::Uncertain(_)) => 5,
        Err(E::Codec(_)) => 6,
    }
}

impl Metrics {
    /// The process's handles, resolved on first use.
    pub(crate) fn get() -> &'static Metrics {
        METRICS.get_or_init(|| {
            let call = |outcome: &'static str| metrics::counter!(CALLS_TOTAL, "outcome" => outcome);
            let end =
                |reason: &'static str| metrics::counter!(DEACTIVATIONS_TOTAL, "reason" => reason);
            Metrics {
                live: metrics::gauge!(ACTIVATIONS_LIVE),
                activations: metrics::counter!(ACTIVATIONS_TOTAL),
                activation_failures: metrics::counter!(ACTIVATION_FAILURES_TOTAL),
                deactivations: [
                    end("idle"),
                    end("requested"),
                    end("panic"),
                    end("shutdown"),
                    end("moved"),
                    end("lost"),
                    end("state"),
                ],
                calls_ok: call("ok"),
                calls_timeout: call("timeout"),
                calls_full: call("mailbox_full"),
                calls_panicked: call("panicked"),
                calls_activation_failed: call("activation_failed"),
                calls_shutting_down: call("shutting_down"),
                calls_error: call("error"),
                casts_ok: metrics::counter!(CASTS_TOTAL, "outcome" => "ok"),
                casts_error: metrics::counter!(CASTS_TOTAL, "outcome" => "error"),
                call_duration: metrics::histogram!(CALL_DURATION_SECONDS),
                mailbox_depth: metrics::histogram!(MAILBOX_DEPTH),
                abandoned: metrics::counter!(ABANDONED_TOTAL),
                frame_errors: metrics::counter!(FRAME_ERRORS_TOTAL),
                state_writes: STATE_OUTCOMES
                    .map(|o| metrics::counter!(STATE_WRITES_TOTAL, "outcome" => o)),
                state_write: metrics::histogram!(STATE_WRITE_SECONDS),
                state_load: metrics::histogram!(STATE_LOAD_SECONDS),
            }
        })
    }

    /// Counts a durable state write by its outcome, an index of
    /// [`STATE_OUTCOMES`] ([`state_outcome`]).
    pub(crate) fn state_written(&self, outcome: usize) {
        if let Some(c) = self.state_writes.get(outcome) {
            c.increment(1);
        }
    }

    pub(crate) fn deactivated(&self, reason: EndReason) {
        self.deactivations[reason as usize].increment(1);
    }

    pub(crate) fn call_done<T>(&self, result: &Result<T, Error>) {
        let c = match result {
            Ok(_) => &self.calls_ok,
            Err(Error::Timeout { .. }) => &self.calls_timeout,
            Err(Error::MailboxFull { .. }) => &self.calls_full,
            Err(Error::HandlerPanicked { .. }) => &self.calls_panicked,
            Err(Error::ActivationFailed { .. }) => &self.calls_activation_failed,
            Err(Error::ShuttingDown) => &self.calls_shutting_down,
            Err(_) => &self.calls_error,
        };
        c.increment(1);
    }
}
