//! PEM files as the TLS doors use them: a certificate chain, a private key and trust anchors, read
//! with errors that name the file at fault ([`PemError`]); and the stamp-and-rebuild scheme that
//! re-reads material when one of its files changes ([`Watched`]).
//!
//! Both TLS doors build on it: the internal gRPC port (medpool-cluster's `tls`) and SIP over TLS
//! (medpool-sip's `transport::tls`). It sits below both and knows neither.
//!
//! Reloading: the owner keeps its material in a [`Watched`] and calls [`Watched::refresh`] whenever a
//! new connection asks for it. A refresh compares the files' modification times with those last
//! tried; when one changed it builds new material. Material that cannot be built keeps the old one
//! and is logged once per change (the times are remembered as tried either way).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A certificate file holds no PEM certificate.
    #[error("{path}: no PEM certificate in it")]
    NoCertificate {
        /// The file.
        path: String,
    },
    /// The key file holds no usable PEM private key.
    #[error("{path}: no usable PEM private key in it ({why})")]
    BadKey {
        /// The file.
        path: String,
        /// The parser's account.
        why: String,
    },
    /// A CA file holds a certificate rustls cannot use as a trust anchor.
    #[error("{path}: not a usable CA certificate ({why})")]
    BadCa {
        /// The file.
        path: String,
        /// rustls's account.
        why: String,
    },
}

impl PemError {
    /// A CA file that rustls refused (when adding it, or when building a verifier from it).
    pub fn bad_ca(path: &Path, why: impl std::fmt::Display) -> PemError {
        PemError::BadCa {
            path: path.display().to_string(),
            why: why.to_string(),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The certificates of a PEM file, in file order (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| PemError::BadKey {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

/// The trust anchors of a PEM file (every certificate in it).
pub fn read_roots(path: &Path) -> Result<RootCertStore, PemError> {
    let mut roots = RootCertStore::empty();
    for ca in read_certs(path)? {
        roots.add(ca).map_err(|e| PemError::bad_ca(path, e))?;
    }
    Ok(roots)
}

/// A file's modification time, `None` when it cannot be read.
pub fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Material built from files, rebuilt when one of them changes.
#[derive(Debug)]
pub struct Watched<T> {
    /// What the material is, for the log ("internal TLS material", "SIP TLS certificate").
    what: &'static str,
    files: Vec<PathBuf>,
    /// The files' modification times when last tried (built or refused).
    tried: Vec<Option<SystemTime>>,
    current: T,
}

impl<T> Watched<T> {
    /// Builds the material from `files` now; an error is the builder's (naming the file at fault).
    pub fn build<E>(
        what: &'static str,
        files: Vec<PathBuf>,
        build: impl FnOnce() -> Result<T, E>,
    ) -> Result<Watched<T>, E> {
        let tried = files.iter().map(|f| mtime(f)).collect();
        Ok(Watched {
            what,
            files,
            tried,
            current: build()?,
        })
    }

    /// Rebuilds the material with `build` when a file changed since last tried; `true` when it
    /// was replaced. A build that fails keeps the old material (logged, once per change).
    pub fn refresh<E: std::fmt::Display>(&mut self, build: impl FnOnce() -> Result<T, E>) -> bool {
        let now: Vec<_> = self.files.iter().map(|f| mtime(f)).collect();
        if now == self.tried {
            return false;
        }
        self.tried = now;
        match build() {
            Ok(t) => {
                tracing::info!(file = %self.files[0].display(), "{} reloaded", self.what);
                self.current = t;
                true
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "{} changed but cannot be used: keeping the previous one",
                    self.what
                );
                false
            }
        }
    }

    /// The material as last built.
    pub fn current(&self) -> &T {
        &self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn errors_name_the_file_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(
            matches!(read_certs(&missing), Err(PemError::Read { path, .. }) if path.ends_with("missing.pem"))
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        assert!(
            matches!(read_certs(&junk), Err(PemError::NoCertificate { path }) if path.ends_with("junk.pem"))
        );
        assert!(
            matches!(read_key(&junk), Err(PemError::BadKey { path, .. }) if path.ends_with("junk.pem"))
        );
        let (c, k) = write_pair(dir.path(), "a.example");
        assert_eq!(read_certs(&c).unwrap().len(), 1);
        assert!(read_key(&k).is_ok());
        assert_eq!(read_roots(&c).unwrap().len(), 1);
        assert!(read_key(&c).is_err(), "a certificate is not a key");
    }

    #[test]
    fn material_is_rebuilt_only_when_a_file_changes_and_a_bad_file_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = write_pair(dir.path(), "a.example");
        let builds = std::cell::Cell::new(0);
        let load = |p: &Path| {
            builds.set(builds.get() + 1);
            read_certs(p).map(|v| v.len())
        };
        let mut w = Watched::build("test material", vec![c.clone()], || load(&c)).unwrap();
        assert!(!w.refresh(|| load(&c)), "nothing changed");
        assert_eq!(builds.get(), 1, "and nothing was read again");
        // Two certificates now; a newer modification time marks the change.
        let pem = std::fs::read_to_string(&c).unwrap();
        std::fs::write(&c, format!("{pem}{pem}")).unwrap();
        bump(&c, 5);
        assert!(w.refresh(|| load(&c)));
        assert_eq!(*w.current(), 2);
        std::fs::write(&c, "broken").unwrap();
        bump(&c, 10);
        assert!(!w.refresh(|| load(&c)), "a broken file is not used");
        assert_eq!(*w.current(), 2, "the old material stays");
        let tried = builds.get();
        assert!(!w.refresh(|| load(&c)));
        assert_eq!(
            builds.get(),
            tried,
            "a broken file is tried once per change"
        );
    }

    fn bump(p: &Path, secs: u64) {
        let t = SystemTime::now() + std::time::Duration::from_secs(secs);
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
}
