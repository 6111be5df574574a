use mesh::prelude::*;

#[derive(Actor, Default)]
struct Counter;

fn main() {}
