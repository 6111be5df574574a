//! Managed sidecar processes: HAProxy configured from the registration,
//! the leaf and the roots; and any command template (`consul connect proxy
//! -sidecar-for {{id}}`, `consul connect envoy -sidecar-for {{id}}`).
//!
//! HAProxy contracts:
//! - Started in master-worker mode, from its directory `D`:
//!   `haproxy -W -S D/master.sock,mode,600 -p D/haproxy.pid -f D/haproxy.cfg`;
//!   ready when a worker of that master answers on the stats socket (its
//!   listeners are bound by then).
//! - **Files and process** (they hold the node's private key and drive
//!   the proxy): `D` is created `0700` (an existing one must be a
//!   directory, not a symlink, owned by this process's user; its mode is
//!   set to `0700`); both CLI sockets are `mode 600`; every file is
//!   written `0600` aside (`.name.new`: whatever is there is unlinked,
//!   then the file is created with `O_EXCL`, so a planted symlink is
//!   never followed), then renamed over the name (a symlink there is
//!   replaced, not followed). HAProxy and `haproxy -c` start with an
//!   empty environment plus `PATH`: the node's cookie, ACL token and
//!   the rest of its environment are not theirs (the master CLI's
//!   `show env` would print them). A command-template sidecar inherits
//!   the environment (a `consul connect` proxy reads the `CONSUL_*`
//!   variables) except `MESH_COOKIE`.
//! - **Changes** (upstreams, allowed callers, a leaf or root rotation):
//!   the configuration is rendered, checked by `haproxy -c` in a staging
//!   directory (a bad input leaves the running sidecar untouched and
//!   returns the error), written (each file aside, then renamed), then
//!   the master is told `reload`. The new worker serves new connections
//!   with the new files; the old one keeps its established connections
//!   until they close or `hard-stop-after` passes
//!   ([`super::haproxy::Timeouts::hard_stop_after`]), when they are cut
//!   and the nodes redial. Changes are applied one at a time.
//! - **The process dies** (the master or its worker: the master exits
//!   with its worker): every connection through it closes, so calls in
//!   flight on them fail at once with [`crate::Error::NodeDown`]; the
//!   supervisor starts it again with backoff, from the current files, and
//!   the peer table redials. A change made while it is down is applied by
//!   that restart.
//! - **Stop**: SIGTERM to the master (hard stop of its workers), SIGKILL
//!   after 5 s. A node stops its sidecar after it has drained and closed
//!   its connections.
//! - **Dies with its node**: the master is started through util-linux
//!   `setpriv --pdeathsig KILL` (see [`super::supervisor`]): when the
//!   node's process dies, even by `kill -9`, the kernel kills the master,
//!   and its workers exit with it. Without setpriv it starts directly,
//!   with a warning.
//! - **A stale one** (left by a node killed without setpriv, or started
//!   by hand) is found at start through `D/haproxy.pid`: if that names a
//!   live HAProxy run with `-f D/haproxy.cfg`, it and its workers get
//!   SIGTERM, then SIGKILL after 5 s, with a warning, before the new one
//!   starts (they would otherwise share the public port: HAProxy binds
//!   with `SO_REUSEPORT`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

use super::haproxy::{self, files, Certs, HaproxyConfig, HaproxyUpstream, Timeouts};
use super::supervisor::{Env, Restart, Spec, Status, Supervisor};
use super::SidecarError;
use crate::util::lock;

/// Where Debian installs HAProxy.
pub const DEFAULT_HAPROXY: &str = "/usr/sbin/haproxy";

/// How to run a managed HAProxy sidecar.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HaproxySettings {
    /// The binary (default [`DEFAULT_HAPROXY`]).
    pub binary: PathBuf,
    /// Its directory: configuration, certificates, sockets (created).
    pub dir: PathBuf,
    /// The public (mTLS) bind address, `host:port`.
    pub public: String,
    /// This node's leaf and the roots.
    pub certs: Certs,
    /// The SPIFFE IDs allowed to call in.
    pub allow: Vec<String>,
    /// The peers, as known at start.
    pub upstreams: Vec<HaproxyUpstream>,
    /// Timeouts of the configuration.
    pub timeouts: Timeouts,
    /// Restart backoff.
    pub restart: Restart,
    /// How long a start or a reload may take to be ready (default 10 s).
    pub ready_timeout: Duration,
}

