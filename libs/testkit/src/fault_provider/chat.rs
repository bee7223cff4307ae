//! Chat Completions: parses a request, draws its fault, and answers it whole,
//! streamed (server-sent events), cut, broken or not at all (a hang).

use super::*;

// === Chat Completions ===

/// A checked Chat Completions request.
#[derive(Debug)]
pub(super) struct Chat {
    pub(super) id: String,
    pub(super) model: String,
    pub(super) created: u64,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) prompt_tokens: u64,
}

impl Chat {
    pub(super) fn parse(body: &[u8], id: u64, name: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|err| format!("the request body is not JSON: {err}"))?;
        let model = value
            .get("model")
            .and_then(Value::as_str)
            .ok_or("the request has no model")?;
        let messages = value
            .get("messages")
            .and_then(Value::as_array)
            .ok_or("the request has no messages array")?;
        let words: usize = messages.iter().map(content_words).sum();
        Ok(Self {
            id: format!("chatcmpl-{name}-{id}"),
            model: model.to_owned(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            stream: value.get("stream").and_then(Value::as_bool) == Some(true),
            include_usage: value
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true),
            prompt_tokens: words as u64 + 3,
        })
    }

    pub(super) fn usage(&self, completion_tokens: usize) -> Value {
        let completion = completion_tokens as u64;
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }

    pub(super) fn chunk(&self, choices: Value, usage: Value) -> Vec<u8> {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        // As OpenAI does: with include_usage every chunk carries `usage`,
        // null until the last.
        if self.include_usage
            && let Some(object) = chunk.as_object_mut()
        {
            object.insert("usage".to_owned(), usage);
        }
        format!("data: {chunk}\n\n").into_bytes()
    }

    pub(super) fn token_chunk(&self, index: usize, text: &str) -> Vec<u8> {
        let delta = if index == 0 {
            json!({"role": "assistant", "content": text})
        } else {
            json!({"content": text})
        };
        self.chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]),
            Value::Null,
        )
    }

    pub(super) fn completion(&self, answer: &str, tokens: usize) -> Vec<u8> {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": self.usage(tokens),
        })
        .to_string()
        .into_bytes()
    }
}

/// Whitespace-separated words of a message's content (a string, or text
/// parts).
pub(super) fn content_words(message: &Value) -> usize {
    match message.get("content") {
        Some(Value::String(text)) => text.split_whitespace().count(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .map(|text| text.split_whitespace().count())
            .sum(),
        _ => 0,
    }
}

/// Why a request gets no answer: its status, message and error type.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) status: u16,
    pub(super) message: String,
    pub(super) kind: &'static str,
}

/// The checks every request passes before it is answered, whichever HTTP
/// it came over: the route, a Chat Completions body, the outage switch.
/// A refusal is counted here.
pub(super) fn admit(
    shared: &Shared,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Chat, Refusal> {
    let refuse = |status, message, kind, outcome| {
        shared.counts.count(outcome);
        Refusal {
            status,
            message,
            kind,
        }
    };
    let known_path = matches!(path, "/v1/chat/completions" | "/chat/completions");
    if method != "POST" || !known_path {
        let message = format!("no route for {method} {path}");
        return Err(refuse(
            404,
            message,
            "invalid_request_error",
            Outcome::Rejected,
        ));
    }
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let chat = Chat::parse(body, id, &shared.config.name)
        .map_err(|message| refuse(400, message, "invalid_request_error", Outcome::Rejected))?;
    if shared.down.load(Ordering::SeqCst) {
        let message = "injected outage".to_owned();
        return Err(refuse(503, message, "server_error", Outcome::Down));
    }
    Ok(chat)
}

pub(super) async fn answer(
    shared: &Shared,
    stream: &mut TcpStream,
    request: Request,
) -> io::Result<After> {
    let keep_alive = request.keep_alive;
    let chat = match admit(shared, &request.method, &request.path, &request.body) {
        Ok(chat) => chat,
        Err(refused) => {
            let Refusal {
                status,
                message,
                kind,
            } = refused;
            return write_error(stream, status, &[], &message, kind, keep_alive).await;
        }
    };
    let fault = shared.draw();
    shared
        .counts
        .count(fault.map_or(Outcome::Ok, Outcome::Fault));
    answer_with(shared, stream, &chat, fault, keep_alive).await
}

/// Answers a parsed chat request as `fault` (none: the whole answer) says.
async fn answer_with(
    shared: &Shared,
    stream: &mut TcpStream,
    chat: &Chat,
    fault: Option<Fault>,
    keep_alive: bool,
) -> io::Result<After> {
    let config = &shared.config;
    let cut_after = config
        .cut_after_tokens
        .min(config.answer_tokens.saturating_sub(1));
    match fault {
        Some(Fault::Error500) => {
            write_error(
                stream,
                500,
                &[],
                "injected server error",
                "server_error",
                keep_alive,
            )
            .await
        }
        Some(Fault::RateLimited429) => {
            let retry_after = [("retry-after", config.retry_after.as_secs_f64().to_string())];
            write_error(
                stream,
                429,
                &retry_after,
                "injected rate limit",
                "rate_limit_exceeded",
                keep_alive,
            )
            .await
        }
        Some(Fault::Hang) => {
            hang(shared, stream).await;
            Ok(After::Close)
        }
        None if chat.stream => stream_answer(config, stream, chat, Ending::Whole, keep_alive).await,
        Some(Fault::CutStream) if chat.stream => {
            stream_answer(config, stream, chat, Ending::Cut(cut_after), keep_alive).await
        }
        Some(Fault::MalformedSse) if chat.stream => {
            stream_answer(config, stream, chat, Ending::Broken(cut_after), keep_alive).await
        }
        None => answer_whole(config, stream, chat, keep_alive).await,
        Some(Fault::CutStream) => answer_cut(config, stream, chat).await,
        Some(Fault::MalformedSse) => {
            let body = format!("{{\"id\": \"{}\", \"choices\": [", chat.id).into_bytes();
            write_response(stream, 200, "application/json", &[], &body, true).await?;
            Ok(After::Close)
        }
    }
}

/// The whole answer in one JSON body, after the configured pace.
async fn answer_whole(
    config: &FaultConfig,
    stream: &mut TcpStream,
    chat: &Chat,
    keep_alive: bool,
) -> io::Result<After> {
    if !config.pace.is_zero() {
        tokio::time::sleep(pace_total(config)).await;
    }
    let body = chat.completion(
        &expected_answer(&config.name, config.answer_tokens),
        config.answer_tokens,
    );
    write_response(stream, 200, "application/json", &[], &body, !keep_alive).await?;
    Ok(if keep_alive {
        After::KeepAlive
    } else {
        After::Close
    })
}

/// A body cut short: promises the whole answer, sends about half, closes.
async fn answer_cut(
    config: &FaultConfig,
    stream: &mut TcpStream,
    chat: &Chat,
) -> io::Result<After> {
    // Promise the whole body, send about half of it, then close.
    let body = chat.completion(
        &expected_answer(&config.name, config.answer_tokens),
        config.answer_tokens,
    );
    let sent = (body.len() / 2).max(1).min(body.len().saturating_sub(1));
    let mut bytes =
        response_head(200, "application/json", &[], Some(body.len()), true).into_bytes();
    bytes.extend_from_slice(body.get(..sent).unwrap_or_default());
    stream.write_all(&bytes).await?;
    stream.flush().await?;
    Ok(After::Close)
}

pub(super) fn pace_total(config: &FaultConfig) -> Duration {
    let tokens = u32::try_from(config.answer_tokens).unwrap_or(u32::MAX);
    config.pace.saturating_mul(tokens)
}

/// How a streamed answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// Every event, the terminating chunk, the connection kept.
    Whole,
    /// This many token events, then the connection closes with no
    /// terminating chunk.
    Cut(usize),
    /// This many token events, a frame that is not JSON, the terminating
    /// chunk, then close.
    Broken(usize),
}

