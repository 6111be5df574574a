//! The rustls crypto provider of mesh's TLS (node-to-node mTLS, the
//! identity material, the https Consul agent client).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

#[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
compile_error!(
    "mesh needs a rustls crypto provider: enable the feature `aws-lc-rs` (the default) or `ring`"
);

/// The rustls crypto provider mesh's TLS (node-to-node mTLS, the https
/// Consul agent client) uses: the process's default if one was installed
/// ([`CryptoProvider::install_default`]) when the [`Tls`](crate::transport::tls::Tls) or client is
/// built, else the one of mesh's features: `aws-lc-rs` (the default; it
/// prefers the post-quantum hybrid key exchange `X25519MLKEM768`) or
/// `ring` (no post-quantum key exchange); aws-lc-rs when both are on.
/// mesh never installs a process default itself.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    match CryptoProvider::get_default() {
        Some(installed) => installed.clone(),
        None => Arc::new(fallback_provider()),
    }
}

#[cfg(feature = "aws-lc-rs")]
fn fallback_provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
fn fallback_provider() -> CryptoProvider {
    // rustls 0.23.48 deprecates it for its lack of post-quantum key
    // exchange; this build asked for ring (feature `ring`) knowingly.
    #[allow(deprecated)]
    rustls::crypto::ring::default_provider()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::crypto::CryptoProvider;
    use rustls::NamedGroup;

    /// The fallback of this build prefers the post-quantum hybrid with
    /// aws-lc-rs; a provider the process installed wins over it.
    #[test]
    fn the_process_default_provider_wins_over_the_features() {
        let fallback = super::fallback_provider();
        let first = fallback.kx_groups[0].name();
        if cfg!(feature = "aws-lc-rs") {
            assert_eq!(first, NamedGroup::X25519MLKEM768);
        } else {
            assert_eq!(first, NamedGroup::secp384r1);
        }
        let mut classic = fallback;
        classic.kx_groups.retain(|g| g.name() == NamedGroup::X25519);
        let _ = classic.install_default();
        let installed = CryptoProvider::get_default().expect("installed");
        let used = super::crypto_provider();
        assert!(Arc::ptr_eq(&used, installed));
        assert_eq!(used.kx_groups.len(), 1);
    }
}
