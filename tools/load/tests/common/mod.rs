//! What the binary-driven tests share: the built binary, scratch
//! directories, and running with a time limit.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `mesh-load` binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mesh-load")
}

/// A fresh scratch directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `<tmp>/mesh-load-<name>-<pid>`, empty.
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("mesh-load-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }

    /// A path inside it.
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` to completion within `limit`, or kills it and panics.
pub fn run_limited(mut cmd: Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what} ran over {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `mesh-load ARGS`, within 25 s.
pub fn mesh_load(args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    run_limited(cmd, Duration::from_secs(25))
}

/// [`mesh_load`] from an async test, off the runtime's threads (the
/// servers the test runs in its runtime keep being served meanwhile).
pub async fn mesh_load_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mesh_load(&args)
    })
    .await
    .expect("mesh-load ran")
}

/// Reads and parses a JSON file.
pub fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// stdout and stderr as text, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs headless Chromium ([`mesh_testkit::chromium`]) with `args` and a
/// profile of its own (2 minutes at most). Fails, saying so, when Chromium
/// is missing: never skipped.
pub fn chromium(args: &[&str], profile: &Path) -> Output {
    let mut cmd = mesh_testkit::chromium(profile);
    cmd.args(args);
    run_limited(cmd, Duration::from_secs(120))
}

/// A screenshot of the page at `url` (`width`x`height`), by headless
/// Chromium; checked to be a PNG of more than `min` bytes.
pub fn screenshot(url: &str, (width, height): (u32, u32), dir: &Path, min: usize) -> Vec<u8> {
    let shot = dir.join("screenshot.png");
    let o = chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            &format!("--window-size={width},{height}"),
            url,
        ],
        &dir.join("screenshot-profile"),
    );
    assert!(
        o.status.success(),
        "chromium screenshot failed: {}",
        text(&o)
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > min,
        "{} bytes",
        png.len()
    );
    png
}
