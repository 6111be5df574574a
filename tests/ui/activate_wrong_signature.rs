// An activation function must return `Result<Self, E>`: returning `Self`
// names the expected signatures.
use mesh::prelude::*;

#[derive(Actor)]
#[actor(capability = "room", activate = Room::load)]
struct Room {
    name: String,
}

impl Room {
    async fn load(id: &str) -> Self {
        Room { name: id.to_owned() }
    }
}

#[mesh::handlers]
impl Room {}

fn main() {}
