// A deactivation hook is `async fn(&mut self, &Ctx)` or `async fn(&mut
// self)` returning nothing: one returning a value names them.
use mesh::prelude::*;

#[derive(Actor, Default)]
#[actor(capability = "room", on_deactivate = Room::close)]
struct Room {
    open: bool,
}

impl Room {
    async fn close(&mut self, _ctx: &Ctx) -> bool {
        std::mem::take(&mut self.open)
    }
}

#[mesh::handlers]
impl Room {}

fn main() {}
