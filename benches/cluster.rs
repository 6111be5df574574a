//! Two-process benchmarks, each beside a raw baseline from the same run.
//!
//! `cargo bench --bench cluster` re-runs itself as a server process
//! (`--serve`) hosting a mesh node and a raw echo server, then measures from
//! this process over loopback:
//! - call throughput with 256 calls in flight, vs a raw length-prefixed
//!   rmp-serde TCP echo with the same pipelining (one connection, a batching
//!   writer task, a reader task completing requests by id);
//! - sequential call latency p50/p99, vs a raw TCP ping-pong;
//! - three processes (two more `--serve` nodes), 500 callers of which
//!   65 % call an actor in another process, vs the same load over plain
//!   tokio routed to the same processes (a task and channel per local
//!   actor, the pipelined raw client per remote process);
//! - shards moved when a 4th node joins a running 3-node cluster, read from
//!   the running nodes' routing, and actors drained by the join.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, BufMut, BytesMut};
use hdrhistogram::Histogram;
use mesh::prelude::*;
use serde_bytes::ByteBuf;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

const IN_FLIGHT: usize = 256;
const TP_CALLS: usize = 200_000;
const LAT_CALLS: usize = 20_000;
const COOKIE: &str = mesh_testkit::COOKIE;

#[derive(Actor, Default)]
#[actor(capability = "echo", idle_timeout = "never")]
struct Echo;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = u64)]
struct Ping(u64);

#[mesh::handlers]
impl Echo {
    async fn ping(&mut self, Ping(n): Ping) -> u64 {
        n
    }
}

static MOVED: AtomicU64 = AtomicU64::new(0);
static MOVED_NOTIFY: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[derive(Actor, Default)]
#[actor(capability = "spread", on_deactivate = Spread::gone)]
struct Spread;

impl Spread {
    async fn gone(&mut self, _: &Ctx) {
        MOVED.fetch_add(1, Ordering::SeqCst);
        MOVED_NOTIFY.notify_waiters();
    }
}

#[mesh::handlers]
impl Spread {
    async fn ping(&mut self, Ping(n): Ping) -> u64 {
        n
    }
}

// ------------------------------------------------------------ raw baseline

type Frame = (u64, ByteBuf);

fn put_frame(buf: &mut BytesMut, frame: &Frame) {
    let body = rmp_serde::to_vec(frame).expect("encode");
    buf.put_u32(body.len() as u32);
    buf.put_slice(&body);
}

fn take_frame(buf: &mut BytesMut) -> Option<Frame> {
    if buf.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if buf.len() < 4 + len {
        return None;
    }
    buf.advance(4);
    let body = buf.split_to(len);
    rmp_serde::from_slice(&body).ok()
}

/// Raw echo server: decodes each frame and writes back the same value.
async fn raw_server(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut inb = BytesMut::with_capacity(64 << 10);
            let mut out = BytesMut::with_capacity(64 << 10);
            loop {
                match s.read_buf(&mut inb).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                while let Some(frame) = take_frame(&mut inb) {
                    put_frame(&mut out, &frame);
                }
                if s.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        });
    }
}

/// A raw connection's writer: batches what is queued into one write. As
/// mesh's writer, it first lets the tasks about to send run, so one write
/// carries their frames too.
async fn batching_writer(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Frame>,
) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    while let Some(f) = rx.recv().await {
        tokio::task::yield_now().await;
        put_frame(&mut buf, &f);
        while let Ok(f) = rx.try_recv() {
            put_frame(&mut buf, &f);
        }
        if wr.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
    }
}

