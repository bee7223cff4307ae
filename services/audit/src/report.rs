//! `Report`: usage, security and cost figures, computed by the database.
//!
//! Time buckets are computed here, in the requested time zone (so a "day"
//! in Europe/Berlin is 23 or 25 hours across daylight-saving changes), and
//! handed to the database as a small `VALUES` table; the database joins the
//! events of the range to their bucket, groups by bucket and dimensions and
//! sums. No event is loaded into memory.

use std::collections::HashMap;

use agentmesh_kit::paging::{FilterHash, Page, PageLimits};
use agentmesh_kit::status::{Violations, invalid_argument};
use agentmesh_kit::time::timestamp_from_micros;
use agentmesh_proto::audit::v1::{
    CostMetrics, ReportDimension, ReportKind, ReportRequest, ReportResponse, ReportRow,
    SecurityMetrics, TimeBucket, UsageMetrics, report_row::Metrics,
};
use agentmesh_storage::{StoreError, with_reader};
use sqlx::{QueryBuilder, Row};
use tonic::Status;

use crate::filter::Filter;
use crate::store::Store;

/// Rows per page by default, and at most.
const REPORT_PAGES: PageLimits = PageLimits::new(1000, 10_000);

/// The metric columns of a USAGE report: (SQL expression, alias).
const USAGE: &[(&str, &str)] = &[
    (
        "CAST(SUM(CASE WHEN e.type = 1 THEN 1 ELSE 0 END) AS BIGINT)",
        "runs_started",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 2 THEN 1 ELSE 0 END) AS BIGINT)",
        "runs_succeeded",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 3 THEN 1 ELSE 0 END) AS BIGINT)",
        "runs_failed",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 4 THEN 1 ELSE 0 END) AS BIGINT)",
        "runs_cancelled",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 5 THEN 1 ELSE 0 END) AS BIGINT)",
        "llm_calls",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 5 AND e.outcome IN (2, 3) THEN 1 ELSE 0 END) AS BIGINT)",
        "llm_call_failures",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 5 THEN e.input_tokens ELSE 0 END) AS BIGINT)",
        "input_tokens",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 5 THEN e.output_tokens ELSE 0 END) AS BIGINT)",
        "output_tokens",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 6 THEN 1 ELSE 0 END) AS BIGINT)",
        "tool_calls",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 6 AND e.outcome IN (2, 3) THEN 1 ELSE 0 END) AS BIGINT)",
        "tool_call_failures",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 5 THEN COALESCE(e.cost_usd, 0.0) ELSE 0.0 END) AS DOUBLE PRECISION)",
        "cost_usd",
    ),
];
/// The metric columns of a SECURITY report.
const SECURITY: &[(&str, &str)] = &[
    (
        "CAST(SUM(CASE WHEN e.type = 7 AND e.outcome IN (2, 3) THEN 1 ELSE 0 END) AS BIGINT)",
        "authentication_failures",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 8 AND e.outcome = 3 THEN 1 ELSE 0 END) AS BIGINT)",
        "authorization_denials",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 9 THEN 1 ELSE 0 END) AS BIGINT)",
        "rate_limited",
    ),
    (
        "CAST(SUM(CASE WHEN e.outcome = 3 THEN 1 ELSE 0 END) AS BIGINT)",
        "denied",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 7 AND e.outcome = 1 THEN 1 ELSE 0 END) AS BIGINT)",
        "authentication_successes",
    ),
];
/// The metric columns of a COST report.
const COST: &[(&str, &str)] = &[
    (
        "CAST(SUM(CASE WHEN e.type = 5 THEN COALESCE(e.cost_usd, 0.0) ELSE 0.0 END) AS DOUBLE PRECISION)",
        "cost_usd",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 5 THEN e.input_tokens ELSE 0 END) AS BIGINT)",
        "input_tokens",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 5 THEN e.output_tokens ELSE 0 END) AS BIGINT)",
        "output_tokens",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 5 THEN 1 ELSE 0 END) AS BIGINT)",
        "llm_calls",
    ),
    (
        "CAST(SUM(CASE WHEN e.type = 5 AND e.cost_usd IS NULL THEN 1 ELSE 0 END) AS BIGINT)",
        "unpriced_llm_calls",
    ),
];

/// The metric columns of each kind: (SQL expression, alias).
fn metric_sql(kind: ReportKind) -> &'static [(&'static str, &'static str)] {
    match kind {
        ReportKind::Usage => USAGE,
        ReportKind::Security => SECURITY,
        ReportKind::Cost | ReportKind::Unspecified => COST,
    }
}

