//! Real node processes for the chaos and process suites: the cluster
//! examples spawned on loopback, signalled like an operator would.
//!
//! A [`Proc`] is killed when dropped (`kill_on_drop`), so a failing test
//! leaves no process behind.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The path of example `name`, next to the running test binary
/// (`cargo test` builds the examples).
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --example {name}` (cargo test does)",
        bin.display()
    );
    bin
}

/// A spawned node process.
#[derive(Debug)]
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its node id.
    pub name: String,
    /// Where it listens.
    pub addr: String,
}

impl Proc {
    /// Spawns `cmd` (with `MESH_COOKIE` set to `cookie`) and waits (at
    /// most 30 s) for its `<name> listening on <addr>` line.
    pub async fn spawn(mut cmd: Command, name: &str, cookie: &str) -> Proc {
        // MESH_PROC_LOGS=<dir>: each process's stderr (its logs, filtered
        // by RUST_LOG) goes to <dir>/<test>.<name>.log, for debugging a
        // run (libtest names the thread running the test after it).
        let stderr = match std::env::var_os("MESH_PROC_LOGS") {
            Some(dir) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(std::path::Path::new(&dir).join(format!(
                    "{}.{name}.log",
                    std::thread::current()
                        .name()
                        .unwrap_or("test")
                        .replace("::", ".")
                )))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
            None => Stdio::null(),
        };
        cmd.env("MESH_COOKIE", cookie)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn a node process");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some((_, rest)) = line.split_once(" listening on ") {
                    let addr = rest.split([',', ' ']).next().unwrap_or_default();
                    return addr.trim().to_owned();
                }
            }
            panic!("{name} exited before listening");
        })
        .await
        .expect("node started within 30 s");
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Proc {
            child,
            name: name.to_owned(),
            addr,
        }
    }

    /// Sends `signal` (`INT`, `STOP`, `CONT`, `KILL`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the process is running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Waits (at most `limit`) for the process to exit; returns whether it
    /// exited successfully.
    pub async fn exited(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {limit:?}", self.name))
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

/// Whether process `pid` exists and is not a zombie (Linux `/proc`).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_owned));
    !matches!(state.as_deref(), None | Some("Z") | Some("X"))
}

/// The live processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let parent = |p: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| parent(*p) == Some(pid) && alive(*p))
        .collect()
}

/// Polls `check` every 20 ms until it gives a value; panics after `limit`
/// with what `failure` says. Polling, not an event: the processes these
/// helpers watch are not our children (HAProxy's master and workers under
/// a killed node, a sidecar between two `exec`s), so there is no exit
/// status to await, and a pidfd would need `unsafe` or a new dependency
/// for a test helper.
async fn poll<T>(
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
    failure: impl FnOnce() -> String,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{}", failure());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until none of `pids` is alive; panics after `limit` naming the
/// survivors.
pub async fn await_gone(pids: &[u32], limit: Duration) {
    let left = || -> Vec<u32> { pids.iter().copied().filter(|p| alive(*p)).collect() };
    poll(
        limit,
        || left().is_empty().then_some(()),
        || format!("processes {:?} still alive after {limit:?}", left()),
    )
    .await
}

/// The pid a pidfile names (its first number), once it names one whose
/// process has at least one child (a HAProxy master with its worker);
/// waits at most `limit`. Returns the master and its children.
pub async fn master_and_workers(pidfile: &std::path::Path, limit: Duration) -> (u32, Vec<u32>) {
    poll(
        limit,
        || {
            let pid = std::fs::read_to_string(pidfile)
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u32>()
                .ok()?;
            let workers = children_of(pid);
            (alive(pid) && !workers.is_empty()).then_some((pid, workers))
        },
        || {
            format!(
                "{} names no running master with a worker within {limit:?}",
                pidfile.display()
            )
        },
    )
    .await
}

/// Waits until process `pid` runs a program whose command line starts with
/// `program` (it has gone through its `exec`s: reading its environment
/// mid-`exec` gives nothing); panics after `limit`.
pub async fn await_exec(pid: u32, program: &str, limit: Duration) {
    poll(
        limit,
        || {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(program.as_bytes()))
                .then_some(())
        },
        || format!("process {pid} does not run {program} after {limit:?}"),
    )
    .await
}
