//! Mutual TLS between nodes, in process: a connector and acceptor over TCP
//! that both present a certificate and check the other's, with SPIFFE
//! identities from an [`IdentitySource`].
//!
//! What a handshake checks, on both sides:
//! 1. the peer's chain leads to a root of the current trust bundle, the
//!    leaf is within its validity period and allowed for the role (client
//!    or server authentication);
//! 2. the peer's SPIFFE ID (its first `spiffe://` URI SAN): **every node of
//!    a cluster presents the cluster's one service identity**, e.g.
//!    `spiffe://<td>/ns/default/dc/<dc>/svc/<service>`, so a peer must
//!    present the same ID as this node's own leaf, or one of the IDs given
//!    to [`Tls::allow`] (compared ignoring ASCII case, as Consul does).
//!    Node ids are not in certificates: which node answers is still told
//!    by the cookie handshake, which runs inside TLS.
//!
//! The verified ID reaches the connection's `Peer`
//! as `identity`.
//!
//! Contracts:
//! - TLS 1.3 and 1.2 on [`crypto_provider`] (the process's installed
//!   rustls provider, else aws-lc-rs or ring by mesh's features), client
//!   certificates required, no ALPN, no client session resumption (it
//!   would hide a rotation: a resumed session skips the certificate
//!   exchange).
//! - Key exchange: the provider's preference. With aws-lc-rs (the default
//!   feature) two mesh nodes negotiate the post-quantum hybrid
//!   `X25519MLKEM768` (X25519 combined with ML-KEM-768), so traffic
//!   recorded today cannot be decrypted later by a quantum computer that
//!   breaks X25519 alone; ring offers no post-quantum group (rustls
//!   0.23.48's ring provider prefers `secp384r1`, then `X25519`).
//!   Every completed handshake is counted in
//!   `mesh_tls_handshakes_total{group}` (`X25519MLKEM768`, `X25519`,
//!   `secp256r1`, ..., `other`), on both sides, so an operator can see
//!   what the cluster negotiates.
//! - The identity source is asked on every handshake; a new leaf or new
//!   roots apply to the next handshake, established connections live on.
//! - A refused handshake is logged with its cause and counted in
//!   `mesh_tls_handshake_failures_total{reason}`, `reason` one of
//!   `expired`, `unknown_ca`, `wrong_identity`, `no_certificate`,
//!   `bad_certificate`, `not_tls`, `peer_refused`, `identity_source`,
//!   `denied` (an [`Authorize`] refusal), `io`, `other`. With TLS 1.3 a client whose certificate the server
//!   refuses learns it on its first read, as `peer_refused`.
//! - A peer that does not speak TLS is told from its first bytes
//!   (`wire::Opening`) and refused as `not_tls`, saying
//!   what it is and how to fix it: the acceptor reads them before rustls
//!   does; to a plain mesh node (the frame magic) it answers an `Error`
//!   frame saying that the listener uses TLS and the dialer plain TCP, to
//!   an HTTP client a `400 Bad Request` saying this is a mesh cluster
//!   port. The connector recognises a plain mesh node's answer (the frame
//!   magic), an HTTP server's or an SSH server's.
//!
//! Open connections (those this node accepted; enforced by the node, see
//! [`super::Lifetime`]):
//! - with an [`Authorize`], the caller is asked about again every
//!   [`Tls::reauthorize_every`] (default [`DEFAULT_REAUTHORIZE_EVERY`], 1
//!   minute, as Consul recommends), so an intention changed after the
//!   handshake applies to open connections too: a refusal closes the
//!   connection at once (calls in flight on it fail with `NodeDown`), is
//!   logged and counted in `mesh_connections_closed_total{reason="denied"}`,
//!   and the caller's redial is refused at its handshake;
//! - every connection is retired at [`Tls::max_connection_lifetime`]
//!   (default [`DEFAULT_MAX_CONNECTION_LIFETIME`], 1 hour): the caller
//!   moves to a fresh connection (a new handshake: the current leaf,
//!   roots and rules), no call fails, and it is counted in
//!   `mesh_connections_closed_total{reason="max_lifetime"}`.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::handshake::{self as hs, ForeignPeer, Side, SAME_TRANSPORT};
use super::tcp::Tcp;
use super::{
    Acceptor, BoxFuture, BoxStream, ConnFacts, Connector, DialTarget, Lifetime, Listener, Recheck,
};
pub use crate::identity::crypto_provider;
use crate::identity::{self, Authorize, IdentitySource, Material};
use crate::wire::Opening;
use crate::Transport;

