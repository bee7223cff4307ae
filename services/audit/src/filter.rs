//! `EventFilter`: checked once, then applied either as SQL (queries,
//! exports, reports, the replayed part of a subscription) or in memory (the
//! live tail of a subscription). Both follow the same rules: fields combine
//! with AND, the values of one field with OR, an empty field matches all.

use agentmesh_kit::status::Violations;
use agentmesh_kit::time::{micros_of, micros_or_zero};
use agentmesh_proto::audit::v1::{AuditEvent, EventFilter, EventType, Outcome};
use sqlx::QueryBuilder;
use tonic::Status;

use crate::event::DetailKeys;

/// The most values one field of a filter may list. A filter is a query's
/// `IN (…)` list, one bound variable per value: SQLite refuses more than
/// 32,766 variables in a statement, and long lists make slow queries.
pub(crate) const MAX_VALUES_PER_FIELD: usize = 256;

/// The most values all fields of a filter may list together.
pub(crate) const MAX_VALUES: usize = 1024;

/// A checked filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Filter {
    pub start_us: Option<i64>,
    pub end_us: Option<i64>,
    pub tenants: Vec<String>,
    pub subjects: Vec<String>,
    pub run_ids: Vec<String>,
    pub types: Vec<i32>,
    pub outcomes: Vec<i32>,
    pub services: Vec<String>,
    pub trace_id: Option<String>,
    pub tools: Vec<String>,
    pub models: Vec<String>,
    pub providers: Vec<String>,
}

impl Filter {
    /// Checks a request's filter; `field` is its name in the request (e.g.
    /// `filter`), for field violations.
    pub(crate) fn parse(filter: Option<&EventFilter>, field: &str) -> Result<Self, Status> {
        let Some(filter) = filter else {
            return Ok(Self::default());
        };
        let mut violations = Violations::new();
        check_list_sizes(filter, field)?;
        for (name, time) in [
            ("start_time", &filter.start_time),
            ("end_time", &filter.end_time),
        ] {
            if let Some(time) = time
                && !(0..1_000_000_000).contains(&time.nanos)
            {
                violations.push((
                    format!("{field}.{name}"),
                    "has nanos outside 0..1e9".to_owned(),
                ));
            }
        }
        if let (Some(start), Some(end)) = (&filter.start_time, &filter.end_time)
            && micros_of(start) > micros_of(end)
        {
            violations.push((
                format!("{field}.end_time"),
                "is before start_time".to_owned(),
            ));
        }
        for (i, value) in filter.types.iter().enumerate() {
            if *value == EventType::Unspecified as i32 || EventType::try_from(*value).is_err() {
                violations.push((
                    format!("{field}.types[{i}]"),
                    format!("{value} is not an event type"),
                ));
            }
        }
        for (i, value) in filter.outcomes.iter().enumerate() {
            if *value == Outcome::Unspecified as i32 || Outcome::try_from(*value).is_err() {
                violations.push((
                    format!("{field}.outcomes[{i}]"),
                    format!("{value} is not an outcome"),
                ));
            }
        }
        if !violations.is_empty() {
            return Err(violations.into_status());
        }
        Ok(Self {
            start_us: filter.start_time.as_ref().map(micros_of),
            end_us: filter.end_time.as_ref().map(micros_of),
            tenants: filter.tenants.clone(),
            subjects: filter.subjects.clone(),
            run_ids: filter.run_ids.clone(),
            types: filter.types.clone(),
            outcomes: filter.outcomes.clone(),
            services: filter.services.clone(),
            trace_id: (!filter.trace_id.is_empty()).then(|| filter.trace_id.clone()),
            tools: filter.tools.clone(),
            models: filter.models.clone(),
            providers: filter.providers.clone(),
        })
    }

