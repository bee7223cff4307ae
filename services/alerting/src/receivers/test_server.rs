//! Test helpers: a local HTTP server on 127.0.0.1:0 that records every
//! request (method, path, headers, body) and answers from a script (then
//! 200 "ok"), standing in for webhook consumers, Slack, PagerDuty and
//! Alertmanager; and a tiny SMTP responder that captures one message.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One scripted answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    hang: bool,
}

impl Reply {
    /// An answer with `status` and an empty body.
    pub(crate) fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
            hang: false,
        }
    }

    /// Never answers (for timeouts and deadlines).
    pub(crate) fn hang() -> Self {
        Self {
            hang: true,
            ..Self::status(200)
        }
    }

    /// With `body`.
    pub(crate) fn body(mut self, body: &str) -> Self {
        self.body = body.to_owned();
        self
    }

    /// With a header.
    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    /// "POST" …
    pub(crate) method: String,
    /// The path and query.
    pub(crate) path: String,
    /// The headers.
    pub(crate) headers: HeaderMap,
    /// The body.
    pub(crate) body: Vec<u8>,
}

impl Recorded {
    /// A header's value.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The body as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Debug, Default)]
struct Shared {
    script: Vec<Reply>,
    requests: Vec<Recorded>,
}

/// The recording server; stops when dropped.
#[derive(Debug)]
pub(crate) struct TestServer {
    url: String,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Starts a server answering the requests with `script` in turn, then
    /// with 200 "ok".
    pub(crate) async fn start(script: Vec<Reply>) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            script,
            requests: Vec::new(),
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, shared, task }
    }

    /// "http://127.0.0.1:<port>".
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The requests so far.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().unwrap().requests.clone()
    }
}

async fn handle(
    State(shared): State<Arc<Mutex<Shared>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut shared = shared.lock().unwrap();
        shared.requests.push(Recorded {
            method: method.to_string(),
            path: uri
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default(),
            headers,
            body: body.to_vec(),
        });
        if shared.script.is_empty() {
            Reply::status(200).body("ok")
        } else {
            shared.script.remove(0)
        }
    };
    if reply.hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap();
    let mut response = (status, reply.body).into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            axum::http::HeaderValue::from_str(&value).unwrap(),
        );
    }
    response
}

/// What the SMTP responder captured of one session.
#[derive(Debug, Clone, Default)]
pub(crate) struct SmtpCapture {
    /// The EHLO/HELO argument.
    pub(crate) hello: String,
    /// The MAIL FROM argument.
    pub(crate) mail_from: String,
    /// The RCPT TO arguments.
    pub(crate) rcpt_to: Vec<String>,
    /// The message (headers and body), dot-unstuffed, CRLF line ends.
    pub(crate) data: String,
}

/// A tiny SMTP server on 127.0.0.1:0 that accepts one session, answers as
/// a plain relay (no STARTTLS unless `offer_starttls`), and returns what it
/// captured. `rejection` replaces the answer to the message's final "." (e.g.
/// "451 try later") when given.
pub(crate) async fn smtp_responder(
    offer_starttls: bool,
    rejection: Option<&'static str>,
) -> (u16, JoinHandle<SmtpCapture>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        let mut capture = SmtpCapture::default();
        write
            .write_all(b"220 localhost ESMTP test\r\n")
            .await
            .unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                break;
            }
            let command = line.trim_end().to_owned();
            let upper = command.to_ascii_uppercase();
            if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                capture.hello = command[4..].trim().to_owned();
                let reply = if offer_starttls {
                    "250-localhost\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
                } else {
                    "250-localhost\r\n250 8BITMIME\r\n"
                };
                write.write_all(reply.as_bytes()).await.unwrap();
            } else if upper.starts_with("MAIL FROM:") {
                capture.mail_from = command[10..].trim().to_owned();
                write.write_all(b"250 OK\r\n").await.unwrap();
            } else if upper.starts_with("RCPT TO:") {
                capture.rcpt_to.push(command[8..].trim().to_owned());
                write.write_all(b"250 OK\r\n").await.unwrap();
            } else if upper == "DATA" {
                write.write_all(b"354 go ahead\r\n").await.unwrap();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return capture;
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let unstuffed = line.strip_prefix('.').unwrap_or(&line);
                    capture.data.push_str(unstuffed);
                }
                let answer = rejection.map_or_else(|| "250 OK queued".to_owned(), str::to_owned);
                write
                    .write_all(format!("{answer}\r\n").as_bytes())
                    .await
                    .unwrap();
            } else if upper == "QUIT" {
                write.write_all(b"221 bye\r\n").await.unwrap();
                break;
            } else if upper == "RSET" || upper == "NOOP" {
                write.write_all(b"250 OK\r\n").await.unwrap();
            } else {
                write.write_all(b"502 not implemented\r\n").await.unwrap();
            }
        }
        capture
    });
    (port, task)
}
