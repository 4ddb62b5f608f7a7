//! Answers gathered into fewer writes. HTTP/2 writes a connection's frames as soon as one
//! stream has them: under 64 readers on one connection, every answer of a group commit left in
//! a `writev` of its own, and the loopback's send path (which also runs the receiver's side)
//! cost more than the answer's decryption. A connection's writes now pass through `Gathered`:
//! short writes are held, and a flush that finds bytes held first yields once, so that the
//! tasks its worker has ready (the other answers of a batch among them) run and add their
//! frames to the held bytes. Held bytes go out with the next long write (one vectored call),
//! or at the flush after that turn.
//!
//! HTTP/2 asks for every byte to be flushed before it waits for anything, so nothing held is
//! forgotten; the one place it closes without a flush, the peer's end of stream read while its
//! own buffer is empty, finds the held bytes written first (`poll_read`). The turn adds one
//! poll of the connection to a lone call. At most `HELD_AT_MOST` bytes are kept per connection,
//! as HTTP/2 keeps a buffer of that size. `Gathered` wraps the
//! connection's `Killable`, not the other way round: a byte held is not yet written for the
//! unread limits (`Activity::wrote` counts what reaches the socket).

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A write of at most this many bytes is held (HTTP/2 copies data frames under 1 KiB into its
/// own buffer when its connection does not write vectors, and hands on a longer frame in two
/// writes: its first 1 KiB, then the rest).
const SHORT: usize = 1024;

/// At most this many bytes are held: HTTP/2's own write buffer.
const HELD_AT_MOST: usize = 16 * 1024;

/// A connection whose short writes are gathered (see the module).
pub struct Gathered<IO> {
    inner: IO,
    /// Bytes taken from HTTP/2 and not yet written.
    held: Vec<u8>,
    /// Whether the bytes held have had their turn.
    waited: bool,
    /// The peer's end of stream, read while bytes were held: handed on once they are written.
    ended: bool,
}

impl<IO> Gathered<IO> {
    pub(super) fn new(inner: IO) -> Self {
        Self {
            inner,
            held: Vec::new(),
            waited: false,
            ended: false,
        }
    }
}

impl<IO: AsyncWrite + Unpin> Gathered<IO> {
    /// Writes what is held, all of it or `Pending`.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        self.waited = false;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Gathered<IO> {
    /// The peer's end of stream is handed on only once the bytes held are written: HTTP/2
    /// closes at once, without a flush, when it reads the end with nothing left in its own
    /// buffer.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.ended {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if buf.filled().len() > before || buf.remaining() == 0 || this.held.is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.ended = true;
        }
        ready!(this.poll_write_held(cx))?;
        this.ended = false;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Gathered<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.len() <= SHORT && this.held.len() + buf.len() <= HELD_AT_MOST {
            if this.held.capacity() == 0 {
                this.held.reserve_exact(HELD_AT_MOST);
            }
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // A long write takes what is held with it, in one call where the connection writes
        // vectors (one write each where it does not).
        while !this.held.is_empty() {
            let slices = [IoSlice::new(&this.held), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            if n <= this.held.len() {
                this.held.drain(..n);
            } else {
                let of_buf = n - this.held.len();
                this.held.clear();
                this.waited = false;
                return Poll::Ready(Ok(of_buf));
            }
        }
        this.waited = false;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    /// No: HTTP/2 then copies data frames under 1 KiB into its buffer, so that the frames of
    /// several answers reach `poll_write` as one short write, instead of a vector each.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.held.is_empty() && !this.waited {
            // One turn for the tasks the runtime has ready: this task is polled again after
            // them (a task that wakes itself goes to the back of the queue), and HTTP/2 adds
            // the frames they left before it flushes again.
            this.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_held(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Gathered<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::{Wake, Waker},
    };

    use super::*;

    /// A connection that records each call that wrote, and takes at most `room` bytes a call.
    #[derive(Default)]
    struct Wire {
        calls: Vec<Vec<u8>>,
        room: Option<usize>,
        /// Calls answered `Pending` before the next one writes.
        busy: usize,
        flushed: usize,
        shut: bool,
    }

    impl Wire {
        fn bytes(&self) -> Vec<u8> {
            self.calls.concat()
        }
    }

    /// A peer that has closed its end: every read is the end of stream.
    impl AsyncRead for Wire {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Wire {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if self.busy > 0 {
                self.busy -= 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = self.room.map_or(all.len(), |r| r.min(all.len()));
            self.calls.push(all[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushed += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    /// Counts its wakes.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn context() -> (Arc<Wakes>, Waker) {
        let wakes = Arc::new(Wakes::default());
        (Arc::clone(&wakes), Waker::from(wakes))
    }

    fn write(g: &mut Gathered<Wire>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(g).poll_write(cx, buf)
    }

    fn flush(g: &mut Gathered<Wire>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(g).poll_flush(cx)
    }

    /// Writes all of `buf`, as HTTP/2 does, polling again after `Pending`.
    fn write_all(g: &mut Gathered<Wire>, cx: &mut Context<'_>, mut buf: &[u8]) {
        while !buf.is_empty() {
            if let Poll::Ready(n) = write(g, cx, buf) {
                buf = &buf[n.unwrap()..];
            }
        }
    }

    fn flush_all(g: &mut Gathered<Wire>, cx: &mut Context<'_>) {
        while flush(g, cx).is_pending() {}
    }

    #[test]
    fn short_writes_go_out_together_after_one_turn() {
        let (wakes, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut g = Gathered::new(Wire::default());
        assert!(matches!(
            write(&mut g, &mut cx, b"first answer;"),
            Poll::Ready(Ok(13))
        ));
        assert!(g.inner.calls.is_empty(), "a short write is held");

        // The first flush lets the runtime run once: pending, and the task woken.
        assert!(flush(&mut g, &mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(g.inner.calls.is_empty());

        // What other tasks left meanwhile joins it; the next flush writes both in one call.
        assert!(matches!(
            write(&mut g, &mut cx, b"second;"),
            Poll::Ready(Ok(7))
        ));
        assert!(matches!(flush(&mut g, &mut cx), Poll::Ready(Ok(()))));
        assert_eq!(g.inner.calls, vec![b"first answer;second;".to_vec()]);
        assert_eq!(g.inner.flushed, 1);

        // Nothing held: a flush neither waits nor writes.
        assert!(matches!(flush(&mut g, &mut cx), Poll::Ready(Ok(()))));
        assert_eq!(g.inner.calls.len(), 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);

        // The next short write waits its own turn again.
        write_all(&mut g, &mut cx, b"third");
        assert!(flush(&mut g, &mut cx).is_pending());
        flush_all(&mut g, &mut cx);
        assert_eq!(g.inner.calls.len(), 2);
        assert_eq!(g.inner.bytes(), b"first answer;second;third");
    }

    #[test]
    fn a_long_write_takes_the_held_bytes_with_it_in_one_call() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut g = Gathered::new(Wire::default());
        write_all(&mut g, &mut cx, &[1; 9]);
        let long = vec![2; SHORT + 1];
        assert!(matches!(write(&mut g, &mut cx, &long), Poll::Ready(Ok(n)) if n == long.len()));
        assert_eq!(g.inner.calls.len(), 1);
        assert_eq!(g.inner.calls[0].len(), 9 + SHORT + 1);
        // Nothing is left to wait for.
        assert!(matches!(flush(&mut g, &mut cx), Poll::Ready(Ok(()))));
        assert_eq!(g.inner.calls.len(), 1);

        // Alone, a long write goes out as it is.
        write_all(&mut g, &mut cx, &long);
        assert_eq!(g.inner.calls.len(), 2);
    }

    #[test]
    fn no_more_than_the_limit_is_held() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut g = Gathered::new(Wire::default());
        let short = vec![7; SHORT];
        for _ in 0..HELD_AT_MOST / SHORT {
            write_all(&mut g, &mut cx, &short);
        }
        assert!(g.inner.calls.is_empty());
        write_all(&mut g, &mut cx, b"x");
        assert_eq!(
            g.inner.calls.len(),
            1,
            "the write past the limit takes the held bytes"
        );
        assert_eq!(g.inner.calls[0].len(), HELD_AT_MOST + 1);
    }

    #[test]
    fn a_connection_that_takes_part_of_a_write_loses_and_reorders_nothing() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut g = Gathered::new(Wire {
            room: Some(5),
            busy: 1,
            ..Wire::default()
        });
        let mut sent = Vec::new();
        for i in 0..40u8 {
            let len = if i % 3 == 0 { SHORT + 100 } else { 11 };
            let buf: Vec<u8> = (0..len)
                .map(|j| i.wrapping_mul(31).wrapping_add(j as u8))
                .collect();
            write_all(&mut g, &mut cx, &buf);
            sent.extend_from_slice(&buf);
            if i % 4 == 0 {
                g.inner.busy = 1;
            }
        }
        flush_all(&mut g, &mut cx);
        assert_eq!(g.inner.bytes(), sent);
        assert!(g.held.is_empty());
    }

    #[test]
    fn the_peers_end_of_stream_is_read_only_once_what_is_held_is_written() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut g = Gathered::new(Wire {
            busy: 1,
            ..Wire::default()
        });
        write_all(&mut g, &mut cx, b"last answer");
        let mut room = [0; 16];
        let mut buf = ReadBuf::new(&mut room);
        // The connection is busy: the end waits for the held bytes.
        assert!(Pin::new(&mut g).poll_read(&mut cx, &mut buf).is_pending());
        assert!(g.inner.calls.is_empty());
        assert!(matches!(
            Pin::new(&mut g).poll_read(&mut cx, &mut buf),
            Poll::Ready(Ok(()))
        ));
        assert!(buf.filled().is_empty(), "the end of stream");
        assert_eq!(g.inner.bytes(), b"last answer");
        // Nothing held: the end comes at once.
        assert!(matches!(
            Pin::new(&mut g).poll_read(&mut cx, &mut buf),
            Poll::Ready(Ok(()))
        ));
    }

    #[test]
    fn a_shutdown_writes_what_is_held_first() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut g = Gathered::new(Wire::default());
        write_all(&mut g, &mut cx, b"goaway");
        assert!(matches!(
            Pin::new(&mut g).poll_shutdown(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(g.inner.bytes(), b"goaway");
        assert!(g.inner.shut);
    }
}
