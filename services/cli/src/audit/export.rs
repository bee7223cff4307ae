//! `agentmesh audit export`: the matching events as the audit service
//! writes them (CSV or JSON Lines, oldest first), copied chunk by chunk to a
//! file or stdout as they stream in.

use std::io::{ErrorKind, Write};
use std::path::Path;
use std::process::ExitCode;

use crate::credential::CliChannel;
use agentmesh_proto::audit::v1::{self as pb, audit_service_client::AuditServiceClient};
use anyhow::Context as _;
use tonic::Streaming;

use super::filter::build_filter;
use super::flags::{ExportArgs, ExportFormat};
use crate::commands::print_status;

pub(super) async fn export(
    mut client: AuditServiceClient<CliChannel>,
    args: ExportArgs,
) -> anyhow::Result<ExitCode> {
    let filter = build_filter(&args.selectors, args.range.since, args.range.until)
        .map_err(anyhow::Error::msg)?;
    let format = match args.format {
        ExportFormat::Csv => pb::ExportFormat::Csv,
        ExportFormat::Jsonl => pb::ExportFormat::Jsonl,
    };
    let mut stream = match client
        .export(pb::ExportRequest {
            filter: Some(filter),
            format: format.into(),
            order: pb::SortOrder::Unspecified.into(),
        })
        .await
    {
        Ok(stream) => stream.into_inner(),
        Err(status) => return Ok(print_status(&status)),
    };
    // The file is created once the first chunk is in, so that a refused
    // export leaves no empty file behind.
    let first = match stream.message().await {
        Ok(first) => first,
        Err(status) => return Ok(print_status(&status)),
    };
    let output = args.output.as_deref();
    let mut sink: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout()),
    };
    let copied = copy(&mut stream, first, &mut sink, output.is_none()).await?;
    if let Copied::ReaderGone = copied {
        return Ok(ExitCode::SUCCESS);
    }
    sink.flush().context("cannot write the export")?;
    drop(sink);
    Ok(finish(copied, output))
}

/// How a copy ended.
enum Copied {
    /// The stream ended: all of the export is written.
    All { events: i64 },
    /// The server broke the stream off after `events` events.
    Broken { events: i64, status: tonic::Status },
    /// Stdout was closed early (`| head`): a quiet end.
    ReaderGone,
}

/// Writes `first` and each chunk after it to `sink`; `to_stdout` flushes each
/// chunk as it arrives (a file is flushed at the end).
async fn copy(
    stream: &mut Streaming<pb::ExportResponse>,
    first: Option<pb::ExportResponse>,
    sink: &mut dyn Write,
    to_stdout: bool,
) -> anyhow::Result<Copied> {
    let mut events: i64 = 0;
    let mut next = first;
    while let Some(chunk) = next {
        events = events.saturating_add(chunk.event_count);
        let written = sink
            .write_all(&chunk.data)
            .and_then(|()| if to_stdout { sink.flush() } else { Ok(()) });
        if let Err(err) = written {
            if to_stdout && err.kind() == ErrorKind::BrokenPipe {
                return Ok(Copied::ReaderGone);
            }
            return Err(anyhow::Error::new(err).context("cannot write the export"));
        }
        next = match stream.message().await {
            Ok(next) => next,
            Err(status) => return Ok(Copied::Broken { events, status }),
        };
    }
    Ok(Copied::All { events })
}

/// Says how the export ended (on stderr: stdout may hold the export); the
/// exit code.
fn finish(copied: Copied, output: Option<&Path>) -> ExitCode {
    match copied {
        Copied::ReaderGone => ExitCode::SUCCESS,
        Copied::Broken { events, status } => {
            let code = print_status(&status);
            let written_to =
                output.map_or_else(|| "the output".to_owned(), |p| p.display().to_string());
            let _ = writeln!(
                std::io::stderr(),
                "agentmesh: the export broke off after {events} events: {written_to} is incomplete"
            );
            code
        }
        Copied::All { events } => {
            if let Some(path) = output {
                let _ = writeln!(
                    std::io::stderr(),
                    "exported {events} events to {}",
                    path.display()
                );
            }
            ExitCode::SUCCESS
        }
    }
}
