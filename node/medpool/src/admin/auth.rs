//! Who may use the admin API, and for what. Two bearer tokens (`authorization: Bearer <token>`):
//! the **admin** token (`--admin-token-file` / `MEDPOOL_ADMIN_TOKEN`) may call everything; the
//! optional **viewer** token (`--admin-viewer-token-file` / `MEDPOOL_ADMIN_VIEWER_TOKEN`) may only
//! read (status, calls, gateways, configuration, events, reflection). Which RPC needs which is the
//! one table [`METHOD_SCOPES`]; a method it does not list needs the admin token.
//!
//! A token is required whenever the admin port listens on anything but loopback, and checked on
//! every request whenever one is configured. grpc.health.v1 is left open (Kubernetes gRPC probes
//! cannot send metadata; health tells nothing else). No or a wrong token: `UNAUTHENTICATED`; the
//! viewer token on a write: `PERMISSION_DENIED` (with the `permission-denied` error kind).
//!
//! ```text
//!  request ─► Guard (path → METHOD_SCOPES, token → Scope) ─► MedpoolAdmin / reflection
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::server::NamedService;
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
    /// A viewer token without an admin token (the API would be open to writes without one).
    #[error(
        "--admin-viewer-token-file / MEDPOOL_ADMIN_VIEWER_TOKEN is set without an admin token: \
         give --admin-token-file FILE or MEDPOOL_ADMIN_TOKEN too"
    )]
    ViewerWithoutAdmin,
    /// The viewer token is the admin token (a viewer would be an admin).
    #[error(
        "the viewer token (--admin-viewer-token-file / MEDPOOL_ADMIN_VIEWER_TOKEN) is the admin \
         token: give the viewer a token of its own"
    )]
    SameTokens,
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

    /// The admin token from a file, else from `MEDPOOL_ADMIN_TOKEN`'s value, else none.
    pub fn load(file: Option<&Path>, env_value: Option<&str>) -> Result<Option<Token>, TokenError> {
        Token::load_named(file, env_value, "MEDPOOL_ADMIN_TOKEN")
    }

    /// A token from a file, else from the value of the environment variable `env_name`, else none.
    pub fn load_named(
        file: Option<&Path>,
        env_value: Option<&str>,
        env_name: &str,
    ) -> Result<Option<Token>, TokenError> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
                path: path.display().to_string(),
                source,
            })?;
            return Token::new(&text, &path.display().to_string()).map(Some);
        }
        match env_value {
            Some(v) => Token::new(v, env_name).map(Some),
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

/// What a caller may do. `Viewer < Admin`: the admin scope includes the viewer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read only: status, calls, gateways, configuration, events, reflection.
    Viewer,
    /// Everything, writes included.
    Admin,
}

/// The scope every RPC of the admin port needs, by gRPC path: the one table. A path not listed
/// here (a method added later and forgotten) needs [`Scope::Admin`]; grpc.health.v1 is not behind
/// the tokens at all. A unit test checks that every method of `medpool.admin.v1` is listed.
pub const METHOD_SCOPES: &[(&str, Scope)] = &[
    ("/medpool.admin.v1.MedpoolAdmin/PoolStatus", Scope::Viewer),
    ("/medpool.admin.v1.MedpoolAdmin/ListCalls", Scope::Viewer),
    ("/medpool.admin.v1.MedpoolAdmin/GetCall", Scope::Viewer),
    ("/medpool.admin.v1.MedpoolAdmin/WatchEvents", Scope::Viewer),
    ("/medpool.admin.v1.MedpoolAdmin/ListGateways", Scope::Viewer),
    ("/medpool.admin.v1.MedpoolAdmin/GetConfig", Scope::Viewer),
    (
        "/medpool.admin.v1.MedpoolAdmin/ValidateConfig",
        Scope::Viewer,
    ),
    ("/medpool.admin.v1.MedpoolAdmin/HangupCall", Scope::Admin),
    (
        "/medpool.admin.v1.MedpoolAdmin/SetGatewayState",
        Scope::Admin,
    ),
    ("/medpool.admin.v1.MedpoolAdmin/ApplyConfig", Scope::Admin),
    ("/medpool.admin.v1.MedpoolAdmin/DrainNode", Scope::Admin),
    ("/medpool.admin.v1.MedpoolAdmin/UndrainNode", Scope::Admin),
    ("/medpool.admin.v1.MedpoolAdmin/RemoveNode", Scope::Admin),
    (
        "/medpool.admin.v1.MedpoolAdmin/TransferLeader",
        Scope::Admin,
    ),
    ("/medpool.admin.v1.MedpoolAdmin/SetLogLevel", Scope::Admin),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Scope::Viewer,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Scope::Viewer,
    ),
];

