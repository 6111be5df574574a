use mesh::prelude::*;

#[derive(Actor, Default)]
#[actor(capability = "counter", idel_timeout = "10s")]
struct Counter;

fn main() {}
