//! Clusters in one process, over the in-memory transport and over TCP:
//! discovery from seeds, routing to owners, remote errors, node loss.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh::prelude::*;
use mesh::transport::memory::MemoryNetwork;
use mesh::{NodeBuilder, Transport};
use mesh_testkit::actors::{Crash, Hang, Player, Score};
use mesh_testkit::fixture::{fast, member, wait_members, Cluster, ClusterBuilder};
use mesh_testkit::soon;

static ROOMS_OPENED: AtomicUsize = AtomicUsize::new(0);

#[derive(Actor)]
#[actor(capability = "chat", activate = Room::open)]
struct Room {
    lines: Vec<String>,
}

impl Room {
    async fn open(id: &str) -> Result<Self, String> {
        if id == "forbidden" {
            return Err("no such room".into());
        }
        ROOMS_OPENED.fetch_add(1, Ordering::SeqCst);
        Ok(Room { lines: Vec::new() })
    }
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = usize)]
struct Say(String);

#[mesh::handlers]
impl Room {
    async fn say(&mut self, Say(line): Say) -> usize {
        self.lines.push(line);
        self.lines.len()
    }
}

type Handovers =
    std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<(String, String, i64)>>>;
static HANDOVERS: Handovers = std::sync::Mutex::new(None);

#[derive(Actor, Default)]
#[actor(capability = "ledger", on_deactivate = Account::close)]
struct Account {
    balance: i64,
}

impl Account {
    async fn close(&mut self, ctx: &Ctx) {
        if let Some(tx) = &*HANDOVERS.lock().unwrap() {
            let _ = tx.send((
                ctx.node().id().to_owned(),
                ctx.id().to_owned(),
                self.balance,
            ));
        }
    }
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = (String, i64))]
struct Deposit(i64);

#[mesh::handlers]
impl Account {
    async fn deposit(&mut self, Deposit(n): Deposit, ctx: &Ctx) -> (String, i64) {
        self.balance += n;
        (ctx.node().id().to_owned(), self.balance)
    }
}

/// `b` with capabilities `caps` and the suite's actors for them.
fn with_actors(b: NodeBuilder, caps: &[&str]) -> NodeBuilder {
    let mut b = b.capabilities(caps.iter().copied());
    if caps.contains(&"game") {
        b = b.actor::<Player>();
    }
    if caps.contains(&"chat") {
        b = b.actor::<Room>();
    }
    if caps.contains(&"ledger") {
        b = b.actor::<Account>();
    }
    if caps.contains(&"gate") {
        b = b.actor::<Gated>();
    }
    b
}

/// A node of `caps` named `name`, listening at `listen`, seeded with `seeds`.
async fn node(net: &Transport, name: &str, listen: &str, caps: &[&str], seeds: &[&str]) -> Node {
    let b = fast(member("test", name))
        .transport(net.clone())
        .listen(listen)
        .seeds(seeds.iter().copied());
    with_actors(b, caps).start().await.expect("node starts")
}

/// Three nodes (game, chat, both) seeded in a chain: all find each other.
async fn three(cluster: ClusterBuilder) -> (Node, Node, Node) {
    let [game, chat, both] = cluster
        .fast()
        .chain()
        .node("game-1", |b| with_actors(b, &["game"]))
        .node("chat-1", |b| with_actors(b, &["chat"]))
        .node("both-1", |b| with_actors(b, &["game", "chat"]))
        .start()
        .await
        .into_array();
    (game, chat, both)
}