pub(super) async fn stream_answer(
    config: &FaultConfig,
    stream: &mut TcpStream,
    chat: &Chat,
    ending: Ending,
    keep_alive: bool,
) -> io::Result<After> {
    let close = ending != Ending::Whole || !keep_alive;
    let head = response_head(200, "text/event-stream", &[], None, close);
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await?;

    let events = stream_events(config, chat, ending);
    for (index, event) in events.iter().enumerate() {
        if index > 0 && !config.pace.is_zero() {
            tokio::time::sleep(config.pace).await;
        }
        write_chunk(stream, event).await?;
    }
    if matches!(ending, Ending::Cut(_)) {
        // No terminating chunk: the caller shuts the socket down.
        return Ok(After::Close);
    }
    stream.write_all(b"0\r\n\r\n").await?;
    stream.flush().await?;
    Ok(if close {
        After::Close
    } else {
        After::KeepAlive
    })
}

/// The events of a streamed answer that ends as `ending` says, each an SSE
/// frame.
pub(super) fn stream_events(config: &FaultConfig, chat: &Chat, ending: Ending) -> Vec<Vec<u8>> {
    let tokens = config.answer_tokens;
    let mut events: Vec<Vec<u8>> = Vec::new();
    let token_events = match ending {
        Ending::Whole => tokens,
        Ending::Cut(count) | Ending::Broken(count) => count,
    };
    if tokens == 0 && ending == Ending::Whole {
        // Still say who is speaking, as OpenAI does.
        events.push(chat.token_chunk(0, ""));
    }
    for index in 0..token_events {
        events.push(chat.token_chunk(index, &token(&config.name, index, tokens)));
    }
    match ending {
        Ending::Whole => {
            events.push(chat.chunk(
                json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]),
                Value::Null,
            ));
            if chat.include_usage {
                events.push(chat.chunk(json!([]), chat.usage(tokens)));
            }
            events.push(b"data: [DONE]\n\n".to_vec());
        }
        Ending::Broken(_) => events.push(b"data: {\"choices\": [\n\n".to_vec()),
        Ending::Cut(_) => {}
    }
    events
}

/// Holds a request unanswered until the client closes the connection, then
/// records how long it was held.
pub(super) async fn hang(shared: &Shared, stream: &mut TcpStream) {
    let started = Instant::now();
    let open = OpenHang::new(shared);
    let mut scratch = [0_u8; 1024];
    loop {
        match stream.read(&mut scratch).await {
            Ok(0) | Err(_) => break,
            // A client that keeps writing is still there: keep holding.
            Ok(_) => {}
        }
    }
    open.closed(started.elapsed());
}

/// Counts a hang as open until it is closed or its task is aborted.
#[derive(Debug)]
pub(super) struct OpenHang<'a> {
    pub(super) shared: &'a Shared,
    pub(super) done: bool,
}

impl<'a> OpenHang<'a> {
    pub(super) fn new(shared: &'a Shared) -> Self {
        shared.lock_hangs().open += 1;
        Self {
            shared,
            done: false,
        }
    }

    pub(super) fn closed(mut self, held: Duration) {
        let mut hangs = self.shared.lock_hangs();
        hangs.open = hangs.open.saturating_sub(1);
        hangs.closes.push(held);
        self.done = true;
    }
}

impl Drop for OpenHang<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut hangs = self.shared.lock_hangs();
            hangs.open = hangs.open.saturating_sub(1);
        }
    }
}
