use mesh::prelude::*;

#[derive(Actor, Default)]
#[actor(capability = "counter")]
struct Counter {
    value: std::cell::Cell<i64>,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = i64)]
struct Get;

#[mesh::handlers(reentrant)]
impl Counter {
    async fn get(&self, _: Get) -> i64 {
        self.value.get()
    }
}

fn main() {}
