//! mesh-load: a load generator and report for mesh actor workloads.
//!
//! The binary (`src/main.rs`) is a thin shell over this library, so tests
//! (and other tools) can drive the same load models against their own
//! actors. The pieces, each in one module:
//!
//! - [`actors`]: the benchmark actors a `serve` node hosts (capability `bench`).
//! - [`scenario`]: which ids and messages a run sends (activation storm, hot
//!   actor, uniform, Zipf, fan-out, ping-pong, payload, the Elixir presets).
//! - [`model`]: how calls are issued: open-loop (fixed or Poisson rate,
//!   latency from the intended start), closed-loop (N workers), and the
//!   adaptive search for the highest rate meeting an SLO.
//! - [`record`]: HDR histograms per kind, path and outcome; the per-second
//!   intervals; errors by kind; the atomic counters progress reads.
//! - [`threshold`]: `p99<2ms`-style expressions for SLOs and CI gates.
//! - [`report`]: the result document and its renderings (terminal summary,
//!   JSON, SMP, fortio, HTML).
//! - [`mod@env`]: the machine and build every report records.
//! - [`compare`]: deltas between two result files.
//! - [`progress`]: the progress line, off the request path.
//! - [`cli`]: the command line and what each command does.

pub mod actors;
pub mod cli;
pub mod compare;
pub mod env;
pub mod model;
pub mod progress;
pub mod record;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod threshold;
pub mod transports;

/// Exit code of a run whose thresholds (or SLO search) failed.
pub const EXIT_THRESHOLDS: i32 = 3;
/// Exit code of `compare` when B is worse than A beyond `--fail-if-worse`.
pub const EXIT_REGRESSION: i32 = 4;

/// The guide's load-testing chapter as a doctest: `cargo test --doc -p
/// mesh-load` compiles its snippets (they use this crate, which mesh's own
/// doctests cannot name).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide/09-load-testing.md")]
mod guide {}
