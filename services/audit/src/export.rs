//! `Export`: the events of a filter as a CSV or JSON Lines file, streamed in
//! chunks straight from the database.
//!
//! The export covers the events stored when it starts (up to that moment's
//! last sequence number), read one page per chunk with keyset pagination, so
//! memory stays at one chunk whatever the range. JSON Lines is the canonical
//! protobuf JSON mapping of `AuditEvent`. CSV has one column per field: the
//! event's own fields, every field of every details message flattened into
//! `<details>.<field>` (nested messages further, e.g.
//! `llm_call.prompt.size_bytes`), and `attributes.<key>` for each attribute
//! key the exported events use (found first with one `DISTINCT` query, so
//! the header is complete before the first row). Times are RFC 3339 UTC,
//! durations seconds, enums their names without the type prefix, maps and
//! lists JSON.

use std::sync::LazyLock;

use agentmesh_proto::audit::v1::{AuditEvent, ExportFormat, ExportResponse};
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};
use tokio::sync::mpsc;
use tonic::Status;

use crate::filter::Filter;
use crate::store::Store;

static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(agentmesh_proto::FILE_DESCRIPTOR_SET).ok());

/// The AuditEvent descriptor.
fn event_descriptor() -> Option<MessageDescriptor> {
    POOL.as_ref()?
        .get_message_by_name("agentmesh.audit.v1.AuditEvent")
}

/// How one CSV column gets its value.
#[derive(Debug, Clone)]
enum Column {
    /// A field reached through a path of fields.
    Field {
        name: String,
        path: Vec<FieldDescriptor>,
    },
    /// One attribute.
    Attribute(String),
}

/// The CSV columns: the event's fields (details flattened), then attributes.
fn csv_columns(attribute_keys: &[String]) -> Result<Vec<Column>, Status> {
    let event = event_descriptor()
        .ok_or_else(|| Status::internal("the AuditEvent descriptor is missing"))?;
    let mut columns = Vec::new();
    for field in event.fields() {
        if field.name() == "attributes" {
            continue;
        }
        flatten(
            &mut columns,
            field.name().to_owned(),
            vec![field.clone()],
            &field,
            field.containing_oneof().is_some(),
        );
    }
    columns.extend(
        attribute_keys
            .iter()
            .map(|key| Column::Attribute(key.clone())),
    );
    Ok(columns)
}

fn flatten(
    columns: &mut Vec<Column>,
    name: String,
    path: Vec<FieldDescriptor>,
    field: &FieldDescriptor,
    expand: bool,
) {
    match field.kind() {
        Kind::Message(message)
            if !field.is_list()
                && !field.is_map()
                && (expand || !message.full_name().starts_with("google.protobuf."))
                && !is_well_known(&message) =>
        {
            for inner in message.fields() {
                let mut inner_path = path.clone();
                inner_path.push(inner.clone());
                flatten(
                    columns,
                    format!("{name}.{}", inner.name()),
                    inner_path,
                    &inner,
                    false,
                );
            }
        }
        _ => columns.push(Column::Field { name, path }),
    }
}

fn is_well_known(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp" | "google.protobuf.Duration"
    )
}

/// The header line's name of a column.
fn column_name(column: &Column) -> String {
    match column {
        Column::Field { name, .. } => name.clone(),
        Column::Attribute(key) => format!("attributes.{key}"),
    }
}

/// The text of one column of one event.
fn column_value(message: &DynamicMessage, event: &AuditEvent, column: &Column) -> String {
    match column {
        Column::Attribute(key) => event.attributes.get(key).cloned().unwrap_or_default(),
        Column::Field { path, .. } => {
            let mut current = message.clone();
            for (i, field) in path.iter().enumerate() {
                if field.supports_presence() && !current.has_field(field) {
                    return String::new();
                }
                let value = current.get_field(field).into_owned();
                if i + 1 == path.len() {
                    return format_value(field, &value);
                }
                match value {
                    Value::Message(inner) => current = inner,
                    _ => return String::new(),
                }
            }
            String::new()
        }
    }
}

