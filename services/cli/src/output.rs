//! Output shared by the commands: protobuf messages as JSON lines, aligned
//! tables, and the quiet end of a listing whose reader went away.
//!
//! A command turns each answer into cells (its own rendering module), then
//! [`table`] or [`columns`] lays them out; `--json` output goes through
//! [`ProtoJson`] instead.

use std::fmt::Write as _;
use std::io::{ErrorKind, Write};
use std::process::ExitCode;

use anyhow::Context as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};

/// Writes messages of one type as JSON, one per line, in the canonical
/// protobuf JSON mapping with the proto field names (`run_id`, not `runId`)
/// and without default values, as `grpcurl` and the other languages' stubs
/// read them.
#[derive(Debug, Clone)]
pub(crate) struct ProtoJson {
    descriptor: MessageDescriptor,
}

impl ProtoJson {
    /// For messages of the fully-qualified type `name`, e.g.
    /// `agentmesh.audit.v1.AuditEvent`.
    pub(crate) fn new(name: &str) -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(agentmesh_proto::FILE_DESCRIPTOR_SET)
            .context("the built-in proto descriptors do not load")?;
        let descriptor = pool
            .get_message_by_name(name)
            .with_context(|| format!("{name} is missing from the descriptors"))?;
        Ok(Self { descriptor })
    }

    /// Writes `message` and a newline (no flush).
    pub(crate) fn write_line(
        &self,
        out: &mut impl Write,
        message: &impl prost::Message,
    ) -> anyhow::Result<()> {
        let bytes = message.encode_to_vec();
        let message = DynamicMessage::decode(self.descriptor.clone(), bytes.as_slice())
            .with_context(|| format!("cannot read a {}", self.descriptor.full_name()))?;
        let options = SerializeOptions::new()
            .use_proto_field_name(true)
            .skip_default_fields(true);
        let mut serializer = serde_json::Serializer::new(&mut *out);
        message.serialize_with_options(&mut serializer, &options)?;
        writeln!(out)?;
        Ok(())
    }
}

/// How the cells of a column line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    /// For numbers.
    Right,
}

/// A header line and rows as left-aligned columns (see [`columns`]).
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let lines: Vec<&[String]> = std::iter::once(header.as_slice())
        .chain(rows.iter().map(Vec::as_slice))
        .collect();
    columns(&lines, &[])
}

/// Lines of cells as columns two spaces apart, each as wide as its widest
/// cell (in characters) and aligned as `align` says (columns past its end to
/// the left); trailing spaces trimmed, a newline after every line.
pub(crate) fn columns(lines: &[&[String]], align: &[Align]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for line in lines {
        for (index, cell) in line.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(index) {
                Some(widest) => *widest = (*widest).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut text = String::new();
    for line in lines {
        let mut out = String::new();
        for (index, (cell, width)) in line.iter().zip(&widths).enumerate() {
            let _ = match align.get(index).copied().unwrap_or(Align::Left) {
                Align::Left => write!(out, "{cell:<width$}  "),
                Align::Right => write!(out, "{cell:>width$}  "),
            };
        }
        text.push_str(out.trim_end());
        text.push('\n');
    }
    text
}

/// Text for one cell: line breaks and tabs as spaces, so rows stay rows.
pub(crate) fn one_line(text: &str) -> String {
    text.split(char::is_whitespace)
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Stdout closed early (`| head`) ends a listing quietly.
pub(crate) fn quiet_on_broken_pipe(result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    match result {
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_proto::audit::v1 as audit;

    #[test]
    fn writes_proto_field_names_and_enum_names_without_defaults() {
        let json = ProtoJson::new("agentmesh.audit.v1.AuditEvent").unwrap();
        let event = audit::AuditEvent {
            event_id: "e1".to_owned(),
            run_id: "r1".to_owned(),
            r#type: audit::EventType::ToolCall.into(),
            ..audit::AuditEvent::default()
        };
        let mut out = Vec::new();
        json.write_line(&mut out, &event).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"event_id\":\"e1\",\"type\":\"EVENT_TYPE_TOOL_CALL\",\"run_id\":\"r1\"}\n"
        );
    }

    #[test]
    fn an_unknown_type_is_an_error() {
        assert!(ProtoJson::new("agentmesh.audit.v1.Nope").is_err());
    }

    #[test]
    fn columns_align_each_as_asked_and_trim_the_ends() {
        let cells = |cells: &[&str]| cells.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        let (header, first, second) = (
            cells(&["NAME", "", "COUNT"]),
            cells(&["ä-long-name", "x", "7"]),
            cells(&["b", "", "12345"]),
        );
        assert_eq!(
            columns(
                &[&header, &first, &second],
                &[Align::Left, Align::Left, Align::Right]
            ),
            "NAME            COUNT\nä-long-name  x      7\nb               12345\n"
        );
        assert_eq!(
            table(
                &["A", "B"],
                &[cells(&["long", ""]), cells(&["x", "y", "extra"])]
            ),
            "A     B\nlong\nx     y  extra\n"
        );
        assert_eq!(table(&["A"], &[]), "A\n");
    }

    #[test]
    fn cells_are_one_line() {
        assert_eq!(one_line(" a\n b\tc  "), "a b c");
    }
}
