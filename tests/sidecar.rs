//! Node traffic through real HAProxy sidecars (Debian's 2.6), with
//! certificates from a test CA in Consul Connect's profile (URI SAN
//! `spiffe://...`, empty subject): the rendered configuration passes
//! `haproxy -c`; calls cross a sidecar pair and are counted by HAProxy;
//! a killed sidecar fails calls in flight typed and is restarted;
//! callers not allowed or from a foreign CA are refused; a leaf rotation
//! reloads without dropping established connections; three nodes route
//! calls through their own sidecars; a command-template sidecar is
//! supervised the same way (with a stand-in program).
//!
//! HAProxy is required: these tests fail (never skip) without it;
//! `scripts/test.sh` installs it. HAProxy cannot bind port 0 and tell
//! which port it got, so its ports are picked free (bound, then closed)
//! just before it starts.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use mesh::prelude::*;
use mesh::sidecar::{
    haproxy, Certs, CommandSettings, CommandSidecar, Haproxy, HaproxySettings, HaproxyUpstream,
    Restart, Sidecar, SidecarError, SidecarTransport, UpstreamTable,
};
use mesh::transport::{
    self, Connection, DialTarget, Inbound, Listening, Responder, TransportConfig,
};
use mesh::wire::{self, Cast, Cookie, Identity, Peer};
use mesh::{Error, StartError};
use mesh_testkit::actors::{Player, Score};
use mesh_testkit::{free_port, pki, require_haproxy, scratch, soon};

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";
const ECHO: u64 = 1;
const HANG: u64 = 3;

fn id(svc: &str) -> String {
    pki::service_id(TD, svc)
}

fn certs(ca: &pki::Ca, leaf: &pki::Leaf) -> Certs {
    Certs {
        chain_pem: leaf.cert.clone(),
        key_pem: leaf.key.clone(),
        roots_pem: ca.pem.clone(),
    }
}

struct Echo;

impl Inbound for Echo {
    fn call(&self, from: &Peer, call: wire::CallFrame, reply: Responder) {
        match call.tag {
            ECHO => reply.send(Ok([from.node.as_bytes(), b":", &call.payload].concat())),
            _ => {
                tokio::spawn(async move {
                    let _held = reply;
                    std::future::pending::<()>().await
                });
            }
        }
    }

    fn cast(&self, _: &Peer, _: Cast) {}
}

fn config(node: &str) -> TransportConfig {
    TransportConfig::new(
        Identity {
            cluster: "c".into(),
            node: node.into(),
            capabilities: vec![],
            addr: String::new(),
            incarnation: 1,
            actors: Vec::new(),
        },
        Cookie::new(mesh_testkit::COOKIE),
    )
}

/// Node "b" listening on loopback behind its sidecar, and node "a"'s
/// sidecar with one upstream to it; "a" dials through the sidecar
/// transport.
struct Rig {
    ca: pki::Ca,
    listening: Listening,
    /// b's sidecar (public side).
    server: Haproxy,
    /// a's sidecar (upstream side).
    client: Haproxy,
    transport: SidecarTransport,
    public_port: u16,
    upstream_port: u16,
}

/// Makes a's certificates from the rig's CA.
type ClientCerts = Box<dyn FnOnce(&pki::Ca) -> Certs>;

struct RigOptions {
    /// Who b lets in.
    allow: Vec<String>,
    /// a's leaf and roots, given the rig's CA (default: a's own leaf
    /// from it).
    client_certs: Option<ClientCerts>,
}