fn format_value(field: &FieldDescriptor, value: &Value) -> String {
    if field.is_list() || field.is_map() {
        return serde_json::to_string(&json(value)).unwrap_or_default();
    }
    match value {
        Value::Bool(b) => b.to_string(),
        Value::I32(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        Value::U32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        Value::F32(n) => n.to_string(),
        Value::F64(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Bytes(b) => hex::encode(b),
        Value::EnumNumber(n) => match field.kind() {
            Kind::Enum(descriptor) => descriptor
                .get_value(*n)
                .map(|v| strip_enum_prefix(descriptor.name(), v.name()))
                .unwrap_or_else(|| n.to_string()),
            _ => n.to_string(),
        },
        Value::Message(message) => match message.descriptor().full_name() {
            "google.protobuf.Timestamp" => message
                .transcode_to::<prost_types::Timestamp>()
                .ok()
                .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
                .map(|t| t.to_string())
                .unwrap_or_default(),
            "google.protobuf.Duration" => message
                .transcode_to::<prost_types::Duration>()
                .ok()
                .map(|d| format!("{}", d.seconds as f64 + f64::from(d.nanos) / 1e9))
                .unwrap_or_default(),
            _ => serde_json::to_string(message).unwrap_or_default(),
        },
        Value::List(_) | Value::Map(_) => serde_json::to_string(&json(value)).unwrap_or_default(),
    }
}

/// A list or map value as JSON.
fn json(value: &Value) -> serde_json::Value {
    match value {
        Value::List(items) => serde_json::Value::Array(items.iter().map(json).collect()),
        Value::Map(map) => {
            let mut object: Vec<(String, serde_json::Value)> = map
                .iter()
                .map(|(key, value)| {
                    let key = match key {
                        prost_reflect::MapKey::String(s) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    (key, json(value))
                })
                .collect();
            object.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(object.into_iter().collect())
        }
        Value::Message(message) => serde_json::to_value(message).unwrap_or_default(),
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::I32(n) => (*n).into(),
        Value::I64(n) => (*n).into(),
        Value::U32(n) => (*n).into(),
        Value::U64(n) => (*n).into(),
        Value::F64(n) => (*n).into(),
        Value::F32(n) => f64::from(*n).into(),
        Value::EnumNumber(n) => (*n).into(),
        Value::Bytes(b) => serde_json::Value::String(hex::encode(b)),
    }
}

/// `EVENT_TYPE_LLM_CALL` → `LLM_CALL` for enum `EventType`.
fn strip_enum_prefix(enum_name: &str, value: &str) -> String {
    let mut prefix = String::new();
    for (i, c) in enum_name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            prefix.push('_');
        }
        prefix.push(c.to_ascii_uppercase());
    }
    prefix.push('_');
    value.strip_prefix(&prefix).unwrap_or(value).to_owned()
}

/// Streams an export into `sender`, one chunk per page; stops early when the
/// receiver is gone.
pub(crate) async fn run(
    store: Store,
    filter: Filter,
    format: ExportFormat,
    newest_first: bool,
    chunk_events: usize,
    sender: mpsc::Sender<Result<ExportResponse, Status>>,
) {
    if let Err(status) = export(&store, &filter, format, newest_first, chunk_events, &sender).await
    {
        let _ = sender.send(Err(status)).await;
    }
}

/// One page as CSV rows, after the header row when it is the `first`.
fn csv_chunk(
    page: &[(i64, i64, AuditEvent)],
    columns: &[Column],
    descriptor: &MessageDescriptor,
    first: bool,
) -> Result<Vec<u8>, Status> {
    let mut data = Vec::new();
    let mut writer = csv::Writer::from_writer(&mut data);
    if first {
        writer
            .write_record(columns.iter().map(column_name))
            .map_err(|err| Status::internal(format!("writing CSV: {err}")))?;
    }
    for (_, _, event) in page {
        let message = DynamicMessage::decode(descriptor.clone(), event.encode_to_vec().as_slice())
            .map_err(|err| Status::internal(format!("re-reading an event: {err}")))?;
        writer
            .write_record(
                columns
                    .iter()
                    .map(|column| neutralize(column_value(&message, event, column))),
            )
            .map_err(|err| Status::internal(format!("writing CSV: {err}")))?;
    }
    writer
        .flush()
        .map_err(|err| Status::internal(format!("writing CSV: {err}")))?;
    drop(writer);
    Ok(data)
}

/// A cell a spreadsheet would not run: text starting with `=`, `+`, `-`,
/// `@`, a tab or a carriage return is a formula to Excel, LibreOffice and
/// Google Sheets (OWASP's CSV injection), so it gets a leading `'`, which
/// they show as text. Numbers (`-1.5`) stay numbers. Quoting is the CSV
/// writer's, as for any cell.
fn neutralize(cell: String) -> String {
    let risky = matches!(
        cell.as_bytes().first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
    );
    if risky && cell.parse::<f64>().is_err() {
        format!("'{cell}")
    } else {
        cell
    }
}

/// One page as JSON lines, one event each.
fn jsonl_chunk(
    page: &[(i64, i64, AuditEvent)],
    descriptor: &MessageDescriptor,
) -> Result<Vec<u8>, Status> {
    let mut data = Vec::new();
    for (_, _, event) in page {
        let message = DynamicMessage::decode(descriptor.clone(), event.encode_to_vec().as_slice())
            .map_err(|err| Status::internal(format!("re-reading an event: {err}")))?;
        serde_json::to_writer(&mut data, &message)
            .map_err(|err| Status::internal(format!("writing JSON: {err}")))?;
        data.push(b'\n');
    }
    Ok(data)
}

async fn export(
    store: &Store,
    filter: &Filter,
    format: ExportFormat,
    newest_first: bool,
    chunk_events: usize,
    sender: &mpsc::Sender<Result<ExportResponse, Status>>,
) -> Result<(), Status> {
    let (last_seq, _) = store.state().await.map_err(Status::from)?;
    let csv = format == ExportFormat::Csv;
    let content_type = if csv { "text/csv" } else { "application/jsonl" };
    let descriptor = event_descriptor()
        .ok_or_else(|| Status::internal("the AuditEvent descriptor is missing"))?;
    let columns = if csv {
        csv_columns(
            &store
                .attribute_keys(filter, last_seq)
                .await
                .map_err(Status::from)?,
        )?
    } else {
        Vec::new()
    };
    let mut first = true;
    let mut after = None;
    loop {
        let page = store
            .page(filter, newest_first, after, Some(last_seq), chunk_events)
            .await
            .map_err(Status::from)?;
        let done = page.len() < chunk_events;
        let data = if csv {
            csv_chunk(&page, &columns, &descriptor, first)?
        } else {
            jsonl_chunk(&page, &descriptor)?
        };
        let count = page.len();
        after = page.last().map(|(time_us, seq, _)| (*time_us, *seq));
        if count > 0 || first {
            let chunk = ExportResponse {
                data,
                event_count: i64::try_from(count).unwrap_or(i64::MAX),
                content_type: if first {
                    content_type.to_owned()
                } else {
                    String::new()
                },
            };
            if sender.send(Ok(chunk)).await.is_err() {
                return Ok(());
            }
        }
        first = false;
        if done {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_prefixes_are_stripped() {
        assert_eq!(
            strip_enum_prefix("EventType", "EVENT_TYPE_LLM_CALL"),
            "LLM_CALL"
        );
        assert_eq!(strip_enum_prefix("Outcome", "OUTCOME_DENIED"), "DENIED");
        assert_eq!(strip_enum_prefix("Outcome", "OTHER"), "OTHER");
    }

    #[test]
    fn formulas_are_neutralized_and_numbers_kept() {
        for (cell, expected) in [
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "'=HYPERLINK(\"http://x\",\"y\")",
            ),
            ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("-1.5", "-1.5"),
            ("+3", "+3"),
            ("plain", "plain"),
            ("a=b", "a=b"),
            ("", ""),
        ] {
            assert_eq!(neutralize(cell.to_owned()), expected, "{cell:?}");
        }
    }

    #[test]
    fn a_neutralized_cell_is_still_quoted_properly() {
        let mut data = Vec::new();
        let mut writer = csv::Writer::from_writer(&mut data);
        writer
            .write_record([
                neutralize("=1,\"2\"\n".to_owned()),
                neutralize("ok".to_owned()),
            ])
            .unwrap();
        writer.flush().unwrap();
        drop(writer);
        let text = String::from_utf8(data).unwrap();
        assert_eq!(text, "\"'=1,\"\"2\"\"\n\",ok\n");
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes());
        let record = reader.records().next().unwrap().unwrap();
        assert_eq!(&record[0], "'=1,\"2\"\n");
    }

    #[test]
    fn csv_columns_flatten_details() {
        let names: Vec<String> = csv_columns(&["team".to_owned()])
            .unwrap_or_default()
            .iter()
            .map(column_name)
            .collect();
        for expected in [
            "event_id",
            "time",
            "type",
            "llm_call.input_tokens",
            "llm_call.latency",
            "tool_call.arguments.size_bytes",
            "run.labels",
            "attributes.team",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
    }
}
