//! Test actors that more than one suite uses (`tests/cluster.rs`,
//! `tests/consul.rs`). Their wire names are their type names, as for any
//! actor: tests that match on `"Player"` or on `tag_of::<Player, Score>()`
//! rely on that. Actors that only one suite uses stay in that suite.

use mesh::prelude::*;

/// A player of capability `game` keeping a score, for routing tests: its
/// replies name the node that served them.
#[derive(Actor, Default)]
#[actor(capability = "game")]
pub struct Player {
    score: u64,
}

/// Adds to the player's score; replies with the serving node's id and the
/// new score (`Score(0)` reads it).
#[derive(Message, Serialize, Deserialize)]
#[message(reply = (String, u64))]
pub struct Score(pub u64);

/// Makes the handler panic with `"remote boom"`.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = ())]
pub struct Crash;

/// Never replies: the handler waits forever.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = ())]
pub struct Hang;

#[mesh::handlers]
impl Player {
    async fn score(&mut self, Score(n): Score, ctx: &Ctx) -> (String, u64) {
        self.score += n;
        (ctx.node().id().to_owned(), self.score)
    }

    async fn crash(&mut self, _: Crash) {
        panic!("remote boom");
    }

    async fn hang(&mut self, _: Hang) {
        std::future::pending::<()>().await;
    }
}
