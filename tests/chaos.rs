//! Chaos suite: real node processes (the cluster examples) on loopback
//! under steady load from this test, which joins as a node hosting
//! nothing. Every node records its activations (`--history`), and the
//! merged histories are checked for duplicate activations
//! (`mesh::history::overlaps`).
//!
//! - a rolling restart (SIGINT or SIGTERM: `node.shutdown()`, then a new
//!   process of the same name), with static seeds and with Consul (the test agent,
//!   restarted and taken down during the load too): no call fails;
//! - a hung node (SIGSTOP, later SIGCONT): dropped within the failure
//!   timeout plus one heartbeat (plus scheduling slack), calls to it end
//!   at their deadline, it rejoins, and no duplicate activation is left;
//! - a network partition, made with iptables inside a network namespace
//!   this test creates (`unshare --net`), every node on its own address:
//!   the chaos example's partition phase, which fails unless the cluster
//!   converges with no duplicate left after the heal.
//!
//! Needs the examples built (`cargo test` builds them).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh::consul::Consul;
use mesh::history::Overlap;
use mesh::prelude::*;
use mesh::Membership;
use mesh_testkit::chaos::{scratch, settled, summary, Load, Outcome, STEP};
use mesh_testkit::consul_agent::TestConsul;
use mesh_testkit::consul_catalog::TimeScale;
use mesh_testkit::fixture::wait_membership;
use mesh_testkit::procs::{example_binary, Proc};
use mesh_testkit::{require, within};
use tokio::process::Command;
use tokio::time::Instant;

const COOKIE: &str = mesh_testkit::COOKIE;
/// The nodes' heartbeat; their failure timeout is 4 of them (the
/// examples' rule), the driver's too.
const HEARTBEAT: Duration = Duration::from_millis(100);
const FAILURE: Duration = Duration::from_millis(400);

/// How the processes find each other.
#[derive(Clone)]
enum Mode {
    Seeds,
    /// The test agent, one simulated agent per node (the driver's last).
    Consul(Arc<TestConsul>),
}

async fn spawn(mode: &Mode, i: usize, seeds: &[&str], dir: &Path) -> Proc {
    let name = format!("p-{i}");
    let history = dir.join(format!("{name}.history"));
    let mut cmd = match mode {
        Mode::Seeds => {
            let mut cmd = Command::new(example_binary("cluster"));
            if !seeds.is_empty() {
                cmd.args(["--seeds", &seeds.join(",")]);
            }
            cmd
        }
        Mode::Consul(consul) => {
            let mut cmd = Command::new(example_binary("consul_mesh"));
            cmd.args(["--consul", &consul.url(i)]);
            cmd
        }
    };
    cmd.args(["--name", &name, "--listen", "127.0.0.1:0"])
        .args(["--capabilities", "game", "--cluster", "chaos"])
        .args(["--heartbeat-ms", &HEARTBEAT.as_millis().to_string()])
        .arg("--history")
        .arg(&history);
    Proc::spawn(cmd, &name, COOKIE).await
}

async fn driver(mode: &Mode, procs: &[Proc]) -> Node {
    let b = Node::builder()
        .id("driver")
        .default_node(false)
        .cluster("chaos")
        .cookie(COOKIE)
        .listen("127.0.0.1:0")
        .heartbeat(HEARTBEAT, FAILURE);
    let b = match mode {
        Mode::Seeds => b.seeds(procs.iter().map(|p| p.addr.clone())),
        Mode::Consul(consul) => b.discovery(
            Consul::new()
                .address(consul.url(procs.len()))
                .heartbeat(HEARTBEAT)
                .wait(Duration::from_secs(5)),
        ),
    };
    b.start().await.expect("the driver starts")
}

async fn members(node: &Node, f: impl Fn(&Membership) -> bool) {
    wait_membership(node, STEP, f).await;
}

fn report(what: &str, outcomes: &[Outcome], found: &[Overlap]) {
    println!("{what}: {}", summary(outcomes, found));
}

