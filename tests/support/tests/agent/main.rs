//! The Consul test agent's own suites: they pin the fake to the documented
//! Consul behaviour (`shared/reference/consul-api.md`) and test the agent,
//! not mesh, so they live beside it, in one binary.

mod catalog;
mod kv;
mod servers;
