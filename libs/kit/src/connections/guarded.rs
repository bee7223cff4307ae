//! The IO wrapper of every accepted connection: holds its place under the
//! listener's cap, and closes it when it has not finished its opening in
//! time or has been idle too long.
//!
//! ```text
//! poll_read / poll_write ─▶ deadline now? ─ none ─────────▶ the socket
//!                              ├─ opening not done: accepted + handshake_timeout
//!                              ├─ calls open (gRPC): none
//!                              └─ idle since t:      t + idle_timeout
//!                           passed ─▶ TimedOut error: the server drops the connection
//! ```
//!
//! The deadline's timer wakes the connection's task (every read and write
//! of a connection runs in it), so a connection that sends nothing is
//! still closed. Calls are counted by the [`super::StreamCountLayer`]
//! through the connection's [`Activity`]; the last call to end wakes the
//! task so the idle deadline starts at once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use super::ListenerShared;
use super::metrics::CloseReason;

/// What a connection speaks, which says when its opening is done and what
/// makes it idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC: open once the client's preface and first SETTINGS frame are
    /// read; idle while no call is open (keep-alive pings do not count).
    Http2,
    /// The admin HTTP/1 port: open once the first request's headers are
    /// read; idle while no byte passes either way.
    Http1,
    /// gRPC with gRPC-Web: each connection is HTTP/2 or HTTP/1.1, told
    /// apart by its first bytes (the HTTP/2 preface or not); open as
    /// either says; idle, either way, while no call is open (a gRPC-Web
    /// stream over HTTP/1.1 is a call like any other).
    Http2OrHttp1,
}

/// The calls open on a connection and since when it has had none, shared
/// by the connection and the layer that counts its calls.
#[derive(Debug)]
pub struct Activity {
    open: AtomicUsize,
    epoch: Instant,
    idle_since_ms: AtomicU64,
    waker: AtomicWaker,
}

impl Activity {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            epoch: Instant::now(),
            idle_since_ms: AtomicU64::new(0),
            waker: AtomicWaker::new(),
        }
    }

    /// Counts a call as open until the returned guard is dropped.
    pub fn open_call(self: &Arc<Self>) -> CallGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        CallGuard(Arc::clone(self))
    }

    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(now, Ordering::Release);
    }

    fn idle_since(&self) -> Option<Instant> {
        (self.open.load(Ordering::Acquire) == 0).then(|| {
            self.epoch
                + std::time::Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
        })
    }
}

/// A call open on a connection (see [`Activity::open_call`]).
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.touch();
            // The connection may be parked in a read: let it arm its idle
            // deadline now rather than at its next ping.
            self.0.waker.wake();
        }
    }
}

/// The client's opening, read as it passes.
#[derive(Debug)]
enum Opening {
    /// HTTP/2: bytes read so far of the 24-byte preface and the frame
    /// after it (its 9-byte header, then its payload).
    Http2 {
        read: usize,
        header: [u8; 9],
    },
    /// HTTP/1: the last four bytes read, looking for the end of the headers.
    Http1 {
        last: u32,
    },
    /// Either: the first bytes read so far, until there are enough to
    /// tell the HTTP/2 preface from an HTTP/1.1 request line.
    Sniff {
        read: usize,
        first: [u8; SNIFF],
    },
    Done,
}

/// The HTTP/2 connection preface's length.
const PREFACE: usize = 24;
const FRAME_HEADER: usize = 9;
/// Bytes that tell the HTTP/2 preface (`PRI * HTTP/2.0…`) from any
/// HTTP/1.1 request line (`POST /…`, `OPTIONS /…`).
const SNIFF: usize = 4;

