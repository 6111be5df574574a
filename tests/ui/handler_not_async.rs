use mesh::prelude::*;

#[derive(Actor, Default)]
#[actor(capability = "game")]
struct Player {
    score: i64,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = i64)]
struct Score(i64);

#[derive(Message, Serialize, Deserialize)]
struct Event(i64);

#[mesh::handlers]
impl Player {
    async fn score(&mut self, Score(n): Score) -> i64 {
        self.apply(Event(n));
        self.score
    }

    // Meant as a helper, but it takes a message: it must not become a
    // handler reachable from the wire, nor be silently accepted.
    fn apply(&mut self, Event(n): Event) {
        self.score += n;
    }
}

fn main() {}
