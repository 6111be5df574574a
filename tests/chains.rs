//! Call chains on one node: a call that would wait on an actor already
//! waiting for it fails at once, naming the cycle; runaway chains stop at
//! the depth limit.

use std::time::Duration;

use mesh::prelude::*;

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
    Node::builder()
        .default_node(false)
        .capabilities(["chain"])
        .actor::<Alpha>()
        .actor::<Beta>()
        .start()
        .await
        .unwrap()
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
