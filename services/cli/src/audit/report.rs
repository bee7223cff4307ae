//! `agentmesh audit report usage|security|cost`: the report's pages
//! gathered into one, shown as a table (bucket and group columns to the
//! left, the kind's metrics to the right, a totals line) or as one JSON
//! object.

use std::io::Write;
use std::process::ExitCode;

use crate::credential::CliChannel;
use agentmesh_proto::audit::v1::{
    self as pb, audit_service_client::AuditServiceClient, report_row,
};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::filter::build_filter;
use super::flags::{Bucket, Dimension, ReportArgs, ReportKind};
use crate::commands::print_status;
use crate::output::{Align, ProtoJson, columns, quiet_on_broken_pipe};
use crate::time::{from_proto, utc_text};

pub(super) async fn report(
    mut client: AuditServiceClient<CliChannel>,
    args: ReportArgs,
) -> anyhow::Result<ExitCode> {
    let until = args.until.unwrap_or_else(Timestamp::now);
    let filter =
        build_filter(&args.selectors, Some(args.since), Some(until)).map_err(anyhow::Error::msg)?;
    let time_zone_name = args.time_zone.clone().unwrap_or_default();
    // Bucket starts are shown in the report's time zone when this machine
    // knows it (the server checks the name either way).
    let time_zone = if time_zone_name.is_empty() {
        TimeZone::UTC
    } else {
        TimeZone::get(&time_zone_name).unwrap_or(TimeZone::UTC)
    };
    let mut request = pb::ReportRequest {
        kind: args.kind.proto().into(),
        filter: Some(filter),
        bucket: args
            .bucket
            .map_or(pb::TimeBucket::Unspecified, Bucket::proto)
            .into(),
        group_by: args.by.iter().map(|d| i32::from(d.proto())).collect(),
        time_zone: time_zone_name,
        page_size: 0,
        page_token: String::new(),
    };
    let mut whole = pb::ReportResponse {
        kind: request.kind,
        ..pb::ReportResponse::default()
    };
    loop {
        let page = match client.report(request.clone()).await {
            Ok(page) => page.into_inner(),
            Err(status) => return Ok(print_status(&status)),
        };
        whole.rows.extend(page.rows);
        whole.totals = page.totals;
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        ProtoJson::new("agentmesh.audit.v1.ReportResponse")
            .and_then(|json| json.write_line(&mut out, &whole))
    } else {
        let table = report_table(
            args.kind,
            args.bucket,
            &args.by,
            &time_zone,
            &whole.rows,
            &whole.totals.unwrap_or_default(),
        );
        write!(out, "{table}").map_err(anyhow::Error::from)
    };
    quiet_on_broken_pipe(written.and_then(|()| {
        out.flush()?;
        Ok(ExitCode::SUCCESS)
    }))
}

fn metric_headers(kind: ReportKind) -> &'static [&'static str] {
    match kind {
        ReportKind::Usage => &[
            "RUNS",
            "SUCCEEDED",
            "FAILED",
            "CANCELLED",
            "LLM CALLS",
            "LLM FAILURES",
            "INPUT TOKENS",
            "OUTPUT TOKENS",
            "TOOL CALLS",
            "TOOL FAILURES",
            "COST",
        ],
        ReportKind::Security => &["AUTH FAILURES", "AUTHZ DENIALS", "RATE LIMITED", "DENIED"],
        ReportKind::Cost => &[
            "COST",
            "INPUT TOKENS",
            "OUTPUT TOKENS",
            "LLM CALLS",
            "UNPRICED",
        ],
    }
}