/// The column and key of a dimension.
fn dimension(dimension: ReportDimension) -> Option<(&'static str, &'static str)> {
    Some(match dimension {
        ReportDimension::Tenant => ("e.tenant", "tenant"),
        ReportDimension::Subject => ("e.subject", "subject"),
        ReportDimension::Model => ("e.model", "model"),
        ReportDimension::Provider => ("e.provider", "provider"),
        ReportDimension::Tool => ("e.tool", "tool"),
        ReportDimension::Service => ("e.service", "service"),
        ReportDimension::Unspecified => return None,
    })
}

/// The buckets `[start, end)` covering the range, in `zone`.
fn buckets(
    start_us: i64,
    end_us: i64,
    bucket: TimeBucket,
    zone: &jiff::tz::TimeZone,
    max: usize,
) -> Result<Vec<(i64, i64)>, Status> {
    let too_many = || {
        invalid_argument([(
            "filter.end_time",
            format!("the range spans more than {max} buckets; shorten it or use larger buckets"),
        )])
    };
    let bad_time =
        |err: jiff::Error| invalid_argument([("filter", format!("time out of range: {err}"))]);
    let unit = match bucket {
        TimeBucket::Unspecified => return Ok(vec![(start_us, end_us)]),
        TimeBucket::Hour => jiff::Unit::Hour,
        TimeBucket::Day => jiff::Unit::Day,
    };
    let start = jiff::Timestamp::from_microsecond(start_us)
        .map_err(bad_time)?
        .to_zoned(zone.clone());
    let mut current = match unit {
        jiff::Unit::Day => start.start_of_day().map_err(bad_time)?,
        _ => start
            .round(
                jiff::ZonedRound::new()
                    .smallest(jiff::Unit::Hour)
                    .mode(jiff::RoundMode::Trunc),
            )
            .map_err(bad_time)?,
    };
    let mut out = Vec::new();
    while current.timestamp().as_microsecond() < end_us {
        if out.len() >= max {
            return Err(too_many());
        }
        let next = match unit {
            jiff::Unit::Day => current
                .tomorrow()
                .and_then(|d| d.start_of_day())
                .map_err(bad_time)?,
            _ => current
                .checked_add(jiff::Span::new().hours(1))
                .map_err(bad_time)?,
        };
        out.push((
            current.timestamp().as_microsecond(),
            next.timestamp().as_microsecond(),
        ));
        current = next;
    }
    Ok(out)
}

/// A checked report request.
#[derive(Debug)]
struct Plan {
    kind: ReportKind,
    filter: Filter,
    bucketed: bool,
    buckets: Vec<(i64, i64)>,
    dims: Vec<(&'static str, &'static str)>,
    page: Page<usize>,
}

fn plan(request: &ReportRequest, max_buckets: usize) -> Result<Plan, Status> {
    let mut violations = Violations::new();
    let kind = ReportKind::try_from(request.kind).unwrap_or(ReportKind::Unspecified);
    if kind == ReportKind::Unspecified {
        violations.push(("kind".into(), "is required: USAGE, SECURITY or COST".into()));
    }
    let filter = Filter::parse(request.filter.as_ref(), "filter")?;
    if filter.start_us.is_none() {
        violations.push((
            "filter.start_time".into(),
            "is required (the start of the report)".into(),
        ));
    }
    if filter.end_us.is_none() {
        violations.push((
            "filter.end_time".into(),
            "is required (the end of the report)".into(),
        ));
    }
    let bucket = TimeBucket::try_from(request.bucket).map_err(|_| {
        invalid_argument([("bucket", format!("{} is not a TimeBucket", request.bucket))])
    })?;
    let dims = dimensions(request, &mut violations);
    let zone = time_zone(request, &mut violations);
    if let Err(violation) = REPORT_PAGES.size(request.page_size) {
        violations.push(violation);
    }
    if !violations.is_empty() {
        return Err(violations.into_status());
    }
    let (Some(start_us), Some(end_us)) = (filter.start_us, filter.end_us) else {
        return Err(invalid_argument([(
            "filter",
            "needs start_time and end_time",
        )]));
    };
    let buckets = buckets(start_us, end_us, bucket, &zone, max_buckets)?;
    let page = page(request)?;
    Ok(Plan {
        kind,
        filter,
        bucketed: bucket != TimeBucket::Unspecified,
        buckets,
        dims,
        page,
    })
}

/// The requested dimensions, in order; unknown and repeated ones are
/// recorded in `violations`.
fn dimensions(
    request: &ReportRequest,
    violations: &mut Violations,
) -> Vec<(&'static str, &'static str)> {
    let mut dims = Vec::new();
    for (i, value) in request.group_by.iter().enumerate() {
        match ReportDimension::try_from(*value).ok().and_then(dimension) {
            Some(dim) if !dims.contains(&dim) => dims.push(dim),
            Some(_) => violations.push((format!("group_by[{i}]"), "is repeated".into())),
            None => violations.push((
                format!("group_by[{i}]"),
                format!("{value} is not a report dimension"),
            )),
        }
    }
    dims
}

