//! Messages to and from the proto3 JSON mapping (prost-reflect's): a
//! request built from the body, the path's variables and the query string;
//! an answer rendered with the proto field names (`run_id`, as the
//! contract, the CLI and the Python stubs spell them) and every field
//! present, so clients see the same shape whatever the values.

use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::{Map, Value};

/// Why a request cannot be built: the field to blame (if one) and what is
/// wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadInput {
    pub(crate) field: Option<String>,
    pub(crate) message: String,
}

impl BadInput {
    fn field(field: &str, message: String) -> Self {
        Self {
            field: Some(field.to_owned()),
            message,
        }
    }
}

/// Renders `message` as JSON.
pub(crate) fn render(message: &DynamicMessage) -> Value {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or(Value::Null)
}

/// Renders a prost message of type `descriptor` as JSON.
pub(crate) fn render_prost(descriptor: &MessageDescriptor, message: &impl prost::Message) -> Value {
    let bytes = message.encode_to_vec();
    match DynamicMessage::decode(descriptor.clone(), bytes.as_slice()) {
        Ok(dynamic) => render(&dynamic),
        Err(_) => Value::Null,
    }
}

/// The request message of type `descriptor` from a JSON `body` (an object,
/// or nothing), the path's `variables` and the `query` pairs; a variable
/// wins over the same field in the body.
pub(crate) fn build(
    descriptor: &MessageDescriptor,
    body: Option<Value>,
    variables: &[(String, String)],
    query: &[(String, String)],
) -> Result<DynamicMessage, BadInput> {
    let mut object = match body {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(object)) => object,
        Some(_) => {
            return Err(BadInput {
                field: None,
                message: "the request body must be a JSON object".to_owned(),
            });
        }
    };
    for (key, value) in query {
        add_query_pair(descriptor, &mut object, key, value)?;
    }
    for (field, value) in variables {
        // The body may name the same field in its JSON spelling.
        if let Some(descriptor) = descriptor.get_field_by_name(field) {
            object.remove(descriptor.json_name());
        }
        object.insert(field.clone(), Value::String(value.clone()));
    }
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    DynamicMessage::deserialize_with_options(descriptor.clone(), Value::Object(object), &options)
        .map_err(|err| BadInput {
            field: None,
            message: format!("the request does not fit {}: {err}", descriptor.name()),
        })
}

