//! Hostile peers against a real node process (`examples/cluster`): what an
//! unauthenticated stranger can make a node spend, measured as an operator
//! would see it (the process's peak RSS, `VmHWM` in `/proc/<pid>/status`).
//!
//! Before protocol version 4, 16 connections each sending a maximal
//! well-framed `Hello` (8 MiB of empty capability strings) raised a debug
//! node's peak RSS by about 2.8 GiB; now the handshake has its own 64 KiB
//! frame limit and bounded decoding.
//!
//! Linux only (`/proc`). Needs the example built (`cargo test` builds it).

use std::future::IntoFuture;

use bytes::BytesMut;
use mesh::prelude::*;
use mesh::wire::{self, FrameCodec, Kind};
use mesh_testkit::actors::{Player, Score};
use mesh_testkit::procs::{example_binary, Proc};
use mesh_testkit::{soon, COOKIE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// `/proc/<pid>/status` field `key`, in kB.
fn status_kb(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// A MessagePack string of under 32 bytes.
fn fixstr(s: &str) -> Vec<u8> {
    assert!(s.len() < 32);
    let mut out = vec![0xa0 | s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// A map body whose `fields` come first, then `flood`: an array of as
/// many empty strings as make the frame exactly `frame` bytes long.
fn flood_body(fields: &[(&str, Vec<u8>)], flood: &str, frame: usize) -> Vec<u8> {
    let mut body = vec![0x80 | (fields.len() + 1) as u8];
    for (k, v) in fields {
        body.extend(fixstr(k));
        body.extend_from_slice(v);
    }
    body.extend(fixstr(flood));
    let n = frame - wire::HEADER_LEN - body.len() - 5;
    body.push(0xdd);
    body.extend_from_slice(&(n as u32).to_be_bytes());
    body.resize(body.len() + n, 0xa0);
    assert_eq!(wire::HEADER_LEN + body.len(), frame);
    body
}

fn framed(kind: Kind, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    FrameCodec::new(wire::HANDSHAKE_MAX_FRAME, false)
        .encode(kind, 0, body, &mut out)
        .expect("within the handshake limit");
    out
}

/// Reads frames until the node closes the stream.
async fn frames_until_closed(s: &mut TcpStream) -> Vec<wire::Frame> {
    let codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    loop {
        while let Ok(Some(f)) = codec.decode(&mut buf) {
            frames.push(f);
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return frames,
            Ok(_) => {}
        }
    }
}

/// The attack of issue 19: a `Hello` as large as the node accepts, its
/// capabilities as many empty strings as fit.
async fn flood_hello(addr: String) -> Vec<wire::Frame> {
    let nonce = [vec![0xc4, 32], vec![0; 32]].concat();
    let body = flood_body(
        &[
            ("version", vec![wire::VERSION]),
            ("cluster", fixstr("example")),
            ("nonce", nonce),
        ],
        "capabilities",
        wire::HANDSHAKE_MAX_FRAME,
    );
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The node may refuse before reading it all: a failed write is fine.
    let _ = s.write_all(&framed(Kind::Hello, &body)).await;
    frames_until_closed(&mut s).await
}

/// The same flood one step later: a proper `Hello`, then an `Auth` (decoded
/// before its proof is checked) as large as the node accepts.
async fn flood_auth(addr: String) -> Vec<wire::Frame> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let hello = wire::Hello {
        version: wire::VERSION,
        cluster: "example".into(),
        nonce: serde_bytes::ByteBuf::from(vec![7; 32]),
    };
    let hello = framed(Kind::Hello, &wire::encode(&hello).unwrap());
    s.write_all(&hello).await.expect("send the hello");
    let codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let challenge = loop {
        if let Some(f) = codec.decode(&mut buf).expect("a frame") {
            break f;
        }
        assert!(s.read_buf(&mut buf).await.expect("read") > 0, "closed");
    };
    assert_eq!(challenge.kind, Kind::Challenge);
    let proof = [vec![0xc4, 32], vec![0; 32]].concat();
    let body = flood_body(
        &[
            ("node", fixstr("x")),
            ("addr", fixstr("")),
            ("incarnation", vec![0]),
            ("trace_context", vec![0xc3]),
            ("call_chain", vec![0xc3]),
            ("actors", vec![0x90]),
            ("proof", proof),
        ],
        "capabilities",
        wire::HANDSHAKE_MAX_FRAME,
    );
    let _ = s.write_all(&framed(Kind::Auth, &body)).await;
    frames_until_closed(&mut s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximal_handshakes_from_strangers_cost_a_node_little_memory() {
    let mut cmd = Command::new(example_binary("cluster"));
    cmd.args([
        "--name",
        "victim",
        "--listen",
        "127.0.0.1:0",
        "--capabilities",
        "game",
    ]);
    let victim = Proc::spawn(cmd, "victim", COOKIE).await;
    let pid = victim.child.id().expect("running");
    // Reset the peak to the current RSS (the start's key derivation used
    // 19 MiB and freed it), then measure from there.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
    let before = status_kb(pid, "VmRSS:");

    let mut attacks = Vec::new();
    for _ in 0..16 {
        attacks.push(tokio::spawn(flood_hello(victim.addr.clone())));
        attacks.push(tokio::spawn(flood_auth(victim.addr.clone())));
    }
    for a in attacks {
        let frames = soon(a).await.expect("attack task");
        // Each was refused with a reason (an `Error` frame), then closed.
        assert_eq!(frames.last().map(|f| f.kind), Some(Kind::Error));
    }
    let peak = status_kb(pid, "VmHWM:");
    let growth_mib = peak.saturating_sub(before) as f64 / 1024.0;
    println!(
        "victim VmRSS before: {before} kB; VmHWM after 16 maximal Hellos and 16 maximal Auths: \
         {peak} kB; growth {growth_mib:.1} MiB"
    );
    assert!(growth_mib < 32.0, "peak RSS grew by {growth_mib:.1} MiB");

    // A legitimate node joins right after and routes a call to it.
    let node = Node::builder()
        .id("legit")
        .default_node(false)
        .cluster("example")
        .cookie(COOKIE)
        .listen("127.0.0.1:0")
        .seeds([victim.addr.clone()])
        .start()
        .await
        .expect("start");
    let mut changes = node.membership_changes();
    soon(changes.wait_for(|m| m.len() == 2))
        .await
        .expect("joined");
    let (host, score) = soon(node.call::<Player, _>("p-1", Score(5)).into_future())
        .await
        .expect("the call is routed to the victim");
    assert_eq!((host.as_str(), score), ("victim", 5));
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_weak_cookie_is_refused_at_start_unless_allowed_for_tests() {
    for weak in ["", "change-me", "s3cret", "process-test-cookie"] {
        let err = Node::builder()
            .default_node(false)
            .cookie(weak)
            .listen("127.0.0.1:0")
            .start()
            .await
            .expect_err("a weak cookie");
        let text = err.to_string();
        assert!(
            text.contains("cookie is too weak") && text.contains("openssl rand -base64 32"),
            "{text}"
        );
        // A variant of its own, so a caller can match it.
        assert!(
            matches!(err, mesh::StartError::WeakCookie { bits, needed: 128 } if bits < 128),
            "{err:?}"
        );
    }
    // The escape for tests.
    let node = Node::builder()
        .default_node(false)
        .cookie("k")
        .allow_weak_cookie()
        .listen("127.0.0.1:0")
        .start()
        .await
        .expect("a weak cookie, allowed");
    node.shutdown().await.unwrap();
    // A strong one, and a single node without any (not clustered).
    let node = Node::builder()
        .default_node(false)
        .cookie(COOKIE)
        .listen("127.0.0.1:0")
        .start()
        .await
        .expect("a strong cookie");
    node.shutdown().await.unwrap();
    let alone = Node::builder()
        .default_node(false)
        .capabilities(["game"])
        .actor::<Player>()
        .start()
        .await
        .expect("a single node needs no cookie");
    assert_eq!(alone.call::<Player, _>("p", Score(2)).await.unwrap().1, 2);
    alone.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_identity_over_the_handshake_limits_is_refused_at_start() {
    let err = Node::builder()
        .default_node(false)
        .id("n".repeat(wire::MAX_NAME + 1))
        .cookie(COOKIE)
        .listen("127.0.0.1:0")
        .start()
        .await
        .expect_err("a node id over the limit");
    assert!(err.to_string().contains("node id of 256 bytes"), "{err}");
    assert!(
        matches!(&err, mesh::StartError::IdentityLimits { reason } if reason.contains("node id")),
        "{err:?}"
    );
}

/// What a listener says to a stranger of another cluster, and to one that
/// cannot prove the cookie: never its cluster name, node id or hosted
/// types; and what a node logs of a stranger's strings is escaped and cut.
#[tokio::test]
async fn a_stranger_learns_nothing_about_the_listener() {
    let secret_cluster = "secret-cluster";
    let node = Node::builder()
        .id("secret-node")
        .default_node(false)
        .cluster(secret_cluster)
        .cookie(COOKIE)
        .capabilities(["game"])
        .actor::<Player>()
        .listen("127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let addr = node.addr().unwrap().to_owned();
    let mut seen = Vec::new();
    // Another cluster (its name full of escapes), then the right cluster
    // with a forged proof.
    for cluster in ["evil\u{1b}[31m\ncluster", secret_cluster] {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let hello = wire::Hello {
            version: wire::VERSION,
            cluster: cluster.into(),
            nonce: serde_bytes::ByteBuf::from(vec![1; 32]),
        };
        s.write_all(&framed(Kind::Hello, &wire::encode(&hello).unwrap()))
            .await
            .unwrap();
        if cluster == secret_cluster {
            let mut buf = BytesMut::new();
            let codec = FrameCodec::default();
            let challenge = loop {
                if let Some(f) = codec.decode(&mut buf).unwrap() {
                    break f;
                }
                assert!(s.read_buf(&mut buf).await.unwrap() > 0);
            };
            seen.extend_from_slice(&challenge.body);
            let auth = wire::Auth {
                node: "x".into(),
                capabilities: vec![],
                addr: String::new(),
                incarnation: 0,
                trace_context: true,
                call_chain: true,
                actors: vec![],
                proof: serde_bytes::ByteBuf::from(vec![0; 32]),
            };
            s.write_all(&framed(Kind::Auth, &wire::encode(&auth).unwrap()))
                .await
                .unwrap();
        }
        let frames = soon(frames_until_closed(&mut s)).await;
        assert_eq!(frames.last().map(|f| f.kind), Some(Kind::Error));
        let reason = wire::decode::<wire::Failure>(&frames.last().unwrap().body)
            .unwrap()
            .into_error()
            .to_string();
        if cluster == secret_cluster {
            assert!(reason.contains("wrong cookie"), "{reason}");
        } else {
            assert!(reason.contains("this node is not in cluster"), "{reason}");
            assert!(
                reason.contains("evil\\u{1b}[31m\\ncluster"),
                "escaped: {reason}"
            );
        }
        for f in frames {
            seen.extend_from_slice(&f.body);
        }
    }
    let seen = String::from_utf8_lossy(&seen);
    for hidden in ["secret-cluster", "secret-node", "game", "Player"] {
        assert!(!seen.contains(hidden), "{hidden} revealed: {seen:?}");
    }
    node.shutdown().await.unwrap();
}
