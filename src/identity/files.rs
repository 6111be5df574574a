//! The files identity source: PEM files on disk, reloaded on change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{IdentityError, IdentitySource, Material};

/// Counter: reloads of identity files that failed (the previous material
/// stays in use).
pub const IDENTITY_RELOAD_FAILURES_TOTAL: &str = "mesh_tls_identity_reload_failures_total";

/// A certificate chain, a key and a trust bundle in PEM files.
///
/// Every [`current`](IdentitySource::current) call (once per TLS
/// handshake) compares the three files' modification time, length and
/// inode with those of the last load and reloads them when one changed,
/// so a rotation needs no restart. A reload that fails (a file half
/// written, a key that does not match the new leaf yet) is logged, counted
/// in `mesh_tls_identity_reload_failures_total`, and the previous material
/// stays in use; the next handshake tries again. Writers should replace
/// the files atomically (write aside, then rename), as spiffe-helper and
/// cert-manager do; with the key and the chain in separate files, a
/// mismatch in between is refused until both are in place.
#[derive(Debug)]
pub struct FileIdentity {
    chain: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    stamps: [Stamp; 3],
    material: Arc<Material>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileIdentity {
    /// Loads `chain` (leaf first), `key` and `bundle` now: an unreadable
    /// or malformed file, or a key that does not match the leaf, is an
    /// error here.
    pub fn load(
        chain: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        bundle: impl Into<PathBuf>,
    ) -> Result<Self, IdentityError> {
        let (chain, key, bundle) = (chain.into(), key.into(), bundle.into());
        let stamps = [stamp(&chain)?, stamp(&key)?, stamp(&bundle)?];
        let material = Arc::new(read(&chain, &key, &bundle)?);
        Ok(FileIdentity {
            chain,
            key,
            bundle,
            state: Mutex::new(State { stamps, material }),
        })
    }
}

impl IdentitySource for FileIdentity {
    fn current(&self) -> Result<Arc<Material>, IdentityError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let stamps = [stamp(&self.chain), stamp(&self.key), stamp(&self.bundle)];
        let changed = stamps
            .iter()
            .zip(&state.stamps)
            .any(|(now, then)| now.as_ref().ok() != Some(then));
        if changed {
            match stamps_ok(stamps)
                .and_then(|s| Ok((s, read(&self.chain, &self.key, &self.bundle)?)))
            {
                Ok((stamps, material)) => {
                    tracing::info!(
                        spiffe_id = material.spiffe_id(),
                        chain = %self.chain.display(),
                        "identity files reloaded"
                    );
                    *state = State {
                        stamps,
                        material: Arc::new(material),
                    };
                }
                Err(e) => {
                    tracing::warn!(
                        chain = %self.chain.display(),
                        "identity files changed but cannot be loaded, keeping the previous identity: {e}"
                    );
                    metrics::counter!(IDENTITY_RELOAD_FAILURES_TOTAL).increment(1);
                }
            }
        }
        Ok(state.material.clone())
    }
}

fn stamps_ok(s: [Result<Stamp, IdentityError>; 3]) -> Result<[Stamp; 3], IdentityError> {
    let [a, b, c] = s;
    Ok([a?, b?, c?])
}

fn stamp(path: &Path) -> Result<Stamp, IdentityError> {
    let meta = std::fs::metadata(path).map_err(|e| read_error(path, e))?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

fn read(chain: &Path, key: &Path, bundle: &Path) -> Result<Material, IdentityError> {
    let get = |p: &Path| std::fs::read(p).map_err(|e| read_error(p, e));
    Material::from_pem(&get(chain)?, &get(key)?, &get(bundle)?)
}

fn read_error(path: &Path, e: std::io::Error) -> IdentityError {
    IdentityError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}