/// The row's metrics of `kind`, as shown (zeros when the row has none).
fn metric_values(kind: ReportKind, row: &pb::ReportRow) -> Vec<String> {
    let cost = |usd: f64| format!("${usd:.6}");
    match kind {
        ReportKind::Usage => {
            let m = match &row.metrics {
                Some(report_row::Metrics::Usage(m)) => *m,
                _ => pb::UsageMetrics::default(),
            };
            vec![
                m.runs_started.to_string(),
                m.runs_succeeded.to_string(),
                m.runs_failed.to_string(),
                m.runs_cancelled.to_string(),
                m.llm_calls.to_string(),
                m.llm_call_failures.to_string(),
                m.input_tokens.to_string(),
                m.output_tokens.to_string(),
                m.tool_calls.to_string(),
                m.tool_call_failures.to_string(),
                cost(m.estimated_cost_usd),
            ]
        }
        ReportKind::Security => {
            let m = match &row.metrics {
                Some(report_row::Metrics::Security(m)) => *m,
                _ => pb::SecurityMetrics::default(),
            };
            vec![
                m.authentication_failures.to_string(),
                m.authorization_denials.to_string(),
                m.rate_limited.to_string(),
                m.denied.to_string(),
            ]
        }
        ReportKind::Cost => {
            let m = match &row.metrics {
                Some(report_row::Metrics::Cost(m)) => *m,
                _ => pb::CostMetrics::default(),
            };
            vec![
                cost(m.estimated_cost_usd),
                m.input_tokens.to_string(),
                m.output_tokens.to_string(),
                m.llm_calls.to_string(),
                m.unpriced_llm_calls.to_string(),
            ]
        }
    }
}

/// A bucket's start in `time_zone`: the date for day buckets, else the time
/// to the second with its offset (`Z` in UTC).
fn bucket_text(
    start: Option<&prost_types::Timestamp>,
    bucket: Bucket,
    time_zone: &TimeZone,
) -> String {
    let Some(start) = from_proto(start) else {
        return "-".to_owned();
    };
    let zoned = start.to_zoned(time_zone.clone());
    match bucket {
        Bucket::Day => zoned.strftime("%Y-%m-%d").to_string(),
        Bucket::Hour if zoned.offset() == jiff::tz::Offset::UTC => utc_text(start),
        Bucket::Hour => zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
    }
}

