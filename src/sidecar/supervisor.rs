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

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};

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
    actor: ActorRef<SupMsg>,
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

/// The answer to the first start.
type First = oneshot::Sender<Result<(), SidecarError>>;

impl Supervisor {
    /// Starts `spec`'s program and waits for its first readiness.
    pub(crate) async fn start(spec: Spec) -> Result<Supervisor, SidecarError> {
        let (status_tx, status) = watch::channel(Status::default());
        let (stop, stop_rx) = watch::channel(false);
        let (first_tx, first_rx) = oneshot::channel();
        let name = spec.name;
        let started = Actor::spawn(
            None,
            ProcessSupervisor,
            SupState {
                delay: spec.restart.min,
                spec: Arc::new(spec),
                status: Arc::new(status_tx),
                stop: stop_rx,
                first: Some(first_tx),
                running: false,
                timer: None,
            },
        )
        .await;
        let actor = match started {
            Ok((actor, _)) => actor,
            Err(e) => {
                return Err(SidecarError::Process {
                    sidecar: name,
                    reason: format!("cannot start its supervisor: {e}"),
                })
            }
        };
        match first_rx.await {
            Ok(Ok(())) => Ok(Supervisor {
                name,
                status,
                stop,
                actor,
            }),
            Ok(Err(e)) => {
                let _ = actor.wait(None).await;
                Err(e)
            }
            Err(_) => {
                actor.kill();
                Err(SidecarError::Process {
                    sidecar: name,
                    reason: "the supervision ended before the first start".into(),
                })
            }
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
        let _ = self.actor.cast(SupMsg::Stop);
        let _ = self.actor.wait(None).await;
    }
}

impl Drop for Supervisor {
    /// Kills the actors at once; the child is `kill_on_drop`, so the
    /// process gets SIGKILL.
    fn drop(&mut self) {
        self.actor.kill();
    }
}

/// What the process supervisor is told.
enum SupMsg {
    /// Start a run (sent to itself, after the backoff).
    Run,
    /// `Supervisor::stop`: end now if no run is going (a run ends itself
    /// on the stop flag, gracefully).
    Stop,
}

/// The process supervisor: one child actor per run of the process
/// ([`ProcessRun`]); it restarts the process with a backoff when a run
/// ends, whether the process exited or the run itself failed (a panic in
/// mesh's code: the child is dropped and `kill_on_drop` kills it).
struct ProcessSupervisor;

struct SupState {
    spec: Arc<Spec>,
    status: Arc<watch::Sender<Status>>,
    stop: watch::Receiver<bool>,
    /// Answered by the first run (ready, or why not).
    first: Option<First>,
    delay: Duration,
    /// A run is going.
    running: bool,
    /// The next run, if one is due.
    timer: Option<tokio::task::JoinHandle<Result<(), ractor::MessagingErr<SupMsg>>>>,
}

impl SupState {
    fn finish(&mut self, myself: &ActorRef<SupMsg>) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        self.status.send_modify(|s| {
            s.pid = None;
            s.stopped = true;
        });
        myself.stop(None);
    }
}

impl Actor for ProcessSupervisor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = SupState;

    async fn pre_start(
        &self,
        myself: ActorRef<SupMsg>,
        st: SupState,
    ) -> Result<SupState, ActorProcessingErr> {
        let _ = myself.cast(SupMsg::Run);
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupMsg>,
        msg: SupMsg,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        if *st.stop.borrow() {
            if !st.running {
                st.finish(&myself);
            }
            return Ok(());
        }
        if let (SupMsg::Run, false) = (msg, st.running) {
            Actor::spawn_linked(
                None,
                ProcessRun,
                RunState {
                    spec: st.spec.clone(),
                    status: st.status.clone(),
                    stop: st.stop.clone(),
                    first: st.first.take(),
                    started: tokio::time::Instant::now(),
                    outcome: None,
                },
                myself.get_cell(),
            )
            .await?;
            st.running = true;
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupMsg>,
        event: SupervisionEvent,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        let (outcome, ran) = match event {
            SupervisionEvent::ActorTerminated(_, Some(mut state), _) => {
                match state.take::<RunState>() {
                    Ok(run) => {
                        if let Some(first) = run.first {
                            st.first = Some(first);
                        }
                        (
                            run.outcome
                                .unwrap_or(Once::Exited("ended without an outcome".into())),
                            run.started.elapsed(),
                        )
                    }
                    Err(_) => (
                        Once::Exited("ended without an outcome".into()),
                        Duration::ZERO,
                    ),
                }
            }
            SupervisionEvent::ActorTerminated(..) => (
                Once::Exited("ended without an outcome".into()),
                Duration::ZERO,
            ),
            SupervisionEvent::ActorFailed(_, err) => {
                tracing::error!(target: "mesh::sidecar", sidecar = st.spec.name, "its supervision failed ({err}): the process was killed");
                (
                    Once::Exited(format!("supervision failed: {err}")),
                    Duration::ZERO,
                )
            }
            _ => return Ok(()),
        };
        st.running = false;
        st.status.send_modify(|s| s.pid = None);
        match outcome {
            Once::Stopped => {
                st.finish(&myself);
                return Ok(());
            }
            Once::Failed(e) => {
                if let Some(first) = st.first.take() {
                    let _ = first.send(Err(e));
                    st.finish(&myself);
                    return Ok(());
                }
                tracing::warn!(target: "mesh::sidecar", sidecar = st.spec.name, "{e}");
                st.status.send_modify(|s| s.last_exit = Some(e.to_string()));
            }
            Once::Exited(how) => {
                if let Some(first) = st.first.take() {
                    // Failed before its first readiness (a panic).
                    let _ = first.send(Err(SidecarError::Process {
                        sidecar: st.spec.name,
                        reason: how,
                    }));
                    st.finish(&myself);
                    return Ok(());
                }
                st.status.send_modify(|s| s.last_exit = Some(how.clone()));
                if ran >= st.spec.restart.max {
                    st.delay = st.spec.restart.min;
                }
                tracing::warn!(
                    target: "mesh::sidecar",
                    sidecar = st.spec.name,
                    "exited ({how}); restarting in {:?}",
                    st.delay
                );
            }
        }
        if *st.stop.borrow() {
            st.finish(&myself);
            return Ok(());
        }
        st.timer = Some(myself.send_after(st.delay, || SupMsg::Run));
        st.delay = (st.delay * 2).min(st.spec.restart.max);
        Ok(())
    }
}

