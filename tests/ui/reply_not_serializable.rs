use mesh::prelude::*;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = std::time::Instant)]
struct Now;

fn main() {}
