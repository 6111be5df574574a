use mesh::prelude::*;
use mesh::state::State;

// One row per actor, written in one atomic write: two state fields would
// be two writes, so the derive refuses them.
#[derive(Actor)]
#[actor(capability = "bank")]
struct Account {
    #[state]
    balance: State<i64>,
    #[state]
    history: State<Vec<i64>>,
}

fn main() {}
