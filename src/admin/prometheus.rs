//! Prometheus exposition of the [`crate::telemetry`] metrics, through
//! `metrics-exporter-prometheus` (no HTTP listener of its own, no push
//! gateway, no TLS: the admin endpoint serves `/metrics`).
//!
//! [`install`] sets the process-wide `metrics` recorder; do it before the
//! first node starts (the node's metric handles are resolved then).
//! [`NodeBuilder::admin`](crate::NodeBuilder::admin) does it for you unless
//! another recorder came first, in which case `/metrics` answers 503.
//!
//! **Upkeep.** The exporter queues every histogram sample until upkeep
//! folds it into the buckets, and `install_recorder` leaves upkeep to the
//! caller: a node nobody scrapes would grow by 8 bytes per call, without
//! bound (metrics-rs/metrics#467). [`install`] therefore starts one thread,
//! `mesh-metrics-upkeep`, that runs upkeep every [`UPKEEP_EVERY`] for the
//! life of the process, and every scrape runs it too. Folding a sample
//! costs the same whenever it happens; the thread only bounds how many
//! wait (one second of calls).
//!
//! `mesh_call_duration_seconds` is a histogram with [`CALL_BUCKETS`]:
//! 100 µs to 5 s (the default call deadline), so p50 to p99 of local and
//! remote calls and every timeout land in a bucket. Other histograms
//! (`mesh_mailbox_depth`) use [`DEPTH_BUCKETS`].

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Bucket bounds of `mesh_call_duration_seconds`, in seconds.
pub const CALL_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Bucket bounds of `mesh_mailbox_depth` (messages per batch).
pub const DEPTH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0];

/// How often the upkeep thread folds queued histogram samples.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder
/// (once; later calls return the first outcome). `false` when another
/// recorder was installed first.
pub fn install() -> bool {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(crate::telemetry::CALL_DURATION_SECONDS.into()),
                    CALL_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(crate::telemetry::MAILBOX_DEPTH.into()),
                        DEPTH_BUCKETS,
                    )
                });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => {
                    let upkeep = handle.clone();
                    let started = std::thread::Builder::new()
                        .name("mesh-metrics-upkeep".into())
                        .spawn(move || loop {
                            std::thread::sleep(UPKEEP_EVERY);
                            upkeep.run_upkeep();
                        });
                    if let Err(e) = started {
                        // Scrapes still run upkeep; only an unscraped node grows.
                        tracing::warn!("no metrics upkeep thread ({e}): scrape /metrics to bound histogram memory");
                    }
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!("no Prometheus recorder: {e}");
                    None
                }
            }
        })
        .is_some()
}

/// The metrics in the Prometheus text format, if [`install`] succeeded.
pub fn render() -> Option<String> {
    let handle = HANDLE.get()?.as_ref()?;
    // Upkeep (draining histogram buckets of old samples) at each scrape.
    handle.run_upkeep();
    Some(handle.render())
}