/// One run of the process, as a child actor of [`ProcessSupervisor`]:
/// start, readiness, wait for the exit or the stop flag; its outcome goes
/// back to the supervisor with its state.
struct ProcessRun;

struct RunState {
    spec: Arc<Spec>,
    status: Arc<watch::Sender<Status>>,
    stop: watch::Receiver<bool>,
    first: Option<First>,
    started: tokio::time::Instant,
    outcome: Option<Once>,
}

impl Actor for ProcessRun {
    type Msg = ();
    type State = RunState;
    type Arguments = RunState;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        st: RunState,
    ) -> Result<RunState, ActorProcessingErr> {
        let _ = myself.cast(());
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<()>,
        _: (),
        st: &mut RunState,
    ) -> Result<(), ActorProcessingErr> {
        let tail: Tail = Arc::default();
        let outcome = run_once(&st.spec, &st.status, &mut st.stop, &tail, &mut st.first).await;
        st.outcome = Some(outcome);
        myself.stop(None);
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A run is a supervised child actor: when it fails (here its
    /// readiness probe panics, on the second run), its process is killed
    /// with it and the supervisor starts another run after the backoff.
    /// Fails if the failed run's process survives or no third run comes.
    #[tokio::test]
    async fn a_failed_run_kills_its_process_and_another_run_starts() {
        let pids = Arc::new(Mutex::new(Vec::new()));
        let seen = pids.clone();
        let runs = Arc::new(AtomicUsize::new(0));
        let ready: Ready = Arc::new(move |pid| {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            Box::pin(async move {
                let mut pids = seen.lock().unwrap_or_else(|p| p.into_inner());
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
                drop(pids);
                if run == 1 {
                    panic!("the probe fails (a test)");
                }
                Ok(())
            })
        });
        let spec = Spec {
            name: "test",
            program: "/bin/sleep".into(),
            args: vec!["1000".into()],
            env: Env::Only(Vec::new()),
            install_hint: String::new(),
            classify: |_, _| tracing::Level::INFO,
            ready,
            ready_timeout: Duration::from_secs(10),
            restart: Restart {
                min: Duration::from_millis(10),
                max: Duration::from_millis(100),
            },
            grace: Duration::from_secs(1),
            die_with_node: false,
        };
        let sup = Supervisor::start(spec).await.expect("first run ready");
        let first = sup.pid().expect("a pid");
        signal(first, "KILL").await.expect("killed");
        let mut status = sup.status();
        tokio::time::timeout(Duration::from_secs(20), status.wait_for(|s| s.starts == 2))
            .await
            .expect("a third run became ready")
            .expect("status");
        let last = status.borrow().last_exit.clone().unwrap_or_default();
        assert!(last.contains("supervision failed"), "{last}");
        let pids = pids.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(pids.len(), 3, "{pids:?}");
        // The failed run's process is gone (or a zombie about to be reaped).
        let failed = pids[1];
        let gone = || {
            std::fs::read_to_string(format!("/proc/{failed}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true)
        };
        tokio::time::timeout(Duration::from_secs(10), async {
            while !gone() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the failed run's process was killed");
        sup.stop().await;
        assert!(sup.status().borrow().stopped);
        assert_eq!(sup.pid(), None);
    }
}