/// The scope the RPC at `path` needs ([`METHOD_SCOPES`]; [`Scope::Admin`] when not listed).
pub fn required_scope(path: &str) -> Scope {
    METHOD_SCOPES
        .iter()
        .find(|(p, _)| *p == path)
        .map_or(Scope::Admin, |(_, s)| *s)
}

/// The tokens of the admin port: none (loopback only, everything open), or an admin token and
/// optionally a viewer token.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    admin: Option<Token>,
    viewer: Option<Token>,
}

impl Tokens {
    /// The tokens, refusing a viewer token without an admin token or equal to it.
    pub fn new(admin: Option<Token>, viewer: Option<Token>) -> Result<Tokens, TokenError> {
        match (&admin, &viewer) {
            (None, Some(_)) => return Err(TokenError::ViewerWithoutAdmin),
            (Some(a), Some(v)) if a.matches(v.0.as_bytes()) => return Err(TokenError::SameTokens),
            _ => {}
        }
        Ok(Tokens { admin, viewer })
    }

    /// The admin token (the one this node also presents to the other nodes).
    pub fn admin(&self) -> Option<&Token> {
        self.admin.as_ref()
    }

    /// The scope of a request's `authorization` header value.
    fn scope_of(&self, authorization: Option<&[u8]>) -> Result<Scope, AdminError> {
        let Some(admin) = &self.admin else {
            return Ok(Scope::Admin);
        };
        let Some(value) = authorization else {
            return Err(AdminError::Unauthenticated("a bearer token is required"));
        };
        let presented = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "));
        match presented {
            Some(p) if admin.matches(p) => Ok(Scope::Admin),
            Some(p) if self.viewer.as_ref().is_some_and(|v| v.matches(p)) => Ok(Scope::Viewer),
            _ => Err(AdminError::Unauthenticated("wrong bearer token")),
        }
    }

    /// Whether a request to `path` with this `authorization` value may go through.
    pub fn check(&self, path: &str, authorization: Option<&[u8]>) -> Result<(), AdminError> {
        let granted = self.scope_of(authorization)?;
        let needed = required_scope(path);
        if granted >= needed {
            return Ok(());
        }
        let method = path.rsplit('/').next().unwrap_or(path).to_owned();
        tracing::debug!(%method, "admin API: viewer token refused on a write");
        Err(AdminError::PermissionDenied(method))
    }
}

/// Server side: a service (the admin API, reflection) behind the tokens. Each request's path is
/// looked up in [`METHOD_SCOPES`] and its token's scope compared with it before the service sees
/// it; a refusal is answered here with the typed status of [`AdminError`].
#[derive(Clone, Debug)]
pub struct Guard<S> {
    inner: S,
    tokens: Arc<Tokens>,
}

impl<S> Guard<S> {
    /// `inner` behind `tokens`.
    pub fn new(inner: S, tokens: Arc<Tokens>) -> Guard<S> {
        Guard { inner, tokens }
    }
}

impl<S> Service<http::Request<Body>> for Guard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<Ready<Result<http::Response<Body>, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let auth = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        match self.tokens.check(req.uri().path(), auth) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(e) => Either::Left(ready(Ok(Status::from(e).into_http()))),
        }
    }
}

