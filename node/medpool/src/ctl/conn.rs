//! Reaching a node's admin API and what a failure means: TLS and the bearer token, one RPC with a
//! time limit, and the exit code of every way a command can fail (the table in [`super`]).

use std::path::PathBuf;
use std::time::Duration;

use medpool_proto::admin::medpool_admin_client::MedpoolAdminClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::output::Output;
use crate::admin::auth::{AddToken, SecretText, Token};
use crate::admin::error::{ERROR_KIND_KEY, FIELD_PATH_KEY};

/// How a command ended, as an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// Bad arguments or file.
    Usage = 2,
    /// No answer, or no leader.
    Unreachable = 3,
    /// Refused: nothing changed.
    Refused = 4,
    /// May or may not have been applied.
    Unknown = 5,
}

/// Why a command failed (printed on stderr).
#[derive(Debug, thiserror::Error)]
pub(super) enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach {server}: {why}")]
    Unreachable { server: String, why: String },
    #[error("{}", describe(.0))]
    Status(Status, bool),
    #[error("no answer within {0} s{suffix}", suffix = if *.1 { "; the change may or may not have been applied" } else { "" })]
    Timeout(u64, bool),
}

fn describe(s: &Status) -> String {
    let mut text = s.message().to_owned();
    if let Some(field) = s
        .metadata()
        .get(FIELD_PATH_KEY)
        .and_then(|v| v.to_str().ok())
        && !text.contains(field)
    {
        text.push_str(&format!(" (field {field})"));
    }
    let label = match s.code() {
        Code::InvalidArgument | Code::FailedPrecondition => "refused",
        Code::NotFound => "not found",
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission denied",
        Code::Unavailable => "unavailable",
        Code::Unknown => "outcome unknown",
        _ => "error",
    };
    if text.starts_with(label) {
        text
    } else {
        format!("{label}: {text}")
    }
}

impl CtlError {
    pub(super) fn exit(&self) -> Exit {
        match self {
            CtlError::Usage(_) => Exit::Usage,
            CtlError::Unreachable { .. } => Exit::Unreachable,
            CtlError::Timeout(_, write) => {
                if *write {
                    Exit::Unknown
                } else {
                    Exit::Unreachable
                }
            }
            CtlError::Status(s, write) => match s.code() {
                Code::Unavailable => Exit::Unreachable,
                Code::DeadlineExceeded | Code::Cancelled if !write => Exit::Unreachable,
                Code::InvalidArgument
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::Unauthenticated
                | Code::PermissionDenied
                | Code::AlreadyExists
                | Code::OutOfRange => Exit::Refused,
                _ => Exit::Unknown,
            },
        }
    }
}

type Client = MedpoolAdminClient<InterceptedService<Channel, AddToken>>;

/// A connected client and how to print.
pub(super) struct Ctl {
    pub(super) client: Client,
    pub(super) server: String,
    pub(super) output: Output,
    pub(super) timeout: Duration,
}

/// Where and how to connect (the global flags of `medpool ctl`).
pub(super) struct Connect<'a> {
    /// `host:port`, `http://…` or `https://…`.
    pub server: &'a str,
    /// File holding the bearer token.
    pub token_file: Option<&'a std::path::Path>,
    /// The bearer token.
    pub token: Option<&'a SecretText>,
    /// CA certificate; turns TLS on.
    pub tls_ca: Option<&'a PathBuf>,
    /// Name expected in the server's certificate.
    pub tls_domain: Option<&'a String>,
    /// Output format.
    pub output: Output,
    /// Longest wait for an answer, in seconds.
    pub timeout: u64,
}

pub(super) fn connect(args: &Connect) -> Result<Ctl, CtlError> {
    let token = Token::load(args.token_file, args.token.as_ref().map(|t| t.0.as_str()))
        .map_err(|e| CtlError::Usage(e.to_string()))?;
    let (tls, rest) = match args.server.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        Some((scheme, _)) => {
            return Err(CtlError::Usage(format!(
                "--server: unknown scheme {scheme:?} (http or https)"
            )));
        }
        None => (false, args.server),
    };
    let tls = tls || args.tls_ca.is_some();
    let uri = format!("{}://{rest}", if tls { "https" } else { "http" });
    let usage =
        |e: &dyn std::fmt::Display| CtlError::Usage(format!("--server {}: {e}", args.server));
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| usage(&e))?
        .connect_timeout(Duration::from_secs(args.timeout.clamp(1, 5)));
    if tls {
        let mut cfg = ClientTlsConfig::new();
        if let Some(ca) = &args.tls_ca {
            let pem = std::fs::read(ca)
                .map_err(|e| CtlError::Usage(format!("--tls-ca {}: {e}", ca.display())))?;
            cfg = cfg.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(d) = &args.tls_domain {
            cfg = cfg.domain_name(d.as_str());
        }
        endpoint = endpoint.tls_config(cfg).map_err(|e| usage(&e))?;
    }
    let channel = endpoint.connect_lazy();
    Ok(Ctl {
        client: MedpoolAdminClient::with_interceptor(channel, AddToken(token)),
        server: args.server.to_owned(),
        output: args.output,
        timeout: Duration::from_secs(args.timeout.max(1)),
    })
}

impl Ctl {
    /// One RPC with the command's timeout; `write` says whether an unknown outcome is possible.
    pub(super) async fn call<T, F>(&self, write: bool, f: F) -> Result<T, CtlError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match tokio::time::timeout(self.timeout, f).await {
            Err(_) => Err(CtlError::Timeout(self.timeout.as_secs(), write)),
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) if s.code() == Code::Unavailable && is_transport(&s) => {
                Err(CtlError::Unreachable {
                    server: self.server.clone(),
                    why: s.message().to_owned(),
                })
            }
            Ok(Err(s)) => Err(CtlError::Status(s, write)),
        }
    }

    pub(super) fn json(&self) -> bool {
        self.output == Output::Json
    }
}

/// Whether an `UNAVAILABLE` came from the transport (no connection) rather than the server: every
/// status the admin server sends names its error kind in [`ERROR_KIND_KEY`] (e.g. `no-leader`); one
/// made by the client when it could not connect carries none. (Never told apart by the text.)
fn is_transport(s: &Status) -> bool {
    s.code() == Code::Unavailable && s.metadata().get(ERROR_KIND_KEY).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let refused = CtlError::Status(Status::failed_precondition("stale"), true);
        assert_eq!(refused.exit(), Exit::Refused);
        let unknown = CtlError::Status(Status::unknown("lost"), true);
        assert_eq!(unknown.exit(), Exit::Unknown);
        let unavailable = CtlError::Status(Status::unavailable("no leader"), true);
        assert_eq!(unavailable.exit(), Exit::Unreachable);
        assert_eq!(CtlError::Timeout(5, true).exit(), Exit::Unknown);
        assert_eq!(CtlError::Timeout(5, false).exit(), Exit::Unreachable);
        assert_eq!(CtlError::Usage("x".into()).exit(), Exit::Usage);
    }

    #[test]
    fn an_unavailable_answer_of_the_server_is_not_a_transport_failure() {
        let local = Status::unavailable("tcp connect error");
        assert!(is_transport(&local));
        let mut from_server = Status::unavailable("whatever the text");
        from_server
            .metadata_mut()
            .insert(ERROR_KIND_KEY, "no-leader".parse().unwrap());
        assert!(!is_transport(&from_server));
        let mut headers_only = Status::unavailable("tcp connect error");
        headers_only
            .metadata_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        assert!(
            is_transport(&headers_only),
            "only the kind says the server answered"
        );
        assert!(!is_transport(&Status::unknown("lost")));
    }
}
