//! A cluster of separate processes on loopback, with static seeds.
//!
//! ```sh
//! export MESH_COOKIE=change-me
//! cargo run --example cluster -- --name game-1 --listen 127.0.0.1:7001 --capabilities game
//! cargo run --example cluster -- --name chat-1 --listen 127.0.0.1:7002 --capabilities chat --seeds 127.0.0.1:7001
//! cargo run --example cluster -- --name both-1 --listen 127.0.0.1:7003 --capabilities game,chat \
//!     --seeds 127.0.0.1:7001 --expect 3 --drive 12
//! ```
//!
//! Every node prints membership changes. A node given `--drive N` waits
//! for `--expect` members, then calls N players and N chat rooms and prints
//! which node each lives on. Stop a node with Ctrl-C (a clean leave) or
//! `kill -9` (a crash): the others notice and take over its shards.

use std::time::Duration;

use clap::Parser;
use mesh::prelude::*;

/// A player: lives on a node hosting `game`.
#[derive(Actor, Default)]
#[actor(capability = "game")]
pub struct Player {
    score: u64,
}

/// Adds to a player's score; replies with the serving node and the score.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = (String, u64))]
pub struct Score(pub u64);

#[mesh::handlers]
impl Player {
    async fn score(&mut self, Score(n): Score, ctx: &Ctx) -> (String, u64) {
        self.score += n;
        (ctx.node().id().to_owned(), self.score)
    }
}

/// A chat room: lives on a node hosting `chat`.
#[derive(Actor, Default)]
#[actor(capability = "chat")]
pub struct Room {
    lines: u64,
}

/// Posts a line; replies with the serving node and the line count.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = (String, u64))]
pub struct Say(pub String);

#[mesh::handlers]
impl Room {
    async fn say(&mut self, _: Say, ctx: &Ctx) -> (String, u64) {
        self.lines += 1;
        (ctx.node().id().to_owned(), self.lines)
    }
}

/// One mesh node of the example cluster. The cookie comes from MESH_COOKIE.
#[derive(Parser, Debug)]
struct Args {
    /// This node's id, unique in the cluster.
    #[arg(long)]
    name: String,
    /// host:port to accept peers on.
    #[arg(long)]
    listen: String,
    /// Peers to dial, comma-separated host:port.
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<String>,
    /// Capabilities hosted here, comma-separated (game, chat).
    #[arg(long, value_delimiter = ',')]
    capabilities: Vec<String>,
    /// Cluster name.
    #[arg(long, default_value = "example")]
    cluster: String,
    /// Wait for this many members before driving calls.
    #[arg(long, default_value_t = 1)]
    expect: usize,
    /// Call this many players and rooms, printing where each lives.
    #[arg(long, default_value_t = 0)]
    drive: usize,
    /// Heartbeat interval in milliseconds (failure timeout: 4 of them).
    #[arg(long, default_value_t = 250)]
    heartbeat_ms: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let cookie = std::env::var("MESH_COOKIE")
        .map_err(|_| "set MESH_COOKIE to the cluster's shared secret")?;
    let heartbeat = Duration::from_millis(args.heartbeat_ms);
    let mut builder = Node::builder()
        .name(&args.name)
        .cluster(&args.cluster)
        .cookie(cookie)
        .listen(&args.listen)
        .seeds(args.seeds.iter().cloned())
        .heartbeat(heartbeat, heartbeat * 4)
        .capabilities(args.capabilities.iter().cloned());
    if args.capabilities.iter().any(|c| c == "game") {
        builder = builder.actor::<Player>();
    }
    if args.capabilities.iter().any(|c| c == "chat") {
        builder = builder.actor::<Room>();
    }
    let node = builder.start().await?;
    println!("{} listening on {}", node.id(), node.addr().unwrap_or("?"));

    let mut changes = node.membership_changes();
    let watcher = tokio::spawn(async move {
        loop {
            let members: Vec<String> = changes
                .borrow_and_update()
                .nodes()
                .map(str::to_owned)
                .collect();
            println!("members: {}", members.join(", "));
            if changes.changed().await.is_err() {
                return;
            }
        }
    });

    if args.drive > 0 {
        let mut changes = node.membership_changes();
        changes.wait_for(|m| m.len() >= args.expect).await?;
        for i in 0..args.drive {
            let id = format!("player-{i}");
            match node.call::<Player, _>(&id, Score(1)).await {
                Ok((on, score)) => println!("{id} lives on {on} (score {score})"),
                Err(e) => println!("{id}: {e}"),
            }
            let id = format!("room-{i}");
            match node.call::<Room, _>(&id, Say("hello".into())).await {
                Ok((on, lines)) => println!("{id} lives on {on} ({lines} lines)"),
                Err(e) => println!("{id}: {e}"),
            }
        }
    }

    tokio::signal::ctrl_c().await?;
    watcher.abort();
    node.shutdown().await?;
    println!("{} left the cluster", args.name);
    Ok(())
}
