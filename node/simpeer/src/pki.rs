//! A throwaway certificate authority for tests and demos of SIP over TLS: a CA, and certificates
//! it signs for given names (DNS names and IP addresses as subject alternative names, the first
//! as the subject's common name), written as PEM files that medpool and the TLS peers read.
//!
//! Nothing here is fit for production keys: they live in a directory the caller owns and deletes.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::error::SimpeerError;

/// The PEM files of one certificate: its chain (the certificate alone) and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

/// A test CA that writes its files into a directory.
pub struct TestCa {
    dir: PathBuf,
    name: String,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM file).
    pub ca: PathBuf,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("name", &self.name)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

fn pki(e: impl std::fmt::Display) -> SimpeerError {
    SimpeerError::Pki(e.to_string())
}

fn write(path: &Path, text: &str) -> Result<(), SimpeerError> {
    std::fs::write(path, text).map_err(|e| SimpeerError::Pki(format!("{}: {e}", path.display())))
}

impl TestCa {
    /// A new CA named `name` (its files `<name>-ca.pem` in `dir`).
    pub fn new(dir: &Path, name: &str) -> Result<TestCa, SimpeerError> {
        let key = KeyPair::generate().map_err(pki)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let cert = params.self_signed(&key).map_err(pki)?;
        let ca = dir.join(format!("{name}-ca.pem"));
        write(&ca, &cert.pem())?;
        Ok(TestCa {
            dir: dir.to_owned(),
            name: name.to_owned(),
            issuer: Issuer::new(params, key),
            ca,
        })
    }

    /// A certificate for `names` (DNS names or IP addresses; the first is also the common name),
    /// written as `<file>.pem` and `<file>.key` in the CA's directory (replacing what is there:
    /// the key is written first, the certificate last, each by a rename so a reader never sees
    /// half a file).
    pub fn issue(&self, file: &str, names: &[&str]) -> Result<CertFiles, SimpeerError> {
        let key = KeyPair::generate().map_err(pki)?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .map_err(pki)?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params
            .distinguished_name
            .push(DnType::OrganizationName, format!("{} test", self.name));
        let cert = params.signed_by(&key, &self.issuer).map_err(pki)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        let tmp = self.dir.join(format!(".{file}.tmp"));
        write(&tmp, &key.serialize_pem())?;
        std::fs::rename(&tmp, &files.key).map_err(pki)?;
        write(&tmp, &cert.pem())?;
        std::fs::rename(&tmp, &files.cert).map_err(pki)?;
        Ok(files)
    }
}
