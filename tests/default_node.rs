//! `mesh::call` and `mesh::cast` go through the process's default node: the
//! first node started, until it shuts down. One test, alone in its binary,
//! because the default node is process-wide.

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
    async fn increment(&mut self, Increment(n): Increment) -> i64 {
        self.value += n;
        self.value
    }
}

#[tokio::test]
async fn the_default_node_serves_free_calls_until_it_shuts_down() {
    assert_eq!(
        mesh::call::<Counter, _>("c", Increment(1)).await,
        Err(Error::NotStarted)
    );
    assert_eq!(
        mesh::cast::<Counter, _>("c", Increment(1)),
        Err(Error::NotStarted)
    );
    assert!(Node::default_node().is_none());

    let first = Node::builder()
        .capabilities(["counter"])
        .actor::<Counter>()
        .start()
        .await
        .unwrap();
    // A second node does not replace a running default.
    let second = Node::builder()
        .capabilities(["counter"])
        .actor::<Counter>()
        .start()
        .await
        .unwrap();
    assert_eq!(Node::default_node().unwrap().id(), first.id());

    assert_eq!(mesh::call::<Counter, _>("c", Increment(1)).await, Ok(1));
    mesh::cast::<Counter, _>("c", Increment(10)).unwrap();
    assert_eq!(first.call::<Counter, _>("c", Increment(0)).await, Ok(11));
    assert_eq!(second.call::<Counter, _>("c", Increment(0)).await, Ok(0));

    first.shutdown().await.unwrap();
    assert!(Node::default_node().is_none());
    assert_eq!(
        mesh::call::<Counter, _>("c", Increment(1)).await,
        Err(Error::NotStarted)
    );
    // A node started now becomes the default.
    let third = Node::builder()
        .capabilities(["counter"])
        .actor::<Counter>()
        .start()
        .await
        .unwrap();
    assert_eq!(mesh::call::<Counter, _>("c", Increment(2)).await, Ok(2));
    third.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}