impl HaproxySettings {
    /// Settings with the defaults: HAProxy at [`DEFAULT_HAPROXY`] with its
    /// files in `dir`, listening for peers on `public`, presenting
    /// `certs`, no caller allowed and no upstream yet.
    pub fn new(dir: impl Into<PathBuf>, public: impl Into<String>, certs: Certs) -> Self {
        HaproxySettings {
            binary: DEFAULT_HAPROXY.into(),
            dir: dir.into(),
            public: public.into(),
            certs,
            allow: Vec::new(),
            upstreams: Vec::new(),
            timeouts: Timeouts::default(),
            restart: Restart::default(),
            ready_timeout: Duration::from_secs(10),
        }
    }

    /// The SPIFFE IDs allowed to call in.
    pub fn allow<I: Into<String>>(mut self, ids: impl IntoIterator<Item = I>) -> Self {
        self.allow = ids.into_iter().map(Into::into).collect();
        self
    }

    /// The peers known at start.
    pub fn upstreams(mut self, upstreams: Vec<HaproxyUpstream>) -> Self {
        self.upstreams = upstreams;
        self
    }

    /// Another HAProxy binary.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = path.into();
        self
    }

    /// Other timeouts.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Another restart backoff.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }
}

/// A running, supervised HAProxy sidecar. Cheap to clone.
#[derive(Clone)]
pub struct Haproxy {
    inner: Arc<HaInner>,
}

struct HaInner {
    binary: PathBuf,
    dir: PathBuf,
    ready_timeout: Duration,
    cfg: Mutex<HaproxyConfig>,
    /// One change at a time.
    applying: tokio::sync::Mutex<()>,
    sup: Supervisor,
}

impl std::fmt::Debug for Haproxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Haproxy")
            .field("dir", &self.inner.dir)
            .field("process", &self.inner.sup)
            .finish()
    }
}

fn install_hint() -> String {
    "install it with `apt-get install haproxy` (Debian's 2.6)".into()
}

impl Haproxy {
    /// Renders and writes the configuration for the node listening on
    /// `app` (loopback), starts HAProxy and waits until it is ready.
    ///
    /// Errors: [`SidecarError::Missing`] when the binary is not there
    /// (saying how to install it), [`SidecarError::Config`] for an input
    /// that cannot be rendered or that HAProxy refuses,
    /// [`SidecarError::Process`] when it does not become ready.
    pub async fn start(settings: HaproxySettings, app: &str) -> Result<Haproxy, SidecarError> {
        if !settings.binary.exists() {
            return Err(SidecarError::Missing {
                program: settings.binary.display().to_string(),
                hint: install_hint(),
            });
        }
        let dir = absolute(&settings.dir)?;
        private_dir(&dir)?;
        stop_stale(&dir).await;
        let cfg = HaproxyConfig {
            dir: dir.clone(),
            public: settings.public,
            app: app.to_owned(),
            certs: settings.certs,
            allow: settings.allow,
            upstreams: settings.upstreams,
            timeouts: settings.timeouts,
        };
        check_and_write(&settings.binary, &cfg).await?;
        let stats = dir.join(files::STATS_SOCKET);
        let spec = Spec {
            name: "haproxy",
            program: settings.binary.clone(),
            args: vec![
                "-W".into(),
                "-S".into(),
                {
                    let mut s: std::ffi::OsString = dir.join(files::MASTER_SOCKET).into();
                    s.push(",mode,600");
                    s
                },
                "-p".into(),
                dir.join(files::PID_FILE).into(),
                "-f".into(),
                dir.join(files::CONFIG).into(),
            ],
            env: minimal_env(),
            install_hint: install_hint(),
            classify: classify_haproxy,
            // Ready when a worker of *this* master answers (a worker of a
            // killed predecessor may still hold the socket a moment).
            ready: Arc::new(move |master| {
                let stats = stats.clone();
                Box::pin(async move {
                    let worker = worker_pid(&stats).await?;
                    if parent_of(worker) == Some(master) {
                        Ok(())
                    } else {
                        Err(std::io::Error::other(format!(
                            "worker {worker} is not master {master}'s"
                        )))
                    }
                })
            }),
            ready_timeout: settings.ready_timeout,
            restart: settings.restart,
            grace: Duration::from_secs(5),
            die_with_node: true,
        };
        let sup = Supervisor::start(spec).await?;
        Ok(Haproxy {
            inner: Arc::new(HaInner {
                binary: settings.binary,
                dir,
                ready_timeout: settings.ready_timeout,
                cfg: Mutex::new(cfg),
                applying: tokio::sync::Mutex::new(()),
                sup,
            }),
        })
    }

