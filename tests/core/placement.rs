//! Placement by actor type: nodes advertise the actor types they host per
//! capability, each actor type is placed only on the nodes that host it,
//! wire tags of two actor types of one capability do not collide, and a
//! call that reaches a node without its handler (an older build) fails
//! with an error naming the node, the actor type and the message.
//!
//! In-memory transport; every wait awaits a membership change, none sleeps.

use std::collections::BTreeMap;
use std::future::IntoFuture;

use mesh::prelude::*;
use mesh_testkit::fixture::{wait_members, Cluster};
use mesh_testkit::soon;

/// Read the served-by node of a reply: `"<Type>@<node>"`.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = String)]
struct Get;

/// The current build of `Room`: `Get`, `Join` and `Topic`.
mod current {
    use mesh::prelude::*;

    #[derive(Actor, Default)]
    #[actor(capability = "chat")]
    pub struct Room {
        members: Vec<String>,
    }

    /// A message the older build does not have.
    #[derive(Message, Serialize, Deserialize)]
    #[message(reply = usize)]
    pub struct Join(pub String);

    /// Its reply changed type since the older build.
    #[derive(Message, Serialize, Deserialize)]
    #[message(reply = String)]
    pub struct Topic;

    #[mesh::handlers]
    impl Room {
        async fn get(&mut self, _: super::Get, ctx: &Ctx) -> String {
            format!("Room@{}", ctx.node().id())
        }

        async fn join(&mut self, Join(who): Join) -> usize {
            self.members.push(who);
            self.members.len()
        }

        async fn topic(&mut self, _: Topic) -> String {
            "rust".into()
        }
    }
}

/// An older build of the same actor type (same name, same capability):
/// no `Join`, and `Topic` replied a number.
mod older {
    use mesh::prelude::*;

    #[derive(Actor, Default)]
    #[actor(capability = "chat", name = "Room")]
    pub struct Room;

    #[derive(Message, Serialize, Deserialize)]
    #[message(reply = u32, name = "Topic")]
    pub struct Topic;

    #[mesh::handlers]
    impl Room {
        async fn get(&mut self, _: super::Get, ctx: &Ctx) -> String {
            format!("Room@{}", ctx.node().id())
        }

        async fn topic(&mut self, _: Topic) -> u32 {
            7
        }
    }
}

use current::{Join, Room, Topic};

/// Another actor type of capability `chat` with a message named `Get` too.
#[derive(Actor, Default)]
#[actor(capability = "chat")]
struct User;

#[mesh::handlers]
impl User {
    async fn get(&mut self, _: Get, ctx: &Ctx) -> String {
        format!("User@{}", ctx.node().id())
    }
}

