//! Group commit for small writes: many callers' transactions share one SQLite commit (and so one
//! fsync), each inside its own savepoint so that one caller's failure undoes only its own work.
//!
//! The scheme is LevelDB's writer queue: a caller queues its job; when no batch is running it
//! becomes the leader, takes every queued job, runs them in one transaction on the writer
//! connection, commits, hands each caller its result and wakes them. Callers that queued while a
//! batch ran find their result when they wake, or lead the next batch.
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
    collections::HashMap,
    sync::{Condvar, Mutex, MutexGuard, PoisonError},
};

use rusqlite::Connection;

use super::{StoreError, db};

type Output = Box<dyn Any + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Result<Output, StoreError> + Send>;

/// The queue of one store's grouped writes.
#[derive(Default)]
pub(super) struct Group {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Default)]
struct State {
    next: u64,
    queue: Vec<(u64, Job)>,
    results: HashMap<u64, Result<Output, StoreError>>,
    leading: bool,
    /// Transactions committed (or tried), for tests.
    batches: u64,
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
        writer: &Mutex<Connection>,
        job: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let job: Job = Box::new(move |c| job(c).map(|t| Box::new(t) as Output));
        let mut state = self.lock();
        let id = state.next;
        state.next += 1;
        state.queue.push((id, job));
        loop {
            if let Some(result) = state.results.remove(&id) {
                return result.and_then(|out| {
                    out.downcast::<T>()
                        .map(|t| *t)
                        .map_err(|_| StoreError::Database("grouped write: wrong result".into()))
                });
            }
            if state.leading {
                state = self
                    .done
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.leading = true;
            let jobs = std::mem::take(&mut state.queue);
            state.batches += 1;
            drop(state);
            let ids: Vec<u64> = jobs.iter().map(|(id, _)| *id).collect();
            // Should the batch unwind, the guard still answers its callers and hands on the lead.
            let mut lead = Lead {
                group: self,
                ids,
                results: None,
            };
            lead.results = Some(batch(writer, jobs));
            drop(lead);
            state = self.lock();
        }
    }
}

/// The lead of one batch: when dropped, hands the batch's results to its callers (an error for
/// any without one), gives up the lead and wakes everyone waiting.
struct Lead<'a> {
    group: &'a Group,
    ids: Vec<u64>,
    results: Option<Vec<(u64, Result<Output, StoreError>)>>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut state = self.group.lock();
        state
            .results
            .extend(self.results.take().unwrap_or_default());
        for id in &self.ids {
            state.results.entry(*id).or_insert_with(|| {
                Err(StoreError::Database(
                    "the grouped write failed unexpectedly; nothing of it was stored".into(),
                ))
            });
        }
        state.leading = false;
        self.group.done.notify_all();
    }
}

/// Runs `jobs` in one transaction, each in a savepoint, and commits.
fn batch(
    writer: &Mutex<Connection>,
    jobs: Vec<(u64, Job)>,
) -> Vec<(u64, Result<Output, StoreError>)> {
    // Every caller of a failed batch gets the failure; a busy database stays `Unavailable` (try
    // again), anything else is a database error.
    let fail_all = |jobs: Vec<u64>, e: &StoreError| -> Vec<(u64, Result<Output, StoreError>)> {
        jobs.into_iter()
            .map(|id| {
                let e = match e {
                    StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
                    e => StoreError::Database(e.to_string()),
                };
                (id, Err(e))
            })
            .collect()
    };
    let ids: Vec<u64> = jobs.iter().map(|(id, _)| *id).collect();
    let Ok(mut conn) = writer.lock() else {
        return fail_all(ids, &StoreError::Database("writer lock poisoned".into()));
    };
    let mut tx = match conn.transaction().map_err(db) {
        Ok(tx) => tx,
        Err(e) => return fail_all(ids, &e),
    };
    let mut results = Vec::with_capacity(jobs.len());
    for (id, job) in jobs {
        let result = match tx.savepoint().map_err(db) {
            Ok(sp) => match job(&sp) {
                Ok(out) => sp.commit().map_err(db).map(|()| out),
                Err(e) => {
                    // Undo this job's work only (rollback to the savepoint, then release it). If
                    // that fails, its partial work would be committed with the others: fail all.
                    if let Err(undo) = sp.finish() {
                        return fail_all(ids, &db(undo));
                    }
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        // An error SQLite answers by rolling back the whole transaction (disk full, I/O) leaves
        // the connection in autocommit: later jobs would commit one by one. Fail the batch.
        if tx.is_autocommit() {
            return fail_all(
                ids,
                &StoreError::Database("the transaction was rolled back by SQLite".into()),
            );
        }
        results.push((id, result));
    }
    match tx.commit().map_err(db) {
        Ok(()) => results,
        Err(e) => fail_all(ids, &e),
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
                std::thread::spawn(move || group.run(&writer, insert(id)))
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
        assert!(group.lock().results.is_empty() && !group.lock().leading);
    }

    #[test]
    fn a_batch_that_unwinds_answers_its_callers_and_hands_on_the_lead() {
        let (group, writer) = (Arc::new(Group::default()), table());
        let crashing = {
            let (group, writer) = (Arc::clone(&group), Arc::clone(&writer));
            std::thread::spawn(move || {
                group.run(&writer, |_c| -> Result<(), StoreError> {
                    std::panic::resume_unwind(Box::new("a bug in a job"))
                })
            })
        };
        assert!(crashing.join().is_err());
        assert!(!group.lock().leading);
        // The writer mutex is poisoned by the unwind: later writes fail instead of hanging.
        assert!(group.run(&writer, insert(1)).is_err());
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
                        assert_eq!(group.run(&writer, insert(id)).unwrap(), id);
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
