//! Chaos suite of the strong mode (`mesh::lease`): real node processes
//! (the `consul_mesh` example hosting `Account`, whose balance lives in
//! Consul KV) on loopback, the Consul test agent in this process with its
//! time scaled 20x (session TTL 10 s -> 500 ms, timer 1 s, lock-delay 500
//! ms; the nodes are told with `--time-scale`), and steady deposits from
//! this test, which joins as a node hosting nothing.
//!
//! Every process records its activations and dispatches (`--history`);
//! the merged histories go through `mesh::history::violations` (per id,
//! each activation's last act comes before the next one starts, tokens
//! growing), and every balance is checked against the deposits
//! acknowledged and attempted.
//!
//! - a hung owner (SIGSTOP past its session's expiry, then SIGCONT): in
//!   strong mode nothing is served out of turn, no deposit is lost, and a
//!   write fenced with the paused node's session is refused; the same run
//!   in eventual mode is the negative control, and must be flagged;
//! - a killed owner: its shards come back after the session expires and
//!   the lock-delay; the failover time is printed next to its bound;
//! - a rolling restart: no call fails and nothing is served out of turn;
//! - the hung owner again with the balances `#[state]` in a real
//!   PostgreSQL (`--pg`, issue 22): in strong mode nothing out of turn, no
//!   deposit lost, and the store itself refuses a write carrying the hung
//!   node's token; in eventual mode the duplicates' stale writes fail
//!   their calls on a conflict and no acknowledged deposit is lost; and
//!   the rolling restart on PostgreSQL: no call fails, no deposit lost;
//!   a SIGKILL and a partition (cut off from Consul, in a network
//!   namespace) on PostgreSQL in both modes: no deposit lost, nothing out
//!   of turn in strong mode, the eventual partition's conflicts printed.
//!
//! Needs the examples built (`cargo test` builds them).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh::history::{violations, Violation};
use mesh::lease::{Fence, Strong};
use mesh::prelude::*;
use mesh::state::{PgStore, StateKey, StateStore, StoreError};
use mesh_testkit::actors::{Account, Arm, Beacon, Beats, Report, StateAccount, TickLog};
use mesh_testkit::bank::{
    adapter, agent, check_balances, check_state_balances, holder, session_of, Deposits,
};
use mesh_testkit::chaos::{histories, scratch};
use mesh_testkit::consul_agent::TestConsul;
use mesh_testkit::fixture::wait_membership;
use mesh_testkit::pg;
use mesh_testkit::procs::{example_binary, Proc};
use mesh_testkit::{require, within};
use tokio::process::Command;
use tokio::time::Instant;

const COOKIE: &str = mesh_testkit::COOKIE;
const SCALE: f64 = 0.05;
const STEP: Duration = Duration::from_secs(30);
const ACCOUNTS: usize = 30;
const PER_ACCOUNT: usize = 4;
/// The nodes' health check TTL (`--ttl-ms`).
const CHECK_TTL: Duration = Duration::from_millis(6000);

/// How fast members take each other for down: as the failure tests need
/// it, or leniently, for the scenes where every node leaves cleanly (a
/// rolling restart), whose driver (this test process, which also runs the
/// Consul test agent) must not be taken for down when the whole suite
/// beside a CPU hog starves it for a few seconds: there, the clean
/// leaves are what is tested, not the detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detection {
    /// Check TTL `CHECK_TTL` (scaled: 300 ms), the default 2 s heartbeat
    /// failure timeout, the driver's 400 ms.
    Fast,
    /// Check TTLs of 60 s (scaled: 3 s) and heartbeat failure timeouts of
    /// 10 s, the driver's too.
    Lenient,
}

impl Detection {
    /// A node process's check TTL and failure timeout arguments.
    fn node_args(self) -> Vec<String> {
        match self {
            Detection::Fast => vec!["--ttl-ms".into(), CHECK_TTL.as_millis().to_string()],
            Detection::Lenient => vec![
                "--ttl-ms".into(),
                "60000".into(),
                "--failure-timeout-ms".into(),
                "10000".into(),
            ],
        }
    }

    /// The driver's heartbeat failure timeout and check TTL.
    fn driver(self) -> (Duration, Duration) {
        match self {
            Detection::Fast => (Duration::from_millis(400), Duration::from_secs(6)),
            Detection::Lenient => (Duration::from_secs(10), Duration::from_secs(60)),
        }
    }
}

/// Node process `p-<i>` (with `pg`, it keeps `StateAccount` balances
/// there), detecting failures as `detection` says, with `extra` arguments.
async fn spawn_args(
    consul: &TestConsul,
    i: usize,
    strong: bool,
    dir: &Path,
    pg: Option<&str>,
    detection: Detection,
    extra: &[&str],
) -> Proc {
    let name = format!("p-{i}");
    let mut cmd = Command::new(example_binary("consul_mesh"));
    cmd.args(["--consul", &consul.url(i), "--name", &name])
        .args(["--listen", "127.0.0.1:0", "--capabilities", "bank"])
        .args(["--cluster", "chaos", "--heartbeat-ms", "100"])
        .args(detection.node_args())
        .arg("--history")
        .arg(dir.join(format!("{name}.history")));
    if strong {
        cmd.args(["--strong", "--time-scale", &SCALE.to_string()]);
    }
    if let Some(pg) = pg {
        cmd.args(["--pg", pg])
            .args(["--reminder-refresh-ms", "200"])
            .arg("--ticks")
            .arg(dir.join(format!("{name}.ticks")));
    }
    cmd.args(extra);
    Proc::spawn(cmd, &name, COOKIE).await
}

async fn driver(consul: &TestConsul, strong: bool, detection: Detection) -> Node {
    let (failure, ttl) = detection.driver();
    let mut b = Node::builder()
        .id("driver")
        .default_node(false)
        .cluster("chaos")
        .cookie(COOKIE)
        .listen("127.0.0.1:0")
        .heartbeat(Duration::from_millis(100), failure)
        .discovery(adapter(consul, 3).ttl(ttl));
    if strong {
        b = b.strong(Strong::new().time_scale(SCALE));
    }
    b.start().await.expect("the driver starts")
}

