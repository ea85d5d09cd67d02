//! Who is at the other end of a TLS connection: what the handshake lets in ([`AnyClientCert`]),
//! what a connection records of its peer ([`PeerTls`]: version, certificate subject, chain), and the
//! per-trunk rule a client certificate must meet ([`ClientRule`]: a CA and/or names).
//!
//! The server asks every client for a certificate but requires none, and checks no chain during
//! the handshake: which CA and names a certificate must carry depends on the trunk the request
//! claims to come from, known only once the request is read. The handshake still proves that the
//! client holds the certificate's key (its CertificateVerify signature is checked here), so a
//! chain recorded in [`PeerTls`] is the client's own; [`ClientRule::admits`] then checks it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use medpool_pem::{PemError, mtime, read_roots};

use super::material::TlsError;

/// Asks for a client certificate, requires none, and leaves the chain to [`ClientRule`]; checks the
/// client's proof that it holds the key.
#[derive(Debug)]
pub struct AnyClientCert {
    provider: Arc<CryptoProvider>,
}

impl AnyClientCert {
    /// With the signature algorithms of `provider`.
    pub fn new(provider: Arc<CryptoProvider>) -> AnyClientCert {
        AnyClientCert { provider }
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Only a well-formed certificate; its chain is the trunk's business.
        webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
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

/// What a TLS connection knows of its peer, fixed at the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// The protocol version agreed: `"TLSv1.2"` or `"TLSv1.3"`.
    pub version: &'static str,
    /// The peer certificate's subject (`CN=..., O=...`), `None` when it presented none.
    pub subject: Option<String>,
    /// The chain the peer presented (its own certificate first; empty when none).
    pub chain: Vec<CertificateDer<'static>>,
}

impl PeerTls {
    /// From a finished handshake's connection state.
    pub fn of(conn: &rustls::CommonState) -> PeerTls {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        let chain: Vec<CertificateDer<'static>> = conn
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        PeerTls {
            version,
            subject: chain.first().and_then(|c| subject_of(c)),
            chain,
        }
    }
}

/// The trust anchors of a client rule's CA file, rebuilt when the file changes.
type CachedVerifier = (Option<SystemTime>, Option<Arc<dyn ClientCertVerifier>>);

/// What a client certificate must carry for its connection to speak for a trunk: a chain to
/// `ca`, and (when `names` is not empty) one of `names` as a DNS subject alternative name.
#[derive(Debug)]
pub struct ClientRule {
    ca: PathBuf,
    names: Vec<String>,
    cached: Mutex<CachedVerifier>,
}

fn client_verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = Arc::new(read_roots(ca)?);
    WebPkiClientVerifier::builder_with_provider(
        roots,
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| PemError::bad_ca(ca, e).into())
}

impl ClientRule {
    /// A rule: chained to the CA(s) in `ca` and, unless `names` is empty, valid for one of them.
    /// Fails when `ca` is unusable now (a later change that makes it unusable admits nobody).
    pub fn new(ca: PathBuf, names: Vec<String>) -> Result<ClientRule, TlsError> {
        let stamp = mtime(&ca);
        let verifier = client_verifier(&ca)?;
        Ok(ClientRule {
            ca,
            names,
            cached: Mutex::new((stamp, Some(verifier))),
        })
    }

    /// A rule no certificate meets (for a trunk whose CA cannot be used: fail closed).
    pub fn nobody() -> ClientRule {
        ClientRule {
            ca: PathBuf::new(),
            names: Vec::new(),
            cached: Mutex::new((None, None)),
        }
    }

    fn verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        let stamp = mtime(&self.ca);
        let mut c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if c.0 != stamp {
            c.0 = stamp;
            c.1 = match client_verifier(&self.ca) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::error!(error = %e, "a trunk's client CA changed and cannot be used: its clients are refused");
                    None
                }
            };
        }
        c.1.clone()
    }

    /// Whether `peer`'s certificate meets the rule.
    pub fn admits(&self, peer: &PeerTls) -> bool {
        let Some((ee, intermediates)) = peer.chain.split_first() else {
            return false;
        };
        let Some(v) = self.verifier() else {
            return false;
        };
        if v.verify_client_cert(ee, intermediates, UnixTime::now())
            .is_err()
        {
            return false;
        }
        if self.names.is_empty() {
            return true;
        }
        let Ok(cert) = webpki::EndEntityCert::try_from(ee) else {
            return false;
        };
        self.names.iter().any(|n| {
            ServerName::try_from(n.as_str())
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        })
    }
}

/// One DER element: (tag, contents, what follows).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The subject of a certificate as `CN=..., OU=..., O=..., C=...` (the attributes it carries, in
/// its order; unknown ones are left out), `None` when the DER cannot be read.
pub fn subject_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, certificate, _) = der(cert.as_ref())?;
    let (_, mut tbs, _) = der(certificate)?;
    // [0] version (optional), serial, signature, issuer, validity, subject.
    if tbs.first() == Some(&0xa0) {
        tbs = der(tbs)?.2;
    }
    for _ in 0..4 {
        tbs = der(tbs)?.2;
    }
    let (_, mut name, _) = der(tbs)?;
    let mut parts = Vec::new();
    while !name.is_empty() {
        let (_, set, rest) = der(name)?;
        name = rest;
        let (_, atv, _) = der(set)?;
        let (_, oid, rest) = der(atv)?;
        let (_, value, _) = der(rest)?;
        let key = match oid {
            [0x55, 0x04, 0x03] => "CN",
            [0x55, 0x04, 0x06] => "C",
            [0x55, 0x04, 0x07] => "L",
            [0x55, 0x04, 0x08] => "ST",
            [0x55, 0x04, 0x0a] => "O",
            [0x55, 0x04, 0x0b] => "OU",
            _ => continue,
        };
        parts.push(format!("{key}={}", String::from_utf8_lossy(value)));
    }
    Some(parts.join(", "))
}
