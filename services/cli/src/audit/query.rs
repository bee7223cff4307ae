//! `agentmesh audit query`: the matching events, page after page, as one
//! line each (see `events.rs`) or as protobuf JSON lines, up to `--limit`.

use std::io::Write;
use std::process::ExitCode;

use crate::credential::CliChannel;
use agentmesh_proto::audit::v1::{self as pb, audit_service_client::AuditServiceClient};

use super::events::event_line;
use super::filter::build_filter;
use super::flags::QueryArgs;
use crate::commands::print_status;
use crate::output::{ProtoJson, quiet_on_broken_pipe};

/// Largest page the audit service returns for a Query.
const MAX_QUERY_PAGE: u32 = 1000;

pub(super) async fn query(
    mut client: AuditServiceClient<CliChannel>,
    args: QueryArgs,
) -> anyhow::Result<ExitCode> {
    let filter = build_filter(&args.selectors, args.range.since, args.range.until)
        .map_err(anyhow::Error::msg)?;
    let json = if args.json {
        Some(ProtoJson::new("agentmesh.audit.v1.AuditEvent")?)
    } else {
        None
    };
    let order = if args.oldest_first {
        pb::SortOrder::OldestFirst
    } else {
        pb::SortOrder::NewestFirst
    };
    let all = args.limit == 0;
    let mut remaining = args.limit;
    let mut page_token = String::new();
    let result = async {
        loop {
            let page_size = if all {
                MAX_QUERY_PAGE
            } else {
                remaining.min(MAX_QUERY_PAGE)
            };
            let page = match client
                .query(pb::QueryRequest {
                    filter: Some(filter.clone()),
                    order: order.into(),
                    page_size: i32::try_from(page_size).unwrap_or(i32::MAX),
                    page_token: std::mem::take(&mut page_token),
                })
                .await
            {
                Ok(page) => page.into_inner(),
                Err(status) => return Ok(print_status(&status)),
            };
            let mut out = std::io::stdout().lock();
            for event in &page.events {
                if !all {
                    if remaining == 0 {
                        break;
                    }
                    remaining -= 1;
                }
                match &json {
                    Some(json) => json.write_line(&mut out, event)?,
                    None => writeln!(out, "{}", event_line(event))?,
                }
            }
            out.flush()?;
            if page.next_page_token.is_empty() || (!all && remaining == 0) {
                return anyhow::Ok(ExitCode::SUCCESS);
            }
            page_token = page.next_page_token;
        }
    }
    .await;
    quiet_on_broken_pipe(result)
}
