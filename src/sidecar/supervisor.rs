//! Supervision of one sidecar process: start, readiness, its output into
//! `tracing`, restart with exponential backoff when it dies, stop.
//!
//! Contracts:
//! - Starting returns once the first run is ready (its
//!   readiness probe answered) or fails: a program that is missing, exits
//!   before it is ready, or is not ready within the limit is an error
//!   carrying the last lines it printed, and nothing is left running.
//! - Later, whenever the process exits (killed, crashed), it is started
//!   again after a backoff that doubles from [`Restart::min`] up to
//!   [`Restart::max`], and falls back to the minimum once a run has lasted
//!   [`Restart::max`]. Each start and exit is logged; `Supervisor::status`
//!   publishes every change, so a caller can await a restart.
//! - Environment: as the supervised program asks (HAProxy gets `PATH`
//!   only; a command template inherits the node's, less `MESH_COOKIE`).
//! - Output: every line on stdout and stderr becomes a `tracing` event
//!   (target `mesh::sidecar`, field `sidecar`), its level chosen by the
//!   supervised program's `Classify`.
//! - `Supervisor::stop`: SIGTERM, then SIGKILL after the grace period;
//!   returns once the process is gone. Dropping the supervisor without
//!   `stop` kills the process (SIGKILL) at once.
//! - **Dies with its node**: the process is started through util-linux
//!   `setpriv --pdeathsig KILL -- <program> ...` (setpriv execs the
//!   program, so the pid is the program's), so the kernel sends it SIGKILL
//!   when the node's process dies, `kill -9` included. The signal follows
//!   the death of the *thread* that forked it, so every supervised process
//!   is forked by one thread that lives as long as the process (started at
//!   the first spawn, idle otherwise), not by a runtime thread that may
//!   come and go. Without setpriv (`/usr/bin/setpriv`, `/bin/setpriv`;
//!   Debian's util-linux) the program starts directly, with a warning: a
//!   `kill -9` of the node then leaves it running. (No `prctl` here: the
//!   crate forbids `unsafe`.)

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::SidecarError;
use crate::util::BoxFuture;

/// Restart backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// The first delay after an exit.
    pub min: Duration,
    /// The longest delay; also how long a run must last for the delay to
    /// fall back to `min`.
    pub max: Duration,
}

impl Default for Restart {
    /// 100 ms, doubling up to 10 s.
    fn default() -> Self {
        Restart {
            min: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

/// What a supervised process is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// The running process's pid (`None` between runs and once stopped).
    pub pid: Option<u32>,
    /// How many runs became ready so far (1 after the first start).
    pub starts: u64,
    /// How the last run ended, if one did.
    pub last_exit: Option<String>,
    /// Whether `Supervisor::stop` ended supervision.
    pub stopped: bool,
}

/// The level of one output line.
#[cfg_attr(feature = "internals", mesh_macros::expose)]
pub(crate) type Classify = fn(line: &str, stderr: bool) -> tracing::Level;

/// A readiness probe, given the pid of the process just started: `Ok`
/// when it is ready. Called again (every 50 ms) until it answers `Ok`.
#[cfg_attr(feature = "internals", mesh_macros::expose)]
pub(crate) type Ready = Arc<dyn Fn(u32) -> BoxFuture<'static, std::io::Result<()>> + Send + Sync>;

/// The environment a supervised process starts with.
#[derive(Debug, Clone)]
pub(crate) enum Env {
    /// Only these variables (`env_clear` first): nothing of the node's
    /// own environment (cookie, ACL token) reaches the process.
    Only(Vec<(OsString, OsString)>),
    /// The node's environment without these variables.
    InheritExcept(Vec<&'static str>),
}

/// What to run and how to watch it.
#[derive(Clone)]
pub(crate) struct Spec {
    /// For logs and errors (`haproxy`, `command`).
    pub(crate) name: &'static str,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    /// Its environment.
    pub(crate) env: Env,
    /// Added to the error when the program is missing.
    pub(crate) install_hint: String,
    pub(crate) classify: Classify,
    pub(crate) ready: Ready,
    pub(crate) ready_timeout: Duration,
    pub(crate) restart: Restart,
    /// Between SIGTERM and SIGKILL at stop.
    pub(crate) grace: Duration,
    /// Killed when the node's process dies (through setpriv).
    pub(crate) die_with_node: bool,
}

/// Where util-linux installs setpriv.
const SETPRIV: [&str; 2] = ["/usr/bin/setpriv", "/bin/setpriv"];

fn setpriv() -> Option<&'static str> {
    SETPRIV
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// The command that starts `spec`'s program: through setpriv when it
/// must die with the node and setpriv is there.
fn command(spec: &Spec) -> Command {
    if spec.die_with_node {
        match setpriv() {
            Some(sp) => {
                let mut c = Command::new(sp);
                c.args(["--pdeathsig", "KILL", "--"]).arg(&spec.program);
                return c;
            }
            None => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        target: "mesh::sidecar",
                        sidecar = spec.name,
                        "setpriv not found (apt-get install util-linux): the sidecar starts without a parent-death signal, so a node killed with SIGKILL leaves it running (the next start in its directory stops it)"
                    );
                });
            }
        }
    }
    Command::new(&spec.program)
}