/// Raw echo server with the actor model's one hop and nothing else: a
/// frame's body is `(actor, n)`; the reader hands `n` to that actor's task
/// (a tokio task and channel, spawned on first use), which answers
/// through the connection's batching writer task, as mesh's activations
/// answer through theirs.
async fn raw_actor_server(listener: TcpListener) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            return;
        };
        let _ = s.set_nodelay(true);
        let (mut rd, wr) = s.into_split();
        let (out, rx) = mpsc::unbounded_channel::<Frame>();
        tokio::spawn(batching_writer(wr, rx));
        tokio::spawn(async move {
            let mut actors: HashMap<u32, mpsc::UnboundedSender<(u64, u64)>> = HashMap::new();
            let mut inb = BytesMut::with_capacity(64 << 10);
            loop {
                match rd.read_buf(&mut inb).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                while let Some((corr, body)) = take_frame(&mut inb) {
                    let Ok((actor, n)) = rmp_serde::from_slice::<(u32, u64)>(&body) else {
                        return;
                    };
                    let tx = actors.entry(actor).or_insert_with(|| {
                        let (tx, mut rx) = mpsc::unbounded_channel::<(u64, u64)>();
                        let out = out.clone();
                        tokio::spawn(async move {
                            while let Some((corr, n)) = rx.recv().await {
                                let body = rmp_serde::to_vec(&n).expect("encode");
                                let _ = out.send((corr, ByteBuf::from(body)));
                            }
                        });
                        tx
                    });
                    let _ = tx.send((corr, n));
                }
            }
        });
    }
}

/// Raw pipelined client: a batching writer and a reader completing by id.
#[derive(Clone)]
struct RawClient {
    out: mpsc::UnboundedSender<Frame>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<ByteBuf>>>>,
    next: Arc<AtomicU64>,
}

impl RawClient {
    async fn connect(addr: &str) -> RawClient {
        let s = TcpStream::connect(addr).await.expect("raw connect");
        let _ = s.set_nodelay(true);
        let (mut rd, wr) = s.into_split();
        let (out, rx) = mpsc::unbounded_channel::<Frame>();
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<ByteBuf>>>> = Arc::default();
        tokio::spawn(batching_writer(wr, rx));
        let p = pending.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 << 10);
            loop {
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                while let Some((id, body)) = take_frame(&mut buf) {
                    if let Some(tx) = p.lock().expect("pending").remove(&id) {
                        let _ = tx.send(body);
                    }
                }
            }
        });
        RawClient {
            out,
            pending,
            next: Arc::new(AtomicU64::new(1)),
        }
    }

    async fn call(&self, body: Vec<u8>) -> ByteBuf {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending").insert(id, tx);
        self.out
            .send((id, ByteBuf::from(body)))
            .expect("writer alive");
        rx.await.expect("reply")
    }
}

/// Calls per second of `calls` calls made by `callers` (each spawned as a
/// task), timed from before the first spawn to the last caller's end.
async fn rate<F>(calls: usize, callers: impl Iterator<Item = F>) -> f64
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = callers.map(tokio::spawn).collect();
    for t in tasks {
        t.await.expect("caller");
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

// ------------------------------------------------------------ processes

/// A server process: `--serve [ID CLUSTER [SEED]]` hosts a mesh node of
/// `echo` actors and a raw echo server, prints both addresses, and serves
/// until its stdin closes.
async fn serve(args: &[String]) {
    let id = args.first().map_or("server", String::as_str);
    let cluster = args.get(1).map_or("bench", String::as_str);
    let node = Node::builder()
        .id(id)
        .default_node(false)
        .cluster(cluster)
        .cookie(COOKIE)
        .listen("127.0.0.1:0")
        .seeds(args.get(2).cloned())
        .capabilities(["echo"])
        .actor::<Echo>()
        .start()
        .await
        .expect("server node");
    let raw = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("raw listener");
    let raw_addr = raw.local_addr().expect("raw addr");
    let actors = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("raw actor listener");
    let actors_addr = actors.local_addr().expect("raw actor addr");
    println!(
        "mesh={} raw={raw_addr} actors={actors_addr}",
        node.addr().expect("listening")
    );
    tokio::spawn(raw_server(raw));
    tokio::spawn(raw_actor_server(actors));
    // Serve until the parent closes our stdin.
    let mut line = String::new();
    let _ = BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await;
    let _ = node.shutdown().await;
}

/// A server process started by [`spawn_server`], and its two addresses.
struct Server {
    child: tokio::process::Child,
    mesh: String,
    raw: String,
    actors: String,
}

impl Server {
    async fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait().await;
    }
}

