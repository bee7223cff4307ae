//! `agentmesh audit query|export|report|verify`: the audit log from the
//! command line.
//!
//! Each command talks to the audit service at `--audit` (`AGENTMESH_AUDIT`);
//! with none, it starts the audit service alone in this process on a free
//! loopback port over the data directory's database, waits until it is
//! SERVING, runs, and stops it. A failed call prints `error: CODE: message`
//! with the field violations the server named, and exits non-zero.
//!
//! Layout: `flags` (the clap arguments) → `filter` (the TIME parser and the
//! `EventFilter` the selectors ask for) → `connection` (the service, remote
//! or embedded) → one module per command: `query` (with `events`, one line
//! per event), `export`, `report` (the report table) and `verify` (the
//! verdict). The pieces that decide what is asked and shown are plain
//! functions, tested beside them.

use std::process::ExitCode;

mod connection;
mod events;
mod export;
mod filter;
mod flags;
mod query;
mod report;
mod verify;

pub(crate) use flags::AuditCommand;

use connection::Connection;

pub(crate) async fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    let target = match &command {
        AuditCommand::Query(args) => &args.target,
        AuditCommand::Export(args) => &args.target,
        AuditCommand::Report(args) => &args.target,
        AuditCommand::Verify(args) => &args.target,
    };
    let connection = Connection::open(target).await?;
    let client = connection.client();
    let result = match command {
        AuditCommand::Query(args) => query::query(client, args).await,
        AuditCommand::Export(args) => export::export(client, args).await,
        AuditCommand::Report(args) => report::report(client, args).await,
        AuditCommand::Verify(args) => verify::verify(client, args).await,
    };
    connection.close().await;
    result
}
