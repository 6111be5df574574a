//! TLS to the Consul agent (`https://` addresses): [`AgentTls`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// How to reach an `https://` agent. [`AgentTls::from_env`] reads the
/// `consul` CLI's variables, as the CLI reads them; the setters override
/// them.
///
/// | variable | meaning |
/// |---|---|
/// | `CONSUL_HTTP_ADDR` | `https://host:port` selects TLS |
/// | `CONSUL_HTTP_SSL` | `true`: an address without a scheme is `https` |
/// | `CONSUL_CACERT` | PEM file of the CA(s) that sign the agent's certificate |
/// | `CONSUL_CAPATH` | a directory of PEM files, each read as CA certificates |
/// | `CONSUL_CLIENT_CERT` | PEM certificate (chain) presented to the agent (`verify_incoming`) |
/// | `CONSUL_CLIENT_KEY` | its PEM private key |
/// | `CONSUL_TLS_SERVER_NAME` | the name the agent's certificate is checked for, instead of the address's host |
/// | `CONSUL_HTTP_SSL_VERIFY` | `false`: the agent's certificate is not checked (tests only; logged as a warning) |
///
/// The two flags are read as Go's `strconv.ParseBool` reads them (`1`,
/// `t`, `true`, `0`, `f`, `false`, any case; `yes`/`no` and `on`/`off`
/// too): any other value is an error when a client is built, never a
/// silent `false` (a typo such as `CONSUL_HTTP_SSL_VERIFY=ture` must not
/// turn the check off).
///
/// Without `CONSUL_CACERT` or `CONSUL_CAPATH`, the system bundle is used
/// (`SSL_CERT_FILE`, else `/etc/ssl/certs/ca-certificates.crt`).
/// rustls on mesh's crypto provider (the same as the node's own mTLS,
/// [`crypto_provider`](crate::identity::crypto_provider)), TLS 1.3
/// and 1.2. A file that cannot be read or parsed is a clear error at
/// start; a certificate the agent does not pass fails each request with
/// rustls's reason (an unknown issuer, a name mismatch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentTls {
    ca_file: Option<PathBuf>,
    ca_path: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    server_name: Option<String>,
    skip_verify: bool,
    /// `CONSUL_HTTP_SSL=true`.
    pub(crate) https_default: bool,
    /// A variable that did not parse: every client build fails with it.
    invalid: Option<String>,
}

impl AgentTls {
    /// Nothing set: the system bundle, no client certificate.
    pub fn new() -> Self {
        AgentTls::default()
    }

    /// The settings of the `consul` CLI's environment variables.
    pub fn from_env() -> Self {
        AgentTls::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`AgentTls::from_env`] over any lookup (empty values count as unset).
    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let mut invalid = None;
        let mut flag = |k: &str| match get(k).map(|v| (parse_bool(&v), v)) {
            None => None,
            Some((Some(b), _)) => Some(b),
            Some((None, v)) => {
                invalid.get_or_insert_with(|| {
                    format!("{k}={v:?} is not a boolean (true/false, 1/0, t/f, yes/no, on/off)")
                });
                None
            }
        };
        let skip_verify = flag("CONSUL_HTTP_SSL_VERIFY") == Some(false);
        let https_default = flag("CONSUL_HTTP_SSL") == Some(true);
        AgentTls {
            ca_file: get("CONSUL_CACERT").map(PathBuf::from),
            ca_path: get("CONSUL_CAPATH").map(PathBuf::from),
            client_cert: get("CONSUL_CLIENT_CERT").map(PathBuf::from),
            client_key: get("CONSUL_CLIENT_KEY").map(PathBuf::from),
            server_name: get("CONSUL_TLS_SERVER_NAME"),
            skip_verify,
            https_default,
            invalid,
        }
    }

    /// The CA file that signs the agent's certificate (`CONSUL_CACERT`).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// A directory of CA files (`CONSUL_CAPATH`).
    pub fn ca_path(mut self, dir: impl Into<PathBuf>) -> Self {
        self.ca_path = Some(dir.into());
        self
    }

    /// The client certificate and key presented to the agent
    /// (`CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`).
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    /// The name to check the agent's certificate for
    /// (`CONSUL_TLS_SERVER_NAME`).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The rustls client configuration (mesh's crypto provider).
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        if let Some(e) = &self.invalid {
            return Err(e.clone());
        }
        if self.skip_verify {
            tracing::warn!(
                "CONSUL_HTTP_SSL_VERIFY=false: the Consul agent's certificate is not checked; anyone on the path can read the ACL token"
            );
        }
        let provider = crate::identity::crypto_provider();
        let mut roots = RootCertStore::empty();
        let mut sources: Vec<PathBuf> = self.ca_file.iter().cloned().collect();
        if let Some(dir) = &self.ca_path {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| format!("CONSUL_CAPATH {}: {e}", dir.display()))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            sources.extend(files);
        }
        if sources.is_empty() && !self.skip_verify {
            let system = std::env::var("SSL_CERT_FILE")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".to_owned());
            sources.push(PathBuf::from(system));
        }
        for path in &sources {
            for cert in certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("CA certificate in {}: {e}", path.display()))?;
            }
        }
        if roots.is_empty() && !self.skip_verify {
            return Err("no CA certificate to check the Consul agent with (CONSUL_CACERT)".into());
        }
        let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| e.to_string())?;
        let verifier: Arc<dyn ServerCertVerifier> = if self.skip_verify {
            Arc::new(NoCheck(provider.clone()))
        } else {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("CA certificates: {e}"))?;
            match &self.server_name {
                Some(name) => Arc::new(Named {
                    inner: webpki,
                    name: ServerName::try_from(name.clone())
                        .map_err(|e| format!("CONSUL_TLS_SERVER_NAME {name:?}: {e}"))?,
                }),
                None => webpki,
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = certs(cert)?;
                let key = private_key(key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("CONSUL_CLIENT_CERT / CONSUL_CLIENT_KEY: {e}"))
            }
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err("CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY go together".into()),
        }
    }
}