async fn rig(opts: RigOptions) -> Rig {
    require_haproxy();
    let ca = pki::Ca::new(TD);
    let listening = transport::listen(
        SidecarTransport::new(UpstreamTable::new())
            .transport()
            .acceptor()
            .clone(),
        "127.0.0.1:0",
        config("b"),
        Arc::new(Echo),
    )
    .await
    .unwrap();
    let public_port = free_port();
    let server = Haproxy::start(
        HaproxySettings::new(
            scratch("sidecar-b"),
            format!("127.0.0.1:{public_port}"),
            certs(&ca, &ca.leaf(&id("mesh-b"))),
        )
        .allow(opts.allow),
        listening.addr(),
    )
    .await
    .unwrap();
    let upstream_port = free_port();
    let upstream = HaproxyUpstream {
        node: "b".into(),
        destination: "mesh-b".into(),
        local_port: upstream_port,
        peer_addr: format!("127.0.0.1:{public_port}"),
        peer_id: id("mesh-b"),
    };
    let client_certs = match opts.client_certs {
        Some(f) => f(&ca),
        None => certs(&ca, &ca.leaf(&id("mesh-a"))),
    };
    let client = Haproxy::start(
        HaproxySettings::new(
            scratch("sidecar-a"),
            format!("127.0.0.1:{}", free_port()),
            client_certs,
        )
        .upstreams(vec![upstream])
        .restart(Restart {
            min: Duration::from_millis(50),
            max: Duration::from_secs(1),
        }),
        // a has no node listening in these tests: its inbound side is unused.
        "127.0.0.1:1",
    )
    .await
    .unwrap();
    let ports = UpstreamTable::new();
    ports.insert("b", upstream_port);
    Rig {
        ca,
        listening,
        server,
        client,
        transport: SidecarTransport::new(ports),
        public_port,
        upstream_port,
    }
}

fn allow_a() -> RigOptions {
    RigOptions {
        allow: vec![id("mesh-a")],
        client_certs: None,
    }
}

impl Rig {
    async fn dial(&self) -> Result<Connection, Error> {
        transport::dial(
            &self.transport,
            // The address is not used: the sidecar transport dials by node id.
            &DialTarget::node("b", "10.255.255.1:1"),
            &config("a"),
            Arc::new(Echo),
        )
        .await
    }

    async fn stat(&self, h: &Haproxy, proxy: &str, server: &str, field: &str) -> u64 {
        h.stats()
            .await
            .unwrap()
            .iter()
            .find(|r| r.proxy == proxy && r.server == server)
            .unwrap_or_else(|| panic!("no stats row {proxy}/{server}"))
            .get(field)
    }
}

async fn echo(conn: &Connection, payload: &str) -> Result<String, Error> {
    conn.call(
        ECHO,
        "x",
        payload.as_bytes().to_vec(),
        Duration::from_secs(10),
        0,
    )
    .await
    .map(|b| String::from_utf8_lossy(&b).into_owned())
}

