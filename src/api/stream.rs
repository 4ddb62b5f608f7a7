//! Server streams: the one way every streaming call sends (`Streams::channel`), and the caps on
//! the long calls that hold the node's memory or threads while a client takes its time
//! (`Streams::admit`): exports and backups, evidence uploads open, evidence downloads, watches
//! of the audit trail.
//!
//! A client that stops reading (its HTTP/2 window at zero) fills the stream's channel; the
//! producer then waits at most `idle` for room, and otherwise stops: the blocking thread it ran
//! on is free again, and the stream ends with `DEADLINE_EXCEEDED` saying the client stopped
//! reading, never as if it were complete.
//!
//! Invariant: no send of a server stream waits longer than `StreamLimits::idle`.
//! Invariant: an export, audit export or backup runs, an upload is begun and received, and a
//! download is read and sent, and a watch of the trail reads and sends, only while it holds a
//! `Permit` of its kind.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio_stream::Stream;
use tonic::Status;

use crate::domain::PrincipalId;

/// The idle limit of server streams and the caps on long calls (`[limits]`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct StreamLimits {
    /// How long a stream waits for the client to take a message before it ends.
    pub idle: Duration,
    /// Exports, audit exports and backups running at once, in all.
    pub max_exports: usize,
    /// Exports, audit exports and backups running at once for one caller (principal).
    pub max_exports_per_caller: usize,
    /// Evidence uploads open at once, in all.
    pub max_uploads: usize,
    /// Evidence uploads open at once for one caller (principal).
    pub max_uploads_per_caller: usize,
    /// Evidence downloads being sent at once, in all.
    pub max_downloads: usize,
    /// Evidence downloads being sent at once for one caller (principal).
    pub max_downloads_per_caller: usize,
    /// Watches of the audit trail (`WatchAudit`) open at once, in all.
    pub max_watches: usize,
    /// Watches of the audit trail open at once for one caller (principal).
    pub max_watches_per_caller: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30),
            max_exports: 64,
            max_exports_per_caller: 4,
            max_uploads: 256,
            max_uploads_per_caller: 16,
            max_downloads: 128,
            max_downloads_per_caller: 16,
            max_watches: 64,
            max_watches_per_caller: 8,
        }
    }
}

/// A kind of long call with caps of its own.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) enum Long {
    /// A subject export, an audit export or a backup.
    Export,
    /// An evidence upload, from its start to its end.
    Upload,
    /// An evidence download, while it is read and sent.
    Download,
    /// A watch of the audit trail, from its first page to its end (with `follow`, until the
    /// client leaves or the server stops: each reads the trail again after every commit).
    Watch,
}

impl Long {
    #[cfg(test)]
    const ALL: [Self; 4] = [Self::Export, Self::Upload, Self::Download, Self::Watch];

    /// The caps in all and per caller, with their configuration keys.
    fn caps(self, limits: &StreamLimits) -> ((usize, &'static str), (usize, &'static str)) {
        match self {
            Self::Export => (
                (limits.max_exports, "max_exports"),
                (limits.max_exports_per_caller, "max_exports_per_caller"),
            ),
            Self::Upload => (
                (limits.max_uploads, "max_uploads"),
                (limits.max_uploads_per_caller, "max_uploads_per_caller"),
            ),
            Self::Download => (
                (limits.max_downloads, "max_downloads"),
                (limits.max_downloads_per_caller, "max_downloads_per_caller"),
            ),
            Self::Watch => (
                (limits.max_watches, "max_watches"),
                (limits.max_watches_per_caller, "max_watches_per_caller"),
            ),
        }
    }

    /// What they are, in a message, and what the caller can do at a cap.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Self::Export => (
                "exports and backups running",
                "retry when a running export finishes",
            ),
            Self::Upload => (
                "evidence uploads open",
                "finish or cancel an upload, then retry",
            ),
            Self::Download => (
                "evidence downloads being sent",
                "read a download to its end or cancel it, then retry",
            ),
            Self::Watch => (
                "watches of the audit trail open",
                "close a watch (one `follow` watch is enough to follow the trail), then retry",
            ),
        }
    }
}

/// The server streams of one server: their limits and the long calls running, per kind.
#[derive(Debug, Default)]
pub struct Streams {
    limits: StreamLimits,
    exports: Mutex<Running>,
    uploads: Mutex<Running>,
    downloads: Mutex<Running>,
    watches: Mutex<Running>,
}

#[derive(Debug, Default)]
struct Running {
    total: usize,
    per_caller: HashMap<String, usize>,
    /// Watches per officer role (`Streams::admit_as`).
    per_group: HashMap<String, usize>,
}

