//! The accept loop: kluis's own in place of tonic's `TcpIncoming`, so that no client can hold
//! the listener. Every connection takes a slot in two caps (in all, and per peer address; an
//! IPv6 peer counts by its /64) and is closed at once when either is full; it gets
//! `handshake_timeout` to finish the TLS handshake (when TLS is on) and send the HTTP/2 preface,
//! or is closed (`Killable`). Handshakes run on their own tasks, so a slow one holds no other.
//! An error of `accept` itself (out of descriptors: `EMFILE`) is met with a pause of 10 to
//! 100 ms and logged once per run of them, never with a spinning loop.
//!
//! A full cap does not let idle connections lock out the clients that would use it: a new
//! connection takes the place of the one (of its address, or of any, for the cap in all) that
//! has gone longest without a call of use, once that is at least `EVICT_AFTER` ago and no call
//! of use is running on it. A call of use is one whose caller was authenticated (`metered`
//! puts a `CallMark` on every request for `identity` to set, and tells the connection's
//! `Activity`). Anyone can open connections that send nothing, answer every ping, ask for
//! health, call methods that do not exist or send a request a byte at a time; only a caller
//! with a credential keeps a place when it is wanted. A
//! look that finds no idle connection is not repeated for `LOOK_PAUSE`, so that a flood of
//! newcomers at caps full of callers costs a look per pause, not one each.
//!
//! No client holds the server's memory by not reading. `metered` hands every response on in
//! pieces of at most `metered::CHUNK`, so HTTP/2 holds at most a piece or two of a stream
//! beyond the client's window, and it counts the bytes of responses that wait for their clients
//! (taken from the service, not yet written to the connection) against
//! `unread_bytes_per_address` and `unread_bytes`: a response that would pass either ends with
//! `RESOURCE_EXHAUSTED` instead. What HTTP/2 was handed stays counted by the connection after
//! its call ended, until the connection has written as many bytes (`Activity::wrote`, told by
//! `Killable`). A connection with a response that has waited `unread_timeout` for its client
//! to take any of it, or with bytes handed that it has written nothing of for as long, is
//! closed (`Slots::close_unread`, looked for by a sweep), and what it held goes with it.
//!
//! Invariant: every accepted socket is either handed to the server inside a `Killable` holding
//! its `Slot`, or closed.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, LazyLock, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;

use super::{gather::Gathered, killable::Killable};

/// The connection caps and the time a connection gets to start.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct ConnectionLimits {
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one peer address (an IPv6 /64).
    pub max_connections_per_address: usize,
    /// Connections whose last caller was one principal that keep their places against
    /// newcomers; that principal's others give theirs up as idle ones do.
    pub max_connections_per_caller: usize,
    /// Time from accept to the end of the TLS handshake and the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// How long a response may wait for its client to take any of it before the connection
    /// is closed.
    pub unread_timeout: Duration,
    /// Bytes of responses waiting for their clients, in all.
    pub unread_bytes: usize,
    /// Bytes of responses waiting for their clients at one peer address (an IPv6 /64).
    pub unread_bytes_per_address: usize,
    /// Bytes of request messages being received (begun, not yet whole), in all.
    pub receiving_bytes: usize,
    /// Bytes of request messages being received from one peer address (an IPv6 /64).
    pub receiving_bytes_per_address: usize,
    /// Bytes of request messages being received on the connections of one principal (the
    /// caller of a connection's last call of use).
    pub receiving_bytes_per_caller: usize,
    /// Bytes of request messages being received on connections that have carried no call of
    /// use (no caller authenticated on them yet), in all.
    pub receiving_bytes_unauthenticated: usize,
    /// How long a request message that has begun may wait for its next bytes.
    pub receiving_timeout: Duration,
    /// The slowest pace a request message may arrive at, in bytes per second: a message of `n`
    /// bytes is whole within `receiving_timeout` + `n` / this of its first byte.
    pub receiving_min_rate: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_address: 256,
            max_connections_per_caller: 32,
            handshake_timeout: Duration::from_secs(5),
            unread_timeout: Duration::from_secs(60),
            unread_bytes: 1024 * 1024 * 1024,
            unread_bytes_per_address: 128 * 1024 * 1024,
            receiving_bytes: 1024 * 1024 * 1024,
            receiving_bytes_per_address: 256 * 1024 * 1024,
            receiving_bytes_per_caller: 64 * 1024 * 1024,
            receiving_bytes_unauthenticated: 64 * 1024 * 1024,
            receiving_timeout: Duration::from_secs(10),
            receiving_min_rate: 256 * 1024,
        }
    }
}

impl ConnectionLimits {
    /// These limits with `max_connections` brought below the descriptor limit `nofile`, leaving
    /// room for the store, the audit trail, evidence files and the metrics listener.
    #[must_use]
    pub fn fitted(mut self, nofile: u64) -> Self {
        let room = if nofile > 1024 {
            nofile - 256
        } else {
            nofile / 2
        };
        let room = usize::try_from(room).unwrap_or(usize::MAX).max(1);
        self.max_connections = self.max_connections.min(room);
        self.max_connections_per_address =
            self.max_connections_per_address.min(self.max_connections);
        self
    }
}

