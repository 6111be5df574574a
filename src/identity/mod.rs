//! Where a node's mesh identity comes from: its certificate chain, its
//! private key and the trust bundle it checks peers against, behind one
//! small trait, [`IdentitySource`], that the TLS transport
//! ([`crate::transport::tls`]) asks once per handshake.
//!
//! Sources here: [`FileIdentity`] (PEM files, reloaded when they change on
//! disk, as SPIRE's spiffe-helper, cert-manager or a Vault agent write
//! them); the Consul adapter adds `mesh::consul::ConsulIdentity` (the
//! Consul agent's `ca/leaf` and `ca/roots` endpoints, followed by blocking
//! queries; feature `consul`). Consul marks those agent endpoints
//! deprecated since 1.16, so files are the durable path.
//!
//! [`Authorize`] is the other question the TLS transport asks (may this
//! verified caller use the node?), and [`crypto_provider`] the rustls
//! provider every TLS piece of mesh uses. This module is vendor-neutral
//! and sits below the transport: nothing here names a transport or an
//! adapter.
//!
//! Contracts:
//! - [`IdentitySource::current`] is cheap when nothing changed (the files
//!   source compares file metadata) and returns the same `Arc` until the
//!   material changes, so the TLS transport rebuilds its configurations
//!   only on a rotation.
//! - A rotation applies to the next handshake; established connections
//!   live on with the material they were made with.
//! - [`Material`] is checked when it is built: the key matches the leaf,
//!   the leaf carries a `spiffe://` URI SAN, the bundle holds at least one
//!   usable root. Bad material is refused with an [`IdentityError`], never
//!   half-applied.

mod files;
mod provider;

pub use files::{FileIdentity, IDENTITY_RELOAD_FAILURES_TOTAL};
pub use provider::crypto_provider;

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use crate::util::BoxFuture;

/// Gives the identity material for new handshakes.
pub trait IdentitySource: Send + Sync + 'static {
    /// The material to use for a handshake starting now. A source that
    /// watches something (files, an agent) picks up changes here or on its
    /// own schedule; it returns the same `Arc` while nothing changed.
    fn current(&self) -> Result<Arc<Material>, IdentityError>;
}

/// Decides whether an inbound caller, by its verified SPIFFE ID and its
/// certificate's serial, may use this node. Runs after the TLS handshake
/// and before the cookie handshake, inside the handshake timeout.
pub trait Authorize: Send + Sync + 'static {
    /// `Ok` lets the caller in; `Err` carries the reason it is refused.
    fn authorize<'a>(
        &'a self,
        spiffe_id: &'a str,
        serial: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// Why identity material was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// PEM text did not hold what it should.
    #[error("malformed {what}: {reason}")]
    Pem {
        /// `certificate chain`, `private key` or `trust bundle`.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The private key is not the leaf certificate's.
    #[error("the private key does not match the leaf certificate: {0}")]
    KeyMismatch(String),
    /// The leaf carries no `spiffe://` URI SAN (or does not parse).
    #[error("the leaf certificate has no SPIFFE ID: {0}")]
    NoSpiffeId(String),
    /// The Consul agent could not be asked, or answered an error.
    #[error("Consul agent: {0}")]
    Agent(String),
}

/// One consistent set of identity material: a leaf (with its chain) and
/// its key, the leaf's SPIFFE ID, and the roots peers are checked against.
pub struct Material {
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    spiffe_id: String,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("spiffe_id", &self.spiffe_id)
            .field("chain", &self.key.cert.len())
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl Material {
    /// Builds material from PEM text: the certificate chain (leaf first),
    /// the private key (PKCS#8, SEC1 `EC PRIVATE KEY` or PKCS#1) and the
    /// trust bundle (one or more CA certificates).
    pub fn from_pem(chain: &[u8], key: &[u8], bundle: &[u8]) -> Result<Self, IdentityError> {
        let chain = certs(chain, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| IdentityError::Pem {
            what: "private key",
            reason: e.to_string(),
        })?;
        let roots = certs(bundle, "trust bundle")?;
        Material::from_der(chain, key, roots)
    }

    /// Builds material from DER: the chain (leaf first), its key, the roots.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, IdentityError> {
        let leaf = chain.first().ok_or_else(|| IdentityError::Pem {
            what: "certificate chain",
            reason: "no certificate".into(),
        })?;
        let spiffe_id = spiffe_id(leaf).map_err(IdentityError::NoSpiffeId)?;
        let key = CertifiedKey::from_der(chain, key, &crypto_provider())
            .map_err(|e| IdentityError::KeyMismatch(e.to_string()))?;
        let mut store = RootCertStore::empty();
        let (_, ignored) = store.add_parsable_certificates(roots);
        if store.is_empty() {
            return Err(IdentityError::Pem {
                what: "trust bundle",
                reason: format!("no usable CA certificate ({ignored} refused)"),
            });
        }
        Ok(Material {
            key: Arc::new(key),
            roots: Arc::new(store),
            spiffe_id,
        })
    }

    /// The leaf's SPIFFE ID (its first `spiffe://` URI SAN).
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// The leaf, its chain and its signing key.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }

    /// The roots peers' chains must lead to.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }
}

fn certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Pem {
            what,
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The first `spiffe://` URI SAN of a certificate (the scheme in any
/// case). A URI SAN is only known to be UTF-8, not ASCII: it is compared
/// as bytes, never sliced as a `str`.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Result<String, String> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unparsable: {e}"))?;
    let id = ee
        .valid_uri_names()
        .find(|u| is_spiffe(u))
        .ok_or_else(|| "no spiffe:// URI SAN".to_owned())?;
    Ok(id.to_owned())
}

/// Whether `uri` is a `spiffe://` URI with something after the scheme.
fn is_spiffe(uri: &str) -> bool {
    const SCHEME: &[u8] = b"spiffe://";
    let uri = uri.as_bytes();
    uri.len() > SCHEME.len() && uri[..SCHEME.len()].eq_ignore_ascii_case(SCHEME)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate with `uri` as its URI SAN.
    fn cert_with_uri(uri: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_non_ascii_uri_san_is_no_spiffe_id_and_no_panic() {
        let good = cert_with_uri("spiffe://c.consul/ns/default/dc/dc1/svc/web");
        assert_eq!(
            spiffe_id(&CertificateDer::from(good)).unwrap(),
            "spiffe://c.consul/ns/default/dc/dc1/svc/web"
        );
        let upper = cert_with_uri("SPIFFE://x");
        assert_eq!(
            spiffe_id(&CertificateDer::from(upper)).unwrap(),
            "SPIFFE://x"
        );
        // A CA may sign a URI SAN that is UTF-8 but not ASCII (rcgen will
        // not write one: patched in, same length, so the DER stays
        // well-formed; the signature does not matter here). "é" straddles
        // byte 9, where the scheme check used to slice the `str`.
        let mut der = cert_with_uri("spiffe:/XYrest-of-it");
        let at = der
            .windows(4)
            .position(|w| w == b"/XYr")
            .expect("the URI in the DER");
        der[at + 1..at + 3].copy_from_slice("\u{e9}".as_bytes());
        let err = spiffe_id(&CertificateDer::from(der)).unwrap_err();
        assert_eq!(err, "no spiffe:// URI SAN");
        assert!(!is_spiffe("spiffe://"));
        assert!(!is_spiffe("spiffe:/\u{e9}x"));
        assert!(is_spiffe("Spiffe://a"));
    }
}