/// A server stream as a handler returns it.
pub type ServerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Streams {
    /// Streams under `limits`.
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// The long calls of `kind` running.
    fn running(&self, kind: Long) -> std::sync::MutexGuard<'_, Running> {
        match kind {
            Long::Export => &self.exports,
            Long::Upload => &self.uploads,
            Long::Download => &self.downloads,
            Long::Watch => &self.watches,
        }
        .lock()
        .unwrap_or_else(|p| p.into_inner())
    }

    /// A stream holding at most `capacity` messages the client has not taken, and its sender.
    pub(crate) fn channel<T: Send + 'static>(
        &self,
        capacity: usize,
    ) -> (Sender<T>, ServerStream<T>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let stalled = Arc::new(AtomicBool::new(false));
        let sender = Sender {
            tx,
            idle: self.limits.idle,
            stalled: Arc::clone(&stalled),
        };
        let stream = Receiver {
            rx,
            stalled,
            idle: self.limits.idle,
            ended: false,
        };
        (sender, Box::pin(stream))
    }

    /// A place for one long call of `kind` of `caller`, or `RESOURCE_EXHAUSTED` naming the cap
    /// that is reached. The place is given back when the permit is dropped.
    pub(crate) fn admit(
        self: &Arc<Self>,
        kind: Long,
        caller: &PrincipalId,
    ) -> Result<Permit, Status> {
        self.admit_as(kind, caller, None)
    }

    /// `admit`, for a caller of `group` (an officer role, for a watch of the trail): the callers
    /// of one group together hold at most the cap in all less one caller's share, so that one
    /// role's officers, however many principals they issue tokens to, leave the other role
    /// room to watch.
    pub(crate) fn admit_as(
        self: &Arc<Self>,
        kind: Long,
        caller: &PrincipalId,
        group: Option<&str>,
    ) -> Result<Permit, Status> {
        let ((total, total_key), (per_caller, per_caller_key)) = kind.caps(&self.limits);
        let (what, then) = kind.words();
        let mut running = self.running(kind);
        if running.total >= total {
            return Err(Status::resource_exhausted(format!(
                "{total} {what} in all (`limits.{total_key}`); {then}"
            )));
        }
        if let Some(group) = group {
            let share = total.saturating_sub(per_caller).max(per_caller);
            if running.per_group.get(group).copied().unwrap_or(0) >= share {
                return Err(Status::resource_exhausted(format!(
                    "{share} {what} of {group}s: `limits.{total_key}` less one caller's share \
                     (`limits.{per_caller_key}`), which is kept for the other role; {then}"
                )));
            }
        }
        let taken = running.total;
        let mine = running
            .per_caller
            .entry(caller.as_str().to_owned())
            .or_insert(0);
        if *mine >= per_caller {
            return Err(Status::resource_exhausted(format!(
                "this caller has {per_caller} {what} (`limits.{per_caller_key}`); {then}"
            )));
        }
        // The last quarter of the places in all is kept for callers who hold none: callers at
        // their own cap fill the rest only, so that it takes four times as many of them to
        // shut everyone else out. (Watches keep each officer role's share instead.)
        let reserve = total / 4;
        if group.is_none() && *mine > 0 && taken >= total - reserve {
            return Err(Status::resource_exhausted(format!(
                "{taken} {what} in all, and the last {reserve} of `limits.{total_key}` = {total} \
                 are kept for callers who have none; {then}"
            )));
        }
        *mine += 1;
        running.total += 1;
        if let Some(group) = group {
            *running.per_group.entry(group.to_owned()).or_insert(0) += 1;
        }
        Ok(Permit {
            streams: Arc::clone(self),
            caller: caller.as_str().to_owned(),
            group: group.map(str::to_owned),
            kind,
        })
    }

    /// The long calls of each kind running now, in all.
    #[cfg(test)]
    fn totals(&self) -> [usize; 4] {
        Long::ALL.map(|k| self.running(k).total)
    }
}

/// One running long call's place; given back when it is dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    streams: Arc<Streams>,
    caller: String,
    group: Option<String>,
    kind: Long,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut running = self.streams.running(self.kind);
        running.total = running.total.saturating_sub(1);
        let Running {
            per_caller,
            per_group,
            ..
        } = &mut *running;
        for (counts, key) in [
            (per_caller, Some(&self.caller)),
            (per_group, self.group.as_ref()),
        ] {
            let Some(key) = key else { continue };
            if let Some(n) = counts.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(key);
                }
            }
        }
    }
}

/// The sending end of a server stream.
pub(crate) struct Sender<T> {
    tx: tokio::sync::mpsc::Sender<Result<T, Status>>,
    idle: Duration,
    stalled: Arc<AtomicBool>,
}

