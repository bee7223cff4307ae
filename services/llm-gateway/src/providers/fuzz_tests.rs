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
use crate::providers::openai::ChunkDecoder;

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
