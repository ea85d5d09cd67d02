//! Configuration errors: where in which file, which field, and what is wrong with it.
//!
//! Every error that comes from the text of a file displays as
//! `FILE:LINE: FIELD.PATH: problem`, e.g.
//! `examples/medpool.toml:23: route[1].trunks[0]: unknown trunk "gw9"`. Array indices are
//! 0-based and name the tables in file order (`route[1]` is the second `[[route]]`).

use std::fmt;

use thiserror::Error;

/// Why a configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file name as given.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{at}: {message}")]
    Syntax {
        /// Where (no field path: the document could not be parsed).
        at: Location,
        /// The TOML parser's explanation.
        message: String,
    },
    /// The TOML is valid but does not have the shape of a configuration: an unknown key, a
    /// missing key, a value of the wrong type or an unknown enum word.
    #[error("{at}: {message}")]
    Shape {
        /// Where, with the field path of the offending key or value when known.
        at: Location,
        /// The deserialiser's explanation (names the key or the expected words).
        message: String,
    },
    /// A value has the right shape but is not acceptable.
    #[error("{at}: {problem}")]
    Invalid {
        /// Where, with the field path.
        at: Location,
        /// What is wrong.
        problem: Problem,
    },
}

impl ConfigError {
    /// The location in the file, when the error comes from its text.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { at, .. }
            | ConfigError::Shape { at, .. }
            | ConfigError::Invalid { at, .. } => Some(at),
        }
    }

    /// The semantic problem, for [`ConfigError::Invalid`].
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ConfigError::Invalid { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// A place in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file name as given to the loader.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The field path, e.g. `route[1].trunks[0]`; empty when unknown.
    pub field: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        Ok(())
    }
}

/// What is wrong with a value that has the right shape.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Problem {
    /// Two trunks share a name.
    #[error("duplicate trunk name {name:?} (first defined on line {first_line})")]
    DuplicateTrunk {
        /// The name.
        name: String,
        /// Line of the first trunk with that name.
        first_line: usize,
    },
    /// Two routes share a name.
    #[error("duplicate route name {name:?} (first defined on line {first_line})")]
    DuplicateRoute {
        /// The name.
        name: String,
        /// Line of the first route with that name.
        first_line: usize,
    },
    /// A route names a trunk that is not configured.
    #[error("unknown trunk {0:?}")]
    UnknownTrunk(String),
    /// A route lists the same trunk twice.
    #[error("trunk {0:?} is listed twice in this route")]
    TrunkListedTwice(String),
    /// A route has no trunks.
    #[error("a route needs at least one trunk")]
    NoTrunks,
    /// A `tls_*` field on a trunk that does not speak TLS.
    #[error("only for a trunk with transport = \"tls\"")]
    TlsOnly,
    /// A name is empty.
    #[error("must not be empty")]
    Empty,
    /// A regex does not compile.
    #[error("invalid regex {pattern:?}: {reason}")]
    BadRegex {
        /// The pattern as written.
        pattern: String,
        /// The regex compiler's explanation.
        reason: String,
    },
    /// A replacement names a capture group the pattern does not have.
    #[error("replacement {replace:?} refers to group ${group}, which the pattern does not have")]
    UnknownGroup {
        /// The replacement as written.
        replace: String,
        /// The group as referred to (number or name).
        group: String,
    },
    /// A port outside 1-65535.
    #[error("port {0} out of range 1-65535")]
    PortOutOfRange(i64),
    /// A SIP response code outside 300-699 where a failure code is expected.
    #[error("response code {0} out of range 300-699")]
    CodeOutOfRange(i64),
    /// A number outside its allowed range.
    #[error("{value} out of range {min}-{max}")]
    OutOfRange {
        /// The value written.
        value: i64,
        /// Smallest allowed.
        min: i64,
        /// Largest allowed.
        max: i64,
    },
    /// A known but not yet implemented choice.
    #[error("{0} is not yet supported")]
    NotYetSupported(String),
    /// `address` is neither an IP literal nor a host name.
    #[error("invalid address {0:?}: expected an IP address or a host name")]
    BadAddress(String),
    /// `advertised_address` is not `host:port`.
    #[error("invalid address {0:?}: expected \"host:port\" (IPv6 as \"[::1]:5060\")")]
    BadHostPort(String),
    /// Two trunks would claim the same source address and port.
    #[error("trunk {other:?} already matches requests from {source_address}")]
    AmbiguousSource {
        /// The trunk defined first.
        other: String,
        /// The contested source (`ip:port` or `ip:*`).
        source_address: String,
    },
    /// Two trunks name the same `local_port`.
    #[error("local port {port} is already trunk {other:?}'s (one port per trunk)")]
    LocalPortTaken {
        /// The trunk defined first.
        other: String,
        /// The port.
        port: u16,
    },
    /// `local_address` without `local_port`.
    #[error("local_address needs a local_port")]
    LocalAddressWithoutPort,
    /// `local_address` is not an IP address peers can send to.
    #[error("{0:?} is not an IP address peers can reach (no host names, no wildcard)")]
    BadLocalAddress(String),
    /// A trunk lists a usage that no route has.
    #[error("usage {0:?} is not the usage of any route")]
    UnknownUsage(String),
    /// A response code is mapped twice.
    #[error("response code {0} is mapped twice")]
    DuplicateResponseMapping(u16),
    /// `priority` written on a trunk.
    #[error(
        "priority is set per route (route.trunks = [{{ trunk = \"...\", priority = 1 }}]), not per trunk"
    )]
    PriorityIsPerRoute,
    /// A codec name that is not an SDP encoding name (`codecs`).
    #[error(
        "invalid codec {0:?}: expected an encoding name such as \"PCMU\" (no spaces, no /rate)"
    )]
    BadCodec(String),
    /// A codec listed twice (`codecs`).
    #[error("codec {0:?} is listed twice")]
    DuplicateCodec(String),
    /// Min-SE larger than the session interval.
    #[error("session_expires {session_expires} is below min_se {min_se}")]
    SessionExpiresBelowMinSe {
        /// The session interval.
        session_expires: u32,
        /// Min-SE.
        min_se: u32,
    },
}