async fn members(n: &Node, f: impl Fn(&mesh::Membership) -> bool) {
    wait_membership(n, STEP, f).await;
}

/// Waits, while `load` goes on, until lock key `key` is held by `node`'s
/// session: the shard was handed over to it (the start of a run hands
/// shards from the first node to the later ones).
async fn until_held(consul: &TestConsul, load: &Deposits, key: &str, node: &str) -> String {
    within(STEP, async {
        loop {
            if let (Some(h), Some(s)) = (holder(consul, key), session_of(consul, node)) {
                if h == s {
                    return s;
                }
            }
            load.more(20).await;
        }
    })
    .await
}

/// Three node processes, the driver and the deposits, started.
struct Scene {
    test: String,
    dir: std::path::PathBuf,
    consul: Arc<TestConsul>,
    procs: Vec<Proc>,
    driver: Node,
    load: Deposits,
    /// With PostgreSQL: the server, and the deposits go to `StateAccount`.
    pg: Option<pg::Server>,
    /// With PostgreSQL: the reminder probes armed (two per node).
    beacons: Vec<String>,
}

/// What a scene ended with: the checkers' findings.
struct Ending {
    found: Vec<Violation>,
    wrong: Vec<(String, u64, u64, u64)>,
    failures: Vec<String>,
    events: Vec<mesh::history::ActivationEvent>,
    /// With PostgreSQL: each reminder probe's ticks, as it recorded them.
    beats: Vec<(String, Beats)>,
    /// With PostgreSQL: the ticks the nodes logged, `(id, due, node,
    /// start, end)`.
    ticks: Vec<Logged>,
}

/// A tick as a node logged it: `(id, due, node, start, end)`.
type Logged = (String, u64, String, u64, u64);

impl Scene {
    /// The actor the deposits go to: `StateAccount` with PostgreSQL.
    fn kind(&self) -> &'static str {
        if self.pg.is_some() {
            "StateAccount"
        } else {
            "Account"
        }
    }

    /// The lock key of `id`'s shard for the deposits' actor.
    fn lock_key(&self, id: &str) -> String {
        format!(
            "mesh/chaos/own/bank/{}/{:04}",
            self.kind(),
            mesh::ring::shard(id)
        )
    }

    /// The accounts the driver routes to `node` now.
    fn accounts_on(&self, node: &str) -> Vec<String> {
        (0..ACCOUNTS)
            .map(|a| format!("{}-{a}", self.test))
            .filter(|id| {
                let owner = match self.pg {
                    None => self.driver.owner_of::<Account>(id),
                    Some(_) => self.driver.owner_of::<StateAccount>(id),
                };
                owner.is_ok_and(|o| o == node)
            })
            .collect()
    }

    /// Starts p-0..p-2 and the driver (in `strong` mode or not), waits
    /// for the membership, and starts deposits with `deadline` each.
    async fn start(test: &str, strong: bool, deadline: Duration) -> Scene {
        Scene::start_with(test, strong, deadline, None).await
    }

    /// The same; with `pg`, the balances are `StateAccount`s in it, and
    /// reminder probes are armed.
    async fn start_with(
        test: &str,
        strong: bool,
        deadline: Duration,
        pg: Option<pg::Server>,
    ) -> Scene {
        let probes = pg.is_some();
        Scene::start_full(test, strong, deadline, pg, probes, Detection::Fast).await
    }

    /// [`Scene::start_with`] with lenient failure detection (see
    /// [`Detection::Lenient`]).
    async fn start_lenient(
        test: &str,
        strong: bool,
        deadline: Duration,
        pg: Option<pg::Server>,
    ) -> Scene {
        let probes = pg.is_some();
        Scene::start_full(test, strong, deadline, pg, probes, Detection::Lenient).await
    }

    /// The same, with the reminder probes or not.
    async fn start_full(
        test: &str,
        strong: bool,
        deadline: Duration,
        pg: Option<pg::Server>,
        probes: bool,
        detection: Detection,
    ) -> Scene {
        let dir = scratch(test);
        let consul = agent(4, SCALE).await;
        let mut procs = Vec::new();
        let conn = pg.as_ref().map(pg::Server::config);
        for i in 0..3 {
            let conn = conn.as_deref();
            procs.push(spawn_args(&consul, i, strong, &dir, conn, detection, &[]).await);
        }
        let driver = driver(&consul, strong, detection).await;
        members(&driver, |m| m.len() == 4).await;
        let load = match pg {
            None => Deposits::start(&driver, test, ACCOUNTS, PER_ACCOUNT, deadline),
            Some(_) => {
                Deposits::start_for::<StateAccount>(&driver, test, ACCOUNTS, PER_ACCOUNT, deadline)
            }
        };
        load.more(300).await;
        let beacons = match probes {
            true => arm_beacons(&driver, test, &dir, &load).await,
            false => Vec::new(),
        };
        Scene {
            test: test.to_owned(),
            dir,
            consul,
            procs,
            driver,
            load,
            pg,
            beacons,
        }
    }

    /// Stops the deposits, checks the balances, stops everything, checks
    /// the merged histories and prints both.
    async fn end(self) -> Ending {
        let beats = settle_beacons(&self.driver, &self.beacons, &self.dir, &self.load).await;
        let (acked, failures) = self.load.finish().await;
        let calls: u64 = acked.values().map(|(_, t)| t).sum();
        let wrong = match &self.pg {
            None => check_balances(&adapter(&self.consul, 3), &acked).await,
            Some(pg) => {
                let store = PgStore::new(&pg.config()).expect("a store");
                check_state_balances(&store, &acked).await
            }
        };
        self.driver.shutdown().await.expect("driver leaves");
        drop(self.procs);
        let events = histories(&self.dir);
        let found = violations(&events);
        let logs: Vec<_> = (0..3)
            .map(|i| self.dir.join(format!("p-{i}.ticks")))
            .collect();
        let ticks = TickLog::read(&logs);
        if !beats.is_empty() {
            let (count, dup) = beats
                .iter()
                .fold((0, 0), |(c, d), (_, b)| (c + b.count, d + b.duplicates));
            println!(
                "{}: reminder probes: {} ticks acknowledged, {dup} delivered again, {} logged",
                self.test,
                count,
                ticks.len()
            );
        }
        println!(
            "{}: {calls} deposits, {} violations, {} wrong balances",
            self.test,
            found.len(),
            wrong.len()
        );
        for v in found.iter().take(5) {
            println!("  violation: {v:?}");
        }
        for w in wrong.iter().take(5) {
            println!("  (id, acked, stored, attempted): {w:?}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ending {
            found,
            wrong,
            failures,
            events,
            beats,
            ticks,
        }
    }
}