/// Counter: refused TLS handshakes, by `reason`.
pub const HANDSHAKE_FAILURES_TOTAL: &str = "mesh_tls_handshake_failures_total";

/// Counter: completed TLS handshakes (either side), by the negotiated key
/// exchange `group` (`X25519MLKEM768` is post-quantum).
pub const HANDSHAKES_TOTAL: &str = "mesh_tls_handshakes_total";

/// The `group` label of a negotiated key exchange: a static name.
fn group_label(group: Option<rustls::NamedGroup>) -> &'static str {
    use rustls::NamedGroup as G;
    match group {
        Some(G::X25519MLKEM768) => "X25519MLKEM768",
        Some(G::secp256r1MLKEM768) => "secp256r1MLKEM768",
        Some(G::MLKEM768) => "MLKEM768",
        Some(G::MLKEM1024) => "MLKEM1024",
        Some(G::X25519) => "X25519",
        Some(G::secp256r1) => "secp256r1",
        Some(G::secp384r1) => "secp384r1",
        Some(G::secp521r1) => "secp521r1",
        Some(_) => "other",
        None => "none",
    }
}

/// Counts (and logs at debug) a completed handshake by its key exchange.
fn completed(state: &rustls::CommonState, what: &dyn std::fmt::Display) {
    let group = group_label(state.negotiated_key_exchange_group().map(|g| g.name()));
    tracing::debug!(group, "TLS handshake {what} completed");
    metrics::counter!(HANDSHAKES_TOTAL, "group" => group).increment(1);
}

/// How often an accepted caller is authorized again, unless configured.
pub const DEFAULT_REAUTHORIZE_EVERY: Duration = Duration::from_secs(60);

/// How long an accepted connection lives before it is replaced, unless
/// configured.
pub const DEFAULT_MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(3600);

/// The mTLS connector and acceptor. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    source: Arc<dyn IdentitySource>,
    allow: Vec<String>,
    authorize: Option<Arc<dyn Authorize>>,
    reauthorize_every: Duration,
    max_lifetime: Option<Duration>,
    tcp: Tcp,
    provider: Arc<CryptoProvider>,
    built: Mutex<Option<Built>>,
}

/// Configurations built for one set of material.
#[derive(Clone)]
struct Built {
    material: Arc<Material>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("allow", &self.inner.allow)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// mTLS over plain TCP with identities from `source`.
    pub fn new(source: impl IdentitySource) -> Self {
        Tls::with_tcp(Arc::new(source), Tcp::default())
    }

    /// mTLS over `tcp` (e.g. [`Tcp::from`]) with identities from `source`.
    pub fn with_tcp(source: Arc<dyn IdentitySource>, tcp: Tcp) -> Self {
        Tls {
            inner: Arc::new(Inner {
                source,
                allow: Vec::new(),
                authorize: None,
                reauthorize_every: DEFAULT_REAUTHORIZE_EVERY,
                max_lifetime: Some(DEFAULT_MAX_CONNECTION_LIFETIME),
                tcp,
                provider: crypto_provider(),
                built: Mutex::new(None),
            }),
        }
    }

    /// Also accepts peers presenting one of `ids` (SPIFFE IDs), besides
    /// this node's own. Call before the transport is used.
    pub fn allow<I: Into<String>>(self, ids: impl IntoIterator<Item = I>) -> Self {
        self.change(|inner| inner.allow.extend(ids.into_iter().map(Into::into)))
    }

    /// Inbound callers are authorized by `authorizer` (Consul's
    /// intentions, say) instead of by their SPIFFE ID: any caller whose
    /// chain leads to the trust bundle completes the TLS handshake, then
    /// is asked about, before the cookie handshake. Outbound, the server's
    /// ID is still checked against this node's own and [`Tls::allow`].
    pub fn authorize(self, authorizer: impl Authorize) -> Self {
        self.change(|inner| inner.authorize = Some(Arc::new(authorizer)))
    }

    /// How often a caller accepted with an [`Authorize`] is asked about
    /// again while its connection is open (default
    /// [`DEFAULT_REAUTHORIZE_EVERY`]); a refusal closes it. Call before
    /// the transport is used.
    pub fn reauthorize_every(self, every: Duration) -> Self {
        self.change(|inner| inner.reauthorize_every = every.max(Duration::from_millis(1)))
    }

    /// How long an accepted connection lives before the node replaces it
    /// without failing a call (default
    /// [`DEFAULT_MAX_CONNECTION_LIFETIME`]); `None`: for ever. Call
    /// before the transport is used.
    pub fn max_connection_lifetime(self, lifetime: Option<Duration>) -> Self {
        self.change(|inner| inner.max_lifetime = lifetime)
    }

