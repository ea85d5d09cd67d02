//! The one rule for the environment of a child `medpool` process: it inherits the caller's
//! environment except every `MEDPOOL_*` and `OTEL_*` variable, so that a developer's shell (a
//! `MEDPOOL_ADMIN_TOKEN`, an `OTEL_EXPORTER_OTLP_ENDPOINT`, a `MEDPOOL_CONFIG`) never changes what a
//! demo or a test starts: its flags decide, and a test that wants a variable sets it on the command
//! afterwards. `NO_COLOR=1` keeps logs plain text.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

/// Prefixes of the variables a child never inherits.
pub const CLEARED_PREFIXES: [&str; 2] = ["MEDPOOL_", "OTEL_"];

/// Whether a variable of the caller's environment is withheld from a child.
pub fn is_cleared(key: &OsStr) -> bool {
    let key = key.to_string_lossy();
    CLEARED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// `bin` as a command with the rule applied (and stdin closed): add arguments, variables and
/// output redirections, then spawn.
pub fn medpool_command(bin: impl AsRef<Path>) -> Command {
    let mut cmd = Command::new(bin.as_ref());
    clear(&mut cmd);
    cmd.env("NO_COLOR", "1").stdin(Stdio::null());
    cmd
}

/// Applies the rule to an existing command.
pub fn clear(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if is_cleared(&k) {
            cmd.env_remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medpool_and_otel_variables_are_withheld() {
        assert!(is_cleared(OsStr::new("MEDPOOL_ADMIN_TOKEN")));
        assert!(is_cleared(OsStr::new("MEDPOOL_CONFIG")));
        assert!(is_cleared(OsStr::new("OTEL_EXPORTER_OTLP_ENDPOINT")));
        assert!(!is_cleared(OsStr::new("PATH")));
        assert!(!is_cleared(OsStr::new("HOME")));
    }
}