#[tokio::test]
async fn the_rendered_configuration_passes_haproxy_check() {
    require_haproxy();
    let ca = pki::Ca::new(TD);
    let dir = scratch("sidecar-render");
    let cfg = haproxy::HaproxyConfig {
        dir: dir.clone(),
        public: "127.0.0.1:21000".into(),
        app: "127.0.0.1:7000".into(),
        certs: certs(&ca, &ca.leaf(&id("mesh-a"))),
        allow: vec![id("mesh-b"), id("mesh-c")],
        upstreams: vec![HaproxyUpstream {
            node: "b".into(),
            destination: "mesh-b".into(),
            local_port: 9191,
            peer_addr: "127.0.0.1:21001".into(),
            peer_id: id("mesh-b"),
        }],
        timeouts: haproxy::Timeouts::default(),
    };
    let rendered = haproxy::render(&cfg).unwrap();
    for (name, contents) in &rendered.files {
        std::fs::write(dir.join(name), contents).unwrap();
    }
    mesh::sidecar::check_haproxy_config(
        mesh::sidecar::DEFAULT_HAPROXY.as_ref(),
        &dir.join(haproxy::files::CONFIG),
    )
    .await
    .unwrap();

    // A certificate HAProxy cannot load is refused before anything runs.
    let mut bad = HaproxySettings::new(
        scratch("sidecar-bad"),
        format!("127.0.0.1:{}", free_port()),
        cfg.certs.clone(),
    );
    bad.certs.chain_pem =
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".into();
    match Haproxy::start(bad, "127.0.0.1:7000").await {
        Err(SidecarError::Config(e)) => assert!(e.contains("haproxy refuses"), "{e}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_haproxy_is_a_clear_error_at_start() {
    let ca = pki::Ca::new(TD);
    let settings = HaproxySettings::new(
        scratch("sidecar-missing"),
        "127.0.0.1:21000",
        certs(&ca, &ca.leaf(&id("mesh-a"))),
    )
    .binary("/nonexistent/haproxy");
    let err = Haproxy::start(settings.clone(), "127.0.0.1:7000")
        .await
        .unwrap_err();
    assert!(matches!(err, SidecarError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("apt-get install haproxy"), "{err}");
    // Through the node builder: the node does not start, and says why.
    let err = Node::builder()
        .id("a")
        .default_node(false)
        .cookie(mesh_testkit::COOKIE)
        .through_sidecar(Sidecar::haproxy(settings))
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("sidecar: "), "{err}");
    match err {
        StartError::Sidecar { reason } => {
            assert!(reason.contains("apt-get install haproxy"), "{reason}");
        }
        other => panic!("expected a sidecar error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cross_a_sidecar_pair_and_haproxy_counts_them() {
    let rig = rig(allow_a()).await;
    assert!(rig.listening.addr().starts_with("127.0.0.1:"));
    let conn = soon(rig.dial()).await.unwrap();
    assert_eq!(conn.peer().node, "b");
    // The sidecar verified the certificates, not the node's transport.
    assert_eq!(conn.peer().identity, None);
    let calls: Vec<_> = (0..500)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move { echo(&conn, &i.to_string()).await })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(soon(c).await.unwrap().unwrap(), format!("a:{i}"));
    }
    // One session through a's upstream frontend, b's public frontend and
    // b's app backend: the bytes went through both sidecars.
    let up = format!("upstream_{}", rig.upstream_port);
    assert_eq!(rig.stat(&rig.client, &up, "FRONTEND", "stot").await, 1);
    assert_eq!(rig.stat(&rig.server, "public", "FRONTEND", "stot").await, 1);
    assert_eq!(rig.stat(&rig.server, "app", "BACKEND", "stot").await, 1);
    assert_eq!(rig.stat(&rig.server, "public", "FRONTEND", "scur").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sidecar_fails_calls_in_flight_and_is_restarted() {
    let rig = rig(allow_a()).await;
    let conn = soon(rig.dial()).await.unwrap();
    assert_eq!(echo(&conn, "before").await.unwrap(), "a:before");
    let hanging: Vec<_> = (0..5)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                conn.call(HANG, &i.to_string(), vec![], Duration::from_secs(3600), 0)
                    .await
            })
        })
        .collect();
    assert!(conn.ping(Duration::from_secs(5)).await.is_ok());
    let mut status = rig.client.status();
    let first = rig.client.pid().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // In flight: failed at once, typed, not at their deadline.
    for h in hanging {
        assert_eq!(
            soon(h).await.unwrap(),
            Err(Error::NodeDown {
                node: "b".into(),
                actor: String::new(),
                id: String::new(),
            })
        );
    }
    // Restarted by the supervisor (a new master, ready).
    let now = soon(status.wait_for(|s| s.starts == 2 && s.pid.is_some()))
        .await
        .unwrap()
        .clone();
    assert_ne!(now.pid, Some(first));
    assert!(now.last_exit.is_some());
    let again = soon(rig.dial()).await.unwrap();
    assert_eq!(echo(&again, "after").await.unwrap(), "a:after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_an_allow_is_refused_until_allowed() {
    let rig = rig(RigOptions {
        allow: vec![id("mesh-other")],
        client_certs: None,
    })
    .await;
    // Node a's sidecar took the stream, then closed it when b's refused:
    // a's handshake sees the close.
    let err = soon(rig.dial()).await.unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err:?}");
    // Refused by b's sidecar, after TLS, by the rule on the caller's URI:
    // counted as a denied request, and nothing reached node b.
    assert!(rig.stat(&rig.server, "public", "FRONTEND", "dreq").await >= 1);
    assert_eq!(rig.stat(&rig.server, "app", "BACKEND", "stot").await, 0);
    // The intention changes: b's sidecar reloads, a gets in.
    rig.server
        .set_allow(vec![id("mesh-other"), id("mesh-a")])
        .await
        .unwrap();
    let conn = soon(rig.dial()).await.unwrap();
    assert_eq!(echo(&conn, "in").await.unwrap(), "a:in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_a_foreign_ca_certificate_is_refused() {
    // a presents a leaf with the allowed URI but from a foreign CA, and
    // trusts both CAs, so that only b's check can refuse it.
    let foreign = pki::Ca::new(TD);
    let leaf = foreign.leaf(&id("mesh-a"));
    let rig = rig(RigOptions {
        allow: vec![id("mesh-a")],
        client_certs: Some(Box::new(move |ca: &pki::Ca| Certs {
            chain_pem: leaf.cert,
            key_pem: leaf.key,
            roots_pem: format!("{}{}", ca.pem, foreign.pem),
        })),
    })
    .await;
    // Node a's sidecar took the stream, then closed it when b's refused:
    // a's handshake sees the close.
    let err = soon(rig.dial()).await.unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err:?}");
    assert_eq!(rig.stat(&rig.server, "app", "BACKEND", "stot").await, 0);
    // With a leaf of the right CA, the same caller gets in.
    let good = rig.ca.leaf(&id("mesh-a"));
    rig.client.set_certs(certs(&rig.ca, &good)).await.unwrap();
    let conn = soon(rig.dial()).await.unwrap();
    assert_eq!(echo(&conn, "ok").await.unwrap(), "a:ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_whose_subject_holds_the_allowed_id_is_refused() {
    // A leaf of the same CA for another service, whose subject CN holds
    // the allowed ID's SAN entry bytes (0x86, the length, the URI: the
    // CN's UTF-8 writes U+0086 as C2 86). A substring match over the
    // certificate's hex (`-m sub`) would let it in as mesh-a.
    let allowed = id("mesh-a");
    let len = u8::try_from(allowed.len()).unwrap();
    assert!(len < 0x80);
    let cn = format!("\u{86}{}{allowed}", char::from(len));
    let rig = rig(RigOptions {
        allow: vec![allowed.clone()],
        client_certs: Some(Box::new(move |ca: &pki::Ca| {
            certs(ca, &ca.leaf_with_cn(&id("mesh-evil"), &cn))
        })),
    })
    .await;
    let presented = der(&rig.client.config().certs.chain_pem);
    let hex: String = presented.iter().map(|b| format!("{b:02X}")).collect();
    assert!(
        hex.contains(&haproxy::san_uri_hex(&allowed)),
        "the forged subject must hold the allowed SAN entry's bytes"
    );
    let err = soon(rig.dial()).await.unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err:?}");
    assert!(rig.stat(&rig.server, "public", "FRONTEND", "dreq").await >= 1);
    assert_eq!(rig.stat(&rig.server, "app", "BACKEND", "stot").await, 0);
    // The real mesh-a leaf of the same CA passes the same rule.
    let good = rig.ca.leaf(&allowed);
    rig.client.set_certs(certs(&rig.ca, &good)).await.unwrap();
    let conn = soon(rig.dial()).await.unwrap();
    assert_eq!(echo(&conn, "ok").await.unwrap(), "a:ok");
}

