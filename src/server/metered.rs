//! Counts every gRPC call by service, method and status code, with its latency to the end of the
//! response (`metrics`): a tower layer around the server's routes. The status is read from the
//! response headers (a trailers-only answer, as errors are) or from the trailers at the end of
//! the body; a response dropped before its end (the client went away) counts as `CANCELLED`.
//!
//! It also tells each call's connection (`accept::Activity`) that a call runs, until its
//! response ends, and puts a `CallMark` on the request that `identity` sets when the caller is
//! authenticated: only such calls keep the connection's place when a full connection cap wants
//! it for a newcomer.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body, Frame, SizeHint};
use tonic::codegen::{BoxFuture, Service, http};

/// The layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct MeteredLayer;

impl<S> tower_layer::Layer<S> for MeteredLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered(inner)
    }
}

/// The service the layer makes.
#[derive(Clone, Debug)]
pub struct Metered<S>(S);

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Metered<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Unpin,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let start = Instant::now();
        let running = connection_of(req.extensions()).map(|a| a.call());
        if let Some(running) = &running {
            req.extensions_mut().insert(running.mark());
        }
        let response = self.0.call(req);
        Box::pin(async move {
            let response = response.await?;
            let code = status_of(response.headers());
            let (parts, body) = response.into_parts();
            Ok(http::Response::from_parts(
                parts,
                MeteredBody {
                    inner: body,
                    call: Some((path, start)),
                    code,
                    running,
                },
            ))
        })
    }
}

/// The activity of the connection a request came on, from the connect info the server puts on
/// every request (the TCP addresses, inside TLS's when TLS is on).
fn connection_of(ext: &http::Extensions) -> Option<std::sync::Arc<super::accept::Activity>> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let tcp = ext.get::<TcpConnectInfo>().or_else(|| {
        ext.get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(|t| t.get_ref())
    })?;
    super::accept::activity_of(tcp.local_addr()?, tcp.remote_addr()?)
}

fn status_of(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A response body that records its call when it ends.
#[derive(Debug)]
pub struct MeteredBody<B> {
    inner: B,
    /// The call's path and start, until recorded.
    call: Option<(String, Instant)>,
    /// The status, once known.
    code: Option<i32>,
    /// The call as its connection counts it, until it ends.
    running: Option<super::accept::Running>,
}

impl<B> MeteredBody<B> {
    fn record(&mut self, fallback: i32) {
        if let Some((path, start)) = self.call.take() {
            let code = self.code.unwrap_or(fallback);
            crate::metrics::call(&path, crate::metrics::code_name(code), start.elapsed());
            self.running = None;
        }
    }
}

impl<B: Body + Unpin> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    self.code = Some(code);
                    self.record(code);
                }
            }
            // A body that fails mid-way ends the call as an internal error.
            Poll::Ready(Some(Err(_))) => self.record(13),
            // The end without trailers: the status came with the headers (or nothing said
            // otherwise, which gRPC reads as OK only with a status; count it as unknown).
            Poll::Ready(None) => self.record(2),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away.
        self.record(1);
    }
}