async fn calls_reach_the_owner(cluster: ClusterBuilder) {
    let (game, chat, both) = three(cluster).await;
    let mut owners = BTreeMap::new();
    for i in 0..200 {
        let id = format!("p{i}");
        // From every node, including the chat-only one, which hosts no game shard.
        for (k, from) in [&game, &chat, &both].into_iter().enumerate() {
            let (served_by, score) = soon(from.call::<Player, _>(&id, Score(1)).into_future())
                .await
                .unwrap();
            assert_eq!(score, k as u64 + 1);
            assert_eq!(served_by, from.owner_of::<Player>(&id).unwrap());
            *owners.entry(served_by).or_insert(0) += 1;
        }
    }
    // Game shards live on the two game hosts only, and both have some.
    assert_eq!(owners.keys().collect::<Vec<_>>(), ["both-1", "game-1"]);
    assert_eq!(game.activation_count() + both.activation_count(), 200);
    assert_eq!(chat.activation_count(), 0);
    // Every node computes the same owners.
    for i in 0..50 {
        let id = format!("room{i}");
        let o = game.owner_of::<Room>(&id).unwrap();
        assert_eq!(o, chat.owner_of::<Room>(&id).unwrap());
        assert_eq!(o, both.owner_of::<Room>(&id).unwrap());
        assert_eq!(
            soon(game.call::<Room, _>(&id, Say("hi".into())).into_future()).await,
            Ok(1)
        );
    }
    for n in [game, chat, both] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_the_owner_in_memory() {
    calls_reach_the_owner(Cluster::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_the_owner_over_tcp() {
    calls_reach_the_owner(Cluster::tcp()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_failures_come_back_typed() {
    let (game, chat, both) = three(Cluster::memory()).await;
    // Find ids owned elsewhere than the caller.
    let remote_player = (0..)
        .map(|i| format!("r{i}"))
        .find(|id| game.owner_of::<Player>(id).unwrap() == "both-1")
        .unwrap();
    let err = game
        .call::<Player, _>(&remote_player, Crash)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::HandlerPanicked {
            actor: "Player".into(),
            id: remote_player.clone(),
            message: "remote boom".into()
        }
    );
    let err = game
        .call::<Room, _>("forbidden", Say("x".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ActivationFailed { ref reason, .. } if reason == "no such room"),
        "{err:?}"
    );
    // A remote call carries its deadline.
    let err = game
        .call::<Player, _>(&remote_player, Hang)
        .timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    // Named by the caller, though the owner's deadline answered it.
    let want = format!("call Hang to Player {remote_player:?} timed out");
    assert_eq!(err.to_string(), want);
    // Casts cross too (to another actor: this one hangs for good now), and
    // one connection keeps its order: the cast is handled before the call.
    let other = format!("{remote_player}-2");
    chat.cast::<Player, _>(&other, Score(5)).unwrap();
    let (_, score) = chat.call::<Player, _>(&other, Score(0)).await.unwrap();
    assert_eq!(score, 5);
    // A body the owner cannot decode fails that call, typed, over there.
    let tag = mesh::tag_of::<Player, Score>();
    let err = game.call_wire(tag, &other, vec![0xc1]).await.unwrap_err();
    assert!(matches!(err, Error::Codec(_)), "{err:?}");
    // The hanging handler cannot finish: shutdown says so instead of hanging.
    // It was the leave drain that waited: the error says so.
    let r = both.shutdown().await;
    assert!(
        matches!(&r, Err(Error::ShutdownTimeout { pending }) if pending.contains("leave drain")),
        "{r:?}"
    );
    for n in [game, chat] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_fails_in_flight_calls_fast_and_its_shards_move() {
    let (game, chat, both) = three(Cluster::memory()).await;
    let on_both: Vec<String> = (0..)
        .map(|i| format!("q{i}"))
        .filter(|id| game.owner_of::<Player>(id).unwrap() == "both-1")
        .take(20)
        .collect();
    let hanging = {
        let game = game.clone();
        let id = on_both[0].clone();
        let mut call = Box::pin(async move {
            game.call::<Player, _>(&id, Hang)
                .timeout(Duration::from_secs(3600))
                .await
        });
        // Polled once here, so it is sent before the call below (a spawned
        // task might only start after the node is severed).
        let pending = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(call.as_mut(), cx).is_pending())
        })
        .await;
        assert!(pending);
        tokio::spawn(call)
    };
    // The call is in flight on both-1 once it answers a later one.
    assert!(game.call::<Player, _>(&on_both[1], Score(1)).await.is_ok());
    both.sever();
    // The error names the call: node, actor type and id.
    let err = soon(hanging).await.unwrap().unwrap_err();
    assert_eq!(
        err,
        Error::NodeDown {
            node: "both-1".into(),
            actor: "Player".into(),
            id: on_both[0].clone(),
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "call to Player {:?}: node \"both-1\" is down or unreachable",
            on_both[0]
        )
    );
    wait_members(&[&game, &chat], 2).await;
    for id in &on_both {
        assert_eq!(game.owner_of::<Player>(id).unwrap(), "game-1");
        let (served_by, _) = soon(chat.call::<Player, _>(id, Score(1)).into_future())
            .await
            .unwrap();
        assert_eq!(served_by, "game-1");
    }
    for n in [game, chat] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_no_longer_owns_a_shard_forwards_once() {
    let (game, chat, both) = three(Cluster::memory()).await;
    let id = (0..)
        .map(|i| format!("w{i}"))
        .find(|id| game.owner_of::<Player>(id).unwrap() == "both-1")
        .unwrap();
    // game-1 receives an encoded call for a shard it does not own: it
    // forwards it to both-1 instead of failing it.
    let tag = mesh::tag_of::<Player, Score>();
    let reply = game
        .call_wire(tag, &id, mesh::wire::encode(&Score(7)).unwrap())
        .await
        .unwrap();
    let (served_by, score): (String, u64) = mesh::wire::decode(&reply).unwrap();
    assert_eq!((served_by.as_str(), score), ("both-1", 7));
    for n in [game, chat, both] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_whose_shard_moves_are_drained_with_their_hook() {
    let (tx, mut handovers) = tokio::sync::mpsc::unbounded_channel();
    *HANDOVERS.lock().unwrap() = Some(tx);
    let net = Transport::memory(MemoryNetwork::new());
    let a = node(&net, "d-a", "d-a", &["ledger"], &[]).await;
    let ids: Vec<String> = (0..60).map(|i| format!("acct{i}")).collect();
    for id in &ids {
        assert_eq!(
            a.call::<Account, _>(id, Deposit(1)).await.unwrap(),
            ("d-a".to_owned(), 1)
        );
    }
    // A second node joins: about half the shards move to it.
    let b = node(&net, "d-b", "d-b", &["ledger"], &["d-a"]).await;
    wait_members(&[&a, &b], 2).await;
    let moved: Vec<&String> = ids
        .iter()
        .filter(|id| a.owner_of::<Account>(id).unwrap() == "d-b")
        .collect();
    assert!(
        !moved.is_empty() && moved.len() < ids.len(),
        "{} of {} moved",
        moved.len(),
        ids.len()
    );
    // The old owner drains exactly those, running their hook.
    let mut drained = Vec::new();
    for _ in 0..moved.len() {
        let (node, id, balance) = soon(handovers.recv()).await.unwrap();
        assert_eq!((node.as_str(), balance), ("d-a", 1));
        drained.push(id);
    }
    drained.sort();
    let mut want: Vec<String> = moved.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(drained, want);
    // Their next call activates them on the new owner (state is not
    // transferred: it is the actor's to persist in its hook).
    assert_eq!(
        a.call::<Account, _>(moved[0], Deposit(1)).await.unwrap(),
        ("d-b".to_owned(), 1)
    );
    for n in [a, b] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_forwarded_while_nodes_disagree_during_a_join() {
    // Heartbeats an hour apart: after a join, only the node the newcomer
    // dialed knows it, until gossip, which here never comes in time.
    let net = Transport::memory(MemoryNetwork::new());
    let slow = |name: &str, seeds: &[&str]| {
        member("test", name)
            .transport(net.clone())
            .listen(name)
            .seeds(seeds.iter().copied())
            .heartbeat(Duration::from_secs(3600), Duration::from_secs(7200))
            .capabilities(["game"])
            .actor::<Player>()
            .start()
    };
    let a = slow("fw-a", &[]).await.unwrap();
    let b = slow("fw-b", &["fw-a"]).await.unwrap();
    wait_members(&[&a, &b], 2).await;
    let c = slow("fw-c", &["fw-b"]).await.unwrap();
    soon(b.membership_changes().wait_for(|m| m.len() == 3))
        .await
        .unwrap();
    soon(c.membership_changes().wait_for(|m| m.len() == 2))
        .await
        .unwrap();
    assert_eq!(a.membership().len(), 2, "a has not heard of c");
    // An id a still places on b, which b now places on c.
    let id = (0..)
        .map(|i| format!("j{i}"))
        .find(|id| {
            a.owner_of::<Player>(id).unwrap() == "fw-b"
                && b.owner_of::<Player>(id).unwrap() == "fw-c"
        })
        .unwrap();
    let (served_by, score) = soon(a.call::<Player, _>(&id, Score(3)).into_future())
        .await
        .unwrap();
    assert_eq!(
        (served_by.as_str(), score),
        ("fw-c", 3),
        "b forwarded it once to c"
    );
    // A cast takes the same path, in order with a call after it.
    a.cast::<Player, _>(&id, Score(4)).unwrap();
    let (served_by, score) = soon(a.call::<Player, _>(&id, Score(0)).into_future())
        .await
        .unwrap();
    assert_eq!(
        (served_by.as_str(), score),
        ("fw-c", 7),
        "the cast was forwarded too"
    );
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
}

/// Held by `Block` until `Open` adds a permit; `Bump` counts its runs.
static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
static BLOCKED: tokio::sync::Notify = tokio::sync::Notify::const_new();
static BUMPS: AtomicUsize = AtomicUsize::new(0);

#[derive(Actor, Default)]
#[actor(capability = "gate")]
struct Gated;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = ())]
struct Block;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = usize)]
struct Bump;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = ())]
struct Open;

