//! Checkpoints off the writer's path. SQLite's automatic checkpoint runs inside the commit that
//! fills the write-ahead log past its mark: the thread that commits then copies a thousand pages
//! into the database file and waits for that file's fsync, and every caller of its group commit
//! waits with it (a fifth of the committing thread's time under many writers). Here the writer's
//! commit only notes how full each log is (`on_commit`), and a thread of the store's own
//! (`Checkpointer`) copies the log into the file on a connection of its own, beside the next
//! commits: WAL lets a passive checkpoint run while another connection writes.
//!
//! Invariant: commits do not take a log past `BACKSTOP` pages without a checkpoint: should the
//! checkpointer fall behind, or not run, the writer's commit checkpoints itself there, as
//! SQLite's own automatic checkpoint does at its mark (a long reader holds any checkpoint back,
//! as it held SQLite's own).
//! Invariant: checkpoints are passive: they wait for no reader and no writer, and what they
//! cannot copy yet is copied by a later one.
//!
//! The same thread keeps the trail's record of the store's mark (`super::record_mark`) up to
//! date when the writer rests. Every append records the mark the store's file had committed
//! before it, so after a write that no append followed, the trail is a write behind: an older
//! copy of `kluis.db` missing only that write would pass the check at start. Once no write has
//! moved the mark for `MARK_AFTER`, or when the store closes, the thread records it in a
//! transaction of the trail's own, on the writer.
//!
//! Invariant: the trail records only a mark the store's file has committed; a mark that moved
//! is recorded about `MARK_AFTER` after the writes stop (later when a checkpoint runs then, or
//! a second after a failed try) and at the store's close, unless the files are no longer the
//! ones the store opened or the thread could not start (which is logged).

use std::{
    cell::Cell,
    ffi::c_int,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, TryLockError, Weak,
        atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rusqlite::{Connection, hooks::Wal};

use super::{FileIds, SchemaCheck, Scope, StoreError};

/// Pages in a file's log past which a commit wakes the checkpointer: SQLite's own mark for its
/// automatic checkpoint.
const WAKE_AT: c_int = 1000;

/// Pages in a file's log past which the writer's commit checkpoints it itself (32 MiB of 4 KiB
/// pages): only when the checkpointer falls behind, or could not start.
const BACKSTOP: c_int = 8000;

/// How long the writer rests after a write that moved the store's mark before the trail records
/// the mark in a transaction of its own.
const MARK_AFTER: Duration = Duration::from_millis(50);

thread_local! {
    /// How many pages the logs of the trail's file (`main`) and the store's held after the last
    /// commit to each on this thread since `WriterGuard` last looked (0: none): SQLite calls the
    /// commit hook on the committing thread, with no state of the store's.
    static LOGGED: Cell<[c_int; 2]> = const { Cell::new([0; 2]) };

    /// What this thread's transactions on the writer did to the store's mark since
    /// `WriterGuard` last looked: moved it (`Some(true)`: the trail is behind until an append
    /// records it), recorded it in the trail with no move after (`Some(false)`), or neither.
    static MARKED: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Notes that a transaction on the writer moved the store's mark (`super::bump_mark`).
pub(super) fn note_moved() {
    MARKED.with(|m| m.set(Some(true)));
}

/// Notes that a transaction on the writer recorded the store's mark in the trail
/// (`super::record_mark`).
pub(super) fn note_recorded() {
    MARKED.with(|m| m.set(Some(false)));
}

/// The writer's commit hook: notes how full the log of the file just committed is, and
/// checkpoints it past `BACKSTOP`.
fn on_commit(wal: &Wal, pages: c_int) -> rusqlite::Result<()> {
    let file = usize::from(wal.name() != c"main");
    LOGGED.with(|logged| {
        let mut now = logged.get();
        if let Some(n) = now.get_mut(file) {
            *n = pages;
        }
        logged.set(now);
    });
    if pages >= BACKSTOP {
        // As SQLite's own automatic checkpoint: passive, and its failure is not the commit's
        // (which is done); the next commit past the mark tries again.
        match wal.checkpoint_v2(rusqlite::hooks::CheckpointMode::PASSIVE) {
            // The checkpointer holds the checkpoint lock: it is at it.
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {}
            Err(e) => tracing::warn!(error = %e, "the writer's backstop checkpoint failed"),
            Ok(_) => {}
        }
    }
    Ok(())
}

/// The store's writer connection, whose commits wake the checkpointer.
pub(super) struct Writer {
    /// Dropped first: its thread records the mark owed on the writer before it goes.
    checkpointer: Checkpointer,
    conn: Arc<Mutex<Connection>>,
    /// The store's file, and its files as the store opened them.
    path: PathBuf,
    opened: FileIds,
    /// How full each log was when its commit last woke the checkpointer (changed only by the
    /// holder of `conn`).
    woken_at: [AtomicI32; 2],
}

impl Writer {
    /// `conn` as the writer, with a checkpointer of its own for `path`'s files. Should the
    /// checkpointer's connection not open, the writer checkpoints its logs itself, as SQLite
    /// does by default.
    pub(super) fn new(
        conn: Connection,
        path: &Path,
        opened: FileIds,
        schema: Arc<SchemaCheck>,
    ) -> Self {
        let conn = Arc::new(Mutex::new(conn));
        let checkpointer = Checkpointer::start(path, opened, Arc::downgrade(&conn), schema);
        if checkpointer.running() {
            conn.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .wal_hook(Some(on_commit));
        }
        Self {
            checkpointer,
            conn,
            path: path.to_owned(),
            opened,
            woken_at: Default::default(),
        }
    }

    /// Waits for the writer, to write: refused once the store's or the trail's file is no
    /// longer the one the store opened (`FileIds`), checked under the lock, so that nothing is
    /// written, and no entry appended, to a file no longer in the data directory.
    pub(super) fn lock(&self) -> Result<WriterGuard<'_>, StoreError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| StoreError::Database("writer lock poisoned".into()))?;
        super::check_same_files(&self.path, self.opened)?;
        Ok(self.guard(conn))
    }

    /// The writer, when nobody holds it, to read (on the files it opened).
    pub(super) fn try_lock(&self) -> Option<WriterGuard<'_>> {
        match self.conn.try_lock() {
            Ok(conn) => Some(self.guard(conn)),
            Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => None,
        }
    }

    fn guard<'a>(&'a self, conn: MutexGuard<'a, Connection>) -> WriterGuard<'a> {
        // What earlier commits on this thread noted belongs to a writer that already looked.
        LOGGED.with(|logged| logged.set([0; 2]));
        MARKED.with(|m| m.set(None));
        WriterGuard { conn, writer: self }
    }

    /// Checkpoints made by the checkpointer, for tests.
    #[cfg(test)]
    pub(super) fn checkpoints(&self) -> u64 {
        self.checkpointer.shared.done()
    }

    /// Holds the checkpointer's work back (`true`) or lets it go on, for tests.
    #[cfg(test)]
    pub(super) fn hold_checkpoints(&self, held: bool) {
        *self
            .checkpointer
            .shared
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = held;
        if !held {
            self.checkpointer
                .shared
                .checkpoint_owed
                .store(true, Ordering::SeqCst);
            self.checkpointer.shared.wake.give(true);
        }
    }

    /// Whether a moved mark waits to be recorded in the trail, for tests.
    #[cfg(test)]
    pub(super) fn mark_owed(&self) -> bool {
        self.checkpointer.shared.mark_owed.load(Ordering::SeqCst)
    }
}

