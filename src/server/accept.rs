//! The accept loop: kluis's own in place of tonic's `TcpIncoming`, so that no client can hold
//! the listener. Every connection takes a slot in two caps (in all, and per peer address; an
//! IPv6 peer counts by its /64) and is closed at once when either is full; it gets
//! `handshake_timeout` to finish the TLS handshake (when TLS is on) and send the HTTP/2 preface,
//! or is closed (`Killable`). Handshakes run on their own tasks, so a slow one holds no other.
//! An error of `accept` itself (out of descriptors: `EMFILE`) is met with a pause of 10 to
//! 100 ms and logged once per run of them, never with a spinning loop.
//!
//! Invariant: every accepted socket is either handed to the server inside a `Killable` holding
//! its `Slot`, or closed.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;

use super::killable::Killable;

/// The connection caps and the time a connection gets to start.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct ConnectionLimits {
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one peer address (an IPv6 /64).
    pub max_connections_per_address: usize,
    /// Time from accept to the end of the TLS handshake and the HTTP/2 preface.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_address: 256,
            handshake_timeout: Duration::from_secs(5),
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
) -> ReceiverStream<io::Result<Killable<H::Io>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(Slots {
        open: Mutex::new(Open::default()),
        limits,
    });
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
            let slot = match Slots::take(&slots, peer.ip()) {
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
                        let conn = Killable::new(io, switch, Some(deadline), Some(slot));
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

/// The connections open, in all and per address.
struct Slots {
    open: Mutex<Open>,
    limits: ConnectionLimits,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl Slots {
    fn take(slots: &Arc<Self>, ip: IpAddr) -> Result<Slot, Cap> {
        let address = address_key(ip);
        let mut open = slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= slots.limits.max_connections {
            return Err(Cap::Total);
        }
        let mine = open.per_address.entry(address).or_insert(0);
        if *mine >= slots.limits.max_connections_per_address {
            return Err(Cap::PerAddress);
        }
        *mine += 1;
        open.total += 1;
        Ok(Slot {
            slots: Arc::clone(slots),
            address,
        })
    }
}

/// The address a connection counts under: IPv4 as it is, IPv6 by its /64 (one host gets a
/// whole /64 to pick from).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// A connection's place in the caps, given back when it is dropped.
pub(crate) struct Slot {
    slots: Arc<Slots>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_address.get_mut(&self.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(total: usize, per: usize) -> Arc<Slots> {
        Arc::new(Slots {
            open: Mutex::new(Open::default()),
            limits: ConnectionLimits {
                max_connections: total,
                max_connections_per_address: per,
                handshake_timeout: Duration::from_secs(1),
            },
        })
    }

    #[test]
    fn an_address_at_its_cap_is_refused_and_others_are_not() {
        let s = slots(10, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held = [Slots::take(&s, a).unwrap(), Slots::take(&s, a).unwrap()];
        assert_eq!(Slots::take(&s, a).err(), Some(Cap::PerAddress));
        assert!(Slots::take(&s, b).is_ok());
        drop(held);
        assert!(
            Slots::take(&s, a).is_ok(),
            "a closed connection gives its slot back"
        );
    }

    #[test]
    fn the_total_cap_holds_across_addresses() {
        let s = slots(2, 2);
        let _one = Slots::take(&s, "10.0.0.1".parse().unwrap()).unwrap();
        let _two = Slots::take(&s, "10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(
            Slots::take(&s, "10.0.0.3".parse().unwrap()).err(),
            Some(Cap::Total)
        );
    }

    #[test]
    fn ipv6_peers_count_by_their_slash_64() {
        let s = slots(10, 1);
        let _held = Slots::take(&s, "2001:db8::1".parse().unwrap()).unwrap();
        assert_eq!(
            Slots::take(&s, "2001:db8::ffff:1".parse().unwrap()).err(),
            Some(Cap::PerAddress)
        );
        assert!(Slots::take(&s, "2001:db8:0:1::1".parse().unwrap()).is_ok());
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
