//! Transport conformance: the same suite over TCP, over mTLS (files
//! identity, a test CA), through a pair of real HAProxy sidecars (Connect
//! leaves from a test CA; HAProxy must be installed) and over the
//! in-memory transport (which still frames and handshakes every byte).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mesh::identity::FileIdentity;
use mesh::sidecar::{
    Certs, Haproxy, HaproxySettings, HaproxyUpstream, SidecarTransport, UpstreamTable,
};
use mesh::transport::tls::Tls;
use mesh::transport::{
    memory::MemoryNetwork, tcp, Connection, DialTarget, Inbound, Listening, Responder,
    TransportConfig,
};
use mesh::wire::{self, Cast, Cookie, FrameCodec, Identity, Kind, Peer};
use mesh::Error;
use mesh::Transport;
use mesh_testkit::{free_port, pki, require_haproxy, scratch, soon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const ECHO: u64 = 1;
const FAIL: u64 = 2;
const HANG: u64 = 3;
/// Answers with a reply too big for a frame.
const BIG_REPLY: u64 = 4;

struct Echo {
    casts: mpsc::UnboundedSender<(String, Cast)>,
}

impl Inbound for Echo {
    fn call(&self, from: &Peer, call: wire::CallFrame, reply: Responder) {
        match call.tag {
            ECHO => reply.send(Ok([
                from.node.as_bytes(),
                b":",
                call.id.as_bytes(),
                b":",
                &call.payload,
            ]
            .concat())),
            BIG_REPLY => reply.send(Ok(vec![0; wire::DEFAULT_MAX_FRAME + 1])),
            FAIL => reply.send(Err(Error::HandlerPanicked {
                actor: "Echo".into(),
                id: call.id,
                message: "on purpose".into(),
            })),
            // Never answered: the responder waits with a task that never ends.
            _ => {
                tokio::spawn(async move {
                    let _held = reply;
                    std::future::pending::<()>().await
                });
            }
        }
    }

    fn cast(&self, from: &Peer, cast: Cast) {
        let _ = self.casts.send((from.node.clone(), cast));
    }
}

fn config(node: &str, cluster: &str, cookie: &str) -> TransportConfig {
    TransportConfig::new(
        Identity {
            cluster: cluster.into(),
            node: node.into(),
            capabilities: vec![format!("cap-{node}")],
            addr: String::new(),
            incarnation: 7,
            actors: Vec::new(),
        },
        Cookie::new(cookie),
    )
}

fn echo() -> (Arc<dyn Inbound>, mpsc::UnboundedReceiver<(String, Cast)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(Echo { casts: tx }), rx)
}

/// One transport under test, and where its listeners bind.
struct Net {
    transport: Transport,
    listen: fn(&str) -> String,
    memory: Option<Arc<MemoryNetwork>>,
    /// The identity the transport verifies on both ends, if any.
    identity: Option<String>,
    /// Sidecar pairs in front of the listeners, if this is the sidecar
    /// transport.
    sidecar: Option<Arc<Sidecars>>,
}

/// For the sidecar transport: each listener gets its own HAProxy sidecar
/// (the public side) and the dialer's HAProxy sidecar one upstream to it;
/// dialing a listener's address dials that upstream port instead.
struct Sidecars {
    ca: pki::Ca,
    /// Listener address -> (its sidecar, the dialer's, the upstream address).
    pairs: std::sync::Mutex<std::collections::HashMap<String, (Haproxy, Haproxy, String)>>,
}

impl Sidecars {
    async fn front(&self, app: &str) {
        require_haproxy();
        let td = "11111111-2222.consul";
        let certs = |svc: &str| {
            let leaf = self.ca.leaf(&pki::service_id(td, svc));
            Certs {
                chain_pem: leaf.cert,
                key_pem: leaf.key,
                roots_pem: self.ca.pem.clone(),
            }
        };
        let public = free_port();
        let server = Haproxy::start(
            HaproxySettings::new(
                scratch("transport-sidecar-b"),
                format!("127.0.0.1:{public}"),
                certs("b"),
            )
            .allow([pki::service_id(td, "a")]),
            app,
        )
        .await
        .unwrap();
        let port = free_port();
        let client = Haproxy::start(
            HaproxySettings::new(
                scratch("transport-sidecar-a"),
                format!("127.0.0.1:{}", free_port()),
                certs("a"),
            )
            .upstreams(vec![HaproxyUpstream {
                node: "b".into(),
                destination: "b".into(),
                local_port: port,
                peer_addr: format!("127.0.0.1:{public}"),
                peer_id: pki::service_id(td, "b"),
            }]),
            "127.0.0.1:1",
        )
        .await
        .unwrap();
        self.pairs.lock().unwrap().insert(
            app.to_owned(),
            (server, client, format!("127.0.0.1:{port}")),
        );
    }