impl<T: Send + 'static> Sender<T> {
    /// Sends `message`, waiting at most the idle limit for the client to make room. False when
    /// the stream is over: the client went away or stopped reading (the stream then ends with
    /// `DEADLINE_EXCEEDED`), or `message` was an error (the last message of a stream).
    pub(crate) async fn send(&self, message: Result<T, Status>) -> bool {
        let last = message.is_err();
        match tokio::time::timeout(self.idle, self.tx.send(message)).await {
            Ok(Ok(())) => !last,
            Ok(Err(_)) => false,
            Err(_) => {
                self.stalled.store(true, Ordering::SeqCst);
                false
            }
        }
    }

    /// Waits, at most the idle limit as `send` does, for room for one message, and holds it:
    /// a long call judges its caller again once the client has made room, before the message
    /// goes in (`judge::Judge`). `None` when the stream is over.
    pub(crate) async fn reserve(&self) -> Option<Slot<'_, T>> {
        match tokio::time::timeout(self.idle, self.tx.reserve()).await {
            Ok(Ok(permit)) => Some(Slot(permit)),
            Ok(Err(_)) => None,
            Err(_) => {
                self.stalled.store(true, Ordering::SeqCst);
                None
            }
        }
    }

    /// `reserve` from a blocking thread.
    pub(crate) fn reserve_blocking(&self) -> Option<Slot<'_, T>> {
        // Not inside the runtime: there is no client to wait for.
        tokio::runtime::Handle::try_current()
            .ok()?
            .block_on(self.reserve())
    }

    /// Completes when the client has gone away.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }

    /// `send` from a blocking thread.
    pub(crate) fn send_blocking(&self, message: Result<T, Status>) -> bool {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.block_on(self.send(message)),
            // Not inside the runtime: there is no client to wait for.
            Err(_) => false,
        }
    }

    /// Sends `message` only when there is room (progress reports, which the next one replaces).
    /// False when the client went away.
    pub(crate) fn offer(&self, message: Result<T, Status>) -> bool {
        !matches!(
            self.tx.try_send(message),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_))
        )
    }
}

/// Room for one message of a server stream (`Sender::reserve`).
pub(crate) struct Slot<'a, T>(tokio::sync::mpsc::Permit<'a, Result<T, Status>>);

impl<T> Slot<'_, T> {
    /// Puts `message` in the room held. False when it was an error (the last message).
    pub(crate) fn send(self, message: Result<T, Status>) -> bool {
        let last = message.is_err();
        self.0.send(message);
        !last
    }
}

/// The receiving end: what tonic sends to the client.
struct Receiver<T> {
    rx: tokio::sync::mpsc::Receiver<Result<T, Status>>,
    stalled: Arc<AtomicBool>,
    idle: Duration,
    ended: bool,
}