    fn change(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            source: shared.source.clone(),
            allow: shared.allow.clone(),
            authorize: shared.authorize.clone(),
            reauthorize_every: shared.reauthorize_every,
            max_lifetime: shared.max_lifetime,
            tcp: shared.tcp,
            provider: shared.provider.clone(),
            built: Mutex::new(None),
        });
        *inner.built.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
        f(&mut inner);
        Tls {
            inner: Arc::new(inner),
        }
    }

    /// This connector and acceptor as a node [`Transport`].
    pub fn transport(self) -> Transport {
        Transport::custom("tls", Arc::new(self.clone()), Arc::new(self))
    }
}

impl Inner {
    /// The configurations for the current material, rebuilt on a change.
    fn configs(&self) -> io::Result<Built> {
        let material = self.source.current().map_err(|e| {
            refused("identity_source", "no identity for the handshake", &e);
            io::Error::other(format!("no TLS identity: {e}"))
        })?;
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = &*built {
            if Arc::ptr_eq(&b.material, &material) {
                return Ok(b.clone());
            }
        }
        let b = self.build(material).map_err(|e| {
            refused("identity_source", "cannot build TLS configuration", &e);
            io::Error::other(format!("cannot build TLS configuration: {e}"))
        })?;
        *built = Some(b.clone());
        Ok(b)
    }

    fn build(&self, material: Arc<Material>) -> Result<Built, rustls::Error> {
        let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
        let mut expected = vec![material.spiffe_id().to_owned()];
        expected.extend(self.allow.iter().cloned());
        let expected: Arc<[String]> = expected.into();
        let key = Arc::new(Fixed(material.certified_key().clone()));

        let chain_check = WebPkiClientVerifier::builder_with_provider(
            material.roots().clone(),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&versions)?
            .with_client_cert_verifier(Arc::new(ClientCheck {
                chain: chain_check,
                // With an authorizer, who may call is its decision.
                expected: self.authorize.is_none().then(|| expected.clone()),
            }))
            .with_cert_resolver(key.clone());

        let mut client = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&versions)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerCheck {
                material: material.clone(),
                provider: self.provider.clone(),
                expected,
            }))
            .with_client_cert_resolver(key);
        client.resumption = rustls::client::Resumption::disabled();
        Ok(Built {
            material,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

impl Connector for Tls {
    fn connect<'a>(
        &'a self,
        local: &'a str,
        target: &'a DialTarget,
    ) -> BoxFuture<'a, io::Result<(BoxStream, ConnFacts)>> {
        Box::pin(async move {
            let built = self.inner.configs()?;
            let (tcp, facts) = self.inner.tcp.connect(local, target).await?;
            let connector = tokio_rustls::TlsConnector::from(built.client);
            let what = format!("TLS handshake with {target}");
            let tls = match connector
                .connect(server_name(&target.addr), Recording::new(tcp))
                .into_fallible()
                .await
            {
                Ok(tls) => tls,
                Err((e, io)) => {
                    return Err(not_tls_answer(&io.first, &what).unwrap_or_else(|| failed(e, &what)))
                }
            };
            completed(tls.get_ref().1, &format_args!("with {target}"));
            let identity = peer_id(tls.get_ref().1.peer_certificates());
            let facts = match identity {
                Some(id) => facts.with_identity(id),
                None => facts,
            };
            Ok((Box::new(tls) as BoxStream, facts))
        })
    }
}

