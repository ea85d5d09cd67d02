//! A certificate authority made by the test (rcgen), and the files medpool and baresip read:
//! PEM certificates and keys, and baresip's `sip_certificate` (certificate and key in one file,
//! as OpenSSL's `SSL_CTX_use_certificate_chain_file` + `SSL_CTX_use_PrivateKey_file` on the same
//! file expect).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA able to issue leaf certificates.
pub struct TestCa {
    /// The CA certificate (PEM).
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// One issued identity's files.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// Certificate then key in one file (baresip's `sip_certificate`).
    pub combined: PathBuf,
    /// The CA that issued it (PEM).
    pub ca: PathBuf,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues a certificate for `names` (DNS names or IP addresses: rcgen makes an IP SAN of
    /// what parses as one), subject CN the first name, and writes `<tag>.crt`, `<tag>.key`,
    /// `<tag>.pem` (both) and `<tag>-ca.crt` into `dir`.
    pub fn issue(&self, dir: &Path, tag: &str, names: &[&str]) -> Identity {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert, key) = (cert.pem(), key.serialize_pem());
        let id = Identity {
            cert: dir.join(format!("{tag}.crt")),
            key: dir.join(format!("{tag}.key")),
            combined: dir.join(format!("{tag}.pem")),
            ca: dir.join(format!("{tag}-ca.crt")),
        };
        std::fs::write(&id.cert, &cert).unwrap();
        std::fs::write(&id.key, &key).unwrap();
        std::fs::write(&id.combined, format!("{cert}{key}")).unwrap();
        std::fs::write(&id.ca, &self.pem).unwrap();
        id
    }
}
