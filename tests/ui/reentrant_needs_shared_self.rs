use mesh::prelude::*;

#[derive(Actor, Default)]
#[actor(capability = "counter")]
struct Counter {
    value: i64,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = i64)]
struct Inc;

#[mesh::handlers(reentrant)]
impl Counter {
    async fn inc(&mut self, _: Inc) -> i64 {
        self.value += 1;
        self.value
    }
}

fn main() {}