impl Acceptor for Tls {
    fn bind<'a>(
        &'a self,
        addr: &'a str,
        local: &'a str,
    ) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            // Fail at bind, not at the first handshake, without an identity.
            self.inner.configs()?;
            self.inner.tcp.bind(addr, local).await
        })
    }

    fn secure(
        &self,
        stream: BoxStream,
        facts: ConnFacts,
    ) -> BoxFuture<'static, io::Result<(BoxStream, ConnFacts)>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let built = inner.configs()?;
            let what = format!("TLS handshake from {}", facts.remote);
            // Tell a peer of another protocol before rustls reads it.
            let mut stream = stream;
            let mut first = BytesMut::with_capacity(4096);
            let opening = loop {
                if let Some(opening) = Opening::sniff(&first) {
                    break Some(opening);
                }
                match stream.read_buf(&mut first).await {
                    Ok(0) => break None,
                    Ok(_) => {}
                    Err(e) => return Err(failed(e, &what)),
                }
            };
            match opening {
                None | Some(Opening::Tls | Opening::TlsAlert) => {}
                Some(opening) => return Err(not_tls_opening(stream, opening, &what).await),
            }
            let stream = Prefixed {
                first: first.freeze(),
                inner: stream,
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(built.server);
            let tls = acceptor
                .accept(stream)
                .await
                .map_err(|e| failed(e, &what))?;
            completed(tls.get_ref().1, &format_args!("from {}", facts.remote));
            let identity = peer_id(tls.get_ref().1.peer_certificates());
            let serial = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(serial_of)
                .unwrap_or_default();
            if let Some(authorizer) = &inner.authorize {
                let id = identity.clone().unwrap_or_default();
                if let Err(why) = authorizer.authorize(&id, &serial).await {
                    let what = format!("caller {id} from {}", facts.remote);
                    refused("denied", &what, &why);
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("{what} refused (denied): {why}"),
                    ));
                }
            }
            let mut facts = match identity.clone() {
                Some(id) => facts.with_identity(id),
                None => facts,
            };
            facts.lifetime = Some(Lifetime {
                max_age: inner.max_lifetime,
                recheck: inner.authorize.clone().map(|authorizer| {
                    let check: Arc<dyn Recheck> = Arc::new(Reauthorize {
                        authorizer,
                        id: identity.unwrap_or_default(),
                        serial,
                    });
                    (inner.reauthorize_every, check)
                }),
            });
            Ok((Box::new(tls) as BoxStream, facts))
        })
    }
}

/// Asks the [`Authorize`] about an accepted caller again.
struct Reauthorize {
    authorizer: Arc<dyn Authorize>,
    id: String,
    serial: String,
}

impl Recheck for Reauthorize {
    fn recheck(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.authorizer
                .authorize(&self.id, &self.serial)
                .await
                .map_err(|why| format!("caller {} refused (denied): {why}", self.id))
        })
    }
}

/// A certificate's serial as Consul writes it: lowercase colon-hex,
/// without the DER sign byte (`"08"`, `"04:00:1f"`).
fn serial_of(cert: &CertificateDer<'_>) -> String {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return String::new();
    };
    let mut bytes = ee.serial();
    while bytes.len() > 1 && bytes[0] == 0 {
        bytes = &bytes[1..];
    }
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Serves the same certificate on both sides.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The peer presented a SPIFFE ID this node does not accept.
#[derive(Debug, thiserror::Error)]
#[error("peer presents {found}, expected {}", expected.join(" or "))]
struct WrongIdentity {
    found: String,
    expected: Arc<[String]>,
}

fn check_id(cert: &CertificateDer<'_>, expected: &Arc<[String]>) -> Result<(), rustls::Error> {
    let found = identity::spiffe_id(cert).unwrap_or_else(|e| format!("no SPIFFE ID ({e})"));
    if expected.iter().any(|e| e.eq_ignore_ascii_case(&found)) {
        return Ok(());
    }
    Err(rustls::Error::InvalidCertificate(CertificateError::Other(
        OtherError(Arc::new(WrongIdentity {
            found,
            expected: expected.clone(),
        })),
    )))
}

/// Server side: the client's chain (webpki, client-auth usage), then its
/// SPIFFE ID.
#[derive(Debug)]
struct ClientCheck {
    chain: Arc<dyn ClientCertVerifier>,
    expected: Option<Arc<[String]>>,
}

impl ClientCertVerifier for ClientCheck {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        match &self.expected {
            Some(expected) => check_id(end_entity, expected)?,
            None => {
                identity::spiffe_id(end_entity).map_err(|e| {
                    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                        Arc::new(io::Error::other(e)),
                    )))
                })?;
            }
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Client side: the server's chain against the roots (no name check:
/// Connect leaves carry no DNS name), then its SPIFFE ID.
#[derive(Debug)]
struct ServerCheck {
    material: Arc<Material>,
    provider: Arc<CryptoProvider>,
    expected: Arc<[String]>,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            self.material.roots(),
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        check_id(end_entity, &self.expected)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The name to present: the IP when dialing one (no SNI is sent), else
/// the host. Names are not checked (see [`ServerCheck`]).
fn server_name(addr: &str) -> ServerName<'static> {
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return ServerName::IpAddress(sa.ip().into());
    }
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    ServerName::try_from(host.to_owned())
        .unwrap_or_else(|_| ServerName::try_from("mesh.invalid").expect("a valid name"))
}

