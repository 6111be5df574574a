use mesh::prelude::*;

// Forgot `Serialize, Deserialize`: this message cannot cross the wire.
#[derive(Message)]
#[message(reply = i64)]
struct Increment(i64);

fn main() {}