/// How an accepted TCP connection becomes the server's: as it is, or after a TLS handshake.
pub(super) trait Handshake: Clone + Send + Sync + 'static {
    /// The connection the server gets.
    type Io: Send + 'static;
    /// Starts the connection.
    fn start(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// Plain HTTP/2.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plain;

impl Handshake for Plain {
    type Io = TcpStream;
    async fn start(&self, tcp: TcpStream) -> io::Result<TcpStream> {
        Ok(tcp)
    }
}

/// HTTP/2 over TLS (rustls).
#[derive(Clone)]
pub(super) struct Tls(pub(super) tokio_rustls::TlsAcceptor);

impl Handshake for Tls {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    async fn start(&self, tcp: TcpStream) -> io::Result<Self::Io> {
        self.0.accept(tcp).await
    }
}

/// The connections `listener` accepts, within `limits`, each started by `handshake` and cut
/// when `switch` is thrown or dropped (never with `None`). The loop ends when the stream is
/// dropped.
pub(super) fn incoming<H: Handshake>(
    listener: TcpListener,
    limits: ConnectionLimits,
    switch: Option<tokio::sync::watch::Receiver<bool>>,
    handshake: H,
) -> ReceiverStream<io::Result<Gathered<Killable<H::Io>>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(Slots::new(limits, EVICT_AFTER));
    tokio::spawn(sweep_unread(Arc::clone(&slots), tx.clone()));
    tokio::spawn(async move {
        let mut pause = Duration::ZERO;
        let mut refused = Refused::default();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => {
                    pause = Duration::ZERO;
                    accepted
                }
                // The connection failed before it was taken: nothing is wrong with the listener.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    if pause.is_zero() {
                        tracing::warn!(error = %e, "cannot accept connections; pausing between tries");
                    }
                    pause = (pause * 2).clamp(ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = tx.closed() => return,
                    }
                    continue;
                }
            };
            let local = tcp.local_addr().ok();
            let slot = match Slots::take(&slots, peer.ip(), local.map(|l| (l, peer))) {
                Ok(slot) => slot,
                Err(cap) => {
                    refused.note(cap, &limits);
                    // Dropped: closed at once.
                    drop(tcp);
                    continue;
                }
            };
            // A short answer held back until the client's delayed ACK costs 40 ms.
            let _ = tcp.set_nodelay(true);
            let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
            let (tx, switch, handshake) = (tx.clone(), switch.clone(), handshake.clone());
            tokio::spawn(async move {
                match tokio::time::timeout_at(deadline, handshake.start(tcp)).await {
                    Ok(Ok(io)) => {
                        let conn =
                            Gathered::new(Killable::new(io, switch, Some(deadline), Some(slot)));
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, %peer, "handshake failed"),
                    Err(_) => tracing::debug!(%peer, "no handshake in time: closed"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Closes the connections with a response that has waited `unread_timeout` for its client,
/// looking a few times per limit, until `tx`'s receiver is gone.
async fn sweep_unread<T>(slots: Arc<Slots>, tx: tokio::sync::mpsc::Sender<T>) {
    let limit = slots.limits.unread_timeout;
    let every = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = tx.closed() => return,
        }
        slots.shares.prune();
        let closed = slots.close_unread();
        if closed > 0 {
            tracing::warn!(
                closed,
                limit_secs = limit.as_secs_f64(),
                "connections closed: a response waited `limits.unread_response_secs` for its client to read it"
            );
        }
    }
}

const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_millis(100);

/// Errors of `accept` that concern one connection, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Which cap refused a connection.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Cap {
    Total,
    PerAddress,
}

/// Refusals, logged at most once per `REFUSED_LOG_EVERY` with how many there were.
#[derive(Default)]
struct Refused {
    count: u64,
    logged: Option<tokio::time::Instant>,
}

const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

impl Refused {
    fn note(&mut self, cap: Cap, limits: &ConnectionLimits) {
        self.count += 1;
        let now = tokio::time::Instant::now();
        if self
            .logged
            .is_some_and(|at| now.duration_since(at) < REFUSED_LOG_EVERY)
        {
            return;
        }
        let (key, max) = match cap {
            Cap::Total => ("limits.max_connections", limits.max_connections),
            Cap::PerAddress => (
                "limits.max_connections_per_address",
                limits.max_connections_per_address,
            ),
        };
        tracing::warn!(
            refused = self.count,
            limit = max,
            "connections refused: `{key}` reached"
        );
        self.count = 0;
        self.logged = Some(now);
    }
}

/// How long a connection must have gone without a call of use (and have none running) before
/// a new connection may take its place in a full cap.
pub const EVICT_AFTER: Duration = Duration::from_secs(2);

/// Bytes of responses that wait for their clients: taken from the service by a response body
/// and not yet given window by the client (`metered`), against a limit.
#[derive(Debug)]
pub(crate) struct Unread {
    bytes: AtomicUsize,
    limit: usize,
    /// The configuration key of the limit.
    key: &'static str,
}

impl Unread {
    fn new(limit: usize, key: &'static str) -> Self {
        Self {
            bytes: AtomicUsize::new(0),
            limit,
            key,
        }
    }

    /// Counts `n` more bytes, unless that would pass the limit (a refused hold never counts,
    /// not even for a moment another hold could see).
    fn hold(&self, n: usize) -> bool {
        self.bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                held.checked_add(n).filter(|&after| after <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::SeqCst);
    }
}

/// Counts `n` bytes against every one of `counters` (an address's, the one of all, ...), or
/// says which limit that would pass (and counts none on any).
fn hold_all(counters: &[Arc<Unread>], n: usize) -> Result<(), Overfull> {
    for (i, counter) in counters.iter().enumerate() {
        if !counter.hold(n) {
            for held in counters.iter().take(i) {
                held.release(n);
            }
            return Err(Overfull {
                key: counter.key,
                limit: counter.limit,
            });
        }
    }
    Ok(())
}

/// The configuration key of the share of request bytes of connections without a caller.
pub(crate) const UNAUTHENTICATED_KEY: &str = "limits.request_bytes_unauthenticated";

/// The shares of the bytes of request messages being received: one per principal, and one
/// for all connections on which no caller has been authenticated yet.
#[derive(Debug)]
pub(crate) struct Shares {
    unauthenticated: Arc<Unread>,
    per_caller: usize,
    callers: Mutex<HashMap<Arc<str>, Arc<Unread>>>,
}

impl Shares {
    fn new(limits: &ConnectionLimits) -> Self {
        Self {
            unauthenticated: Arc::new(Unread::new(
                limits.receiving_bytes_unauthenticated,
                UNAUTHENTICATED_KEY,
            )),
            per_caller: limits.receiving_bytes_per_caller,
            callers: Mutex::new(HashMap::new()),
        }
    }

    /// The share of `principal`.
    fn of_caller(&self, principal: &Arc<str>) -> Arc<Unread> {
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(callers.entry(Arc::clone(principal)).or_insert_with(|| {
            Arc::new(Unread::new(
                self.per_caller,
                "limits.request_bytes_per_caller",
            ))
        }))
    }

    /// Forgets the shares no message is being received under.
    fn prune(&self) {
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        callers.retain(|_, share| Arc::strong_count(share) > 1);
    }
}

/// A response refused because the responses waiting for their clients would pass a limit.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) struct Overfull {
    /// The configuration key of the limit.
    pub(crate) key: &'static str,
    /// The limit, in bytes.
    pub(crate) limit: usize,
}

/// What the calls on one connection tell of its use, reported by `metered`.
#[derive(Debug)]
pub(crate) struct Activity {
    /// Calls of use (their caller authenticated) whose response has not ended.
    running: AtomicUsize,
    /// When the last call of use ended (or the connection was accepted), in ms after `since`.
    last: AtomicU64,
    since: Instant,
    evicted: AtomicBool,
    wake: tokio::sync::Notify,
    /// The calls started here, while they last (those that ended are dropped as it grows).
    calls: Mutex<Vec<std::sync::Weak<Call>>>,
    /// The unread bytes of the connection's address, and in all.
    unread: [Arc<Unread>; 2],
    /// Bytes of responses handed to HTTP/2 and not yet written to the connection, held
    /// against `unread` by the connection (the call that handed them may have ended).
    unwritten: AtomicUsize,
    /// When the connection last wrote while bytes were unwritten, or they began to be (ms
    /// after `since`, plus one).
    wrote_last: AtomicU64,
    /// The connection is gone: bytes handed from now on (a response body polled once more by
    /// its own task) will never be written, and are let go at once.
    gone: AtomicBool,
    /// The bytes of request messages being received from the connection's address, and in
    /// all; and how long such a message may wait for its next bytes.
    receiving: ([Arc<Unread>; 2], Pace),
    /// The shares of request bytes of callers, and of connections without one.
    shares: Arc<Shares>,
    /// The principal of the last call of use: a principal keeps at most
    /// `ConnectionLimits::max_connections_per_caller` places against newcomers.
    caller: Mutex<Option<Arc<str>>>,
    /// How many connections of this one's address hold a place without a caller, and
    /// whether this one counts among them (until its first call of use, or its place ends).
    address_without_caller: Arc<AtomicUsize>,
    counted_without_caller: AtomicBool,
}

