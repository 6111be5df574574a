// The message comes first, then the context.
use mesh::prelude::*;

#[derive(Actor, Default)]
#[actor(capability = "room")]
struct Room;

#[derive(Message, Serialize, Deserialize)]
struct Say(String);

#[mesh::handlers]
impl Room {
    async fn say(&mut self, ctx: &Ctx, msg: Say) {
        let _ = (ctx, msg);
    }
}

fn main() {}