async fn spawn_server(args: &[&str]) -> Server {
    let exe = std::env::current_exe().expect("bench binary");
    let mut child = tokio::process::Command::new(exe)
        .arg("--serve")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn server process");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = lines
        .next_line()
        .await
        .expect("server output")
        .expect("server line");
    let mut parts = line.split_whitespace();
    let mesh = parts
        .next()
        .and_then(|p| p.strip_prefix("mesh="))
        .expect("mesh addr")
        .to_owned();
    let raw = parts
        .next()
        .and_then(|p| p.strip_prefix("raw="))
        .expect("raw addr")
        .to_owned();
    let actors = parts
        .next()
        .and_then(|p| p.strip_prefix("actors="))
        .expect("raw actor addr")
        .to_owned();
    Server {
        child,
        mesh,
        raw,
        actors,
    }
}

fn q(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn measure() {
    let server = spawn_server(&[]).await;
    let (mesh_addr, raw_addr) = (server.mesh.clone(), server.raw.clone());
    let node = Node::builder()
        .id("client")
        .default_node(false)
        .cluster("bench")
        .cookie(COOKIE)
        .listen("127.0.0.1:0")
        .seeds([mesh_addr])
        .start()
        .await
        .expect("client node");
    node.membership_changes()
        .wait_for(|m| m.len() == 2)
        .await
        .expect("joined");
    let raw = RawClient::connect(&raw_addr).await;
    let raw_actors = RawClient::connect(&server.actors).await;

    // Warm up every path (activations, connections, allocator).
    let ids: Arc<Vec<String>> = Arc::new((0..IN_FLIGHT).map(|i| format!("echo-{i}")).collect());
    for (w, id) in ids.iter().enumerate() {
        node.call::<Echo, _>(id, Ping(0)).await.expect("warm");
        raw.call(rmp_serde::to_vec(&0u64).expect("encode")).await;
        let body = rmp_serde::to_vec(&(w as u32, 0u64)).expect("encode");
        raw_actors.call(body).await;
    }

    let mut tp_mesh = Vec::new();
    let mut tp_raw = Vec::new();
    let mut tp_actors = Vec::new();
    // Profiling: `MESH_BENCH_ONLY=mesh|raw` runs one side's throughput only.
    let only = std::env::var("MESH_BENCH_ONLY").ok();
    for _ in 0..3 {
        if only.as_deref() == Some("raw") {
            tp_mesh.push(0.0);
        } else {
            let callers = (0..IN_FLIGHT).map(|w| {
                let (node, ids) = (node.clone(), ids.clone());
                async move {
                    for i in 0..TP_CALLS / IN_FLIGHT {
                        node.call::<Echo, _>(&ids[w], Ping(i as u64))
                            .await
                            .expect("call");
                    }
                }
            });
            tp_mesh.push(rate(TP_CALLS, callers).await);
        }
        if only.as_deref() == Some("mesh") {
            tp_raw.push(0.0);
            continue;
        }

        let callers = (0..IN_FLIGHT).map(|_| {
            let raw = raw.clone();
            async move {
                for i in 0..TP_CALLS / IN_FLIGHT {
                    let body = rmp_serde::to_vec(&(i as u64)).expect("encode");
                    let reply = raw.call(body).await;
                    let _: u64 = rmp_serde::from_slice(&reply).expect("decode");
                }
            }
        });
        tp_raw.push(rate(TP_CALLS, callers).await);

        let callers = (0..IN_FLIGHT).map(|w| {
            let raw = raw_actors.clone();
            async move {
                for i in 0..TP_CALLS / IN_FLIGHT {
                    let body = rmp_serde::to_vec(&(w as u32, i as u64)).expect("encode");
                    let reply = raw.call(body).await;
                    let _: u64 = rmp_serde::from_slice(&reply).expect("decode");
                }
            }
        });
        tp_actors.push(rate(TP_CALLS, callers).await);
    }
    tp_mesh.sort_by(f64::total_cmp);
    tp_raw.sort_by(f64::total_cmp);
    tp_actors.sort_by(f64::total_cmp);
    if only.is_some() {
        println!("throughput only: mesh {:?} raw {:?}", tp_mesh, tp_raw);
        server.stop().await;
        return;
    }

    // Sequential latency: mesh call vs raw ping-pong on its own connection.
    let mut lat_mesh = Histogram::<u64>::new(3).expect("histogram");
    let mut lat_raw = Histogram::<u64>::new(3).expect("histogram");
    let mut pingpong = TcpStream::connect(&raw_addr).await.expect("raw connect");
    let _ = pingpong.set_nodelay(true);
    let mut buf = BytesMut::new();
    for round in 0..2 {
        for i in 0..LAT_CALLS {
            let t = Instant::now();
            node.call::<Echo, _>("latency", Ping(i as u64))
                .await
                .expect("call");
            if round > 0 {
                lat_mesh
                    .record(t.elapsed().as_nanos() as u64)
                    .expect("record");
            }
            let t = Instant::now();
            let mut out = BytesMut::new();
            put_frame(
                &mut out,
                &(
                    i as u64,
                    ByteBuf::from(rmp_serde::to_vec(&(i as u64)).expect("encode")),
                ),
            );
            pingpong.write_all(&out).await.expect("write");
            loop {
                if take_frame(&mut buf).is_some() {
                    break;
                }
                pingpong.read_buf(&mut buf).await.expect("read");
            }
            if round > 0 {
                lat_raw
                    .record(t.elapsed().as_nanos() as u64)
                    .expect("record");
            }
        }
    }
    server.stop().await;
    let _ = node.shutdown().await;

    let three = three_processes().await;
    let (moved_shards, drained, actors) = join_movement().await;

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("mesh cluster benchmarks: {cores} cores, two processes on loopback, median of 3 throughput runs");
    println!();
    println!("| figure | mesh | baseline | baseline | ratio | goal |");
    println!("|---|---|---|---|---|---|");
    let (m, r, a) = (tp_mesh[1], tp_raw[1], tp_actors[1]);
    println!(
        "| calls/s, {IN_FLIGHT} in flight | {m:.0}/s | raw rmp-serde TCP echo | {r:.0}/s | {:.2}x | >= 0.8x |",
        m / r
    );
    println!(
        "| | | raw echo, a task per actor | {a:.0}/s | {:.2}x | |",
        m / a
    );
    println!(
        "| (spread of the 3 runs) | {:.0}-{:.0}/s | | {:.0}-{:.0}/s, {:.0}-{:.0}/s | | |",
        tp_mesh[0], tp_mesh[2], tp_raw[0], tp_raw[2], tp_actors[0], tp_actors[2]
    );
    let (m50, r50) = (q(&lat_mesh, 0.5), q(&lat_raw, 0.5));
    let (m99, r99) = (q(&lat_mesh, 0.99), q(&lat_raw, 0.99));
    println!("| latency p50, sequential | {m50:.1} us | raw TCP ping-pong | {r50:.1} us | {:.2}x | <= 1.1x |", m50 / r50);
    println!(
        "| latency p99, sequential | {m99:.1} us | raw TCP ping-pong | {r99:.1} us | {:.2}x | <= 1.15x |",
        m99 / r99
    );
    let (m, r, a) = (three.mesh[1], three.raw[1], three.actors[1]);
    println!(
        "| calls/s, 3 processes, {THREE_IN_FLIGHT} in flight, {:.0}% remote | {m:.0}/s | raw tokio, same routing | {r:.0}/s | {:.2}x | >= 0.8x |",
        three.remote * 100.0,
        m / r
    );
    println!(
        "| | | same, a task per remote actor | {a:.0}/s | {:.2}x | |",
        m / a
    );
    println!(
        "| (spread of the 3 runs) | {:.0}-{:.0}/s | | {:.0}-{:.0}/s, {:.0}-{:.0}/s | | |",
        three.mesh[0], three.mesh[2], three.raw[0], three.raw[2], three.actors[0], three.actors[2]
    );
    println!(
        "| shards moved, 4th node joins 3 | {:.1}% | ideal 1/4 | 25.0% | {:.2}x | <= 27% |",
        moved_shards * 100.0,
        moved_shards / 0.25
    );
    println!(
        "| actors drained by that join | {drained} of {actors} ({:.1}%) | | | | |",
        drained as f64 * 100.0 / actors as f64
    );
}

// ------------------------------------------------------------ 3 processes

const THREE_IN_FLIGHT: usize = 500;
const THREE_CALLS: usize = 200_000;
/// The share of callers whose actor lives in another process.
const THREE_REMOTE: f64 = 0.65;

/// Medians' inputs of the three-process row: calls/s per run, sorted.
struct Three {
    mesh: Vec<f64>,
    raw: Vec<f64>,
    actors: Vec<f64>,
    remote: f64,
}

/// A raw local "actor": a tokio task answering over a channel.
type RawLocal = mpsc::UnboundedSender<(u64, oneshot::Sender<u64>)>;

fn raw_local() -> RawLocal {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, oneshot::Sender<u64>)>();
    tokio::spawn(async move {
        while let Some((n, reply)) = rx.recv().await {
            let _ = reply.send(n);
        }
    });
    tx
}

