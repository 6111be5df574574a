// A handler's only other parameter is `ctx: &Ctx`.
use mesh::prelude::*;

#[derive(Actor, Default)]
#[actor(capability = "room")]
struct Room;

#[derive(Message, Serialize, Deserialize)]
struct Say(String);

#[mesh::handlers]
impl Room {
    async fn say(&mut self, msg: Say, loud: bool) {
        let _ = (msg, loud);
    }
}

fn main() {}