/// The writer held: when let go after commits that added `WAKE_AT` pages to a log since it last
/// woke the checkpointer (or since the log started again from its beginning), wakes it. Woken at
/// every commit past a mark instead, it would copy a few pages and sync the file each time.
pub(super) struct WriterGuard<'a> {
    conn: MutexGuard<'a, Connection>,
    writer: &'a Writer,
}

impl std::ops::Deref for WriterGuard<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        let logged = LOGGED.with(|logged| logged.replace([0; 2]));
        let mut wake = false;
        for (pages, woken_at) in logged.into_iter().zip(&self.writer.woken_at) {
            if pages == 0 {
                continue;
            }
            // A log shorter than at the last wake started again from its beginning.
            let since = woken_at.load(Ordering::Relaxed);
            let since = if pages < since { 0 } else { since };
            if pages - since >= WAKE_AT {
                woken_at.store(pages, Ordering::Relaxed);
                self.writer
                    .checkpointer
                    .shared
                    .checkpoint_owed
                    .store(true, Ordering::SeqCst);
                wake = true;
            } else {
                woken_at.store(since, Ordering::Relaxed);
            }
        }
        let shared = &self.writer.checkpointer.shared;
        match MARKED.with(Cell::take) {
            Some(true) => {
                shared.moved_at.store(shared.now(), Ordering::SeqCst);
                // The thread is told once, when the mark falls behind; while it times the
                // writer's rest, it reads when the mark last moved instead.
                if !shared.mark_owed.swap(true, Ordering::SeqCst)
                    && !shared.timing.load(Ordering::SeqCst)
                {
                    wake = true;
                }
            }
            Some(false) => shared.mark_owed.store(false, Ordering::SeqCst),
            None => {}
        }
        if wake {
            shared.wake.give(true);
        }
    }
}