impl Opening {
    fn new(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Http2 => Self::Http2 {
                read: 0,
                header: [0; FRAME_HEADER],
            },
            Protocol::Http1 => Self::Http1 { last: 0 },
            Protocol::Http2OrHttp1 => Self::Sniff {
                read: 0,
                first: [0; SNIFF],
            },
        }
    }

    /// Takes in the next bytes read.
    fn feed(&mut self, bytes: &[u8]) {
        match self {
            Self::Done => {}
            Self::Sniff { read, first } => {
                let mut rest = bytes;
                while let Some((&byte, tail)) = rest.split_first() {
                    if let Some(slot) = first.get_mut(*read) {
                        *slot = byte;
                    }
                    *read += 1;
                    rest = tail;
                    if *read == SNIFF {
                        let first = *first;
                        *self = if &first == b"PRI " {
                            Self::Http2 {
                                read: SNIFF,
                                header: [0; FRAME_HEADER],
                            }
                        } else {
                            Self::Http1 {
                                last: u32::from_be_bytes(first),
                            }
                        };
                        self.feed(rest);
                        return;
                    }
                }
            }
            Self::Http1 { last } => {
                for &byte in bytes {
                    *last = (*last << 8) | u32::from(byte);
                    if *last == u32::from_be_bytes(*b"\r\n\r\n") {
                        *self = Self::Done;
                        return;
                    }
                }
            }
            Self::Http2 { read, header } => {
                for &byte in bytes {
                    if let Some(slot) = read.checked_sub(PREFACE).and_then(|at| header.get_mut(at))
                    {
                        *slot = byte;
                    }
                    *read += 1;
                    let [a, b, c, ..] = *header;
                    let length = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                    if *read >= PREFACE + FRAME_HEADER + length {
                        *self = Self::Done;
                        return;
                    }
                }
            }
        }
    }

    fn done(&self) -> bool {
        matches!(self, Self::Done)
    }
}

pin_project_lite::pin_project! {
    /// An accepted connection under a listener's limits (see the module doc).
    pub struct Guarded<IO> {
        #[pin]
        io: IO,
        protocol: Protocol,
        opening: Opening,
        accepted: Instant,
        activity: Arc<Activity>,
        timer: Pin<Box<Sleep>>,
        place: super::Place,
    }
}

impl<IO> std::fmt::Debug for Guarded<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("protocol", &self.protocol)
            .field("opening", &self.opening)
            .finish_non_exhaustive()
    }
}

impl<IO> Guarded<IO> {
    /// `io`, accepted now, holding `place` under its listener's cap.
    pub(crate) fn new(io: IO, protocol: Protocol, place: super::Place) -> Self {
        let accepted = Instant::now();
        let deadline = accepted + place.shared().handshake_timeout;
        Self {
            io,
            protocol,
            opening: Opening::new(protocol),
            accepted,
            activity: Arc::new(Activity::new()),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            place,
        }
    }

    /// The connection's calls and idleness.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}

/// Fails the IO once the connection's deadline has passed; arms the timer
/// (and the wake-up by its last call) otherwise.
fn check_deadline(
    cx: &mut Context<'_>,
    opening: &Opening,
    accepted: Instant,
    activity: &Activity,
    timer: &mut Pin<Box<Sleep>>,
    shared: &ListenerShared,
) -> io::Result<()> {
    activity.waker.register(cx.waker());
    let (deadline, reason) = if opening.done() {
        match activity.idle_since() {
            None => return Ok(()),
            Some(since) => (since + shared.idle_timeout, CloseReason::Idle),
        }
    } else {
        (accepted + shared.handshake_timeout, CloseReason::Handshake)
    };
    if timer.deadline() != deadline {
        timer.as_mut().reset(deadline);
    }
    match timer.as_mut().poll(cx) {
        Poll::Pending => Ok(()),
        Poll::Ready(()) => {
            shared.closed(reason);
            Err(io::Error::new(io::ErrorKind::TimedOut, reason.message()))
        }
    }
}

impl<IO: AsyncRead> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let shared = this.place.shared();
        if let Err(err) = check_deadline(
            cx,
            this.opening,
            *this.accepted,
            this.activity,
            this.timer,
            shared,
        ) {
            return Poll::Ready(Err(err));
        }
        let before = buf.filled().len();
        let result = this.io.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result
            && let Some(read) = buf.filled().get(before..)
            && !read.is_empty()
        {
            this.opening.feed(read);
            if *this.protocol == Protocol::Http1 {
                this.activity.touch();
            }
        }
        result
    }
}