    /// Replaces the upstreams (one per peer) and reloads.
    pub async fn set_upstreams(&self, upstreams: Vec<HaproxyUpstream>) -> Result<(), SidecarError> {
        self.change(|c| c.upstreams = upstreams).await
    }

    /// Replaces the leaf and roots (a rotation) and reloads: new
    /// connections carry the new certificate.
    pub async fn set_certs(&self, certs: Certs) -> Result<(), SidecarError> {
        self.change(|c| c.certs = certs).await
    }

    /// Replaces the allowed callers and reloads.
    pub async fn set_allow(&self, allow: Vec<String>) -> Result<(), SidecarError> {
        self.change(|c| c.allow = allow).await
    }

    /// The configuration as last applied.
    pub fn config(&self) -> HaproxyConfig {
        lock(&self.inner.cfg).clone()
    }

    async fn change(&self, f: impl FnOnce(&mut HaproxyConfig)) -> Result<(), SidecarError> {
        let _one = self.inner.applying.lock().await;
        let mut next = self.config();
        f(&mut next);
        if next == self.config() {
            return Ok(());
        }
        check_and_write(&self.inner.binary, &next).await?;
        *lock(&self.inner.cfg) = next;
        self.reload().await
    }

    /// Has the master reload the files, and waits for the new worker. A
    /// sidecar that is down (between restarts) picks the files up when
    /// it starts again: that is not an error.
    async fn reload(&self) -> Result<(), SidecarError> {
        let stats = self.inner.dir.join(files::STATS_SOCKET);
        let Ok(old) = worker_pid(&stats).await else {
            tracing::info!(target: "mesh::sidecar", sidecar = "haproxy", "not running: the change applies at its restart");
            return Ok(());
        };
        let master = self.inner.dir.join(files::MASTER_SOCKET);
        cli(&master, "reload")
            .await
            .map_err(|e| SidecarError::Process {
                sidecar: "haproxy",
                reason: format!("reload through {}: {e}", master.display()),
            })?;
        let waited = tokio::time::timeout(self.inner.ready_timeout, async {
            loop {
                match worker_pid(&stats).await {
                    Ok(pid) if pid != old => return pid,
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await;
        match waited {
            Ok(pid) => {
                tracing::info!(target: "mesh::sidecar", sidecar = "haproxy", worker = pid, "reloaded");
                Ok(())
            }
            Err(_) => Err(SidecarError::Process {
                sidecar: "haproxy",
                reason: format!(
                    "no new worker within {:?} of a reload",
                    self.inner.ready_timeout
                ),
            }),
        }
    }

    /// The counters of `show stat`, one row per proxy and server.
    pub async fn stats(&self) -> Result<Vec<StatRow>, SidecarError> {
        let text = cli(&self.inner.dir.join(files::STATS_SOCKET), "show stat")
            .await
            .map_err(|e| SidecarError::Process {
                sidecar: "haproxy",
                reason: format!("show stat: {e}"),
            })?;
        Ok(parse_stat(&text))
    }

    /// Sends `command` to the runtime API (stats socket, level admin) and
    /// returns the answer.
    pub async fn runtime(&self, command: &str) -> Result<String, SidecarError> {
        cli(&self.inner.dir.join(files::STATS_SOCKET), command)
            .await
            .map_err(|e| SidecarError::Process {
                sidecar: "haproxy",
                reason: format!("{command}: {e}"),
            })
    }

    /// The supervised process's status (the master's pid, starts).
    pub fn status(&self) -> watch::Receiver<Status> {
        self.inner.sup.status()
    }

    /// The master's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.inner.sup.pid()
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Stops it (SIGTERM, SIGKILL after 5 s) and waits for it to exit.
    pub async fn stop(&self) {
        self.inner.sup.stop().await;
    }
}

/// One row of `show stat`: a frontend, a backend or a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatRow {
    /// `pxname`: the proxy (`public`, `app`, `upstream_<port>`, `peer_<port>`).
    pub proxy: String,
    /// `svname`: `FRONTEND`, `BACKEND` or the server's name.
    pub server: String,
    /// Every column by its header name (`stot`, `scur`, `dreq`, ...).
    pub fields: Vec<(String, String)>,
}

impl StatRow {
    /// Column `name` as a number (0 when empty or missing).
    pub fn get(&self, name: &str) -> u64 {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    }
}

fn parse_stat(text: &str) -> Vec<StatRow> {
    let mut lines = text.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return Vec::new();
    };
    let names: Vec<&str> = header.split(',').collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let values: Vec<&str> = l.split(',').collect();
            StatRow {
                proxy: values.first().copied().unwrap_or_default().to_owned(),
                server: values.get(1).copied().unwrap_or_default().to_owned(),
                fields: names
                    .iter()
                    .zip(values.iter())
                    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                    .collect(),
            }
        })
        .collect()
}

