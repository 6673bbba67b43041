//! Connections that a fault can break at an exact byte.
//!
//! Hyper owns the HTTP framing, so a handler cannot simply stop halfway through a body:
//! bytes it hands over may still sit in hyper's buffer when an error makes hyper drop the
//! connection, and the client would get fewer bytes than scripted. Instead every accepted
//! socket is wrapped in a [`SimStream`] that the handler arms through the [`ConnControl`]
//! it gets as connect info. The armed stream cuts the next response itself: before its
//! first byte (a reset), or a given number of bytes after its head (a clean close that
//! leaves the body short of its `Content-Length`, or a reset).
//!
//! A reset throws away whatever the kernel still holds unacknowledged, so a reset after
//! some body bytes first waits until the client has acknowledged all of them: the client
//! then holds exactly the scripted bytes when the reset reaches it.
//!
//! Hyper reads the next request on a connection only once the previous response is
//! flushed, so every byte the stream writes after arming belongs to the response being
//! cut, and the first blank line it writes ends that response's head.

use std::future::Future;
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
use tokio::time::Sleep;

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
    /// As `AfterBody`, but reset the connection instead of closing it, once the client
    /// has acknowledged those bytes.
    ResetAfterBody(u64),
}

/// The blank line that ends an HTTP/1 response head.
const HEAD_END: &[u8; 4] = b"\r\n\r\n";

/// How often, and how many times at most, a reset after body bytes looks whether the
/// client has acknowledged them all. A client that stops reading holds the reset back for
/// at most about two seconds; after that the reset goes anyway and may cost it bytes.
const ACK_POLL: Duration = Duration::from_millis(1);
const ACK_POLLS: u32 = 2_000;

/// How a connection ends once a cut's body bytes are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// An orderly close: the client sees the body end early.
    Close,
    /// A TCP reset: the client sees the connection fail mid-body.
    Reset,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Armed {
    #[default]
    Idle,
    Reset,
    /// `matched` counts the bytes of `HEAD_END` seen in a row; at 4 the body has begun.
    Truncate {
        matched: usize,
        body_left: u64,
        end: End,
    },
}

impl Armed {
    /// How many leading bytes of `buf` may be sent, and the state once they are.
    fn admit(self, buf: &[u8]) -> (usize, Armed) {
        let Armed::Truncate { mut matched, mut body_left, end } = self else {
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
        (head + body as usize, Armed::Truncate { matched, body_left, end })
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
            Cut::AfterBody(body_left) => Armed::Truncate { matched: 0, body_left, end: End::Close },
            Cut::ResetAfterBody(body_left) => {
                Armed::Truncate { matched: 0, body_left, end: End::Reset }
            }
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
    /// While a reset waits for the client's acknowledgements: the next look, and how many
    /// looks are left.
    ack_wait: Option<(Pin<Box<Sleep>>, u32)>,
}

impl SimStream {
    fn new(tcp: TcpStream) -> SimStream {
        SimStream { tcp, control: ConnControl::default(), ack_wait: None }
    }

    fn write_armed(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // The handler arms the stream before the response is written, and from then on only
        // this stream's writes change the state, so a copy stays current while they run.
        let armed = *lock(&self.control.0);
        if armed == Armed::Reset {
            return Poll::Ready(Err(self.reset()));
        }
        let (allowed, _) = armed.admit(buf);
        if allowed == 0 && !buf.is_empty() {
            return match armed {
                Armed::Truncate { end: End::Reset, .. } => self.poll_reset_when_acknowledged(cx),
                _ => Poll::Ready(Err(simulated(io::ErrorKind::BrokenPipe))),
            };
        }
        let written = ready!(Pin::new(&mut self.tcp).poll_write(cx, &buf[..allowed]))?;
        *lock(&self.control.0) = armed.admit(&buf[..written]).1;
        Poll::Ready(Ok(written))
    }

    /// Resets the connection once the client has acknowledged every byte sent, or once
    /// the looks run out.
    fn poll_reset_when_acknowledged(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            let (next_look, looks_left) = match &mut self.ack_wait {
                Some(wait) => wait,
                None => self.ack_wait.insert((Box::pin(tokio::time::sleep(ACK_POLL)), ACK_POLLS)),
            };
            if *looks_left == 0 || unacknowledged(&self.tcp)? == 0 {
                self.ack_wait = None;
                return Poll::Ready(Err(self.reset()));
            }
            ready!(next_look.as_mut().poll(cx));
            next_look.as_mut().reset(tokio::time::Instant::now() + ACK_POLL);
            *looks_left -= 1;
        }
    }

    /// Makes the close that follows the returned error send a TCP reset.
    fn reset(&mut self) -> io::Error {
        *lock(&self.control.0) = Armed::Reset;
        // With zero linger the close sends a reset instead of a FIN.
        match self.tcp.set_zero_linger() {
            Ok(()) => simulated(io::ErrorKind::ConnectionReset),
            Err(error) => error,
        }
    }
}

/// Bytes sent on `tcp` that the peer has not acknowledged yet (`SIOCOUTQ`).
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
fn unacknowledged(tcp: &TcpStream) -> io::Result<usize> {
    use rustix::ioctl::{Getter, ioctl};
    const SIOCOUTQ: rustix::ioctl::Opcode = 0x5411;
    // SAFETY: on these targets `SIOCOUTQ` is 0x5411 and writes one C int, the output type
    // given here, and `tcp` is an open TCP socket for the whole call.
    let queued = unsafe { ioctl(tcp, Getter::<SIOCOUTQ, std::ffi::c_int>::new()) }?;
    Ok(usize::try_from(queued).unwrap_or(0))
}

/// Elsewhere the queue cannot be read: the reset goes at once and may cost the client
/// bytes still in flight.
#[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
fn unacknowledged(_tcp: &TcpStream) -> io::Result<usize> {
    Ok(0)
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
                    return (SimStream::new(tcp), addr);
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
        Armed::Truncate { matched: 0, body_left, end: End::Close }
    }

    #[test]
    fn head_passes_whole_and_body_stops_at_the_budget() {
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789";
        let head = response.len() - 10;
        let (allowed, after) = truncate(4).admit(response);
        assert_eq!(allowed, head + 4);
        assert_eq!(after, Armed::Truncate { matched: 4, body_left: 0, end: End::Close });
        assert_eq!(after.admit(b"more").0, 0);
    }

    #[test]
    fn a_head_end_split_across_writes_is_still_found() {
        let (allowed, after) = truncate(2).admit(b"HTTP/1.1 200 OK\r\nx: y\r\n\r");
        assert_eq!(after, Armed::Truncate { matched: 3, body_left: 2, end: End::Close });
        assert_eq!(allowed, 24);
        assert_eq!(after.admit(b"\nabcdef").0, 3);
    }

    #[test]
    fn a_lone_line_break_does_not_end_the_head() {
        let (allowed, after) = truncate(0).admit(b"a\r\nb\r\r\nc");
        assert_eq!(allowed, 8);
        assert_eq!(after, Armed::Truncate { matched: 0, body_left: 0, end: End::Close });
    }

    #[test]
    fn an_idle_stream_admits_everything() {
        assert_eq!(Armed::Idle.admit(b"anything"), (8, Armed::Idle));
    }
}
