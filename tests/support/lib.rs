//! The test kit of mesh's own suites.
//!
//! One crate that the tests, the benches and the `consul_test_agent`
//! example depend on (a dev-dependency of `mesh`), instead of each
//! `#[path]`-including its own copy: [`consul_agent`] and
//! [`consul_catalog`] are the Consul test agent, real HTTP servers over one
//! simulated catalog, pinned to the documented behaviour by
//! `tests/consul_agent.rs`.

pub mod consul_agent;
pub mod consul_catalog;