    /// Whether an event matches (the live tail of a subscription).
    pub(crate) fn matches(&self, event: &AuditEvent) -> bool {
        // Runs for every live event of every subscription: reads the event
        // in place rather than building its columns.
        let keys = DetailKeys::of(event);
        let time_us = micros_or_zero(event.time.as_ref());
        let any =
            |values: &[String], value: &str| values.is_empty() || values.iter().any(|v| v == value);
        self.start_us.is_none_or(|start| time_us >= start)
            && self.end_us.is_none_or(|end| time_us < end)
            && any(&self.tenants, &event.tenant)
            && any(&self.subjects, &event.subject)
            && any(&self.run_ids, &event.run_id)
            && (self.types.is_empty() || self.types.contains(&event.r#type))
            && (self.outcomes.is_empty() || self.outcomes.contains(&event.outcome))
            && any(&self.services, &event.service)
            && self
                .trace_id
                .as_ref()
                .is_none_or(|id| *id == event.trace_id)
            && any(&self.tools, keys.tool)
            && (self.models.is_empty()
                || self
                    .models
                    .iter()
                    .any(|m| m == keys.model || m == keys.route))
            && any(&self.providers, keys.provider)
    }

    /// Appends ` AND …` conditions for this filter (the caller has written a
    /// `WHERE` with at least one condition).
    pub(crate) fn push_sql<DB>(&self, query: &mut QueryBuilder<DB>)
    where
        DB: sqlx::Database,
        for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
        for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
        for<'t> i32: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    {
        if let Some(start) = self.start_us {
            query.push(" AND time_us >= ").push_bind(start);
        }
        if let Some(end) = self.end_us {
            query.push(" AND time_us < ").push_bind(end);
        }
        push_in(query, "tenant", &self.tenants);
        push_in(query, "subject", &self.subjects);
        push_in(query, "run_id", &self.run_ids);
        push_in(query, "service", &self.services);
        push_in(query, "tool", &self.tools);
        push_in(query, "provider", &self.providers);
        if let Some(trace_id) = &self.trace_id {
            query.push(" AND trace_id = ").push_bind(trace_id.clone());
        }
        for (column, values) in [("type", &self.types), ("outcome", &self.outcomes)] {
            if !values.is_empty() {
                query.push(format!(" AND {column} IN ("));
                let mut list = query.separated(", ");
                for value in values {
                    list.push_bind(*value);
                }
                query.push(")");
            }
        }
        if !self.models.is_empty() {
            query.push(" AND (");
            push_list(query, "model", &self.models);
            query.push(" OR ");
            push_list(query, "route", &self.models);
            query.push(")");
        }
    }
}

/// Refuses a filter that lists more values than the query may bind.
fn check_list_sizes(filter: &EventFilter, field: &str) -> Result<(), Status> {
    let mut violations = Violations::new();
    let lists: [(&str, usize); 10] = [
        ("tenants", filter.tenants.len()),
        ("subjects", filter.subjects.len()),
        ("run_ids", filter.run_ids.len()),
        ("types", filter.types.len()),
        ("outcomes", filter.outcomes.len()),
        ("services", filter.services.len()),
        ("tools", filter.tools.len()),
        ("models", filter.models.len()),
        ("providers", filter.providers.len()),
        ("trace_id", usize::from(!filter.trace_id.is_empty())),
    ];
    let mut total = 0_usize;
    for (name, count) in lists {
        total = total.saturating_add(count);
        if count > MAX_VALUES_PER_FIELD {
            violations.add(
                format!("{field}.{name}"),
                format!(
                    "lists {count} values; a filter field takes at most {MAX_VALUES_PER_FIELD}"
                ),
            );
        }
    }
    if total > MAX_VALUES {
        violations.add(
            field,
            format!("lists {total} values in all; a filter takes at most {MAX_VALUES}"),
        );
    }
    // The values themselves are not checked one by one: the lists are
    // what is wrong.
    violations.into_result()
}

fn push_in<DB>(query: &mut QueryBuilder<DB>, column: &str, values: &[String])
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    if !values.is_empty() {
        query.push(" AND ");
        push_list(query, column, values);
    }
}

fn push_list<DB>(query: &mut QueryBuilder<DB>, column: &str, values: &[String])
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    query.push(format!("{column} IN ("));
    let mut list = query.separated(", ");
    for value in values {
        list.push_bind(value.clone());
    }
    query.push(")");
}

#[cfg(test)]
mod tests {
    use agentmesh_proto::audit::v1::{LlmCallDetails, audit_event::Details};

    use super::*;

    fn event() -> AuditEvent {
        AuditEvent {
            event_id: "e".into(),
            r#type: EventType::LlmCall as i32,
            tenant: "acme".into(),
            service: "llm-gateway".into(),
            outcome: Outcome::Success as i32,
            time: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
            details: Some(Details::LlmCall(LlmCallDetails {
                model: "gpt-4o".into(),
                route: "default".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn matching_combines_fields_with_and_values_with_or() {
        let filter = |f: EventFilter| Filter::parse(Some(&f), "filter").unwrap_or_default();
        assert!(filter(EventFilter::default()).matches(&event()));
        assert!(
            filter(EventFilter {
                tenants: vec!["x".into(), "acme".into()],
                ..Default::default()
            })
            .matches(&event())
        );
        assert!(
            !filter(EventFilter {
                tenants: vec!["x".into()],
                ..Default::default()
            })
            .matches(&event())
        );
        assert!(
            filter(EventFilter {
                models: vec!["default".into()],
                ..Default::default()
            })
            .matches(&event())
        );
        assert!(
            !filter(EventFilter {
                models: vec!["gpt-4o".into()],
                types: vec![EventType::ToolCall as i32],
                ..Default::default()
            })
            .matches(&event())
        );
        let at = |s| {
            Some(prost_types::Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        assert!(
            filter(EventFilter {
                start_time: at(100),
                end_time: at(101),
                ..Default::default()
            })
            .matches(&event())
        );
        assert!(
            !filter(EventFilter {
                end_time: at(100),
                ..Default::default()
            })
            .matches(&event())
        );
    }

    #[test]
    fn bad_filters_name_the_field() {
        let bad = EventFilter {
            types: vec![0],
            ..Default::default()
        };
        let status = Filter::parse(Some(&bad), "filter")
            .err()
            .map(|s| s.message().to_owned());
        assert!(status.is_some_and(|m| m.contains("filter.types[0]")));
    }

    #[test]
    fn too_many_values_name_the_limit() {
        let many = EventFilter {
            run_ids: vec!["r".to_owned(); 33_000],
            ..Default::default()
        };
        let status = Filter::parse(Some(&many), "filter").unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("filter.run_ids: lists 33000 values")
        );
        assert!(status.message().contains("at most 256"));

        let spread = EventFilter {
            tenants: vec!["t".to_owned(); 200],
            subjects: vec!["s".to_owned(); 200],
            run_ids: vec!["r".to_owned(); 200],
            services: vec!["v".to_owned(); 200],
            tools: vec!["x".to_owned(); 200],
            models: vec!["m".to_owned(); 200],
            ..Default::default()
        };
        let status = Filter::parse(Some(&spread), "filter").unwrap_err();
        assert!(
            status
                .message()
                .contains("filter: lists 1200 values in all")
        );
    }
}
