//! mTLS between nodes over real TCP: file identities from a test CA,
//! every bad input refused with a reason (logged and counted), rotation of
//! the leaf and of the roots, a TLS cluster that refuses a node of a
//! foreign CA or with the wrong identity.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mesh::identity::{FileIdentity, IdentityError, IdentitySource};
use mesh::prelude::*;
use mesh::transport::tls::{Tls, HANDSHAKES_TOTAL, HANDSHAKE_FAILURES_TOTAL};
use mesh::transport::{Connection, DialTarget, Inbound, Listening, Responder, TransportConfig};
use mesh::wire::{self, Cast, Cookie, Identity, Peer};
use mesh::Transport;
use mesh_testkit::actors::{Player, Score};
use mesh_testkit::fixture::{fast, member};
use mesh_testkit::pki::{self, Ca, Files, Leaf};
use mesh_testkit::soon;
use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

// ------------------------------------------------------------ counters

#[derive(Default)]
struct Cell(Mutex<u64>);

/// Woken on every counter change, so tests await a count instead of
/// polling it.
static COUNTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

impl CounterFn for Cell {
    fn increment(&self, v: u64) {
        *self.0.lock().unwrap() += v;
        COUNTED.notify_waiters();
    }
    fn absolute(&self, v: u64) {
        *self.0.lock().unwrap() = v;
        COUNTED.notify_waiters();
    }
}

/// Counters by `name{label=value}`; gauges and histograms are ignored.
#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<BTreeMap<String, Arc<Cell>>>>);

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut name = key.name().to_owned();
        for l in key.labels() {
            name.push_str(&format!("{{{}={}}}", l.key(), l.value()));
        }
        Counter::from_arc(self.0.lock().unwrap().entry(name).or_default().clone())
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn recorder() -> &'static Recorder {
    static R: OnceLock<Recorder> = OnceLock::new();
    R.get_or_init(|| {
        let r = Recorder::default();
        metrics::set_global_recorder(r.clone()).unwrap();
        r
    })
}

/// Refused handshakes counted with `reason` so far.
fn failures(reason: &str) -> u64 {
    let name = format!("{HANDSHAKE_FAILURES_TOTAL}{{reason={reason}}}");
    recorder()
        .0
        .lock()
        .unwrap()
        .get(&name)
        .map_or(0, |c| *c.0.lock().unwrap())
}

/// The counter `name` (with its labels, `name{label=value}`) so far.
fn count(name: &str) -> u64 {
    recorder()
        .0
        .lock()
        .unwrap()
        .get(name)
        .map_or(0, |c| *c.0.lock().unwrap())
}

/// Waits until `reason` was counted more than `before` times.
async fn counted(reason: &str, before: u64) {
    soon(async {
        loop {
            let changed = COUNTED.notified();
            if failures(reason) > before {
                return;
            }
            changed.await;
        }
    })
    .await;
}

/// Waits until the counter `name` reaches `at_least`.
async fn reaches(name: &str, at_least: u64) {
    soon(async {
        loop {
            let changed = COUNTED.notified();
            if count(name) >= at_least {
                return;
            }
            changed.await;
        }
    })
    .await;
}

const CLOSED_DENIED: &str = "mesh_connections_closed_total{reason=denied}";
const CLOSED_MAX_LIFETIME: &str = "mesh_connections_closed_total{reason=max_lifetime}";

// ------------------------------------------------------------ helpers

fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mesh-tls-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn cluster_id() -> String {
    pki::service_id(TD, "c")
}

/// Identity files holding `leaf` and `bundle`, and the source over them.
fn identity(name: &str, leaf: &Leaf, bundle: &str) -> (Files, FileIdentity) {
    let files = Files::in_dir(&scratch(name));
    files.write(leaf, bundle);
    let source = FileIdentity::load(&files.chain, &files.key, &files.bundle).unwrap();
    (files, source)
}

struct Echo;

impl Inbound for Echo {
    fn call(&self, from: &Peer, call: wire::CallFrame, reply: Responder) {
        reply.send(Ok([from.node.as_bytes(), b":", &call.payload].concat()));
    }
    fn cast(&self, _: &Peer, _: Cast) {}
}