/// Go's `strconv.ParseBool` (any case), plus yes/no and on/off; `None`
/// for anything else.
fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" | "on" => Some(true),
        "0" | "f" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{}: no PEM private key: {e}", path.display()))
}

/// The HTTP client for the agent at `base`: with TLS when it is
/// `https://`, else plain. It never follows a redirect (reqwest's
/// cross-host scrub would keep `X-Consul-Token`: a 3xx is answered as
/// the error it is), and a variable of [`AgentTls::from_env`] that did
/// not parse fails it.
pub(crate) fn client(
    base: &str,
    tls: &AgentTls,
    connect_timeout: Option<Duration>,
) -> Result<reqwest::Client, String> {
    if let Some(e) = &tls.invalid {
        return Err(e.clone());
    }
    let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(t) = connect_timeout {
        b = b.connect_timeout(t);
    }
    // Always a configuration of mesh's own: reqwest has no provider of
    // its own in this build (it would panic building a plain client).
    let config = if base.starts_with("https://") {
        tls.client_config()?
    } else {
        rustls::ClientConfig::builder_with_provider(crate::identity::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth()
    };
    b = b.use_preconfigured_tls(config);
    // Names through hickory (no getaddrinfo: static binaries resolve too).
    #[cfg(feature = "dns")]
    {
        b = b.dns_resolver(Arc::new(crate::resolve::Hickory));
    }
    b.build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Checks the agent's certificate for a configured name, not the host.
#[derive(Debug)]
struct Named {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for Named {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `CONSUL_HTTP_SSL_VERIFY=false`: signatures are checked, the
/// certificate is not.
#[derive(Debug)]
struct NoCheck(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_variables_are_read_as_consul_reads_them() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let t = AgentTls::from_lookup(env(&[
            ("CONSUL_CACERT", "/etc/consul/ca.pem"),
            ("CONSUL_CAPATH", ""),
            ("CONSUL_CLIENT_CERT", "/etc/consul/cli.pem"),
            ("CONSUL_CLIENT_KEY", "/etc/consul/cli-key.pem"),
            ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
            ("CONSUL_HTTP_SSL", "true"),
            ("CONSUL_HTTP_SSL_VERIFY", "true"),
        ]));
        assert_eq!(
            t,
            AgentTls {
                https_default: true,
                ..AgentTls::new()
                    .ca_file("/etc/consul/ca.pem")
                    .client_cert("/etc/consul/cli.pem", "/etc/consul/cli-key.pem")
                    .server_name("server.dc1.consul")
            }
        );
        let t = AgentTls::from_lookup(env(&[
            ("CONSUL_HTTP_SSL", "0"),
            ("CONSUL_HTTP_SSL_VERIFY", "false"),
        ]));
        assert!(!t.https_default && t.skip_verify);
        assert_eq!(AgentTls::from_lookup(env(&[])), AgentTls::new());
        let t = AgentTls::from_lookup(env(&[("CONSUL_HTTP_SSL_VERIFY", "0")]));
        assert!(t.skip_verify && t.invalid.is_none());
        let t = AgentTls::from_lookup(env(&[("CONSUL_HTTP_SSL_VERIFY", "TRUE")]));
        assert!(!t.skip_verify && t.invalid.is_none());
    }

    #[test]
    fn an_unknown_flag_value_is_an_error_not_a_silent_false() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        // A typo does not turn the check off: every client build fails.
        let t = AgentTls::from_lookup(env(&[("CONSUL_HTTP_SSL_VERIFY", "ture")]));
        assert!(!t.skip_verify);
        for base in ["https://127.0.0.1:8501", "http://127.0.0.1:8500"] {
            let e = client(base, &t, None).unwrap_err();
            assert!(e.contains("CONSUL_HTTP_SSL_VERIFY=\"ture\""), "{e}");
        }
        let e = t.client_config().unwrap_err();
        assert!(e.contains("not a boolean"), "{e}");
        let t = AgentTls::from_lookup(env(&[("CONSUL_HTTP_SSL", "yes please")]));
        let e = client("http://127.0.0.1:8500", &t, None).unwrap_err();
        assert!(e.contains("CONSUL_HTTP_SSL="), "{e}");
    }

    #[test]
    fn unreadable_or_half_settings_are_clear_errors() {
        let e = AgentTls::new()
            .ca_file("/nonexistent/ca.pem")
            .client_config()
            .unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("mesh-agent-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = AgentTls::new().ca_file(&junk).client_config().unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let mut half = AgentTls::new();
        half.skip_verify = true;
        half.client_cert = Some(junk.clone());
        let e = half.client_config().unwrap_err();
        assert!(e.contains("go together"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