impl<S: NamedService> NamedService for Guard<S> {
    const NAME: &'static str = S::NAME;
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

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn tokens_are_checked() {
        let t = Token::new("s3cret\n", "test").unwrap();
        let header = AddToken(Some(t.clone()))
            .call(Request::new(()))
            .unwrap()
            .metadata()
            .get("authorization")
            .unwrap()
            .as_bytes()
            .to_vec();
        assert_eq!(header, bearer("s3cret"));
        let tokens = Tokens::new(Some(t), None).unwrap();
        let hangup = "/medpool.admin.v1.MedpoolAdmin/HangupCall";
        assert!(tokens.check(hangup, Some(&header)).is_ok());
        let none = Status::from(tokens.check(hangup, None).unwrap_err());
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        let wrong = Status::from(tokens.check(hangup, Some(&bearer("s3cres"))).unwrap_err());
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert!(Tokens::default().check(hangup, None).is_ok());
        assert!(Token::new("  ", "t").is_err());
        assert!(Token::new("a b", "t").is_err());
    }

    #[test]
    fn a_viewer_reads_and_an_admin_writes() {
        let admin = Token::new("adm1n", "t").unwrap();
        let viewer = Token::new("v1ewer", "t").unwrap();
        let tokens = Tokens::new(Some(admin), Some(viewer)).unwrap();
        for (path, scope) in METHOD_SCOPES {
            assert!(tokens.check(path, Some(&bearer("adm1n"))).is_ok(), "{path}");
            let as_viewer = tokens.check(path, Some(&bearer("v1ewer")));
            match scope {
                Scope::Viewer => assert!(as_viewer.is_ok(), "{path}"),
                Scope::Admin => {
                    let s = Status::from(as_viewer.unwrap_err());
                    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{path}");
                    assert_eq!(
                        s.metadata()
                            .get(super::super::error::ERROR_KIND_KEY)
                            .and_then(|v| v.to_str().ok()),
                        Some("permission-denied")
                    );
                    assert!(s.message().contains(path.rsplit('/').next().unwrap()));
                }
            }
            assert_eq!(
                Status::from(tokens.check(path, Some(&bearer("nope"))).unwrap_err()).code(),
                tonic::Code::Unauthenticated
            );
        }
        // Fail closed: a method nobody listed needs the admin token.
        assert_eq!(
            required_scope("/medpool.admin.v1.MedpoolAdmin/New"),
            Scope::Admin
        );
        assert!(
            tokens
                .check(
                    "/medpool.admin.v1.MedpoolAdmin/New",
                    Some(&bearer("v1ewer"))
                )
                .is_err()
        );
        // A viewer token needs an admin token, and one of its own.
        let v = Token::new("v", "t").unwrap();
        assert!(matches!(
            Tokens::new(None, Some(v.clone())),
            Err(TokenError::ViewerWithoutAdmin)
        ));
        assert!(matches!(
            Tokens::new(Some(v.clone()), Some(v)),
            Err(TokenError::SameTokens)
        ));
    }

    /// Just enough of `google.protobuf.FileDescriptorSet` to list the services' methods.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Files {
        #[prost(message, repeated, tag = "1")]
        file: Vec<File>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct File {
        #[prost(string, tag = "2")]
        package: String,
        #[prost(message, repeated, tag = "6")]
        service: Vec<Svc>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Svc {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, repeated, tag = "2")]
        method: Vec<Method>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Method {
        #[prost(string, tag = "1")]
        name: String,
    }

    #[test]
    fn every_admin_method_is_in_the_table() {
        use prost::Message;
        let set = Files::decode(medpool_proto::admin::FILE_DESCRIPTOR_SET).unwrap();
        let mut paths = Vec::new();
        for f in &set.file {
            for s in &f.service {
                for m in &s.method {
                    paths.push(format!("/{}.{}/{}", f.package, s.name, m.name));
                }
            }
        }
        assert!(paths.len() >= 15, "{paths:?}");
        for p in &paths {
            assert!(
                METHOD_SCOPES.iter().any(|(q, _)| q == p),
                "{p} is missing from METHOD_SCOPES"
            );
        }
        for (q, _) in METHOD_SCOPES {
            assert!(
                q.starts_with("/grpc.reflection.") || paths.iter().any(|p| p == q),
                "{q} in METHOD_SCOPES is no method of the admin API"
            );
        }
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
