//! TLS to PostgreSQL on rustls, with mesh's crypto provider
//! ([`crate::identity::crypto_provider`]: one provider per build, the one
//! mesh's features chose), for [`super::PgStore`].
//!
//! The server's certificate is verified against the roots the user gives
//! ([`super::PgOptions::ca`]) and the host name of the connection string
//! (an IP address is checked against the certificate's IP names): what
//! libpq calls `sslmode=verify-full`. No channel binding is offered
//! (SCRAM-SHA-256 without `-PLUS`); client certificates are not sent.
//! Connections over a Unix socket never use TLS (PostgreSQL's rule).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::error::StoreError;

/// Makes one TLS connector per connection, all on one client config.
#[derive(Clone)]
pub(crate) struct RustlsConnect(Arc<rustls::ClientConfig>);

impl RustlsConnect {
    /// A connector that trusts the PEM certificates in `ca`.
    pub(crate) fn new(ca: &[u8]) -> Result<RustlsConnect, StoreError> {
        let bad = |what: String| StoreError::Unavailable(format!("PgOptions::ca: {what}").into());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca) {
            let cert = cert.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("a certificate refused as a root: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        let config =
            rustls::ClientConfig::builder_with_provider(crate::identity::crypto_provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(format!("the crypto provider: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(RustlsConnect(Arc::new(config)))
    }
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Tls<S>;
    type TlsConnect = ConnectOne;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<ConnectOne, Self::Error> {
        let name = ServerName::try_from(domain.to_owned())?;
        Ok(ConnectOne {
            config: self.0.clone(),
            name,
        })
    }
}

/// The TLS handshake of one connection, to the server named `name`.
pub(crate) struct ConnectOne {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for ConnectOne
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Tls<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Tls<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(Tls(tls))
        })
    }
}

/// A TLS connection to the server.
pub(crate) struct Tls<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Tls<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tls<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tls<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
