//! A load test of your own actors with every option of `mesh-load run`:
//! models, rates, thresholds, a cluster to join, and the reports, each
//! naming the scenario `players`.
//!
//! ```sh
//! cargo run -p mesh-load --example custom -- run players --rate 5000 --duration 10s --out report
//! ```
//!
//! Against a cluster of your own nodes hosting `Player`: add
//! `--seeds HOST:PORT --cookie ...` (or `--consul ...`); `--host` makes
//! this process host players too.

use clap::Parser;
use mesh::prelude::*;
use mesh_load::scenario::Custom;

#[derive(Actor, Default)]
#[actor(capability = "game")]
struct Player {
    score: u64,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
struct Score(u64);

#[mesh::handlers]
impl Player {
    async fn score(&mut self, Score(n): Score) -> u64 {
        self.score += n;
        self.score
    }
}

fn main() {
    // Call k scores for player k mod 1000.
    let players = Custom::calls::<Player, Score>(
        "players",
        |k| format!("player-{}", k % 1000),
        |k| Score(k % 7),
    )
    .host(|b| b.capabilities(["game"]).actor::<Player>());
    let code = match mesh_load::cli::main_with(mesh_load::cli::Cli::parse(), vec![players]) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("players-load: {e}");
            1
        }
    };
    std::process::exit(code);
}