/// How long a stale HAProxy gets after SIGTERM, then after SIGKILL.
const STALE_GRACE: Duration = Duration::from_secs(5);

/// Stops a HAProxy that an earlier run left serving `dir` (its node died
/// without stopping it, or it was started by hand): the pidfile names a
/// live process whose command line is HAProxy's with `-f <dir>/haproxy.cfg`.
/// It and its workers get SIGTERM, then SIGKILL after [`STALE_GRACE`]; a
/// warning says so. Anything else the pidfile names is left alone.
async fn stop_stale(dir: &Path) {
    let pidfile = dir.join(files::PID_FILE);
    let Ok(text) = read_small(&pidfile) else {
        return;
    };
    let config = dir.join(files::CONFIG);
    for pid in text
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
    {
        if pid == std::process::id() || !alive(pid) || !settled_haproxy_for(pid, &config).await {
            continue;
        }
        let mut procs = children_of(pid);
        procs.push(pid);
        tracing::warn!(
            target: "mesh::sidecar", sidecar = "haproxy", pid, dir = %dir.display(),
            "a HAProxy left by an earlier run still serves this directory (its node died without stopping it): stopping it and its workers {procs:?} before starting a new one"
        );
        for signal_name in ["TERM", "KILL"] {
            for p in &procs {
                if alive(*p) {
                    let _ = super::supervisor::signal(*p, signal_name).await;
                }
            }
            if gone_within(&procs, STALE_GRACE).await {
                break;
            }
            if signal_name == "KILL" {
                tracing::warn!(target: "mesh::sidecar", sidecar = "haproxy", pid, "the stale HAProxy is still there {STALE_GRACE:?} after SIGKILL");
            }
        }
    }
}

/// Reads a file of at most 4 KiB (a pidfile).
fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(4096)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// [`is_haproxy_for`], read again while the process's command line is
/// empty (for at most a second): a HAProxy master re-executes itself once
/// its workers run (its wait mode), and mid-`exec` `/proc` shows no
/// command line, which is no reason to leave it running.
async fn settled_haproxy_for(pid: u32, config: &Path) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let empty = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty());
        if !empty || tokio::time::Instant::now() >= deadline {
            return is_haproxy_for(pid, config);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether process `pid` runs HAProxy with `-f <config>` (its command
/// line in `/proc`).
fn is_haproxy_for(pid: u32, config: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let program = args.first().copied().unwrap_or_default();
    let is_haproxy = program
        .rsplit(|b| *b == b'/')
        .next()
        .is_some_and(|name| name.starts_with(b"haproxy"));
    is_haproxy
        && args
            .windows(2)
            .any(|w| w[0] == b"-f" && w[1] == config.as_os_str().as_bytes())
}

/// Whether process `pid` exists and is not a zombie.
pub(crate) fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X"))
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| parent_of(*p) == Some(pid))
        .collect()
}

