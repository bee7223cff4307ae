//! Fuzz targets of the streamed answers of both HTTP providers: the bytes
//! of an SSE response, cut into chunks anywhere, decode exactly as the same
//! bytes in one piece; a well-formed stream (any line endings, comments,
//! ids, cuts) decodes exactly as its events handed to the protocol decoder
//! one by one; arbitrary bytes never panic and end in `Finished` or an
//! error, never silently.

use agentmesh_testkit::fuzz::check;
use bytes::Bytes;
use eventsource_stream::Event;
use futures::StreamExt;
use proptest::prelude::*;

use crate::completion::ProviderEvent;
use crate::error::ProviderError;
use crate::providers::anthropic::EventDecoder;
use crate::providers::http::{SseDecoder, Timing, decode_sse};
use crate::providers::openai_answer::ChunkDecoder;

type Decoded = Vec<Result<ProviderEvent, ProviderError>>;

const OPENAI_RECORDINGS: &[&str] = &[
    include_str!("../../tests/wire/openai_text.sse"),
    include_str!("../../tests/wire/openai_tool_calls.sse"),
    include_str!("../../tests/wire/openai_error_midstream.sse"),
    include_str!("../../tests/wire/openai_no_done.sse"),
];

const ANTHROPIC_RECORDINGS: &[&str] = &[
    include_str!("../../tests/wire/anthropic_text.sse"),
    include_str!("../../tests/wire/anthropic_tool_use.sse"),
    include_str!("../../tests/wire/anthropic_error_midstream.sse"),
];

/// The `(event, data)` pairs of recorded streams.
fn recorded_events(recordings: &[&str]) -> Vec<(String, String)> {
    let mut events = Vec::new();
    for recording in recordings {
        for block in recording.split("\n\n") {
            let mut event = String::new();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    name.trim().clone_into(&mut event);
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            if !data.is_empty() {
                events.push((event, data.join("\n")));
            }
        }
    }
    events
}

/// Decodes `chunks` as one SSE response body.
fn decode<D: SseDecoder>(chunks: Vec<Vec<u8>>, decoder: D) -> Decoded {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => panic!("cannot build a runtime: {err}"),
    };
    runtime.block_on(async {
        let bytes = futures::stream::iter(
            chunks
                .into_iter()
                .map(|chunk| Ok::<_, reqwest::Error>(Bytes::from(chunk))),
        )
        .boxed();
        let timing = Timing::new(
            tokio::time::Instant::now(),
            std::time::Duration::from_secs(600),
            std::time::Duration::from_secs(600),
            None,
        );
        decode_sse(bytes, decoder, timing).collect().await
    })
}

/// `bytes` cut at `cuts` (positions taken modulo the length; empty chunks
/// included, as a transport may deliver them).
fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut positions: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
    positions.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for position in positions {
        chunks.push(bytes.get(start..position).unwrap_or_default().to_vec());
        start = position;
    }
    chunks.push(bytes.get(start..).unwrap_or_default().to_vec());
    chunks
}

/// What decoding must give for these events: each handed to the decoder in
/// turn, stopping at an error or the end marker, and an error when the
/// marker never comes (as `decode_sse` documents).
fn reference<D: SseDecoder>(events: &[(String, String)], mut decoder: D) -> Decoded {
    let mut decoded = Vec::new();
    for (name, data) in events {
        let event = Event {
            event: if name.is_empty() {
                "message".to_owned()
            } else {
                name.clone()
            },
            data: data.clone(),
            ..Event::default()
        };
        match decoder.on_event(&event) {
            Ok(events) => decoded.extend(events.into_iter().map(Ok)),
            Err(err) => {
                decoded.push(Err(err));
                return decoded;
            }
        }
        if decoder.is_complete() {
            return decoded;
        }
    }
    decoded.push(Err(ProviderError::Broken(format!(
        "the stream ended before {}: the answer is incomplete",
        decoder.end_marker()
    ))));
    decoded
}

