//! A raw peer: a TCP connection that does the cookie handshake by hand and
//! then sends and reads frames as they are, for the suites that play a
//! misbehaving cluster member (one that holds the cookie).

use bytes::BytesMut;
use mesh::wire::{self, Cookie, Frame, FrameCodec, Identity, Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A handshaken raw connection to a node.
pub struct RawPeer {
    io: Io,
    /// What the node said of itself in its handshake.
    pub peer: wire::Peer,
}

/// The stream and what was read past the last frame.
struct Io {
    stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
}

impl Io {
    async fn send(&mut self, kind: Kind, corr: u64, body: &[u8]) {
        let mut out = BytesMut::new();
        self.codec
            .encode(kind, corr, body, &mut out)
            .expect("encode frame");
        self.stream.write_all(&out).await.expect("write");
    }

    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf).expect("a valid frame") {
                return Some(f);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

impl RawPeer {
    /// Dials `addr` and does the handshake as node `node` of `cluster`
    /// with `cookie`; panics if the node refuses it.
    pub async fn connect(addr: &str, cluster: &str, node: &str, cookie: &str) -> RawPeer {
        let mut io = Io {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: BytesMut::new(),
            codec: FrameCodec::default(),
        };
        let me = Identity {
            cluster: cluster.into(),
            node: node.into(),
            capabilities: vec![],
            addr: String::new(),
            incarnation: 7,
            actors: Vec::new(),
        };
        let (dialer, hello) = wire::DialHandshake::start(me, Cookie::new(cookie)).expect("hello");
        io.send(Kind::Hello, 0, &wire::encode(&hello).expect("encode"))
            .await;
        let frame = io.recv().await.expect("a challenge");
        assert_eq!(frame.kind, Kind::Challenge, "{frame:?}");
        let challenge: wire::Challenge = wire::decode(&frame.body).expect("challenge body");
        let (waiting, auth) = dialer.on_challenge(&challenge).expect("auth");
        io.send(Kind::Auth, 0, &wire::encode(&auth).expect("encode"))
            .await;
        let frame = io.recv().await.expect("a welcome");
        assert_eq!(frame.kind, Kind::Welcome, "{frame:?}");
        let welcome: wire::Welcome = wire::decode(&frame.body).expect("welcome body");
        let peer = waiting.on_welcome(&welcome).expect("the node's proof");
        RawPeer { io, peer }
    }

    /// Sends one frame.
    pub async fn send(&mut self, kind: Kind, corr: u64, body: &[u8]) {
        self.io.send(kind, corr, body).await
    }

    /// The next frame; `None` once the node closed the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        self.io.recv().await
    }

    /// The frame answering request `corr`; pings meanwhile are answered,
    /// other frames (membership) skipped. `None` once the node closed the
    /// connection.
    pub async fn answer(&mut self, corr: u64) -> Option<Frame> {
        loop {
            let f = self.recv().await?;
            match f.kind {
                Kind::Ping => self.send(Kind::Pong, f.corr, &[]).await,
                Kind::Reply | Kind::Error if f.corr == corr => return Some(f),
                _ => {}
            }
        }
    }
}
