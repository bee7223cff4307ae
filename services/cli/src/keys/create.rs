//! `agentmesh keys create`: the flags checked one by one (each error names
//! its flag), the key made, the entry written or printed, the key printed
//! once.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use agentmesh_auth::ScopeSet;
use agentmesh_auth::keys::ApiKey;
use agentmesh_auth::keys::file::{KeyEntry, KeysFile};
use agentmesh_kit::ident::{IDENTIFIER_RULE, is_identifier};
use jiff::Timestamp;
use serde_json::json;

use super::file;
use crate::alerting::Output;

/// The longest subject and label, in characters.
const MAX_TEXT_CHARS: usize = 256;

#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// The tenant the key acts in (letters, digits, `_`, `-`).
    #[arg(long, required_unless_present = "platform")]
    tenant: Option<String>,
    /// A key of no tenant, for services and platform operators (with
    /// `admin`, it reads across tenants).
    #[arg(long, conflicts_with = "tenant")]
    platform: bool,
    /// Who or what holds the key (a person, a pipeline, a service).
    #[arg(long)]
    subject: String,
    /// What the key may do, space- or comma-separated (see `agentmesh auth
    /// scopes`), e.g. "runs:read runs:write".
    #[arg(long)]
    scopes: String,
    /// A note for people (what the key is for).
    #[arg(long, default_value = "")]
    label: String,
    /// When the key stops working: an RFC 3339 time
    /// (2027-01-01T00:00:00Z), a date (2027-01-01, midnight UTC) or a
    /// duration from now (90d, 12h).
    #[arg(long, value_name = "TIME|DURATION")]
    expires: Option<String>,
    /// The only agent profiles the key may start runs with (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    agents: Option<Vec<String>>,
    /// The only gateway routes the key may call (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    routes: Option<Vec<String>>,
    /// The only tools the key may call (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    tools: Option<Vec<String>>,
    /// The environment in the key's prefix (am_<env>_…): live, test, …
    #[arg(long, default_value = "live")]
    env: String,
    /// Add the entry to this keys file (made when missing) instead of only
    /// printing it.
    #[arg(long, short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,
    /// Output format (json: one object with the key, its id and the entry).
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// The entry `args` ask for, for `key`, each flag checked.
fn entry_of(args: &CreateArgs, key: &ApiKey, now: Timestamp) -> anyhow::Result<KeyEntry> {
    let tenant = match (&args.tenant, args.platform) {
        (Some(tenant), false) => {
            if !is_identifier(tenant) {
                anyhow::bail!("--tenant {tenant:?}: {IDENTIFIER_RULE}");
            }
            tenant.as_str()
        }
        (None, true) => "",
        _ => anyhow::bail!("give --tenant NAME, or --platform for a key of no tenant"),
    };
    let subject = checked_text("--subject", &args.subject, false)?;
    let scopes =
        ScopeSet::parse_list(&args.scopes).map_err(|err| anyhow::anyhow!("--scopes: {err}"))?;
    if scopes.is_empty() {
        anyhow::bail!(
            "--scopes: name at least one scope, e.g. \"runs:read runs:write\" (`agentmesh auth \
             scopes` lists what each call needs)"
        );
    }
    let mut entry = KeyEntry::new(key, tenant, subject, scopes);
    entry.label = checked_text("--label", &args.label, true)?.to_owned();
    entry.expires = args
        .expires
        .as_deref()
        .map(|text| expiry(text, now))
        .transpose()?;
    entry.agents.clone_from(&args.agents);
    entry.routes.clone_from(&args.routes);
    entry.tools.clone_from(&args.tools);
    // The file's own checks, for the allow-lists' names; the field they
    // name is the flag.
    KeysFile {
        keys: vec![entry.clone()],
        ..KeysFile::default()
    }
    .check()
    .map_err(|err| {
        let field = err.at.rsplit('.').next().unwrap_or_default();
        anyhow::anyhow!("--{field}: {}", err.problem)
    })?;
    Ok(entry)
}

/// A subject or label: one line of text, at most 256 characters. A subject
/// travels in a header, so it is printable ASCII.
fn checked_text<'a>(flag: &str, text: &'a str, may_be_empty: bool) -> anyhow::Result<&'a str> {
    let text = text.trim();
    if text.is_empty() && !may_be_empty {
        anyhow::bail!("{flag} must not be empty");
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        anyhow::bail!("{flag} is longer than {MAX_TEXT_CHARS} characters");
    }
    let header_safe = flag == "--subject";
    if text
        .chars()
        .any(|c| c.is_control() || (header_safe && !(c.is_ascii_graphic() || c == ' ')))
    {
        anyhow::bail!(
            "{flag} {text:?} has {}",
            if header_safe {
                "characters other than printable ASCII (it travels in a header)"
            } else {
                "control characters (it must be one line)"
            }
        );
    }
    Ok(text)
}

/// The expiry `text` names, which must be in the future.
fn expiry(text: &str, now: Timestamp) -> anyhow::Result<Timestamp> {
    let text = text.trim();
    let at = if let Ok(at) = text.parse::<Timestamp>() {
        at
    } else if let Ok(date) = text.parse::<jiff::civil::Date>() {
        date.to_zoned(jiff::tz::TimeZone::UTC)
            .map_err(|err| anyhow::anyhow!("--expires {text:?}: {err}"))?
            .timestamp()
    } else if let Some(duration) = crate::time::parse_duration(text) {
        now.checked_add(duration)
            .and_then(|at| at.round(jiff::Unit::Second))
            .map_err(|_| anyhow::anyhow!("--expires {text:?} is too far away"))?
    } else {
        anyhow::bail!(
            "--expires {text:?}: use an RFC 3339 time (2027-01-01T00:00:00Z), a date \
             (2027-01-01) or a duration from now (90d, 12h)"
        );
    };
    if at <= now {
        anyhow::bail!(
            "--expires {text:?} is not in the future ({})",
            crate::time::utc_text(at)
        );
    }
    Ok(at)
}

