use mesh::prelude::*;

#[derive(Actor, Default)]
#[actor(capability = "counter")]
struct Counter(i64);

// The handler comes before the message it takes: the first error is still
// the one that says what to derive, here on the handler's message type.
#[mesh::handlers]
impl Counter {
    async fn increment(&mut self, Increment(n): Increment) -> i64 {
        self.0 += n;
        self.0
    }
}

// Forgot `Serialize, Deserialize`.
#[derive(Message)]
#[message(reply = i64)]
struct Increment(i64);

async fn caller(node: &Node) {
    let _ = node.actor::<Counter>("c").call(Increment(1)).await;
}

fn main() {}
