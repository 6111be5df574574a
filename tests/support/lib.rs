//! The test kit of mesh's own suites.
//!
//! One crate that the tests, the benches and the `consul_test_agent`
//! example depend on (a dev-dependency of `mesh`), instead of each copying
//! or `#[path]`-including its own:
//!
//! - [`consul_agent`] and [`consul_catalog`]: the Consul test agent, real
//!   HTTP servers over one simulated catalog, pinned to the documented
//!   behaviour by this crate's own suites (`tests/agent/catalog.rs`);
//!   [`consul_kv`]: its sessions, KV and `/v1/txn`, pinned by
//!   `tests/agent/kv.rs`;
//! - [`fixture`]: clusters in one process (memory or TCP, n nodes,
//!   membership waits, removal), the suites' base node builder;
//! - [`actors`]: the test actors that more than one suite uses;
//! - [`procs`]: real node processes (the cluster examples) and signals;
//! - [`chaos`]: steady load from a driver node, outcomes, histories;
//! - [`soon`] and [`within`]: guards for steps that must finish long
//!   before any deadline involved, so that a hang fails the test with a
//!   message instead of stalling the run;
//! - [`state`]: the conformance suite of state stores; [`pg`]: a
//!   throwaway PostgreSQL server per test;
//! - [`raw`]: a raw peer that handshakes by hand, then sends and reads
//!   frames as they are (a misbehaving member);
//! - [`COOKIE`] and [`OTHER_COOKIE`]: strong cluster cookies;
//! - [`scratch`], [`free_port`] and [`require_haproxy`]: what the suites
//!   that run real HAProxy sidecars share;
//! - [`http`]: a reqwest client for the suites' own HTTP servers.
//!
//! What only one suite uses stays in that suite.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub mod actors;
pub mod bank;
pub mod chaos;
pub mod consul_agent;
pub mod consul_catalog;
pub mod consul_kv;
pub mod consul_servers;
pub mod fixture;
pub mod pg;
pub mod pki;
pub mod procs;
pub mod raw;
pub mod state;

/// The cluster cookie of the suites' nodes: strong, as a node requires
/// (generated with `openssl rand -base64 32`; a node refuses a weak one
/// unless told `allow_weak_cookie`).
pub const COOKIE: &str = "9uycQGcy8Aj7DsT2mSoVbluh82iXeksxsSFb1MpyjR0=";

/// Another strong cookie, for the tests of a node holding the wrong one.
pub const OTHER_COOKIE: &str = "khB0lE6xjj6JQW8C2u+GUdF1NLNjZM0Ev9z8B25SOVE=";

/// How long [`soon`] waits.
pub const SOON: Duration = Duration::from_secs(20);

/// Guards a step that must finish long before any deadline involved:
/// panics if `f` has not finished within [`SOON`] (20 s).
pub async fn soon<T>(f: impl Future<Output = T>) -> T {
    within(SOON, f).await
}

/// Like [`soon`], with the limit given: panics if `f` has not finished
/// within `limit`.
pub async fn within<T>(limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}

/// A reqwest client (for the suites' plain-HTTP servers: the admin
/// endpoint, the Consul test agent). mesh builds reqwest without a crypto
/// provider of its own, so `reqwest::Client::new()` would panic unless the
/// process installed one; this hands reqwest a rustls configuration on
/// mesh's provider instead, with no roots (no https).
pub fn http() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(mesh::transport::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("the provider's protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .expect("an HTTP client")
}

/// A fresh, empty directory `<tmp>/mesh-<what>-<pid>-<n>`, new at each
/// call (`n` counts the calls of this process).
pub fn scratch(what: &str) -> PathBuf {
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mesh-{what}-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("scratch directory {}: {e}", dir.display()));
    dir
}

/// A loopback port for HAProxy (it cannot bind port 0 and say which, so
/// its tests pick one before starting it), reserved for the life of the
/// process: a socket with `SO_REUSEADDR` stays bound to it without
/// listening. HAProxy (which sets `SO_REUSEADDR` too) binds and listens
/// beside it, while the kernel gives the port to no other socket: a port
/// taken from `bind(0)` and closed could be handed to any outgoing
/// connection before HAProxy bound it ("Address already in use").
pub fn free_port() -> u16 {
    static HELD: std::sync::Mutex<Vec<tokio::net::TcpSocket>> = std::sync::Mutex::new(Vec::new());
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind 127.0.0.1:0");
    let port = socket.local_addr().expect("local address").port();
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(socket);
    port
}

/// Panics, saying what to install, when the command `tool` (from Debian's
/// `package`) is missing: the suites that need it fail, never skip
/// (`scripts/test.sh` installs them).
pub fn require(tool: &str, package: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is missing: install Debian's {package} (apt-get install {package})"
    );
}

/// Debian's Chromium, which the suites that render a page run headless.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium command with the suites' flags and the profile
/// directory `profile` (its own per run); the caller adds what to do
/// (`--dump-dom URL`, `--screenshot=...`). Panics, saying what to install,
/// when Chromium is missing: those suites fail, never skip.
pub fn chromium(profile: &std::path::Path) -> std::process::Command {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install it (apt-get install -y chromium; scripts/test.sh installs it)"
    );
    let mut cmd = std::process::Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// Panics, saying how to install it, when HAProxy is missing: the sidecar
/// suites fail, never skip.
pub fn require_haproxy() {
    assert!(
        std::path::Path::new(mesh::sidecar::DEFAULT_HAPROXY).exists(),
        "{} is missing: these tests need HAProxy (apt-get install -y haproxy; scripts/test.sh installs it)",
        mesh::sidecar::DEFAULT_HAPROXY
    );
}