type Job = Box<dyn FnOnce() + Send>;

/// The thread every supervised process is forked from: it lives as long
/// as the process, so a parent-death signal fires only when the node's
/// process dies.
fn spawner() -> Option<&'static std::sync::mpsc::Sender<Job>> {
    static SPAWNER: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("mesh-sidecar-spawn".into())
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Spawns `command` from the [`spawner`] thread (in this runtime), or
/// here if that thread cannot be had.
async fn spawn_lasting(mut command: Command) -> std::io::Result<Child> {
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _in = handle.enter();
        let _ = tx.send(command.spawn());
    });
    match spawner() {
        Some(s) => {
            if let Err(std::sync::mpsc::SendError(job)) = s.send(job) {
                job();
            }
        }
        None => job(),
    }
    rx.await.unwrap_or_else(|_| {
        Err(std::io::Error::other(
            "the spawning thread dropped the spawn",
        ))
    })
}

/// A supervised process. See the module docs.
#[cfg_attr(feature = "internals", mesh_macros::expose)]
pub(crate) struct Supervisor {
    name: &'static str,
    status: watch::Receiver<Status>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("name", &self.name)
            .field("status", &*self.status.borrow())
            .finish()
    }
}

/// The last lines a process printed, for errors.
type Tail = Arc<Mutex<VecDeque<String>>>;
const TAIL: usize = 20;

impl Supervisor {
    /// Starts `spec`'s program and waits for its first readiness.
    pub(crate) async fn start(spec: Spec) -> Result<Supervisor, SidecarError> {
        let (status_tx, status) = watch::channel(Status::default());
        let (stop, stop_rx) = watch::channel(false);
        let (first_tx, first_rx) = oneshot::channel();
        let name = spec.name;
        let task = tokio::spawn(run(spec, status_tx, stop_rx, first_tx));
        match first_rx.await {
            Ok(Ok(())) => Ok(Supervisor {
                name,
                status,
                stop,
                task: Mutex::new(Some(task)),
            }),
            Ok(Err(e)) => {
                let _ = task.await;
                Err(e)
            }
            Err(_) => Err(SidecarError::Process {
                sidecar: name,
                reason: "the supervision task ended before the first start".into(),
            }),
        }
    }

    /// The current status; `changed()` on it awaits the next change.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.status.borrow().pid
    }

    /// Stops supervising: SIGTERM, SIGKILL after the grace period;
    /// returns once the process is gone. Idempotent.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // The child is `kill_on_drop`: aborting the task kills it.
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

