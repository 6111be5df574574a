//! The suites that run nodes against the Consul test agent, one test
//! binary (tower's `tests/<area>/main.rs` pattern): discovery, mesh mode,
//! managed HAProxy sidecars from Consul, strong mode.

mod consul;
mod consul_mesh;
mod observe;
mod sidecar_consul;
mod strong;