/// The reminder probes' period (longer than their 300 ms idle timeout:
/// each tick finds its probe passivated and activates it).
const BEAT_MS: u64 = 500;

/// Arms two reminder probes per node (every [`BEAT_MS`], missed ticks
/// fired in a burst, so none is dropped) and waits until each ticked.
/// The waits read the nodes' tick logs, not the probes: a call would keep
/// a probe from being passivated between its ticks.
async fn arm_beacons(driver: &Node, test: &str, dir: &Path, load: &Deposits) -> Vec<String> {
    let mut ids = Vec::new();
    for node in ["p-0", "p-1", "p-2"] {
        let mine = (0..)
            .map(|i| format!("{test}-beacon-{i}"))
            .filter(|id| driver.owner_of::<Beacon>(id).is_ok_and(|o| o == node))
            .take(2);
        ids.extend(mine);
    }
    for id in &ids {
        let arm = Arm {
            every_ms: BEAT_MS,
            missed: "burst:1000".into(),
        };
        driver
            .call::<Beacon, _>(id, arm)
            .await
            .expect("the probe answers")
            .expect("the probe is armed");
    }
    ticked_since(&ids, dir, 0, load).await;
    ids
}

/// Waits, while `load` goes on, until the nodes' tick logs have a tick of
/// each of `ids` due at or after `since` (Unix ms).
async fn ticked_since(ids: &[String], dir: &Path, since: u64, load: &Deposits) {
    let logs: Vec<_> = (0..3).map(|i| dir.join(format!("p-{i}.ticks"))).collect();
    within(STEP, async {
        loop {
            let ticks = TickLog::read(&logs);
            if ids
                .iter()
                .all(|id| ticks.iter().any(|t| &t.0 == id && t.1 >= since))
            {
                return;
            }
            load.more(20).await;
        }
    })
    .await;
}

/// Waits until every probe has a tick due after now (the schedule goes on
/// after whatever the test did), and reads what each acknowledged.
async fn settle_beacons(
    driver: &Node,
    ids: &[String],
    dir: &Path,
    load: &Deposits,
) -> Vec<(String, Beats)> {
    ticked_since(ids, dir, unix_ms(), load).await;
    let mut beats = Vec::new();
    for id in ids {
        let b = within(STEP, async {
            loop {
                // The tick logged may still be writing its state: read
                // until the probe has it.
                if let Ok(b) = driver.call::<Beacon, _>(id, Report).await {
                    if b.count >= 2 {
                        return b;
                    }
                }
                load.more(5).await;
            }
        })
        .await;
        beats.push((id.clone(), b));
    }
    beats
}

/// Both modes' promise for reminders: every probe ticked on, and no tick
/// was lost (each acknowledged tick the one after the last, `missed`
/// counted).
fn no_tick_lost(o: &Ending) {
    for (id, b) in &o.beats {
        assert!(b.gaps.is_empty(), "{id}: ticks lost: {b:?}");
        assert!(b.count >= 2, "{id}: {b:?}");
        // Passivated between ticks (idle 300 ms, period 500 ms): its
        // ticks activated it again and again.
        let activations = o
            .events
            .iter()
            .filter(|e| &e.id == id && e.phase == mesh::history::Phase::Activated)
            .count();
        assert!(
            activations >= 2,
            "{id}: activated {activations} times: {b:?}"
        );
    }
}

/// Strong mode's promise for reminders: no two nodes ran a tick of one
/// probe at once (the ticks' logged intervals).
fn no_tick_twice_at_once(o: &Ending) {
    let mut by_id: std::collections::BTreeMap<&str, Vec<&Logged>> =
        std::collections::BTreeMap::new();
    for t in &o.ticks {
        by_id.entry(&t.0).or_default().push(t);
    }
    for (id, ticks) in by_id {
        for (i, a) in ticks.iter().enumerate() {
            for b in &ticks[i + 1..] {
                let overlap = a.3 < b.4 && b.3 < a.4;
                assert!(
                    !(overlap && a.2 != b.2),
                    "{id}: ticks at once on two nodes: {a:?} and {b:?}"
                );
            }
        }
    }
}

