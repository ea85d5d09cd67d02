//! `medpool ctl config …`: get, validate, apply (with the change list; asks first on a terminal).

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;

use clap::Subcommand;
use medpool_proto::admin as pb;
use serde_json::{Value, json};

use super::conn::{Ctl, CtlError};
use super::output::{print_json, word};
use crate::admin::diff;

/// `medpool ctl config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration (TOML) and its version.
    Get,
    /// Validate a file the way start-up does and show what it would change.
    Validate {
        /// The TOML file.
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Validate a file, show what it changes and make it the pool's configuration.
    Apply {
        /// The TOML file.
        #[arg(short, long)]
        file: PathBuf,
        /// Apply only if the pool is at this version (default: the version the diff was made
        /// against; 0: only if the pool has no configuration).
        #[arg(long)]
        expected_version: Option<u64>,
        /// Do not ask for confirmation on a terminal.
        #[arg(short, long)]
        yes: bool,
    },
}

impl Ctl {
    /// Runs one `config` subcommand.
    pub(super) async fn config(&self, command: ConfigCommand) -> Result<(), CtlError> {
        match command {
            ConfigCommand::Get => self.config_get().await,
            ConfigCommand::Validate { file } => self.config_validate(file).await,
            ConfigCommand::Apply {
                file,
                expected_version,
                yes,
            } => self.config_apply(file, expected_version, yes).await,
        }
    }

    async fn config_get(&self) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let r = self
            .call(false, c.get_config(pb::GetConfigRequest {}))
            .await?;
        if self.json() {
            print_json(&json!({"version": r.version, "body": r.body}));
        } else {
            match r.version {
                Some(v) => out!("# pool configuration version {v}"),
                None => out!("# the pool has no configuration yet"),
            }
            outn!("{}", r.body);
            if !r.body.ends_with('\n') && !r.body.is_empty() {
                out!();
            }
        }
        Ok(())
    }

    fn read_file(file: &std::path::Path) -> Result<String, CtlError> {
        std::fs::read_to_string(file)
            .map_err(|e| CtlError::Usage(format!("{}: {e}", file.display())))
    }

    async fn config_validate(&self, file: PathBuf) -> Result<(), CtlError> {
        let body = Self::read_file(&file)?;
        let mut c = self.client.clone();
        let r = self
            .call(
                false,
                c.validate_config(pb::ValidateConfigRequest {
                    body,
                    name: file.display().to_string(),
                }),
            )
            .await?;
        if self.json() {
            print_json(&json!({
                "valid": true,
                "trunks": r.trunks,
                "routes": r.routes,
                "diff": r.diff.iter().map(change_json).collect::<Vec<_>>(),
            }));
        } else {
            out!(
                "{}: valid ({} trunks, {} routes)",
                file.display(),
                r.trunks,
                r.routes
            );
            print_diff(&r.diff, "against the current configuration");
        }
        Ok(())
    }

    async fn config_apply(
        &self,
        file: PathBuf,
        expected: Option<u64>,
        yes: bool,
    ) -> Result<(), CtlError> {
        let body = Self::read_file(&file)?;
        let name = file.display().to_string();
        let mut c = self.client.clone();
        let current = self
            .call(false, c.get_config(pb::GetConfigRequest {}))
            .await?;
        let expected = expected.or(Some(current.version.unwrap_or(0)));
        let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        if interactive && !yes && !self.json() {
            let v = self
                .call(
                    false,
                    c.validate_config(pb::ValidateConfigRequest {
                        body: body.clone(),
                        name: name.clone(),
                    }),
                )
                .await?;
            print_diff(&v.diff, "to apply");
            outn!("apply to the pool? [y/N] ");
            let _ = std::io::stdout().flush();
            let mut answer = String::new();
            let _ = std::io::stdin().read_line(&mut answer);
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                out!("nothing applied");
                return Ok(());
            }
        }
        let r = self
            .call(
                true,
                c.apply_config(pb::ApplyConfigRequest {
                    body,
                    name,
                    expected_version: expected,
                }),
            )
            .await?;
        if self.json() {
            print_json(&json!({
                "version": r.version,
                "diff": r.diff.iter().map(change_json).collect::<Vec<_>>(),
            }));
        } else {
            out!(
                "configuration version {} applied (was {})",
                r.version,
                current
                    .version
                    .map_or_else(|| "none".to_owned(), |v| v.to_string())
            );
            print_diff(&r.diff, "made");
        }
        Ok(())
    }
}

fn print_diff(changes: &[pb::ConfigChange], what: &str) {
    if changes.is_empty() {
        out!("no change {what}");
        return;
    }
    out!("changes {what} (+ added, - removed, ~ changed):");
    for line in diff::render(changes) {
        out!("  {line}");
    }
}

fn change_json(c: &pb::ConfigChange) -> Value {
    json!({
        "kind": word(c.kind().as_str_name(), "CHANGE_KIND_"),
        "item": c.item,
        "details": c.details,
    })
}