/// Two clustered nodes of `chat`: `a` built by `first`, `b` by `second`,
/// connected.
async fn pair(
    a: &str,
    first: impl FnOnce(mesh::NodeBuilder) -> mesh::NodeBuilder + 'static,
    b: &str,
    second: impl FnOnce(mesh::NodeBuilder) -> mesh::NodeBuilder + 'static,
) -> (Node, Node) {
    let [a, b] = Cluster::memory()
        .fast()
        .all(|b| b.capabilities(["chat"]))
        .node(a, first)
        .node(b, second)
        .start()
        .await
        .into_array();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_an_actor_type_owns_none_of_its_ids() {
    // `b` hosts `chat` but was not given `.actor::<Room>()`.
    let (a, b) = pair(
        "a",
        |b| b.actor::<Room>().actor::<User>(),
        "b",
        |b| b.actor::<User>(),
    )
    .await;
    // Each node learnt what the other hosts, from its handshake.
    let seen = b.membership();
    let info = seen.get("a").unwrap();
    assert!(info.hosts("chat", "Room") && info.hosts("chat", "User"));
    assert!(!seen.get("b").unwrap().hosts("chat", "Room"));
    for i in 0..200 {
        let id = format!("room-{i}");
        // From both nodes, every Room id is served, on `a`.
        for from in [&a, &b] {
            assert_eq!(from.owner_of::<Room>(&id).unwrap(), "a");
            let served = soon(from.call::<Room, _>(&id, Get).into_future())
                .await
                .unwrap_or_else(|e| panic!("{id} from {}: {e}", from.id()));
            assert_eq!(served, "Room@a");
        }
    }
    // User ids spread over both nodes, each served where its owner is.
    let mut owners = BTreeMap::new();
    for i in 0..200 {
        let id = format!("user-{i}");
        for from in [&a, &b] {
            let owner = from.owner_of::<User>(&id).unwrap();
            let served = soon(from.call::<User, _>(&id, Get).into_future())
                .await
                .unwrap();
            assert_eq!(served, format!("User@{owner}"));
            *owners.entry(owner).or_insert(0) += 1;
        }
    }
    assert_eq!(owners.keys().collect::<Vec<_>>(), ["a", "b"], "{owners:?}");
    assert!(owners.values().all(|&n| n > 100), "{owners:?}");

    // With `a` gone, no node hosts Room: the error says so, and the fix,
    // while `chat` still has a node.
    a.sever();
    wait_members(&[&b], 1).await;
    let err = b.call::<Room, _>("room-1", Get).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "call to Room \"room-1\": no node hosts Room (capability \"chat\"); start one with \
         `.actor::<Room>()`, or look in the logs for the connections to the nodes that do \
         (a refused one names the cookie, cluster or protocol version)"
    );
    assert_eq!(b.call::<User, _>("user-1", Get).await.unwrap(), "User@b");
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_build_without_a_message_fails_naming_node_actor_message_and_fix() {
    // A rolling deploy half done: `p-1` runs the current build of Room,
    // `p-2` an older one without `Join`. Both host Room, so Room ids are
    // placed on both (routing one message elsewhere than the others would
    // split one actor over two activations).
    let (p1, p2) = pair(
        "p-1",
        |b| b.actor::<Room>(),
        "p-2",
        |b| b.actor::<older::Room>(),
    )
    .await;
    let on = |node: &str| {
        (0..)
            .map(|i| format!("r{i}"))
            .find(|id| p1.owner_of::<Room>(id).unwrap() == node)
            .unwrap()
    };
    let (old, new) = (on("p-2"), on("p-1"));
    // What both builds have works on both.
    assert_eq!(p1.call::<Room, _>(&old, Get).await.unwrap(), "Room@p-2");
    // The new message works where the new build owns the id...
    assert_eq!(
        p1.call::<Room, _>(&new, Join("ann".into())).await.unwrap(),
        1
    );
    // ...and fails, saying where, what and what to do, where the old does.
    let err = p1
        .call::<Room, _>(&old, Join("bob".into()))
        .await
        .unwrap_err();
    let tag = mesh::tag_of::<Room, Join>();
    assert_eq!(
        err,
        Error::UnknownMessage {
            actor: "Room".into(),
            tag,
            node: "p-2".into(),
            message: "Join".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "node \"p-2\" has no handler for Join of Room (wire tag {tag:#018x}): it runs a \
             build of Room without Join (an older build?), or does not host Room; deploy the \
             build of Room that handles Join on every node that hosts Room"
        )
    );
    // A reply whose type changed between builds: a codec error naming the call.
    let err = p1.call::<Room, _>(&old, Topic).await.unwrap_err();
    assert!(matches!(err, Error::Codec(_)), "{err:?}");
    assert!(
        err.to_string()
            .ends_with(&format!("(call Topic to Room {old:?})")),
        "{err}"
    );
    assert_eq!(p1.call::<Room, _>(&new, Topic).await.unwrap(), "rust");
    p2.shutdown().await.unwrap();
    p1.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_actor_types_of_one_capability_may_share_a_message_name() {
    use mesh::tag_of;
    use mesh::wire::{decode, encode};
    // Both handle `Get` (capability `chat`): before protocol version 3 their
    // tags were equal and the node refused to start (TagCollision).
    let node = Node::builder()
        .id("solo")
        .default_node(false)
        .capabilities(["chat"])
        .actor::<Room>()
        .actor::<User>()
        .start()
        .await
        .expect("starts: the tags differ");
    let (room, user) = (tag_of::<Room, Get>(), tag_of::<User, Get>());
    assert_ne!(room, user);
    assert_eq!(room, mesh::wire::tag("chat", "Room", "Get"));
    assert_eq!(node.call::<Room, _>("x", Get).await.unwrap(), "Room@solo");
    assert_eq!(node.call::<User, _>("x", Get).await.unwrap(), "User@solo");
    // Over the wire table (what a peer's call runs), each tag reaches its type.
    for (tag, want) in [(room, "Room@solo"), (user, "User@solo")] {
        let reply = node.call_wire(tag, "x", encode(&Get).unwrap()).await;
        assert_eq!(decode::<String>(&reply.unwrap()).unwrap(), want);
    }
    node.shutdown().await.unwrap();
}
