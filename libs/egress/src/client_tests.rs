//! The client against small HTTP servers on loopback: what is refused
//! never gets a connection, what is allowed is fetched.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::address::AddressClass;
use crate::policy::EgressConfig;

/// A server answering every request with `response`, recording each
/// request's head (lower-cased).
struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    async fn start(ip: &str, response: impl Fn(u16) -> String + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0_u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).to_ascii_lowercase());
                let _ = socket.write_all(response(port).as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        Self { port, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn redirect(location: String) -> String {
    format!(
        "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
}

fn client(config: EgressConfig) -> EgressClient {
    EgressClient::new(config.compile().unwrap(), &ClientOptions::default()).unwrap()
}

fn allowing(cidrs: &[&str]) -> EgressConfig {
    EgressConfig {
        allow_cidrs: cidrs.iter().map(|c| (*c).to_owned()).collect(),
        ..EgressConfig::default()
    }
}

async fn get(client: &EgressClient, url: &str) -> Result<reqwest::Response, EgressError> {
    let request = client
        .request(reqwest::Method::GET, url.parse().unwrap())
        .header("authorization", "Bearer secret-token")
        .header("cookie", "session=secret")
        .build()
        .unwrap();
    client.send(request).await
}

fn refused_class(result: Result<reqwest::Response, EgressError>) -> AddressClass {
    match result {
        Err(EgressError::Refused(Refusal {
            rule: Rule::Address(_, class),
            ..
        })) => class,
        other => panic!("expected an address refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn loopback_is_refused_by_literal_and_by_name_before_any_connection() {
    let server = Server::start("127.0.0.1", |_| ok("hi")).await;
    let client = client(EgressConfig::default());
    let port = server.port;
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://localhost:{port}/"),
    ] {
        assert_eq!(
            refused_class(get(&client, &url).await),
            AddressClass::Loopback,
            "{url}"
        );
    }
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn an_allowed_range_is_fetched_and_the_body_capped() {
    let server = Server::start("127.0.0.1", |_| ok("0123456789")).await;
    let client = client(allowing(&["127.0.0.1/32"]));
    let url = format!("http://127.0.0.1:{}/x", server.port);
    let response = get(&client, &url).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = read_capped(response, 4).await.unwrap();
    assert_eq!(
        (body.bytes.as_slice(), body.truncated),
        (&b"0123"[..], true)
    );
    let response = get(&client, &url).await.unwrap();
    let body = read_capped(response, 100).await.unwrap();
    assert_eq!(
        (body.bytes.as_slice(), body.truncated),
        (&b"0123456789"[..], false)
    );
    // By name too: `localhost`'s addresses other than 127.0.0.1 are dropped.
    let url = format!("http://localhost:{}/x", server.port);
    assert_eq!(get(&client, &url).await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_redirect_to_a_refused_address_is_refused() {
    let target = Server::start("127.0.0.2", |_| ok("internal")).await;
    let target_port = target.port;
    let first = Server::start("127.0.0.1", move |_| {
        redirect(format!("http://127.0.0.2:{target_port}/secret"))
    })
    .await;
    let client = client(allowing(&["127.0.0.1/32"]));
    let url = format!("http://127.0.0.1:{}/", first.port);
    assert_eq!(
        refused_class(get(&client, &url).await),
        AddressClass::Loopback
    );
    assert_eq!(first.requests().len(), 1);
    assert!(target.requests().is_empty());
}

#[tokio::test]
async fn redirects_are_bounded() {
    let server = Server::start("127.0.0.1", |port| {
        redirect(format!("http://127.0.0.1:{port}/again"))
    })
    .await;
    let client = client(EgressConfig {
        max_redirects: 3,
        ..allowing(&["127.0.0.1/32"])
    });
    let url = format!("http://127.0.0.1:{}/", server.port);
    match get(&client, &url).await {
        Err(EgressError::Refused(Refusal {
            rule: Rule::TooManyRedirects(3),
            ..
        })) => {}
        other => panic!("expected too many redirects, got {other:?}"),
    }
    assert_eq!(server.requests().len(), 4);
}

#[tokio::test]
async fn credentials_do_not_follow_a_redirect_to_another_host() {
    let other = Server::start("127.0.0.2", |_| ok("other")).await;
    let other_port = other.port;
    let first = Server::start("127.0.0.1", move |_| {
        redirect(format!("http://127.0.0.2:{other_port}/landing"))
    })
    .await;
    let client = client(allowing(&["127.0.0.0/8"]));
    let url = format!("http://127.0.0.1:{}/", first.port);
    assert_eq!(get(&client, &url).await.unwrap().status(), 200);
    let first_seen = first.requests();
    assert!(first_seen[0].contains("authorization: bearer secret-token"));
    let other_seen = other.requests();
    assert_eq!(other_seen.len(), 1);
    assert!(
        !other_seen[0].contains("authorization"),
        "{}",
        other_seen[0]
    );
    assert!(!other_seen[0].contains("cookie"), "{}", other_seen[0]);
    assert!(!other_seen[0].contains("secret"), "{}", other_seen[0]);
}

#[tokio::test]
async fn host_lists_apply_to_redirects() {
    let target = Server::start("127.0.0.1", |_| ok("x")).await;
    let target_port = target.port;
    let first = Server::start("127.0.0.1", move |_| {
        redirect(format!("http://localhost:{target_port}/"))
    })
    .await;
    let client = client(EgressConfig {
        allow_hosts: vec!["127.0.0.1".into()],
        ..allowing(&["127.0.0.1/32"])
    });
    let url = format!("http://127.0.0.1:{}/", first.port);
    match get(&client, &url).await {
        Err(EgressError::Refused(Refusal {
            rule: Rule::HostNotAllowed,
            target,
        })) => assert_eq!(target, "localhost"),
        other => panic!("expected a host refusal, got {other:?}"),
    }
    assert!(target.requests().is_empty());
}

#[tokio::test]
async fn a_closed_port_is_a_transport_error_without_the_url() {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let client = client(allowing(&["127.0.0.1/32"]));
    match get(&client, &format!("http://127.0.0.1:{port}/?token=abc")).await {
        Err(EgressError::Transport(message)) => assert!(!message.contains("abc"), "{message}"),
        other => panic!("expected a transport error, got {other:?}"),
    }
}