/// SIGSTOP the owner of some accounts until its session expired and
/// another node took one of its shards, then SIGCONT, under deposits.
async fn hung_owner(strong: bool, test: &str) -> (Ending, Option<Result<u64, Error>>) {
    let scene = Scene::start(test, strong, Duration::from_secs(2)).await;
    let (consul, load, driver) = (&scene.consul, &scene.load, &scene.driver);
    let key = scene.lock_key(&scene.accounts_on("p-1")[0]);
    let old = if strong {
        Some(until_held(consul, load, &key, "p-1").await)
    } else {
        None
    };
    scene.procs[1].signal("STOP");
    members(driver, |m| !m.contains("p-1")).await;
    if strong {
        // Until another node holds one of the hung node's shards: its
        // session expired (no sooner than a TTL after its last renew) and
        // the lock-delay passed.
        within(STEP, async {
            loop {
                load.more(20).await;
                if holder(consul, &key).is_some_and(|h| Some(&h) != old.as_ref()) {
                    return;
                }
            }
        })
        .await;
    } else {
        load.more(600).await;
    }
    scene.procs[1].signal("CONT");
    members(driver, |m| m.len() == 4).await;
    load.more(600).await;
    // What the paused node's last write would have been fenced with.
    let stale_write = match old {
        Some(session) => Some(
            adapter(consul, 3)
                .fenced_put(
                    &Fence::new(key.clone(), session, 1),
                    &format!("accounts/{test}-probe"),
                    b"stale",
                )
                .await,
        ),
        None => None,
    };
    (scene.end().await, stale_write)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_owner_in_strong_mode_serves_nothing_out_of_turn_and_its_stale_write_is_refused() {
    let (o, stale_write) = hung_owner(true, "hung-strong").await;
    in_turn_and_nothing_lost(&o);
    match stale_write {
        Some(Err(Error::Fenced { .. })) => {}
        other => panic!("the stale fenced write was not refused: {other:?}"),
    }
    // Calls to the hung node end at their deadline; nothing else fails.
    for f in &o.failures {
        assert!(f.contains("timed out") || f.contains("down"), "{f}");
    }
}

/// Issue 22: the hung owner again, its balances `#[state]` in a real
/// PostgreSQL. Strong mode: nothing served out of turn, no acknowledged
/// deposit lost, and the store itself refuses a write carrying the hung
/// node's fencing token once the new owner has claimed the row (before
/// the new owner's own first write would be enough too: the claim is what
/// raises the row's fence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_owner_on_postgres_in_strong_mode_loses_nothing_and_the_store_refuses_its_token() {
    let test = "hung-pg-strong";
    let scene = Scene::start_with(
        test,
        true,
        Duration::from_secs(2),
        Some(pg::Server::start()),
    )
    .await;
    let (consul, load, driver) = (&scene.consul, &scene.load, &scene.driver);
    let id = scene.accounts_on("p-1").swap_remove(0);
    let key = scene.lock_key(&id);
    let old = until_held(consul, load, &key, "p-1").await;
    let config = scene.pg.as_ref().expect("a server").config();
    let store = PgStore::new(&config).expect("a store");
    let row = StateKey::new("bank/StateAccount", id.as_str());
    load.more(100).await;
    // The hung owner's token: the fence its activation claimed the row with.
    let token = fence_of(&config, &row).await;
    scene.procs[1].signal("STOP");
    members(driver, |m| !m.contains("p-1")).await;
    within(STEP, async {
        loop {
            load.more(20).await;
            if holder(consul, &key).is_some_and(|h| h != old)
                && fence_of(&config, &row).await > token
            {
                return;
            }
        }
    })
    .await;
    scene.procs[1].signal("CONT");
    members(driver, |m| m.len() == 4).await;
    load.more(600).await;
    // The hung node's write, as it would have been sent: on the current
    // version, with its token. The store refuses it on the fence alone.
    let version = store.load(&row, None).await.expect("a row").version;
    let stale = store.save(&row, version, Some(token), Some(b"stale")).await;
    assert!(
        matches!(stale, Err(StoreError::Fenced { .. })),
        "the store took a write with the hung owner's token {token}: {stale:?}"
    );
    let o = scene.end().await;
    in_turn_and_nothing_lost(&o);
    for f in &o.failures {
        assert!(f.contains("timed out") || f.contains("down"), "{f}");
    }
}

/// The same hung owner in eventual mode on PostgreSQL: the resumed node's
/// stale activations write on versions the store has moved past, so their
/// calls fail with a conflict, and no acknowledged deposit is lost (with
/// balances in Consul KV the same run loses about a third of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_owner_on_postgres_in_eventual_mode_fails_calls_on_conflicts_and_loses_nothing() {
    let test = "hung-pg-eventual";
    let scene = Scene::start_with(
        test,
        false,
        Duration::from_secs(2),
        Some(pg::Server::start()),
    )
    .await;
    let (load, driver) = (&scene.load, &scene.driver);
    scene.procs[1].signal("STOP");
    members(driver, |m| !m.contains("p-1")).await;
    load.more(600).await;
    scene.procs[1].signal("CONT");
    members(driver, |m| m.len() == 4).await;
    load.more(600).await;
    let o = scene.end().await;
    let conflicts = o.failures.iter().filter(|f| f.contains("conflict")).count();
    println!(
        "{test}: {} failed calls, {conflicts} of them on a conflict",
        o.failures.len()
    );
    nothing_lost(&o);
}

