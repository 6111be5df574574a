//! Consul discovery figures against the test agent (real HTTP on
//! loopback, real TCP between the nodes), each beside a raw baseline from
//! the same run:
//! - convergence: from a node's start (its registration) to every peer
//!   routing to it, vs a raw registration waking a raw blocking query;
//! - failover: from a node's failure to its shards being served
//!   elsewhere, vs the TTL: when its heartbeat stops (a hung node: the
//!   TTL path) and when it crashes (its connections drop).
//!
//! `cargo bench --bench consul`

use std::time::{Duration, Instant};

use mesh::consul::Consul;
use mesh::prelude::*;
use mesh_testkit::consul_agent::TestConsul;
use mesh_testkit::consul_catalog::TimeScale;

const CONVERGE_REPS: usize = 20;
const FAILOVER_REPS: usize = 5;
const HEARTBEAT: Duration = Duration::from_secs(1);
const TTL: Duration = Duration::from_secs(3);

#[derive(Actor, Default)]
#[actor(capability = "game")]
struct Player;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = String)]
struct Where;

#[mesh::handlers]
impl Player {
    async fn where_(&mut self, _: Where, ctx: &Ctx) -> String {
        ctx.node().id().to_owned()
    }
}

async fn start(consul: &TestConsul, agent: usize, name: &str) -> (Node, Consul) {
    let adapter = Consul::new()
        .address(consul.url(agent))
        .heartbeat(HEARTBEAT)
        .ttl(TTL);
    let node = Node::builder()
        .id(name)
        .cluster("bench")
        .cookie(mesh_testkit::COOKIE)
        .listen("127.0.0.1:0")
        .capabilities(["game"])
        .actor::<Player>()
        .default_node(false)
        .discovery(adapter.clone())
        .start()
        .await
        .expect("node starts");
    (node, adapter)
}

