//! Connections that end when their phase ends. A graceful shutdown waits for every connection to
//! close, and a client that holds a stream open (a health `Watch`, a reflection stream) would
//! keep a sealed node's vault, and its keys, alive for as long as it likes. Each accepted
//! connection is wrapped so that it fails its next read or write, and wakes to do so, once its
//! phase's switch is thrown or dropped: the server drains for `DRAIN`, then throws it.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long open connections get to finish after a shutdown or a seal.
pub const DRAIN: Duration = Duration::from_secs(5);

/// A TCP connection that a switch can cut.
pub struct Killable {
    inner: TcpStream,
    kill: Pin<Box<dyn Future<Output = ()> + Send>>,
    killed: bool,
}

impl std::fmt::Debug for Killable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Killable")
            .field("killed", &self.killed)
            .finish_non_exhaustive()
    }
}

impl Killable {
    fn new(inner: TcpStream, mut switch: tokio::sync::watch::Receiver<bool>) -> Self {
        Self {
            inner,
            kill: Box::pin(async move {
                // Thrown, or its sender gone with the phase: either way, the end.
                let _ = switch.wait_for(|k| *k).await;
            }),
            killed: false,
        }
    }

    fn is_killed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.killed && self.kill.as_mut().poll(cx).is_ready() {
            self.killed = true;
        }
        self.killed
    }
}

fn cut() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the node stopped serving (shut down or sealed)",
    )
}

impl AsyncRead for Killable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_killed(cx) {
            return Poll::Ready(Err(cut()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Killable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_killed(cx) {
            return Poll::Ready(Err(cut()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_killed(cx) {
            return Poll::Ready(Err(cut()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for Killable {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The accepted connections of `listener`, with Nagle's algorithm off, each cut when `switch`
/// is thrown or dropped.
pub fn incoming(
    listener: TcpListener,
    switch: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = io::Result<Killable>> {
    super::incoming(listener).map(move |conn| conn.map(|c| Killable::new(c, switch.clone())))
}