/// The permission bits of `path` (not following a symlink).
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_directory_files_and_sockets_are_private() {
    let rig = rig(allow_a()).await;
    let dir = rig.server.dir().to_owned();
    // Read back from the filesystem, as HAProxy and we left them (the
    // directory was made 0755 by the test's scratch()).
    assert_eq!(mode(&dir), 0o700, "the directory");
    assert_eq!(mode(&dir.join("staging")), 0o700, "the staging directory");
    for f in [
        haproxy::files::LEAF,
        haproxy::files::ROOTS,
        haproxy::files::CONFIG,
        haproxy::files::CRT_LIST,
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(
        mode(&dir.join(haproxy::files::MASTER_SOCKET)),
        0o600,
        "master socket"
    );
    assert_eq!(
        mode(&dir.join(haproxy::files::STATS_SOCKET)),
        0o600,
        "stats socket"
    );
    // Still so after a reload.
    rig.server.set_allow(vec![id("mesh-z")]).await.unwrap();
    assert_eq!(mode(&dir.join(haproxy::files::MASTER_SOCKET)), 0o600);
    assert_eq!(mode(&dir.join(haproxy::files::LEAF)), 0o600);
}

#[tokio::test]
async fn planted_symlinks_are_not_followed() {
    require_haproxy();
    let ca = pki::Ca::new(TD);
    let leaf = ca.leaf(&id("mesh-a"));
    let outside = scratch("sidecar-victim");
    let victim = outside.join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    // Symlinks where the key is written aside and where it lands, in the
    // directory and in its staging directory.
    let dir = scratch("sidecar-planted");
    std::fs::create_dir_all(dir.join("staging")).unwrap();
    for d in [dir.clone(), dir.join("staging")] {
        for name in [".leaf.pem.new", "leaf.pem", ".haproxy.cfg.new"] {
            std::os::unix::fs::symlink(&victim, d.join(name)).unwrap();
        }
    }
    let h = Haproxy::start(
        HaproxySettings::new(
            dir.clone(),
            format!("127.0.0.1:{}", free_port()),
            certs(&ca, &leaf),
        ),
        "127.0.0.1:1",
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    let written = dir.join(haproxy::files::LEAF);
    assert!(std::fs::symlink_metadata(&written)
        .unwrap()
        .file_type()
        .is_file());
    assert!(std::fs::read_to_string(&written)
        .unwrap()
        .contains(leaf.key.trim()));
    assert_eq!(mode(&written), 0o600);
    h.stop().await;
    // A directory that is itself a symlink is refused.
    let link = outside.join("dir-link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let err = Haproxy::start(
        HaproxySettings::new(
            link,
            format!("127.0.0.1:{}", free_port()),
            certs(&ca, &leaf),
        ),
        "127.0.0.1:1",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
}

/// The variables of process `pid` (`/proc/<pid>/environ`).
fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[tokio::test]
async fn haproxy_starts_without_the_nodes_environment() {
    // The secrets are in the environment from the process's start: this
    // test runs itself in a child process that has them (no set_var in
    // a multi-threaded test binary).
    const CHILD: &str = "MESH_SIDECAR_ENV_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "haproxy_starts_without_the_nodes_environment",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("MESH_COOKIE", "cookie-secret")
            .env("CONSUL_HTTP_TOKEN", "token-secret")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "the child test failed:\n{text}");
        assert!(text.contains("1 passed"), "{text}");
        return;
    }
    require_haproxy();
    assert_eq!(std::env::var("MESH_COOKIE").as_deref(), Ok("cookie-secret"));
    let ca = pki::Ca::new(TD);
    let h = Haproxy::start(
        HaproxySettings::new(
            scratch("sidecar-env"),
            format!("127.0.0.1:{}", free_port()),
            certs(&ca, &ca.leaf(&id("mesh-a"))),
        ),
        "127.0.0.1:1",
    )
    .await
    .unwrap();
    let master = h.pid().unwrap();
    let info = h.runtime("show info").await.unwrap();
    let worker: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for pid in [master, worker] {
        let vars = environ(pid);
        assert!(
            !vars
                .iter()
                .any(|v| v.starts_with("MESH_COOKIE=") || v.starts_with("CONSUL_HTTP_TOKEN=")),
            "{pid}: {vars:?}"
        );
        assert!(vars.iter().any(|v| v.starts_with("PATH=")), "{vars:?}");
    }
    h.stop().await;
    // A command template keeps the CONSUL_* variables its proxy reads,
    // not the node's cookie.
    let cmd = CommandSidecar::start(CommandSettings::new("exec sleep 600", "x"))
        .await
        .unwrap();
    let pid = cmd.pid().unwrap();
    // The spawner forks, then the child execs setpriv, sh and sleep in
    // turn: read the environment of the last image, not of one between.
    mesh_testkit::procs::await_exec(pid, "sleep", mesh_testkit::SOON).await;
    let vars = environ(pid);
    assert!(
        !vars.iter().any(|v| v.starts_with("MESH_COOKIE=")),
        "{vars:?}"
    );
    assert!(vars.iter().any(|v| v == "CONSUL_HTTP_TOKEN=token-secret"));
    cmd.stop().await;
}

/// The certificate b's sidecar presents to a new TLS client, DER.
async fn served_leaf(port: u16, client: &Certs) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = mesh::transport::tls::crypto_provider();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(client.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .unwrap();
    cfg.resumption = rustls::client::Resumption::disabled();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            tcp,
        )
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_rotation_reloads_and_established_connections_survive() {
    let rig = rig(allow_a()).await;
    let a_certs = rig.client.config().certs;
    let old = rig.server.config().certs;
    assert_eq!(
        served_leaf(rig.public_port, &a_certs).await,
        der(&old.chain_pem)
    );
    let conn = soon(rig.dial()).await.unwrap();
    assert_eq!(echo(&conn, "1").await.unwrap(), "a:1");
    let master = rig.server.pid();

    let new = certs(&rig.ca, &rig.ca.leaf(&id("mesh-b")));
    rig.server.set_certs(new.clone()).await.unwrap();
    // Reloaded, not restarted: same master, one start.
    assert_eq!(rig.server.pid(), master);
    assert_eq!(rig.server.status().borrow().starts, 1);
    // The established connection lives on (on the old worker) ...
    assert_eq!(echo(&conn, "2").await.unwrap(), "a:2");
    assert!(!conn.is_closed());
    // ... new connections get the new leaf, and work.
    assert_eq!(
        served_leaf(rig.public_port, &a_certs).await,
        der(&new.chain_pem)
    );
    let fresh = soon(rig.dial()).await.unwrap();
    assert_eq!(echo(&fresh, "3").await.unwrap(), "a:3");
    assert_eq!(echo(&conn, "4").await.unwrap(), "a:4");
}

/// A node of capability `game`, named `name`, through `sidecar`.
async fn sidecar_node(name: &str, sidecar: Sidecar, seeds: &[String]) -> Node {
    Node::builder()
        .id(name)
        .default_node(false)
        .cluster("mesh")
        .cookie(mesh_testkit::COOKIE)
        .through_sidecar(sidecar)
        .seeds(seeds.iter().cloned())
        .heartbeat(Duration::from_millis(100), Duration::from_secs(2))
        .shutdown_timeout(Duration::from_secs(2))
        .capabilities(["game"])
        .actor::<Player>()
        .start()
        .await
        .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_route_calls_through_their_own_sidecars() {
    require_haproxy();
    let ca = pki::Ca::new(TD);
    let names = ["a", "b", "c"];
    let public: Vec<u16> = names.iter().map(|_| free_port()).collect();
    // upstream[i][j]: node i's local port for node j.
    let upstream: Vec<Vec<u16>> = names
        .iter()
        .map(|_| names.iter().map(|_| free_port()).collect())
        .collect();
    let mut sidecars = Vec::new();
    for (i, me) in names.iter().enumerate() {
        let ups = names
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, peer)| HaproxyUpstream {
                node: (*peer).into(),
                destination: format!("mesh-{peer}"),
                local_port: upstream[i][j],
                peer_addr: format!("127.0.0.1:{}", public[j]),
                peer_id: id(&format!("mesh-{peer}")),
            })
            .collect();
        let allow = names
            .iter()
            .filter(|p| *p != me)
            .map(|p| id(&format!("mesh-{p}")));
        sidecars.push(Sidecar::haproxy(
            HaproxySettings::new(
                scratch(&format!("sidecar-{me}")),
                format!("127.0.0.1:{}", public[i]),
                certs(&ca, &ca.leaf(&id(&format!("mesh-{me}")))),
            )
            .allow(allow)
            .upstreams(ups),
        ));
    }
    // a starts alone; b and c are seeded with their upstream port for a
    // (a seed through a sidecar is a loopback upstream address), then
    // gossip tells every node about the others by node id.
    let a = sidecar_node("a", sidecars[0].clone(), &[]).await;
    let b = sidecar_node(
        "b",
        sidecars[1].clone(),
        &[format!("127.0.0.1:{}", upstream[1][0])],
    )
    .await;
    let c = sidecar_node(
        "c",
        sidecars[2].clone(),
        &[format!("127.0.0.1:{}", upstream[2][0])],
    )
    .await;
    for n in [&a, &b, &c] {
        assert!(
            n.addr().unwrap().starts_with("127.0.0.1:"),
            "{:?}",
            n.addr()
        );
        soon(n.membership_changes().wait_for(|m| m.len() == 3))
            .await
            .unwrap();
    }
    let mut served = std::collections::BTreeSet::new();
    for i in 0..60 {
        let pid = format!("p{i}");
        for from in [&a, &b, &c] {
            let (by, _) = soon(from.call::<Player, _>(&pid, Score(1)).into_future())
                .await
                .unwrap();
            assert_eq!(by, from.owner_of::<Player>(&pid).unwrap());
            served.insert(by);
        }
    }
    assert_eq!(served.len(), 3, "{served:?}");
    // Every pair of nodes is connected, each connection going out through
    // its dialer's upstream frontend and in through its target's public
    // frontend to the app: at least 3 sessions out, 3 in. Which end of a
    // pair dials depends on timing (a node may only ever dial), except
    // that a, the seed, is dialed by both others.
    let (mut out, mut public, mut app) = (0, 0, 0);
    for (i, s) in sidecars.iter().enumerate() {
        let h = s.running_haproxy().unwrap();
        let stats = h.stats().await.unwrap();
        let get = |proxy: &str, server: &str, f: &str| {
            stats
                .iter()
                .find(|r| r.proxy == proxy && r.server == server)
                .map_or(0, |r| r.get(f))
        };
        if i == 0 {
            assert!(get("public", "FRONTEND", "stot") >= 2);
        }
        public += get("public", "FRONTEND", "stot");
        app += get("app", "BACKEND", "stot");
        out += stats
            .iter()
            .filter(|r| r.proxy.starts_with("upstream_") && r.server == "FRONTEND")
            .map(|r| r.get("stot"))
            .sum::<u64>();
    }
    assert!(out >= 3, "{out} sessions out");
    assert!(
        public >= 3 && app >= 3,
        "{public} sessions in, {app} to the apps"
    );
    // Shutdown stops each sidecar after the node has drained.
    let h = sidecars[0].running_haproxy().unwrap();
    let mut status = h.status();
    a.shutdown().await.unwrap();
    assert!(soon(status.wait_for(|s| s.stopped))
        .await
        .unwrap()
        .pid
        .is_none());
    assert!(sidecars[0].running_haproxy().is_none());
    b.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}

