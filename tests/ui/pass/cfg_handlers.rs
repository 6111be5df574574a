// `#[cfg]` on a handler: one configured out (`any()` is always false)
// disappears from the dispatch, the wire table and the `Handler` impls, its
// message type with it; one configured in (`all()` is always true) works.
// The off handlers are named `count`: a leftover `self.count(msg)` in the
// generated code resolved to `Iterator::count` ("`&mut Player` is not an
// iterator"), as for the one taking `Tally`, a message type that stays.

use mesh::Handlers;
use mesh::prelude::*;

#[derive(Actor, Default)]
#[actor(capability = "cfg")]
struct Player {
    score: u32,
}

#[cfg(any())]
#[derive(Message, Serialize, Deserialize)]
#[message(reply = usize)]
struct Count;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = usize)]
struct Tally;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u32)]
struct Score(u32);

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u32)]
struct Get;

#[mesh::handlers]
impl Player {
    #[cfg(any())]
    async fn count_all(&mut self, _: Count) -> usize {
        0
    }

    #[cfg(any())]
    async fn count(&mut self, _: Tally) -> usize {
        0
    }

    #[cfg(all())]
    #[cfg(not(any()))]
    async fn score(&mut self, Score(n): Score) -> u32 {
        self.score += n;
        self.score
    }

    async fn get(&mut self, _: Get) -> u32 {
        self.score
    }
}

/// A reentrant actor whose only handler is configured out: no handlers.
#[derive(Actor, Default)]
#[actor(capability = "cfg")]
struct Empty;

#[mesh::handlers(reentrant)]
impl Empty {
    #[cfg(any())]
    async fn count(&self, _: Count) -> usize {
        0
    }
}

/// A reentrant actor with one handler on and one off.
#[derive(Actor, Default)]
#[actor(capability = "cfg")]
struct Board;

#[mesh::handlers(reentrant)]
impl Board {
    #[cfg(any())]
    async fn count(&self, _: Count) -> usize {
        0
    }

    #[cfg(all())]
    async fn get(&self, _: Get) -> u32 {
        7
    }
}

fn names(table: &[(u64, &'static str)]) -> Vec<&'static str> {
    table.iter().map(|(_, n)| *n).collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert_eq!(names(<Player as Handlers>::MESSAGES), ["Score", "Get"]);
    assert_eq!(names(<Empty as Handlers>::MESSAGES), [] as [&str; 0]);
    assert_eq!(names(<Board as Handlers>::MESSAGES), ["Get"]);

    let node = Node::builder()
        .default_node(false)
        .capabilities(["cfg"])
        .actor::<Player>()
        .actor::<Empty>()
        .actor::<Board>()
        .start()
        .await
        .unwrap();
    let ada = node.actor::<Player>("ada");
    // No handler for `Tally` (configured out): not callable, not listed.
    let _ = Tally;
    assert_eq!(ada.call(Score(3)).await, Ok(3));
    assert_eq!(ada.call(Score(4)).await, Ok(7));
    assert_eq!(ada.call(Get).await, Ok(7));
    assert_eq!(node.actor::<Board>("b").call(Get).await, Ok(7));
    node.shutdown().await.unwrap();
}

/// A whole handlers block configured out, its `#[cfg]` written after the
/// attribute: nothing of it is generated.
#[derive(Actor, Default)]
#[actor(capability = "cfg")]
struct Gone;

#[mesh::handlers]
#[cfg(any())]
impl Gone {
    async fn count(&mut self, _: Count) -> usize {
        0
    }
}

#[mesh::handlers]
#[cfg(any())]
impl Gone {
    async fn get(&mut self, _: Get) -> u32 {
        0
    }
}
