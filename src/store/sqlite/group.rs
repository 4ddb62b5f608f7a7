//! Group commit for small writes: many callers' transactions share one SQLite commit (and so one
//! fsync), each inside its own savepoint so that one caller's failure undoes only its own work.
//!
//! The scheme is LevelDB's writer queue: a caller queues its job; when no batch is running it
//! becomes the leader, takes every queued job, runs them in one transaction on the writer
//! connection, commits, and hands each caller its result, waking only that caller
//! (`crate::wait::Slot`). Then it hands the lead to the first caller that queued meanwhile.
//!
//! Invariant: a caller gets `Ok` only after the transaction holding its work has committed; if
//! the commit fails, every caller of the batch gets the error and nothing of the batch is kept.
//! Invariant: one job's error rolls back its savepoint only; the others still commit. If that
//! rollback fails, or SQLite rolled back the whole transaction, the whole batch fails.
//! Invariant: never called while the caller holds the writer connection (a leader would wait for
//! it for ever): store code that runs callbacks inside its own write transaction (a rekey's
//! reseal) must not let them write through the group.

use std::{
    any::Any,
    collections::VecDeque,
    ops::DerefMut,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use rusqlite::Connection;

use super::{StoreError, db};

type Output = Box<dyn Any + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Result<Output, StoreError> + Send>;

/// A writer connection behind a lock: the store's (`checkpoint::Writer`), or a bare one.
pub(super) trait WriterLock: Sync {
    /// Waits for the connection.
    fn lock_writer(&self) -> Result<impl DerefMut<Target = Connection> + '_, StoreError>;
}

impl WriterLock for Mutex<Connection> {
    fn lock_writer(&self) -> Result<impl DerefMut<Target = Connection> + '_, StoreError> {
        self.lock()
            .map_err(|_| StoreError::Database("writer lock poisoned".into()))
    }
}

impl WriterLock for super::checkpoint::Writer {
    fn lock_writer(&self) -> Result<impl DerefMut<Target = Connection> + '_, StoreError> {
        self.lock()
    }
}

/// The queue of one store's grouped writes.
#[derive(Default)]
pub(super) struct Group {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The jobs waiting for a batch to take them, each with where its caller waits.
    queue: VecDeque<(Job, Arc<Waiter>)>,
    /// Whether a caller leads: runs a batch or is about to.
    leading: bool,
    /// Transactions committed (or tried), for tests.
    batches: u64,
}

/// Where a caller waits (`crate::wait`): woken only with its own result, or to lead.
type Waiter = crate::wait::Slot<Wake>;

enum Wake {
    /// The job's result, once the transaction holding it committed (or failed).
    Done(Result<Output, StoreError>),
    /// Lead the next batch (the job is still queued).
    Lead,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").finish_non_exhaustive()
    }
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `job` in a transaction shared with other callers' jobs and returns its result once
    /// that transaction has committed. A leader runs the batch on `writer`.
    pub(super) fn run<T: Send + 'static>(
        &self,
        writer: &impl WriterLock,
        job: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let job: Job = Box::new(move |c| job(c).map(|t| Box::new(t) as Output));
        let own = Arc::new(Waiter::default());
        let result = 'led: {
            {
                let mut state = self.lock();
                state.queue.push_back((job, Arc::clone(&own)));
                if state.leading {
                    drop(state);
                    match own.wait() {
                        Wake::Done(result) => break 'led result,
                        Wake::Lead => {}
                    }
                } else {
                    state.leading = true;
                }
            }
            // Leading: a batch takes everything queued, this caller's job with it.
            loop {
                let jobs: Vec<(Job, Arc<Waiter>)> = {
                    let mut state = self.lock();
                    state.batches += 1;
                    state.queue.drain(..).collect()
                };
                let (jobs, waiters): (Vec<Job>, Vec<Arc<Waiter>>) = jobs.into_iter().unzip();
                // Should the batch unwind, the guard still answers its callers and hands on
                // the lead.
                let mut lead = Lead {
                    group: self,
                    own: &own,
                    waiters,
                    results: None,
                };
                lead.results = Some(batch(writer, jobs));
                drop(lead);
                if let Some(Wake::Done(result)) = own.take_if(|w| matches!(w, Wake::Done(_))) {
                    let mut state = self.lock();
                    self.pass_lead(&mut state);
                    break 'led result;
                }
            }
        };
        result.and_then(|out| {
            out.downcast::<T>()
                .map(|t| *t)
                .map_err(|_| StoreError::Database("grouped write: wrong result".into()))
        })
    }

    /// Gives the lead to the first caller queued, or gives it up when nobody is.
    fn pass_lead(&self, state: &mut State) {
        match state.queue.front() {
            Some((_, next)) => next.give(Wake::Lead),
            None => state.leading = false,
        }
    }
}