/// Records the messages of `mesh::sidecar` events, as the process's
/// global subscriber (a thread's scoped one can miss events while other
/// tests register callsites concurrently).
#[derive(Clone, Default)]
struct Lines(Arc<std::sync::Mutex<Vec<String>>>, Arc<tokio::sync::Notify>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Lines {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Msg(String);
        impl tracing::field::Visit for Msg {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        if e.metadata().target() != "mesh::sidecar" {
            return;
        }
        let mut m = Msg(String::new());
        e.record(&mut m);
        self.0.lock().unwrap().push(m.0);
        self.1.notify_waiters();
    }
}

impl Lines {
    async fn until(&self, pred: impl Fn(&[String]) -> bool) {
        loop {
            let notified = self.1.notified();
            if pred(&self.0.lock().unwrap()) {
                return;
            }
            notified.await;
        }
    }
}

#[tokio::test]
async fn a_command_sidecar_is_supervised_with_a_stand_in_program() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let lines = Lines::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(lines.clone()))
        .expect("the only test that installs a subscriber");
    // Stands in for `consul connect proxy -sidecar-for {{id}}`: prints,
    // then runs until signalled.
    let settings = CommandSettings::new(
        "echo proxy for {{id}}; echo warming up >&2; exec sleep 600",
        "mesh-a",
    )
    .restart(Restart {
        min: Duration::from_millis(10),
        max: Duration::from_millis(100),
    });
    let sidecar = CommandSidecar::start(settings).await.unwrap();
    let count =
        |what: &'static str| move |l: &[String]| l.iter().filter(|x| x.as_str() == what).count();
    soon(lines.until(|l| count("proxy for mesh-a")(l) == 1 && count("warming up")(l) == 1)).await;
    let first = sidecar.pid().unwrap();
    let mut status = sidecar.status();
    // It dies: restarted (after the backoff), printing again.
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap()
        .success());
    let s = soon(status.wait_for(|s| s.starts == 2))
        .await
        .unwrap()
        .clone();
    assert_ne!(s.pid, Some(first));
    assert!(s.last_exit.unwrap().contains("signal"), "exit reason");
    soon(lines.until(|l| count("proxy for mesh-a")(l) == 2)).await;
    // Stopped: SIGTERM, gone.
    let second = s.pid.unwrap();
    sidecar.stop().await;
    assert!(sidecar.status().borrow().stopped);
    let alive = std::process::Command::new("kill")
        .args(["-0", &second.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!alive.success(), "the stand-in still runs after stop");
    // A command that exits before it is ready is an error at start, with
    // what it printed.
    let err = CommandSidecar::start(
        CommandSettings::new("echo no such proxy >&2; exit 3", "x")
            .ready_when_listening(format!("127.0.0.1:{}", free_port())),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no such proxy"), "{err}");
}

#[tokio::test]
async fn an_external_sidecar_starts_nothing_and_the_node_listens_on_loopback_only() {
    let sidecar = Sidecar::external();
    let node = Node::builder()
        .id("ext")
        .default_node(false)
        .cookie(mesh_testkit::COOKIE)
        .through_sidecar(sidecar.clone())
        .start()
        .await
        .unwrap();
    assert!(node.addr().unwrap().starts_with("127.0.0.1:"));
    assert!(sidecar.running_haproxy().is_none() && sidecar.running_command().is_none());
    node.shutdown().await.unwrap();
    let err = Node::builder()
        .id("ext2")
        .default_node(false)
        .cookie(mesh_testkit::COOKIE)
        .through_sidecar(Sidecar::external())
        .listen("0.0.0.0:0")
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("loopback only"), "{err}");
}

