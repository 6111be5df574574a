use mesh::prelude::*;

struct NotAnActor;

#[derive(Message, Serialize, Deserialize)]
struct Ping;

#[mesh::handlers]
impl NotAnActor {
    async fn ping(&mut self, _: Ping) {}
}

fn main() {}