fn config(node: &str) -> TransportConfig {
    let mut cfg = TransportConfig::new(
        Identity {
            cluster: "c".into(),
            node: node.into(),
            capabilities: vec![],
            addr: String::new(),
            incarnation: 1,
            actors: Vec::new(),
        },
        Cookie::new(mesh_testkit::COOKIE),
    );
    cfg.handshake_timeout = Duration::from_secs(3);
    cfg
}

async fn listen(t: &Transport) -> Listening {
    t.listen("127.0.0.1:0", config("b"), Arc::new(Echo))
        .await
        .unwrap()
}

async fn dial(t: &Transport, addr: &str) -> Result<Connection, Error> {
    t.dial(&DialTarget::addr(addr), &config("a"), Arc::new(Echo))
        .await
}

async fn echo(conn: &Connection) -> Result<Vec<u8>, Error> {
    conn.call(1, "x", b"hi".to_vec(), Duration::from_secs(5), 0)
        .await
        .map(|b| b.to_vec())
}

/// A server listening with a leaf of the cluster's identity from `ca`.
async fn server(ca: &Ca) -> (Files, Listening) {
    let (files, source) = identity("server", &ca.leaf(&cluster_id()), &ca.pem);
    let l = listen(&Tls::new(source).transport()).await;
    (files, l)
}

/// A client dialing with `leaf`, trusting `bundle`.
fn client(leaf: &Leaf, bundle: &str) -> Transport {
    Tls::new(identity("client", leaf, bundle).1).transport()
}

// ------------------------------------------------------------ a raw client

/// Accepts any server certificate (the raw client checks nothing).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Handshakes with `addr` as a bare rustls client presenting `leaf` (or
/// no certificate), then reads once; returns the server's leaf and
/// whether the connection stayed usable (TLS 1.3 reports a refused client
/// certificate on the first read).
async fn raw(addr: &str, leaf: Option<&Leaf>) -> (CertificateDer<'static>, bool) {
    use rustls::pki_types::pem::PemObject;
    let p = mesh::transport::tls::crypto_provider();
    let b = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(p)));
    let mut cfg = match leaf {
        Some(l) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(l.cert.as_bytes()).unwrap()],
                rustls::pki_types::PrivateKeyDer::from_pem_slice(l.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.resumption = rustls::client::Resumption::disabled();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("mesh.invalid").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    // A refused client hears an alert; an accepted one hears the server
    // wait for its hello: nothing within a short while.
    let mut byte = [0u8; 1];
    let usable = tokio::time::timeout(Duration::from_millis(300), tls.read(&mut byte))
        .await
        .is_err();
    (presented, usable)
}

fn der(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

// ------------------------------------------------------------ tests

#[tokio::test]
async fn the_verified_spiffe_id_reaches_both_peers() {
    let ca = Ca::new(TD);
    let (_files, mut server) = server(&ca).await;
    let conn = dial(&client(&ca.leaf(&cluster_id()), &ca.pem), server.addr())
        .await
        .unwrap();
    assert_eq!(conn.peer().identity.as_deref(), Some(cluster_id().as_str()));
    let accepted = soon(server.accepted()).await.unwrap();
    assert_eq!(
        accepted.peer().identity.as_deref(),
        Some(cluster_id().as_str())
    );
    assert_eq!(echo(&conn).await.unwrap(), b"a:hi");
}

/// The key exchange two nodes negotiate in this build: the post-quantum
/// hybrid with aws-lc-rs (the default feature); with ring (rustls
/// 0.23.48) its first classical group, secp384r1.
#[cfg(feature = "aws-lc-rs")]
const KEY_EXCHANGE: &str = "X25519MLKEM768";
#[cfg(not(feature = "aws-lc-rs"))]
const KEY_EXCHANGE: &str = "secp384r1";

#[tokio::test]
async fn nodes_negotiate_the_post_quantum_key_exchange_with_aws_lc_rs() {
    recorder();
    let counter = format!("{HANDSHAKES_TOTAL}{{group={KEY_EXCHANGE}}}");
    let before = count(&counter);
    let ca = Ca::new(TD);
    let (_files, mut server) = server(&ca).await;
    let leaf = ca.leaf(&cluster_id());
    let conn = dial(&client(&leaf, &ca.pem), server.addr()).await.unwrap();
    soon(server.accepted()).await.unwrap();
    assert_eq!(echo(&conn).await.unwrap(), b"a:hi");
    // Both sides counted their handshake (before the dial returned and
    // the listener handed the connection on) by the group they agreed on.
    let by_group: Vec<(String, u64)> = recorder()
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with(HANDSHAKES_TOTAL))
        .map(|(k, c)| (k.clone(), *c.0.lock().unwrap()))
        .collect();
    assert!(count(&counter) >= before + 2, "{by_group:?}");

    // Seen from a bare rustls client on the same provider: the server's
    // choice, as rustls reports it.
    use rustls::pki_types::pem::PemObject;
    let p = mesh::transport::tls::crypto_provider();
    let cfg = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(p)))
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap()],
            rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
        )
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("mesh.invalid").unwrap(), tcp)
        .await
        .unwrap();
    let state = tls.get_ref().1;
    let group = state.negotiated_key_exchange_group().unwrap().name();
    println!(
        "negotiated: {:?}, key exchange {group:?}",
        state.protocol_version().unwrap()
    );
    assert_eq!(format!("{group:?}"), KEY_EXCHANGE);
    assert_eq!(
        state.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let ca = Ca::new(TD);
    let (_files, server) = server(&ca).await;
    let before = failures("expired");
    let expired = ca.leaf_valid(&cluster_id(), (2000, 2001));
    let err = dial(&client(&expired, &ca.pem), server.addr()).await;
    // With TLS 1.3 the client learns it on its first read: the cookie
    // handshake fails.
    assert!(err.is_err(), "an expired client was let in");
    counted("expired", before).await;
}

