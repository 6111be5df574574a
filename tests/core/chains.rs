//! Call chains, on one node and across two: a call that would wait on an actor already
//! waiting for it fails at once, naming the cycle; runaway chains stop at
//! the depth limit.

use std::time::Duration;

use mesh::prelude::*;
use mesh_testkit::fixture::local;

#[derive(Actor, Default)]
#[actor(capability = "chain")]
struct Alpha;

#[derive(Actor, Default)]
#[actor(capability = "chain")]
struct Beta;

/// Alpha calls Beta `to`, which calls Alpha `back`.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<String, String>)]
struct Relay {
    to: String,
    back: String,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<String, String>)]
struct CallBack {
    back: String,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<String, String>)]
struct Hello;

/// Alpha calls itself.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<String, String>)]
struct Myself;

/// Calls Alpha `n+1` until `n` reaches `stop`.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<u32, String>)]
struct Deeper {
    n: u32,
    stop: u32,
}

#[mesh::handlers]
impl Alpha {
    async fn relay(&mut self, r: Relay, ctx: &Ctx) -> Result<String, String> {
        ctx.node()
            .call::<Beta, _>(&r.to, CallBack { back: r.back })
            .await
            .map_err(|e| e.to_string())?
    }

    async fn myself(&mut self, _: Myself, ctx: &Ctx) -> Result<String, String> {
        match ctx.node().call::<Alpha, _>(ctx.id(), Hello).await {
            Ok(r) => r,
            Err(e) => Err(e.to_string()),
        }
    }

    async fn hello(&mut self, _: Hello, ctx: &Ctx) -> Result<String, String> {
        Ok(format!("hello from {}", ctx.id()))
    }

    async fn deeper(&mut self, d: Deeper, ctx: &Ctx) -> Result<u32, String> {
        if d.n == d.stop {
            return Ok(d.n);
        }
        let next = Deeper {
            n: d.n + 1,
            stop: d.stop,
        };
        match ctx
            .node()
            .call::<Alpha, _>(&format!("d{}", d.n + 1), next)
            .await
        {
            Ok(r) => r,
            Err(e) => Err(e.to_string()),
        }
    }
}

#[mesh::handlers]
impl Beta {
    async fn call_back(&mut self, c: CallBack, ctx: &Ctx) -> Result<String, String> {
        match ctx.node().call::<Alpha, _>(&c.back, Hello).await {
            Ok(r) => r,
            Err(e) => Err(e.to_string()),
        }
    }
}

async fn node() -> Node {
    local(|b| {
        b.capabilities(["chain", "host", "guest"])
            .actor::<Alpha>()
            .actor::<Beta>()
            .actor::<Host>()
            .actor::<Guest>()
    })
    .await
}

// Reentrancy: `Host` opts in, so a call of its own chain is served while
// its first handler waits.

#[derive(Actor, Default)]
#[actor(capability = "host")]
struct Host {
    seen: std::sync::Mutex<Vec<String>>,
}

#[derive(Actor, Default)]
#[actor(capability = "guest")]
struct Guest;

/// Host calls Guest `via`, which calls the Host back with a `Note`.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<Vec<String>, String>)]
struct Visit {
    via: String,
}

/// Host calls itself with a `Note`.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<Vec<String>, String>)]
struct Remind;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = ())]
struct Note(String);

#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<(), String>)]
struct Knock {
    host: String,
}

#[mesh::handlers(reentrant)]
impl Host {
    async fn visit(&self, v: Visit, ctx: &Ctx) -> Result<Vec<String>, String> {
        self.seen.lock().unwrap().push("before".into());
        let knock = Knock {
            host: ctx.id().into(),
        };
        let r = ctx.node().call::<Guest, _>(&v.via, knock).await;
        r.map_err(|e| e.to_string())??;
        // State the reentrant call changed while this handler waited.
        Ok(self.seen.lock().unwrap().clone())
    }

    async fn remind(&self, _: Remind, ctx: &Ctx) -> Result<Vec<String>, String> {
        let note = Note("to myself".into());
        let r = ctx.node().call::<Host, _>(ctx.id(), note).await;
        r.map_err(|e| e.to_string())?;
        Ok(self.seen.lock().unwrap().clone())
    }

    async fn note(&self, Note(line): Note) {
        self.seen.lock().unwrap().push(line);
    }
}

