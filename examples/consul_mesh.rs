//! The cluster example with Consul as the discovery: each node registers
//! with its local agent and finds its peers there, no seeds needed.
//!
//! Against a real agent (`consul agent -dev` listens on 127.0.0.1:8500):
//!
//! ```sh
//! export MESH_COOKIE=change-me
//! cargo run --example consul_mesh -- --consul http://127.0.0.1:8500 --name game-1 --listen 127.0.0.1:7001 --capabilities game
//! cargo run --example consul_mesh -- --consul http://127.0.0.1:8500 --name chat-1 --listen 127.0.0.1:7002 --capabilities chat
//! cargo run --example consul_mesh -- --consul http://127.0.0.1:8500 --name both-1 --listen 127.0.0.1:7003 \
//!     --capabilities game,chat --expect 3 --drive 12
//! ```
//!
//! `consul catalog services -tags` then lists the `example` service with
//! the capabilities as tags. Without Consul, the test agent the test suite
//! uses stands in: `cargo run --example consul_test_agent`. The token comes
//! from `--token` or CONSUL_HTTP_TOKEN; the address from `--consul` or
//! CONSUL_HTTP_ADDR.

use std::time::Duration;

use clap::Parser;
use mesh::discovery::Consul;

#[path = "common/mod.rs"]
mod common;

/// One mesh node discovering its peers through Consul. The cookie comes
/// from MESH_COOKIE.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    node: common::NodeArgs,
    /// The Consul agent's HTTP address (default: CONSUL_HTTP_ADDR, else
    /// http://127.0.0.1:8500).
    #[arg(long)]
    consul: Option<String>,
    /// ACL token (default: CONSUL_HTTP_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// Leave (deregister) after driving instead of waiting for Ctrl-C.
    #[arg(long)]
    exit: bool,
    /// Health check heartbeat in milliseconds (TTL: 3 of them).
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logs();
    let args = Args::parse();
    let mut consul = Consul::new().heartbeat(Duration::from_millis(args.heartbeat_ms));
    if let Some(addr) = &args.consul {
        consul = consul.address(addr);
    }
    if let Some(token) = &args.token {
        consul = consul.token(token);
    }
    let node = common::builder(&args.node)?
        .discovery(consul.clone())
        .start()
        .await?;
    println!(
        "{} listening on {}, registered in consul as {:?}",
        node.id(),
        node.addr().unwrap_or("?"),
        consul.services().await?
    );
    #[cfg(feature = "admin")]
    if let Some(admin) = node.admin_addr() {
        println!("admin page: http://{admin}/");
    }
    let watcher = common::print_membership(&node);
    if args.node.drive > 0 {
        common::drive(&node, args.node.expect, args.node.drive).await?;
    }
    if !args.exit {
        common::stop_signal().await;
    }
    watcher.abort();
    node.shutdown().await?;
    println!("{} deregistered and left the cluster", args.node.name);
    Ok(())
}