async fn until(node: &Node, f: impl Fn(&mesh::Membership) -> bool) {
    node.membership_changes()
        .wait_for(|m| f(m))
        .await
        .expect("membership watch");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A raw registration (reqwest PUT) waking a raw blocking query.
async fn raw_wakeup(consul: &TestConsul, i: usize) -> Duration {
    let http = mesh_testkit::http();
    let base = consul.url(3);
    let first = http
        .get(format!("{base}/v1/health/service/raw?passing"))
        .send()
        .await
        .expect("read");
    let index: u64 = first.headers()["X-Consul-Index"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("index");
    let blocked = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!(
                "{base}/v1/health/service/raw?passing&index={index}&wait=60s"
            ))
            .send()
            .await
            .expect("blocking read")
            .text()
            .await
            .expect("body");
            Instant::now()
        }
    });
    // Let the blocking query reach the agent first.
    consul
        .wait_requests(
            3,
            "health/service/raw",
            tokio::time::Instant::now() - Duration::from_secs(3600),
            2 * i + 2,
        )
        .await;
    let t0 = Instant::now();
    http.put(format!("{base}/v1/agent/service/register"))
        .json(&serde_json::json!({"ID": format!("raw-{i}"), "Name": "raw",
            "Check": {"TTL": "60s", "Status": "passing"}}))
        .send()
        .await
        .expect("register");
    let woke = blocked.await.expect("task");
    woke - t0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("mesh consul benchmarks: {cores} cores, test agent on loopback, heartbeat {HEARTBEAT:?}, TTL {TTL:?}");
    let consul = TestConsul::start(4, TimeScale::default()).await;
    let (a, _) = start(&consul, 0, "a").await;
    let (b, _) = start(&consul, 1, "b").await;
    let (c, _) = start(&consul, 2, "c").await;
    for n in [&a, &b, &c] {
        until(n, |m| m.len() == 3).await;
    }

    // Convergence.
    let mut raw = Vec::new();
    let mut converge = Vec::new();
    let mut quiet = Vec::new();
    for i in 0..CONVERGE_REPS {
        raw.push(raw_wakeup(&consul, i).await);
        let name = format!("d{i}");
        // Every other join comes after a quiet half second, when the
        // watches' rate limit (burst 4, then one query per 100 ms) is
        // full again; the others come back to back, as under churn.
        let is_quiet = i % 2 == 0;
        if is_quiet {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let t0 = Instant::now();
        let (d, _) = start(&consul, 3, &name).await;
        for n in [&a, &b, &c] {
            until(n, |m| m.contains(&name)).await;
        }
        if is_quiet {
            quiet.push(t0.elapsed());
        } else {
            converge.push(t0.elapsed());
        }
        d.shutdown().await.expect("shutdown");
        for n in [&a, &b, &c] {
            until(n, |m| !m.contains(&name)).await;
        }
    }

    // Failover, hung node: its heartbeat stops, its connections stay.
    let mut hung = Vec::new();
    let mut crashed = Vec::new();
    for i in 0..FAILOVER_REPS {
        let name = format!("e{i}");
        let (e, adapter) = start(&consul, 3, &name).await;
        for n in [&a, &b, &c] {
            until(n, |m| m.contains(&name)).await;
        }
        let id = (0..)
            .map(|k| format!("p{k}"))
            .find(|id| a.owner_of::<Player>(id).ok().as_deref() == Some(name.as_str()))
            .expect("an id e owns");
        assert_eq!(a.call::<Player, _>(&id, Where).await.expect("call"), name);
        let t0 = Instant::now();
        adapter.pause_heartbeat(true);
        for n in [&a, &b, &c] {
            until(n, |m| !m.contains(&name)).await;
        }
        let on = a.call::<Player, _>(&id, Where).await.expect("call");
        hung.push(t0.elapsed());
        assert_ne!(on, name);
        // Crash the same node: back first, then cut off.
        adapter.pause_heartbeat(false);
        for n in [&a, &b, &c] {
            until(n, |m| m.contains(&name)).await;
        }
        assert_eq!(a.call::<Player, _>(&id, Where).await.expect("call"), name);
        let t0 = Instant::now();
        e.sever();
        for n in [&a, &b, &c] {
            until(n, |m| !m.contains(&name)).await;
        }
        let on = a.call::<Player, _>(&id, Where).await.expect("call");
        crashed.push(t0.elapsed());
        assert_ne!(on, name);
        e.shutdown().await.ok();
    }

    let raw_p50 = median(raw.clone());
    let conv_p50 = median(converge.clone());
    let quiet_p50 = median(quiet.clone());
    let conv_max = converge
        .iter()
        .chain(&quiet)
        .max()
        .copied()
        .unwrap_or_default();
    let hung_p50 = median(hung.clone());
    let hung_max = hung.iter().max().copied().unwrap_or_default();
    let crash_p50 = median(crashed.clone());
    println!();
    println!("| figure | mesh | baseline | baseline | ratio | goal |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| convergence p50, join after a quiet period | {:.1} ms | raw register -> blocking query wakes | {:.2} ms | {:.1}x | <= 1000 ms |",
        ms(quiet_p50), ms(raw_p50), ms(quiet_p50) / ms(raw_p50)
    );
    println!(
        "| convergence p50, join right after the previous join and leave | {:.1} ms | raw register -> blocking query wakes | {:.2} ms | {:.1}x | <= 1000 ms |",
        ms(conv_p50), ms(raw_p50), ms(conv_p50) / ms(raw_p50)
    );
    println!(
        "| convergence max | {:.1} ms | | | | <= 1000 ms |",
        ms(conv_max)
    );
    println!(
        "| failover p50, heartbeat stopped ({FAILOVER_REPS} runs) | {:.0} ms | TTL | {:.0} ms | {:.2}x | <= TTL + 1 s ({:.0} ms) |",
        ms(hung_p50), ms(TTL), ms(hung_p50) / ms(TTL), ms(TTL + Duration::from_secs(1))
    );
    println!(
        "| failover max, heartbeat stopped | {:.0} ms | TTL | {:.0} ms | {:.2}x | <= TTL + 1 s |",
        ms(hung_max),
        ms(TTL),
        ms(hung_max) / ms(TTL)
    );
    println!(
        "| failover p50, crash (connections cut) | {:.1} ms | TTL | {:.0} ms | {:.4}x | <= TTL + 1 s |",
        ms(crash_p50), ms(TTL), ms(crash_p50) / ms(TTL)
    );
    for n in [a, b, c] {
        n.shutdown().await.expect("shutdown");
    }
}
