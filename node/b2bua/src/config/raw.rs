//! The configuration file as written: serde structs that mirror the TOML keys one to one.
//!
//! Unknown keys are refused here (`deny_unknown_fields`); numbers are read as `i64` so that
//! validation, not serde, explains an out-of-range value; defaults are filled in by
//! validation (`super::validate`), which also knows where in the file each value was.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::model::{Encryption, MediaMode, ReferPolicy, Side, UnknownSource};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub node: RawNode,
    #[serde(default)]
    pub trunk: Vec<RawTrunk>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
}

/// `[node]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub max_calls: Option<i64>,
    pub max_tries: Option<i64>,
    pub unknown_source: Option<UnknownSource>,
    pub retry_after: Option<i64>,
    pub advertised_address: Option<String>,
    pub dns_stale_max: Option<i64>,
    pub local_calls: Option<bool>,
}

/// The transports a file may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawTransport {
    Udp,
    Tcp,
    Tls,
}

/// `[[trunk]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrunk {
    pub name: String,
    pub address: String,
    pub port: Option<i64>,
    pub transport: Option<RawTransport>,
    pub side: Side,
    pub match_any_port: Option<bool>,
    pub max_calls: Option<i64>,
    pub max_cps: Option<i64>,
    pub rate: Option<i64>,
    pub burst: Option<i64>,
    pub failover_codes: Option<Vec<i64>>,
    pub fast_failover_ms: Option<i64>,
    pub refer: Option<ReferPolicy>,
    pub session_expires: Option<i64>,
    pub min_se: Option<i64>,
    pub forward_pai: Option<bool>,
    pub forward_history_info: Option<bool>,
    pub options_interval_ms: Option<i64>,
    pub down_after: Option<i64>,
    pub up_after: Option<i64>,
    pub weight: Option<i64>,
    /// Accepted only to explain that priority belongs to routes.
    pub priority: Option<i64>,
    pub usages: Option<Vec<String>>,
    #[serde(default)]
    pub normalize: Vec<RawRule>,
    #[serde(default)]
    pub called_out: Vec<RawRule>,
    #[serde(default)]
    pub calling_out: Vec<RawRule>,
    #[serde(default)]
    pub response_map: Vec<RawResponseRule>,
    pub media: Option<MediaMode>,
    pub codecs: Option<Vec<String>>,
    pub media_timeout: Option<i64>,
    pub local_port: Option<i64>,
    pub local_address: Option<String>,
    pub tls_name: Option<String>,
    pub tls_ca: Option<String>,
    pub tls_client_ca: Option<String>,
    pub tls_client_names: Option<Vec<String>>,
    pub encryption: Option<Encryption>,
}

/// `{ pattern = "...", replace = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub pattern: String,
    pub replace: String,
}

/// `{ from = 486, to = 480 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResponseRule {
    pub from: i64,
    pub to: i64,
}

/// `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub name: String,
    pub pattern: String,
    #[serde(default)]
    pub except: Vec<String>,
    pub usage: Option<String>,
    pub trunks: Vec<RawTarget>,
}

/// One entry of `route.trunks`: `"gw1"` or `{ trunk = "gw1", priority = 1 }`.
#[derive(Debug)]
pub(super) struct RawTarget {
    pub trunk: String,
    pub priority: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTargetTable {
    trunk: String,
    priority: Option<i64>,
}

impl<'de> Deserialize<'de> for RawTarget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TargetVisitor;

        impl<'de> Visitor<'de> for TargetVisitor {
            type Value = RawTarget;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a trunk name or a table { trunk = "name", priority = 1 }"#)
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<RawTarget, E> {
                Ok(RawTarget {
                    trunk: name.to_owned(),
                    priority: None,
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawTarget, A::Error> {
                let table =
                    RawTargetTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawTarget {
                    trunk: table.trunk,
                    priority: table.priority,
                })
            }
        }

        deserializer.deserialize_any(TargetVisitor)
    }
}