impl Activity {
    /// A connection counted among `address_without_caller` (by the caller of this).
    fn new(
        unread: [Arc<Unread>; 2],
        receiving: ([Arc<Unread>; 2], Pace),
        shares: Arc<Shares>,
        address_without_caller: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            receiving,
            shares,
            caller: Mutex::new(None),
            address_without_caller,
            counted_without_caller: AtomicBool::new(true),
            running: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            since: Instant::now(),
            evicted: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            calls: Mutex::new(Vec::new()),
            unread,
            unwritten: AtomicUsize::new(0),
            wrote_last: AtomicU64::new(0),
            gone: AtomicBool::new(false),
        }
    }

    /// `n` bytes of a response, held against the unread limits, were handed to HTTP/2: they
    /// stay held, by the connection, until it has written as many (`wrote`).
    fn handed(&self, n: usize) {
        if n > 0 && self.unwritten.fetch_add(n, Ordering::SeqCst) == 0 {
            self.wrote_last
                .store(self.now().saturating_add(1), Ordering::SeqCst);
        }
        // After the connection closed: either `closed` took these bytes too, or they are let
        // go here (each swap takes what the other did not).
        if self.gone.load(Ordering::SeqCst) {
            self.let_go_unwritten();
        }
    }

    /// The connection wrote `n` bytes (frames of every kind, so what HTTP/2 holds is counted
    /// short by the headers and control frames written meanwhile): as many of the bytes
    /// handed to it are let go.
    pub(crate) fn wrote(&self, n: usize) {
        if n == 0 || self.unwritten.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Ok(before) = self
            .unwritten
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                (u > 0).then(|| u - n.min(u))
            })
        else {
            return;
        };
        for unread in &self.unread {
            unread.release(n.min(before));
        }
        self.wrote_last
            .store(self.now().saturating_add(1), Ordering::SeqCst);
    }

    /// The connection is gone: what it held unwritten goes with it, and so does what is
    /// handed to it from now on.
    fn closed(&self) {
        self.gone.store(true, Ordering::SeqCst);
        self.let_go_unwritten();
    }

    fn let_go_unwritten(&self) {
        let held = self.unwritten.swap(0, Ordering::SeqCst);
        if held > 0 {
            for unread in &self.unread {
                unread.release(held);
            }
        }
    }

    /// A call starts on the connection; it ends when the returned guard is dropped, and is of
    /// use from when its mark (`Running::mark`) is set.
    pub(crate) fn call(self: &Arc<Self>) -> Running {
        let call = Arc::new(Call {
            activity: Arc::clone(self),
            of_use: AtomicBool::new(false),
            waiting: AtomicU64::new(0),
            held: AtomicUsize::new(0),
        });
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        // Before the list would grow: the calls that ended go (amortised, as the growth is).
        if calls.len() == calls.capacity() {
            calls.retain(|c| c.strong_count() > 0);
        }
        calls.push(Arc::downgrade(&call));
        Running(call)
    }

    /// The count of a request body's bytes being received on this connection (`metered`):
    /// against its address's limit, the limit in all, and the share of the connection's caller
    /// (the principal of its last call of use), or, while no call on it has been authenticated,
    /// the share of all such connections: a client without a credential cannot hold more than
    /// that of the bytes the others need.
    pub(crate) fn receiving(&self) -> Receiving {
        let ([address, total], pace) = &self.receiving;
        let share = match self.caller() {
            Some(principal) => self.shares.of_caller(&principal),
            None => Arc::clone(&self.shares.unauthenticated),
        };
        Receiving {
            counters: [Arc::clone(address), Arc::clone(total), share],
            held: 0,
            pace: *pace,
        }
    }

    /// Milliseconds since the connection was accepted.
    fn now(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long the response that has waited longest for its client has waited; `None` when
    /// none waits.
    /// Bytes handed to HTTP/2 that wait to be written count as a response waiting since the
    /// connection last wrote.
    fn unread_for(&self) -> Option<Duration> {
        let now = self.now();
        let unwritten = match self.unwritten.load(Ordering::SeqCst) {
            0 => None,
            _ => match self.wrote_last.load(Ordering::SeqCst) {
                0 => None,
                since => Some(now.saturating_sub(since - 1)),
            },
        };
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter_map(|c| match c.waiting.load(Ordering::SeqCst) {
                0 => None,
                since => Some(now.saturating_sub(since - 1)),
            })
            .chain(unwritten)
            .max()
            .map(Duration::from_millis)
    }

    /// How long the connection has gone without a call of use; `None` while one runs.
    fn idle(&self) -> Option<Duration> {
        if self.running.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last.load(Ordering::SeqCst));
        Some(self.since.elapsed().saturating_sub(last))
    }

    /// The principal of the last call of use, if any.
    fn caller(&self) -> Option<Arc<str>> {
        self.caller
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether no call on the connection has been authenticated yet (while it holds a place:
    /// a place given up is uncounted too).
    fn has_no_caller(&self) -> bool {
        self.counted_without_caller.load(Ordering::SeqCst)
    }

    /// No longer counted among its address's connections without a caller (once).
    fn uncount_without_caller(&self) {
        if self.counted_without_caller.swap(false, Ordering::SeqCst) {
            self.address_without_caller.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn note_caller(&self, principal: &str) {
        self.uncount_without_caller();
        let mut caller = self.caller.lock().unwrap_or_else(|p| p.into_inner());
        if caller.as_deref() != Some(principal) {
            *caller = Some(Arc::from(principal));
        }
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// Completes once a new connection took this one's place.
    pub(super) async fn evicted(&self) {
        loop {
            let woken = self.wake.notified();
            if self.evicted.load(Ordering::SeqCst) {
                return;
            }
            woken.await;
        }
    }
}

/// One call on a connection.
#[derive(Debug)]
struct Call {
    activity: Arc<Activity>,
    /// Its caller was authenticated: it counts among `Activity::running`.
    of_use: AtomicBool,
    /// Since when (ms after `Activity::since`, plus one) its response has waited for the client
    /// to take a piece; 0 while it does not.
    waiting: AtomicU64,
    /// The bytes it holds of the connection's `Activity::unread`.
    held: AtomicUsize,
}

impl Call {
    fn authenticated(&self, principal: &str) {
        self.activity.note_caller(principal);
        if !self.of_use.swap(true, Ordering::SeqCst) {
            self.activity.running.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The bytes of one request body's message being received, held against the limits of its
/// connection's address and of all until the message is whole or the body is dropped.
#[derive(Debug)]
pub(crate) struct Receiving {
    counters: [Arc<Unread>; 3],
    held: usize,
    /// How slowly a message that has begun may arrive.
    pub(crate) pace: Pace,
}

/// How slowly a request message may arrive: each of its pieces within `idle` of the one
/// before, and the whole of `n` bytes within `idle` + `n` / `min_rate` of its first byte (a
/// client that sends a byte now and then is not waited for longer than one that sends nothing).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) struct Pace {
    /// The longest wait for a message's next bytes.
    pub(crate) idle: Duration,
    /// The slowest pace, in bytes per second.
    pub(crate) min_rate: u64,
}

impl Pace {
    /// How long a message of `len` bytes may take from its first byte.
    pub(crate) fn whole_within(&self, len: usize) -> Duration {
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        self.idle.saturating_add(Duration::from_millis(
            len.saturating_mul(1000) / self.min_rate.max(1),
        ))
    }
}

impl Receiving {
    /// Counts `n` more bytes, or says which limit that would pass (and counts none).
    pub(crate) fn hold(&mut self, n: usize) -> Result<(), Overfull> {
        hold_all(&self.counters, n)?;
        self.held += n;
        Ok(())
    }

    /// `n` of the bytes held are no longer being received (their message is whole).
    pub(crate) fn release(&mut self, n: usize) {
        let n = n.min(self.held);
        self.held -= n;
        for counter in &self.counters {
            counter.release(n);
        }
    }

    /// Bytes held.
    pub(crate) fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.release(self.held);
    }
}

/// A call running on a connection, until dropped.
#[derive(Debug)]
pub(crate) struct Running(Arc<Call>);

impl Running {
    /// The mark `identity` sets when the call's caller is authenticated.
    pub(crate) fn mark(&self) -> crate::identity::CallMark {
        let call = Arc::clone(&self.0);
        crate::identity::CallMark::new(move |principal| call.authenticated(principal))
    }

    /// Counts `n` bytes of the response as waiting for the client, or says which limit that
    /// would pass.
    pub(crate) fn hold(&self, n: usize) -> Result<(), Overfull> {
        hold_all(&self.0.activity.unread, n)?;
        self.0.held.fetch_add(n, Ordering::SeqCst);
        Ok(())
    }

    /// `n` of the bytes held were handed to HTTP/2: the connection holds them from now on,
    /// until it has written them (`Activity::wrote`), whether or not the call ends first.
    pub(crate) fn handed(&self, n: usize) {
        let held = self.0.held.load(Ordering::SeqCst);
        let n = n.min(held);
        self.0.held.store(held - n, Ordering::SeqCst);
        self.0.activity.handed(n);
    }

    /// The response waits for the client to take a piece (`true`), or not.
    pub(crate) fn waiting(&self, waits: bool) {
        let since = if waits {
            self.0.activity.now().saturating_add(1)
        } else {
            0
        };
        self.0.waiting.store(since, Ordering::SeqCst);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let call = &self.0;
        let held = call.held.swap(0, Ordering::SeqCst);
        for unread in &call.activity.unread {
            unread.release(held);
        }
        // Ended: it waits for nobody, however long something else keeps the call.
        call.waiting.store(0, Ordering::SeqCst);
        if call.of_use.load(Ordering::SeqCst) {
            let activity = &call.activity;
            let now = u64::try_from(activity.since.elapsed().as_millis()).unwrap_or(u64::MAX);
            activity.last.fetch_max(now, Ordering::SeqCst);
            activity.running.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A connection's local and peer address.
type Ends = (SocketAddr, SocketAddr);

/// The activity of every open connection of this process, by its local and peer address (the
/// connect info every request carries).
static CONNECTIONS: LazyLock<RwLock<HashMap<Ends, Arc<Activity>>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

/// The activity of the connection between `local` and `peer`, while it is open.
pub(crate) fn activity_of(local: SocketAddr, peer: SocketAddr) -> Option<Arc<Activity>> {
    CONNECTIONS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&(local, peer))
        .cloned()
}

/// The connections open, in all and per address.
struct Slots {
    open: Mutex<Open>,
    limits: ConnectionLimits,
    /// `EVICT_AFTER` (tests take less).
    evict_after: Duration,
    /// Bytes of responses waiting for their clients, in all.
    unread: Arc<Unread>,
    /// Bytes of request messages being received, in all.
    receiving: Arc<Unread>,
    /// The shares of callers, and of connections without one, of the bytes being received.
    shares: Arc<Shares>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, Address>,
    /// Every connection holding a slot, by slot number: its address and activity.
    /// In the order they were accepted (slot numbers only grow), so the oldest comes first.
    live: BTreeMap<u64, (IpAddr, Arc<Activity>)>,
    next: u64,
    /// When a look for an idle connection last found none: a flood of newcomers at caps full
    /// of callers costs a look every `LOOK_PAUSE`, not one each.
    found_none: Option<Instant>,
}

/// The connections of one address.
struct Address {
    open: usize,
    /// Of those, how many have had no caller yet (`Activity::uncount_without_caller`).
    without_caller: Arc<AtomicUsize>,
    /// Bytes of responses waiting for their clients at this address.
    unread: Arc<Unread>,
    /// Bytes of request messages being received from this address.
    receiving: Arc<Unread>,
}

/// How long after a look for an idle connection found none a full cap refuses without looking.
const LOOK_PAUSE: Duration = Duration::from_millis(100);

impl Open {
    /// Gives up the slot `id` (a connection closed, or evicted): true when it was held.
    fn release(&mut self, id: u64) -> bool {
        let Some((address, activity)) = self.live.remove(&id) else {
            return false;
        };
        activity.uncount_without_caller();
        self.total = self.total.saturating_sub(1);
        if let Some(a) = self.per_address.get_mut(&address) {
            a.open = a.open.saturating_sub(1);
            if a.open == 0 {
                self.per_address.remove(&address);
            }
        }
        true
    }

    /// Evicts a connection (of `address`, or of any) to make room for a newcomer, and is true
    /// when it did. In this order:
    /// 1. the oldest connection on which no caller has been authenticated, whatever its age,
    ///    of the address that holds the most such connections (when `address` is `None`):
    ///    connections without a credential give their places to each other, so a flood of them
    ///    that reconnect as soon as they are closed churns its own places, never refuses a
    ///    newcomer and never takes a caller's place, and a newcomer from an address with fewer
    ///    of them keeps its place until it has called;
    /// 2. of the principals whose calls hold more than `per_caller` connections, the one
    ///    longest without a call of use among those with none running;
    /// 3. the connection longest without a call of use, when that is at least `after` and none
    ///    runs on it.
    ///
    /// The first step is taken at every look (the counts of connections without a caller say
    /// whether there is one to find); a look that found nothing pauses only the other two
    /// (`LOOK_PAUSE`), which weigh the callers' connections.
    fn evict_idle(&mut self, address: Option<IpAddr>, after: Duration, per_caller: usize) -> bool {
        let here = |a: &IpAddr| address.is_none_or(|want| *a == want);
        let counted = |a: &Address| a.without_caller.load(Ordering::SeqCst) > 0;
        let any_without_caller = match address {
            Some(want) => self.per_address.get(&want).is_some_and(counted),
            None => self.per_address.values().any(counted),
        };
        let without_caller = match address {
            _ if !any_without_caller => None,
            Some(_) => self
                .live
                .iter()
                .find(|(_, (a, activity))| here(a) && activity.has_no_caller())
                .map(|(id, _)| *id),
            None => {
                // The oldest (the first met, in slot order) of the addresses with the most; the
                // counts move as calls are authenticated, so the oldest of any when none of
                // those is found.
                let most = self
                    .per_address
                    .values()
                    .map(|a| a.without_caller.load(Ordering::SeqCst))
                    .max()
                    .unwrap_or(0);
                let oldest = |of_most: bool| {
                    self.live
                        .iter()
                        .find(|(_, (_, activity))| {
                            (!of_most
                                || activity.address_without_caller.load(Ordering::SeqCst) == most)
                                && activity.has_no_caller()
                        })
                        .map(|(id, _)| *id)
                };
                oldest(true).or_else(|| oldest(false))
            }
        }
        .map(|id| (id, Duration::ZERO));
        if without_caller.is_none() && self.found_none.is_some_and(|at| at.elapsed() < LOOK_PAUSE) {
            return false;
        }
        let beyond_share = || {
            // A principal's places count wherever its connections come from.
            let mut held: HashMap<Arc<str>, usize> = HashMap::new();
            for (_, activity) in self.live.values() {
                if let Some(caller) = activity.caller() {
                    *held.entry(caller).or_insert(0) += 1;
                }
            }
            self.live
                .iter()
                .filter(|(_, (a, _))| here(a))
                .filter_map(|(id, (_, activity))| {
                    let caller = activity.caller()?;
                    (held.get(&caller).copied().unwrap_or(0) > per_caller)
                        .then_some((*id, activity.idle()?))
                })
                .max_by_key(|(_, idle)| *idle)
        };
        let idle_for_long = || {
            self.live
                .iter()
                .filter(|(_, (a, _))| here(a))
                .filter_map(|(id, (_, activity))| Some((*id, activity.idle()?)))
                .filter(|(_, idle)| *idle >= after)
                .max_by_key(|(_, idle)| *idle)
        };
        let oldest = without_caller.or_else(beyond_share).or_else(idle_for_long);
        let Some((id, _)) = oldest else {
            self.found_none = Some(Instant::now());
            return false;
        };
        self.found_none = None;
        if let Some((_, activity)) = self.live.get(&id) {
            activity.evict();
        }
        self.release(id)
    }
}

impl Slots {
    fn new(limits: ConnectionLimits, evict_after: Duration) -> Self {
        Self {
            open: Mutex::new(Open::default()),
            limits,
            evict_after,
            unread: Arc::new(Unread::new(
                limits.unread_bytes,
                "limits.unread_response_bytes",
            )),
            receiving: Arc::new(Unread::new(limits.receiving_bytes, "limits.request_bytes")),
            shares: Arc::new(Shares::new(&limits)),
        }
    }

    /// Closes every connection with a response that has waited `unread_timeout` for its
    /// client; gives how many.
    fn close_unread(&self) -> usize {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let stalled: Vec<u64> = open
            .live
            .iter()
            .filter(|(_, (_, activity))| {
                activity
                    .unread_for()
                    .is_some_and(|waited| waited >= self.limits.unread_timeout)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &stalled {
            if let Some((_, activity)) = open.live.get(id) {
                activity.evict();
            }
            open.release(*id);
        }
        stalled.len()
    }

    /// A slot for a connection from `ip` (`conn`: its local and peer address, under which
    /// requests find its activity), taking an idle connection's when a cap is full.
    fn take(slots: &Arc<Self>, ip: IpAddr, conn: Option<Ends>) -> Result<Slot, Cap> {
        let address = address_key(ip);
        let mut open = slots.open.lock().unwrap_or_else(|p| p.into_inner());
        let per_address = |open: &Open| open.per_address.get(&address).map_or(0, |a| a.open);
        if per_address(&open) >= slots.limits.max_connections_per_address
            && !open.evict_idle(
                Some(address),
                slots.evict_after,
                slots.limits.max_connections_per_caller,
            )
        {
            return Err(Cap::PerAddress);
        }
        if open.total >= slots.limits.max_connections
            && !open.evict_idle(
                None,
                slots.evict_after,
                slots.limits.max_connections_per_caller,
            )
        {
            return Err(Cap::Total);
        }
        let of_address = open.per_address.entry(address).or_insert_with(|| Address {
            open: 0,
            without_caller: Arc::new(AtomicUsize::new(0)),
            unread: Arc::new(Unread::new(
                slots.limits.unread_bytes_per_address,
                "limits.unread_response_bytes_per_address",
            )),
            receiving: Arc::new(Unread::new(
                slots.limits.receiving_bytes_per_address,
                "limits.request_bytes_per_address",
            )),
        });
        of_address.open += 1;
        of_address.without_caller.fetch_add(1, Ordering::SeqCst);
        let without_caller = Arc::clone(&of_address.without_caller);
        let unread = [Arc::clone(&of_address.unread), Arc::clone(&slots.unread)];
        let receiving = (
            [
                Arc::clone(&of_address.receiving),
                Arc::clone(&slots.receiving),
            ],
            Pace {
                idle: slots.limits.receiving_timeout,
                min_rate: slots.limits.receiving_min_rate,
            },
        );
        open.total += 1;
        let id = open.next;
        open.next += 1;
        let activity = Arc::new(Activity::new(
            unread,
            receiving,
            Arc::clone(&slots.shares),
            without_caller,
        ));
        open.live.insert(id, (address, Arc::clone(&activity)));
        if let Some(key) = conn {
            CONNECTIONS
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key, Arc::clone(&activity));
        }
        Ok(Slot {
            slots: Arc::clone(slots),
            id,
            conn,
            activity,
        })
    }
}

/// The address a connection counts under: IPv4 as it is, IPv6 by its /64 (one host gets a
/// whole /64 to pick from).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// A connection's place in the caps, given back when it is dropped (or taken by a new
/// connection while it is idle).
pub(crate) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    conn: Option<Ends>,
    activity: Arc<Activity>,
}

impl Slot {
    /// What the calls on the connection tell.
    pub(super) fn activity(&self) -> Arc<Activity> {
        Arc::clone(&self.activity)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.activity.closed();
        self.slots
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(self.id);
        if let Some(key) = self.conn {
            let mut all = CONNECTIONS
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Only this connection's: the addresses may be in use again by a newer one.
            if all
                .get(&key)
                .is_some_and(|a| Arc::ptr_eq(a, &self.activity))
            {
                all.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(total: usize, per: usize) -> Arc<Slots> {
        Arc::new(Slots::new(
            ConnectionLimits {
                max_connections: total,
                max_connections_per_address: per,
                ..ConnectionLimits::default()
            },
            EVICTED_IN_TESTS,
        ))
    }

    /// Long enough that the tests which take slots back to back never see one as idle.
    const EVICTED_IN_TESTS: Duration = Duration::from_millis(300);

    fn idle_for_long() {
        std::thread::sleep(EVICTED_IN_TESTS + Duration::from_millis(50));
    }

    /// Past the pause after a look that found nothing.
    fn idle_pause() {
        std::thread::sleep(LOOK_PAUSE + Duration::from_millis(20));
    }

    /// A slot from `ip` whose connection has had a call of `principal`, ended.
    fn used_by(s: &Arc<Slots>, ip: IpAddr, principal: &str) -> Slot {
        let slot = Slots::take(s, ip, None).unwrap();
        slot.activity.call().0.authenticated(principal);
        slot
    }

    #[test]
    fn a_new_connection_takes_the_place_of_the_longest_idle_one() {
        let s = slots(2, 2);
        let first = used_by(&s, "10.0.0.1".parse().unwrap(), "alice");
        std::thread::sleep(Duration::from_millis(60));
        let second = used_by(&s, "10.0.0.2".parse().unwrap(), "bob");
        // Not idle long enough yet: refused, as without eviction.
        assert_eq!(
            Slots::take(&s, "10.0.0.3".parse().unwrap(), None).err(),
            Some(Cap::Total)
        );
        idle_for_long();
        let third = Slots::take(&s, "10.0.0.3".parse().unwrap(), None).unwrap();
        assert!(first.activity.evicted.load(Ordering::SeqCst));
        assert!(!second.activity.evicted.load(Ordering::SeqCst));
        // The evicted connection's slot is not given back twice when it closes.
        drop(first);
        let open = s.open.lock().unwrap();
        assert_eq!((open.total, open.live.len()), (2, 2));
        drop(open);
        drop((second, third));
        assert_eq!(s.open.lock().unwrap().total, 0);
    }

    #[test]
    fn connections_without_a_caller_give_their_places_to_newcomers_the_oldest_first_at_once() {
        for (total, per) in [(3, 10), (10, 3)] {
            let s = slots(total, per);
            let a: IpAddr = "10.0.0.1".parse().unwrap();
            // A caller's connection, quiet for longer than a connection may idle, and two that
            // never had a caller, taken just now.
            let caller = used_by(&s, a, "alice");
            idle_for_long();
            let mut without = vec![
                Slots::take(&s, a, None).unwrap(),
                Slots::take(&s, a, None).unwrap(),
            ];
            // A flood of newcomers that never call: each takes the place of the oldest
            // connection without a caller, at once, never the caller's.
            for i in 0..50 {
                let newcomer = Slots::take(&s, a, None).unwrap();
                let oldest = without.remove(0);
                assert!(oldest.activity.evicted.load(Ordering::SeqCst), "{i}");
                assert!(
                    without
                        .iter()
                        .all(|w| !w.activity.evicted.load(Ordering::SeqCst)),
                    "{i}"
                );
                without.push(newcomer);
            }
            assert!(!caller.activity.evicted.load(Ordering::SeqCst));
            // A newcomer that calls keeps its place against the flood.
            let newcomer = Slots::take(&s, a, None).unwrap();
            newcomer.activity.call().0.authenticated("bob");
            for _ in 0..10 {
                without.push(Slots::take(&s, a, None).unwrap());
            }
            assert!(!newcomer.activity.evicted.load(Ordering::SeqCst));
            assert!(!caller.activity.evicted.load(Ordering::SeqCst));
            // The twin: with no connection without a caller left, the quiet caller's is the
            // one that gives its place.
            drop(without);
            let bob_again = used_by(&s, a, "bob");
            idle_pause();
            assert!(Slots::take(&s, a, None).is_ok());
            assert!(caller.activity.evicted.load(Ordering::SeqCst));
            assert!(!newcomer.activity.evicted.load(Ordering::SeqCst));
            assert!(!bob_again.activity.evicted.load(Ordering::SeqCst));
        }
    }

    #[test]
    fn at_the_total_cap_the_address_with_most_connections_without_a_caller_gives_one_up() {
        let s = slots(6, 6);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        // B's newcomer came first; then A's flood of four; a caller of C.
        let of_b = Slots::take(&s, b, None).unwrap();
        let mut of_a: Vec<Slot> = (0..4).map(|_| Slots::take(&s, a, None).unwrap()).collect();
        let caller = used_by(&s, c, "carol");
        // Newcomers from C, B and A each take the place of A's oldest, as long as A holds more
        // than B: never B's, never the caller's.
        for (i, from) in [c, b, a].into_iter().enumerate() {
            let newcomer = Slots::take(&s, from, None).unwrap();
            assert!(of_a[0].activity.evicted.load(Ordering::SeqCst), "{i}");
            of_a.remove(0);
            assert!(!of_b.activity.evicted.load(Ordering::SeqCst), "{i}");
            assert!(!caller.activity.evicted.load(Ordering::SeqCst), "{i}");
            if from == a {
                of_a.push(newcomer);
            } else {
                // Calls: no longer without a caller.
                newcomer.activity.call().0.authenticated("dave");
                of_a.push(newcomer);
            }
        }
        // The twin: with as many of B as of A, the oldest of them goes, B's.
        drop(of_a);
        let of_a = Slots::take(&s, a, None).unwrap();
        let _fill = [
            used_by(&s, c, "erin"),
            used_by(&s, c, "frank"),
            used_by(&s, c, "gina"),
        ];
        let newcomer = Slots::take(&s, c, None).unwrap();
        assert!(of_b.activity.evicted.load(Ordering::SeqCst));
        assert!(!of_a.activity.evicted.load(Ordering::SeqCst));
        assert!(!caller.activity.evicted.load(Ordering::SeqCst));
        // The counts followed every place taken, called on, given up and closed.
        let without_caller = |ip: &IpAddr| {
            s.open
                .lock()
                .unwrap()
                .per_address
                .get(ip)
                .map(|a| a.without_caller.load(Ordering::SeqCst))
        };
        assert_eq!(without_caller(&a), Some(1));
        assert_eq!(without_caller(&b), None);
        assert_eq!(without_caller(&c), Some(1));
        newcomer.activity.call().0.authenticated("hank");
        assert_eq!(without_caller(&c), Some(0));
        drop(newcomer);
        assert_eq!(without_caller(&c), Some(0));
        drop(of_a);
        assert_eq!(without_caller(&a), None);
    }

    #[test]
    fn a_principal_keeps_its_share_of_places_and_gives_up_the_rest_to_newcomers() {
        let s = Arc::new(Slots::new(
            ConnectionLimits {
                max_connections: 5,
                max_connections_per_address: 5,
                max_connections_per_caller: 2,
                ..ConnectionLimits::default()
            },
            EVICTED_IN_TESTS,
        ));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        // Alice calls on four connections, from two addresses, just now; one call still runs.
        let mut alice = Vec::new();
        let mut running = None;
        for (i, ip) in [a, a, b, b].into_iter().enumerate() {
            let slot = Slots::take(&s, ip, None).unwrap();
            let call = slot.activity.call();
            call.0.authenticated("alice");
            if i == 0 {
                running = Some(call);
            }
            alice.push(slot);
        }
        // Bob's one connection, used just now.
        let bob = Slots::take(&s, b, None).unwrap();
        drop(bob.activity.call());
        bob.activity.call().0.authenticated("bob");
        // The cap is full of connections used just now: newcomers take Alice's places beyond
        // her two, never Bob's, nor the one with her call running.
        let first = used_by(&s, a, "carol");
        let second = used_by(&s, b, "carol");
        let evicted = |slots: &[Slot]| {
            slots
                .iter()
                .filter(|s| s.activity.evicted.load(Ordering::SeqCst))
                .count()
        };
        assert_eq!(evicted(&alice), 2);
        assert!(!alice[0].activity.evicted.load(Ordering::SeqCst));
        assert!(!bob.activity.evicted.load(Ordering::SeqCst));
        // Within her share, her places are kept.
        assert_eq!(Slots::take(&s, a, None).err(), Some(Cap::Total));
        drop((running, first, second, alice, bob));
    }

    #[test]
    fn a_connection_with_a_call_running_or_of_recent_use_keeps_its_place() {
        let s = slots(1, 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let held = Slots::take(&s, a, None).unwrap();
        let call = held.activity.call();
        call.0.authenticated("someone");
        idle_for_long();
        assert_eq!(Slots::take(&s, a, None).err(), Some(Cap::PerAddress));
        // The call ends: the connection counts as used just now.
        drop(call);
        idle_pause();
        assert_eq!(Slots::take(&s, a, None).err(), Some(Cap::PerAddress));
        idle_for_long();
        assert!(Slots::take(&s, a, None).is_ok());
        assert!(held.activity.evicted.load(Ordering::SeqCst));
    }

    #[test]
    fn calls_whose_caller_was_not_authenticated_are_of_no_use() {
        // One that ended, and one still running (a request sent a byte at a time).
        for ended in [true, false] {
            let s = slots(1, 1);
            let a: IpAddr = "10.0.0.1".parse().unwrap();
            let held = Slots::take(&s, a, None).unwrap();
            idle_for_long();
            let call = held.activity.call();
            if ended {
                drop(call);
                assert!(Slots::take(&s, a, None).is_ok(), "{ended}");
            } else {
                assert!(Slots::take(&s, a, None).is_ok(), "{ended}");
                drop(call);
            }
            assert!(held.activity.evicted.load(Ordering::SeqCst));
        }
    }

    #[test]
    fn a_look_that_found_no_idle_connection_is_not_repeated_at_once() {
        let s = slots(1, 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let held = used_by(&s, a, "alice");
        assert_eq!(Slots::take(&s, a, None).err(), Some(Cap::PerAddress));
        let looked = s.open.lock().unwrap().found_none;
        assert!(looked.is_some());
        // Refused again without a look: the time of the last look stands.
        assert_eq!(Slots::take(&s, a, None).err(), Some(Cap::PerAddress));
        assert_eq!(s.open.lock().unwrap().found_none, looked);
        idle_for_long();
        assert!(Slots::take(&s, a, None).is_ok());
        assert!(held.activity.evicted.load(Ordering::SeqCst));
    }

    /// The pause after a look that found nothing never keeps a newcomer from the place of a
    /// connection without a caller: not after a look at another address's connections, nor
    /// after one taken before that connection came.
    #[test]
    fn a_pause_after_a_look_that_found_nothing_still_finds_connections_without_a_caller() {
        let (x, y, z, w): (IpAddr, IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
            "10.0.0.4".parse().unwrap(),
        );
        // X's cap is full of callers; Y holds a connection without a caller; the total is full.
        let s = slots(4, 2);
        let of_x = [used_by(&s, x, "alice"), used_by(&s, x, "bob")];
        let without = Slots::take(&s, y, None).unwrap();
        let of_z = used_by(&s, z, "carol");
        assert_eq!(Slots::take(&s, x, None).err(), Some(Cap::PerAddress));
        assert!(s.open.lock().unwrap().found_none.is_some());
        // At once, a newcomer from W at the total cap takes Y's place.
        let of_w = Slots::take(&s, w, None).unwrap();
        assert!(without.activity.evicted.load(Ordering::SeqCst));
        assert!(
            of_x.iter()
                .chain([&of_z])
                .all(|c| !c.activity.evicted.load(Ordering::SeqCst))
        );
        drop((of_x, of_z, of_w, without));
        // A look finds nothing; a place frees and a connection without a caller takes it; the
        // next newcomer takes that one's place at once.
        let s = slots(2, 2);
        let alice = used_by(&s, x, "alice");
        let bob = used_by(&s, y, "bob");
        assert_eq!(Slots::take(&s, z, None).err(), Some(Cap::Total));
        drop(bob);
        let without = Slots::take(&s, z, None).unwrap();
        assert!(Slots::take(&s, w, None).is_ok());
        assert!(without.activity.evicted.load(Ordering::SeqCst));
        assert!(!alice.activity.evicted.load(Ordering::SeqCst));
    }

    #[test]
    fn a_full_address_takes_only_its_own_idle_connections() {
        let s = slots(10, 1);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let of_a = Slots::take(&s, a, None).unwrap();
        let of_b = Slots::take(&s, b, None).unwrap();
        idle_for_long();
        assert!(Slots::take(&s, a, None).is_ok());
        assert!(of_a.activity.evicted.load(Ordering::SeqCst));
        assert!(!of_b.activity.evicted.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn an_evicted_connection_wakes_its_waiter() {
        let activity = Arc::new(Activity::new(
            [
                Arc::new(Unread::new(usize::MAX, "a")),
                Arc::new(Unread::new(usize::MAX, "b")),
            ],
            (
                [
                    Arc::new(Unread::new(usize::MAX, "c")),
                    Arc::new(Unread::new(usize::MAX, "d")),
                ],
                Pace {
                    idle: Duration::from_secs(10),
                    min_rate: 1024,
                },
            ),
            Arc::new(Shares::new(&ConnectionLimits::default())),
            Arc::new(AtomicUsize::new(1)),
        ));
        let waiter = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.evicted().await }
        });
        tokio::task::yield_now().await;
        activity.evict();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    fn unread_slots(per_address: usize, total: usize, timeout: Duration) -> Arc<Slots> {
        Arc::new(Slots::new(
            ConnectionLimits {
                unread_bytes_per_address: per_address,
                unread_bytes: total,
                unread_timeout: timeout,
                ..ConnectionLimits::default()
            },
            EVICTED_IN_TESTS,
        ))
    }

    #[test]
    fn responses_waiting_for_their_clients_are_held_to_the_limits_of_the_address_and_in_all() {
        let s = unread_slots(100, 150, Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let (a1, a2, b1) = (
            Slots::take(&s, a, None).unwrap(),
            Slots::take(&s, a, None).unwrap(),
            Slots::take(&s, b, None).unwrap(),
        );
        let on_a1 = a1.activity.call();
        on_a1.hold(60).unwrap();
        // The address's limit counts both its connections.
        let on_a2 = a2.activity.call();
        let over = on_a2.hold(41).unwrap_err();
        assert_eq!(
            (over.key, over.limit),
            ("limits.unread_response_bytes_per_address", 100)
        );
        on_a2.hold(40).unwrap();
        // Another address has its own, within the limit in all.
        let on_b1 = b1.activity.call();
        let over = on_b1.hold(51).unwrap_err();
        assert_eq!(
            (over.key, over.limit),
            ("limits.unread_response_bytes", 150)
        );
        // A refusal counts nothing.
        on_b1.hold(50).unwrap();
        assert_eq!(s.unread.bytes.load(Ordering::SeqCst), 150);
        // What a call hands to HTTP/2 stays held by its connection, whether or not the call
        // ends, until the connection has written as much (never more than it holds); the rest
        // of a call goes when it ends.
        on_a1.handed(10);
        on_a1.handed(1000);
        assert_eq!(s.unread.bytes.load(Ordering::SeqCst), 150);
        drop(on_a1);
        assert_eq!(s.unread.bytes.load(Ordering::SeqCst), 150);
        a1.activity.wrote(25);
        assert_eq!(s.unread.bytes.load(Ordering::SeqCst), 125);
        a1.activity.wrote(1000);
        a1.activity.wrote(1000);
        assert_eq!(s.unread.bytes.load(Ordering::SeqCst), 90);
        drop(on_a2);
        assert_eq!(s.unread.bytes.load(Ordering::SeqCst), 50);
        let on_a1 = a1.activity.call();
        on_a1.hold(100).unwrap();
        on_a1.handed(70);
        drop(on_a1);
        assert_eq!(s.unread.bytes.load(Ordering::SeqCst), 120);
        // A connection that closes lets go of what it had not written, and of what a body
        // still hands it afterwards.
        let late = a1.activity.call();
        late.hold(30).unwrap();
        drop(a1);
        assert_eq!(s.unread.bytes.load(Ordering::SeqCst), 80);
        late.handed(30);
        assert_eq!(s.unread.bytes.load(Ordering::SeqCst), 50);
        drop(late);
        drop(on_b1);
        assert_eq!(s.unread.bytes.load(Ordering::SeqCst), 0);
        drop((a2, b1));
    }

    #[test]
    fn a_connection_whose_response_waits_too_long_for_its_client_is_closed() {
        let s = unread_slots(100, 100, Duration::from_secs(1));
        let slow = Slots::take(&s, "10.0.0.1".parse().unwrap(), None).unwrap();
        let quick = Slots::take(&s, "10.0.0.2".parse().unwrap(), None).unwrap();
        let waits = slow.activity.call();
        waits.waiting(true);
        let taken = quick.activity.call();
        taken.waiting(true);
        taken.waiting(false);
        // A call that ended, waiting or not, is not looked at.
        let ended = quick.activity.call();
        ended.waiting(true);
        drop(ended);
        assert_eq!(s.close_unread(), 0);
        std::thread::sleep(Duration::from_millis(1050));
        assert_eq!(s.close_unread(), 1);
        assert!(slow.activity.evicted.load(Ordering::SeqCst));
        assert!(!quick.activity.evicted.load(Ordering::SeqCst));
        assert_eq!(s.open.lock().unwrap().total, 1);
        // Closed once: the sweep after does not count it again.
        assert_eq!(s.close_unread(), 0);
        drop(waits);
    }

    #[test]
    fn messages_count_against_the_share_of_their_connections_caller_or_of_those_without() {
        let s = Arc::new(Slots::new(
            ConnectionLimits {
                receiving_bytes_per_caller: 100,
                receiving_bytes_unauthenticated: 50,
                ..ConnectionLimits::default()
            },
            EVICTED_IN_TESTS,
        ));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let (first, second, third) = (
            Slots::take(&s, ip, None).unwrap(),
            Slots::take(&s, ip, None).unwrap(),
            Slots::take(&s, ip, None).unwrap(),
        );
        // No caller authenticated on them yet: one share for all such connections.
        let mut a = first.activity.receiving();
        let mut b = second.activity.receiving();
        a.hold(30).unwrap();
        let over = b.hold(21).unwrap_err();
        assert_eq!(
            (over.key, over.limit),
            ("limits.request_bytes_unauthenticated", 50)
        );
        // Refused: nothing counted anywhere.
        assert_eq!(s.receiving.bytes.load(Ordering::SeqCst), 30);
        // Once a caller was authenticated on a connection, its next messages count against
        // that caller's share, which its other connections share.
        first.activity.call().0.authenticated("alice");
        third.activity.call().0.authenticated("alice");
        let mut c = first.activity.receiving();
        let mut d = third.activity.receiving();
        c.hold(60).unwrap();
        let over = d.hold(41).unwrap_err();
        assert_eq!(
            (over.key, over.limit),
            ("limits.request_bytes_per_caller", 100)
        );
        second.activity.call().0.authenticated("bob");
        second.activity.receiving().hold(100).unwrap();
        drop((a, c, d));
        assert_eq!(s.receiving.bytes.load(Ordering::SeqCst), 0);
        // Shares no message is received under are forgotten.
        s.shares.prune();
        assert!(s.shares.callers.lock().unwrap().is_empty());
        b.hold(50).unwrap();
    }

    #[test]
    fn a_connection_that_writes_nothing_of_what_it_was_handed_is_closed() {
        let s = unread_slots(1000, 1000, Duration::from_secs(1));
        let stuck = Slots::take(&s, "10.0.0.1".parse().unwrap(), None).unwrap();
        let writing = Slots::take(&s, "10.0.0.2".parse().unwrap(), None).unwrap();
        for conn in [&stuck, &writing] {
            let call = conn.activity.call();
            call.hold(500).unwrap();
            call.handed(500);
        }
        std::thread::sleep(Duration::from_millis(600));
        writing.activity.wrote(100);
        std::thread::sleep(Duration::from_millis(600));
        // The calls ended long ago; the stuck connection's bytes still wait to be written.
        assert_eq!(s.close_unread(), 1);
        assert!(stuck.activity.evicted.load(Ordering::SeqCst));
        assert!(!writing.activity.evicted.load(Ordering::SeqCst));
        writing.activity.wrote(400);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            s.close_unread(),
            0,
            "a connection that wrote all it held waits for nothing"
        );
    }

    #[test]
    fn an_address_at_its_cap_is_refused_and_others_are_not() {
        let s = slots(10, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        // Connections of callers (one without a caller would give its place, see above).
        let held = [used_by(&s, a, "alice"), used_by(&s, a, "bob")];
        assert_eq!(Slots::take(&s, a, None).err(), Some(Cap::PerAddress));
        assert!(Slots::take(&s, b, None).is_ok());
        drop(held);
        assert!(
            Slots::take(&s, a, None).is_ok(),
            "a closed connection gives its slot back"
        );
    }

    #[test]
    fn the_total_cap_holds_across_addresses() {
        let s = slots(2, 2);
        let _one = used_by(&s, "10.0.0.1".parse().unwrap(), "alice");
        let _two = used_by(&s, "10.0.0.2".parse().unwrap(), "bob");
        assert_eq!(
            Slots::take(&s, "10.0.0.3".parse().unwrap(), None).err(),
            Some(Cap::Total)
        );
    }

    #[test]
    fn ipv6_peers_count_by_their_slash_64() {
        let s = slots(10, 1);
        let _held = used_by(&s, "2001:db8::1".parse().unwrap(), "alice");
        assert_eq!(
            Slots::take(&s, "2001:db8::ffff:1".parse().unwrap(), None).err(),
            Some(Cap::PerAddress)
        );
        assert!(Slots::take(&s, "2001:db8:0:1::1".parse().unwrap(), None).is_ok());
    }

    #[test]
    fn the_total_cap_stays_below_the_descriptor_limit() {
        let l = ConnectionLimits::default();
        assert_eq!(l.fitted(1_048_576), l);
        assert_eq!(l.fitted(4096).max_connections, 3840);
        let low = l.fitted(256);
        assert_eq!(low.max_connections, 128);
        assert_eq!(low.max_connections_per_address, 128);
    }

    #[test]
    fn running_out_of_descriptors_is_not_a_connection_error() {
        assert!(!is_connection_error(&io::Error::from_raw_os_error(24)));
        assert!(is_connection_error(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
    }
}
