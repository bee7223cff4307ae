//! `agentmesh keys create|list|revoke`: API keys and the keys file, in the
//! manner of `htpasswd`.
//!
//! `create` checks every flag ([`create`]), makes a key, and prints the
//! plain key once with the `[[keys]]` entry to add to the keys file, or
//! appends the entry itself with `--file`. `list` reads the file; `revoke`
//! sets `revoked = true` on one entry. Every change of the file is written
//! to a temporary file beside it and renamed over it ([`file`]), keeping the
//! rest of its text (comments included), so a service reloading it never
//! sees half a file.

mod create;
mod file;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentmesh_auth::keys::file::{KeyEntry, KeyState};
use serde_json::json;

use crate::alerting::Output;
use crate::output::{one_line, quiet_on_broken_pipe, table};

pub(crate) use create::CreateArgs;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeysCommand {
    /// Make an API key: prints it once, and the entry for the keys file
    /// (or adds the entry to the file with --file).
    Create(CreateArgs),
    /// List the keys of a keys file (never the keys themselves: the file
    /// holds only their hashes).
    List {
        /// The keys file.
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
    },
    /// Revoke a key: sets `revoked = true` on its entry (services reload the
    /// file within seconds).
    Revoke {
        /// The key's id (am_live_XXXXXXXX), as `keys list` shows it.
        id: String,
        /// The keys file.
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
    },
}

pub(crate) fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Create(args) => create::create(&args),
        KeysCommand::List { file, output } => quiet_on_broken_pipe(list(&file, output)),
        KeysCommand::Revoke { id, file } => revoke(&id, &file),
    }
}

fn list(path: &Path, output: Output) -> anyhow::Result<ExitCode> {
    let keys = file::read(path)?.parsed.keys;
    let now = jiff::Timestamp::now();
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => {
            for key in &keys {
                writeln!(out, "{}", entry_json(key, now))?;
            }
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = keys.iter().map(|key| entry_row(key, now)).collect();
            write!(
                out,
                "{}",
                table(
                    &[
                        "ID", "TENANT", "SUBJECT", "SCOPES", "LABEL", "EXPIRES", "STATE"
                    ],
                    &rows
                )
            )?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn expires_text(key: &KeyEntry) -> String {
    key.expires
        .map_or_else(|| "never".to_owned(), crate::time::utc_text)
}

fn entry_row(key: &KeyEntry, now: jiff::Timestamp) -> Vec<String> {
    vec![
        key.id.clone(),
        if key.tenant.is_empty() {
            "(platform)".to_owned()
        } else {
            key.tenant.clone()
        },
        one_line(&key.subject),
        key.scopes.join(" "),
        one_line(&key.label),
        expires_text(key),
        key.state(now).as_str().to_owned(),
    ]
}

fn entry_json(key: &KeyEntry, now: jiff::Timestamp) -> serde_json::Value {
    json!({
        "id": key.id,
        "tenant": key.tenant,
        "subject": key.subject,
        "scopes": key.scopes,
        "label": key.label,
        "expires": key.expires.map(crate::time::utc_text),
        "agents": key.agents,
        "routes": key.routes,
        "tools": key.tools,
        "state": key.state(now).as_str(),
    })
}

fn revoke(id: &str, path: &Path) -> anyhow::Result<ExitCode> {
    if !agentmesh_auth::keys::is_key_id(id) {
        anyhow::bail!(
            "{id:?} is not a key id: ids look like am_live_ and 8 letters and digits (see \
             `agentmesh keys list --file {}`)",
            path.display()
        );
    }
    let current = file::read(path)?;
    let Some(entry) = current.parsed.keys.iter().find(|key| key.id == id) else {
        anyhow::bail!("{} has no key {id}", path.display());
    };
    if entry.state(jiff::Timestamp::now()) == KeyState::Revoked {
        writeln!(std::io::stdout(), "{id} was already revoked")?;
        return Ok(ExitCode::SUCCESS);
    }
    let text = file::with_revoked(&current.text, id)?;
    file::replace(&current, &text)?;
    writeln!(
        std::io::stdout(),
        "revoked {id} in {} (services refuse it once they reload the file, within seconds)",
        path.display()
    )?;
    Ok(ExitCode::SUCCESS)
}