/// The thread that checkpoints the store's two files when a commit wakes it, and stops with the
/// store.
struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// `true`: look at the flags below; `false`: stop.
    wake: crate::wait::Slot<bool>,
    /// A commit asked for a checkpoint.
    checkpoint_owed: AtomicBool,
    /// The store's mark moved since the trail last recorded it.
    mark_owed: AtomicBool,
    /// When it last moved, in nanoseconds from `started`.
    moved_at: AtomicU64,
    /// Whether the thread times the writer's rest (and reads `moved_at` when it ends).
    timing: AtomicBool,
    started: Instant,
    /// Checkpoints made, for tests.
    #[cfg(test)]
    done: std::sync::atomic::AtomicU64,
    /// Work held back, for tests.
    #[cfg(test)]
    held: Mutex<bool>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            wake: crate::wait::Slot::default(),
            checkpoint_owed: AtomicBool::new(false),
            mark_owed: AtomicBool::new(false),
            moved_at: AtomicU64::new(0),
            timing: AtomicBool::new(false),
            started: Instant::now(),
            #[cfg(test)]
            done: std::sync::atomic::AtomicU64::new(0),
            #[cfg(test)]
            held: Mutex::new(false),
        }
    }
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    #[cfg(test)]
    fn done(&self) -> u64 {
        self.done.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Checkpointer {
    /// Starts the thread on a connection of its own to `path`'s files; without it (the
    /// connection or thread cannot be made) nothing runs, and says so.
    fn start(
        path: &Path,
        opened: FileIds,
        writer: Weak<Mutex<Connection>>,
        schema: Arc<SchemaCheck>,
    ) -> Self {
        let shared = Arc::new(Shared::default());
        let thread = super::open_checked(path, opened).and_then(|conn| {
            let shared = Arc::clone(&shared);
            let keeper = Keeper {
                writer,
                path: path.to_owned(),
                opened,
                schema,
            };
            std::thread::Builder::new()
                .name("kluis-checkpoint".into())
                .spawn(move || run(&conn, &shared, &keeper))
                .map_err(|e| StoreError::Database(format!("no checkpoint thread: {e}")))
        });
        let thread = match thread {
            Ok(thread) => Some(thread),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "the store's checkpoints run on its writer: the checkpointer did not start"
                );
                None
            }
        };
        Self { shared, thread }
    }

    fn running(&self) -> bool {
        self.thread.is_some()
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.wake.give(false);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the checkpoint thread panicked");
        }
    }
}

/// What the thread needs to record the store's mark on the writer.
struct Keeper {
    writer: Weak<Mutex<Connection>>,
    path: PathBuf,
    opened: FileIds,
    /// Checked in the transaction, as every append checks it: a table of the trail's edited
    /// outside kluis is not written.
    schema: Arc<SchemaCheck>,
}

impl Keeper {
    /// Records the store's committed mark in the trail, in a transaction of its own on the
    /// writer (held meanwhile, so no write moves the mark). Nothing is written to files that
    /// are no longer the ones the store opened (the store fails every write then). Whether to
    /// try again later (a failure that may pass).
    fn record(&self, shared: &Shared) -> bool {
        static WARNED: AtomicBool = AtomicBool::new(false);
        let Some(writer) = self.writer.upgrade() else {
            return false;
        };
        let conn = writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if super::check_same_files(&self.path, self.opened).is_err() {
            shared.mark_owed.store(false, Ordering::SeqCst);
            return false;
        }
        let recorded = conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(super::db)
            .and_then(|()| self.schema.check(&conn, Scope::Trail))
            .and_then(|()| {
                if super::record_mark(&conn) {
                    conn.execute_batch("COMMIT").map_err(super::db)
                } else {
                    Err(StoreError::Database("the mark was not recorded".into()))
                }
            });
        match recorded {
            Ok(()) => {
                shared.mark_owed.store(false, Ordering::SeqCst);
                false
            }
            Err(e) => {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "the trail could not record the store's mark; tried again each second, \
                         and by the next append"
                    );
                }
                true
            }
        }
    }
}

/// How long the thread waits after a failed try to record the mark.
const MARK_RETRY: Duration = Duration::from_secs(1);

