//! The Consul test agent of the test suite, as a program: for trying
//! `consul_mesh` where Consul is not installed. It serves the documented
//! HTTP API subset the adapter uses (see `mesh_testkit::consul_agent`, in
//! tests/support), one simulated agent per `--listen` address, all sharing
//! one catalog.
//! It is a test double, not Consul: no gossip, no raft, no UI.
//!
//! ```sh
//! cargo run --example consul_test_agent -- --listen 127.0.0.1:8500
//! ```

use clap::Parser;
use mesh_testkit::{consul_agent, consul_catalog};

/// Serves the Consul test agent until Ctrl-C or SIGTERM.
#[derive(Parser, Debug)]
struct Args {
    /// Addresses of the simulated agents, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8500")]
    listen: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_logs();
    let args = Args::parse();
    let consul =
        consul_agent::TestConsul::start_at(&args.listen, consul_catalog::TimeScale::default())
            .await?;
    for i in 0..args.listen.len() {
        println!("consul test agent {} on {}", consul.node(i), consul.url(i));
    }
    stop_signal().await?;
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG` (`info` when unset).
fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