/// The fence stored in `row` (0 without one).
async fn fence_of(config: &str, row: &StateKey) -> u64 {
    let (client, conn) = tokio_postgres::connect(config, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let got = client
        .query_opt(
            "SELECT fence FROM mesh_state WHERE kind = $1 AND id = $2",
            &[&&*row.kind, &row.id.as_bytes()],
        )
        .await
        .expect("select");
    got.map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_owner_in_eventual_mode_is_flagged_by_the_checkers() {
    let (o, _) = hung_owner(false, "hung-eventual").await;
    assert!(
        !o.found.is_empty() || !o.wrong.is_empty(),
        "the checkers found nothing in eventual mode: they prove nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_hands_its_shards_over_after_its_session_expires() {
    let o = killed_owner("killed-strong", true, None).await;
    in_turn_and_nothing_lost(&o);
}

/// Issue 22: SIGKILL of an owner with the balances `#[state]` in a real
/// PostgreSQL, strong mode: its shards come back after its session
/// expired, the new owners load what it wrote (its last acknowledged
/// writes were durable before their replies), nothing is served out of
/// turn and no acknowledged deposit is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_on_postgres_in_strong_mode_loses_no_deposit() {
    let o = killed_owner("killed-pg-strong", true, Some(pg::Server::start())).await;
    in_turn_and_nothing_lost(&o);
}

/// The same in eventual mode: the survivors take the killed node's
/// accounts as soon as its health check fails, and no acknowledged
/// deposit is lost. A call may fail on a conflict: the killed node's last
/// write, already sent, can commit after a survivor loaded the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_on_postgres_in_eventual_mode_loses_no_deposit() {
    let o = killed_owner("killed-pg-eventual", false, Some(pg::Server::start())).await;
    nothing_lost(&o);
}

/// SIGKILL p-1 under deposits (with `pg`, into `StateAccount`s there);
/// in strong mode, waits for one of its shards to be locked by another
/// node and prints the failover time next to its bound. Only deposits in
/// flight on the killed node fail (their outcome is unknown: counted as
/// attempted, not acknowledged).
async fn killed_owner(test: &str, strong: bool, pg: Option<pg::Server>) -> Ending {
    let scene = Scene::start_with(test, strong, Duration::from_secs(5), pg).await;
    let (consul, load) = (&scene.consul, &scene.load);
    let on_p1 = scene.accounts_on("p-1");
    println!("p-1's accounts: {on_p1:?}");
    let key = scene.lock_key(on_p1.first().expect("an account on p-1"));
    let old = if strong {
        Some(until_held(consul, load, &key, "p-1").await)
    } else {
        None
    };
    scene.procs[1].signal("KILL");
    let killed = Instant::now();
    println!("killed at {:?}", std::time::SystemTime::now());
    if strong {
        within(STEP, async {
            loop {
                load.more(10).await;
                if holder(consul, &key).is_some_and(|h| Some(&h) != old.as_ref()) {
                    return;
                }
            }
        })
        .await;
        let strong = Strong::new().time_scale(SCALE);
        println!(
            "{test}: failover after SIGKILL: {:?} (bound 2 x TTL + lock-delay + retry = {:?}; with the session bound to the health check it would be check TTL + lock-delay + retry = {:?}; as the agent counts time)",
            killed.elapsed(),
            strong.failover_bound(),
            strong
                .bind_to_health_check(true)
                .failover_bound_with_check(CHECK_TTL),
        );
    } else {
        members(&scene.driver, |m| !m.contains("p-1")).await;
        println!(
            "{test}: p-1 out of the driver's membership {:?} after SIGKILL",
            killed.elapsed()
        );
    }
    load.more(300).await;
    let o = scene.end().await;
    println!("{test}: {} failed calls", o.failures.len());
    for f in &o.failures {
        // In eventual mode a write the killed node sent just before its
        // death can still commit after a survivor loaded the row (no lease
        // orders them): the survivor's write then fails on a conflict,
        // which is the compare-and-set doing its job, never a lost deposit.
        let raced = !strong && f.contains("conflict");
        assert!(f.contains("p-1") || f.contains("down") || raced, "{f}");
    }
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_in_strong_mode_loses_no_call() {
    let o = rolling_restart("rolling-strong", true, None).await;
    no_call_failed(&o);
}

/// Issue 22: the same rolling restart with the balances `#[state]` in a
/// real PostgreSQL: each node drains (its last writes done), releases its
/// shards, and the new owners load what it wrote; no call fails and no
/// acknowledged deposit is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_on_postgres_in_strong_mode_loses_no_call_and_no_deposit() {
    let o = rolling_restart("rolling-pg-strong", true, Some(pg::Server::start())).await;
    no_call_failed(&o);
}

/// The same in eventual mode: a leaving node's last writes and its
/// successor's first may race (no lease orders them), so a call may fail
/// on a conflict, and no acknowledged deposit is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_on_postgres_in_eventual_mode_loses_no_deposit() {
    let o = rolling_restart("rolling-pg-eventual", false, Some(pg::Server::start())).await;
    let conflicts = o.failures.iter().filter(|f| f.contains("conflict")).count();
    println!(
        "rolling-pg-eventual: {} failed calls, {conflicts} on a conflict",
        o.failures.len()
    );
    nothing_lost(&o);
    for f in &o.failures {
        assert!(f.contains("conflict"), "{f}");
    }
}

/// Strong mode's promise: no activation out of turn (the merged
/// histories), and nothing lost.
fn in_turn_and_nothing_lost(o: &Ending) {
    assert!(o.found.is_empty(), "{:#?}", o.found);
    no_tick_twice_at_once(o);
    nothing_lost(o);
}

/// Both modes' promise: no acknowledged deposit lost and none stored that
/// was not attempted (the balances).
fn nothing_lost(o: &Ending) {
    assert!(
        o.wrong.is_empty(),
        "(id, acked, stored, attempted): {:?}",
        o.wrong
    );
    no_tick_lost(o);
}

/// A strong rolling restart's promise: that, and no call failed.
fn no_call_failed(o: &Ending) {
    in_turn_and_nothing_lost(o);
    assert!(
        o.failures.is_empty(),
        "{} failed: {:?}",
        o.failures.len(),
        &o.failures[..o.failures.len().min(10)]
    );
}

/// TERM each node in turn and start it again, under deposits (with `pg`,
/// into `StateAccount`s there); what the checkers found.
async fn rolling_restart(test: &str, strong: bool, pg: Option<pg::Server>) -> Ending {
    // Every node leaves cleanly: lenient detection (see `Detection`).
    let mut scene = Scene::start_lenient(test, strong, Duration::from_secs(5), pg).await;
    let conn = scene.pg.as_ref().map(pg::Server::config);
    for i in 0..scene.procs.len() {
        let name = scene.procs[i].name.clone();
        println!("{:?} TERM {name}", Instant::now());
        scene.procs[i].signal("TERM");
        assert!(scene.procs[i].exited(STEP).await, "{name} left cleanly");
        members(&scene.driver, |m| !m.contains(&name)).await;
        scene.load.more(200).await;
        println!("{:?} {name} starts again", Instant::now());
        let lenient = Detection::Lenient;
        scene.procs[i] = spawn_args(
            &scene.consul,
            i,
            strong,
            &scene.dir,
            conn.as_deref(),
            lenient,
            &[],
        )
        .await;
        members(&scene.driver, |m| m.len() == 4).await;
        scene.load.more(300).await;
    }
    scene.end().await
}

