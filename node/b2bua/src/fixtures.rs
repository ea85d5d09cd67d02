//! Pool configurations for unit tests, shared by the configuration, source-policy and DNS-directory
//! tests: a `[[trunk]]` table written by one function instead of TOML copied from test to test, the
//! mutual-TLS trunk named by DNS that several of them check, and the loading of a test file.

use crate::config::PoolConfig;

/// A `[[trunk]]` table (after a blank line): `name` at `address` on `side` (`internal` or
/// `gateway`), then each of `extra`, a `key = value` line.
pub(crate) fn trunk(name: &str, address: &str, side: &str, extra: &[&str]) -> String {
    let mut table =
        format!("\n[[trunk]]\nname = \"{name}\"\naddress = \"{address}\"\nside = \"{side}\"\n");
    for line in extra {
        table.push_str(line);
        table.push('\n');
    }
    table
}

/// The internal trunk `fe-pool`, named by DNS (`fepool.example.com`), over TLS, whose clients must
/// present a certificate naming `fe.example.com`; then each of `extra`.
pub(crate) fn mutual_tls_trunk_named_by_dns(extra: &[&str]) -> String {
    let tls = [
        "transport = \"tls\"",
        "tls_client_names = [\"fe.example.com\"]",
    ];
    trunk(
        "fe-pool",
        "fepool.example.com",
        "internal",
        &[&tls[..], extra].concat(),
    )
}

/// `text` loaded as a pool configuration (file name `t.toml`).
///
/// # Panics
/// When it does not load: the test's fixture is wrong.
pub(crate) fn load(text: &str) -> PoolConfig {
    PoolConfig::from_toml_str(text, "t.toml").expect("the test's configuration loads")
}
