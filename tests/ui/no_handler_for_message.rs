use mesh::prelude::*;

#[derive(Actor, Default)]
#[actor(capability = "counter")]
struct Counter;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = i64)]
struct Get;

#[derive(Message, Serialize, Deserialize)]
struct Reset;

#[derive(Message, Serialize, Deserialize)]
struct Set(i64);

#[mesh::handlers]
impl Counter {
    async fn get(&mut self, _: Get) -> i64 {
        0
    }

    async fn set(&mut self, _: Set) {}
}

async fn misuse() {
    let _ = mesh::call::<Counter, _>("c", Reset).await;
}

fn main() {}