async fn rolling_restart(mode: Mode, test: &str) {
    let dir = scratch(test);
    let mut procs = Vec::new();
    for i in 0..3 {
        let seed = procs.first().map(|p: &Proc| p.addr.clone());
        let seeds: Vec<&str> = seed.iter().map(String::as_str).collect();
        procs.push(spawn(&mode, i, &seeds, &dir).await);
    }
    let driver = driver(&mode, &procs).await;
    members(&driver, |m| m.len() == 4).await;
    let load = Load::start(&driver, Duration::from_secs(2));
    load.more(1_000).await;
    if let Mode::Consul(consul) = &mode {
        // The agents fail under load: the nodes keep their view and serve.
        consul.restart_agent(0);
        load.more(300).await;
        consul.stop_agent(1);
        load.more(500).await;
        consul.start_agent(1).await;
        load.more(300).await;
    }
    for i in 0..3 {
        let name = procs[i].name.clone();
        // Ctrl-C, or what systemd and Kubernetes send: both leave cleanly.
        procs[i].signal(if i == 1 { "TERM" } else { "INT" });
        assert!(procs[i].exited(STEP).await, "{name} left cleanly");
        members(&driver, |m| !m.contains(&name)).await;
        load.more(300).await;
        let seed = procs[(i + 1) % 3].addr.clone();
        procs[i] = spawn(&mode, i, &[&seed], &dir).await;
        members(&driver, |m| m.len() == 4).await;
        load.more(500).await;
    }
    let found = settled(&dir, &load, Duration::from_secs(10)).await;
    let outcomes = load.finish().await;
    report(test, &outcomes, &found);
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(10)]
    );
    driver.shutdown().await.unwrap();
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_seeds_loses_no_call() {
    rolling_restart(Mode::Seeds, "rolling-seeds").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_consul_and_failing_agents_loses_no_call() {
    let consul = TestConsul::start(
        4,
        TimeScale {
            ttl: 1.0,
            deregister: 0.01,
        },
    )
    .await;
    rolling_restart(Mode::Consul(Arc::new(consul)), "rolling-consul").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_is_dropped_on_time_and_rejoins_without_duplicates() {
    let dir = scratch("sigstop");
    let first = spawn(&Mode::Seeds, 0, &[], &dir).await;
    let seed = first.addr.clone();
    let procs = vec![
        first,
        spawn(&Mode::Seeds, 1, &[&seed], &dir).await,
        spawn(&Mode::Seeds, 2, &[&seed], &dir).await,
    ];
    let driver = driver(&Mode::Seeds, &procs).await;
    members(&driver, |m| m.len() == 4).await;
    let deadline = Duration::from_millis(800);
    let load = Load::start(&driver, deadline);
    load.more(1_000).await;
    procs[1].signal("STOP");
    let stopped = Instant::now();
    members(&driver, |m| !m.contains("p-1")).await;
    let detection = stopped.elapsed();
    load.more(1_000).await;
    procs[1].signal("CONT");
    members(&driver, |m| m.len() == 4).await;
    load.more(1_000).await;
    let found = settled(&dir, &load, Duration::from_secs(10)).await;
    let outcomes = load.finish().await;
    report("sigstop", &outcomes, &found);
    println!("hung node dropped after {detection:?}");
    // The bound: the failure timeout plus one heartbeat, plus slack for a
    // loaded 2-core machine scheduling three processes and the test.
    assert!(
        detection <= FAILURE + HEARTBEAT + Duration::from_millis(400),
        "dropped after {detection:?}"
    );
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    assert!(
        slowest < deadline + Duration::from_millis(400),
        "a call took {slowest:?}"
    );
    // Only calls that involve the hung node fail (its actors, or a call
    // forwarded to it), and only as timeouts or as the node being down.
    for o in outcomes.iter().filter(|o| o.result.is_err()) {
        let involved = o.owner == "p-1"
            || matches!(&o.result, Err(Error::NodeDown { node, .. }) if node == "p-1");
        assert!(involved, "{o:?}");
        assert!(
            matches!(
                o.result,
                Err(Error::Timeout { .. } | Error::NodeDown { .. })
            ),
            "{o:?}"
        );
    }
    driver.shutdown().await.unwrap();
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_in_its_own_namespace_heals_with_no_duplicate_left() {
    require("unshare", "util-linux");
    require("ip", "iproute2");
    require("iptables", "iptables");
    let chaos = example_binary("chaos");
    let script = format!(
        "ip link set lo up && MESH_CHAOS_NETNS=1 exec {} --phases partition --calls 1000",
        chaos.display()
    );
    let out = within(
        Duration::from_secs(120),
        Command::new("unshare")
            .args(["--net", "--", "sh", "-c", &script])
            .output(),
    )
    .await
    .expect("run the chaos example in a new network namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the partition run failed:\n{stdout}\n{stderr}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| partition p-0"))
        .expect("the partition row");
    assert!(!row.contains("still alive"), "{row}");
    assert!(
        stdout.contains("converged (no duplicate alive)"),
        "{stdout}"
    );
}
