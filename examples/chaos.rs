//! Chaos against a local cluster, one table at the end.
//!
//! ```sh
//! cargo run --release --example chaos            # 3 nodes, static seeds
//! cargo run --release --example chaos -- --nodes 4 --calls 5000
//! ```
//!
//! The example starts the nodes as processes of itself (`--serve`), joins
//! them as a driver node that hosts nothing, keeps 8 callers busy, and
//! runs the phases one after the other:
//!
//! 1. `steady`: nothing happens (the baseline);
//! 2. `rolling restart`: each node in turn gets SIGINT (a clean leave:
//!    `node.shutdown()`), then starts again;
//! 3. `SIGKILL`: one node is killed (a crash), then started again;
//! 4. `SIGSTOP`: one node hangs for 2 s, then resumes (SIGCONT);
//! 5. `partition` (only with `--phases ...,partition`, inside a network
//!    namespace of its own): iptables cuts one node off from the others
//!    and the driver, then the cut heals; the row adds how long the
//!    cluster took to converge (no duplicate left) after the heal.
//!
//! The partition phase changes iptables rules, so the example runs it only
//! with `MESH_CHAOS_NETNS=1`, meant for a namespace made for it (nodes
//! then listen on 127.0.0.2, .3, ... and send from there):
//!
//! ```sh
//! cargo build --release --example chaos
//! unshare --net -- sh -c 'ip link set lo up && MESH_CHAOS_NETNS=1 \
//!     target/release/examples/chaos --phases partition'
//! ```
//!
//! For each phase: calls, failures by error, the slowest call, how long
//! the driver took to drop the failed node, and the duplicate activations
//! that the nodes' histories show (`mesh::history`), with the longest.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Parser;
use mesh::history::overlaps;
use mesh::prelude::*;
use mesh_testkit::chaos::{failures, histories, record_kill, scratch, Load, Outcome};
use mesh_testkit::procs::Proc;
use tokio::process::Command;
use tokio::time::Instant;

// Only the actors are used here; the rest serves the other examples.
#[allow(dead_code)]
#[path = "common/mod.rs"]
mod common;

/// The example's own cookie (generate yours: `openssl rand -base64 32`).
const COOKIE: &str = "aWDFMC0E1jGX+C4KrLkjfQZASsEv6ObjR6S81QpsGb0=";