/// Issue 24, point 2: a HAProxy left serving a sidecar directory (its
/// node died without stopping it; here started by hand from the previous
/// run's files, as the node starts it) is found through the pidfile and
/// stopped, master and worker, when a new sidecar starts there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_haproxy_in_the_directory_is_stopped_at_start() {
    use mesh_testkit::procs::{await_gone, master_and_workers};
    require_haproxy();
    let ca = pki::Ca::new(TD);
    let dir = scratch("sidecar-stale");
    let settings = HaproxySettings::new(
        dir.clone(),
        format!("127.0.0.1:{}", free_port()),
        certs(&ca, &ca.leaf(&id("mesh-a"))),
    );
    // A previous run: its files stay.
    let first = Haproxy::start(settings.clone(), "127.0.0.1:1")
        .await
        .unwrap();
    first.stop().await;
    // Its HAProxy, still running (not ours to supervise).
    let mut stale = tokio::process::Command::new(mesh::sidecar::DEFAULT_HAPROXY)
        .arg("-W")
        .arg("-S")
        .arg(format!("{},mode,600", dir.join("master.sock").display()))
        .arg("-p")
        .arg(dir.join("haproxy.pid"))
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (master, workers) = master_and_workers(&dir.join("haproxy.pid"), SOON_LIMIT).await;
    assert_eq!(Some(master), stale.id());
    // The new start stops it first, then runs its own.
    let h = Haproxy::start(settings, "127.0.0.1:1").await.unwrap();
    soon(stale.wait()).await.unwrap();
    await_gone(&workers, SOON_LIMIT).await;
    let now = h.pid().expect("running");
    assert_ne!(now, master);
    let (named, _) = master_and_workers(&dir.join("haproxy.pid"), SOON_LIMIT).await;
    assert_eq!(named, now);
    h.stop().await;
}

const SOON_LIMIT: Duration = Duration::from_secs(20);