/// One `key=value` of a query string onto the JSON object: `states=A&
/// states=B` for a repeated field, `labels[team]=x` for a map,
/// `filter.run_ids=r1` for a field of a message field.
fn add_query_pair(
    descriptor: &MessageDescriptor,
    object: &mut Map<String, Value>,
    key: &str,
    value: &str,
) -> Result<(), BadInput> {
    let (path, map_key) = match key.split_once('[') {
        Some((path, rest)) => (path, rest.strip_suffix(']')),
        None => (key, None),
    };
    let (parents, name) = match path.rsplit_once('.') {
        Some((parents, name)) => (Some(parents), name),
        None => (None, path),
    };
    let (descriptor, object) = match parents {
        None => (descriptor.clone(), object),
        Some(parents) => nested(descriptor, object, parents)?,
    };
    let unknown = |name: &str| {
        BadInput::field(
            path,
            format!(
                "unknown query parameter `{path}`: {} has no field `{name}`",
                descriptor.name()
            ),
        )
    };
    let field = descriptor
        .get_field_by_name(name)
        .or_else(|| descriptor.get_field_by_json_name(name))
        .ok_or_else(|| unknown(name))?;
    let name = field.name().to_owned();
    if field.is_map() {
        let Some(map_key) = map_key else {
            return Err(BadInput::field(
                &name,
                format!("`{name}` is a map: pass it as `{name}[key]=value`"),
            ));
        };
        let Kind::Message(entry) = field.kind() else {
            return Err(BadInput::field(&name, format!("`{name}` is not a map")));
        };
        let value_field = entry.map_entry_value_field();
        let entry_value = scalar(&value_field, &name, value)?;
        let slot = object
            .entry(name.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(map) = slot {
            map.insert(map_key.to_owned(), entry_value);
        }
        return Ok(());
    }
    let parsed = scalar(&field, &name, value)?;
    if field.is_list() {
        let slot = object
            .entry(name.clone())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(values) = slot {
            values.push(parsed);
        }
    } else if object.insert(name.clone(), parsed).is_some() {
        return Err(BadInput::field(
            &name,
            format!("`{name}` is given twice; it takes one value"),
        ));
    }
    Ok(())
}

/// The message field at the dotted `parents` path (e.g. `filter`), and its
/// JSON object inside `object` (made if absent).
fn nested<'a>(
    descriptor: &MessageDescriptor,
    mut object: &'a mut Map<String, Value>,
    parents: &str,
) -> Result<(MessageDescriptor, &'a mut Map<String, Value>), BadInput> {
    let mut descriptor = descriptor.clone();
    for part in parents.split('.') {
        let field = descriptor
            .get_field_by_name(part)
            .or_else(|| descriptor.get_field_by_json_name(part))
            .ok_or_else(|| {
                BadInput::field(
                    parents,
                    format!(
                        "unknown query parameter `{parents}…`: {} has no field `{part}`",
                        descriptor.name()
                    ),
                )
            })?;
        let Kind::Message(inner) = field.kind() else {
            return Err(BadInput::field(
                parents,
                format!("`{part}` is not a message: it takes no `.field`"),
            ));
        };
        if field.is_list() || field.is_map() {
            return Err(BadInput::field(
                parents,
                format!("`{part}` is repeated: its fields cannot be set from the query"),
            ));
        }
        let slot = object
            .entry(field.name().to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(inner_object) = slot else {
            return Err(BadInput::field(
                parents,
                format!("`{part}` is set twice, in the body and the query"),
            ));
        };
        object = inner_object;
        descriptor = inner;
    }
    Ok((descriptor, object))
}

/// A query value as the JSON the field's kind takes: numbers for 32-bit
/// numbers and floats, booleans, strings for the rest (64-bit numbers,
/// enums by name, timestamps and durations, as the JSON mapping spells
/// them).
fn scalar(field: &FieldDescriptor, name: &str, value: &str) -> Result<Value, BadInput> {
    let not = |what: &str| BadInput::field(name, format!("`{name}` must be {what}, not `{value}`"));
    Ok(match field.kind() {
        Kind::Bool => match value {
            "true" | "1" | "" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(not("true or false")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => {
            Value::from(value.parse::<i64>().map_err(|_| not("a whole number"))?)
        }
        Kind::Float | Kind::Double => {
            let number = value.parse::<f64>().map_err(|_| not("a number"))?;
            serde_json::Number::from_f64(number)
                .map(Value::Number)
                .ok_or_else(|| not("a finite number"))?
        }
        Kind::Enum(_) => match value.parse::<i64>() {
            Ok(number) => Value::from(number),
            Err(_) => Value::String(value.to_owned()),
        },
        _ => Value::String(value.to_owned()),
    })
}

/// Renders RunEvents as JSON and names their kind.
#[derive(Debug, Clone)]
pub(crate) struct EventRenderer {
    descriptor: MessageDescriptor,
}

impl EventRenderer {
    /// From the built-in descriptors.
    pub(crate) fn new(pool: &prost_reflect::DescriptorPool) -> Result<Self, String> {
        let descriptor = pool
            .get_message_by_name("agentmesh.orchestrator.v1.RunEvent")
            .ok_or("agentmesh.orchestrator.v1.RunEvent is not in the descriptors")?;
        Ok(Self { descriptor })
    }

    /// `(kind, JSON)` of `event`: the kind is the name of the oneof field
    /// set (`token_delta`, …), `event` when none is.
    pub(crate) fn render(
        &self,
        event: &agentmesh_proto::orchestrator::v1::RunEvent,
    ) -> (String, Value) {
        let json = render_prost(&self.descriptor, event);
        let kind = self
            .descriptor
            .oneofs()
            .flat_map(|oneof| oneof.fields().collect::<Vec<_>>())
            .map(|field| field.name().to_owned())
            .find(|name| json.get(name).is_some_and(|value| !value.is_null()))
            .unwrap_or_else(|| "event".to_owned());
        (kind, json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(name: &str) -> MessageDescriptor {
        let pool = prost_reflect::DescriptorPool::decode(agentmesh_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        match pool.get_message_by_name(name) {
            Some(descriptor) => descriptor,
            None => panic!("{name} is not in the contract"),
        }
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn query_strings_fill_repeated_map_and_timestamp_fields() {
        let list = descriptor("agentmesh.orchestrator.v1.ListRunsRequest");
        let query = pairs(&[
            ("page_size", "5"),
            ("states", "RUN_STATE_RUNNING"),
            ("states", "RUN_STATE_QUEUED"),
            ("labels[team]", "search"),
            ("createTimeStart", "2026-01-02T03:04:05Z"),
        ]);
        let built = build(&list, None, &[], &query);
        let Ok(message) = built else {
            panic!("{built:?}");
        };
        let json = render(&message);
        assert_eq!(json["page_size"], 5);
        assert_eq!(json["states"][1], "RUN_STATE_QUEUED");
        assert_eq!(json["labels"]["team"], "search");
        assert_eq!(json["create_time_start"], "2026-01-02T03:04:05Z");
    }

    #[test]
    fn dotted_query_keys_fill_fields_of_message_fields() {
        let query_request = descriptor("agentmesh.audit.v1.QueryRequest");
        let query = pairs(&[
            ("filter.run_ids", "r1"),
            ("filter.types", "EVENT_TYPE_LLM_CALL"),
            ("filter.types", "EVENT_TYPE_TOOL_CALL"),
            ("filter.startTime", "2026-01-02T03:04:05Z"),
            ("page_size", "3"),
        ]);
        let built = build(&query_request, None, &[], &query);
        let Ok(message) = built else {
            panic!("{built:?}");
        };
        let json = render(&message);
        assert_eq!(json["filter"]["run_ids"], serde_json::json!(["r1"]));
        assert_eq!(
            json["filter"]["types"],
            serde_json::json!(["EVENT_TYPE_LLM_CALL", "EVENT_TYPE_TOOL_CALL"])
        );
        assert_eq!(json["filter"]["start_time"], "2026-01-02T03:04:05Z");
        for (key, named) in [
            ("filter.nope", "filter.nope"),
            ("nope.run_ids", "nope.run_ids"),
            ("page_size.x", "page_size.x"),
        ] {
            let bad = build(&query_request, None, &[], &pairs(&[(key, "1")]));
            let Err(bad) = bad else {
                panic!("{key} accepted");
            };
            assert!(
                bad.message.contains(named.split('.').next().unwrap_or("")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_query_values_name_the_parameter() {
        let list = descriptor("agentmesh.orchestrator.v1.ListRunsRequest");
        let err = build(&list, None, &[], &pairs(&[("page_size", "many")])).err();
        assert_eq!(err.and_then(|err| err.field), Some("page_size".to_owned()));
        let err = build(&list, None, &[], &pairs(&[("colour", "red")])).err();
        assert!(err.is_some_and(|err| err.message.contains("unknown query parameter `colour`")));
        let err = build(
            &list,
            None,
            &[],
            &pairs(&[("page_size", "1"), ("page_size", "2")]),
        )
        .err();
        assert!(err.is_some_and(|err| err.message.contains("twice")));
    }

    #[test]
    fn bodies_take_both_spellings_and_variables_win() {
        let cancel = descriptor("agentmesh.orchestrator.v1.CancelRunRequest");
        let body = serde_json::json!({"runId": "other", "reason": "done"});
        let built = build(&cancel, Some(body), &pairs(&[("run_id", "r-1")]), &[]);
        let Ok(message) = built else {
            panic!("{built:?}");
        };
        let json = render(&message);
        assert_eq!(json["reason"], "done");
        assert_eq!(json["run_id"], "r-1");
    }

    #[test]
    fn unknown_fields_and_non_objects_are_refused() {
        let start = descriptor("agentmesh.orchestrator.v1.StartRunRequest");
        assert!(build(&start, Some(serde_json::json!({"objectiv": "x"})), &[], &[]).is_err());
        assert!(build(&start, Some(serde_json::json!(["x"])), &[], &[]).is_err());
        assert!(build(&start, Some(serde_json::json!({"objective": 5})), &[], &[]).is_err());
    }

    #[test]
    fn events_are_named_by_their_kind() {
        use agentmesh_proto::orchestrator::v1::{RunEvent, run_event};
        let pool = prost_reflect::DescriptorPool::decode(agentmesh_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        let Ok(renderer) = EventRenderer::new(&pool) else {
            panic!("no RunEvent");
        };
        let event = RunEvent {
            run_id: "r".to_owned(),
            sequence: 3,
            event: Some(run_event::Event::TokenDelta(
                agentmesh_proto::orchestrator::v1::TokenDelta {
                    text: "hi".to_owned(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let (kind, json) = renderer.render(&event);
        assert_eq!(kind, "token_delta");
        assert_eq!(json["token_delta"]["text"], "hi");
        assert_eq!(json["sequence"], 3);
    }
}
