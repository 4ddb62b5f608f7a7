//! Connections that end when their phase ends, or when they do not start. A graceful shutdown
//! waits for every connection to close, and a client that holds a stream open (a health
//! `Watch`, a reflection stream) would keep a sealed node's vault, and its keys, alive for as
//! long as it likes. Each accepted connection is wrapped so that it fails its next read or write,
//! and wakes to do so, once its phase's switch is thrown or dropped: the server drains for
//! `DRAIN`, then throws it. A connection that has not sent the HTTP/2 preface (24 bytes, after
//! the TLS handshake when TLS is on) by its deadline fails the same way, and the slot it holds
//! in the connection caps (`accept::Slot`) goes with it; so does an idle connection whose place
//! a new one took (`accept`, "a full cap").

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use super::accept::Slot;

/// How long open connections get to finish after a shutdown or a seal.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Length of the HTTP/2 connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
const PREFACE: usize = 24;

/// A connection that a switch can cut, and that must start by a deadline.
pub struct Killable<IO> {
    inner: IO,
    /// Completes with the reason when the connection is to end.
    kill: Pin<Box<dyn Future<Output = &'static str> + Send>>,
    killed: Option<&'static str>,
    /// Until the preface is read: when the connection is cut if it has not been.
    preface: Option<Pin<Box<tokio::time::Sleep>>>,
    read: usize,
    /// Told of every byte written: it lets go of as many of the bytes handed to HTTP/2
    /// (`accept::Activity::wrote`).
    activity: Option<std::sync::Arc<super::accept::Activity>>,
    _slot: Option<Slot>,
}

impl<IO> std::fmt::Debug for Killable<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Killable")
            .field("killed", &self.killed.is_some())
            .field("started", &self.preface.is_none())
            .finish_non_exhaustive()
    }
}

impl<IO> Killable<IO> {
    /// Wraps `inner`, cut when `switch` is thrown or dropped (never with `None`), when it has
    /// not sent the preface by `deadline` (never with `None`), and when a new connection takes
    /// its `slot`.
    pub(super) fn new(
        inner: IO,
        switch: Option<tokio::sync::watch::Receiver<bool>>,
        deadline: Option<tokio::time::Instant>,
        slot: Option<Slot>,
    ) -> Self {
        let activity = slot.as_ref().map(Slot::activity);
        Self {
            inner,
            kill: Box::pin(async move {
                let switched = async {
                    match switch {
                        // Thrown, or its sender gone with the phase: either way, the end.
                        Some(mut switch) => {
                            let _ = switch.wait_for(|k| *k).await;
                        }
                        None => std::future::pending().await,
                    }
                };
                let evicted = async {
                    match activity {
                        Some(activity) => activity.evicted().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = switched => "the node stopped serving (shut down or sealed)",
                    () = evicted => "idle while the connection caps were full: a new connection took its place",
                }
            }),
            killed: None,
            preface: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            read: 0,
            activity: slot.as_ref().map(Slot::activity),
            _slot: slot,
        }
    }

    /// Whether the connection is over (cut or not started in time); registers the wakers that
    /// end it otherwise.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.killed.is_none()
            && let Poll::Ready(why) = self.kill.as_mut().poll(cx)
        {
            self.killed = Some(why);
        }
        if let Some(why) = self.killed {
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, why));
        }
        if let Some(sleep) = &mut self.preface
            && sleep.as_mut().poll(cx).is_ready()
        {
            self.killed = Some("no HTTP/2 preface in time: the connection is closed");
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface in time: the connection is closed",
            ));
        }
        Ok(())
    }
}

impl<IO> Killable<IO> {
    fn wrote(&self, written: &Poll<io::Result<usize>>) {
        if let (Some(activity), Poll::Ready(Ok(n))) = (&self.activity, written) {
            activity.wrote(*n);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Killable<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.preface.is_some() && matches!(polled, Poll::Ready(Ok(()))) {
            self.read = self.read.saturating_add(buf.filled().len() - before);
            if self.read >= PREFACE {
                self.preface = None;
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Killable<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Killable<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