/// Where a raw baseline call goes: the same owner mesh routes the id to
/// (remote: to the inline echo, or to that actor's task there).
#[derive(Clone)]
enum RawRoute {
    Local(RawLocal),
    Remote(RawClient),
    RemoteActor(RawClient, u32),
}

/// Three processes, each a node hosting `echo` (this one drives): 500
/// callers, each calling its own actor, 65 % of them owned by another
/// process; beside the same load over plain tokio (a task and channel
/// for a local actor, the pipelined rmp-serde TCP client for a remote
/// one), routed to the same process as mesh routes each id.
async fn three_processes() -> Three {
    let first = spawn_server(&["three-1", "three"]).await;
    let second = spawn_server(&["three-2", "three", &first.mesh]).await;
    let node = Node::builder()
        .id("three-0")
        .default_node(false)
        .cluster("three")
        .cookie(COOKIE)
        .listen("127.0.0.1:0")
        .seeds([first.mesh.clone()])
        .capabilities(["echo"])
        .actor::<Echo>()
        .start()
        .await
        .expect("driver node");
    node.membership_changes()
        .wait_for(|m| m.len() == 3)
        .await
        .expect("3 members");
    let raw_first = RawClient::connect(&first.raw).await;
    let raw_second = RawClient::connect(&second.raw).await;
    let actors_first = RawClient::connect(&first.actors).await;
    let actors_second = RawClient::connect(&second.actors).await;
    let mut actor_routes = Vec::new();
    // Ids in the set proportion: 35 % owned here, the rest by the others.
    let want_local = THREE_IN_FLIGHT - (THREE_IN_FLIGHT as f64 * THREE_REMOTE).round() as usize;
    let (mut ids, mut local, mut i) = (Vec::new(), 0, 0u64);
    let mut routes = Vec::new();
    while ids.len() < THREE_IN_FLIGHT {
        let id = format!("three-{i}");
        i += 1;
        let owner = node.owner_of::<Echo>(&id).expect("owner");
        let n = ids.len() as u32;
        let (route, actor) = match owner.as_str() {
            "three-0" if local < want_local => {
                local += 1;
                (RawRoute::Local(raw_local()), RawRoute::Local(raw_local()))
            }
            "three-0" => continue,
            _ if ids.len() - local >= THREE_IN_FLIGHT - want_local => continue,
            "three-1" => (
                RawRoute::Remote(raw_first.clone()),
                RawRoute::RemoteActor(actors_first.clone(), n),
            ),
            _ => (
                RawRoute::Remote(raw_second.clone()),
                RawRoute::RemoteActor(actors_second.clone(), n),
            ),
        };
        ids.push(id);
        routes.push(route);
        actor_routes.push(actor);
    }
    let ids = Arc::new(ids);
    for ((id, route), actor) in ids.iter().zip(&routes).zip(&actor_routes) {
        node.call::<Echo, _>(id, Ping(0)).await.expect("warm");
        raw_call(route, 0).await;
        raw_call(actor, 0).await;
    }
    let per = THREE_CALLS / THREE_IN_FLIGHT;
    let (mut mesh, mut raw, mut actors) = (Vec::new(), Vec::new(), Vec::new());
    let calls = per * THREE_IN_FLIGHT;
    let raw_callers = |routes: &[RawRoute]| {
        let routes = routes.to_vec();
        routes.into_iter().map(move |route| async move {
            for i in 0..per {
                raw_call(&route, i as u64).await;
            }
        })
    };
    for _ in 0..3 {
        let callers = (0..THREE_IN_FLIGHT).map(|w| {
            let (node, ids) = (node.clone(), ids.clone());
            async move {
                for i in 0..per {
                    node.call::<Echo, _>(&ids[w], Ping(i as u64))
                        .await
                        .expect("call");
                }
            }
        });
        mesh.push(rate(calls, callers).await);
        raw.push(rate(calls, raw_callers(&routes)).await);
        actors.push(rate(calls, raw_callers(&actor_routes)).await);
    }
    mesh.sort_by(f64::total_cmp);
    raw.sort_by(f64::total_cmp);
    actors.sort_by(f64::total_cmp);
    let _ = node.shutdown().await;
    second.stop().await;
    first.stop().await;
    Three {
        mesh,
        raw,
        actors,
        remote: 1.0 - local as f64 / THREE_IN_FLIGHT as f64,
    }
}

