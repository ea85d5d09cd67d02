//! The internal port's mutual TLS: the node's certificate, key and the pool CA read from PEM files
//! ([`TlsFiles`]) and turned into rustls server and client configurations ([`InternalTls`]), re-read
//! when a file changes; and the one name a node's certificate must carry,
//! `node-<id>.medpool.internal` ([`node_name`], [`cert_names_node`]).
//!
//! Reloading: every new connection (accepted or made) asks [`InternalTls`] for its current
//! material, which compares the three files' modification times with those it loaded; when one
//! changed it builds new configurations. A file that cannot be read or used keeps the old material
//! (logged once per change). Connections already open keep the material they were made with.
//!
//! Client side, a peer whose node id is known is verified against the pool CA for exactly
//! `node-<id>.medpool.internal`; a join address (whose node is not known yet) is verified against
//! the pool CA for any name ([`Expect::AnyMember`]). Server side, a client certificate chained to
//! the pool CA is required; which node it speaks for is checked per request (crate::grpc).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use medpool_pem::{PemError, Watched, read_certs, read_key, read_roots};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme,
};

use crate::ids::NodeId;

/// The DNS name a node's certificate carries as a subject alternative name.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}.medpool.internal")
}

/// Whether `cert` (DER, an end-entity certificate) is valid for [`node_name`]`(id)`. The chain is
/// not checked here (the TLS handshake did it).
pub fn cert_names_node(cert: &CertificateDer<'_>, id: NodeId) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node_name(id)) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Where a node's TLS material is (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain (its own certificate first).
    pub cert: PathBuf,
    /// The node's private key.
    pub key: PathBuf,
    /// The pool CA's certificate(s).
    pub ca: PathBuf,
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or used (the error names it).
    #[error(transparent)]
    Pem(#[from] PemError),
    /// rustls refused the certificate and key (e.g. a key that does not match the certificate).
    #[error("TLS configuration ({cert}): {source}")]
    Config {
        /// The certificate file.
        cert: String,
        /// rustls's error.
        source: rustls::Error,
    },
}

/// Which server certificate a client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The certificate of exactly this node (valid for its [`node_name`]).
    Node(NodeId),
    /// Any certificate of the pool CA (a join address, whose node is not known yet).
    AnyMember,
}

struct Loaded {
    /// The node's own certificate (the chain's first).
    own: CertificateDer<'static>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    any_member: Arc<ClientConfig>,
}

/// A node's internal TLS material, re-read when its files change.
pub struct InternalTls {
    files: TlsFiles,
    current: Mutex<Watched<Arc<Loaded>>>,
}

impl std::fmt::Debug for InternalTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn build(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let chain = read_certs(&files.cert)?;
    // read_certs returns at least one certificate.
    let own = chain[0].clone();
    let key = read_key(&files.key)?;
    let roots = Arc::new(read_roots(&files.ca)?);
    let cfg = |source: rustls::Error| TlsError::Config {
        cert: files.cert.display().to_string(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| PemError::bad_ca(&files.ca, e))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(cfg)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(cfg)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(cfg)?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain.clone(), key.clone_key())
        .map_err(cfg)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| PemError::bad_ca(&files.ca, e))?;
    let mut any_member = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(cfg)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyMember(inner)))
        .with_client_auth_cert(chain, key)
        .map_err(cfg)?;
    any_member.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        own,
        server: Arc::new(server),
        client: Arc::new(client),
        any_member: Arc::new(any_member),
    })
}

impl InternalTls {
    /// Reads the material; an error names the file at fault.
    pub fn load(files: TlsFiles) -> Result<Arc<InternalTls>, TlsError> {
        let watched = Watched::build("internal TLS material", Self::paths(&files), || {
            build(&files).map(Arc::new)
        })?;
        Ok(Arc::new(InternalTls {
            files,
            current: Mutex::new(watched),
        }))
    }

    fn paths(files: &TlsFiles) -> Vec<PathBuf> {
        vec![files.cert.clone(), files.key.clone(), files.ca.clone()]
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The material for a new connection: re-read first when a file changed since last tried.
    fn current(&self) -> Arc<Loaded> {
        // Nothing panics while holding the lock; a poisoned one still holds usable material.
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.refresh(|| build(&self.files).map(Arc::new));
        cur.current().clone()
    }

    /// Whether the node's own certificate is valid for [`node_name`]`(id)`.
    pub fn names_node(&self, id: NodeId) -> bool {
        cert_names_node(&self.current().own, id)
    }

    /// The server configuration for a connection accepted now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current().server.clone()
    }

    /// The client configuration for a connection made now to a peer verified as `expect` says.
    pub fn client_config(&self, expect: Expect) -> Arc<ClientConfig> {
        let l = self.current();
        match expect {
            Expect::Node(_) => l.client.clone(),
            Expect::AnyMember => l.any_member.clone(),
        }
    }
}

/// Accepts a server certificate chained to the pool CA whatever names it carries (a join address,
/// whose node id is not known yet). Everything else is the WebPKI verifier's.
#[derive(Debug)]
struct AnyMember(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyMember {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked last, after the chain: "not valid for this name" means the chain
        // to the pool CA is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    use super::*;

    fn ca() -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert.der().clone(), Issuer::new(params, key))
    }

    fn leaf(issuer: &Issuer<'static, KeyPair>, name: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.signed_by(&key, issuer).unwrap().der().clone()
    }

    #[test]
    fn a_join_address_may_be_any_member_but_only_of_the_pool_ca() {
        let (pool_ca, pool) = ca();
        let (_, stranger) = ca();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pool_ca).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        let any = AnyMember(inner);
        let asked = ServerName::try_from("medpool.internal").unwrap();
        let now = UnixTime::now();
        let member = leaf(&pool, &node_name(3));
        assert!(
            any.verify_server_cert(&member, &[], &asked, &[], now)
                .is_ok()
        );
        assert!(cert_names_node(&member, 3) && !cert_names_node(&member, 4));
        let outsider = leaf(&stranger, &node_name(3));
        assert!(
            any.verify_server_cert(&outsider, &[], &asked, &[], now)
                .is_err()
        );
    }
}