/// Chaos phases against a local cluster of node processes.
#[derive(Parser, Debug)]
struct Args {
    /// How many node processes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Calls to wait for between steps of a phase.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Heartbeat in milliseconds (failure timeout: 4 of them).
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Each call's deadline in milliseconds.
    #[arg(long, default_value_t = 1000)]
    deadline_ms: u64,
    /// The phases to run, in order: steady, rolling, kill, stop, partition.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "steady,rolling,kill,stop"
    )]
    phases: Vec<String>,
    /// The IP this node listens on and sends from (serve mode).
    #[arg(long, hide = true, default_value = "127.0.0.1")]
    ip: std::net::IpAddr,
    /// Run as one node of the cluster (used by the example itself).
    #[arg(long, hide = true)]
    serve: bool,
    #[arg(long, hide = true, default_value = "")]
    name: String,
    #[arg(long, hide = true, value_delimiter = ',')]
    seeds: Vec<String>,
    #[arg(long, hide = true)]
    history: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logs();
    let args = Args::parse();
    if args.serve {
        return serve(&args).await;
    }
    let heartbeat = Duration::from_millis(args.heartbeat_ms);
    let isolated = std::env::var("MESH_CHAOS_NETNS").is_ok_and(|v| v == "1");
    if args.phases.iter().any(|p| p == "partition") && !isolated {
        return Err("the partition phase changes iptables rules: run it in a network namespace of its own, with MESH_CHAOS_NETNS=1 (see the example's docs)".into());
    }
    let dir = scratch("example");
    println!(
        "mesh chaos: {} node processes + a driver, {} cores, heartbeat {heartbeat:?}, failure timeout {:?}",
        args.nodes,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        heartbeat * 4
    );
    let mut procs = Vec::new();
    for i in 0..args.nodes {
        let seeds: Vec<String> = procs
            .first()
            .map(|p: &Proc| p.addr.clone())
            .into_iter()
            .collect();
        procs.push(spawn(&args, i, &seeds, &dir).await);
    }
    let driver = Node::builder()
        .id("driver")
        .cluster("chaos")
        .cookie(COOKIE)
        .listen("127.0.0.1:0")
        .transport(mesh::Transport::tcp_from([127, 0, 0, 1].into()))
        .seeds(procs.iter().map(|p| p.addr.clone()))
        .heartbeat(heartbeat, heartbeat * 4)
        .start()
        .await?;
    let all = args.nodes + 1;
    wait_members(&driver, |m| m.len() == all).await;
    let deadline = Duration::from_millis(args.deadline_ms);
    let mut rows = Vec::new();

    for which in &args.phases {
        match which.as_str() {
            "steady" => rows.push(steady(&driver, &args, deadline, &dir).await),
            "rolling" => rows.push(rolling(&driver, &args, deadline, &dir, &mut procs, all).await),
            "kill" => rows.push(kill(&driver, &args, deadline, &dir, &mut procs, all).await?),
            "stop" => rows.push(stop(&driver, &args, deadline, &dir, &mut procs, all).await),
            "partition" => rows.push(partition(&driver, &args, deadline, &dir, &procs, all).await?),
            other => return Err(format!("unknown phase {other:?}").into()),
        }
    }

    println!();
    println!("| phase | calls | failed (by error) | slowest call | detection | duplicate activations | longest duplicate |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    driver.shutdown().await?;
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn steady(driver: &Node, args: &Args, deadline: Duration, dir: &Path) -> String {
    let phase = Phase::start(driver, deadline);
    phase.load.more(args.calls).await;
    phase.end("steady", None, dir).await
}

async fn rolling(
    driver: &Node,
    args: &Args,
    deadline: Duration,
    dir: &Path,
    procs: &mut [Proc],
    all: usize,
) -> String {
    let phase = Phase::start(driver, deadline);
    for i in 0..args.nodes {
        let name = procs[i].name.clone();
        procs[i].signal("INT");
        procs[i].exited(Duration::from_secs(30)).await;
        wait_members(driver, |m| !m.contains(&name)).await;
        phase.load.more(args.calls / 4).await;
        let seed = procs[(i + 1) % args.nodes].addr.clone();
        procs[i] = spawn(args, i, &[seed], dir).await;
        wait_members(driver, |m| m.len() == all).await;
        phase.load.more(args.calls / 2).await;
    }
    phase.end("rolling restart (SIGINT)", None, dir).await
}

async fn kill(
    driver: &Node,
    args: &Args,
    deadline: Duration,
    dir: &Path,
    procs: &mut [Proc],
    all: usize,
) -> Result<String, Box<dyn std::error::Error>> {
    let phase = Phase::start(driver, deadline);
    phase.load.more(args.calls / 2).await;
    let victim = args.nodes - 1;
    let name = procs[victim].name.clone();
    procs[victim].signal("KILL");
    let killed = Instant::now();
    let killed_at = SystemTime::now();
    wait_members(driver, |m| !m.contains(&name)).await;
    let detection = killed.elapsed();
    procs[victim].exited(Duration::from_secs(10)).await;
    record_kill(&dir.join(format!("{name}.history")), killed_at)?;
    phase.load.more(args.calls).await;
    let seed = procs[0].addr.clone();
    procs[victim] = spawn(args, victim, &[seed], dir).await;
    wait_members(driver, |m| m.len() == all).await;
    phase.load.more(args.calls / 2).await;
    Ok(phase.end("SIGKILL, restart", Some(detection), dir).await)
}

async fn stop(
    driver: &Node,
    args: &Args,
    deadline: Duration,
    dir: &Path,
    procs: &mut [Proc],
    all: usize,
) -> String {
    let phase = Phase::start(driver, deadline);
    phase.load.more(args.calls / 2).await;
    let victim = args.nodes - 1;
    let name = procs[victim].name.clone();
    procs[victim].signal("STOP");
    let stopped = Instant::now();
    wait_members(driver, |m| !m.contains(&name)).await;
    let detection = stopped.elapsed();
    phase.load.more(args.calls).await;
    tokio::time::sleep_until(stopped + Duration::from_secs(2)).await;
    procs[victim].signal("CONT");
    wait_members(driver, |m| m.len() == all).await;
    phase.load.more(args.calls).await;
    phase
        .end("SIGSTOP 2 s, SIGCONT", Some(detection), dir)
        .await
}

/// Runs `iptables` with `rule` (inside the example's own namespace).
fn iptables(rule: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    let status = std::process::Command::new("iptables").args(rule).status()?;
    if !status.success() {
        return Err(format!("iptables {} failed", rule.join(" ")).into());
    }
    Ok(())
}

async fn partition(
    driver: &Node,
    args: &Args,
    deadline: Duration,
    dir: &Path,
    procs: &[Proc],
    all: usize,
) -> Result<String, Box<dyn std::error::Error>> {
    let phase = Phase::start(driver, deadline);
    phase.load.more(args.calls / 2).await;
    // The first node on one side; the others and the driver on the other.
    let cut = &procs[0];
    let ip = cut
        .addr
        .rsplit_once(':')
        .map_or("", |(ip, _)| ip)
        .to_owned();
    let rules = [
        ["INPUT", "-s", ip.as_str(), "-j", "DROP"],
        ["INPUT", "-d", ip.as_str(), "-j", "DROP"],
    ];
    for r in &rules {
        iptables(&[&["-I"], &r[..]].concat())?;
    }
    let started = Instant::now();
    wait_members(driver, |m| !m.contains(&cut.name)).await;
    let detection = started.elapsed();
    phase.load.more(args.calls).await;
    for r in &rules {
        iptables(&[&["-D"], &r[..]].concat())?;
    }
    let healed = Instant::now();
    wait_members(driver, |m| m.len() == all).await;
    let rejoined = healed.elapsed();
    phase.settle(dir, Duration::from_secs(20)).await;
    let converged = healed.elapsed();
    println!("partition: rejoined {rejoined:.1?} after the heal; converged (no duplicate alive) {converged:.1?} after it");
    Ok(phase
        .end(
            &format!("partition {} / rest, healed", cut.name),
            Some(detection),
            dir,
        )
        .await)
}

/// One node process: the cluster example's node, under this binary.
async fn serve(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let heartbeat = Duration::from_millis(args.heartbeat_ms);
    let mut builder = Node::builder()
        .id(&args.name)
        .cluster("chaos")
        .cookie(COOKIE)
        .listen(std::net::SocketAddr::new(args.ip, 0).to_string())
        .transport(mesh::Transport::tcp_from(args.ip))
        .seeds(args.seeds.iter().cloned())
        .heartbeat(heartbeat, heartbeat * 4)
        .capabilities(["game"]);
    if let Some(path) = &args.history {
        builder = builder.history(mesh::history::FileHistory::append(path)?);
    }
    let node = common::actors(builder, &["game".to_owned()])
        .start()
        .await?;
    println!("{} listening on {}", node.id(), node.addr().unwrap_or("?"));
    common::stop_signal().await;
    node.shutdown().await?;
    Ok(())
}

async fn spawn(args: &Args, i: usize, seeds: &[String], dir: &Path) -> Proc {
    let name = format!("p-{i}");
    let exe = std::env::current_exe().expect("own path");
    let mut cmd = Command::new(exe);
    // In a namespace of its own, each node on an address of its own.
    let isolated = std::env::var("MESH_CHAOS_NETNS").is_ok_and(|v| v == "1");
    let ip = if isolated {
        format!("127.0.0.{}", i + 2)
    } else {
        "127.0.0.1".to_owned()
    };
    cmd.args(["--serve", "--name", &name, "--ip", &ip])
        .args(["--heartbeat-ms", &args.heartbeat_ms.to_string()])
        .arg("--history")
        .arg(dir.join(format!("{name}.history")));
    if !seeds.is_empty() {
        cmd.args(["--seeds", &seeds.join(",")]);
    }
    Proc::spawn(cmd, &name, COOKIE).await
}

async fn wait_members(node: &Node, f: impl Fn(&mesh::Membership) -> bool) {
    let mut changes = node.membership_changes();
    tokio::time::timeout(Duration::from_secs(60), changes.wait_for(|m| f(m)))
        .await
        .expect("the membership settles within 60 s")
        .expect("the driver runs");
}

/// A phase: its load and when it began.
struct Phase {
    load: Load,
    began: SystemTime,
}

impl Phase {
    fn start(driver: &Node, deadline: Duration) -> Phase {
        Phase {
            load: Load::start(driver, deadline),
            began: SystemTime::now(),
        }
    }

    /// Waits (at most `limit`, the load going on) until no two
    /// activations of one id are alive; returns how long that took.
    async fn settle(&self, dir: &Path, limit: Duration) -> Duration {
        let started = Instant::now();
        mesh_testkit::chaos::settled(dir, &self.load, limit).await;
        started.elapsed()
    }

    /// Stops the load and makes the phase's table row.
    async fn end(self, name: &str, detection: Option<Duration>, dir: &Path) -> String {
        let outcomes: Vec<Outcome> = self.load.finish().await;
        let ended = SystemTime::now();
        let found: Vec<_> = overlaps(&histories(dir))
            .into_iter()
            .filter(|o| o.at >= self.began && o.at < ended)
            .collect();
        let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
        let failed = failures(&outcomes);
        let failed = if failed.is_empty() {
            "0".to_owned()
        } else {
            failed
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let longest = found.iter().filter_map(|o| o.length).max();
        let still = found.iter().filter(|o| o.length.is_none()).count();
        format!(
            "| {name} | {} | {failed} | {slowest:.1?} | {} | {}{} | {} |",
            outcomes.len(),
            detection.map_or("-".to_owned(), |d| format!("{d:.1?}")),
            found.len(),
            if still > 0 {
                format!(" ({still} still alive)")
            } else {
                String::new()
            },
            longest.map_or("-".to_owned(), |d| format!("{d:.1?}")),
        )
    }
}