fn peer_id(certs: Option<&[CertificateDer<'static>]>) -> Option<String> {
    certs
        .and_then(|c| c.first())
        .and_then(|c| identity::spiffe_id(c).ok())
}

/// Refuses an accepted stream whose peer opened with `opening`, not a
/// TLS record: tells it what it understands (a plain mesh node an `Error`
/// frame, an HTTP client a `400 Bad Request`), counts it as `not_tls`, and
/// returns the error for the listener to log (rate-limited).
async fn not_tls_opening(mut stream: BoxStream, opening: Opening, what: &str) -> io::Error {
    let reason = match opening {
        Opening::Mesh => {
            hs::tell(
                &mut stream,
                &format!("the listener uses TLS and the dialer plain TCP: {SAME_TRANSPORT}"),
            )
            .await;
            "the peer speaks plain mesh TCP: configure TLS on every node (`.transport(Tls::...)`)"
                .to_owned()
        }
        Opening::HttpRequest => {
            hs::answer_http(&mut stream, hs::HTTP_ANSWER).await;
            hs::explain(opening, Side::Listener)
        }
        other => hs::explain(other, Side::Listener),
    };
    let _ = stream.shutdown().await;
    hs::linger(&mut stream).await;
    metrics::counter!(HANDSHAKE_FAILURES_TOTAL, "reason" => "not_tls").increment(1);
    io::Error::new(
        io::ErrorKind::InvalidData,
        ForeignPeer(format!("{what} refused (not_tls): {reason}")),
    )
}

/// When a TLS handshake this node dialed failed: if the server's first
/// bytes, `first`, are not TLS, the error saying what they are and how to
/// fix it (logged and counted as `not_tls`).
fn not_tls_answer(first: &[u8], what: &str) -> Option<io::Error> {
    let reason = match Opening::sniff(first)? {
        Opening::Tls | Opening::TlsAlert => return None,
        Opening::Mesh => {
            format!("the peer speaks plain mesh TCP, this node TLS: {SAME_TRANSPORT}")
        }
        other => hs::explain(other, Side::Dialer),
    };
    refused("not_tls", what, &reason);
    Some(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} refused (not_tls): {reason}"),
    ))
}

/// A stream that reads `first` before what `inner` has: the bytes the
/// acceptor read to tell the protocol, handed back to rustls.
struct Prefixed<S> {
    first: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.first.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = buf.remaining().min(self.first.len());
        buf.put_slice(&self.first[..n]);
        self.first.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Writes go straight to `inner`: the wrappers below change only what is
/// read.
macro_rules! write_through {
    ($t:ident) => {
        impl<S: AsyncWrite + Unpin> AsyncWrite for $t<S> {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}

write_through!(Prefixed);

/// A stream that keeps a copy of the first [`crate::wire::OPENING_MAX`]
/// bytes read from `inner`: what a server answered, should the TLS
/// handshake fail.
struct Recording<S> {
    first: Vec<u8>,
    inner: S,
}

impl<S> Recording<S> {
    fn new(inner: S) -> Self {
        Recording {
            first: Vec::with_capacity(crate::wire::OPENING_MAX),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recording<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let room = crate::wire::OPENING_MAX - this.first.len();
        if room > 0 {
            let new = &buf.filled()[before..];
            this.first.extend_from_slice(&new[..new.len().min(room)]);
        }
        polled
    }
}

write_through!(Recording);

/// Logs and counts a refused handshake; returns the error to hand on.
fn failed(e: io::Error, what: &str) -> io::Error {
    let reason = reason(&e);
    refused(reason, what, &e);
    io::Error::new(e.kind(), format!("{what} refused ({reason}): {e}"))
}

fn refused(reason: &'static str, what: &str, e: &dyn std::fmt::Display) {
    tracing::warn!(reason, "{what} refused: {e}");
    metrics::counter!(HANDSHAKE_FAILURES_TOTAL, "reason" => reason).increment(1);
}

/// The `reason` label of a failed handshake.
fn reason(e: &io::Error) -> &'static str {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return "io";
    };
    use rustls::Error as E;
    match tls {
        E::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            // A chain of a foreign CA whose name matches a trusted root's
            // fails on the signature instead.
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
            CertificateError::Other(OtherError(o)) if o.is::<WrongIdentity>() => "wrong_identity",
            _ => "bad_certificate",
        },
        E::NoCertificatesPresented => "no_certificate",
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => "not_tls",
        E::AlertReceived(_) => "peer_refused",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use rustls::NamedGroup;

    #[test]
    fn group_labels_are_static_names() {
        assert_eq!(
            super::group_label(Some(NamedGroup::X25519MLKEM768)),
            "X25519MLKEM768"
        );
        assert_eq!(super::group_label(Some(NamedGroup::X25519)), "X25519");
        assert_eq!(super::group_label(Some(NamedGroup::FFDHE2048)), "other");
        assert_eq!(super::group_label(None), "none");
    }
}
