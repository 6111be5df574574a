//! A cluster of separate processes on loopback, with static seeds.
//!
//! ```sh
//! export MESH_COOKIE=$(openssl rand -base64 32)   # the same on every node
//! cargo run --example cluster -- --name game-1 --listen 127.0.0.1:7001 --capabilities game \
//!     --min-members 2
//! cargo run --example cluster -- --name chat-1 --listen 127.0.0.1:7002 --capabilities chat \
//!     --seeds 127.0.0.1:7001 --min-members 2
//! cargo run --example cluster -- --name both-1 --listen 127.0.0.1:7003 --capabilities game,chat \
//!     --seeds 127.0.0.1:7001 --min-members 2 --expect 3 --drive 12
//! ```
//!
//! `--min-members 2`: a node serves (and its `/readyz` says ready) only
//! once it sees another member, so one started with the wrong
//! `MESH_COOKIE` refuses calls (`NotEnoughMembers`) instead of serving
//! every actor alone from empty state. A one-node run leaves it out.
//!
//! These runs use plain TCP, which assumes a trusted network (here,
//! loopback). In production, across any network you do not trust, run
//! every node with mTLS (identity files in PEM, as SPIRE's spiffe-helper,
//! cert-manager or a Vault agent write them; every node presents the
//! cluster's one SPIFFE ID, see "TLS between nodes" in
//! `docs/guide/04-mesh-and-tls.md`):
//!
//! ```sh
//! cargo run --example cluster -- --name game-1 --listen 0.0.0.0:7001 --capabilities game \
//!     --tls-cert node.pem --tls-key node-key.pem --tls-roots bundle.pem
//! ```
//!
//! Every node prints membership changes. A node given `--drive N` waits
//! for `--expect` members, then calls N players and N chat rooms and prints
//! which node each lives on. Stop a node with Ctrl-C or SIGTERM (a clean
//! leave that loses no call) or
//! `kill -9` (a crash): the others notice and take over its shards.

use std::time::Duration;

use clap::Parser;

#[path = "common/mod.rs"]
mod common;

/// One mesh node of the example cluster. The cookie comes from MESH_COOKIE.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    node: common::NodeArgs,
    /// Peers to dial, comma-separated host:port.
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<String>,
    /// Heartbeat interval in milliseconds (failure timeout: 4 of them).
    #[arg(long, default_value_t = 250)]
    heartbeat_ms: u64,
    /// Serve (and be ready) only once this many members are seen, this
    /// node included (NodeBuilder::min_members): 2 keeps a node with the
    /// wrong cookie or unreachable seeds from serving alone. 1: no guard.
    #[arg(long, default_value_t = 1)]
    min_members: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logs();
    let args = Args::parse();
    let heartbeat = Duration::from_millis(args.heartbeat_ms);
    let node = common::builder(&args.node)?
        .seeds(args.seeds.iter().cloned())
        .heartbeat(heartbeat, heartbeat * 4)
        .min_members(args.min_members)
        .start()
        .await?;
    println!("{} listening on {}", node.id(), node.addr().unwrap_or("?"));
    #[cfg(feature = "admin")]
    if let Some(admin) = node.admin_addr() {
        println!("admin page: http://{admin}/");
    }
    let watcher = common::print_membership(&node);
    if args.node.drive > 0 {
        common::drive(&node, args.node.expect, args.node.drive).await?;
    }

    common::stop_signal().await;
    watcher.abort();
    node.shutdown().await?;
    println!("{} left the cluster", args.node.name);
    Ok(())
}
