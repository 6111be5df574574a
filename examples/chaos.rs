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
//! 4. `SIGSTOP`: one node hangs for 2 s, then resumes (SIGCONT).
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

const COOKIE: &str = "chaos-example-cookie";

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
    let args = Args::parse();
    if args.serve {
        return serve(&args).await;
    }
    let heartbeat = Duration::from_millis(args.heartbeat_ms);
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
        .name("driver")
        .cluster("chaos")
        .cookie(COOKIE)
        .listen("127.0.0.1:0")
        .seeds(procs.iter().map(|p| p.addr.clone()))
        .heartbeat(heartbeat, heartbeat * 4)
        .start()
        .await?;
    let all = args.nodes + 1;
    wait_members(&driver, |m| m.len() == all).await;
    let deadline = Duration::from_millis(args.deadline_ms);
    let mut rows = Vec::new();

    // 1. steady
    let phase = Phase::start(&driver, deadline);
    phase.load.more(args.calls).await;
    rows.push(phase.end("steady", None, &dir).await);

    // 2. rolling restart
    let phase = Phase::start(&driver, deadline);
    for i in 0..args.nodes {
        let name = procs[i].name.clone();
        procs[i].signal("INT");
        procs[i].exited(Duration::from_secs(30)).await;
        wait_members(&driver, |m| !m.contains(&name)).await;
        phase.load.more(args.calls / 4).await;
        let seed = procs[(i + 1) % args.nodes].addr.clone();
        procs[i] = spawn(&args, i, &[seed], &dir).await;
        wait_members(&driver, |m| m.len() == all).await;
        phase.load.more(args.calls / 2).await;
    }
    rows.push(phase.end("rolling restart (SIGINT)", None, &dir).await);

    // 3. SIGKILL
    let phase = Phase::start(&driver, deadline);
    phase.load.more(args.calls / 2).await;
    let victim = args.nodes - 1;
    let name = procs[victim].name.clone();
    procs[victim].signal("KILL");
    let killed = Instant::now();
    let killed_at = SystemTime::now();
    wait_members(&driver, |m| !m.contains(&name)).await;
    let detection = killed.elapsed();
    procs[victim].exited(Duration::from_secs(10)).await;
    record_kill(&dir.join(format!("{name}.history")), killed_at)?;
    phase.load.more(args.calls).await;
    let seed = procs[0].addr.clone();
    procs[victim] = spawn(&args, victim, &[seed], &dir).await;
    wait_members(&driver, |m| m.len() == all).await;
    phase.load.more(args.calls / 2).await;
    rows.push(phase.end("SIGKILL, restart", Some(detection), &dir).await);

    // 4. SIGSTOP
    let phase = Phase::start(&driver, deadline);
    phase.load.more(args.calls / 2).await;
    let name = procs[victim].name.clone();
    procs[victim].signal("STOP");
    let stopped = Instant::now();
    wait_members(&driver, |m| !m.contains(&name)).await;
    let detection = stopped.elapsed();
    phase.load.more(args.calls).await;
    tokio::time::sleep_until(stopped + Duration::from_secs(2)).await;
    procs[victim].signal("CONT");
    wait_members(&driver, |m| m.len() == all).await;
    phase.load.more(args.calls).await;
    rows.push(
        phase
            .end("SIGSTOP 2 s, SIGCONT", Some(detection), &dir)
            .await,
    );

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

/// One node process: the cluster example's node, under this binary.
async fn serve(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let heartbeat = Duration::from_millis(args.heartbeat_ms);
    let mut builder = Node::builder()
        .name(&args.name)
        .cluster("chaos")
        .cookie(COOKIE)
        .listen("127.0.0.1:0")
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
    tokio::signal::ctrl_c().await?;
    node.shutdown().await?;
    Ok(())
}

async fn spawn(args: &Args, i: usize, seeds: &[String], dir: &Path) -> Proc {
    let name = format!("p-{i}");
    let exe = std::env::current_exe().expect("own path");
    let mut cmd = Command::new(exe);
    cmd.args(["--serve", "--name", &name])
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