pub(super) fn create(args: &CreateArgs) -> anyhow::Result<ExitCode> {
    let key = ApiKey::generate(&args.env).map_err(|err| anyhow::anyhow!("--env: {err}"))?;
    let entry = entry_of(args, &key, Timestamp::now())?;
    // The file first: when it cannot be written, no key was handed out.
    if let Some(path) = &args.file {
        let current = file::read_or_empty(path)?;
        let text = file::with_entry(&current, &entry)?;
        file::replace(&current, &text)?;
    }
    let mut out = std::io::stdout().lock();
    match args.output {
        Output::Json => writeln!(
            out,
            "{}",
            json!({
                "key": key.expose(),
                "id": entry.id,
                "file": args.file.as_ref().map(|path| path.display().to_string()),
                "entry": entry,
            })
        )?,
        Output::Table => {
            writeln!(
                out,
                "API key (shown only this once: it cannot be shown again, the keys file keeps \
                 only its hash; store it now):\n\n    {}\n",
                key.expose()
            )?;
            match &args.file {
                Some(path) => writeln!(
                    out,
                    "Added {} to {} (services reload it within seconds):\n",
                    entry.id,
                    path.display()
                )?,
                None => writeln!(
                    out,
                    "Add this entry to the keys file (or run with --file FILE to add it):\n"
                )?,
            }
            write!(out, "{}", entry.to_toml())?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: CreateArgs,
    }

    fn parse(flags: &[&str]) -> CreateArgs {
        Cli::try_parse_from(std::iter::once("create").chain(flags.iter().copied()))
            .unwrap()
            .args
    }

    fn now() -> Timestamp {
        "2026-06-01T00:00:00Z".parse().unwrap()
    }

    fn error(flags: &[&str]) -> String {
        let key = ApiKey::generate("test").unwrap();
        entry_of(&parse(flags), &key, now())
            .unwrap_err()
            .to_string()
    }

    const BASE: [&str; 6] = [
        "--tenant",
        "acme",
        "--subject",
        "ci pipeline",
        "--scopes",
        "runs:read, runs:write",
    ];

    #[test]
    fn every_flag_lands_in_the_entry() {
        let key = ApiKey::generate("test").unwrap();
        let mut flags = BASE.to_vec();
        flags.extend([
            "--label",
            "CI",
            "--expires",
            "90d",
            "--agents",
            "support,triage",
            "--tools",
            "calculator",
        ]);
        let entry = entry_of(&parse(&flags), &key, now()).unwrap();
        assert_eq!(entry.id, key.id());
        assert_eq!(entry.sha256, key.hash().to_hex());
        assert_eq!(entry.tenant, "acme");
        assert_eq!(entry.subject, "ci pipeline");
        assert_eq!(entry.scopes, ["runs:read", "runs:write"]);
        assert_eq!(entry.label, "CI");
        assert_eq!(entry.expires, Some("2026-08-30T00:00:00Z".parse().unwrap()));
        assert_eq!(
            entry.agents,
            Some(vec!["support".to_owned(), "triage".to_owned()])
        );
        assert_eq!(entry.routes, None);
        assert_eq!(entry.tools, Some(vec!["calculator".to_owned()]));

        let platform = parse(&["--platform", "--subject", "ops", "--scopes", "admin"]);
        assert_eq!(entry_of(&platform, &key, now()).unwrap().tenant, "");
        for (text, expected) in [
            ("2027-01-01T00:00:00Z", "2027-01-01T00:00:00Z"),
            ("2027-01-01", "2027-01-01T00:00:00Z"),
            ("12h", "2026-06-01T12:00:00Z"),
        ] {
            assert_eq!(
                expiry(text, now()).unwrap(),
                expected.parse::<Timestamp>().unwrap()
            );
        }
    }

    #[test]
    fn bad_flags_are_named_with_what_to_do() {
        let with = |flag: &str, value: &str| {
            let mut flags = BASE.to_vec();
            if let Some(index) = flags.iter().position(|f| *f == flag) {
                flags[index + 1] = value;
            } else {
                flags.extend([flag, value]);
            }
            error(&flags)
        };
        let err = with("--scopes", "runs:read runs:erase");
        assert!(
            err.starts_with("--scopes: unknown scope \"runs:erase\""),
            "{err}"
        );
        assert!(err.contains("runs:write") && err.contains("admin"), "{err}");
        assert!(with("--scopes", " ").contains("at least one scope"));
        assert!(with("--tenant", "acme corp").starts_with("--tenant \"acme corp\""));
        assert!(with("--subject", "").starts_with("--subject must not be empty"));
        assert!(with("--subject", "zoë").contains("printable ASCII"));
        assert!(with("--label", "a\u{7}b").contains("control characters"));
        let err = with("--expires", "2020-01-01T00:00:00Z");
        assert!(err.contains("not in the future"), "{err}");
        let err = with("--expires", "soon");
        assert!(err.contains("RFC 3339") && err.contains("90d"), "{err}");
        let err = with("--tools", "calculator,a;b");
        assert!(err.starts_with("--tools: \"a;b\""), "{err}");
        assert!(
            Cli::try_parse_from(["create", "--subject", "s", "--scopes", "admin"]).is_err(),
            "a tenant or --platform is required"
        );
        assert!(
            Cli::try_parse_from([
                "create",
                "--tenant",
                "a",
                "--platform",
                "--subject",
                "s",
                "--scopes",
                "admin"
            ])
            .is_err()
        );
    }
}
