//! The limits against real sockets: a full listener resets new
//! connections at once, a silent one is closed at its handshake deadline,
//! and a place is given back when its connection closes.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::*;

fn settings(handshake: Duration) -> ConnectionSettings {
    ConnectionSettings {
        handshake_timeout: handshake,
        ..ConnectionSettings::default()
    }
}

/// A listener holding at most `cap` connections, served by a task that
/// keeps each admitted connection open (reading, as a server does) until
/// its deadline closes it.
fn serve(cap: usize, handshake: Duration) -> (SocketAddr, prometheus::Registry) {
    serve_speaking(cap, handshake, Protocol::Http2)
}

/// [`serve`], the listener speaking `protocol`.
fn serve_speaking(
    cap: usize,
    handshake: Duration,
    protocol: Protocol,
) -> (SocketAddr, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = ConnectionMetrics::register(&registry).unwrap();
    let shared = ListenerShared::new("test", "grpc", cap, &settings(handshake), &metrics);
    let tcp = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut listener = LimitedListener::new(tcp, shared, protocol);
    tokio::spawn(async move {
        loop {
            let (mut io, _) = listener.accept_guarded().await;
            tokio::spawn(async move {
                let _ = io.write_all(b"hello").await;
                let mut buf = [0u8; 64];
                while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, registry)
}

fn value(registry: &prometheus::Registry, name: &str) -> String {
    let text = {
        let mut buffer = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut buffer,
        )
        .unwrap();
        String::from_utf8(buffer).unwrap()
    };
    text.lines()
        .find(|line| line.starts_with(name))
        .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned()
}

/// What the first read of a fresh connection gives: the server's greeting,
/// or nothing (reset or closed).
async fn first_read(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = [0u8; 5];
    match stream.read_exact(&mut buf).await {
        Ok(_) => Some(buf.to_vec()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn beyond_the_cap_connections_are_reset_and_a_freed_place_is_reused() {
    let (addr, registry) = serve(2, Duration::from_secs(60));
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            first_read(&mut stream).await.as_deref(),
            Some(&b"hello"[..])
        );
        held.push(stream);
    }
    for _ in 0..3 {
        let mut refused = TcpStream::connect(addr).await.unwrap();
        assert_eq!(first_read(&mut refused).await, None);
    }
    assert_eq!(value(&registry, "agentmesh_connections_refused_total"), "3");
    assert_eq!(value(&registry, "agentmesh_connections_open"), "2");
    assert_eq!(value(&registry, "agentmesh_connections_max"), "2");
    drop(held.pop());
    // The place comes back once the server has seen the close.
    agentmesh_testkit::within(
        "a freed place taken again",
        Duration::from_secs(10),
        async {
            loop {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                if first_read(&mut stream).await.is_some() {
                    return stream;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_preface_is_closed_at_the_deadline() {
    let (addr, registry) = serve(4, Duration::from_millis(300));
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for stream in [&mut silent, &mut partial] {
        assert_eq!(first_read(stream).await.as_deref(), Some(&b"hello"[..]));
        let mut rest = Vec::new();
        // Ends (EOF or reset) instead of waiting forever.
        let _ = stream.read_to_end(&mut rest).await;
    }
    let closed =
        "agentmesh_connections_closed_total{listener=\"grpc\",reason=\"handshake_timeout\"}";
    agentmesh_testkit::within("the closes counted", Duration::from_secs(10), async {
        while value(&registry, closed) != "2"
            || value(&registry, "agentmesh_connections_open") != "0"
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn with_http1_too_each_opening_has_the_same_deadline() {
    let (addr, registry) = serve_speaking(8, Duration::from_millis(300), Protocol::Http2OrHttp1);
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial_preface = TcpStream::connect(addr).await.unwrap();
    partial_preface
        .write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .unwrap();
    let mut partial_request = TcpStream::connect(addr).await.unwrap();
    partial_request
        .write_all(b"POST /pkg.Service/Method HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut whole_request = TcpStream::connect(addr).await.unwrap();
    whole_request
        .write_all(b"POST /pkg.Service/Method HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    for stream in [&mut silent, &mut partial_preface, &mut partial_request] {
        assert_eq!(first_read(stream).await.as_deref(), Some(&b"hello"[..]));
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    }
    let closed =
        "agentmesh_connections_closed_total{listener=\"grpc\",reason=\"handshake_timeout\"}";
    agentmesh_testkit::within("the closes counted", Duration::from_secs(10), async {
        while value(&registry, closed) != "3" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The request whose headers came whole is open: its call decides now.
    assert_eq!(value(&registry, "agentmesh_connections_open"), "1");
    drop(whole_request);
}