#[tokio::test]
async fn a_foreign_ca_is_refused_on_both_sides() {
    let ca = Ca::new(TD);
    let foreign = Ca::new(TD);
    let (_files, server) = server(&ca).await;
    // A client of a foreign CA: the server refuses it.
    let before = failures("unknown_ca");
    let c = client(&foreign.leaf(&cluster_id()), &ca.pem);
    assert!(dial(&c, server.addr()).await.is_err());
    counted("unknown_ca", before).await;
    // A client trusting only a foreign CA: it refuses the server.
    let before = failures("unknown_ca");
    let c = client(&foreign.leaf(&cluster_id()), &foreign.pem);
    let err = dial(&c, server.addr()).await.unwrap_err();
    assert!(err.to_string().contains("unknown_ca"), "{err}");
    counted("unknown_ca", before).await;
}

#[tokio::test]
async fn the_wrong_spiffe_id_is_refused_unless_allowed() {
    let ca = Ca::new(TD);
    let other = pki::service_id(TD, "billing");
    let leaf = ca.leaf(&other);
    // The server refuses a client of another service...
    let (_files, server) = server(&ca).await;
    let before = failures("wrong_identity");
    let c = Tls::new(identity("client", &leaf, &ca.pem).1)
        .allow([cluster_id()])
        .transport();
    assert!(dial(&c, server.addr()).await.is_err());
    counted("wrong_identity", before).await;
    // ...and the client refuses a server of another service.
    let before = failures("wrong_identity");
    let c = client(&leaf, &ca.pem);
    let err = dial(&c, server.addr()).await.unwrap_err();
    assert!(err.to_string().contains("expected"), "{err}");
    counted("wrong_identity", before).await;
    // An allow-list on both ends lets it in.
    let (_f, source) = identity("server2", &ca.leaf(&cluster_id()), &ca.pem);
    let server2 = listen(&Tls::new(source).allow([other.clone()]).transport()).await;
    let c = Tls::new(identity("client", &leaf, &ca.pem).1)
        .allow([cluster_id()])
        .transport();
    let conn = dial(&c, server2.addr()).await.unwrap();
    assert_eq!(conn.peer().identity.as_deref(), Some(cluster_id().as_str()));
    assert_eq!(echo(&conn).await.unwrap(), b"a:hi");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let ca = Ca::new(TD);
    let (_files, server) = server(&ca).await;
    let before = failures("no_certificate");
    let (_, usable) = raw(server.addr(), None).await;
    assert!(!usable);
    counted("no_certificate", before).await;
    // The same bare client with a good certificate stays connected.
    let (_, usable) = raw(server.addr(), Some(&ca.leaf(&cluster_id()))).await;
    assert!(usable);
}

