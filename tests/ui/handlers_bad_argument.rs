use mesh::prelude::*;

#[derive(Actor, Default)]
#[actor(capability = "counter")]
struct Counter;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = ())]
struct Get;

#[mesh::handlers(reentrnat)]
impl Counter {
    async fn get(&self, _: Get) {}
}

fn main() {}