/// The zone buckets are cut in (UTC when unset); an unknown one is
/// recorded in `violations`.
fn time_zone(request: &ReportRequest, violations: &mut Violations) -> jiff::tz::TimeZone {
    if request.time_zone.is_empty() {
        jiff::tz::TimeZone::UTC
    } else {
        match jiff::tz::TimeZone::get(&request.time_zone) {
            Ok(zone) => zone,
            Err(_) => {
                violations.push((
                    "time_zone".into(),
                    format!("{:?} is not a known IANA time zone", request.time_zone),
                ));
                jiff::tz::TimeZone::UTC
            }
        }
    }
}

/// The page a request asks for: its size and the offset its token carries,
/// the token bound to every other field of the request.
fn page(request: &ReportRequest) -> Result<Page<usize>, Status> {
    let filter_hash = FilterHash::of_message(&ReportRequest {
        page_size: 0,
        page_token: String::new(),
        ..request.clone()
    });
    Page::from_request(
        REPORT_PAGES,
        request.page_size,
        &request.page_token,
        filter_hash,
    )
}

/// Computes a report page.
pub(crate) async fn report(
    store: &Store,
    request: &ReportRequest,
    max_buckets: usize,
) -> Result<ReportResponse, Status> {
    let plan = plan(request, max_buckets)?;
    // Rows are paged by offset: the token carries where the next page starts.
    let offset = plan.page.after().copied().unwrap_or(0);
    let mut rows = query(
        store,
        &plan,
        &plan.buckets,
        &plan.dims,
        Some((plan.page.fetch_size(), offset)),
    )
    .await?;
    let (Some(start), Some(end)) = (plan.filter.start_us, plan.filter.end_us) else {
        return Err(invalid_argument([(
            "filter",
            "needs start_time and end_time",
        )]));
    };
    let totals = query(store, &plan, &[(start, end)], &[], None).await?;
    let next_offset = offset.saturating_add(plan.page.size());
    let next_page_token = plan.page.finish(&mut rows, |_| next_offset);
    if !plan.bucketed {
        for row in &mut rows {
            row.bucket_start = None;
        }
    }
    let mut totals = totals
        .into_iter()
        .next()
        .unwrap_or_else(|| empty_row(plan.kind));
    totals.bucket_start = None;
    Ok(ReportResponse {
        kind: plan.kind as i32,
        rows,
        totals: Some(totals),
        next_page_token,
    })
}

fn empty_row(kind: ReportKind) -> ReportRow {
    ReportRow {
        bucket_start: None,
        group: HashMap::new(),
        metrics: Some(match kind {
            ReportKind::Usage => Metrics::Usage(UsageMetrics::default()),
            ReportKind::Security => Metrics::Security(SecurityMetrics::default()),
            ReportKind::Cost | ReportKind::Unspecified => Metrics::Cost(CostMetrics::default()),
        }),
    }
}

/// The report's `SELECT` up to its `WHERE 1 = 1`: the buckets as a
/// `VALUES` table joined to the events, the dimensions as `g0`, `g1`, …
/// and the metric columns.
fn select_sql(
    buckets: &[(i64, i64)],
    dims: &[(&'static str, &'static str)],
    metrics: &[(&str, &str)],
) -> String {
    // Bucket bounds are integers computed here, written into the SQL as
    // literals: a VALUES table of any length costs no bind parameters.
    let mut sql = String::from("WITH buckets (bucket_start, bucket_end) AS (VALUES ");
    for (i, (start, end)) in buckets.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(CAST({start} AS BIGINT), CAST({end} AS BIGINT))"));
    }
    sql.push_str(") SELECT b.bucket_start AS bucket_start");
    for (i, (column, _)) in dims.iter().enumerate() {
        sql.push_str(&format!(", {column} AS g{i}"));
    }
    for (expression, alias) in metrics {
        sql.push_str(&format!(", {expression} AS {alias}"));
    }
    sql.push_str(" FROM audit_events e JOIN buckets b ON e.time_us >= b.bucket_start AND e.time_us < b.bucket_end WHERE 1 = 1");
    sql
}