/// Runs test `name` of this binary again, alone, in a network namespace
/// of its own (`unshare --net`, loopback up), where it may change
/// iptables; fails if it fails.
async fn in_own_namespace(name: &str, marker: &str) {
    require("unshare", "util-linux");
    require("ip", "iproute2");
    require("iptables", "iptables");
    let exe = std::env::current_exe().expect("test binary");
    let script = format!(
        "ip link set lo up && exec {} --exact {name} --nocapture --test-threads 1",
        exe.display()
    );
    let out = within(
        Duration::from_secs(120),
        Command::new("unshare")
            .args(["--net", "--", "sh", "-c", &script])
            .env("MESH_STRONG_NETNS", "1")
            .output(),
    )
    .await
    .expect("run the test in a new network namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "in its namespace:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(marker), "{stdout}");
}

fn iptables(args: &[&str]) {
    let status = std::process::Command::new("iptables")
        .args(args)
        .status()
        .expect("run iptables");
    assert!(status.success(), "iptables {args:?} failed");
}

/// Wall-clock time of a tokio instant, from one pair read together.
fn wall(at: Instant, pair: (Instant, std::time::SystemTime)) -> std::time::SystemTime {
    if at >= pair.0 {
        pair.1 + (at - pair.0)
    } else {
        pair.1 - (pair.0 - at)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_consul_stops_serving_within_its_lease_and_is_not_replaced_before() {
    let test =
        "a_node_cut_off_from_consul_stops_serving_within_its_lease_and_is_not_replaced_before";
    if std::env::var("MESH_STRONG_NETNS").is_err() {
        return in_own_namespace(test, "cut off from consul:").await;
    }
    let scene = Scene::start("cutoff-strong", true, Duration::from_millis(1500)).await;
    let (consul, load, driver, dir) = (&scene.consul, &scene.load, &scene.driver, &scene.dir);
    let key = scene.lock_key(&scene.accounts_on("p-1")[0]);
    let session = until_held(consul, load, &key, "p-1").await;
    // The accounts whose shard p-1 holds now.
    let p1_accounts: Vec<String> = (0..ACCOUNTS)
        .map(|a| format!("cutoff-strong-{a}"))
        .filter(|id| holder(consul, &scene.lock_key(id)).as_ref() == Some(&session))
        .collect();
    // p-1 serves its accounts (its shards were handed over to it).
    within(STEP, async {
        loop {
            load.more(20).await;
            let serving = histories(dir).iter().any(|e| {
                e.node == "p-1"
                    && e.phase == mesh::history::Phase::Served
                    && p1_accounts.contains(&e.id)
            });
            if serving {
                return;
            }
        }
    })
    .await;
    // p-1 can no longer reach its agent; its peers still reach it.
    let port = consul
        .url(1)
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    iptables(&["-A", "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"]);
    let pair = (Instant::now(), std::time::SystemTime::now());
    // The accounts whose shard p-1 held at the cut: read after it, since
    // from then on p-1 cannot unlock anything (under load its shards may
    // have moved in between).
    let p1_accounts: Vec<String> = p1_accounts
        .into_iter()
        .filter(|id| holder(consul, &scene.lock_key(id)).as_ref() == Some(&session))
        .collect();
    assert!(!p1_accounts.is_empty(), "p-1 held no account at the cut");
    // Its peers see its health check fail and route around it; calls it
    // still holds end at their deadline; its accounts are activated again
    // elsewhere once its session expired.
    members(driver, |m| !m.contains("p-1")).await;
    within(STEP, async {
        loop {
            load.more(20).await;
            let taken = histories(dir).iter().any(|e| {
                e.node != "p-1"
                    && e.phase == mesh::history::Phase::Activated
                    && p1_accounts.contains(&e.id)
            });
            if taken {
                return;
            }
        }
    })
    .await;
    load.more(300).await;
    let healed = Instant::now();
    iptables(&["-F", "INPUT"]);
    let consul = scene.consul.clone();
    let Ending {
        found,
        wrong,
        failures,
        events,
        ..
    } = scene.end().await;
    // The last renew (or create, which renews too) of p-1's session the
    // agent received, as wall-clock time.
    let last_renew = consul
        .requests(1, "session/renew")
        .into_iter()
        .chain(consul.requests(1, "session/create"))
        .filter(|t| *t < healed)
        .max()
        .map(|t| wall(t, pair))
        .expect("p-1 created its session");
    let strong = Strong::new().time_scale(SCALE);
    let validity =
        Duration::from_secs(10).mul_f64(SCALE * 0.99) - Duration::from_millis(500).mul_f64(SCALE);
    let ttl = Duration::from_secs(10).mul_f64(SCALE);
    let last_served = events
        .iter()
        .filter(|e| e.node == "p-1" && e.phase == mesh::history::Phase::Served)
        .map(|e| e.at)
        .filter(|at| *at < wall(healed, pair))
        .max()
        .expect("p-1 served");
    let after = |t: std::time::SystemTime| {
        t.duration_since(last_renew)
            .map(|d| format!("+{d:?}"))
            .unwrap_or_else(|e| format!("-{:?}", e.duration()))
    };
    let first = events
        .iter()
        .filter(|e| {
            e.node != "p-1"
                && e.phase == mesh::history::Phase::Activated
                && p1_accounts.contains(&e.id)
                && e.at > pair.1
        })
        .min_by_key(|e| e.at)
        .expect("p-1's accounts were taken over");
    let taken_over = first.at;
    if std::env::var("MESH_DEBUG_CUTOFF").is_ok() {
        println!("first takeover: {first:?}");
        let p1: Vec<String> = events
            .iter()
            .filter(|e| {
                e.node == "p-1" && e.id == first.id && e.phase != mesh::history::Phase::Served
            })
            .map(|e| format!("{:?} {} tok {}", e.phase, after(e.at), e.token))
            .collect();
        println!("p-1 on {}: {p1:?}", first.id);
        let reqs: Vec<String> = consul
            .log()
            .iter()
            .filter(|l| l.agent == consul.node(1) && l.path.starts_with("session/"))
            .map(|l| {
                format!(
                    "{} {}",
                    l.path.split('/').nth(1).unwrap_or(""),
                    after(wall(l.at, pair))
                )
            })
            .collect();
        println!("p-1 session requests: {reqs:?}");
    }
    println!(
        "cut off from consul: last renew received at 0, p-1's last dispatch {}, first takeover {} (lease validity {validity:?}, session TTL {ttl:?}, failover bound {:?})",
        after(last_served),
        after(taken_over),
        strong.failover_bound()
    );
    assert!(found.is_empty(), "{found:#?}");
    assert!(
        wrong.is_empty(),
        "(id, acked, stored, attempted): {wrong:?}"
    );
    // It stops serving within its lease, counted from the last renew that
    // got through (sent no later than received), with 5 ms for reading
    // the two clocks apart.
    assert!(
        last_served <= last_renew + validity + Duration::from_millis(5),
        "p-1 served {} after its last renew",
        after(last_served)
    );
    // No takeover before its session could expire: a TTL after the last
    // renew the agent received.
    assert!(
        taken_over >= last_renew + ttl,
        "taken over {} after the last renew",
        after(taken_over)
    );
    for f in &failures {
        assert!(f.contains("timed out") || f.contains("down"), "{f}");
    }
}

/// Issue 22: a partition on PostgreSQL, strong mode. p-1 is cut off from
/// its Consul agent (iptables, in a network namespace of the test's own)
/// while it serves deposits into `StateAccount`s, until its accounts are
/// taken over by the others (after its session expired), then healed; p-1
/// comes back and takes its shards again. Nothing is served out of turn,
/// no acknowledged deposit is lost, and only calls in flight to p-1 fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_on_postgres_in_strong_mode_loses_no_deposit() {
    let name = "a_partition_on_postgres_in_strong_mode_loses_no_deposit";
    let Some(o) = partition(name, "cut-pg-strong", true).await else {
        return;
    };
    in_turn_and_nothing_lost(&o);
    for f in &o.failures {
        assert!(f.contains("timed out") || f.contains("down"), "{f}");
    }
}

/// The same partition in eventual mode: the others take p-1's accounts
/// as soon as its health check fails, and after the heal its activations
/// that lived through the cut hold stale versions: their writes are
/// refused (a conflict fails the call, the activation is dropped, the
/// next call loads afresh). No acknowledged deposit is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_on_postgres_in_eventual_mode_loses_no_deposit() {
    let name = "a_partition_on_postgres_in_eventual_mode_loses_no_deposit";
    let Some(o) = partition(name, "cut-pg-eventual", false).await else {
        return;
    };
    nothing_lost(&o);
}

