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
        // by RUST_LOG) goes to <dir>/<name>.log, for debugging a run.
        let stderr = match std::env::var_os("MESH_PROC_LOGS") {
            Some(dir) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(std::path::Path::new(&dir).join(format!("{name}.log")))
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