/// The metrics of one result row of a `kind` report, read by column alias
/// (`get` for counts, `cost` for the cost column).
fn read_metrics(
    kind: ReportKind,
    get: impl Fn(&str) -> Result<i64, sqlx::Error>,
    cost: impl Fn() -> Result<f64, sqlx::Error>,
) -> Result<Metrics, sqlx::Error> {
    Ok(match kind {
        ReportKind::Usage => Metrics::Usage(UsageMetrics {
            runs_started: get("runs_started")?,
            runs_succeeded: get("runs_succeeded")?,
            runs_failed: get("runs_failed")?,
            runs_cancelled: get("runs_cancelled")?,
            llm_calls: get("llm_calls")?,
            llm_call_failures: get("llm_call_failures")?,
            input_tokens: get("input_tokens")?,
            output_tokens: get("output_tokens")?,
            tool_calls: get("tool_calls")?,
            tool_call_failures: get("tool_call_failures")?,
            estimated_cost_usd: cost()?,
        }),
        ReportKind::Security => Metrics::Security(SecurityMetrics {
            authentication_failures: get("authentication_failures")?,
            authorization_denials: get("authorization_denials")?,
            rate_limited: get("rate_limited")?,
            denied: get("denied")?,
            authentication_successes: get("authentication_successes")?,
        }),
        ReportKind::Cost | ReportKind::Unspecified => Metrics::Cost(CostMetrics {
            estimated_cost_usd: cost()?,
            input_tokens: get("input_tokens")?,
            output_tokens: get("output_tokens")?,
            llm_calls: get("llm_calls")?,
            unpriced_llm_calls: get("unpriced_llm_calls")?,
        }),
    })
}

async fn query(
    store: &Store,
    plan: &Plan,
    buckets: &[(i64, i64)],
    dims: &[(&'static str, &'static str)],
    page: Option<(usize, usize)>,
) -> Result<Vec<ReportRow>, Status> {
    if buckets.is_empty() {
        return Ok(Vec::new());
    }
    let metrics = metric_sql(plan.kind);
    let failed = |err: sqlx::Error| Status::from(StoreError::from(err));
    with_reader!(store.database(), |pool| {
        let mut query = QueryBuilder::new(select_sql(buckets, dims, metrics));
        plan.filter.push_sql(&mut query);
        let mut group = String::from(" GROUP BY b.bucket_start");
        for (column, _) in dims {
            group.push_str(&format!(", {column}"));
        }
        query.push(&group);
        query.push(group.replace(" GROUP BY ", " ORDER BY "));
        if let Some((limit, offset)) = page {
            query
                .push(" LIMIT ")
                .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
            query
                .push(" OFFSET ")
                .push_bind(i64::try_from(offset).unwrap_or(i64::MAX));
        }
        let rows = query.build().fetch_all(pool).await.map_err(failed)?;
        rows.iter()
            .map(|row| {
                let get = |name: &str| {
                    row.try_get::<Option<i64>, _>(name)
                        .map(Option::unwrap_or_default)
                };
                let cost = || {
                    row.try_get::<Option<f64>, _>("cost_usd")
                        .map(Option::unwrap_or_default)
                };
                let metrics = read_metrics(plan.kind, get, cost)?;
                let mut group = HashMap::new();
                for (i, (_, key)) in dims.iter().enumerate() {
                    group.insert(
                        (*key).to_owned(),
                        row.try_get::<String, _>(format!("g{i}").as_str())?,
                    );
                }
                Ok(ReportRow {
                    bucket_start: Some(timestamp_from_micros(row.try_get("bucket_start")?)),
                    group,
                    metrics: Some(metrics),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(failed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_buckets_follow_the_time_zone() {
        // 2026-03-29 is the spring-forward day in Berlin: 23 hours long.
        let zone = jiff::tz::TimeZone::get("Europe/Berlin").unwrap_or(jiff::tz::TimeZone::UTC);
        let start = "2026-03-28T00:00[Europe/Berlin]"
            .parse::<jiff::Zoned>()
            .map(|z| z.timestamp().as_microsecond())
            .unwrap_or(0);
        let end = start + 3 * 86_400_000_000 - 3_600_000_000;
        let days = buckets(start, end, TimeBucket::Day, &zone, 100).unwrap_or_default();
        assert_eq!(days.len(), 3);
        assert_eq!(days[0].0, start);
        assert_eq!(days[1].1 - days[1].0, 23 * 3_600_000_000);
    }

    #[test]
    fn too_many_buckets_is_refused() {
        let zone = jiff::tz::TimeZone::UTC;
        assert!(buckets(0, 3_600_000_000 * 10, TimeBucket::Hour, &zone, 5).is_err());
        assert_eq!(
            buckets(0, 3_600_000_000 * 10, TimeBucket::Hour, &zone, 10)
                .map(|b| b.len())
                .ok(),
            Some(10)
        );
        assert_eq!(
            buckets(5, 10, TimeBucket::Unspecified, &zone, 1).ok(),
            Some(vec![(5, 10)])
        );
    }
}
