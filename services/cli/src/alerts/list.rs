//! `agentmesh alerts list`: the alerts the flags select, page after page,
//! up to `--limit`, as one table (it needs every row for its column widths)
//! or streamed as JSON lines.

use std::io::Write;
use std::process::ExitCode;

use crate::credential::CliChannel;
use agentmesh_proto::alerting::v1::{self as pb, alerting_service_client::AlertingServiceClient};
use jiff::Timestamp;

use super::render::alert_table;
use super::{ListArgs, list_request};
use crate::alerting::{MAX_PAGE, Output};
use crate::commands::print_status;
use crate::output::{ProtoJson, quiet_on_broken_pipe};

pub(super) async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    // Bad flags are refused before anything is dialled.
    let request = list_request(&args).map_err(anyhow::Error::msg)?;
    let mut client = args.target.connect().await?;
    let mut out = std::io::stdout();
    quiet_on_broken_pipe(
        list_to(
            &mut client,
            request,
            args.limit,
            args.output,
            &mut out,
            Timestamp::now(),
        )
        .await,
    )
}

/// Lists the alerts `request` selects, page after page, to `out`: at most
/// `limit` (none or 0: all); a table with start times relative to `now`, or
/// JSON lines.
pub(super) async fn list_to(
    client: &mut AlertingServiceClient<CliChannel>,
    mut request: pb::ListAlertsRequest,
    limit: Option<u32>,
    output: Output,
    out: &mut impl Write,
    now: Timestamp,
) -> anyhow::Result<ExitCode> {
    let json = match output {
        Output::Json => Some(ProtoJson::new("agentmesh.alerting.v1.Alert")?),
        Output::Table => None,
    };
    let limit = limit.filter(|limit| *limit > 0);
    // The same page size on every page: the server wants the follow-up
    // requests to match the first.
    request.page_size = i32::try_from(limit.map_or(MAX_PAGE, |l| l.min(MAX_PAGE))).unwrap_or(0);
    let mut remaining = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    // The table needs every row for its column widths; JSON lines stream.
    let mut rows: Vec<pb::Alert> = Vec::new();
    loop {
        let page = match client.list_alerts(request.clone()).await {
            Ok(page) => page.into_inner(),
            Err(status) => return Ok(print_status(&status)),
        };
        let take = page.alerts.len().min(remaining);
        remaining -= take;
        match &json {
            Some(json) => {
                for alert in page.alerts.iter().take(take) {
                    json.write_line(out, alert)?;
                }
                out.flush()?;
            }
            None => rows.extend(page.alerts.into_iter().take(take)),
        }
        if page.next_page_token.is_empty() || remaining == 0 {
            break;
        }
        request.page_token = page.next_page_token;
    }
    if json.is_none() {
        write!(out, "{}", alert_table(&rows, now))?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