/// The lead of one batch: when dropped, hands each of the batch's callers its result (an error
/// for any without one); in an unwind it also passes the lead on, as its caller will not.
struct Lead<'a> {
    group: &'a Group,
    own: &'a Arc<Waiter>,
    waiters: Vec<Arc<Waiter>>,
    results: Option<Vec<Result<Output, StoreError>>>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut results = self.results.take().unwrap_or_default().into_iter();
        for waiter in &self.waiters {
            let result = results.next().unwrap_or_else(|| {
                Err(StoreError::Database(
                    "the grouped write failed unexpectedly; nothing of it was stored".into(),
                ))
            });
            waiter.give(Wake::Done(result));
        }
        if std::thread::panicking() {
            let mut state = self.group.lock();
            state.queue.retain(|(_, w)| !Arc::ptr_eq(w, self.own));
            self.group.pass_lead(&mut state);
        }
    }
}

/// Runs `jobs` in one transaction, each in a savepoint, and commits.
fn batch(writer: &impl WriterLock, jobs: Vec<Job>) -> Vec<Result<Output, StoreError>> {
    // Every caller of a failed batch gets the failure; a busy database stays `Unavailable` (try
    // again), a store found not as kluis wrote it `Corrupt`, anything else is a database error.
    let fail_all = |n: usize, e: &StoreError| -> Vec<Result<Output, StoreError>> {
        (0..n)
            .map(|_| {
                Err(match e {
                    StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
                    StoreError::Corrupt(why) => StoreError::Corrupt(why.clone()),
                    e => StoreError::Database(e.to_string()),
                })
            })
            .collect()
    };
    let n = jobs.len();
    let mut conn = match writer.lock_writer() {
        Ok(conn) => conn,
        Err(e) => return fail_all(n, &e),
    };
    let tx = match conn.transaction().map_err(db) {
        Ok(tx) => tx,
        Err(e) => return fail_all(n, &e),
    };
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        // Undo a failed job's work only (rollback to its savepoint, then release it). If the
        // savepoint itself fails, its partial work could be committed with the others: fail all.
        let result = match super::in_savepoint(&tx, job) {
            Ok(result) => result,
            Err(e) => return fail_all(n, &e),
        };
        // An error SQLite answers by rolling back the whole transaction (disk full, I/O) leaves
        // the connection in autocommit: later jobs would commit one by one. Fail the batch.
        if tx.is_autocommit() {
            return fail_all(
                n,
                &StoreError::Database("the transaction was rolled back by SQLite".into()),
            );
        }
        results.push(result);
    }
    match tx.commit().map_err(db) {
        Ok(()) => results,
        Err(e) => fail_all(n, &e),
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    fn table() -> Arc<Mutex<Connection>> {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .unwrap();
        Arc::new(Mutex::new(c))
    }

    fn insert(id: i64) -> impl FnOnce(&Connection) -> Result<i64, StoreError> + Send + 'static {
        move |c| {
            c.execute("INSERT INTO t (id) VALUES (?1)", [id])
                .map_err(|_| StoreError::Exists(format!("row {id}")))?;
            Ok(id)
        }
    }

    fn count(writer: &Mutex<Connection>) -> i64 {
        writer
            .lock()
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn callers_writing_together_share_a_commit_and_a_failure_stays_their_own() {
        let (group, writer) = (Arc::new(Group::default()), table());
        // Hold the writer so that the first caller's batch waits and the others queue behind it.
        let held = writer.lock().unwrap();
        let callers: Vec<_> = (0..8i64)
            .map(|i| {
                let (group, writer) = (Arc::clone(&group), Arc::clone(&writer));
                // Caller 5 inserts the row caller 4 inserts: one of the two must fail alone.
                let id = if i == 5 { 4 } else { i };
                std::thread::spawn(move || group.run(&*writer, insert(id)))
            })
            .collect();
        while group.lock().queue.len() < 7 {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(held);
        let results: Vec<_> = callers.into_iter().map(|c| c.join().unwrap()).collect();
        let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
        assert_eq!(failed.len(), 1, "{results:?}");
        assert!(matches!(failed[0], Err(StoreError::Exists(_))));
        assert_eq!(count(&writer), 7);
        // The first caller alone, then the seven that queued behind it together.
        assert_eq!(group.lock().batches, 2);
        assert!(group.lock().queue.is_empty() && !group.lock().leading);
    }

    #[test]
    fn a_batch_that_unwinds_answers_its_callers_and_hands_on_the_lead() {
        let (group, writer) = (Arc::new(Group::default()), table());
        let crashing = {
            let (group, writer) = (Arc::clone(&group), Arc::clone(&writer));
            std::thread::spawn(move || {
                group.run(&*writer, |_c| -> Result<(), StoreError> {
                    std::panic::resume_unwind(Box::new("a bug in a job"))
                })
            })
        };
        assert!(crashing.join().is_err());
        assert!(!group.lock().leading);
        // The writer mutex is poisoned by the unwind: later writes fail instead of hanging.
        assert!(group.run(&*writer, insert(1)).is_err());
    }

    #[test]
    fn every_caller_gets_its_own_result() {
        let (group, writer) = (Arc::new(Group::default()), table());
        let callers: Vec<_> = (0..16i64)
            .map(|t| {
                let (group, writer) = (Arc::clone(&group), Arc::clone(&writer));
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let id = t * 1000 + i;
                        assert_eq!(group.run(&*writer, insert(id)).unwrap(), id);
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
        assert_eq!(count(&writer), 800);
        assert!(group.lock().batches <= 800);
    }
}
