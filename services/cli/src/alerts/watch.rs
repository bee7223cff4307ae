//! `agentmesh alerts watch`: the current alerts, then every change as it
//! happens, one line each (or a JSON line), until Ctrl-C or the server ends
//! the stream.

use std::future::Future;
use std::io::Write;
use std::process::ExitCode;

use crate::credential::CliChannel;
use agentmesh_proto::alerting::v1::{self as pb, alerting_service_client::AlertingServiceClient};

use super::render::change_line;
use super::{WatchArgs, watch_request};
use crate::alerting::Output;
use crate::commands::{print_status, status_text};
use crate::output::{ProtoJson, quiet_on_broken_pipe};

pub(super) async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let request = watch_request(&args).map_err(anyhow::Error::msg)?;
    let mut client = args.target.connect().await?;
    let mut out = std::io::stdout();
    quiet_on_broken_pipe(
        watch_to(
            &mut client,
            request,
            args.output,
            &mut out,
            agentmesh_kit::shutdown::signal(),
        )
        .await,
    )
}

/// Follows the watch `request` opens, writing each message but heartbeats
/// to `out` as it comes, until `stop` resolves (Ctrl-C) or the server ends
/// the stream.
pub(super) async fn watch_to(
    client: &mut AlertingServiceClient<CliChannel>,
    request: pb::WatchAlertsRequest,
    output: Output,
    out: &mut impl Write,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let json = match output {
        Output::Json => Some(ProtoJson::new("agentmesh.alerting.v1.WatchAlertsResponse")?),
        Output::Table => None,
    };
    let mut stream = match client.watch_alerts(request).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => return Ok(print_status(&status)),
    };
    tokio::pin!(stop);
    loop {
        let message = tokio::select! {
            () = &mut stop => return Ok(ExitCode::SUCCESS),
            message = stream.message() => message,
        };
        let change = match message {
            Ok(Some(change)) => change,
            // The server ended the stream cleanly.
            Ok(None) => return Ok(ExitCode::SUCCESS),
            Err(status) => return Ok(stream_broken(&status)),
        };
        let kind = pb::AlertChangeType::try_from(change.r#type);
        if kind == Ok(pb::AlertChangeType::Heartbeat) {
            continue;
        }
        match &json {
            Some(json) => json.write_line(out, &change)?,
            None => {
                if let Some(line) = change_line(&change) {
                    writeln!(out, "{line}")?;
                }
            }
        }
        // Each change shows as it happens, even through a pipe.
        out.flush()?;
        if json.is_none() && kind == Ok(pb::AlertChangeType::SnapshotEnd) {
            let _ = writeln!(std::io::stderr(), "watching for changes; Ctrl-C to stop");
        }
    }
}

/// A watch the server ended with an error. UNAVAILABLE mid-stream is the
/// service draining (or going away): said in those words.
fn stream_broken(status: &tonic::Status) -> ExitCode {
    if status.code() == tonic::Code::Unavailable {
        let _ = writeln!(
            std::io::stderr(),
            "error: the alerting service is shutting down ({})",
            status_text(status)
        );
        ExitCode::FAILURE
    } else {
        print_status(status)
    }
}
