//! A scenario over the program's own actor types (`scenario::Custom`), run
//! by `cli::main_with` with the command line's options: its own name is in
//! every output, the built-in ones still run, and an unknown name is
//! refused with the names there are.

mod common;

use clap::Parser;
use common::Scratch;
use mesh::prelude::*;
use mesh_load::cli::{main_with, Cli};
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

fn players() -> Custom {
    Custom::calls::<Player, Score>(
        "players",
        |k| format!("player-{}", k % 50),
        |k| Score(k % 7),
    )
    .host(|b| b.capabilities(["game"]).actor::<Player>())
}

#[test]
fn a_custom_scenario_runs_with_the_cli_options_and_every_output_names_it() {
    let dir = Scratch::new("custom");
    let out = dir.join("out");
    let cli = Cli::parse_from([
        "players-load",
        "run",
        "players",
        "--rate",
        "400",
        "--duration",
        "1s",
        "--threshold",
        "p99<5s",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(main_with(cli, vec![players()]), Ok(0));
    let r = mesh_load::report::read(&out.join("result.json")).unwrap();
    assert_eq!(r.config.scenario.name(), "players");
    assert_eq!(
        r.config.scenario.kind,
        mesh_load::scenario::ScenarioKind::Custom
    );
    assert_eq!(
        r.config.scenario.kind,
        mesh_load::scenario::ScenarioKind::Custom
    );
    assert_eq!(r.config.model.kind(), "open-loop");
    assert!(r.summary.ok >= 300, "{:?}", r.summary);
    assert_eq!(r.summary.errors, 0);
    let mut files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if f.extension().is_some_and(|e| e == "log" || e == "csv") {
            continue; // the interval log: numbers only
        }
        assert!(
            text.contains("players"),
            "{} does not name the scenario",
            f.display()
        );
        // result.json keeps the kind beside the name (`"kind": "custom"`),
        // for tools; the renderings name it only by its name.
        if !f.ends_with("result.json") {
            assert!(
                !text.contains("\"custom\""),
                "{} names it custom",
                f.display()
            );
        }
    }
}

#[test]
fn built_in_scenarios_still_run_and_an_unknown_name_is_refused_with_the_names_there_are() {
    let cli = Cli::parse_from(["players-load", "run", "hot", "--calls", "50", "--quiet"]);
    assert_eq!(main_with(cli, vec![players()]), Ok(0));
    let cli = Cli::parse_from(["players-load", "run", "teams", "--calls", "1", "--quiet"]);
    let err = main_with(cli, vec![players()]).unwrap_err();
    assert!(err.contains("no scenario \"teams\""), "{err}");
    assert!(
        err.contains("hot") && err.contains("this program's own: players"),
        "{err}"
    );
}
