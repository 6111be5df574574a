//! What the cluster examples share: the actors, and printing membership
//! and where calls land. Not an example itself (no `main`).

use mesh::prelude::*;

/// The options every example node takes.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// This node's id, unique in the cluster.
    #[arg(long)]
    pub name: String,
    /// host:port to accept peers on.
    #[arg(long)]
    pub listen: String,
    /// Capabilities hosted here, comma-separated (game, chat).
    #[arg(long, value_delimiter = ',')]
    pub capabilities: Vec<String>,
    /// Cluster name (with Consul: also the service name).
    #[arg(long, default_value = "example")]
    pub cluster: String,
    /// Wait for this many members before driving calls.
    #[arg(long, default_value_t = 1)]
    pub expect: usize,
    /// Call this many players and rooms, printing where each lives.
    #[arg(long, default_value_t = 0)]
    pub drive: usize,
    /// Append each activation's start and end to this file (see
    /// `mesh::history`: how duplicate activations are measured).
    #[arg(long)]
    pub history: Option<std::path::PathBuf>,
    /// Serve the admin endpoint and live page here (127.0.0.1:9464, say);
    /// needs `--features admin`.
    #[arg(long)]
    pub admin: Option<String>,
    /// mTLS between nodes: this node's certificate chain (PEM), reloaded
    /// when it changes on disk. With `--tls-key` and `--tls-roots`.
    #[arg(long, requires_all = ["tls_key", "tls_roots"])]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_roots"])]
    pub tls_key: Option<std::path::PathBuf>,
    /// The trust bundle (PEM roots) peers' certificates must lead to.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    pub tls_roots: Option<std::path::PathBuf>,
    /// With TLS: also accept peers presenting these SPIFFE IDs
    /// (comma-separated), besides this node's own.
    #[arg(long, value_delimiter = ',')]
    pub tls_allow: Vec<String>,
    /// How long a peer may leave our pings unanswered before it is taken
    /// for down, in milliseconds (default: the library's).
    #[arg(long)]
    pub failure_timeout_ms: Option<u64>,
}

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

/// A node builder from the shared options: name, cluster, the cookie from
/// MESH_COOKIE, listen address, capabilities and their actor types.
pub fn builder(args: &NodeArgs) -> Result<mesh::NodeBuilder, Box<dyn std::error::Error>> {
    let cookie = std::env::var("MESH_COOKIE")
        .map_err(|_| "set MESH_COOKIE to the cluster's shared secret")?;
    let mut builder = Node::builder()
        .id(&args.name)
        .cluster(&args.cluster)
        .cookie(cookie)
        .listen(&args.listen)
        .capabilities(args.capabilities.iter().cloned());
    if let Some(ms) = args.failure_timeout_ms {
        let failure = std::time::Duration::from_millis(ms);
        builder = builder.heartbeat(
            (failure / 4).min(std::time::Duration::from_secs(1)),
            failure,
        );
    }
    if let (Some(cert), Some(key), Some(roots)) = (&args.tls_cert, &args.tls_key, &args.tls_roots) {
        let identity = mesh::identity::FileIdentity::load(cert, key, roots)?;
        let tls = mesh::transport::tls::Tls::new(identity).allow(args.tls_allow.iter().cloned());
        builder = builder.transport(tls.transport());
    }
    if let Some(path) = &args.history {
        builder = builder.history(mesh::history::FileHistory::append(path)?);
    }
    if let Some(addr) = &args.admin {
        #[cfg(feature = "admin")]
        {
            builder = builder.admin(addr);
            // The drain's token (`POST /admin/drain`), from the
            // environment: never on a command line.
            if let Ok(token) = std::env::var("MESH_ADMIN_TOKEN") {
                builder = builder.admin_token(token);
            }
        }
        #[cfg(not(feature = "admin"))]
        return Err(format!(
            "--admin {addr} needs the admin feature: cargo run --features admin ..."
        )
        .into());
    }
    Ok(actors(builder, &args.capabilities))
}

/// Adds the actor types for `capabilities` to `builder`.
pub fn actors(mut builder: mesh::NodeBuilder, capabilities: &[String]) -> mesh::NodeBuilder {
    if capabilities.iter().any(|c| c == "game") {
        builder = builder.actor::<Player>();
    }
    if capabilities.iter().any(|c| c == "chat") {
        builder = builder.actor::<Room>();
    }
    builder
}

/// Prints every membership change of `node`, until it stops.
pub fn print_membership(node: &Node) -> tokio::task::JoinHandle<()> {
    let mut changes = node.membership_changes();
    tokio::spawn(async move {
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
    })
}

/// Waits for `expect` members, then calls `n` players and `n` rooms and
/// prints where each lives.
pub async fn drive(node: &Node, expect: usize, n: usize) -> Result<(), mesh::Error> {
    let mut changes = node.membership_changes();
    changes
        .wait_for(|m| m.len() >= expect)
        .await
        .map_err(|_| mesh::Error::ShuttingDown)?;
    for i in 0..n {
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
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG` (`info` when unset; for example
/// `RUST_LOG=mesh=debug` or `RUST_LOG=warn,mesh::transport=trace`), so a
/// refused handshake (a wrong cookie) or a failing discovery shows.
pub fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what systemd and Kubernetes
/// send to stop a process), so either runs `node.shutdown()`: the node
/// leaves without losing a call, runs its hooks and deregisters.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