    fn upstream(&self, app: &str) -> Option<String> {
        self.pairs.lock().unwrap().get(app).map(|p| p.2.clone())
    }
}

impl Net {
    async fn listen(&self, cfg: TransportConfig, inbound: Arc<dyn Inbound>) -> Listening {
        let addr = (self.listen)(&cfg.identity.node);
        let l = self.transport.listen(&addr, cfg, inbound).await.unwrap();
        if let Some(s) = &self.sidecar {
            s.front(l.addr()).await;
        }
        l
    }

    async fn dial(
        &self,
        addr: &str,
        cfg: &TransportConfig,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Connection, Error> {
        // Through the sidecars: the dialer's upstream port for that listener
        // (a loopback address, as a seed through a sidecar is given).
        let via = self.sidecar.as_ref().and_then(|s| s.upstream(addr));
        self.transport
            .dial(
                &DialTarget::addr(via.as_deref().unwrap_or(addr)),
                cfg,
                inbound,
            )
            .await
    }
}

/// Node "a" connected to a listening node "b" of cluster "c"; also returns
/// the casts "b" receives.
async fn connected(
    net: &Net,
) -> (
    Listening,
    Connection,
    mpsc::UnboundedReceiver<(String, Cast)>,
) {
    let (server_in, casts) = echo();
    let server = net.listen(config("b", "c", "k"), server_in).await;
    let (client_in, _) = echo();
    let conn = net
        .dial(server.addr(), &config("a", "c", "k"), client_in)
        .await
        .unwrap();
    (server, conn, casts)
}

/// mTLS with a fresh test CA, every node presenting the cluster's one
/// service identity from files in a scratch directory.
fn tls() -> Net {
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mesh-transport-tls-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::SeqCst)
    ));
    let ca = pki::Ca::new("11111111-2222.consul");
    let id = pki::service_id("11111111-2222.consul", "c");
    let files = pki::Files::in_dir(&dir);
    files.write(&ca.leaf(&id), &ca.pem);
    let source = FileIdentity::load(&files.chain, &files.key, &files.bundle).unwrap();
    Net {
        transport: Tls::new(source).transport(),
        listen: |_| "127.0.0.1:0".to_owned(),
        memory: None,
        identity: Some(id),
        sidecar: None,
    }
}

