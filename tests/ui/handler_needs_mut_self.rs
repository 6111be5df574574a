use mesh::prelude::*;

#[derive(Actor, Default)]
#[actor(capability = "counter")]
struct Counter {
    value: i64,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = i64)]
struct Get;

#[mesh::handlers]
impl Counter {
    async fn get(&self, _: Get) -> i64 {
        self.value
    }
}

fn main() {}