#[tokio::test]
async fn plaintext_and_garbage_sent_to_a_tls_listener_are_refused() {
    let ca = Ca::new(TD);
    let (_files, server) = server(&ca).await;
    let before = failures("not_tls");
    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = soon(s.read_to_end(&mut rest)).await;
    counted("not_tls", before).await;
    // A plaintext mesh node (the cookie handshake without TLS).
    let before = failures("not_tls");
    assert!(dial(&Transport::tcp(), server.addr()).await.is_err());
    counted("not_tls", before).await;
    // The listener still serves good clients.
    let conn = dial(&client(&ca.leaf(&cluster_id()), &ca.pem), server.addr())
        .await
        .unwrap();
    assert_eq!(echo(&conn).await.unwrap(), b"a:hi");
}

#[tokio::test]
async fn bad_identity_files_are_refused_with_the_reason() {
    let ca = Ca::new(TD);
    let files = Files::in_dir(&scratch("bad"));
    let good = ca.leaf(&cluster_id());
    // A key that is not the leaf's.
    let other = ca.leaf(&cluster_id());
    files.write(
        &Leaf {
            cert: good.cert.clone(),
            key: other.key.clone(),
            serial: good.serial,
        },
        &ca.pem,
    );
    let err = FileIdentity::load(&files.chain, &files.key, &files.bundle).unwrap_err();
    assert!(matches!(err, IdentityError::KeyMismatch(_)), "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");
    // Unreadable.
    let err = FileIdentity::load(
        files.chain.with_extension("nope"),
        &files.key,
        &files.bundle,
    )
    .unwrap_err();
    assert!(
        matches!(&err, IdentityError::Read { path, .. } if path.ends_with("cert.nope")),
        "{err}"
    );
    // Malformed: no PEM at all, a broken base64 body, an empty bundle.
    files.write(&good, &ca.pem);
    pki::replace(&files.chain, "not a certificate");
    let err = FileIdentity::load(&files.chain, &files.key, &files.bundle).unwrap_err();
    assert!(
        matches!(
            err,
            IdentityError::Pem {
                what: "certificate chain",
                ..
            }
        ),
        "{err}"
    );
    pki::replace(
        &files.chain,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let err = FileIdentity::load(&files.chain, &files.key, &files.bundle).unwrap_err();
    assert!(matches!(err, IdentityError::Pem { .. }), "{err}");
    pki::replace(&files.chain, &good.cert);
    pki::replace(&files.bundle, "");
    let err = FileIdentity::load(&files.chain, &files.key, &files.bundle).unwrap_err();
    assert!(
        matches!(
            err,
            IdentityError::Pem {
                what: "trust bundle",
                ..
            }
        ),
        "{err}"
    );
    pki::replace(
        &files.key,
        "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
    );
    pki::replace(&files.bundle, &ca.pem);
    let err = FileIdentity::load(&files.chain, &files.key, &files.bundle).unwrap_err();
    assert!(err.to_string().contains("key"), "{err}");
    // A leaf with no SPIFFE ID.
    let https = ca.leaf("https://example.com/");
    files.write(&https, &ca.pem);
    let err = FileIdentity::load(&files.chain, &files.key, &files.bundle).unwrap_err();
    assert!(matches!(err, IdentityError::NoSpiffeId(_)), "{err}");
}

#[tokio::test]
async fn a_broken_rotation_keeps_the_previous_identity() {
    let ca = Ca::new(TD);
    let (files, server) = server(&ca).await;
    let c = client(&ca.leaf(&cluster_id()), &ca.pem);
    pki::replace(&files.chain, "half written");
    let name = mesh::identity::IDENTITY_RELOAD_FAILURES_TOTAL.to_owned();
    let reloads = || {
        recorder()
            .0
            .lock()
            .unwrap()
            .get(&name)
            .map_or(0, |c| *c.0.lock().unwrap())
    };
    let before = reloads();
    let conn = dial(&c, server.addr()).await.unwrap();
    assert_eq!(echo(&conn).await.unwrap(), b"a:hi");
    assert!(reloads() > before);
}

#[tokio::test]
async fn a_new_leaf_applies_to_new_handshakes_and_established_connections_live_on() {
    let ca = Ca::new(TD);
    let (files, source) = identity("server", &ca.leaf(&cluster_id()), &ca.pem);
    let first = source.current().unwrap();
    let server = listen(&Tls::new(source).transport()).await;
    let c = client(&ca.leaf(&cluster_id()), &ca.pem);
    let old = dial(&c, server.addr()).await.unwrap();
    let me = ca.leaf(&cluster_id());
    let (presented, _) = raw(server.addr(), Some(&me)).await;
    assert_eq!(presented, first.certified_key().cert[0]);

    let next = ca.leaf(&cluster_id());
    files.write(&next, &ca.pem);
    let (presented, _) = raw(server.addr(), Some(&me)).await;
    assert_eq!(
        presented,
        der(&next.cert),
        "a new handshake got the old leaf"
    );
    let new = dial(&c, server.addr()).await.unwrap();
    assert_eq!(echo(&new).await.unwrap(), b"a:hi");
    assert_eq!(
        echo(&old).await.unwrap(),
        b"a:hi",
        "the old connection died"
    );
}

#[tokio::test]
async fn new_roots_apply_to_new_handshakes_and_established_connections_live_on() {
    let old_ca = Ca::new(TD);
    let new_ca = Ca::new(TD);
    let (files, source) = identity("server", &old_ca.leaf(&cluster_id()), &old_ca.pem);
    let server = listen(&Tls::new(source).transport()).await;
    let (client_files, client_source) =
        identity("client", &old_ca.leaf(&cluster_id()), &old_ca.pem);
    let c = Tls::new(client_source).transport();
    let old = dial(&c, server.addr()).await.unwrap();

    // The server moves to the new CA alone: the old client is refused...
    files.write(&new_ca.leaf(&cluster_id()), &new_ca.pem);
    let before = failures("unknown_ca");
    assert!(dial(&c, server.addr()).await.is_err());
    counted("unknown_ca", before).await;
    // ...until it moves too (no restart: same transport).
    client_files.write(&new_ca.leaf(&cluster_id()), &new_ca.pem);
    let new = dial(&c, server.addr()).await.unwrap();
    assert_eq!(echo(&new).await.unwrap(), b"a:hi");
    // The connection made under the old roots lives on.
    assert_eq!(echo(&old).await.unwrap(), b"a:hi");
}

// ------------------------------------------------------------ a cluster

async fn node(t: Transport, name: &str, seeds: &[&str]) -> Node {
    fast(member("tls", name))
        .transport(t)
        .listen("127.0.0.1:0")
        .seeds(seeds.iter().copied())
        .capabilities(["game"])
        .actor::<Player>()
        .start()
        .await
        .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_forms_and_refuses_foreign_and_wrong_identities() {
    let ca = Ca::new(TD);
    let tls = |name: &str, leaf: &Leaf, bundle: &str| {
        Tls::new(identity(name, leaf, bundle).1).transport()
    };
    let n1 = node(tls("n1", &ca.leaf(&cluster_id()), &ca.pem), "n1", &[]).await;
    let seed = n1.addr().unwrap().to_owned();
    let n2 = node(tls("n2", &ca.leaf(&cluster_id()), &ca.pem), "n2", &[&seed]).await;
    let n3 = node(tls("n3", &ca.leaf(&cluster_id()), &ca.pem), "n3", &[&seed]).await;
    for n in [&n1, &n2, &n3] {
        let mut changes = n.membership_changes();
        soon(changes.wait_for(|m| m.len() == 3)).await.unwrap();
    }
    let mut owners = std::collections::BTreeSet::new();
    for i in 0..60 {
        let id = format!("p{i}");
        let (served_by, _) = soon(n1.call::<Player, _>(&id, Score(1)).into_future())
            .await
            .unwrap();
        owners.insert(served_by);
    }
    assert_eq!(owners.len(), 3, "calls crossed TLS links to every node");

    // A node of a foreign CA, and one of another service, never join.
    let foreign = Ca::new(TD);
    let before = failures("unknown_ca");
    let f = node(
        tls("f", &foreign.leaf(&cluster_id()), &foreign.pem),
        "f",
        &[&seed],
    )
    .await;
    counted("unknown_ca", before).await;
    let before = failures("wrong_identity");
    let w = node(
        tls("w", &ca.leaf(&pki::service_id(TD, "other")), &ca.pem),
        "w",
        &[&seed],
    )
    .await;
    counted("wrong_identity", before).await;
    assert_eq!(n1.membership().len(), 3);
    assert_eq!(f.membership().len(), 1);
    assert_eq!(w.membership().len(), 1);
}

// ------------------------------------------------------------ Consul Connect

/// Waits, renewal after renewal, until `source`'s identity satisfies
/// `done` (a leaf and its roots may arrive as two renewals).
async fn renewed(
    source: &mesh::consul::ConsulIdentity,
    renewals: &mut tokio::sync::watch::Receiver<u64>,
    done: impl Fn(&mesh::identity::Material) -> bool,
) {
    soon(async {
        while !done(&source.current().unwrap()) {
            renewals.changed().await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_from_the_agents_connect_ca_follow_its_rotations() {
    use mesh::consul::ConsulIdentity;
    use mesh_testkit::consul_agent::TestConsul;
    let consul = TestConsul::start(1, Default::default()).await;
    let id = pki::service_id(&consul.trust_domain(), "c");
    let server_source = Arc::new(ConsulIdentity::start(&consul.url(0), "c").await.unwrap());
    let client_source = Arc::new(ConsulIdentity::start(&consul.url(0), "c").await.unwrap());
    assert_eq!(server_source.current().unwrap().spiffe_id(), id);
    let mut server =
        listen(&Tls::with_tcp(server_source.clone(), Default::default()).transport()).await;
    let c = Tls::with_tcp(client_source.clone(), Default::default()).transport();
    let old = dial(&c, server.addr()).await.unwrap();
    assert_eq!(old.peer().identity.as_deref(), Some(id.as_str()));
    let accepted = soon(server.accepted()).await.unwrap();
    assert_eq!(accepted.peer().identity.as_deref(), Some(id.as_str()));

    // A renewed leaf reaches the source through the blocking query, and
    // the next handshake presents it.
    let (mut server_renewals, mut client_renewals) =
        (server_source.renewals(), client_source.renewals());
    let first = server_source.current().unwrap().certified_key().cert[0].clone();
    consul.rotate_leaf("c");
    renewed(&server_source, &mut server_renewals, |m| {
        m.certified_key().cert[0] != first
    })
    .await;
    let second = server_source.current().unwrap().certified_key().cert[0].clone();
    let new = dial(&c, server.addr()).await.unwrap();
    assert_eq!(echo(&new).await.unwrap(), b"a:hi");
    assert_ne!(first, second);

    // A new root: leaves reissued by it, both roots trusted; the old
    // connection lives on, new ones are made with the new leaves.
    let client_leaf = client_source.current().unwrap().certified_key().cert[0].clone();
    consul.rotate_root();
    renewed(&server_source, &mut server_renewals, |m| {
        m.certified_key().cert[0] != second && m.roots().len() == 2
    })
    .await;
    renewed(&client_source, &mut client_renewals, |m| {
        m.certified_key().cert[0] != client_leaf && m.roots().len() == 2
    })
    .await;
    let newer = dial(&c, server.addr()).await.unwrap();
    assert_eq!(echo(&newer).await.unwrap(), b"a:hi");
    assert_eq!(echo(&old).await.unwrap(), b"a:hi");
    assert_eq!(server_source.current().unwrap().roots().len(), 2);
}

#[tokio::test]
async fn an_unreachable_agent_is_a_clear_error() {
    use mesh::consul::ConsulIdentity;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let err = ConsulIdentity::start(&format!("http://{addr}"), "c")
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::Agent(_)), "{err}");
    assert!(err.to_string().contains("ca/leaf/c"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_on_the_agents_connect_ca() {
    use mesh::consul::ConsulIdentity;
    use mesh_testkit::consul_agent::TestConsul;
    let consul = TestConsul::start(1, Default::default()).await;
    let connect = || async {
        let source = ConsulIdentity::start(&consul.url(0), "chat").await.unwrap();
        Tls::new(source).transport()
    };
    let n1 = node(connect().await, "n1", &[]).await;
    let seed = n1.addr().unwrap().to_owned();
    let n2 = node(connect().await, "n2", &[&seed]).await;
    for n in [&n1, &n2] {
        let mut changes = n.membership_changes();
        soon(changes.wait_for(|m| m.len() == 2)).await.unwrap();
    }
    let mut owners = std::collections::BTreeSet::new();
    for i in 0..40 {
        let (served_by, _) = soon(
            n2.call::<Player, _>(&format!("p{i}"), Score(1))
                .into_future(),
        )
        .await
        .unwrap();
        owners.insert(served_by);
    }
    assert_eq!(owners.len(), 2, "calls crossed the Connect-secured link");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intention_deny_refuses_a_caller_until_allowed() {
    use mesh::consul::{ConsulAuthorizer, ConsulIdentity};
    use mesh_testkit::consul_agent::TestConsul;
    let consul = TestConsul::start(1, Default::default()).await;
    let db = pki::service_id(&consul.trust_domain(), "db");
    let server = listen(
        &Tls::new(ConsulIdentity::start(&consul.url(0), "db").await.unwrap())
            // Every handshake asks the agent: a changed intention applies
            // to the next connection.
            .authorize(ConsulAuthorizer::new(&consul.url(0), "db").cache_for(Duration::ZERO))
            .transport(),
    )
    .await;
    let web = Tls::new(ConsulIdentity::start(&consul.url(0), "web").await.unwrap())
        .allow([db])
        .transport();
    consul.intention("web", "db", false);
    let before = failures("denied");
    assert!(dial(&web, server.addr()).await.is_err());
    counted("denied", before).await;
    // Allowed: let in on the next connection.
    consul.intention("web", "db", true);
    let conn = dial(&web, server.addr()).await.unwrap();
    assert_eq!(echo(&conn).await.unwrap(), b"a:hi");
}

#[tokio::test]
async fn with_acls_on_the_connect_requests_carry_the_token() {
    use mesh::consul::{ConsulAuthorizer, ConsulIdentity};
    use mesh::identity::Authorize;
    use mesh_testkit::consul_agent::{Acl, TestConsul, Token};
    let consul = TestConsul::start(1, Default::default()).await;
    let mut acl = Acl::default();
    for svc in ["db", "web"] {
        acl.tokens.insert(
            format!("{svc}-token"),
            Token {
                accessor: format!("acc-{svc}"),
                write: vec![svc.into()],
            },
        );
    }
    consul.set_acl(Some(acl));
    let agent = consul.url(0);
    // Without a token the leaf (and its private key) is refused, as
    // Consul refuses it; with another service's token or an unknown one
    // too.
    for (token, want) in [
        (None, "Permission denied: anonymous token"),
        (
            Some("web-token"),
            "lacks permission 'service:write' on \"db\"",
        ),
        (Some("nope"), "ACL not found"),
    ] {
        let err = ConsulIdentity::start_with_token(&agent, "db", token)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("403"), "{err}");
        assert!(err.to_string().contains(want), "{token:?}: {err}");
    }
    // With the service's token: the leaf, and every request (roots and
    // the blocking watches too) carries it.
    let before = consul.log().len();
    let db = ConsulIdentity::start_with_token(&agent, "db", Some("db-token"))
        .await
        .unwrap();
    assert_eq!(
        db.current().unwrap().spiffe_id(),
        pki::service_id(&consul.trust_domain(), "db")
    );
    soon(consul.wait_logged(|l| l.path == "agent/connect/ca/roots" && l.query.contains("index=")))
        .await;
    let asked: Vec<_> = consul.log()[before..]
        .iter()
        .filter(|l| l.path.starts_with("agent/connect/"))
        .map(|l| (l.path.clone(), l.token.clone()))
        .collect();
    assert!(asked.iter().any(|(p, _)| p == "agent/connect/ca/roots"));
    assert!(
        asked.iter().all(|(_, t)| t.as_deref() == Some("db-token")),
        "{asked:?}"
    );
    // The authorizer: refused without the token (every caller is then
    // refused), answered by the intentions with it.
    let web = pki::service_id(&consul.trust_domain(), "web");
    consul.intention("web", "db", true);
    let anonymous = ConsulAuthorizer::new(&agent, "db").cache_for(Duration::ZERO);
    let err = anonymous.authorize(&web, "01").await.unwrap_err();
    assert!(
        err.contains("403") && err.contains("Permission denied"),
        "{err}"
    );
    let with_token = ConsulAuthorizer::new(&agent, "db")
        .token("db-token")
        .cache_for(Duration::ZERO);
    assert_eq!(with_token.authorize(&web, "01").await, Ok(()));
    consul.intention("web", "db", false);
    let err = with_token.authorize(&web, "01").await.unwrap_err();
    assert!(err.contains("authz denied"), "{err}");
    // Neither prints the token.
    assert!(!format!("{with_token:?}").contains("db-token"));
}

// ------------------------------------------------------------ open connections

/// A node hosting nothing that calls `seed`'s players; it does not listen,
/// so its only connection is the one it dials (accepted by the seed).
async fn caller(t: Transport, seed: &str) -> Node {
    Node::builder()
        .id("caller")
        .default_node(false)
        .cluster("tls")
        .cookie(mesh_testkit::COOKIE)
        .transport(t)
        .seeds([seed])
        .heartbeat(Duration::from_millis(50), Duration::from_secs(2))
        .shutdown_timeout(Duration::from_millis(300))
        .start()
        .await
        .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intention_denied_after_the_handshake_closes_the_open_connection() {
    use mesh::consul::{ConsulAuthorizer, ConsulIdentity};
    use mesh_testkit::consul_agent::TestConsul;
    recorder();
    let consul = TestConsul::start(1, Default::default()).await;
    let db = pki::service_id(&consul.trust_domain(), "db");
    let server = node(
        Tls::new(ConsulIdentity::start(&consul.url(0), "db").await.unwrap())
            .authorize(ConsulAuthorizer::new(&consul.url(0), "db").cache_for(Duration::ZERO))
            .reauthorize_every(Duration::from_millis(100))
            .transport(),
        "db",
        &[],
    )
    .await;
    let seed = server.addr().unwrap().to_owned();
    let web = caller(
        Tls::new(ConsulIdentity::start(&consul.url(0), "web").await.unwrap())
            .allow([db])
            .transport(),
        &seed,
    )
    .await;
    let mut changes = web.membership_changes();
    soon(changes.wait_for(|m| m.len() == 2)).await.unwrap();
    let (served_by, _) = soon(web.call::<Player, _>("p1", Score(1)).into_future())
        .await
        .unwrap();
    assert_eq!(served_by, "db");

    // Denied after the handshake: the open connection is closed by the
    // next re-authorization (the handshake alone would never see it).
    let closed = count(CLOSED_DENIED);
    let refused = failures("denied");
    consul.intention("web", "db", false);
    reaches(CLOSED_DENIED, closed + 1).await;
    soon(changes.wait_for(|m| m.len() == 1)).await.unwrap();
    // The redial is refused at its handshake, so calls find nobody.
    counted("denied", refused).await;
    assert!(matches!(
        web.call::<Player, _>("p1", Score(1)).await,
        Err(Error::NoNodeForCapability { .. })
    ));

    // Allowed again: the caller gets back in on a redial.
    consul.intention("web", "db", true);
    soon(changes.wait_for(|m| m.len() == 2)).await.unwrap();
    let (_, score) = soon(web.call::<Player, _>("p1", Score(1)).into_future())
        .await
        .unwrap();
    assert!(score >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_replaced_at_their_maximum_lifetime_without_a_failed_call() {
    recorder();
    let ca = Ca::new(TD);
    let tls = |name: &str| {
        Tls::new(identity(name, &ca.leaf(&cluster_id()), &ca.pem).1)
            .max_connection_lifetime(Some(Duration::from_millis(150)))
            .transport()
    };
    let server = node(tls("server"), "server", &[]).await;
    let seed = server.addr().unwrap().to_owned();
    let client = caller(tls("client"), &seed).await;
    let mut changes = client.membership_changes();
    soon(changes.wait_for(|m| m.len() == 2)).await.unwrap();

    // A steady stream of calls, 16 in flight, while connections retire.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut streams = tokio::task::JoinSet::new();
    for lane in 0..16 {
        let (client, stop) = (client.clone(), stop.clone());
        streams.spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("p{}", (lane * 1000 + i) % 64);
                match client.call::<Player, _>(&id, Score(1)).await {
                    Ok((by, _)) if by == "server" => ok += 1,
                    Ok((by, _)) => failed.push(format!("served by {by}")),
                    Err(e) => failed.push(e.to_string()),
                }
                i += 1;
            }
            (ok, failed)
        });
    }
    let before = count(CLOSED_MAX_LIFETIME);
    reaches(CLOSED_MAX_LIFETIME, before + 4).await;
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(r) = streams.join_next().await {
        let (o, f) = r.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 0);
    // Still one member, reached over a fresh connection.
    assert_eq!(client.membership().len(), 2);
}
