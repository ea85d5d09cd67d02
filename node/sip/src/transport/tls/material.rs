//! The node's SIP TLS material: its certificate chain and key, and an optional default CA, read from
//! PEM files and turned into rustls configurations, re-read when a file changes.
//!
//! Reloading works as on the internal gRPC port, through the same [`Watched`] (medpool-pem): every
//! new connection, accepted or made, asks for the current configuration, which compares the files'
//! modification times with those last tried and rebuilds when one changed. A file that cannot be
//! read or used keeps the old material (logged once per change). Open connections keep what they
//! were made with, so a reload drops none.
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

use medpool_pem::{PemError, Watched, mtime, read_certs, read_key, read_roots};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ServerConfig};

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
    /// A PEM file could not be read or used (the error names it).
    #[error(transparent)]
    Pem(#[from] PemError),
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
    let key = read_key(&files.key)?;
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

struct Current {
    /// The node's certificate and key, re-read when one of the two files changes.
    identity: Watched<Arc<Identity>>,
    /// Bumped on every successful reload (client configurations built before are rebuilt).
    generation: u64,
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
        let identity = Watched::build(
            "SIP TLS certificate",
            vec![files.cert.clone(), files.key.clone()],
            || build_identity(&files).map(Arc::new),
        )?;
        if let Some(ca) = &files.ca {
            read_roots(ca)?;
        }
        Ok(Arc::new(TlsMaterial {
            files,
            current: Mutex::new(Current {
                identity,
                generation: 0,
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
        if cur
            .identity
            .refresh(|| build_identity(&self.files).map(Arc::new))
        {
            cur.generation += 1;
        }
        cur
    }

    fn identity(&self) -> Arc<Identity> {
        self.lock().identity.current().clone()
    }

    /// The server configuration for a connection accepted now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.identity().server.clone()
    }

    /// The node's own certificate (the chain's first), as used now.
    pub fn own_certificate(&self) -> Option<CertificateDer<'static>> {
        self.identity().chain.first().cloned()
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
        let id = cur.identity.current().clone();
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
