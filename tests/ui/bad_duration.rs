use mesh::prelude::*;

#[derive(Actor, Default)]
#[actor(capability = "counter", idle_timeout = "ten minutes")]
struct Counter;

fn main() {}
