//! The node's SIP TLS material: its certificate chain and key, and an optional default CA, read from
//! PEM files and turned into rustls configurations, re-read when a file changes.
//!
//! Reloading works as on the internal gRPC port (the cluster crate's `tls` module, which this crate
//! cannot import: medpool-sip sits below medpool-cluster): every new connection, accepted or made,
//! asks for the current configuration, which compares the files' modification times with those last
//! tried and rebuilds when one changed. A file that cannot be read or used keeps the old material
//! (logged once per change). Open connections keep what they were made with, so a reload drops none.
//! About fifty lines of stamp/reload logic are thus written twice; sharing them would need a new
//! crate below both for one small function.
//!
//! Only TLS 1.2 and 1.3 are offered or accepted ([`VERSIONS`]); rustls knows nothing older.
//!
//! Client configurations (for connections this node opens) are built per trust anchor file (the
//! node's default CA, or a CA pinned per peer) and cached; the cache holds one entry per distinct
//! file named by the user (bounded by the configuration).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::verify::AnyClientCert;

/// The protocol versions offered and accepted: TLS 1.2 and 1.3.
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Where the node's TLS material is (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain (its own certificate first).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// Trust anchors for peers that pin none of their own; `None`: such peers cannot be verified
    /// (connections to them fail).
    pub ca: Option<PathBuf>,
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
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
    /// No trust anchors for a peer: it pins no CA and the node has no default one.
    #[error("no CA to verify the peer with (no per-peer CA and no default CA)")]
    NoCa,
    /// rustls refused the certificate and key (e.g. a key that does not match the certificate).
    #[error("TLS configuration ({cert}): {source}")]
    Config {
        /// The certificate file.
        cert: String,
        /// rustls's error.
        source: rustls::Error,
    },
}

/// Modification time of a file, `None` when it cannot be read.
fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The certificates of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// The trust anchors of a PEM file.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in read_certs(path)? {
        roots.add(ca).map_err(|e| TlsError::BadCa {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The node's own certificate chain and key, loaded.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    server: Arc<ServerConfig>,
}

fn config_error(files: &TlsFiles) -> impl Fn(rustls::Error) -> TlsError + '_ {
    |source| TlsError::Config {
        cert: files.cert.display().to_string(),
        source,
    }
}

fn build_identity(files: &TlsFiles) -> Result<Identity, TlsError> {
    let chain = read_certs(&files.cert)?;
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
        path: files.key.display().to_string(),
        why: e.to_string(),
    })?;
    // A client certificate is asked for but not required; it is not checked against any CA here:
    // whose it may be is decided per trunk once the SIP request is read (see `verify`).
    let server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(config_error(files))?
        .with_client_cert_verifier(Arc::new(AnyClientCert::new(provider())))
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(config_error(files))?;
    Ok(Identity {
        chain,
        key,
        server: Arc::new(server),
    })
}

/// Modification times of the node's cert and key.
type Stamp = [Option<SystemTime>; 2];

struct Current {
    /// The stamps last tried (loaded or refused): a bad file is reported once per change.
    tried: Stamp,
    /// Bumped on every successful reload (client configurations built before are rebuilt).
    generation: u64,
    identity: Arc<Identity>,
    /// Client configurations by trust anchor file: (generation, CA file mtime, config).
    clients: HashMap<PathBuf, (u64, Option<SystemTime>, Arc<ClientConfig>)>,
}

/// The node's SIP TLS material, re-read when its files change.
pub struct TlsMaterial {
    files: TlsFiles,
    current: Mutex<Current>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Reads the material; an error names the file at fault.
    pub fn load(files: TlsFiles) -> Result<Arc<TlsMaterial>, TlsError> {
        let tried = [mtime(&files.cert), mtime(&files.key)];
        let identity = Arc::new(build_identity(&files)?);
        if let Some(ca) = &files.ca {
            read_roots(ca)?;
        }
        Ok(Arc::new(TlsMaterial {
            files,
            current: Mutex::new(Current {
                tried,
                generation: 0,
                identity,
                clients: HashMap::new(),
            }),
        }))
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        // Nothing panics while holding the lock; a poisoned one still holds usable material.
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let now = [mtime(&self.files.cert), mtime(&self.files.key)];
        if cur.tried != now {
            cur.tried = now;
            match build_identity(&self.files) {
                Ok(id) => {
                    tracing::info!(cert = %self.files.cert.display(), "SIP TLS certificate reloaded");
                    cur.identity = Arc::new(id);
                    cur.generation += 1;
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "SIP TLS certificate changed but cannot be used: keeping the previous one"
                ),
            }
        }
        cur
    }

    /// The server configuration for a connection accepted now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.lock().identity.server.clone()
    }

    /// The node's own certificate (the chain's first), as used now.
    pub fn own_certificate(&self) -> Option<CertificateDer<'static>> {
        self.lock().identity.chain.first().cloned()
    }

    /// The client configuration for a connection made now to a peer verified against `ca` (a
    /// pinned CA file), or the node's default CA when `None`. The node presents its own certificate
    /// (peers that require mutual TLS check it).
    pub fn client_config(&self, ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
        let path = ca.or(self.files.ca.as_deref()).ok_or(TlsError::NoCa)?;
        let ca_stamp = mtime(path);
        let mut cur = self.lock();
        let generation = cur.generation;
        if let Some((g, s, c)) = cur.clients.get(path)
            && *g == generation
            && *s == ca_stamp
        {
            return Ok(c.clone());
        }
        let roots = Arc::new(read_roots(path)?);
        let id = cur.identity.clone();
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(config_error(&self.files))?
            .with_root_certificates(roots)
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(config_error(&self.files))?;
        let client = Arc::new(client);
        cur.clients
            .insert(path.to_owned(), (generation, ca_stamp, client.clone()));
        Ok(client)
    }
}