impl<T> Stream for Receiver<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // A stream cut off because the client stopped reading ends with an error, never as if
        // it were complete; what was queued is not sent.
        if self.stalled.load(Ordering::SeqCst) {
            self.ended = true;
            return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                "the client stopped reading: nothing taken for {} s, so the stream was ended \
                 (`limits.stream_idle_secs`); request it again and read it as it comes",
                self.idle.as_secs()
            )))));
        }
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(total: usize, per: usize) -> Arc<Streams> {
        Arc::new(Streams::new(StreamLimits {
            idle: Duration::from_millis(50),
            max_exports: total,
            max_exports_per_caller: per,
            max_uploads: total,
            max_uploads_per_caller: per,
            max_downloads: total,
            max_downloads_per_caller: per,
            max_watches: total,
            max_watches_per_caller: per,
        }))
    }

    fn caller(name: &str) -> PrincipalId {
        PrincipalId::parse("caller", name).unwrap()
    }

    #[test]
    fn a_caller_at_its_cap_is_refused_naming_the_limit() {
        for kind in Long::ALL {
            let s = streams(10, 1);
            let held = s.admit(kind, &caller("a")).unwrap();
            let refused = s.admit(kind, &caller("a")).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
            let key = kind.caps(&s.limits).1.1;
            assert!(
                refused.message().contains(&format!("`limits.{key}`")),
                "{kind:?}: {}",
                refused.message()
            );
            assert!(s.admit(kind, &caller("b")).is_ok());
            drop(held);
            assert!(
                s.admit(kind, &caller("a")).is_ok(),
                "{kind:?}: a finished call gives its place back"
            );
        }
    }

    #[test]
    fn the_total_cap_holds_across_callers() {
        for kind in Long::ALL {
            let s = streams(1, 1);
            let _held = s.admit(kind, &caller("a")).unwrap();
            let refused = s.admit(kind, &caller("b")).unwrap_err();
            let key = kind.caps(&s.limits).0.1;
            assert!(refused.message().contains(&format!("`limits.{key}`")));
            assert!(refused.message().contains(kind.words().1));
        }
    }

    #[test]
    fn the_last_quarter_of_the_places_is_kept_for_callers_who_hold_none() {
        for kind in [Long::Export, Long::Upload, Long::Download] {
            // 8 in all, 4 per caller: two places kept for callers who hold none.
            let s = streams(8, 4);
            let mut held: Vec<Permit> = (0..4)
                .map(|_| s.admit(kind, &caller("a")).unwrap())
                .collect();
            held.push(s.admit(kind, &caller("b")).unwrap());
            held.push(s.admit(kind, &caller("b")).unwrap());
            // Six taken: b, who holds places, may not take the kept ones.
            let refused = s.admit(kind, &caller("b")).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
            assert!(
                refused.message().contains("kept for callers who have none")
                    && refused.message().contains(kind.caps(&s.limits).0.1),
                "{kind:?}: {}",
                refused.message()
            );
            // Callers with none take them, up to the cap in all.
            held.push(s.admit(kind, &caller("c")).unwrap());
            held.push(s.admit(kind, &caller("d")).unwrap());
            let refused = s.admit(kind, &caller("e")).unwrap_err();
            assert!(
                refused.message().contains("in all"),
                "{}",
                refused.message()
            );
            // A place given back below the reserve is anyone's again.
            held.truncate(5);
            assert!(s.admit(kind, &caller("b")).is_ok(), "{kind:?}");
        }
    }

    #[test]
    fn one_group_leaves_the_other_a_callers_share() {
        // 4 in all, 2 per caller: one group holds at most 2, whatever its number of callers.
        let s = streams(4, 2);
        let security = Some("security-officer");
        let a = s.admit_as(Long::Watch, &caller("a"), security).unwrap();
        let _b = s.admit_as(Long::Watch, &caller("b"), security).unwrap();
        let refused = s.admit_as(Long::Watch, &caller("c"), security).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("kept for the other role"),
            "{}",
            refused.message()
        );
        // The other group has its share.
        let privacy = Some("privacy-officer");
        let _p = s.admit_as(Long::Watch, &caller("p"), privacy).unwrap();
        let _q = s.admit_as(Long::Watch, &caller("p"), privacy).unwrap();
        // A place given back is the group's again.
        drop(a);
        let _c = s.admit_as(Long::Watch, &caller("c"), security).unwrap();
        // A cap in all no larger than one caller's share leaves each group that share.
        let s = streams(3, 2);
        let _a = s.admit_as(Long::Watch, &caller("a"), security).unwrap();
        let _b = s.admit_as(Long::Watch, &caller("b"), security).unwrap();
        assert!(s.admit_as(Long::Watch, &caller("c"), security).is_err());
        assert!(s.admit_as(Long::Watch, &caller("p"), privacy).is_ok());
    }

    #[test]
    fn each_kind_is_counted_apart_and_gives_its_places_back() {
        let s = streams(2, 1);
        let upload = s.admit(Long::Upload, &caller("a")).unwrap();
        // The same caller's export and download are counted apart from its upload.
        let export = s.admit(Long::Export, &caller("a")).unwrap();
        let download = s.admit(Long::Download, &caller("a")).unwrap();
        let watch = s.admit(Long::Watch, &caller("a")).unwrap();
        assert_eq!(s.totals(), [1, 1, 1, 1]);
        let _other = s.admit(Long::Upload, &caller("b")).unwrap();
        let refused = s.admit(Long::Upload, &caller("c")).unwrap_err();
        assert!(refused.message().contains("`limits.max_uploads`"));
        assert_eq!(s.totals(), [1, 2, 1, 1]);
        drop(upload);
        drop(export);
        drop(download);
        drop(watch);
        assert_eq!(s.totals(), [0, 1, 0, 0]);
        let _again = s.admit(Long::Upload, &caller("a")).unwrap();
    }

    #[tokio::test]
    async fn a_stream_nobody_reads_stops_its_producer_and_ends_with_an_error() {
        use tokio_stream::StreamExt;
        let s = streams(1, 1);
        let (tx, mut rx) = s.channel::<u32>(1);
        let producer = tokio::task::spawn_blocking(move || {
            let mut sent = 0;
            while tx.send_blocking(Ok(sent)) {
                sent += 1;
            }
            sent
        });
        let sent = tokio::time::timeout(Duration::from_secs(5), producer)
            .await
            .expect("the producer stops by itself")
            .unwrap();
        assert_eq!(sent, 1, "one message fits; the next waits, then gives up");
        let end = rx.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::DeadlineExceeded);
        assert!(end.message().contains("stopped reading"));
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn a_stream_that_is_read_is_complete() {
        use tokio_stream::StreamExt;
        let s = streams(1, 1);
        let (tx, rx) = s.channel::<u32>(1);
        tokio::task::spawn_blocking(move || {
            for i in 0..100 {
                assert!(tx.send_blocking(Ok(i)));
            }
        });
        let got: Vec<u32> = rx.map(Result::unwrap).collect().await;
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }
}
