//! Connections that a fault can break at an exact byte.
//!
//! Hyper owns the HTTP framing, so a handler cannot simply stop halfway through a body:
//! bytes it hands over may still sit in hyper's buffer when an error makes hyper drop the
//! connection, and the client would get fewer bytes than scripted. Instead every accepted
//! socket is wrapped in a [`SimStream`] that the handler arms through the [`ConnControl`]
//! it gets as connect info. The armed stream cuts the next response itself: before its
//! first byte (a reset), or a given number of bytes after its head (a clean close that
//! leaves the body short of its `Content-Length`).
//!
//! Hyper reads the next request on a connection only once the previous response is
//! flushed, so every byte the stream writes after arming belongs to the response being
//! cut, and the first blank line it writes ends that response's head.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::lock;

/// How the next response on a connection is to be broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cut {
    /// Reset the connection before any byte of the response.
    Reset,
    /// Send the head and this many bytes after it, then close the connection. Those are
    /// exactly the body bytes when the response has a `Content-Length`, as every storage
    /// response does; a chunked body would count its framing too.
    AfterBody(u64),
}

/// The blank line that ends an HTTP/1 response head.
const HEAD_END: &[u8; 4] = b"\r\n\r\n";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Armed {
    #[default]
    Idle,
    Reset,
    /// `matched` counts the bytes of `HEAD_END` seen in a row; at 4 the body has begun.
    Truncate {
        matched: usize,
        body_left: u64,
    },
}

impl Armed {
    /// How many leading bytes of `buf` may be sent, and the state once they are.
    fn admit(self, buf: &[u8]) -> (usize, Armed) {
        let Armed::Truncate { mut matched, mut body_left } = self else {
            return (buf.len(), self);
        };
        let mut head = 0;
        while matched < HEAD_END.len() && head < buf.len() {
            matched = next_match(matched, buf[head]);
            head += 1;
        }
        let body = body_left.min((buf.len() - head) as u64);
        body_left -= body;
        // `body` is at most the rest of `buf`, so it fits in a usize.
        (head + body as usize, Armed::Truncate { matched, body_left })
    }
}

/// Progress through `HEAD_END` after `byte`, given `matched` bytes of it already seen.
fn next_match(matched: usize, byte: u8) -> usize {
    if byte == HEAD_END[matched] {
        matched + 1
    } else if byte == b'\r' {
        1
    } else {
        0
    }
}

/// The handle through which a handler arms its connection.
#[derive(Clone, Debug, Default)]
pub(super) struct ConnControl(Arc<Mutex<Armed>>);

impl ConnControl {
    /// Makes the connection break the response about to be written.
    pub(super) fn arm(&self, cut: Cut) {
        *lock(&self.0) = match cut {
            Cut::Reset => Armed::Reset,
            Cut::AfterBody(body_left) => Armed::Truncate { matched: 0, body_left },
        };
    }
}

impl Connected<IncomingStream<'_, SimListener>> for ConnControl {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> ConnControl {
        stream.io().control.clone()
    }
}

/// An accepted TCP connection that can be cut on purpose.
#[derive(Debug)]
pub(super) struct SimStream {
    tcp: TcpStream,
    control: ConnControl,
}

impl SimStream {
    fn write_armed(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut armed = lock(&self.control.0);
        if *armed == Armed::Reset {
            // With zero linger the close that follows this error sends a TCP reset.
            self.tcp.set_zero_linger()?;
            return Poll::Ready(Err(simulated(io::ErrorKind::ConnectionReset)));
        }
        let (allowed, _) = armed.admit(buf);
        if allowed == 0 && !buf.is_empty() {
            return Poll::Ready(Err(simulated(io::ErrorKind::BrokenPipe)));
        }
        let written = ready!(Pin::new(&mut self.tcp).poll_write(cx, &buf[..allowed]))?;
        *armed = armed.admit(&buf[..written]).1;
        Poll::Ready(Ok(written))
    }
}

fn simulated(kind: io::ErrorKind) -> io::Error {
    io::Error::new(kind, "connection cut by a simulator fault")
}

impl AsyncRead for SimStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_armed(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if *lock(&this.control.0) == Armed::Idle {
            return Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        }
        // An armed stream writes one slice at a time; short writes are allowed.
        let first = bufs.iter().find(|buf| !buf.is_empty()).map_or(&[][..], |buf| &buf[..]);
        this.write_armed(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A clean shutdown would send FIN first and the client would see an orderly end
        // instead of the reset it was promised.
        if *lock(&this.control.0) == Armed::Reset {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// A TCP listener whose connections are [`SimStream`]s. Dropping it fires `closed`,
/// which lets a shutdown wait until the port is really released.
#[derive(Debug)]
pub(super) struct SimListener {
    tcp: TcpListener,
    _closed: oneshot::Sender<()>,
}

impl SimListener {
    /// Wraps `tcp`; the receiver completes when the listener is dropped.
    pub(super) fn new(tcp: TcpListener) -> (SimListener, oneshot::Receiver<()>) {
        let (closed, on_close) = oneshot::channel();
        (SimListener { tcp, _closed: closed }, on_close)
    }
}

impl Listener for SimListener {
    type Io = SimStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (SimStream, SocketAddr) {
        loop {
            match self.tcp.accept().await {
                Ok((tcp, addr)) => {
                    // Small answers (302s, 429s) should not wait for Nagle's algorithm.
                    let _ = tcp.set_nodelay(true);
                    return (SimStream { tcp, control: ConnControl::default() }, addr);
                }
                // Errors such as running out of file descriptors pass with time; the pause
                // keeps the loop from spinning while they last.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truncate(body_left: u64) -> Armed {
        Armed::Truncate { matched: 0, body_left }
    }

    #[test]
    fn head_passes_whole_and_body_stops_at_the_budget() {
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789";
        let head = response.len() - 10;
        let (allowed, after) = truncate(4).admit(response);
        assert_eq!(allowed, head + 4);
        assert_eq!(after, Armed::Truncate { matched: 4, body_left: 0 });
        assert_eq!(after.admit(b"more").0, 0);
    }

    #[test]
    fn a_head_end_split_across_writes_is_still_found() {
        let (allowed, after) = truncate(2).admit(b"HTTP/1.1 200 OK\r\nx: y\r\n\r");
        assert_eq!(after, Armed::Truncate { matched: 3, body_left: 2 });
        assert_eq!(allowed, 24);
        assert_eq!(after.admit(b"\nabcdef").0, 3);
    }

    #[test]
    fn a_lone_line_break_does_not_end_the_head() {
        let (allowed, after) = truncate(0).admit(b"a\r\nb\r\r\nc");
        assert_eq!(allowed, 8);
        assert_eq!(after, Armed::Truncate { matched: 0, body_left: 0 });
    }

    #[test]
    fn an_idle_stream_admits_everything() {
        assert_eq!(Armed::Idle.admit(b"anything"), (8, Armed::Idle));
    }
}