/// The report as aligned columns — the bucket start (with `--bucket`), the
/// group values (one column per `--by`), then the kind's metrics — and a
/// totals line.
fn report_table(
    kind: ReportKind,
    bucket: Option<Bucket>,
    by: &[Dimension],
    time_zone: &TimeZone,
    rows: &[pb::ReportRow],
    totals: &pb::ReportRow,
) -> String {
    // The left (text) columns: the bucket, then the groups; at least one,
    // to hold the TOTAL label.
    let mut header: Vec<String> = Vec::new();
    if bucket.is_some() {
        header.push("BUCKET".to_owned());
    }
    header.extend(by.iter().map(|d| d.key().to_uppercase()));
    let text_columns = header.len().max(1);
    header.resize(text_columns, String::new());
    let text_of = |row: &pb::ReportRow| {
        let mut cells = Vec::with_capacity(text_columns);
        if let Some(bucket) = bucket {
            cells.push(bucket_text(row.bucket_start.as_ref(), bucket, time_zone));
        }
        for dimension in by {
            let value = row
                .group
                .get(dimension.key())
                .filter(|v| !v.is_empty())
                .map_or("-", String::as_str);
            cells.push(value.to_owned());
        }
        cells.resize(text_columns, String::new());
        cells
    };
    let with_metrics = |mut cells: Vec<String>, row: &pb::ReportRow| {
        cells.extend(metric_values(kind, row));
        cells
    };

    let mut lines: Vec<Vec<String>> = Vec::with_capacity(rows.len() + 2);
    header.extend(metric_headers(kind).iter().map(|h| (*h).to_owned()));
    lines.push(header);
    lines.extend(rows.iter().map(|row| with_metrics(text_of(row), row)));
    let mut total_label = vec![String::new(); text_columns - 1];
    total_label.insert(0, "TOTAL".to_owned());
    lines.push(with_metrics(total_label, totals));

    // Text to the left, numbers to the right.
    let mut align = vec![Align::Left; text_columns];
    align.resize(text_columns + metric_headers(kind).len(), Align::Right);
    let lines: Vec<&[String]> = lines.iter().map(Vec::as_slice).collect();
    columns(&lines, &align)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::testing::time;

    fn usage_row(
        bucket: Option<&str>,
        group: &[(&str, &str)],
        metrics: pb::UsageMetrics,
    ) -> pb::ReportRow {
        pb::ReportRow {
            bucket_start: bucket.and_then(time),
            group: group
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            metrics: Some(report_row::Metrics::Usage(metrics)),
        }
    }

    #[test]
    fn a_usage_table_by_day_and_model() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let rows = [
            usage_row(
                Some("2026-11-20T23:00:00Z"),
                &[("tenant", "acme"), ("model", "gpt-4o")],
                pb::UsageMetrics {
                    runs_started: 12,
                    runs_succeeded: 11,
                    runs_failed: 1,
                    llm_calls: 40,
                    input_tokens: 123_456,
                    output_tokens: 7890,
                    tool_calls: 5,
                    estimated_cost_usd: 1.5,
                    ..pb::UsageMetrics::default()
                },
            ),
            usage_row(
                Some("2026-11-21T23:00:00Z"),
                &[("tenant", "globex-corporation")],
                pb::UsageMetrics {
                    runs_started: 1,
                    ..pb::UsageMetrics::default()
                },
            ),
        ];
        let totals = pb::ReportRow {
            metrics: Some(report_row::Metrics::Usage(pb::UsageMetrics {
                runs_started: 13,
                runs_succeeded: 11,
                runs_failed: 1,
                llm_calls: 40,
                input_tokens: 123_456,
                output_tokens: 7890,
                tool_calls: 5,
                estimated_cost_usd: 1.5,
                ..pb::UsageMetrics::default()
            })),
            ..pb::ReportRow::default()
        };
        let table = report_table(
            ReportKind::Usage,
            Some(Bucket::Day),
            &[Dimension::Tenant, Dimension::Model],
            &berlin,
            &rows,
            &totals,
        );
        let expected = "\
BUCKET      TENANT              MODEL   RUNS  SUCCEEDED  FAILED  CANCELLED  LLM CALLS  LLM FAILURES  INPUT TOKENS  OUTPUT TOKENS  TOOL CALLS  TOOL FAILURES       COST
2026-11-21  acme                gpt-4o    12         11       1          0         40             0        123456           7890           5              0  $1.500000
2026-11-22  globex-corporation  -          1          0       0          0          0             0             0              0           0              0  $0.000000
TOTAL                                     13         11       1          0         40             0        123456           7890           5              0  $1.500000
";
        assert_eq!(table, expected);
    }

    #[test]
    fn an_ungrouped_security_table_and_hour_buckets() {
        let totals = pb::ReportRow {
            metrics: Some(report_row::Metrics::Security(pb::SecurityMetrics {
                authentication_failures: 3,
                denied: 7,
                ..pb::SecurityMetrics::default()
            })),
            ..pb::ReportRow::default()
        };
        let table = report_table(
            ReportKind::Security,
            None,
            &[],
            &TimeZone::UTC,
            std::slice::from_ref(&totals),
            &totals,
        );
        assert_eq!(
            table,
            concat!(
                "       AUTH FAILURES  AUTHZ DENIALS  RATE LIMITED  DENIED\n",
                "                   3              0             0       7\n",
                "TOTAL              3              0             0       7\n",
            )
        );
        // No rows: the header and the totals line still show.
        let table = report_table(
            ReportKind::Cost,
            Some(Bucket::Hour),
            &[Dimension::Provider],
            &TimeZone::UTC,
            &[],
            &pb::ReportRow::default(),
        );
        assert_eq!(
            table,
            "\
BUCKET  PROVIDER       COST  INPUT TOKENS  OUTPUT TOKENS  LLM CALLS  UNPRICED
TOTAL             $0.000000             0              0          0         0
"
        );
        let start = time("2026-11-21T10:00:00Z");
        assert_eq!(
            bucket_text(start.as_ref(), Bucket::Hour, &TimeZone::UTC),
            "2026-11-21T10:00:00Z"
        );
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(
            bucket_text(start.as_ref(), Bucket::Hour, &berlin),
            "2026-11-21T11:00:00+01:00"
        );
    }
}
