//! `mesh-node` as a container runs it: configured by `MESH_*` variables
//! only, as PID 1 of its own PID namespace (`unshare --pid --fork`, as in
//! a `FROM scratch` image, where the kernel drops any signal PID 1 has no
//! handler for), answering `/readyz`, forming a cluster through seeds, and
//! leaving cleanly on SIGTERM and on SIGINT.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test: `MESH_NODE_BIN` (the one extracted from the
/// container image, as `scripts/test.sh` runs this suite a second time),
/// else the one cargo built.
fn binary() -> String {
    std::env::var("MESH_NODE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mesh-node").to_owned())
}

const COOKIE: &str = "9uycQGcy8Aj7DsT2mSoVbluh82iXeksxsSFb1MpyjR0=";
const STEP: Duration = Duration::from_secs(30);

struct NodeProc {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    addr: String,
    admin: String,
}

/// `mesh-node` under `unshare --pid --fork`, configured by `env`.
async fn spawn(env: &[(&str, &str)]) -> NodeProc {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child", "--"])
        .arg(binary())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn unshare");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut addr, mut admin) = (String::new(), String::new());
    tokio::time::timeout(STEP, async {
        while addr.is_empty() || admin.is_empty() {
            let line = lines
                .next_line()
                .await
                .expect("read")
                .expect("mesh-node exited before it served");
            if let Some((_, rest)) = line.split_once(" listening on ") {
                addr = rest.split([',', ' ']).next().unwrap_or_default().to_owned();
            }
            if let Some(rest) = line.strip_prefix("admin: http://") {
                admin = rest.trim_end_matches('/').to_owned();
            }
        }
    })
    .await
    .expect("mesh-node printed its addresses");
    NodeProc {
        child,
        lines,
        addr,
        admin,
    }
}

impl NodeProc {
    /// The node's pid as seen here: the child of `unshare`, PID 1 inside.
    fn pid(&self) -> u32 {
        let unshare = self.child.id().expect("running");
        let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .expect("unshare's children");
        let pid: u32 = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("mesh-node's pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let ns_pid = status
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .and_then(|l| l.split_whitespace().last())
            .expect("NSpid");
        assert_eq!(ns_pid, "1", "mesh-node is PID 1 of its namespace");
        pid
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -s {sig}");
    }

    /// Waits for the exit; returns the status and what it printed last.
    async fn exit(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let mut rest = Vec::new();
        tokio::time::timeout(STEP, async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                rest.push(line);
            }
        })
        .await
        .expect("stdout closed");
        let status = tokio::time::timeout(STEP, self.child.wait())
            .await
            .expect("exited")
            .expect("status");
        (status, rest)
    }
}

/// `GET path` on `addr`: status and body.
async fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Waits until `/admin/members` on `admin` lists exactly `want`.
async fn members(admin: &str, want: &[&str]) {
    tokio::time::timeout(STEP, async {
        loop {
            let (_, body) = get(admin, "/admin/members").await;
            if want.iter().all(|n| body.contains(&format!("\"{n}\"")))
                && body.matches("\"node\"").count() == want.len()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("members of {admin} never became {want:?}"));
}

#[tokio::test]
async fn mesh_node_as_pid_1_serves_joins_and_leaves_on_sigterm_and_sigint() {
    let base = [
        ("MESH_COOKIE", COOKIE),
        ("MESH_CLUSTER", "demo"),
        ("MESH_LISTEN", "127.0.0.1:0"),
        ("MESH_ADMIN", "127.0.0.1:0"),
        ("MESH_CAPABILITIES", "game"),
    ];
    let a = spawn(&[base.as_slice(), &[("MESH_NODE_ID", "a")]].concat()).await;
    // b finds a by a name (/etc/hosts' localhost): looked up through
    // hickory, which the static binary of the image needs (no NSS there).
    let port = a.addr.rsplit(':').next().expect("a port");
    let seed = format!("localhost:{port}");
    let b = spawn(
        &[
            base.as_slice(),
            &[("POD_NAME", "b"), ("MESH_SEEDS", seed.as_str())],
        ]
        .concat(),
    )
    .await;
    assert_eq!(get(&a.admin, "/livez").await.0, 200);
    assert_eq!(get(&b.admin, "/readyz").await.0, 200);
    members(&a.admin, &["a", "b"]).await;
    members(&b.admin, &["a", "b"]).await;
    // SIGTERM to PID 1: handled, so a clean shutdown, exit 0.
    let b_admin = b.admin.clone();
    a.signal("TERM");
    let (status, out) = a.exit().await;
    assert!(status.success(), "{status:?}: {out:?}");
    assert!(
        out.iter().any(|l| l.contains("a: left the cluster")),
        "{out:?}"
    );
    members(&b_admin, &["b"]).await;
    b.signal("INT");
    let (status, out) = b.exit().await;
    assert!(status.success(), "{status:?}: {out:?}");
    assert!(
        out.iter().any(|l| l.contains("b: left the cluster")),
        "{out:?}"
    );
}

#[tokio::test]
async fn bad_settings_are_clear_errors() {
    let run = |env: Vec<(&'static str, &'static str)>| async move {
        let out = Command::new(binary())
            .env_clear()
            .envs(env)
            .output()
            .await
            .expect("run");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(vec![("MESH_NODE_ID", "a")]).await;
    assert!(err.contains("no cookie"), "{err}");
    let err = run(vec![("MESH_COOKIE", COOKIE)]).await;
    assert!(err.contains("no node id"), "{err}");
    let err = run(vec![
        ("MESH_COOKIE", COOKIE),
        ("MESH_NODE_ID", "a"),
        ("MESH_SEEDS", "127.0.0.1:1"),
        ("MESH_DNS_SEEDS", "mesh-peers:7000"),
    ])
    .await;
    assert!(err.contains("give one discovery"), "{err}");
    let err = run(vec![
        ("MESH_COOKIE", COOKIE),
        ("MESH_NODE_ID", "a"),
        ("MESH_DNS_SEEDS", "mesh-peers"),
    ])
    .await;
    assert!(err.contains("expected name:port"), "{err}");
}
