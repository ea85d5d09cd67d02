//! Who may use the admin API: a bearer token (`authorization: Bearer <token>`), required whenever
//! the admin port listens on anything but loopback, and checked on every request whenever one is
//! configured. The token comes from `--admin-token-file` (a Kubernetes Secret mounted as a file) or
//! the `MEDPOOL_ADMIN_TOKEN` environment variable. grpc.health.v1 is left open (Kubernetes gRPC
//! probes cannot send metadata; health tells nothing else).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::error::AdminError;

/// A bearer token (never printed).
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// A secret given on the command line or in the environment: printed as `..` by `Debug`, so
/// that no log of the parsed arguments shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretText(..)")
    }
}

impl std::str::FromStr for SecretText {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<SecretText, Self::Err> {
        Ok(SecretText(s.to_owned()))
    }
}

/// Why a token could not be loaded, or the admin port may not listen where asked.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("admin token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The token is empty or not printable ASCII.
    #[error("admin token from {0} is empty or contains characters other than printable ASCII")]
    Malformed(String),
    /// Listening beyond loopback without a token.
    #[error(
        "the admin API would listen on {0}, which is not loopback, without a token: give \
         --admin-token-file FILE or MEDPOOL_ADMIN_TOKEN, or listen on loopback \
         (--admin-listen 127.0.0.1:7001)"
    )]
    OpenPort(SocketAddr),
}

impl Token {
    /// Makes a token from text (surrounding whitespace, e.g. a file's final newline, is dropped).
    pub fn new(text: &str, from: &str) -> Result<Token, TokenError> {
        let t = text.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Malformed(from.to_owned()));
        }
        Ok(Token(Arc::from(t)))
    }

    /// The token from a file, else from the value of an environment variable, else none.
    pub fn load(file: Option<&Path>, env_value: Option<&str>) -> Result<Option<Token>, TokenError> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
                path: path.display().to_string(),
                source,
            })?;
            return Token::new(&text, &path.display().to_string()).map(Some);
        }
        match env_value {
            Some(v) => Token::new(v, "MEDPOOL_ADMIN_TOKEN").map(Some),
            None => Ok(None),
        }
    }

    /// The `authorization` header value.
    pub fn header(&self) -> Option<MetadataValue<Ascii>> {
        format!("Bearer {}", self.0).parse().ok()
    }

    /// Compares in time independent of where the first difference is.
    fn matches(&self, presented: &[u8]) -> bool {
        let ours = self.0.as_bytes();
        let mut diff = ours.len() ^ presented.len();
        for (i, b) in ours.iter().enumerate() {
            diff |= usize::from(b ^ presented.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }
}

/// Refuses an admin port beyond loopback without a token.
pub fn check_listen(addr: SocketAddr, token: Option<&Token>) -> Result<(), TokenError> {
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(TokenError::OpenPort(addr));
    }
    Ok(())
}

/// Server side: checks `authorization: Bearer <token>` when a token is configured.
#[derive(Clone, Debug)]
pub struct CheckToken(pub Option<Token>);

impl Interceptor for CheckToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.0 else {
            return Ok(req);
        };
        let Some(value) = req.metadata().get("authorization") else {
            return Err(AdminError::Unauthenticated("a bearer token is required").into());
        };
        let presented = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "));
        match presented {
            Some(p) if token.matches(p) => Ok(req),
            _ => Err(AdminError::Unauthenticated("wrong bearer token").into()),
        }
    }
}

/// Client side: adds `authorization: Bearer <token>` when there is a token.
#[derive(Clone, Debug, Default)]
pub struct AddToken(pub Option<Token>);

impl Interceptor for AddToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = self.0.as_ref().and_then(Token::header) {
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tokens_are_checked() {
        let t = Token::new("s3cret\n", "test").unwrap();
        let mut check = CheckToken(Some(t.clone()));
        let mut add = AddToken(Some(t));
        assert!(check.call(add.call(Request::new(())).unwrap()).is_ok());
        let none = check.call(Request::new(())).unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        let wrong = AddToken(Some(Token::new("s3cres", "t").unwrap()))
            .call(Request::new(()))
            .unwrap();
        assert_eq!(
            check.call(wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(CheckToken(None).call(Request::new(())).is_ok());
        assert!(Token::new("  ", "t").is_err());
        assert!(Token::new("a b", "t").is_err());
    }

    #[test]
    fn open_ports_need_a_token() {
        let t = Token::new("x", "t").unwrap();
        assert!(check_listen("127.0.3.1:7001".parse().unwrap(), None).is_ok());
        assert!(check_listen("0.0.0.0:7001".parse().unwrap(), None).is_err());
        assert!(check_listen("10.0.0.1:7001".parse().unwrap(), Some(&t)).is_ok());
        assert!(check_listen("[::1]:7001".parse().unwrap(), None).is_ok());
    }
}