/// Runs test `name` in a network namespace of its own; there, cuts p-1
/// off from its Consul agent under deposits into `StateAccount`s in a
/// real PostgreSQL (reached over its Unix socket, which the cut leaves
/// alone), until another node activated one of p-1's accounts, heals the
/// cut, lets p-1 rejoin, and ends the scene. `None` in the outer process.
async fn partition(name: &str, test: &str, strong: bool) -> Option<Ending> {
    if std::env::var("MESH_STRONG_NETNS").is_err() {
        in_own_namespace(name, "partition healed:").await;
        return None;
    }
    let pg = pg::Server::start();
    let scene = Scene::start_with(test, strong, Duration::from_millis(1500), Some(pg)).await;
    let (load, driver, dir) = (&scene.load, &scene.driver, &scene.dir);
    let p1 = scene.accounts_on("p-1");
    // Whether the histories show one of p-1's accounts in `phase` on p-1
    // (`on_p1`) or elsewhere.
    let seen = |phase: mesh::history::Phase, on_p1: bool| {
        histories(dir)
            .iter()
            .any(|e| e.phase == phase && (e.node == "p-1") == on_p1 && p1.contains(&e.id))
    };
    within(STEP, async {
        while !seen(mesh::history::Phase::Served, true) {
            load.more(20).await;
        }
    })
    .await;
    let port = scene
        .consul
        .url(1)
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    iptables(&["-A", "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"]);
    let cut = Instant::now();
    members(driver, |m| !m.contains("p-1")).await;
    within(STEP, async {
        while !seen(mesh::history::Phase::Activated, false) {
            load.more(20).await;
        }
    })
    .await;
    let taken = cut.elapsed();
    load.more(300).await;
    iptables(&["-F", "INPUT"]);
    members(driver, |m| m.len() == 4).await;
    load.more(600).await;
    let o = scene.end().await;
    let conflicts = o.failures.iter().filter(|f| f.contains("conflict")).count();
    println!(
        "partition healed: {test}: p-1's accounts activated elsewhere {taken:?} after the cut; {} failed calls, {conflicts} on a conflict",
        o.failures.len()
    );
    Some(o)
}

/// Issue 24, point 4: every node of a strong cluster stopped at once
/// (SIGTERM to all three processes, as a terminal's Ctrl-C or a
/// `docker compose down` does), after serving deposits. Each leaves
/// cleanly and exits 0, well within its 30 s shutdown timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_strong_cluster_stopped_at_once_exits_promptly() {
    let scene = Scene::start("all-stop", true, Duration::from_secs(5)).await;
    let Scene {
        dir,
        mut procs,
        driver,
        load,
        ..
    } = scene;
    // (The deposits stop first: once no node hosts `Account`, the
    // driver's calls fail at once and its depositors would spin.)
    let _ = load.finish().await;
    driver.shutdown().await.expect("the driver leaves");
    let started = Instant::now();
    for p in &procs {
        p.signal("TERM");
    }
    let mut exits = Vec::new();
    for p in &mut procs {
        let ok = p.exited(STEP * 2).await;
        exits.push((p.name.clone(), ok, started.elapsed()));
    }
    println!("exits after SIGTERM to all: {exits:?}");
    let _ = std::fs::remove_dir_all(&dir);
    for (name, ok, at) in exits {
        assert!(ok, "{name} did not exit cleanly");
        assert!(at < Duration::from_secs(10), "{name} took {at:?}");
    }
}