async fn run(
    spec: Spec,
    status: watch::Sender<Status>,
    mut stop: watch::Receiver<bool>,
    first: oneshot::Sender<Result<(), SidecarError>>,
) {
    let mut first = Some(first);
    let mut delay = spec.restart.min;
    loop {
        let tail: Tail = Arc::default();
        let started = tokio::time::Instant::now();
        let outcome = run_once(&spec, &status, &mut stop, &tail, &mut first).await;
        status.send_modify(|s| s.pid = None);
        match outcome {
            Once::Stopped => break,
            Once::Failed(e) => {
                if let Some(first) = first.take() {
                    let _ = first.send(Err(e));
                    break;
                }
                tracing::warn!(target: "mesh::sidecar", sidecar = spec.name, "{e}");
                status.send_modify(|s| s.last_exit = Some(e.to_string()));
            }
            Once::Exited(how) => {
                status.send_modify(|s| s.last_exit = Some(how.clone()));
                if started.elapsed() >= spec.restart.max {
                    delay = spec.restart.min;
                }
                tracing::warn!(
                    target: "mesh::sidecar",
                    sidecar = spec.name,
                    "exited ({how}); restarting in {delay:?}"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => break,
        }
        delay = (delay * 2).min(spec.restart.max);
    }
    status.send_modify(|s| {
        s.pid = None;
        s.stopped = true;
    });
}

enum Once {
    Stopped,
    Failed(SidecarError),
    Exited(String),
}

async fn run_once(
    spec: &Spec,
    status: &watch::Sender<Status>,
    stop: &mut watch::Receiver<bool>,
    tail: &Tail,
    first: &mut Option<oneshot::Sender<Result<(), SidecarError>>>,
) -> Once {
    // Through setpriv, a missing program would be setpriv's failure.
    if spec.die_with_node && spec.program.components().count() > 1 && !spec.program.exists() {
        return Once::Failed(SidecarError::Missing {
            program: spec.program.display().to_string(),
            hint: spec.install_hint.clone(),
        });
    }
    let mut command = command(spec);
    match &spec.env {
        Env::Only(vars) => {
            command.env_clear().envs(vars.iter().map(|(k, v)| (k, v)));
        }
        Env::InheritExcept(names) => {
            for n in names {
                command.env_remove(n);
            }
        }
    }
    command
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match spawn_lasting(command).await {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Once::Failed(SidecarError::Missing {
                program: spec.program.display().to_string(),
                hint: spec.install_hint.clone(),
            })
        }
        Err(e) => {
            return Once::Failed(SidecarError::Process {
                sidecar: spec.name,
                reason: format!("cannot start {}: {e}", spec.program.display()),
            })
        }
    };
    let Some(pid) = child.id() else {
        return Once::Exited("exited at once".into());
    };
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(out, false, spec.name, spec.classify, tail.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(err, true, spec.name, spec.classify, tail.clone()));
    }
    tracing::info!(target: "mesh::sidecar", sidecar = spec.name, pid, "started");

    // Readiness, unless it exits or we are stopped first.
    let ready = async {
        loop {
            match (spec.ready)(pid).await {
                Ok(()) => return Ok::<(), ()>(()),
                Err(e) => {
                    tracing::trace!(target: "mesh::sidecar", sidecar = spec.name, "not ready yet: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    let not_ready = |reason: String| SidecarError::Process {
        sidecar: spec.name,
        reason: format!("{reason}; its last lines: {}", last_lines(tail)),
    };
    tokio::select! {
        r = tokio::time::timeout(spec.ready_timeout, ready) => {
            if r.is_err() {
                terminate(&mut child, spec).await;
                return Once::Failed(not_ready(format!("not ready within {:?}", spec.ready_timeout)));
            }
        }
        exit = child.wait() => {
            let how = exit.map_or_else(|e| e.to_string(), |s| s.to_string());
            // Let the output tasks drain what it printed.
            tokio::task::yield_now().await;
            return Once::Failed(not_ready(format!("{} exited before it was ready ({how})", spec.program.display())));
        }
        _ = stopped(stop) => {
            terminate(&mut child, spec).await;
            return Once::Stopped;
        }
    }
    status.send_modify(|s| {
        s.pid = Some(pid);
        s.starts += 1;
    });
    tracing::info!(target: "mesh::sidecar", sidecar = spec.name, pid, "ready");
    if let Some(first) = first.take() {
        let _ = first.send(Ok(()));
    }
    tokio::select! {
        exit = child.wait() => Once::Exited(exit.map_or_else(|e| e.to_string(), |s| s.to_string())),
        _ = stopped(stop) => {
            terminate(&mut child, spec).await;
            Once::Stopped
        }
    }
}

/// Resolves once stop is asked (or the supervisor is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn last_lines(tail: &Tail) -> String {
    let tail = tail.lock().unwrap_or_else(|p| p.into_inner());
    if tail.is_empty() {
        return "(none)".into();
    }
    tail.iter().cloned().collect::<Vec<_>>().join(" | ")
}

/// SIGTERM, then SIGKILL after the grace period.
async fn terminate(child: &mut Child, spec: &Spec) {
    if let Some(pid) = child.id() {
        if let Err(e) = signal(pid, "TERM").await {
            tracing::warn!(target: "mesh::sidecar", sidecar = spec.name, pid, "SIGTERM failed: {e}");
        }
        if tokio::time::timeout(spec.grace, child.wait()).await.is_ok() {
            tracing::info!(target: "mesh::sidecar", sidecar = spec.name, pid, "stopped");
            return;
        }
        tracing::warn!(target: "mesh::sidecar", sidecar = spec.name, pid, "still running {:?} after SIGTERM: killing it", spec.grace);
    }
    let _ = child.kill().await;
}

/// Sends `signal` (`TERM`, `USR2`, ...) to `pid` with the shell's kill
/// (the crate forbids `unsafe`, so no `libc::kill`).
pub(crate) async fn signal(pid: u32, signal: &str) -> std::io::Result<()> {
    let status = Command::new("/bin/sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\"",
            "sh",
            signal,
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "kill -s {signal} {pid}: {status}"
        )))
    }
}

async fn forward(
    out: impl AsyncRead + Unpin,
    stderr: bool,
    name: &'static str,
    classify: Classify,
    tail: Tail,
) {
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        {
            let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
            if t.len() == TAIL {
                t.pop_front();
            }
            t.push_back(line.to_owned());
        }
        match classify(line, stderr) {
            tracing::Level::ERROR => {
                tracing::error!(target: "mesh::sidecar", sidecar = name, "{line}")
            }
            tracing::Level::WARN => {
                tracing::warn!(target: "mesh::sidecar", sidecar = name, "{line}")
            }
            tracing::Level::INFO => {
                tracing::info!(target: "mesh::sidecar", sidecar = name, "{line}")
            }
            tracing::Level::DEBUG => {
                tracing::debug!(target: "mesh::sidecar", sidecar = name, "{line}")
            }
            _ => tracing::trace!(target: "mesh::sidecar", sidecar = name, "{line}"),
        }
    }
}