/// Every transport the conformance suite runs on; memory last.
fn nets() -> Vec<Net> {
    let memory = MemoryNetwork::new();
    vec![
        Net {
            transport: Transport::tcp(),
            listen: |_| "127.0.0.1:0".to_owned(),
            memory: None,
            identity: None,
            sidecar: None,
        },
        tls(),
        Net {
            transport: SidecarTransport::new(UpstreamTable::new()).transport(),
            listen: |_| "127.0.0.1:0".to_owned(),
            memory: None,
            // The sidecars verify the certificates, not the node's transport.
            identity: None,
            sidecar: Some(Arc::new(Sidecars {
                ca: pki::Ca::new("11111111-2222.consul"),
                pairs: Default::default(),
            })),
        },
        Net {
            transport: Transport::memory(memory.clone()),
            listen: |node| format!("mem-{node}"),
            memory: Some(memory),
            identity: None,
            sidecar: None,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_share_one_connection() {
    for net in nets() {
        let (mut server, conn, _) = connected(&net).await;
        assert_eq!(conn.peer().node, "b");
        assert_eq!(conn.peer().capabilities, ["cap-b"]);
        let accepted = soon(server.accepted()).await.unwrap();
        assert_eq!(accepted.peer().node, "a");

        let mut calls = Vec::new();
        for i in 0..2_000 {
            let conn = conn.clone();
            calls.push(tokio::spawn(async move {
                conn.call(
                    ECHO,
                    &format!("id{i}"),
                    vec![i as u8],
                    Duration::from_secs(30),
                    0,
                )
                .await
            }));
        }
        for (i, c) in calls.into_iter().enumerate() {
            let reply = soon(c).await.unwrap().unwrap();
            assert_eq!(
                &reply[..],
                [format!("a:id{i}:").as_bytes(), &[i as u8]].concat()
            );
        }
        // The other direction works on the accepted side too.
        let back = accepted
            .call(ECHO, "x", b"y".to_vec(), Duration::from_secs(30), 0)
            .await
            .unwrap();
        assert_eq!(&back[..], b"b:x:y");
        assert!(conn.ping(Duration::from_secs(5)).await.is_ok());
    }
}

#[tokio::test]
async fn casts_and_remote_errors_arrive_typed() {
    for net in nets() {
        let (_server, conn, mut casts) = connected(&net).await;
        conn.cast(ECHO, "target", b"hi".to_vec(), 0).unwrap();
        let (from, cast) = soon(casts.recv()).await.unwrap();
        assert_eq!(
            (from.as_str(), cast.id.as_str(), &cast.payload[..]),
            ("a", "target", &b"hi"[..])
        );
        let err = conn
            .call(FAIL, "z", Vec::new(), Duration::from_secs(30), 0)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            Error::HandlerPanicked {
                actor: "Echo".into(),
                id: "z".into(),
                message: "on purpose".into()
            }
        );
        // An oversized message fails that call only.
        let big = vec![0u8; wire::DEFAULT_MAX_FRAME + 1];
        assert!(matches!(
            conn.call(ECHO, "big", big, Duration::from_secs(30), 0)
                .await,
            Err(Error::Codec(_))
        ));
        assert!(conn
            .call(ECHO, "small", Vec::new(), Duration::from_secs(30), 0)
            .await
            .is_ok());
        // A reply too big for a frame fails that call with the reason, at
        // once (not at its deadline), and the connection goes on.
        let started = std::time::Instant::now();
        match conn
            .call(BIG_REPLY, "r", Vec::new(), Duration::from_secs(600), 0)
            .await
        {
            Err(Error::Codec(why)) => assert!(why.contains("frame"), "{why}"),
            other => panic!("expected the codec error, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(60));
        assert!(conn
            .call(ECHO, "after", Vec::new(), Duration::from_secs(30), 0)
            .await
            .is_ok());
    }
}

#[tokio::test]
async fn calls_in_flight_fail_fast_when_the_connection_drops() {
    for net in nets() {
        let (mut server, conn, _) = connected(&net).await;
        let accepted = soon(server.accepted()).await.unwrap();
        let hanging: Vec<_> = (0..10)
            .map(|i| {
                let conn = conn.clone();
                tokio::spawn(async move {
                    conn.call(
                        HANG,
                        &i.to_string(),
                        Vec::new(),
                        Duration::from_secs(3600),
                        0,
                    )
                    .await
                })
            })
            .collect();
        // Let the calls reach the server, then kill its side.
        assert!(conn.ping(Duration::from_secs(5)).await.is_ok());
        accepted.close();
        for h in hanging {
            let err = soon(h).await.unwrap().unwrap_err();
            assert_eq!(err, node_down("b"));
        }
        soon(conn.closed()).await;
        assert_eq!(
            conn.call(ECHO, "late", Vec::new(), Duration::from_secs(5), 0)
                .await,
            Err(node_down("b"))
        );
    }
}

#[tokio::test]
async fn a_call_times_out_at_its_deadline() {
    for net in nets() {
        let (_server, conn, _) = connected(&net).await;
        let started = tokio::time::Instant::now();
        let err = conn
            .call(HANG, "h", Vec::new(), Duration::from_millis(100), 0)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(conn
            .call(ECHO, "after", Vec::new(), Duration::from_secs(5), 0)
            .await
            .is_ok());
    }
}

#[tokio::test]
async fn wrong_cookie_and_wrong_cluster_are_refused_with_the_reason() {
    for net in nets() {
        let (server_in, _) = echo();
        let mut server = net.listen(config("b", "blue", "right"), server_in).await;
        for (cfg, reason) in [
            (config("a", "blue", "wrong"), "wrong cookie"),
            (config("a", "green", "right"), "wrong cluster"),
        ] {
            let (client_in, _) = echo();
            let err = net.dial(server.addr(), &cfg, client_in).await.unwrap_err();
            match &err {
                Error::Refused { reason: r } => assert!(r.contains(reason), "{r}"),
                other => panic!("expected Refused, got {other:?}"),
            }
        }
        // Nothing got through; a good dialer still does.
        let (client_in, _) = echo();
        let good = net
            .dial(server.addr(), &config("a", "blue", "right"), client_in)
            .await
            .unwrap();
        assert_eq!(soon(server.accepted()).await.unwrap().peer().node, "a");
        assert!(!good.is_closed());
    }
}

/// Reads whatever the server sends until it closes; returns the frames.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<wire::Frame> {
    let codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    loop {
        while let Ok(Some(f)) = codec.decode(&mut buf) {
            frames.push(f);
        }
        match soon(stream.read_buf(&mut buf)).await {
            Ok(0) | Err(_) => return frames,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn garbage_wrong_versions_and_silence_are_dropped_with_a_reason() {
    let (server_in, _) = echo();
    let mut cfg = config("b", "c", "k");
    cfg.handshake_timeout = Duration::from_millis(200);
    let server = tcp::listen("127.0.0.1:0", cfg, server_in).await.unwrap();

    // Garbage bytes: refused with an Error frame saying why (its first
    // bytes), then closed.
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(b"\x05\x01\x00\x7f\x10\x20\x30\x40\x50\x60")
        .await
        .unwrap();
    let frames = read_until_closed(&mut s).await;
    let failure: wire::Failure = wire::decode(&frames[0].body).unwrap();
    assert_eq!(frames[0].kind, Kind::Error);
    assert_eq!(failure.code, wire::code::REFUSED);
    let error = failure.into_error();
    assert!(matches!(error, Error::Refused { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("not a mesh peer (first bytes 05 01 00 7f 10 20 30 40)"),
        "{error}"
    );

    // The same TLS opens with: told that the peer speaks TLS and how to
    // fix it, in a frame (a mesh TLS dialer recognises its magic).
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0, 0, 1, 0])
        .await
        .unwrap();
    let frames = read_until_closed(&mut s).await;
    assert_eq!(frames[0].kind, Kind::Error);
    let error = wire::decode::<wire::Failure>(&frames[0].body)
        .unwrap()
        .into_error();
    assert!(
        error.to_string().contains("the peer speaks TLS")
            && error.to_string().contains("configure the same transport"),
        "{error}"
    );

    // Another protocol version (an older peer's): told so in our
    // version, then closed.
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    let mut hello = BytesMut::new();
    FrameCodec::default()
        .encode(Kind::Hello, 0, b"\x80", &mut hello)
        .unwrap();
    assert_eq!(hello[6], wire::VERSION);
    hello[6] = 1;
    s.write_all(&hello).await.unwrap();
    let frames = read_until_closed(&mut s).await;
    assert_eq!(frames[0].kind, Kind::Error);
    let error = wire::decode::<wire::Failure>(&frames[0].body)
        .unwrap()
        .into_error();
    assert!(error.to_string().contains("protocol version 1"), "{error}");

    // Silence: dropped after the handshake timeout.
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    let frames = read_until_closed(&mut s).await;
    assert!(frames.is_empty());
}

#[tokio::test]
async fn a_malformed_frame_after_the_handshake_closes_the_connection() {
    let (server_in, _) = echo();
    let server = tcp::listen("127.0.0.1:0", config("b", "c", "k"), server_in)
        .await
        .unwrap();
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    let codec = FrameCodec::default();
    // A real handshake, by hand.
    let me = Identity {
        cluster: "c".into(),
        node: "raw".into(),
        capabilities: vec![],
        addr: String::new(),
        incarnation: 7,
        actors: Vec::new(),
    };
    let (dialer, hello) = wire::DialHandshake::start(me, Cookie::new("k")).unwrap();
    let mut out = BytesMut::new();
    codec
        .encode(Kind::Hello, 0, &wire::encode(&hello).unwrap(), &mut out)
        .unwrap();
    s.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let challenge = loop {
        if let Some(f) = codec.decode(&mut buf).unwrap() {
            break f;
        }
        s.read_buf(&mut buf).await.unwrap();
    };
    let (_, auth) = dialer
        .on_challenge(&wire::decode(&challenge.body).unwrap())
        .unwrap();
    out.clear();
    codec
        .encode(Kind::Auth, 0, &wire::encode(&auth).unwrap(), &mut out)
        .unwrap();
    s.write_all(&out).await.unwrap();
    // Then a frame with a bad magic: the server closes.
    s.write_all(&[
        0, 0, 0, 16, b'X', b'X', 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    ])
    .await
    .unwrap();
    let frames = read_until_closed(&mut s).await;
    assert_eq!(
        frames.iter().map(|f| f.kind).collect::<Vec<_>>(),
        [Kind::Welcome]
    );
}

#[tokio::test]
async fn connection_facts_reach_both_peers() {
    for net in nets() {
        let (mut server, conn, _) = connected(&net).await;
        let accepted = soon(server.accepted()).await.unwrap();
        // TLS verifies the peer's SPIFFE ID on both ends; neither TCP nor
        // memory verifies one. All say where the stream came from.
        assert_eq!(conn.peer().identity, net.identity);
        assert_eq!(accepted.peer().identity, net.identity);
        assert!(!conn.peer().remote.is_empty());
        assert!(!accepted.peer().remote.is_empty());
        assert_eq!(conn.peer().addr, server.addr());
        // Through the sidecars, the dialer's stream is its upstream port.
        if let Some(s) = &net.sidecar {
            assert_eq!(
                Some(&conn.peer().remote),
                s.upstream(server.addr()).as_ref()
            );
        }
    }
}

#[tokio::test]
async fn dialing_where_nothing_listens_is_unreachable() {
    for net in nets() {
        let addr = match net.memory {
            Some(_) => "mem-nobody".to_owned(),
            None => {
                // A port that was just free: bound, then closed.
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let a = l.local_addr().unwrap().to_string();
                drop(l);
                a
            }
        };
        let (client_in, _) = echo();
        let err = net
            .dial(&addr, &config("a", "c", "k"), client_in)
            .await
            .unwrap_err();
        match err {
            Error::Unreachable { addr: a, .. } => assert_eq!(a, addr),
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
}

/// The memory network between nodes "a" and "b", connected.
async fn memory_pair() -> (Arc<MemoryNetwork>, Listening, Connection, Connection) {
    let net = nets().pop().unwrap();
    let memory = net.memory.clone().unwrap();
    let (mut server, conn, _) = connected(&net).await;
    let accepted = soon(server.accepted()).await.unwrap();
    (memory, server, conn, accepted)
}

#[tokio::test(start_paused = true)]
async fn a_partition_cuts_links_at_once_and_refuses_new_ones_until_healed() {
    let (memory, server, conn, accepted) = memory_pair().await;
    assert_eq!(memory.link_count("a", "b"), 1);
    let hanging = {
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.call(HANG, "h", Vec::new(), Duration::from_secs(3600), 0)
                .await
        })
    };
    assert!(conn.ping(Duration::from_secs(5)).await.is_ok());
    memory.partition("a", "b");
    // Both ends see the cut as a dropped connection: calls fail at once.
    assert_eq!(soon(hanging).await.unwrap(), Err(node_down("b")));
    soon(accepted.closed()).await;
    let (client_in, _) = echo();
    let refused = TransportUnderTest::memory(&memory)
        .dial(server.addr(), &config("a", "c", "k"), client_in)
        .await;
    assert!(
        matches!(refused, Err(Error::Unreachable { .. })),
        "{refused:?}"
    );
    memory.heal("a", "b");
    let (client_in, _) = echo();
    let again = TransportUnderTest::memory(&memory)
        .dial(server.addr(), &config("a", "c", "k"), client_in)
        .await
        .unwrap();
    assert!(again.ping(Duration::from_secs(5)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_stalled_link_hangs_without_closing_and_resumes_when_healed() {
    let (memory, _server, conn, accepted) = memory_pair().await;
    memory.stall("a", "b");
    // Nothing moves and nothing fails: only the timeout tells (the paused
    // clock jumps to it once everything is idle).
    let r = conn.ping(Duration::from_secs(2)).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(!conn.is_closed() && !accepted.is_closed());
    let late = {
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.call(ECHO, "late", b"x".to_vec(), Duration::from_secs(60), 0)
                .await
        })
    };
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(!late.is_finished());
    memory.heal("a", "b");
    // What was written while stalled arrives: nothing was lost.
    assert_eq!(&soon(late).await.unwrap().unwrap()[..], b"a:late:x");
}

/// A memory transport over an existing network (for dialing by hand).
struct TransportUnderTest;

impl TransportUnderTest {
    fn memory(memory: &Arc<MemoryNetwork>) -> Net {
        Net {
            transport: Transport::memory(memory.clone()),
            listen: |node| format!("mem-{node}"),
            memory: Some(memory.clone()),
            identity: None,
            sidecar: None,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_handshake_over_a_stalled_link_gives_up_at_the_handshake_timeout() {
    let net = nets().pop().unwrap();
    let memory = net.memory.clone().unwrap();
    let (server_in, _) = echo();
    let server = net.listen(config("b", "c", "k"), server_in).await;
    memory.stall("a", "b");
    let mut cfg = config("a", "c", "k");
    cfg.handshake_timeout = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let (client_in, _) = echo();
    let err = net.dial(server.addr(), &cfg, client_in).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert!(
        matches!(&err, Error::Refused { reason } if reason.contains("no handshake")),
        "{err:?}"
    );
}

/// `NodeDown` of a raw connection's call: no actor, id or message named
/// (a node's call names them).
fn node_down(node: &str) -> Error {
    Error::NodeDown {
        node: node.into(),
        actor: String::new(),
        id: String::new(),
    }
}

/// The error of a failed dial, as its text.
fn dial_error(result: Result<Connection, Error>) -> String {
    match result {
        Ok(_) => panic!("the dial succeeded"),
        Err(e) => e.to_string(),
    }
}

/// Neither side of a TLS/plain mix is told of a frame of hundreds of
/// megabytes any more: each says what the other speaks and how to fix it.
#[tokio::test]
async fn a_plain_node_dialing_a_tls_node_is_told_to_configure_the_same_transport() {
    let (server_in, _) = echo();
    let tls = tls();
    let server = tls.listen(config("b", "c", "k"), server_in).await;
    let (client_in, _) = echo();
    let err = dial_error(
        Transport::tcp()
            .dial(
                &DialTarget::addr(server.addr()),
                &config("a", "c", "k"),
                client_in,
            )
            .await,
    );
    assert!(
        err.contains("the listener uses TLS and the dialer plain TCP")
            && err.contains("configure the same transport on every node (`.transport(Tls::...)`"),
        "{err}"
    );
    assert!(!err.contains("exceeds"), "{err}");

    // A TLS server that answers with an alert (not a mesh node's own
    // refusal) is recognised as TLS too.
    let alerting = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = alerting.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut s, _) = alerting.accept().await.unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a])
            .await;
    });
    let (client_in, _) = echo();
    let err = dial_error(
        Transport::tcp()
            .dial(&DialTarget::addr(&addr), &config("a", "c", "k"), client_in)
            .await,
    );
    assert!(
        err.contains("the peer speaks TLS: this node uses plain TCP")
            && err.contains("configure the same transport"),
        "{err}"
    );
}

#[tokio::test]
async fn a_tls_node_dialing_a_plain_node_is_told_the_peer_speaks_plain_tcp() {
    let (server_in, _) = echo();
    let server = tcp::listen("127.0.0.1:0", config("b", "c", "k"), server_in)
        .await
        .unwrap();
    let (client_in, _) = echo();
    let err = dial_error(
        tls()
            .dial(server.addr(), &config("a", "c", "k"), client_in)
            .await,
    );
    assert!(
        err.contains("the peer speaks plain mesh TCP, this node TLS")
            && err.contains("configure the same transport on every node (`.transport(Tls::...)`"),
        "{err}"
    );
    assert!(!err.contains("corrupt message"), "{err}");
}

/// Reads what the server answers until it closes.
async fn answer_to(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = soon(s.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn an_http_request_to_the_cluster_port_is_answered_400_saying_what_the_port_is() {
    let (server_in, _) = echo();
    let plain = tcp::listen("127.0.0.1:0", config("b", "c", "k"), server_in)
        .await
        .unwrap();
    let (server_in, _) = echo();
    let tls = tls().listen(config("b", "c", "k"), server_in).await;
    for server in [&plain, &tls] {
        for request in [
            &b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        ] {
            let answer = answer_to(server.addr(), request).await;
            let (head, body) = answer.split_once("\r\n\r\n").expect(&answer);
            assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
            assert!(
                head.contains(&format!("Content-Length: {}", body.len())),
                "{answer}"
            );
            assert!(
                body.contains("mesh cluster port")
                    && body.contains("the admin endpoint is on another port"),
                "{answer}"
            );
        }
    }
    // The listeners still serve mesh peers.
    let (client_in, _) = echo();
    tcp::dial(plain.addr(), &config("a", "c", "k"), client_in)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_dialer_pointed_at_an_http_server_says_the_address_answers_http() {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = http.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let (client_in, _) = echo();
    let plain = dial_error(tcp::dial(&addr, &config("a", "c", "k"), client_in).await);
    let (client_in, _) = echo();
    let over_tls = dial_error(tls().dial(&addr, &config("a", "c", "k"), client_in).await);
    for err in [plain, over_tls] {
        assert!(
            err.contains(
                "the address answers HTTP: it is not a mesh node's cluster port (a sidecar or admin port?)"
            ),
            "{err}"
        );
        assert!(!err.contains("exceeds"), "{err}");
    }
}