#[mesh::handlers]
impl Gated {
    async fn block(&mut self, _: Block) {
        BLOCKED.notify_one();
        if let Ok(p) = GATE.acquire().await {
            p.forget();
        }
    }

    async fn bump(&mut self, _: Bump) -> usize {
        BUMPS.fetch_add(1, Ordering::SeqCst) + 1
    }

    async fn open(&mut self, _: Open) {
        GATE.add_permits(1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_remote_call_is_cancelled_on_the_callee_if_not_started() {
    use std::future::Future;
    use std::task::Poll;
    let net = Transport::memory(MemoryNetwork::new());
    let b = node(&net, "b", "mem-b", &["gate"], &[]).await;
    let a = node(&net, "a", "mem-a", &["game"], &["mem-b"]).await;
    wait_members(&[&a, &b], 2).await;
    // "g" is busy (blocked) on b, so a second message waits in its mailbox.
    let blocked = {
        let a = a.clone();
        tokio::spawn(async move { a.call::<Gated, _>("g", Block).await })
    };
    soon(BLOCKED.notified()).await;
    let mut bump = Box::pin(
        a.call::<Gated, _>("g", Bump)
            .timeout(Duration::from_secs(3600))
            .into_future(),
    );
    // One poll sends it; then the caller gives up on it.
    let pending = std::future::poll_fn(|cx| Poll::Ready(bump.as_mut().poll(cx).is_pending())).await;
    assert!(pending);
    drop(bump);
    // The cancel travels ahead of this call on the same connection.
    soon(a.call::<Gated, _>("opener", Open).into_future())
        .await
        .unwrap();
    soon(blocked).await.unwrap().unwrap();
    // The abandoned Bump was skipped: this one is the first to run.
    assert_eq!(
        soon(a.call::<Gated, _>("g", Bump).into_future()).await,
        Ok(1)
    );
}

/// Calls to 20 players through `node` are all served by `owner`.
async fn all_served_by(node: &Node, owner: &str) {
    for i in 0..20 {
        let (served_by, _) = soon(
            node.call::<Player, _>(&format!("p{i}"), Score(1))
                .into_future(),
        )
        .await
        .unwrap();
        assert_eq!(served_by, owner);
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_makes_the_node_leave() {
    let net = Transport::memory(MemoryNetwork::new());
    let a = node(&net, "a", "mem-a", &["game"], &[]).await;
    let b = node(&net, "b", "mem-b", &["game"], &["mem-a"]).await;
    wait_members(&[&a, &b], 2).await;
    let b2 = b.clone();
    drop(b);
    // A clone keeps it running.
    assert_eq!(b2.membership().len(), 2);
    let mut changes = a.membership_changes();
    drop(b2);
    // Gone at once, not after a failure timeout: its connections closed.
    let started = tokio::time::Instant::now();
    soon(changes.wait_for(|m| m.len() == 1)).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    all_served_by(&a, "a").await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_peer_is_dropped_within_the_failure_timeout_and_rejoins_when_it_answers() {
    let memory = MemoryNetwork::new();
    let net = Transport::memory(memory.clone());
    let a = node(&net, "a", "mem-a", &["game"], &[]).await;
    let b = node(&net, "b", "mem-b", &["game"], &["mem-a"]).await;
    wait_members(&[&a, &b], 2).await;
    // b hangs: its links stay open but carry nothing (no error, no close).
    let started = tokio::time::Instant::now();
    memory.stall("a", "b");
    wait_members(&[&a, &b], 1).await;
    // heartbeat 50 ms, failure timeout 2 s: a ping sent within one
    // heartbeat goes unanswered for the failure timeout.
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took <= Duration::from_millis(2050), "{took:?}");
    all_served_by(&a, "a").await;
    memory.heal("a", "b");
    wait_members(&[&a, &b], 2).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A chat node whose frames carry checksums and stop at `max_frame`.
async fn strict(net: &Transport, name: &str, seeds: &[&str], max_frame: usize) -> Node {
    member("test", name)
        .transport(net.clone())
        .listen(format!("mem-{name}"))
        .seeds(seeds.iter().copied())
        .checksums(true)
        .max_frame(max_frame)
        .handshake_timeout(Duration::from_millis(300))
        .max_connections_per_peer(1)
        .capabilities(["chat"])
        .actor::<Room>()
        .start()
        .await
        .expect("node starts")
}

#[tokio::test(start_paused = true)]
async fn frame_limit_checksums_and_connections_per_peer_are_settable() {
    let memory = MemoryNetwork::new();
    let net = Transport::memory(memory.clone());
    let a = strict(&net, "a", &[], 4096).await;
    let b = strict(&net, "b", &["mem-a"], 4096).await;
    wait_members(&[&a, &b], 2).await;
    assert_eq!(memory.link_count("a", "b"), 1, "one connection per peer");
    let remote = (0..100)
        .map(|i| format!("r{i}"))
        .find(|id| a.owner_of::<Room>(id).unwrap() == "b")
        .unwrap();
    // Checksummed frames flow; a message over the limit fails that call.
    assert_eq!(a.call::<Room, _>(&remote, Say("hi".into())).await, Ok(1));
    let big = "x".repeat(8192);
    assert!(matches!(
        a.call::<Room, _>(&remote, Say(big)).await,
        Err(Error::Codec(_))
    ));
    assert_eq!(a.call::<Room, _>(&remote, Say("again".into())).await, Ok(2));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Calls `Score(1)` on 200 players through `client` from 8 tasks until
/// `stop`; counts successes and failures (by error).
fn load(
    client: &Node,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (
    std::sync::Arc<AtomicUsize>,
    tokio::task::JoinSet<Vec<Error>>,
) {
    let ok = std::sync::Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let (client, stop, ok) = (client.clone(), stop.clone(), ok.clone());
        tasks.spawn(async move {
            let mut failed = Vec::new();
            let mut i = t;
            while !stop.load(Ordering::SeqCst) {
                match client
                    .call::<Player, _>(&format!("p{}", i % 200), Score(1))
                    .await
                {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => failed.push(e),
                }
                i += 8;
            }
            failed
        });
    }
    (ok, tasks)
}

/// Waits until `n` more calls have succeeded.
async fn more_calls(ok: &AtomicUsize, n: usize) {
    let target = ok.load(Ordering::SeqCst) + n;
    soon(async {
        while ok.load(Ordering::SeqCst) < target {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_call() {
    let net = Transport::memory(MemoryNetwork::new());
    let mut nodes = Vec::new();
    for i in 0..3 {
        let seeds: Vec<&str> = if i == 0 { vec![] } else { vec!["mem-n0"] };
        nodes.push(
            node(
                &net,
                &format!("n{i}"),
                &format!("mem-n{i}"),
                &["game"],
                &seeds,
            )
            .await,
        );
    }
    // A client node that hosts nothing drives the load.
    let client = node(&net, "client", "mem-client", &[], &["mem-n0"]).await;
    let all = |nodes: &Vec<Node>| {
        let mut v: Vec<Node> = nodes.clone();
        v.push(client.clone());
        v
    };
    wait_members(&all(&nodes).iter().collect::<Vec<_>>(), 4).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, mut tasks) = load(&client, stop.clone());
    more_calls(&ok, 500).await;
    for i in 0..3 {
        // Each node in turn leaves cleanly under load, then starts again.
        let leaving = nodes[i].clone();
        leaving.shutdown().await.expect("a clean leave");
        let mut changes = client.membership_changes();
        soon(changes.wait_for(|m| !m.contains(&format!("n{i}"))))
            .await
            .unwrap();
        more_calls(&ok, 300).await;
        let seed = format!("mem-n{}", (i + 1) % 3);
        nodes[i] = node(
            &net,
            &format!("n{i}"),
            &format!("mem-n{i}"),
            &["game"],
            &[&seed],
        )
        .await;
        wait_members(&all(&nodes).iter().collect::<Vec<_>>(), 4).await;
        more_calls(&ok, 500).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut failed = Vec::new();
    while let Some(t) = tasks.join_next().await {
        failed.extend(t.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} calls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(ok.load(Ordering::SeqCst) >= 2900);
    for n in nodes.iter().chain([&client]) {
        n.shutdown().await.unwrap();
    }
}

/// A game node of cluster "test" with `cookie`, seeded with `seeds`, that
/// serves only once it has seen 2 members (`min_members(2)`).
async fn guarded(net: &Transport, name: &str, cookie: &str, seeds: &[&str]) -> Node {
    fast(member("test", name))
        .cookie(cookie)
        .transport(net.clone())
        .listen(format!("mem-{name}"))
        .seeds(seeds.iter().copied())
        .min_members(2)
        .capabilities(["game"])
        .actor::<Player>()
        .start()
        .await
        .expect("node starts")
}

/// Issue 24, point 3: a node with the wrong cookie used to form a second,
/// empty cluster of one, ready and serving every player from empty state.
/// With `min_members(2)` it is not ready and refuses calls with a clear
/// error, while a node with the right cookie joins and serves.
#[tokio::test(start_paused = true)]
async fn min_members_keeps_a_node_with_the_wrong_cookie_from_serving_alone() {
    let net = Transport::memory(MemoryNetwork::new());
    let a = guarded(&net, "qa", mesh_testkit::COOKIE, &[]).await;
    let wrong = guarded(&net, "qwrong", mesh_testkit::OTHER_COOKIE, &["mem-qa"]).await;
    let need = Err(Error::NotEnoughMembers { have: 1, need: 2 });
    // Alone, both refuse: the first node waits for its cluster too.
    for n in [&a, &wrong] {
        assert!(!n.is_ready(), "{} is ready alone", n.id());
        assert_eq!(n.call::<Player, _>("p1", Score(1)).await, need);
        assert_eq!(n.cast::<Player, _>("p1", Score(1)), need.clone().map(drop));
    }
    let text = need.clone().unwrap_err().to_string();
    assert!(
        text.contains("1 member(s) of the 2") && text.contains("cookie"),
        "{text}"
    );

    // The right cookie joins; both serve and are ready.
    let b = guarded(&net, "qb", mesh_testkit::COOKIE, &["mem-qa"]).await;
    wait_members(&[&a, &b], 2).await;
    for n in [&a, &b] {
        assert!(n.is_ready(), "{} is not ready with 2 members", n.id());
    }
    let (_, score) = a.call::<Player, _>("p1", Score(1)).await.unwrap();
    assert_eq!(score, 1);
    assert_eq!(b.call::<Player, _>("p1", Score(1)).await.unwrap().1, 2);

    // The wrong cookie stays out, unready, refusing, and activated nothing.
    assert!(!a.membership().contains("qwrong"));
    assert_eq!(wrong.membership().len(), 1);
    assert!(!wrong.is_ready());
    assert_eq!(wrong.call::<Player, _>("p1", Score(1)).await, need);
    assert_eq!(wrong.activation_count(), 0);

    // Below min_members later: not ready, but still serving (only the
    // first time is gated).
    b.sever();
    wait_members(&[&a], 1).await;
    assert!(!a.is_ready());
    assert_eq!(a.call::<Player, _>("p2", Score(5)).await.unwrap().1, 5);

    // On a node that is not clustered, min_members > 1 is a start error.
    let err = Node::builder()
        .default_node(false)
        .min_members(2)
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            StartError::InvalidSetting { setting: "NodeBuilder::min_members", reason }
                if reason.contains("min_members")
        ),
        "{err:?}"
    );

    for n in [a, wrong, b] {
        let _ = n.shutdown().await;
    }
}

/// A severed node (as a crash) keeps its membership as it was: once its
/// cluster is stopped the peer-table owner applies nothing more. Before,
/// it went on applying the closes `sever` itself caused, each one a
/// membership update that scans all of the node's activations (28 ms per
/// 100 000 of them, on a worker thread, in the strong benchmark's crash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_severed_node_applies_no_more_membership_changes() {
    let [a, b] = Cluster::tcp()
        .fast()
        .chain()
        .node("a", |n| with_actors(n, &["game"]))
        .node("b", |n| with_actors(n, &["game"]))
        .start()
        .await
        .into_array();
    wait_members(&[&a, &b], 2).await;
    let mut seen = b.membership_changes();
    seen.borrow_and_update();
    b.sever();
    wait_members(&[&a], 1).await;
    // Nothing to await for "b did not change": give its owner time to
    // handle the closes `sever` queued (it did within a millisecond when
    // it still applied them).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !seen.has_changed().unwrap_or(true),
        "the severed node changed its membership: {:?}",
        b.membership()
    );
    assert_eq!(b.membership().len(), 2);
    let _ = a.shutdown().await;
}

/// The heartbeat is a supervised ractor actor (`node/cluster/supervisor.rs`):
/// after it fails on both nodes, it is restarted, so a hung peer is still
/// dropped within the failure timeout. Without the restart nothing pings
/// and the hung peer stays a member (the wait below times out).
#[tokio::test(start_paused = true)]
async fn a_failed_heartbeat_is_restarted_and_still_drops_a_hung_peer() {
    let memory = MemoryNetwork::new();
    let net = Transport::memory(memory.clone());
    let a = node(&net, "a", "mem-a", &["game"], &[]).await;
    let b = node(&net, "b", "mem-b", &["game"], &["mem-a"]).await;
    wait_members(&[&a, &b], 2).await;
    a.crash_worker(true);
    b.crash_worker(true);
    let started = tokio::time::Instant::now();
    memory.stall("a", "b");
    wait_members(&[&a, &b], 1).await;
    let took = started.elapsed();
    assert!(took <= Duration::from_millis(2150), "{took:?}");
    memory.heal("a", "b");
    wait_members(&[&a, &b], 2).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The peer-table owner is a supervised ractor actor: when it fails, what
/// it tracked is lost, so every connection closes (the peer sees this
/// node leave) and a fresh owner redials; calls work again after. Without
/// the close the peer never sees the node leave; without the restart the
/// node never rejoins (either wait times out).
#[tokio::test(start_paused = true)]
async fn a_failed_peer_table_owner_closes_its_links_and_the_node_rejoins() {
    let net = Transport::memory(MemoryNetwork::new());
    let a = node(&net, "a", "mem-a", &["game"], &["mem-b"]).await;
    let b = node(&net, "b", "mem-b", &["game"], &["mem-a"]).await;
    wait_members(&[&a, &b], 2).await;
    // A call from b hangs on an actor of a: it fails once the link closes.
    let on_a = (0..)
        .map(|i| format!("h{i}"))
        .find(|id| b.owner_of::<Player>(id).unwrap() == "a")
        .unwrap();
    let hanging = {
        let b = b.clone();
        let id = on_a.clone();
        tokio::spawn(async move { b.call::<Player, _>(&id, Hang).await })
    };
    // It is in flight once a later call on the same link is answered.
    let later = (0..)
        .map(|i| format!("l{i}"))
        .find(|id| b.owner_of::<Player>(id).unwrap() == "a")
        .unwrap();
    assert!(b.call::<Player, _>(&later, Score(1)).await.is_ok());
    a.crash_worker(false);
    let err = soon(hanging).await.unwrap().unwrap_err();
    assert!(matches!(err, Error::NodeDown { .. }), "{err:?}");
    wait_members(&[&a, &b], 2).await;
    // Calls reach both owners again.
    for i in 0..20 {
        let id = format!("p{i}");
        let r = soon(a.call::<Player, _>(&id, Score(1)).into_future()).await;
        assert!(r.is_ok(), "{id}: {r:?}");
    }
    // The hanging handler may keep a's shutdown waiting: not judged here.
    let _ = a.shutdown().await;
    b.shutdown().await.unwrap();
}
