//! The demo actors: a `Player` (capability `game`) keeps a score, a `Room`
//! (capability `chat`) counts its lines; both in memory.

use mesh::prelude::*;
use serde::{Deserialize, Serialize};

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

/// Says something in a room; replies with the serving node and the count.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = (String, u64))]
pub struct Say(pub String);

#[mesh::handlers]
impl Room {
    async fn say(&mut self, Say(_line): Say, ctx: &Ctx) -> (String, u64) {
        self.lines += 1;
        (ctx.node().id().to_owned(), self.lines)
    }
}

/// Registers the actor types of `capabilities`.
pub fn register(mut b: mesh::NodeBuilder, capabilities: &[String]) -> mesh::NodeBuilder {
    if capabilities.iter().any(|c| c == "game") {
        b = b.actor::<Player>();
    }
    if capabilities.iter().any(|c| c == "chat") {
        b = b.actor::<Room>();
    }
    b
}
