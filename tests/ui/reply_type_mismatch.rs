use mesh::prelude::*;

#[derive(Actor, Default)]
#[actor(capability = "counter")]
struct Counter {
    value: i64,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = i64)]
struct Increment(i64);

#[mesh::handlers]
impl Counter {
    async fn increment(&mut self, Increment(n): Increment) -> String {
        self.value += n;
        self.value.to_string()
    }
}

fn main() {}