/// How one event is written: its line ending, and whether a comment, an id
/// and a space after each colon come with it.
#[derive(Debug, Clone)]
struct Framing {
    line_end: &'static str,
    comment: bool,
    id: bool,
    space: bool,
}

fn framing() -> impl Strategy<Value = Framing> {
    (
        prop::sample::select(vec!["\n", "\r\n", "\r"]),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(line_end, comment, id, space)| Framing {
            line_end,
            comment,
            id,
            space,
        })
}

/// Writes events as an SSE body (with a leading byte-order mark when `bom`).
fn serialise(events: &[((String, String), Framing)], bom: bool) -> Vec<u8> {
    let mut text = String::new();
    if bom {
        text.push('\u{feff}');
    }
    for (index, ((name, data), framing)) in events.iter().enumerate() {
        let end = framing.line_end;
        // A value starting with a space needs the separating space (the
        // parser drops one).
        let colon = |value: &str| {
            if framing.space || value.starts_with(' ') {
                ": "
            } else {
                ":"
            }
        };
        if framing.comment {
            text.push_str(&format!(":keep-alive{end}"));
        }
        if framing.id {
            text.push_str(&format!("id{}{index}{end}", colon("")));
        }
        if !name.is_empty() {
            text.push_str(&format!("event{}{name}{end}", colon(name)));
        }
        for line in data.split('\n') {
            text.push_str(&format!("data{}{line}{end}", colon(line)));
        }
        text.push_str(end);
    }
    text.into_bytes()
}

/// Events of a protocol: recorded ones, and data that is not what the
/// decoder expects (other JSON, not JSON, the end marker early).
fn events(
    recorded: Vec<(String, String)>,
) -> impl Strategy<Value = Vec<((String, String), Framing)>> {
    let names: Vec<String> = recorded.iter().map(|(name, _)| name.clone()).collect();
    let event = prop_oneof![
        8 => prop::sample::select(recorded),
        1 => (prop::sample::select(names), "[ -~]{1,40}"),
        1 => (Just(String::new()), Just("[DONE]".to_owned())),
        1 => (Just(String::new()), "\\{\"(id|type|choices|error|usage)\":[ -~]{0,30}\\}"),
    ];
    prop::collection::vec((event, framing()), 0..12)
}

/// Bytes that look like SSE some of the time.
fn sse_noise() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            "data: ",
            "data:",
            "event: ",
            "id: ",
            "retry: 10",
            ":",
            "\n",
            "\r",
            "\r\n",
            "\n\n",
            "[DONE]",
            "{",
            "}",
            "\"",
            "{\"choices\":[{\"delta\":{\"content\":\"x\"}}]}",
            "{\"type\":\"message_stop\"}",
            "{\"error\":{}}",
            "\u{feff}",
            "é",
            "🙂",
        ])
        .prop_map(|piece| piece.as_bytes().to_vec()),
        any::<u8>().prop_map(|byte| vec![byte]),
        "[ -~]{0,10}".prop_map(String::into_bytes),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

/// Checks that the decoded stream is well-ended: nothing after an error or
/// `Finished`, and it ends in one of them.
fn well_ended(decoded: &Decoded) -> Result<(), TestCaseError> {
    let Some((last, before)) = decoded.split_last() else {
        return Err(TestCaseError::fail("the stream ended with no item at all"));
    };
    prop_assert!(
        matches!(last, Err(_) | Ok(ProviderEvent::Finished { .. })),
        "the stream ended silently with {last:?}"
    );
    for item in before {
        prop_assert!(
            matches!(item, Ok(event) if !matches!(event, ProviderEvent::Finished { .. })),
            "{item:?} before the end"
        );
    }
    Ok(())
}

