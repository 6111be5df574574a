//! The in-process suites, one test binary (tower's `tests/<area>/main.rs`
//! pattern): each suite links mesh once instead of once per file. Suites
//! that install process-wide state (a metrics recorder, a tracing
//! subscriber, the default node), re-run their own binary, need features,
//! or spawn node processes keep a binary of their own (`tests/*.rs`).

mod activation;
mod chains;
mod cluster;
mod dns;
mod frames;
mod handles;
mod placement;
mod reminders;
mod ring;
mod state;
mod timers;
mod transport;
