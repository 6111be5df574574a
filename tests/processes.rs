//! Real processes: three `examples/cluster` nodes on loopback and this test
//! as a fourth node driving calls; one node is killed with SIGKILL under
//! load. Checks: no call outlives its deadline; calls owned by surviving
//! nodes all succeed; once the death is detected, every call succeeds.
//!
//! Also: a cluster of `examples/cluster` processes over mTLS with identity
//! files, which refuses a process whose certificate is from a foreign CA.
//!
//! Needs the example built (`cargo test` builds it; alone:
//! `cargo build --example cluster`).

use std::future::IntoFuture;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::prelude::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Same wire contract as the example's `Player` (capability and names).
#[derive(Actor, Default)]
#[actor(capability = "game")]
struct Player;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = (String, u64))]
struct Score(u64);

#[mesh::handlers]
impl Player {
    async fn score(&mut self, _: Score) -> (String, u64) {
        unreachable!("this node does not host game")
    }
}

const COOKIE: &str = mesh_testkit::COOKIE;

fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("examples").join("cluster");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --example cluster` (cargo test does)",
        bin.display()
    );
    bin
}

/// A spawned node, killed when dropped.
struct Proc {
    child: Child,
    addr: String,
}

async fn spawn_node(name: &str, caps: &str, seeds: &[&str]) -> Proc {
    let mut cmd = Command::new(example_binary());
    cmd.args([
        "--name",
        name,
        "--listen",
        "127.0.0.1:0",
        "--capabilities",
        caps,
        "--heartbeat-ms",
        "100",
    ]);
    if !seeds.is_empty() {
        cmd.args(["--seeds", &seeds.join(",")]);
    }
    cmd.env("MESH_COOKIE", COOKIE)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn the cluster example");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some((_, addr)) = line.split_once(" listening on ") {
                return addr.trim().to_owned();
            }
        }
        panic!("{name} exited before listening");
    })
    .await
    .expect("node started within 30 s");
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Proc { child, addr }
}

#[derive(Debug)]
struct Outcome {
    id: String,
    owner: String,
    result: Result<String, Error>,
    took: Duration,
    after_detection: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load() {
    let n1 = spawn_node("p-1", "game", &[]).await;
    let n2 = spawn_node("p-2", "game", &[&n1.addr]).await;
    let n3 = spawn_node("p-3", "game,chat", &[&n1.addr]).await;
    let driver = Node::builder()
        .id("driver")
        .default_node(false)
        .cluster("example")
        .cookie(COOKIE)
        .listen("127.0.0.1:0")
        .seeds([n1.addr.clone(), n2.addr.clone(), n3.addr.clone()])
        .heartbeat(Duration::from_millis(100), Duration::from_millis(400))
        .start()
        .await
        .unwrap();
    let mut changes = driver.membership_changes();
    tokio::time::timeout(Duration::from_secs(30), changes.wait_for(|m| m.len() == 4))
        .await
        .expect("4 members within 30 s")
        .unwrap();

    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let progress = Arc::new(tokio::sync::watch::channel(0usize).0);
    let detected = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deadline = Duration::from_millis(800);
    let mut load = Vec::new();
    for w in 0..8 {
        let (driver, outcomes, detected, stop) = (
            driver.clone(),
            outcomes.clone(),
            detected.clone(),
            stop.clone(),
        );
        let progress = progress.clone();
        load.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let id = format!("player-{w}-{}", i % 97);
                let after_detection = detected.load(std::sync::atomic::Ordering::SeqCst);
                let owner = driver.owner_of::<Player>(&id).unwrap_or_default();
                let started = Instant::now();
                let result = driver
                    .call::<Player, _>(&id, Score(1))
                    .timeout(deadline)
                    .await
                    .map(|(on, _)| on);
                outcomes.lock().unwrap().push(Outcome {
                    id,
                    owner,
                    result,
                    took: started.elapsed(),
                    after_detection,
                });
                progress.send_modify(|n| *n += 1);
            }
        }));
    }
    let mut done = progress.subscribe();
    // Under load, then SIGKILL p-2.
    done.wait_for(|n| *n >= 2_000).await.unwrap();
    // The ids p-2 owns until it dies: while the views change, a call to
    // one of them may reach a survivor that still sees p-2 as the owner
    // and forwards it into the dying link (its outcome then unknown:
    // `NodeDown`), even though the caller already counts it a survivor's.
    let was_p2: std::collections::HashSet<String> = (0..8)
        .flat_map(|w| (0..97).map(move |i| format!("player-{w}-{i}")))
        .filter(|id| driver.owner_of::<Player>(id).is_ok_and(|o| o == "p-2"))
        .collect();
    let mut n2 = n2;
    n2.child.start_kill().expect("SIGKILL p-2");
    let killed_at = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(10),
        changes.wait_for(|m| !m.contains("p-2")),
    )
    .await
    .expect("p-2 dropped within 10 s")
    .unwrap();
    let detection = killed_at.elapsed();
    detected.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = *done.borrow();
    done.wait_for(|n| *n >= before + 2_000).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap();
    assert!(
        slowest < deadline + Duration::from_millis(500),
        "a call took {slowest:?}"
    );
    let failed_survivors: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.owner != "p-2" && !was_p2.contains(&o.id) && o.result.is_err())
        .collect();
    assert!(
        failed_survivors.is_empty(),
        "calls owned by survivors failed: {failed_survivors:?}"
    );
    let failed_after: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.after_detection && o.result.is_err())
        .collect();
    assert!(
        failed_after.is_empty(),
        "calls failed after detection: {failed_after:?}"
    );
    let to_dead = outcomes
        .iter()
        .filter(|o| o.owner == "p-2" && o.result.is_err())
        .count();
    println!(
        "{} calls; {to_dead} failed fast for p-2 while it died; detected in {detection:?}; slowest call {slowest:?}",
        outcomes.len()
    );
    drop((n1, n3));
    driver.shutdown().await.unwrap();
}

// ------------------------------------------------------------ mTLS across processes

/// Counts refused TLS handshakes by reason, and wakes waiters on each.
#[derive(Default, Clone)]
struct Refusals(Arc<Mutex<std::collections::BTreeMap<String, Arc<RefusalCell>>>>);

#[derive(Default)]
struct RefusalCell(std::sync::atomic::AtomicU64);

static REFUSED: tokio::sync::Notify = tokio::sync::Notify::const_new();

impl metrics::CounterFn for RefusalCell {
    fn increment(&self, v: u64) {
        self.0.fetch_add(v, std::sync::atomic::Ordering::SeqCst);
        REFUSED.notify_waiters();
    }
    fn absolute(&self, v: u64) {
        self.0.store(v, std::sync::atomic::Ordering::SeqCst);
        REFUSED.notify_waiters();
    }
}

impl metrics::Recorder for Refusals {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let mut name = key.name().to_owned();
        for l in key.labels() {
            name.push_str(&format!("{{{}={}}}", l.key(), l.value()));
        }
        metrics::Counter::from_arc(self.0.lock().unwrap().entry(name).or_default().clone())
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

impl Refusals {
    fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_of_processes_refuses_a_foreign_ca() {
    use mesh::identity::FileIdentity;
    use mesh::transport::tls::Tls;
    use mesh_testkit::pki::{self, Ca, Files};
    use mesh_testkit::procs::{example_binary, Proc};
    let refusals = Refusals::default();
    metrics::set_global_recorder(refusals.clone()).expect("the only recorder of this test");
    let td = "11111111-2222-3333-4444-555555555555.consul";
    let id = pki::service_id(td, "example");
    let dir = std::env::temp_dir().join(format!("mesh-tls-procs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = Ca::new(td);
    let files = |name: &str, ca: &Ca| {
        let f = Files::in_dir(&dir.join(name));
        f.write(&ca.leaf(&id), &ca.pem);
        f
    };
    let tls_node = |name: &str, f: &Files, seeds: &[&str]| {
        let mut cmd = Command::new(example_binary("cluster"));
        cmd.args([
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--capabilities",
            "game",
        ]);
        cmd.args(["--heartbeat-ms", "100"]);
        cmd.arg("--tls-cert").arg(&f.chain);
        cmd.arg("--tls-key").arg(&f.key);
        cmd.arg("--tls-roots").arg(&f.bundle);
        if !seeds.is_empty() {
            cmd.args(["--seeds", &seeds.join(",")]);
        }
        cmd
    };
    let f1 = files("p-1", &ca);
    let n1 = Proc::spawn(tls_node("p-1", &f1, &[]), "p-1", COOKIE).await;
    let f2 = files("p-2", &ca);
    let n2 = Proc::spawn(tls_node("p-2", &f2, &[&n1.addr]), "p-2", COOKIE).await;
    // This test is the third node, on the same CA.
    let fd = files("driver", &ca);
    let identity = FileIdentity::load(&fd.chain, &fd.key, &fd.bundle).unwrap();
    let driver = Node::builder()
        .id("driver")
        .default_node(false)
        .cluster("example")
        .cookie(COOKIE)
        .transport(Tls::new(identity).transport())
        .listen("127.0.0.1:0")
        .seeds([n1.addr.clone(), n2.addr.clone()])
        .heartbeat(Duration::from_millis(100), Duration::from_millis(400))
        .start()
        .await
        .unwrap();
    let mut changes = driver.membership_changes();
    tokio::time::timeout(Duration::from_secs(30), changes.wait_for(|m| m.len() == 3))
        .await
        .expect("3 members within 30 s")
        .unwrap();
    let mut owners = std::collections::BTreeSet::new();
    for i in 0..40 {
        let (by, _) = tokio::time::timeout(
            Duration::from_secs(10),
            driver
                .call::<Player, _>(&format!("tls-{i}"), Score(1))
                .into_future(),
        )
        .await
        .expect("a call within 10 s")
        .expect("a call over mTLS");
        owners.insert(by);
    }
    assert_eq!(
        owners.into_iter().collect::<Vec<_>>(),
        ["p-1", "p-2"],
        "calls crossed mTLS links to both processes"
    );

    // A process with a certificate of a foreign CA (same SPIFFE ID, same
    // cookie) is refused by the nodes it dials: this one counts it.
    let unknown_ca = "mesh_tls_handshake_failures_total{reason=unknown_ca}";
    let before = refusals.get(unknown_ca);
    let foreign = Ca::new(td);
    // It trusts the cluster's CA too, so it accepts the nodes' certificates
    // and the refusal is theirs, of its certificate.
    let ff = Files::in_dir(&dir.join("p-f"));
    ff.write(&foreign.leaf(&id), &format!("{}{}", foreign.pem, ca.pem));
    let driver_addr = driver.addr().unwrap().to_owned();
    let _nf = Proc::spawn(
        tls_node("p-f", &ff, &[&driver_addr, &n1.addr]),
        "p-f",
        COOKIE,
    )
    .await;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let woken = REFUSED.notified();
            if refusals.get(unknown_ca) > before {
                return;
            }
            woken.await;
        }
    })
    .await
    .expect("the foreign process is refused within 30 s");
    assert!(!driver.membership().contains("p-f"));
    assert_eq!(driver.membership().len(), 3);
    driver.shutdown().await.unwrap();
    drop((n1, n2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Spawns the cluster example with `cookie` and `RUST_LOG=warn`, its
/// stdout and stderr lines sent to the returned channel.
fn spawn_logged(
    name: &str,
    cookie: &str,
    seeds: &[&str],
) -> (Child, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let mut cmd = Command::new(example_binary());
    cmd.args([
        "--name",
        name,
        "--listen",
        "127.0.0.1:0",
        "--capabilities",
        "game",
    ]);
    if !seeds.is_empty() {
        cmd.args(["--seeds", &seeds.join(",")]);
    }
    cmd.env("MESH_COOKIE", cookie)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn the cluster example");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let out = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let err = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    for mut lines in [
        Box::new(out) as Box<dyn LineSource>,
        Box::new(err) as Box<dyn LineSource>,
    ] {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(line) = lines.next().await {
                let _ = tx.send(line);
            }
        });
    }
    (child, rx)
}

/// Lines of a child's stdout or stderr.
trait LineSource: Send {
    fn next(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + '_>>;
}

impl<R: tokio::io::AsyncBufRead + Unpin + Send> LineSource for tokio::io::Lines<R> {
    fn next(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + '_>> {
        Box::pin(async move { self.next_line().await.ok().flatten() })
    }
}

/// Waits (at most 30 s) for a line containing `needle`.
async fn line_with(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, needle: &str) -> String {
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = rx.recv().await {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("the process ended without printing {needle:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no line with {needle:?} within 30 s"))
}

/// The examples log through `RUST_LOG`: a node dialing with the wrong
/// cookie says so on stderr (it printed nothing anywhere before), and
/// SIGTERM stops a node cleanly, as Ctrl-C does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_log_a_wrong_cookie_and_stop_on_sigterm() {
    let (mut a, mut a_lines) = spawn_logged("logs-a", COOKIE, &[]);
    let listening = line_with(&mut a_lines, " listening on ").await;
    let addr = listening
        .split_once(" listening on ")
        .map(|(_, addr)| addr.trim().to_owned())
        .expect("an address");
    let (mut b, mut b_lines) = spawn_logged("logs-b", mesh_testkit::OTHER_COOKIE, &[&addr]);
    let refused = line_with(&mut b_lines, "wrong cookie").await;
    assert!(refused.contains("WARN"), "{refused}");
    drop(b.kill().await);
    let pid = a.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill(1)");
    assert!(status.success());
    line_with(&mut a_lines, "logs-a left the cluster").await;
    let exit = tokio::time::timeout(Duration::from_secs(30), a.wait())
        .await
        .expect("exited within 30 s")
        .expect("exit status");
    assert!(exit.success(), "{exit:?}");
}

/// The embedded store survives a SIGKILL of its process: every deposit
/// `examples/ledger` acknowledged (printed after the call returned) is in
/// the file when it is opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_keeps_every_acknowledged_write_through_a_sigkill() {
    use std::collections::HashMap;

    use mesh::state::{envelope, RedbStore, StateKey, StateStore};

    const ACCOUNTS: usize = 16;
    let dir = mesh_testkit::scratch("ledger-kill");
    let file = dir.join("ledger.redb");
    for round in 0..2 {
        let (mut child, mut lines) = ledger(&file, &["--accounts", &ACCOUNTS.to_string()]);
        let mut acked: HashMap<String, u64> = HashMap::new();
        let mut count = 0;
        mesh_testkit::within(Duration::from_secs(60), async {
            while count < 2000 {
                let line = lines.next_line().await.expect("read").expect("a line");
                let mut parts = line.split(' ');
                if parts.next() == Some("acked") {
                    let (id, balance) = (parts.next().expect("id"), parts.next().expect("n"));
                    acked.insert(id.to_owned(), balance.parse().expect("a balance"));
                    count += 1;
                }
            }
        })
        .await;
        // SIGKILL: no hook, no flush, no shutdown.
        sigkill(&mut child).await;
        // What it printed before it died counts too.
        while let Ok(Some(line)) = lines.next_line().await {
            let mut parts = line.split(' ');
            if parts.next() == Some("acked") {
                if let (Some(id), Some(Ok(n))) = (parts.next(), parts.next().map(str::parse)) {
                    acked.insert(id.to_owned(), n);
                    count += 1;
                }
            }
        }
        let store = RedbStore::open(&file).expect("the file opens after the kill");
        for (id, want) in &acked {
            let stored = store
                .load(&StateKey::new("bank/Account", id.as_str()), None)
                .await
                .expect("load");
            let bytes = stored.bytes.expect("a balance");
            let (_, payload) = envelope::open(&bytes).expect("envelope");
            let balance: u64 = envelope::decode(payload).expect("a u64");
            // Deposits acknowledged but not yet printed, and one in
            // flight per account, may be there too: more, never less.
            assert!(
                *want <= balance,
                "round {round}, {id}: acknowledged {want}, stored {balance}"
            );
        }
        println!("round {round}: {count} deposits acknowledged before the SIGKILL, all on disk");
    }
}

/// Issue 23: a durable reminder outlives its process on the embedded
/// store. `examples/ledger --remind-ms 100` ticks a clock from a reminder
/// it registers once; SIGKILLed and run again on the same file, the
/// ticks go on from where they were: every tick from the first to the
/// last is delivered (those due while no process ran, one after the
/// other), none early, a tick at most delivered again (one whose
/// acknowledgement the kill cut).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_on_the_embedded_store_goes_on_after_a_sigkill_and_a_restart() {
    const PERIOD: u64 = 100;
    let dir = mesh_testkit::scratch("ledger-remind");
    let file = dir.join("ledger.redb");
    let mut dues: Vec<u64> = Vec::new();
    for round in 0..2 {
        let (mut child, mut lines) = ledger(
            &file,
            &["--accounts", "0", "--remind-ms", &PERIOD.to_string()],
        );
        let mut seen = 0;
        mesh_testkit::within(Duration::from_secs(60), async {
            while seen < 8 {
                let line = lines.next_line().await.expect("read").expect("a line");
                let mut parts = line.split(' ');
                if parts.next() == Some("tick") {
                    let due: u64 = parts.next().expect("due").parse().expect("a time");
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as u64;
                    assert!(
                        due <= now,
                        "round {round}: a tick due at {due} printed at {now}"
                    );
                    dues.push(due);
                    seen += 1;
                }
            }
        })
        .await;
        sigkill(&mut child).await;
        while let Ok(Some(line)) = lines.next_line().await {
            let mut parts = line.split(' ');
            if let (Some("tick"), Some(Ok(due))) = (parts.next(), parts.next().map(str::parse)) {
                dues.push(due);
            }
        }
    }
    let mut distinct = dues.clone();
    distinct.sort_unstable();
    distinct.dedup();
    println!(
        "{} ticks printed over two runs, {} distinct, from {} to {}",
        dues.len(),
        distinct.len(),
        distinct[0],
        distinct[distinct.len() - 1]
    );
    for w in distinct.windows(2) {
        assert_eq!(
            w[1],
            w[0] + PERIOD,
            "a tick lost between {} and {}",
            w[0],
            w[1]
        );
    }
    assert!(
        dues.len() - distinct.len() <= 2,
        "delivered again: {dues:?}"
    );
    assert!(distinct.len() >= 15, "{distinct:?}");
}

/// `examples/ledger` on store `file` with `args`, and its stdout's lines.
fn ledger(
    file: &std::path::Path,
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = Command::new(mesh_testkit::procs::example_binary("ledger"))
        .arg("--store")
        .arg(file)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the ledger example");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

/// SIGKILLs `child` (no hook, no flush, no shutdown) and reaps it.
async fn sigkill(child: &mut tokio::process::Child) {
    child.start_kill().expect("SIGKILL");
    let status = child.wait().await.expect("reaped");
    assert!(!status.success(), "killed");
}
