//! Output shared by the commands: protobuf messages as JSON lines.

use std::io::Write;

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
}
