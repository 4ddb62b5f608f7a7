//! Counts every gRPC call by service, method and status code, with its latency to the end of the
//! response (`metrics`): a tower layer around the server's routes. The status is read from the
//! response headers (a trailers-only answer, as errors are) or from the trailers at the end of
//! the body; a response dropped before its end (the client went away) counts as `CANCELLED`.
//!
//! It also tells each call's connection (`accept::Activity`) that a call runs, until its
//! response ends, and puts a `CallMark` on the request that `identity` sets when the caller is
//! authenticated: only such calls keep the connection's place when a full connection cap wants
//! it for a newcomer.
//!
//! And it hands each response on in pieces of at most `CHUNK`: hyper asks for the next piece
//! only once HTTP/2 has window for the last, so a client that does not read leaves the rest
//! here, counted against the unread limits (`accept::Unread`; a response that would pass one
//! ends with `RESOURCE_EXHAUSTED`), and marked as waiting for the client, which closes the
//! connection after `limits.unread_response_secs` (`accept`). A piece handed on stays counted,
//! by the connection, until the connection has written it. An answer's place among the
//! reads being answered (`vault::answers`), which the service puts on the response's
//! extensions, is held until the call ends.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
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
    S: Service<http::Request<ReceivedBody<ReqBody>>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin,
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
        let connection = connection_of(req.extensions());
        let running = connection.as_ref().map(|a| a.call());
        if let Some(running) = &running {
            req.extensions_mut().insert(running.mark());
        }
        let stream_cost = stream_cost(&req);
        let between = !REQUEST_STREAMS.contains(&path.as_str());
        let req = req.map(|body| {
            ReceivedBody::new(
                body,
                connection.map(|a| a.receiving()),
                stream_cost,
                between,
            )
        });
        let response = self.0.call(req);
        let ours = path.starts_with("/kluis.v1.");
        Box::pin(async move {
            let mut response = response.await?;
            if ours {
                restate_protocol_refusals(response.headers_mut());
            }
            let code = status_of(response.headers());
            let answer = response
                .extensions_mut()
                .remove::<crate::vault::answers::AnswerHold>();
            let (parts, body) = response.into_parts();
            Ok(http::Response::from_parts(
                parts,
                MeteredBody {
                    inner: Some(body),
                    rest: Bytes::new(),
                    call: Some((path, start)),
                    code,
                    running,
                    answer,
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

/// What tonic says, as `INTERNAL`, of a request whose gRPC framing is wrong (before any
/// message decodes, so before kluis sees it): a call with no message, a frame cut short (a
/// length past the end of the body), a compressed flag that is not 0 or 1 or is set without a
/// `grpc-encoding`. kluis keeps `INTERNAL` for its own faults, which an alert may page for.
const BAD_FRAMING: [&str; 3] = [
    "Missing request message.",
    "Unexpected EOF decoding stream.",
    "protocol error: received message with ",
];

/// tonic's refusal of an unknown `grpc-encoding`, which quotes the header's value.
const UNKNOWN_ENCODING: &str = "Content is compressed with `";

/// Restates tonic's own refusals of a request to kluis's services, made before any message
/// decodes: its `INTERNAL` answer to a badly framed request becomes `INVALID_ARGUMENT`, with
/// what to do (`BAD_FRAMING`; `api::codec` does the same for a message that does not decode),
/// and its `UNIMPLEMENTED` answer to an unknown `grpc-encoding` no longer repeats the header's
/// value (whatever a client put there). Such an answer is trailers-only, as every refusal
/// before a handler's first message is: its status is in the headers.
fn restate_protocol_refusals(headers: &mut http::HeaderMap) {
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    let restated = match status.code() {
        tonic::Code::Internal if BAD_FRAMING.iter().any(|m| status.message().starts_with(m)) => {
            tonic::Status::invalid_argument(format!(
                "{} The request is not framed as gRPC frames a message (one 5-byte prefix per \
                 message: a compressed flag of 0, unless `grpc-encoding` names a compression \
                 kluis takes, and the message's length; a unary call carries exactly one \
                 message); nothing was stored",
                status.message()
            ))
        }
        tonic::Code::Unimplemented if status.message().starts_with(UNKNOWN_ENCODING) => {
            tonic::Status::unimplemented(
                "the request's `grpc-encoding` names a compression kluis does not take (its \
                 value is not repeated here); send the request uncompressed (`identity`)",
            )
        }
        _ => return,
    };
    headers.remove("grpc-message");
    if restated.add_header(headers).is_err() {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(restated.code() as i32),
        );
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The largest piece of a response handed to HTTP/2 at a time.
pub const CHUNK: usize = 128 * 1024;

/// A response body that records its call when it ends, and hands the response on in pieces.
#[derive(Debug)]
pub struct MeteredBody<B> {
    /// The service's body; `None` once a response was refused for the unread limits.
    inner: Option<B>,
    /// Of the last data frame taken from `inner`, what is still to be handed on.
    rest: Bytes,
    /// The call's path and start, until recorded.
    call: Option<(String, Instant)>,
    /// The status, once known.
    code: Option<i32>,
    /// The call as its connection counts it, until it ends.
    running: Option<super::accept::Running>,
    /// The place of the answer's bytes among the reads being answered (`vault::answers`),
    /// until the call ends.
    answer: Option<crate::vault::answers::AnswerHold>,
}

impl<B> MeteredBody<B> {
    fn record(&mut self, fallback: i32) {
        self.answer = None;
        if let Some((path, start)) = self.call.take() {
            let code = self.code.unwrap_or(fallback);
            crate::metrics::call(&path, crate::metrics::code_name(code), start.elapsed());
            self.running = None;
        }
    }

    /// Ends the response with `RESOURCE_EXHAUSTED`: taking it on would pass `over`.
    fn refuse(&mut self, over: super::accept::Overfull) -> Frame<Bytes> {
        // The service's work goes now: a stream's producer sees its receiver gone.
        self.inner = None;
        self.rest = Bytes::new();
        let status = tonic::Status::resource_exhausted(format!(
            "responses waiting for their clients to read them hold `{}` = {} bytes: read \
             the responses already asked for, then retry",
            over.key, over.limit
        ));
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", http::HeaderValue::from_static("8"));
        }
        self.code = Some(8);
        self.record(8);
        Frame::trailers(trailers)
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        // Polled again: the piece handed on last has its window (or the call is over). Its
        // bytes stay held by the connection until it has written them (`accept::Activity`).
        if let Some(running) = &this.running {
            running.waiting(false);
        }
        if this.rest.is_empty() {
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match std::task::ready!(Pin::new(inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(running) = &this.running
                            && let Err(over) = running.hold(data.len())
                        {
                            return Poll::Ready(Some(Ok(this.refuse(over))));
                        }
                        this.rest = data;
                    }
                    Err(frame) => {
                        if let Some(code) = frame.trailers_ref().and_then(status_of) {
                            this.code = Some(code);
                            this.record(code);
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
                // A body that fails mid-way ends the call as an internal error.
                Some(Err(e)) => {
                    this.record(13);
                    return Poll::Ready(Some(Err(e)));
                }
                // The end without trailers: the status came with the headers (or nothing said
                // otherwise, which gRPC reads as OK only with a status; count it as unknown).
                None => {
                    this.record(2);
                    return Poll::Ready(None);
                }
            }
        }
        let piece = this.rest.split_to(this.rest.len().min(CHUNK));
        if let Some(running) = &this.running {
            running.handed(piece.len());
            running.waiting(true);
        }
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.len() as u64;
        let Some(inner) = &self.inner else {
            return SizeHint::with_exact(rest);
        };
        let inner = inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away.
        self.record(1);
    }
}

/// A request body whose message being received is counted against the limits of its
/// connection's address and of all (`accept::Receiving`): from its first bytes until it is
/// whole (the service decodes it then) or the body is dropped. A message that would pass a
/// limit, or that waits longer than the limit for its next bytes, ends the body with an error
/// the service answers (`RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`): no caller, whether it has a
/// credential or not, makes the node keep more than the limits of messages it never finishes.
///
/// The call itself is counted too, from its headers until its request ends (`stream_cost`:
/// what HTTP/2, hyper and the service hold for a stream, and its headers), and a request that
/// has no message under way must send its next bytes or its end within `limits.request_idle_secs`
/// (`DEADLINE_EXCEEDED` otherwise), but for the calls that stream their request
/// (`REQUEST_STREAMS`: their service times the wait for each message itself): streams opened
/// with headers and never a body, or a message and never an end, each held by the node for
/// good, were a way to fill its memory without a credential.
#[derive(Debug)]
pub struct ReceivedBody<B> {
    inner: B,
    /// `None` for a request that came on no counted connection (tests).
    receiving: Option<super::accept::Receiving>,
    framing: Framing,
    /// Armed while a message is being received (until its next bytes are due, or the whole of
    /// it, whichever comes first), and, but for a request stream, while none is (until its
    /// next bytes or its end are due). Allocated once, reset in place.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the message being received began, and by when it must be whole.
    began: Option<(tokio::time::Instant, tokio::time::Instant)>,
    /// Of the bytes held, those that count the call itself until its request ends.
    stream_cost: usize,
    /// Why the call is refused before any of its request is read: its count would pass a
    /// limit. Given at the first poll.
    refused: Option<tonic::Status>,
    /// Whether the wait between messages is timed (not in a request stream).
    between: bool,
}

/// The calls whose request is a stream of messages: the time between them is their service's to
/// limit (an evidence upload's `api::vault::EVIDENCE_IDLE`, 30 s).
const REQUEST_STREAMS: [&str; 2] = [
    "/kluis.v1.Vault/PutEvidence",
    "/kluis.bench.v1.Stream/Upload",
];

/// What a stream holds before its first message, besides its headers: HTTP/2's and hyper's
/// state of the stream and the service's future waiting for the message (about 6 KiB measured).
const STREAM_BASE: usize = 8 * 1024;

/// What a header field holds besides its name and value (an entry of the decoded header map).
const FIELD_BASE: usize = 96;

/// What a call's stream is counted as from its headers until its request ends.
fn stream_cost<B>(req: &http::Request<B>) -> usize {
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| FIELD_BASE + name.as_str().len() + value.len())
        .sum();
    STREAM_BASE + fields + req.uri().path().len()
}

impl<B> ReceivedBody<B> {
    /// The request body of a call counted as `stream_cost` from now.
    fn new(
        inner: B,
        mut receiving: Option<super::accept::Receiving>,
        stream_cost: usize,
        between: bool,
    ) -> Self {
        let mut refused = None;
        let mut timer = None;
        if let Some(receiving) = receiving.as_mut() {
            if let Err(over) = receiving.hold(stream_cost) {
                refused = Some(over_limit(&over));
            } else if between {
                let due = tokio::time::Instant::now() + receiving.pace.idle;
                timer = Some(Box::pin(tokio::time::sleep_until(due)));
            }
        }
        let stream_cost = if refused.is_some() { 0 } else { stream_cost };
        Self {
            inner,
            receiving,
            framing: Framing::default(),
            timer,
            began: None,
            stream_cost,
            refused,
            between,
        }
    }
}

/// The refusal of a request whose count would pass a limit.
fn over_limit(over: &super::accept::Overfull) -> tonic::Status {
    let what = if over.key == super::accept::UNAUTHENTICATED_KEY {
        "connections on which no call has been authenticated yet share it: a connection whose \
         caller was authenticated has a share of its own, so make a small call with your \
         credential on this connection first, or retry shortly"
    } else {
        "send fewer large messages or calls at once, or retry shortly"
    };
    tonic::Status::resource_exhausted(format!(
        "request messages and calls being received hold `{}` = {} bytes: {what}",
        over.key, over.limit
    ))
}

/// Where a stream of gRPC messages (a flag byte, a four-byte length, the message) stands.
#[derive(Debug, Default)]
struct Framing {
    /// Bytes of the current message's prefix read so far (0 to 5), and the prefix.
    prefix: [u8; 5],
    have: usize,
    /// Bytes of the current message still to come, once its prefix is read.
    left: usize,
}

impl Framing {
    /// The length the current message's prefix declares, once it is read.
    fn declared(&self) -> Option<usize> {
        (self.have == 5).then(|| {
            let [_, a, b, c, d] = self.prefix;
            u32::from_be_bytes([a, b, c, d]) as usize
        })
    }
}

impl Framing {
    /// Reads `data`; gives how many of its bytes end messages (the rest belong to a message
    /// not yet whole).
    fn feed(&mut self, data: &[u8]) -> usize {
        let mut at = 0;
        let mut whole = 0;
        while at < data.len() {
            if self.have < 5 {
                let take = (5 - self.have).min(data.len() - at);
                if let (Some(to), Some(from)) = (
                    self.prefix.get_mut(self.have..self.have + take),
                    data.get(at..at + take),
                ) {
                    to.copy_from_slice(from);
                }
                self.have += take;
                at += take;
                if self.have == 5 {
                    let [_, a, b, c, d] = self.prefix;
                    self.left = u32::from_be_bytes([a, b, c, d]) as usize;
                    if self.left == 0 {
                        self.have = 0;
                        whole = at;
                    }
                }
                continue;
            }
            let take = self.left.min(data.len() - at);
            self.left -= take;
            at += take;
            if self.left == 0 {
                self.have = 0;
                whole = at;
            }
        }
        whole
    }

    /// A message has begun and is not whole.
    fn within(&self) -> bool {
        self.have > 0
    }
}

/// Why a request body ended early.
fn refusal(status: tonic::Status) -> tonic::codegen::StdError {
    Box::new(status)
}

impl<B> Body for ReceivedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(refused) = this.refused.take() {
            return Poll::Ready(Some(Err(refusal(refused))));
        }
        let Some(receiving) = this.receiving.as_mut() else {
            return Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
        };
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(over) = receiving.hold(data.len()) {
                        return Poll::Ready(Some(Err(refusal(over_limit(&over)))));
                    }
                    // The bytes that end messages are the service's to decode now; those of
                    // a message begun are held until it is whole, and the call's own count
                    // until its request ends.
                    let was_within = this.framing.within();
                    let whole = this.framing.feed(data);
                    if whole > 0 {
                        let begun = data.len() - whole;
                        receiving.release(
                            receiving
                                .held()
                                .saturating_sub(begun)
                                .saturating_sub(this.stream_cost),
                        );
                    }
                    if this.framing.within() {
                        let now = tokio::time::Instant::now();
                        // A message begun in this piece is timed from now.
                        let began = match this.began {
                            Some((began, _)) if was_within && whole == 0 => began,
                            _ => now,
                        };
                        let pace = receiving.pace;
                        let whole_by =
                            began + pace.whole_within(this.framing.declared().unwrap_or(0));
                        this.began = Some((began, whole_by));
                        let due = whole_by.min(now + pace.idle);
                        match this.timer.as_mut() {
                            Some(timer) => timer.as_mut().reset(due),
                            None => this.timer = Some(Box::pin(tokio::time::sleep_until(due))),
                        }
                    } else {
                        this.began = None;
                    }
                }
                if this.began.is_none() {
                    // No message under way: the next bytes or the end are due within the
                    // idle limit, but in a request stream.
                    match (this.between, this.timer.as_mut()) {
                        (false, _) => {}
                        (true, Some(timer)) => timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + receiving.pace.idle),
                        (true, None) => {
                            this.timer = Some(Box::pin(tokio::time::sleep_until(
                                tokio::time::Instant::now() + receiving.pace.idle,
                            )));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                // The request ended: nothing of it is being received any more.
                receiving.release(receiving.held());
                this.stream_cost = 0;
                this.between = false;
                this.began = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some((began, whole_by)) = this.began else {
                    if this.between
                        && let Some(timer) = this.timer.as_mut()
                        && timer.as_mut().poll(cx).is_ready()
                    {
                        let secs = receiving.pace.idle.as_secs();
                        return Poll::Ready(Some(Err(refusal(tonic::Status::deadline_exceeded(
                            format!(
                                "the request sent no message, and did not end, for {secs} s \
                                 (`limits.request_idle_secs`); send the request message with \
                                 the call's headers and end the request after it"
                            ),
                        )))));
                    }
                    return Poll::Pending;
                };
                if let Some(timer) = this.timer.as_mut()
                    && timer.as_mut().poll(cx).is_ready()
                {
                    let pace = receiving.pace;
                    if tokio::time::Instant::now() >= whole_by {
                        let len = this.framing.declared().unwrap_or(0);
                        let took = whole_by.duration_since(began).as_secs();
                        return Poll::Ready(Some(Err(refusal(tonic::Status::deadline_exceeded(
                            format!(
                                "a request message of {len} bytes did not arrive whole within \
                                 {took} s (`limits.request_idle_secs` = {} and \
                                 `limits.request_min_bytes_per_sec` = {}); send each message \
                                 whole, at least that fast",
                                pace.idle.as_secs(),
                                pace.min_rate
                            ),
                        )))));
                    }
                    let secs = pace.idle.as_secs();
                    return Poll::Ready(Some(Err(refusal(tonic::Status::deadline_exceeded(
                        format!(
                            "a request message waited more than {secs} s for its next bytes \
                                 (`limits.request_idle_secs`); send each message whole"
                        ),
                    )))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A body of given frames.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn metered(frames: Vec<Frame<Bytes>>) -> MeteredBody<Frames> {
        MeteredBody {
            inner: Some(Frames(frames.into())),
            rest: Bytes::new(),
            call: None,
            code: None,
            running: None,
            answer: None,
        }
    }

    fn next(body: &mut MeteredBody<Frames>) -> Option<Frame<Bytes>> {
        let waker = std::task::Waker::noop();
        match Pin::new(body).poll_frame(&mut Context::from_waker(waker)) {
            Poll::Ready(frame) => frame.map(|f| f.unwrap()),
            Poll::Pending => panic!("pending"),
        }
    }

    #[test]
    fn a_response_is_handed_on_in_pieces_of_at_most_a_chunk_and_whole() {
        let big: Bytes = (0..(2 * CHUNK + 100)).map(|i| i as u8).collect();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let mut body = metered(vec![
            Frame::data(Bytes::from_static(b"small")),
            Frame::data(big.clone()),
            Frame::trailers(trailers),
        ]);
        let mut pieces = Vec::new();
        let mut got = Vec::new();
        while let Some(frame) = next(&mut body) {
            match frame.into_data() {
                Ok(piece) => {
                    assert!(!body.is_end_stream());
                    pieces.push(piece.len());
                    got.extend_from_slice(&piece);
                }
                Err(frame) => assert!(frame.is_trailers()),
            }
        }
        assert_eq!(pieces, [5, CHUNK, CHUNK, 100]);
        assert_eq!(&got[..5], b"small");
        assert_eq!(&got[5..], &big[..]);
        assert!(body.is_end_stream());
        assert_eq!(body.code, Some(0));
    }

    #[test]
    fn an_answers_place_is_held_until_the_response_ends() {
        let answers = crate::vault::answers::Answers::new(1000, 1000);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let big: Bytes = vec![7; CHUNK + 1].into();
        let mut body = metered(vec![Frame::data(big), Frame::trailers(trailers)]);
        body.answer = Some(answers.hold("alice", 600).unwrap());
        // Handed on in part: the place is held.
        assert!(next(&mut body).is_some_and(|f| f.is_data()));
        assert_eq!(answers.total_held(), 600);
        assert!(next(&mut body).is_some_and(|f| f.is_data()));
        assert_eq!(answers.total_held(), 600);
        // The trailers: the call is over, the place let go.
        assert!(next(&mut body).is_some_and(|f| f.is_trailers()));
        assert_eq!(answers.total_held(), 0);

        // A response dropped before its end lets go of its place too.
        let mut body = metered(vec![Frame::data(Bytes::from_static(b"x"))]);
        body.answer = Some(answers.hold("alice", 600).unwrap());
        assert!(next(&mut body).is_some_and(|f| f.is_data()));
        drop(body);
        assert_eq!(answers.total_held(), 0);
    }

    #[test]
    fn the_framing_of_messages_tells_where_each_ends_however_the_bytes_are_cut() {
        let message = |len: u32| {
            let mut m = vec![0u8];
            m.extend_from_slice(&len.to_be_bytes());
            m.extend(std::iter::repeat_n(7u8, len as usize));
            m
        };
        let mut stream = message(3);
        stream.extend(message(0));
        stream.extend(message(10));
        // The ends: after 8 bytes, after 13, after 28; then a message begun.
        stream.extend(&message(100)[..20]);
        for cut in 1..stream.len() {
            let mut framing = Framing::default();
            let mut ends = Vec::new();
            let mut at = 0;
            for piece in stream.chunks(cut) {
                let whole = framing.feed(piece);
                if whole > 0 {
                    ends.push(at + whole);
                }
                at += piece.len();
            }
            assert_eq!(ends.last(), Some(&28), "cut {cut}");
            assert!(framing.within(), "cut {cut}");
            // Twin: the same bytes with the last message whole end outside a message.
            let mut framing = Framing::default();
            let mut whole_stream = stream[..28].to_vec();
            whole_stream.extend(message(100));
            let mut last = 0;
            for piece in whole_stream.chunks(cut) {
                if framing.feed(piece) > 0 {
                    last = 1;
                }
            }
            assert_eq!(last, 1);
            assert!(!framing.within(), "cut {cut}");
        }
    }
}