impl<IO: AsyncWrite> Guarded<IO> {
    /// One write through the connection's deadline (both write forms share
    /// it); on HTTP/1, bytes written count as activity.
    fn guarded_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut IO>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let shared = this.place.shared();
        if let Err(err) = check_deadline(
            cx,
            this.opening,
            *this.accepted,
            this.activity,
            this.timer,
            shared,
        ) {
            return Poll::Ready(Err(err));
        }
        let result = write(this.io, cx);
        if *this.protocol == Protocol::Http1
            && let Poll::Ready(Ok(written)) = result
            && written > 0
        {
            this.activity.touch();
        }
        result
    }
}

impl<IO: AsyncWrite> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.guarded_write(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.guarded_write(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// What tonic puts in every request's extensions for a guarded connection:
/// the connection's [`Activity`], and the inner connection's own
/// information, which [`super::StreamCountLayer`] puts back in the
/// extensions (so `remote_addr()` and the auth layer find it as before).
#[derive(Clone)]
pub struct GuardedInfo {
    /// The connection's calls.
    pub activity: Arc<Activity>,
    restore: Arc<dyn Fn(&mut http::Extensions) + Send + Sync>,
}

impl GuardedInfo {
    /// Puts the inner connection's information into `extensions`.
    pub fn restore(&self, extensions: &mut http::Extensions) {
        (self.restore)(extensions);
    }
}

impl std::fmt::Debug for GuardedInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedInfo").finish_non_exhaustive()
    }
}

impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = GuardedInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let inner = self.io.connect_info();
        GuardedInfo {
            activity: Arc::clone(&self.activity),
            restore: Arc::new(move |extensions| {
                extensions.insert(inner.clone());
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http2_opening_ends_after_the_first_frame() {
        let mut opening = Opening::new(Protocol::Http2);
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        opening.feed(preface);
        assert!(!opening.done());
        // A SETTINGS frame with one 6-byte setting, fed in pieces.
        opening.feed(&[0, 0, 6, 4, 0]);
        opening.feed(&[0, 0, 0, 0, 0, 3]);
        assert!(!opening.done());
        opening.feed(&[0, 0, 0, 100]);
        assert!(opening.done());
        let mut empty = Opening::new(Protocol::Http2);
        let mut bytes = preface.to_vec();
        bytes.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
        empty.feed(&bytes);
        assert!(empty.done());
    }

    #[test]
    fn either_opening_follows_what_the_first_bytes_say() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let mut h2 = Opening::new(Protocol::Http2OrHttp1);
        h2.feed(&preface[..2]);
        h2.feed(&preface[2..]);
        // An empty SETTINGS frame after the preface ends the opening.
        h2.feed(&[0, 0, 0, 4, 0, 0, 0, 0]);
        assert!(!h2.done());
        h2.feed(&[0]);
        assert!(h2.done());

        let mut h1 = Opening::new(Protocol::Http2OrHttp1);
        let request = b"POST /pkg.Service/Method HTTP/1.1\r\nhost: x\r\n\r\n";
        h1.feed(&request[..3]);
        assert!(!h1.done());
        h1.feed(&request[3..request.len() - 1]);
        assert!(!h1.done());
        h1.feed(&request[request.len() - 1..]);
        assert!(h1.done());
    }

    #[test]
    fn the_http1_opening_ends_with_the_headers() {
        let mut opening = Opening::new(Protocol::Http1);
        opening.feed(b"GET /readyz HTTP/1.1\r\nHost: x\r\n");
        assert!(!opening.done());
        opening.feed(b"\r");
        opening.feed(b"\n");
        assert!(opening.done());
    }
}