/// Waits (polling `/proc` every 20 ms, at most `limit`) until none of
/// `pids` is alive; returns whether they all went.
async fn gone_within(pids: &[u32], limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if !pids.iter().any(|p| alive(*p)) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The parent of process `pid` (Linux `/proc`).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The current worker's pid, as it answers `show info`.
async fn worker_pid(stats: &Path) -> std::io::Result<u32> {
    let info = cli(stats, "show info").await?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid: "))
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no Pid in `show info`"))
}

/// One command on a HAProxy CLI socket (stats or master): written, the
/// write side shut (the master CLI answers only then), the answer read
/// to the end (within 5 s).
async fn cli(socket: &Path, command: &str) -> std::io::Result<String> {
    let exchange = async {
        let mut s = UnixStream::connect(socket).await?;
        s.write_all(command.as_bytes()).await?;
        s.write_all(b"\n").await?;
        s.shutdown().await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::other(format!("no answer to {command:?} within 5 s")))?
}

/// Renders `cfg`, checks it with `haproxy -c` in a staging directory,
/// then writes the files into place.
async fn check_and_write(binary: &Path, cfg: &HaproxyConfig) -> Result<(), SidecarError> {
    private_dir(&cfg.dir)?;
    let stage_dir = cfg.dir.join("staging");
    private_dir(&stage_dir)?;
    let staged = haproxy::render(&HaproxyConfig {
        dir: stage_dir.clone(),
        ..cfg.clone()
    })
    .map_err(|e| SidecarError::Config(e.0))?;
    write_files(&stage_dir, &staged)?;
    check(binary, &stage_dir.join(files::CONFIG)).await?;
    let rendered = haproxy::render(cfg).map_err(|e| SidecarError::Config(e.0))?;
    write_files(&cfg.dir, &rendered)
}

/// `haproxy -c -f <config>`: `Ok` when HAProxy accepts the configuration.
pub async fn check(binary: &Path, config: &Path) -> Result<(), SidecarError> {
    let out = tokio::process::Command::new(binary)
        .env_clear()
        .envs(minimal_vars())
        .arg("-c")
        .arg("-f")
        .arg(config)
        .output()
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SidecarError::Missing {
                    program: binary.display().to_string(),
                    hint: install_hint(),
                }
            } else {
                SidecarError::Process {
                    sidecar: "haproxy",
                    reason: format!("haproxy -c: {e}"),
                }
            }
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    Err(SidecarError::Config(format!(
        "haproxy refuses the configuration: {}",
        text.trim()
    )))
}

fn write_files(dir: &Path, rendered: &haproxy::Rendered) -> Result<(), SidecarError> {
    // Certificates before the configuration that names them.
    for (name, contents) in rendered.files.iter().rev() {
        let path = dir.join(name);
        let aside = dir.join(format!(".{name}.new"));
        write_private(&aside, contents).map_err(|e| io_err(&aside, e))?;
        std::fs::rename(&aside, &path).map_err(|e| io_err(&path, e))?;
    }
    Ok(())
}

/// Writes a new file readable by its owner only (it may hold a key):
/// whatever is at `path` is unlinked (a symlink itself, not its target),
/// then the file is created with `O_EXCL`, which never follows a symlink
/// (one planted in between fails the write).
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// The environment of HAProxy and `haproxy -c`: `PATH` only.
fn minimal_vars() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    vec![(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    )]
}

fn minimal_env() -> Env {
    Env::Only(minimal_vars())
}