/// Issue 23: a whole cluster (on PostgreSQL) stopped for a while and
/// started again. Nine reminder probes ticking every second, three per
/// missed-tick policy, miss four ticks or more each; the restarted nodes
/// fire them per policy (`skip`: none of the missed, a jump in the
/// schedule; `once`: one tick for them all; `burst:2`: the last two,
/// the older dropped). Twelve more, every 500 ms, fire each of their
/// missed ticks: about a hundred at once, which the nodes fire within
/// their budget (`--reminder-budget 20`: no more than 20 ticks in a
/// node's first second, 40 in its first two; unthrottled, the first node
/// up fires them all in its first second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_stopped_for_a_while_fires_missed_ticks_per_policy_within_its_budget() {
    const BUDGET: usize = 20;
    let scene = Scene::start_full(
        "outage",
        false,
        Duration::from_secs(5),
        Some(pg::Server::start()),
        false,
        Detection::Fast,
    )
    .await;
    let Scene {
        dir,
        consul,
        mut procs,
        driver,
        load,
        pg,
        ..
    } = scene;
    let conn = pg.as_ref().map(pg::Server::config);
    let _ = load.finish().await;
    let policies = ["skip", "once", "burst:2"];
    // Nine at 1 s, three per policy; twelve at 500 ms that fire every
    // missed tick (the bulk of the catch-up).
    let ids: Vec<(String, &str)> = (0..9)
        .map(|i| (format!("outage-{i}"), policies[i % 3]))
        .chain((9..21).map(|i| (format!("outage-{i}"), "burst:1000")))
        .collect();
    for (id, missed) in &ids {
        let every_ms = if *missed == "burst:1000" { 500 } else { 1000 };
        let arm = Arm {
            every_ms,
            missed: (*missed).into(),
        };
        driver.call::<Beacon, _>(id, arm).await.unwrap().unwrap();
    }
    let report = |ids: Vec<(String, &'static str)>, since: u64| {
        let driver = driver.clone();
        async move {
            within(STEP, async {
                loop {
                    let mut out = Vec::new();
                    for (id, missed) in &ids {
                        match driver.call::<Beacon, _>(id, Report).await {
                            Ok(b) if b.last_due >= since => out.push((id.clone(), *missed, b)),
                            _ => break,
                        }
                    }
                    if out.len() == ids.len() {
                        return out;
                    }
                    tokio::task::yield_now().await;
                }
            })
            .await
        }
    };
    report(ids.clone(), 1).await;
    for p in &procs {
        p.signal("TERM");
    }
    for p in &mut procs {
        assert!(p.exited(STEP).await, "{} left cleanly", p.name);
    }
    let stopped = unix_ms();
    // The outage itself: no node runs, so no event marks its end; its
    // length is the scenario (four periods or more missed, counting
    // from the SIGTERMs).
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let budget = BUDGET.to_string();
    let restarting = unix_ms();
    for (i, p) in procs.iter_mut().enumerate() {
        *p = spawn_args(
            &consul,
            i,
            false,
            &dir,
            conn.as_deref(),
            Detection::Fast,
            &["--reminder-budget", &budget],
        )
        .await;
    }
    let restarted = unix_ms();
    members(&driver, |m| m.len() == 4).await;
    let after = report(ids.clone(), restarted + 1000).await;
    let logs: Vec<_> = (0..3).map(|i| dir.join(format!("p-{i}.ticks"))).collect();
    let ticks: Vec<_> = TickLog::read(&logs)
        .into_iter()
        .filter(|t| t.3 >= restarting)
        .collect();
    driver.shutdown().await.expect("the driver leaves");
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "outage: stopped at {stopped}, restarted at {restarted} (+{} ms)",
        restarted - stopped
    );
    for (id, missed, b) in &after {
        println!("  {id} {missed}: {b:?}");
        match *missed {
            "skip" => {
                assert_eq!(b.most_missed, 0, "{id}: skip fires none of the missed");
                assert!(!b.gaps.is_empty(), "{id}: skip jumps over the missed");
            }
            "once" => {
                assert!(b.gaps.is_empty(), "{id}: {b:?}");
                assert!(b.most_missed >= 2, "{id}: one tick for the missed: {b:?}");
            }
            "burst:2" => {
                assert!(b.gaps.is_empty(), "{id}: {b:?}");
                assert!(b.most_missed >= 1, "{id}: the older ones dropped: {b:?}");
            }
            _ => {
                assert!(b.gaps.is_empty(), "{id}: every missed tick fires: {b:?}");
                assert_eq!(b.most_missed, 0, "{id}: none dropped: {b:?}");
            }
        }
    }
    for node in ["p-0", "p-1", "p-2"] {
        let mut starts: Vec<u64> = ticks.iter().filter(|t| t.2 == node).map(|t| t.3).collect();
        starts.sort_unstable();
        let Some(&first) = starts.first() else {
            continue;
        };
        let in_1s = starts.iter().filter(|&&t| t < first + 1000).count();
        let in_2s = starts.iter().filter(|&&t| t < first + 2000).count();
        println!("  {node}: {} ticks since the restart, {in_1s} in its first second, {in_2s} in its first two", starts.len());
        // The budget counts sends; the log has handler starts, which an
        // activation's load delays by a varying few milliseconds: a tick
        // or two sent just before a window may start in it.
        assert!(
            in_1s <= BUDGET + 3,
            "{node}: {in_1s} ticks in its first second, over its budget"
        );
        assert!(
            in_2s <= 2 * BUDGET + 3,
            "{node}: {in_2s} ticks in its first two seconds, over its budget"
        );
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