fn chunking_invariance<D: SseDecoder + Default>(
    target: &str,
    bytes: impl Strategy<Value = Vec<u8>>,
) {
    let input = (bytes, prop::collection::vec(any::<usize>(), 0..16));
    check(target, input, |(bytes, cuts)| {
        let whole = decode(vec![bytes.clone()], D::default());
        well_ended(&whole)?;
        let pieces = decode(split(&bytes, &cuts), D::default());
        prop_assert_eq!(&pieces, &whole);
        let bytewise = decode(bytes.iter().map(|byte| vec![*byte]).collect(), D::default());
        prop_assert_eq!(&bytewise, &whole);
        Ok(())
    });
}

fn framing_transparency<D: SseDecoder + Default>(target: &str, recordings: &[&str]) {
    let input = (
        events(recorded_events(recordings)),
        any::<bool>(),
        prop::collection::vec(any::<usize>(), 0..16),
    );
    check(target, input, |(events, bom, cuts)| {
        let plain: Vec<(String, String)> = events.iter().map(|(event, _)| event.clone()).collect();
        let want = reference(&plain, D::default());
        let got = decode(split(&serialise(&events, bom), &cuts), D::default());
        prop_assert_eq!(got, want);
        Ok(())
    });
}

#[test]
fn fuzz_sse_openai_chunking_invariance() {
    chunking_invariance::<ChunkDecoder>("sse_openai_chunking_invariance", sse_noise());
}

#[test]
fn fuzz_sse_anthropic_chunking_invariance() {
    chunking_invariance::<EventDecoder>("sse_anthropic_chunking_invariance", sse_noise());
}

#[test]
fn fuzz_sse_openai_arbitrary_bytes() {
    chunking_invariance::<ChunkDecoder>(
        "sse_openai_arbitrary_bytes",
        prop::collection::vec(any::<u8>(), 0..256),
    );
}

#[test]
fn fuzz_sse_anthropic_arbitrary_bytes() {
    chunking_invariance::<EventDecoder>(
        "sse_anthropic_arbitrary_bytes",
        prop::collection::vec(any::<u8>(), 0..256),
    );
}

#[test]
fn fuzz_sse_openai_framing_transparency() {
    framing_transparency::<ChunkDecoder>("sse_openai_framing_transparency", OPENAI_RECORDINGS);
}

#[test]
fn fuzz_sse_anthropic_framing_transparency() {
    framing_transparency::<EventDecoder>(
        "sse_anthropic_framing_transparency",
        ANTHROPIC_RECORDINGS,
    );
}

// === typed and lenient Chat Completions parsing agree ===

/// A JSON value of any kind, well-typed ones most likely.
fn any_json(typed: BoxedStrategy<serde_json::Value>) -> BoxedStrategy<serde_json::Value> {
    use serde_json::{Value, json};
    prop_oneof![
        6 => typed,
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        1 => prop_oneof![Just(json!(-1)), Just(json!(2.5)), Just(json!(7))],
        1 => "[a-z\"\\\\é]{0,4}".prop_map(Value::from),
        1 => Just(json!([])),
        1 => Just(json!({})),
    ]
    .boxed()
}

fn text_json() -> BoxedStrategy<serde_json::Value> {
    any_json(
        "[a-z \"\\\\é]{0,6}"
            .prop_map(serde_json::Value::from)
            .boxed(),
    )
}

fn count_json() -> BoxedStrategy<serde_json::Value> {
    any_json((0u64..1000).prop_map(serde_json::Value::from).boxed())
}

