//! The HTTP/1.1 the provider speaks: one connection's requests read in turn
//! (keep-alive, `Expect: 100-continue`, bounded heads and bodies) and the
//! responses and errors written back.

use super::*;

// === HTTP/1.1 ===

/// One request read off a connection.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) method: String,
    pub(super) path: String,
    /// The client wants the connection kept after the answer.
    pub(super) keep_alive: bool,
    pub(super) body: Vec<u8>,
}

/// Why no request could be read.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The connection ended or broke: nothing to answer.
    Gone,
    /// A request came but cannot be served: answer this and close.
    Refuse { status: u16, message: String },
}

/// What the connection does after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum After {
    KeepAlive,
    Close,
}

pub(super) async fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    // Streamed events are small; Nagle's algorithm would hold them back.
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buffer).await {
            Ok(Some(request)) => request,
            Ok(None) | Err(ReadError::Gone) => return,
            Err(ReadError::Refuse { status, message }) => {
                shared.requests.fetch_add(1, Ordering::SeqCst);
                shared.counts.count(Outcome::Rejected);
                let body = error_body(&message, "invalid_request_error");
                let _ =
                    write_response(&mut stream, status, "application/json", &[], &body, true).await;
                let _ = stream.shutdown().await;
                return;
            }
        };
        shared.requests.fetch_add(1, Ordering::SeqCst);
        match answer(&shared, &mut stream, request).await {
            Ok(After::KeepAlive) => continue,
            Ok(After::Close) => {
                let _ = stream.shutdown().await;
                return;
            }
            Err(_) => return,
        }
    }
}

/// Reads one request; `Ok(None)` when the client closed between requests.
/// Bytes past the request stay in `buffer` for the next one.
pub(super) async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<Option<Request>, ReadError> {
    let head_len = loop {
        if let Some(end) = find(buffer, b"\r\n\r\n") {
            break end + 4;
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err(refuse(431, "the request head is too large"));
        }
        if fill(stream, buffer).await? == 0 {
            return if buffer.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Gone)
            };
        }
    };
    let head = String::from_utf8_lossy(buffer.get(..head_len).unwrap_or_default()).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse(400, "the request line is malformed"));
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(refuse(400, "the request line is malformed"));
    }
    let (keep_alive, content_length) = read_headers(stream, lines, version == "HTTP/1.1").await?;
    let length = content_length.unwrap_or(0);
    if length > MAX_BODY_BYTES {
        return Err(refuse(
            413,
            &format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    while buffer.len() < head_len + length {
        if fill(stream, buffer).await? == 0 {
            return Err(ReadError::Gone);
        }
    }
    let body = buffer
        .get(head_len..head_len + length)
        .unwrap_or_default()
        .to_vec();
    buffer.drain(..head_len + length);
    Ok(Some(Request {
        method: method.to_owned(),
        path: target.split('?').next().unwrap_or(target).to_owned(),
        keep_alive,
        body,
    }))
}

/// Reads the header lines of a request: whether the connection stays open
/// (starting from `keep_alive`, the version's default) and the body's
/// length. Answers `Expect: 100-continue` as it comes, on `stream`.
async fn read_headers<'a>(
    stream: &mut TcpStream,
    lines: impl Iterator<Item = &'a str>,
    keep_alive: bool,
) -> Result<(bool, Option<usize>), ReadError> {
    let mut keep_alive = keep_alive;
    let mut content_length: Option<usize> = None;
    for line in lines.filter(|line| !line.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(refuse(400, "a header line is malformed"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let Ok(length) = value.parse::<usize>() else {
                    return Err(refuse(400, "the content-length is not a number"));
                };
                if content_length.is_some_and(|known| known != length) {
                    return Err(refuse(400, "the content-length is given twice"));
                }
                content_length = Some(length);
            }
            "transfer-encoding" => {
                return Err(refuse(
                    411,
                    "chunked request bodies are not supported; send a content-length",
                ));
            }
            "connection" => {
                let value = value.to_ascii_lowercase();
                if value.split(',').any(|token| token.trim() == "close") {
                    keep_alive = false;
                } else if value.split(',').any(|token| token.trim() == "keep-alive") {
                    keep_alive = true;
                }
            }
            "expect" if value.eq_ignore_ascii_case("100-continue") => {
                let length = content_length.unwrap_or(0);
                if length <= MAX_BODY_BYTES {
                    stream
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await
                        .map_err(|_| ReadError::Gone)?;
                }
            }
            _ => {}
        }
    }
    Ok((keep_alive, content_length))
}

pub(super) fn refuse(status: u16, message: &str) -> ReadError {
    ReadError::Refuse {
        status,
        message: message.to_owned(),
    }
}

pub(super) async fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<usize, ReadError> {
    // Read straight into the buffer's spare room (no 16 KiB chunk on the
    // stack, carried by every future that reads).
    buffer.reserve(16 * 1024);
    stream.read_buf(buffer).await.map_err(|_| ReadError::Gone)
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

pub(super) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

pub(super) fn response_head(
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    length: Option<usize>,
    close: bool,
) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\n",
        reason(status)
    );
    match length {
        Some(length) => head.push_str(&format!("content-length: {length}\r\n")),
        None => head.push_str("cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"),
    }
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    // HTTP/1.1 keeps the connection by default: say so only when closing.
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Writes a whole response with a `Content-Length` body.
pub(super) async fn write_response(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let mut bytes =
        response_head(status, content_type, extra, Some(body.len()), close).into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await?;
    stream.flush().await
}

pub(super) fn error_body(message: &str, kind: &str) -> Vec<u8> {
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        .to_string()
        .into_bytes()
}

pub(super) async fn write_error(
    stream: &mut TcpStream,
    status: u16,
    extra: &[(&str, String)],
    message: &str,
    kind: &str,
    keep_alive: bool,
) -> io::Result<After> {
    let body = error_body(message, kind);
    write_response(
        stream,
        status,
        "application/json",
        extra,
        &body,
        !keep_alive,
    )
    .await?;
    Ok(if keep_alive {
        After::KeepAlive
    } else {
        After::Close
    })
}

/// Writes one chunk of a chunked body (a whole SSE event) and flushes it.
pub(super) async fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
    bytes.extend_from_slice(data);
    bytes.extend_from_slice(b"\r\n");
    stream.write_all(&bytes).await?;
    stream.flush().await
}