/// Makes `dir` a private directory: created `0700` (its parents as
/// usual) when missing; otherwise it must be a directory (a symlink is
/// refused) owned by this process's user, and its mode becomes `0700`.
fn private_dir(dir: &Path) -> Result<(), SidecarError> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(dir, e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| io_err(dir, e))?;
    if !meta.file_type().is_dir() {
        return Err(SidecarError::Io(format!(
            "{}: not a directory (a symlink is refused: the sidecar's key lives there)",
            dir.display()
        )));
    }
    // `/proc/self` belongs to this process's effective user.
    let me = std::fs::metadata("/proc/self")
        .map_err(|e| io_err(Path::new("/proc/self"), e))?
        .uid();
    if meta.uid() != me {
        return Err(SidecarError::Io(format!(
            "{}: owned by uid {}, not by this process's (uid {me}): the sidecar's key would be readable by its owner",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

fn absolute(dir: &Path) -> Result<PathBuf, SidecarError> {
    std::path::absolute(dir).map_err(|e| io_err(dir, e))
}

fn io_err(path: &Path, e: std::io::Error) -> SidecarError {
    SidecarError::Io(format!("{}: {e}", path.display()))
}

/// HAProxy's own messages by their tag; traffic logs (stdout) at debug.
fn classify_haproxy(line: &str, stderr: bool) -> tracing::Level {
    if line.starts_with("[ALERT]") {
        tracing::Level::ERROR
    } else if line.starts_with("[WARNING]") {
        tracing::Level::WARN
    } else if line.starts_with("[NOTICE]") || stderr {
        tracing::Level::INFO
    } else {
        tracing::Level::DEBUG
    }
}

/// How to run a command-template sidecar.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CommandSettings {
    /// The command line, run by `/bin/sh -c` after `{{id}}` is replaced
    /// by the (shell-quoted) service id, e.g. `consul connect proxy
    /// -sidecar-for {{id}}`.
    pub template: String,
    /// The value of `{{id}}`: the node's service id as registered.
    pub id: String,
    /// Ready when this `host:port` accepts a TCP connection (the proxy's
    /// public port, say); `None`: ready once started.
    pub ready_addr: Option<String>,
    /// Restart backoff.
    pub restart: Restart,
    /// How long a start may take to be ready (default 10 s).
    pub ready_timeout: Duration,
    /// Between SIGTERM and SIGKILL at stop (default 5 s).
    pub grace: Duration,
}

impl CommandSettings {
    /// `template` with `{{id}}` standing for `id`.
    pub fn new(template: impl Into<String>, id: impl Into<String>) -> Self {
        CommandSettings {
            template: template.into(),
            id: id.into(),
            ready_addr: None,
            restart: Restart::default(),
            ready_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(5),
        }
    }

    /// Ready when `addr` accepts a TCP connection.
    pub fn ready_when_listening(mut self, addr: impl Into<String>) -> Self {
        self.ready_addr = Some(addr.into());
        self
    }

    /// Another restart backoff.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// The command line as run (the template with `{{id}}` replaced).
    pub fn command_line(&self) -> String {
        self.template.replace("{{id}}", &shell_quote(&self.id))
    }
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A running, supervised command-template sidecar.
#[derive(Debug)]
pub struct CommandSidecar {
    sup: Supervisor,
}

impl CommandSidecar {
    /// Starts the command and waits until it is ready.
    pub async fn start(settings: CommandSettings) -> Result<CommandSidecar, SidecarError> {
        if settings.template.trim().is_empty() {
            return Err(SidecarError::Config("empty command template".into()));
        }
        let line = settings.command_line();
        let ready_addr = settings.ready_addr.clone();
        let spec = Spec {
            name: "command",
            program: "/bin/sh".into(),
            args: vec!["-c".into(), line.into()],
            env: Env::InheritExcept(vec!["MESH_COOKIE"]),
            install_hint: "a POSIX shell is needed to run command templates".into(),
            classify: |_, stderr| {
                if stderr {
                    tracing::Level::WARN
                } else {
                    tracing::Level::INFO
                }
            },
            ready: Arc::new(move |_pid| {
                let addr = ready_addr.clone();
                Box::pin(async move {
                    match addr {
                        None => Ok(()),
                        Some(a) => tokio::net::TcpStream::connect(a).await.map(|_| ()),
                    }
                })
            }),
            ready_timeout: settings.ready_timeout,
            restart: settings.restart,
            grace: settings.grace,
            die_with_node: true,
        };
        Ok(CommandSidecar {
            sup: Supervisor::start(spec).await?,
        })
    }

    /// The process's status.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.sup.status()
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.sup.pid()
    }

    /// Stops it (SIGTERM, SIGKILL after the grace period).
    pub async fn stop(&self) {
        self.sup.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_gets_the_id_as_one_shell_word() {
        let s = CommandSettings::new("consul connect proxy -sidecar-for {{id}}", "mesh-a");
        assert_eq!(
            s.command_line(),
            "consul connect proxy -sidecar-for 'mesh-a'"
        );
        let s = CommandSettings::new("run {{id}}", "x'; rm -rf /; '");
        assert_eq!(s.command_line(), "run 'x'\\''; rm -rf /; '\\'''");
    }

    #[test]
    fn show_stat_rows_are_read_by_column_name() {
        let rows = parse_stat(
            "# pxname,svname,qcur,scur,stot,dreq\npublic,FRONTEND,,1,7,2\napp,app,0,1,5,\n\n",
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].proxy.as_str(), rows[0].server.as_str()),
            ("public", "FRONTEND")
        );
        assert_eq!(rows[0].get("stot"), 7);
        assert_eq!(rows[0].get("dreq"), 2);
        assert_eq!(rows[1].get("dreq"), 0);
        assert_eq!(rows[1].get("nope"), 0);
    }

    #[test]
    fn haproxy_lines_are_levelled_by_their_tag() {
        assert_eq!(
            classify_haproxy("[ALERT]    (1) : x", true),
            tracing::Level::ERROR
        );
        assert_eq!(
            classify_haproxy("[WARNING]  (1) : x", true),
            tracing::Level::WARN
        );
        assert_eq!(
            classify_haproxy("[NOTICE]   (1) : x", true),
            tracing::Level::INFO
        );
        assert_eq!(
            classify_haproxy("127.0.0.1:1 [..] public", false),
            tracing::Level::DEBUG
        );
    }
}