/// An object with each of `members` present or not.
fn object(
    members: Vec<(&'static str, BoxedStrategy<serde_json::Value>)>,
) -> BoxedStrategy<serde_json::Value> {
    let members: Vec<_> = members
        .into_iter()
        .map(|(name, value)| prop::option::of(value).prop_map(move |value| (name, value)))
        .collect();
    members
        .prop_map(|members| {
            serde_json::Value::Object(
                members
                    .into_iter()
                    .filter_map(|(name, value)| Some((name.to_owned(), value?)))
                    .collect(),
            )
        })
        .boxed()
}

/// Completions and chunks as providers send them, and broken ones.
fn chat_answer() -> BoxedStrategy<serde_json::Value> {
    let function = object(vec![("name", text_json()), ("arguments", text_json())]);
    let call = object(vec![
        ("index", count_json()),
        ("id", text_json()),
        ("function", any_json(function)),
    ]);
    let message = object(vec![
        ("content", text_json()),
        ("refusal", text_json()),
        (
            "tool_calls",
            any_json(
                prop::collection::vec(any_json(call), 0..3)
                    .prop_map(serde_json::Value::from)
                    .boxed(),
            ),
        ),
    ]);
    let choice = object(vec![
        ("message", any_json(message.clone())),
        ("delta", any_json(message)),
        ("finish_reason", text_json()),
    ]);
    let usage = object(vec![
        ("prompt_tokens", count_json()),
        ("completion_tokens", count_json()),
        (
            "prompt_tokens_details",
            any_json(object(vec![("cached_tokens", count_json())])),
        ),
        (
            "completion_tokens_details",
            any_json(object(vec![("reasoning_tokens", count_json())])),
        ),
    ]);
    let error = object(vec![("type", text_json()), ("message", text_json())]);
    object(vec![
        ("id", text_json()),
        ("model", text_json()),
        (
            "choices",
            any_json(
                prop::collection::vec(any_json(choice), 0..3)
                    .prop_map(serde_json::Value::from)
                    .boxed(),
            ),
        ),
        ("usage", any_json(usage)),
        (
            "error",
            prop_oneof![3 => Just(serde_json::Value::Null), 1 => any_json(error)].boxed(),
        ),
        ("message", text_json()),
    ])
}

#[test]
fn fuzz_openai_typed_answers_read_as_the_lenient_path() {
    use crate::providers::openai_answer::{
        completion_from_body, parse_completion, typed_completion,
    };
    use crate::providers::openai_wire::Answer;
    check("openai_typed_answers", chat_answer(), |value| {
        let body = serde_json::to_vec(&value).unwrap();
        // A completion: whichever path reads it, the same result.
        let lenient = format!("{:?}", parse_completion(&value));
        prop_assert_eq!(
            format!("{:?}", completion_from_body(&body)),
            lenient.clone()
        );
        if let Some(answer) = Answer::parse(&body) {
            prop_assert_eq!(format!("{:?}", typed_completion(&answer)), lenient);
        }
        // A chunk, twice (the second continues the first's tool calls):
        // the same events.
        let mut typed = ChunkDecoder::default();
        let mut plain = ChunkDecoder::default();
        for _ in 0..2 {
            let event = Event {
                data: String::from_utf8(body.clone()).unwrap(),
                ..Event::default()
            };
            let got = typed.on_event(&event);
            let want = plain.value_chunk(&value);
            prop_assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
        // The state each kept (the finish reason) shows at the end.
        let done = Event {
            data: "[DONE]".to_owned(),
            ..Event::default()
        };
        prop_assert_eq!(
            format!("{:?}", typed.on_event(&done)),
            format!("{:?}", plain.on_event(&done))
        );
        Ok(())
    });
}

#[test]
fn well_formed_answers_take_the_typed_path() {
    use crate::providers::openai_wire::Answer;
    for (_, data) in recorded_events(&OPENAI_RECORDINGS[..2]) {
        if data.trim() != "[DONE]" {
            assert!(Answer::parse(data.as_bytes()).is_some(), "{data}");
        }
    }
    let completion = br#"{"id":"c1","model":"m","choices":[{"message":{"role":"assistant","content":"hi \"there\"","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":1}}}"#;
    assert!(Answer::parse(completion).is_some());
    assert!(Answer::parse(br#"{"error":{"message":"no"}}"#).is_none());
    assert!(Answer::parse(br#"{"choices":[],"error":null}"#).is_none());
}
