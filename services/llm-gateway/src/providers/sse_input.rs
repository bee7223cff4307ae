//! The bytes of an SSE response body, made safe for `eventsource-stream`
//! before it parses them.
//!
//! Two gaps of eventsource-stream 0.2 are closed here, at the byte level,
//! so that parsing follows the SSE specification whatever the chunking:
//!
//! * a body starting with a byte-order mark made it panic (it strips the
//!   three-byte U+FEFF by slicing one byte off a string). The one leading
//!   BOM the specification allows is removed here, and an empty line is
//!   sent first, so the parser never sees a string starting with U+FEFF (a
//!   second BOM is then part of a field name, as the specification says);
//!   an empty line before the first field changes nothing.
//! * a body ending in CR waited for an LF that never comes, so its last
//!   event (`data: [DONE]\r\r`) was lost. At the end of a body that ends in
//!   CR an LF is added: CR LF is one line end, so no line is added.
//!
//! Bytes flow: transport chunks → [`normalise`] → `eventsource()` →
//! the protocol's decoder.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

/// The UTF-8 encoding of U+FEFF.
const BOM: &[u8] = b"\xEF\xBB\xBF";

type ByteStream = BoxStream<'static, reqwest::Result<Bytes>>;

struct State {
    inner: ByteStream,
    /// Bytes held back while they may still be the start of a BOM; `None`
    /// once the start of the body has been passed on.
    head: Option<Vec<u8>>,
    /// Whether the last byte passed on was CR.
    ends_in_cr: bool,
    /// The empty line was sent / the body has ended.
    primed: bool,
    ended: bool,
}

/// `bytes` with one leading BOM removed, an empty line before it, and an LF
/// after a final CR.
pub(crate) fn normalise(bytes: ByteStream) -> ByteStream {
    let state = State {
        inner: bytes,
        head: Some(Vec::new()),
        ends_in_cr: false,
        primed: false,
        ended: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if !state.primed {
            state.primed = true;
            return Some((Ok(Bytes::from_static(b"\n")), state));
        }
        loop {
            if state.ended {
                return None;
            }
            let chunk = match state.inner.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(err)) => return Some((Err(err), state)),
                None => {
                    state.ended = true;
                    // A held-back start that never became a BOM, and the
                    // LF that completes a final CR.
                    let mut rest = state.head.take().unwrap_or_default();
                    if rest.last().is_some_and(|byte| *byte == b'\r')
                        || (rest.is_empty() && state.ends_in_cr)
                    {
                        rest.push(b'\n');
                    }
                    if rest.is_empty() {
                        return None;
                    }
                    return Some((Ok(Bytes::from(rest)), state));
                }
            };
            let chunk = match state.head.take() {
                None => chunk,
                Some(mut head) => {
                    head.extend_from_slice(&chunk);
                    if head.len() < BOM.len() && BOM.starts_with(&head) {
                        // Still undecided: wait for more bytes.
                        state.head = Some(head);
                        continue;
                    }
                    let body = head.strip_prefix(BOM).unwrap_or(&head);
                    Bytes::copy_from_slice(body)
                }
            };
            if let Some(last) = chunk.last() {
                state.ends_in_cr = *last == b'\r';
            }
            return Some((Ok(chunk), state));
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(chunks: &[&[u8]]) -> Vec<u8> {
        let chunks: Vec<reqwest::Result<Bytes>> = chunks
            .iter()
            .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
            .collect();
        let out: Vec<reqwest::Result<Bytes>> = normalise(futures::stream::iter(chunks).boxed())
            .collect()
            .await;
        out.into_iter()
            .flat_map(|chunk| chunk.unwrap().to_vec())
            .collect()
    }

    #[tokio::test]
    async fn one_leading_bom_is_removed_across_chunks() {
        assert_eq!(run(&[b"\xEF\xBB\xBFdata: x\n\n"]).await, b"\ndata: x\n\n");
        assert_eq!(run(&[b"\xEF", b"\xBB", b"\xBFdata"]).await, b"\ndata");
        assert_eq!(run(&[b"\xEF\xBB\xBF\xEF\xBB\xBF"]).await, b"\n\xEF\xBB\xBF");
        assert_eq!(run(&[b"\xEF\xBB"]).await, b"\n\xEF\xBB");
        assert_eq!(run(&[b"\xEF", b"x"]).await, b"\n\xEFx");
        assert_eq!(run(&[]).await, b"\n");
    }

    #[tokio::test]
    async fn a_final_cr_is_completed() {
        assert_eq!(run(&[b"data: x\r\r"]).await, b"\ndata: x\r\r\n");
        assert_eq!(run(&[b"data: x\r", b""]).await, b"\ndata: x\r\n");
        assert_eq!(run(&[b"\r"]).await, b"\n\r\n");
        assert_eq!(run(&[b"data: x\n\n"]).await, b"\ndata: x\n\n");
    }
}