async fn raw_call(route: &RawRoute, n: u64) -> u64 {
    match route {
        RawRoute::Local(tx) => {
            let (reply, rx) = oneshot::channel();
            tx.send((n, reply)).expect("raw actor alive");
            rx.await.expect("raw reply")
        }
        RawRoute::Remote(client) => {
            let reply = client.call(rmp_serde::to_vec(&n).expect("encode")).await;
            rmp_serde::from_slice(&reply).expect("decode")
        }
        RawRoute::RemoteActor(client, actor) => {
            let body = rmp_serde::to_vec(&(*actor, n)).expect("encode");
            let reply = client.call(body).await;
            rmp_serde::from_slice(&reply).expect("decode")
        }
    }
}

/// Starts 3 nodes, activates actors on every shard, joins a 4th; returns
/// the fraction of shards whose owner changed (as the running nodes route)
/// and how many activations the join drained.
async fn join_movement() -> (f64, u64, usize) {
    let start = |name: &str, seeds: Vec<String>| {
        let name = name.to_owned();
        async move {
            Node::builder()
                .id(name)
                .default_node(false)
                .cluster("join")
                .cookie(COOKIE)
                .listen("127.0.0.1:0")
                .seeds(seeds)
                .capabilities(["spread"])
                .actor::<Spread>()
                .start()
                .await
                .expect("node")
        }
    };
    let a = start("j-a", vec![]).await;
    let seed = a.addr().expect("addr").to_owned();
    let b = start("j-b", vec![seed.clone()]).await;
    let c = start("j-c", vec![seed.clone()]).await;
    for n in [&a, &b, &c] {
        n.membership_changes()
            .wait_for(|m| m.len() == 3)
            .await
            .expect("3 members");
    }
    // One id per shard, so every shard is represented.
    let mut per_shard: Vec<Option<String>> = vec![None; mesh::ring::SHARDS];
    let mut i = 0u64;
    while per_shard.iter().any(Option::is_none) {
        let id = format!("s{i}");
        let s = mesh::ring::shard(&id) as usize;
        per_shard[s].get_or_insert(id);
        i += 1;
    }
    let ids: Vec<String> = per_shard.into_iter().flatten().collect();
    let before: Vec<String> = ids
        .iter()
        .map(|id| a.owner_of::<Spread>(id).expect("owner"))
        .collect();
    for id in &ids {
        a.call::<Spread, _>(id, Ping(0)).await.expect("activate");
    }
    let d = start("j-d", vec![seed]).await;
    for n in [&a, &b, &c, &d] {
        n.membership_changes()
            .wait_for(|m| m.len() == 4)
            .await
            .expect("4 members");
    }
    let moved = ids
        .iter()
        .zip(&before)
        .filter(|(id, was)| b.owner_of::<Spread>(id).expect("owner") != **was)
        .count();
    // One activation per shard: exactly the moved ones drain (their hook
    // counts them). Await that count.
    loop {
        let notified = MOVED_NOTIFY.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if MOVED.load(Ordering::SeqCst) >= moved as u64 {
            break;
        }
        notified.await;
    }
    let last = MOVED.load(Ordering::SeqCst);
    for n in [a, b, c, d] {
        let _ = n.shutdown().await;
    }
    (moved as f64 / ids.len() as f64, last, ids.len())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--serve") {
        rt.block_on(serve(&args[at + 1..]));
    } else {
        rt.block_on(measure());
    }
}