#[mesh::handlers]
impl Guest {
    async fn knock(&mut self, k: Knock, ctx: &Ctx) -> Result<(), String> {
        let note = Note(format!("note from {} on {}", ctx.id(), ctx.node().id()));
        let r = ctx.node().call::<Host, _>(&k.host, note).await;
        r.map_err(|e| e.to_string())
    }
}

#[tokio::test(start_paused = true)]
async fn a_reentrant_actor_serves_its_own_chain() {
    let node = node().await;
    let started = tokio::time::Instant::now();
    // Host "h" -> Guest "g" -> Host "h": served interleaved.
    let seen = node
        .call::<Host, _>("h", Visit { via: "g".into() })
        .await
        .unwrap();
    let note = format!("note from g on {}", node.id());
    assert_eq!(seen, Ok(vec!["before".to_owned(), note]));
    // A reentrant actor may call itself.
    let seen = node.call::<Host, _>("h", Remind).await.unwrap().unwrap();
    assert_eq!(seen.last().map(String::as_str), Some("to myself"));
    assert_eq!(started.elapsed(), Duration::ZERO, "no deadline waited for");
    // The same shape without reentrancy (Alpha) is a cycle.
    let r = node
        .call::<Alpha, _>(
            "a",
            Relay {
                to: "b".into(),
                back: "a".into(),
            },
        )
        .await
        .unwrap();
    assert!(r.unwrap_err().starts_with("call cycle"));
    node.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_cycle_fails_at_once_naming_the_chain() {
    let node = node().await;
    let started = tokio::time::Instant::now();
    let r = node
        .call::<Alpha, _>(
            "a",
            Relay {
                to: "b".into(),
                back: "a".into(),
            },
        )
        .await
        .unwrap();
    // Not at the 5 s deadline: at once (the clock is paused).
    assert_eq!(started.elapsed(), Duration::ZERO);
    let e = r.unwrap_err();
    assert!(
        e.starts_with(r#"call cycle Alpha "a" -> Beta "b" -> Alpha "a""#),
        "{e}"
    );
    assert!(e.contains("make one of these calls a cast"), "{e}");
    // Another Alpha is no cycle.
    let ok = node
        .call::<Alpha, _>(
            "a",
            Relay {
                to: "b".into(),
                back: "other".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(ok.as_deref(), Ok("hello from other"));
    node.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_actor_calling_itself_fails_at_once() {
    let node = node().await;
    let e = node
        .call::<Alpha, _>("s", Myself)
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.starts_with(r#"call cycle Alpha "s" -> Alpha "s""#), "{e}");
    // A chain of distinct ids is no cycle; a cast back does not wait.
    let r = node
        .call::<Alpha, _>("d0", Deeper { n: 0, stop: 5 })
        .await
        .unwrap();
    assert_eq!(r, Ok(5));
    node.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_runaway_chain_stops_at_the_depth_limit() {
    let node = node().await;
    let r = node
        .call::<Alpha, _>("d0", Deeper { n: 0, stop: 1000 })
        .await
        .unwrap();
    let e = r.unwrap_err();
    assert!(e.starts_with("call chain deeper than 32"), "{e}");
    node.shutdown().await.unwrap();
}

// Across nodes: `Left` lives only on node 1, `Right` only on node 2.

#[derive(Actor, Default)]
#[actor(capability = "left")]
struct Left;

#[derive(Actor, Default)]
#[actor(capability = "right")]
struct Right;

/// Bounces between `Left` and `Right` ids `p{n}` until `n` reaches `stop`
/// (each hop crosses to the other node); `back` set: `Right` calls `Left`
/// `back` instead.
#[derive(Message, Serialize, Deserialize)]
#[message(reply = Result<String, String>)]
struct Bounce {
    n: u32,
    stop: u32,
    back: Option<String>,
}

async fn bounce(ctx: &Ctx, b: Bounce, to_left: bool) -> Result<String, String> {
    if b.n == b.stop {
        return Ok(format!("{} at {}", ctx.id(), ctx.node().id()));
    }
    let next_id = match (&b.back, to_left) {
        (Some(back), true) => back.clone(),
        _ => format!("p{}", b.n + 1),
    };
    let next = Bounce {
        n: b.n + 1,
        stop: b.stop,
        back: b.back,
    };
    let r = if to_left {
        ctx.node().call::<Left, _>(&next_id, next).await
    } else {
        ctx.node().call::<Right, _>(&next_id, next).await
    };
    r.map_err(|e| e.to_string())?
}

#[mesh::handlers]
impl Left {
    async fn bounce(&mut self, b: Bounce, ctx: &Ctx) -> Result<String, String> {
        bounce(ctx, b, false).await
    }
}

#[mesh::handlers]
impl Right {
    async fn bounce(&mut self, b: Bounce, ctx: &Ctx) -> Result<String, String> {
        bounce(ctx, b, true).await
    }
}

/// Node 1 hosts `Left`, node 2 `Right`, over the memory transport.
async fn two_nodes() -> (Node, Node) {
    use mesh::transport::memory::MemoryNetwork;
    let net = mesh::Transport::memory(MemoryNetwork::new());
    let builder = |name: &str, listen: &str| {
        Node::builder()
            .id(name)
            .default_node(false)
            .cluster("chains")
            .cookie(mesh_testkit::COOKIE)
            .transport(net.clone())
            .listen(listen)
    };
    let one = builder("one", "chains-1")
        .capabilities(["left", "host"])
        .actor::<Left>()
        .actor::<Host>()
        .start()
        .await
        .unwrap();
    let two = builder("two", "chains-2")
        .seeds(["chains-1"])
        .capabilities(["right", "guest"])
        .actor::<Right>()
        .actor::<Guest>()
        .start()
        .await
        .unwrap();
    for n in [&one, &two] {
        let mut changes = n.membership_changes();
        changes.wait_for(|m| m.len() == 2).await.unwrap();
    }
    (one, two)
}

#[tokio::test(start_paused = true)]
async fn a_cycle_across_nodes_fails_at_once_naming_the_chain() {
    let (one, two) = two_nodes().await;
    let started = tokio::time::Instant::now();
    let bounce = |back: &str| Bounce {
        n: 0,
        stop: 3,
        back: Some(back.into()),
    };
    // Left "a" (node 1) -> Right "p1" (node 2) -> Left "a": a cycle, found
    // on node 2 from the chain the call frame carried.
    let r = one
        .call::<Left, _>("a", bounce("a"))
        .timeout(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO, "at once, not at 60 s");
    let e = r.unwrap_err();
    assert!(
        e.starts_with(r#"call cycle Left "a" -> Right "p1" -> Left "a""#),
        "{e}"
    );
    // The same path to another Left is no cycle.
    let ok = one.call::<Left, _>("a", bounce("z")).await.unwrap();
    assert_eq!(ok.as_deref(), Ok("p3 at two"));
    one.shutdown().await.unwrap();
    two.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_depth_limit_holds_across_nodes() {
    let (one, two) = two_nodes().await;
    // Each hop crosses to the other node; the chain still grows.
    let ok = one
        .call::<Left, _>(
            "p0",
            Bounce {
                n: 0,
                stop: 20,
                back: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(ok.as_deref(), Ok("p20 at one"));
    let e = one
        .call::<Left, _>(
            "p0",
            Bounce {
                n: 0,
                stop: 100,
                back: None,
            },
        )
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.starts_with("call chain deeper than 32"), "{e}");
    assert!(e.contains(r#"Left "p0" -> Right "p1" -> Left "p2""#), "{e}");
    one.shutdown().await.unwrap();
    two.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_reentrant_actor_serves_its_own_chain_across_nodes() {
    let (one, two) = two_nodes().await;
    // Host "h" (node 1) -> Guest "g" (node 2) -> Host "h": the chain came
    // back in the Call frame, and the call is served interleaved.
    let seen = two
        .call::<Host, _>("h", Visit { via: "g".into() })
        .timeout(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        seen,
        Ok(vec!["before".to_owned(), "note from g on two".to_owned()])
    );
    one.shutdown().await.unwrap();
    two.shutdown().await.unwrap();
}

// A peer's chain is bounded: one with more links than the depth limit is
// refused when it arrives, by the owner and by a node that would forward
// it, and never built.

/// Two nodes on 127.0.0.1 hosting `Alpha`; the first is the seed.
async fn two_tcp_nodes() -> (Node, Node) {
    let builder = |name: &str| {
        Node::builder()
            .id(name)
            .default_node(false)
            .cluster("chains")
            .cookie(mesh_testkit::COOKIE)
            .transport(mesh::Transport::tcp())
            .listen("127.0.0.1:0")
            .capabilities(["chain"])
            .actor::<Alpha>()
            .actor::<Beta>()
    };
    let one = builder("one").start().await.unwrap();
    let seed = one.addr().unwrap().to_owned();
    let two = builder("two").seeds([seed]).start().await.unwrap();
    for n in [&one, &two] {
        let mut changes = n.membership_changes();
        mesh_testkit::soon(changes.wait_for(|m| m.len() == 2))
            .await
            .unwrap();
    }
    (one, two)
}

/// A `Call` of `Alpha`'s `Hello` on `id`, as a peer sends it.
fn hello_call(id: &str, chain: Option<Vec<(String, String)>>) -> Vec<u8> {
    let call = mesh::wire::CallFrame {
        tag: mesh::tag_of::<Alpha, Hello>(),
        id: id.into(),
        timeout_ms: 10_000,
        hops: 0,
        payload: serde_bytes::ByteBuf::from(mesh::wire::encode(&Hello).unwrap()),
        trace: None,
        chain,
    };
    rmp_serde::to_vec(&call).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_bomb_from_a_peer_is_refused_and_the_nodes_live() {
    use mesh::wire::{self, Kind};
    let (one, two) = two_tcp_nodes().await;
    // An id `two` serves itself, and one it would forward to `one`.
    let owned_by = |node: &str| {
        (0..)
            .map(|i| format!("a{i}"))
            .find(|id| two.owner_of::<Alpha>(id).unwrap() == node)
            .unwrap()
    };
    let (here, forwarded) = (owned_by("two"), owned_by("one"));
    // Served once first: the activation is there when the bomb arrives.
    for id in [&here, &forwarded] {
        assert!(two.call::<Alpha, _>(id, Hello).await.unwrap().is_ok());
    }
    let mut peer = mesh_testkit::raw::RawPeer::connect(
        two.addr().unwrap(),
        "chains",
        "bomber",
        mesh_testkit::COOKIE,
    )
    .await;
    // 100 000 hops of empty names: about 300 KiB. Built as a linked list
    // and dropped recursively, it overflowed the stack and aborted the
    // process; forwarded, it did the same to the owner.
    let bomb: Vec<(String, String)> = vec![(String::new(), String::new()); 100_000];
    let mut corr = 0;
    for id in [&here, &forwarded] {
        corr += 1;
        let body = hello_call(id, Some(bomb.clone()));
        assert!(body.len() > 300_000);
        peer.send(Kind::Call, corr, &body).await;
        let answer = mesh_testkit::soon(peer.answer(corr))
            .await
            .expect("answered");
        assert_eq!(answer.kind, Kind::Error);
        match wire::decode::<wire::Failure>(&answer.body)
            .unwrap()
            .into_error()
        {
            mesh::Error::ChainTooDeep { limit, chain } => {
                assert_eq!(limit, 32);
                assert!(chain.ends_with(&format!(r#" -> Alpha "{id}""#)), "{chain}");
            }
            other => panic!("expected ChainTooDeep, got {other:?}"),
        }
        // The same connection and activation still serve, with a chain
        // a real peer sends.
        corr += 1;
        let chain = vec![("Beta".to_owned(), "b".to_owned())];
        peer.send(Kind::Call, corr, &hello_call(id, Some(chain)))
            .await;
        let answer = mesh_testkit::soon(peer.answer(corr))
            .await
            .expect("answered");
        assert_eq!(answer.kind, Kind::Reply, "{answer:?}");
        let reply: wire::Reply = wire::decode(&answer.body).unwrap();
        let hello: Result<String, String> = wire::decode(&reply.payload).unwrap();
        assert_eq!(hello, Ok(format!("hello from {id}")));
    }
    // Both nodes are alive and still a cluster.
    for id in [&here, &forwarded] {
        assert!(one.call::<Alpha, _>(id, Hello).await.unwrap().is_ok());
        assert!(two.call::<Alpha, _>(id, Hello).await.unwrap().is_ok());
    }
    assert_eq!(one.membership().len(), 2);
    one.shutdown().await.unwrap();
    two.shutdown().await.unwrap();
}