/// The thread's loop: a passive checkpoint of both files when a commit asks for one, and the
/// store's mark recorded once the writer has rested `MARK_AFTER` after moving it.
fn run(conn: &Connection, shared: &Shared, keeper: &Keeper) {
    let mut rest = None;
    loop {
        let woke = match rest {
            Some(rest) => shared.wake.wait_timeout(rest),
            None => Some(shared.wake.wait()),
        };
        if woke == Some(false) {
            // The store closes: what the last writes owe is recorded now.
            if shared.mark_owed.load(Ordering::SeqCst) {
                keeper.record(shared);
            }
            return;
        }
        if shared.checkpoint_owed.swap(false, Ordering::SeqCst) {
            checkpoint(conn, shared);
        }
        // Timed from the mark's last move: recorded once it is `MARK_AFTER` behind.
        let owed = shared.mark_owed.load(Ordering::SeqCst);
        let rested = Duration::from_nanos(
            shared
                .now()
                .saturating_sub(shared.moved_at.load(Ordering::SeqCst)),
        );
        let mut left = MARK_AFTER.saturating_sub(rested);
        if owed && left.is_zero() {
            left = if keeper.record(shared) {
                MARK_RETRY
            } else {
                MARK_AFTER
            };
        }
        // Against the writer's guard (`WriterGuard::drop`: the flag set, then `timing` read):
        // `timing` is cleared before the flag is read again, so a move made meanwhile either
        // finds the thread timing or wakes it.
        let timing = shared.mark_owed.load(Ordering::SeqCst) || {
            shared.timing.store(false, Ordering::SeqCst);
            shared.mark_owed.load(Ordering::SeqCst)
        };
        shared.timing.store(timing, Ordering::SeqCst);
        rest = timing.then_some(left);
    }
}

/// A passive checkpoint of both files.
fn checkpoint(conn: &Connection, shared: &Shared) {
    #[cfg(test)]
    if *shared
        .held
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        return;
    }
    #[cfg(not(test))]
    let _ = shared;
    for file in ["main", "store"] {
        let outcome = conn.query_row(&format!("PRAGMA {file}.wal_checkpoint(PASSIVE)"), [], |r| {
            r.get::<_, i64>(0)
        });
        if let Err(e) = outcome {
            tracing::warn!(error = %e, file, "checkpoint failed; the next one tries again");
        }
    }
    #[cfg(test)]
    shared
        .done
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{super::SqliteStore, *};

    /// Commits `pages` pages of new rows to the store's file on the writer, as one commit.
    fn fill(store: &SqliteStore, pages: usize) {
        let writer = store.writer.lock().unwrap();
        let mut insert = writer
            .prepare("INSERT INTO store.scratch (b) VALUES (randomblob(3500))")
            .unwrap();
        writer.execute_batch("BEGIN").unwrap();
        for _ in 0..pages {
            insert.execute([]).unwrap();
        }
        writer.execute_batch("COMMIT").unwrap();
    }

    /// A store with a table of its own to fill (made beside kluis, which makes no tables).
    fn store(dir: &tempfile::TempDir) -> (std::path::PathBuf, SqliteStore) {
        let path = dir.path().join("kluis.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE scratch (b BLOB)")
            .unwrap();
        let store = SqliteStore::open(&path).unwrap();
        (path, store)
    }

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    fn waited_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A commit that fills the log past the mark leaves the copy into the file to the
    /// checkpointer: the file has not grown when the commit returns, and grows once the
    /// checkpointer runs; what was written reads the same from the file.
    #[test]
    fn a_full_log_is_moved_into_the_file_by_the_checkpointer_not_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = store(&dir);
        store.writer.hold_checkpoints(true);
        let before = size(&path);
        let wal = path.with_extension("db-wal");
        fill(&store, 1500);
        assert!(size(&wal) > 1000 * 4096, "the log holds the commit");
        assert_eq!(
            size(&path),
            before,
            "the commit checkpointed the file itself"
        );
        // A reader in a snapshot of it keeps the log from starting again after the checkpoint.
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM scratch", [], |r| r.get(0))
            .unwrap();
        let done = store.writer.checkpoints();
        store.writer.hold_checkpoints(false);
        waited_for("the checkpoint", || store.writer.checkpoints() > done);
        assert!(
            size(&path) > before + 1000 * 4096,
            "the checkpointer moved the log"
        );
        // Twin: commits adding fewer pages than the mark do not wake it, though the log holds
        // more than the mark (each would, woken by how full the log is); once they add up to
        // it, it is woken again.
        let done = store.writer.checkpoints();
        for _ in 0..5 {
            fill(&store, 150);
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(store.writer.checkpoints(), done, "woken before the mark");
        assert!(size(&wal) > 2000 * 4096, "the log started again");
        fill(&store, 300);
        waited_for("the second checkpoint", || {
            store.writer.checkpoints() > done
        });
        let rows: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM scratch", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2550);
    }

    /// Should the checkpointer not keep up, the writer's commit checkpoints a log past the
    /// backstop itself: the log does not grow without bound.
    #[test]
    fn a_log_past_the_backstop_is_checkpointed_by_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = store(&dir);
        store.writer.hold_checkpoints(true);
        let before = size(&path);
        fill(&store, 4000);
        assert_eq!(size(&path), before, "checkpointed below the backstop");
        fill(&store, 4500);
        assert!(
            size(&path) > before + 8000 * 4096,
            "the commit past the backstop did not checkpoint"
        );
        assert_eq!(store.writer.checkpoints(), 0);
    }
}
