//! Reads of one kind that arrive while others of that kind run, taken together in one
//! statement: what a group commit does for the trail's appends, done for `GetRecord`'s record
//! and facts. Under many readers PostgreSQL spends a large part of each statement on starting
//! it (the protocol's round trip, the executor's start for a plan of several branches), so one
//! statement for many reads costs it a fraction of as many statements.
//!
//! At most `LEADERS` statements of a group run at a time. A read that finds fewer running leads
//! one at once, with itself and whatever is queued (a lone read waits for no one); otherwise it
//! queues. A leader that is done answers each read of its statement and hands the lead, with
//! the reads queued behind it (up to `MOST` in all), to the first read queued, or gives up its
//! place when none is.
//!
//! A statement that fails (the database) fails every read of it; a row that cannot be read
//! fails only the read it answers, so that a row edited by hand does not fail the reads of
//! other records that happened to share its statement.
//!
//! Invariant: every read queued is answered or led exactly once, also when a leader unwinds
//! (`Lead`'s `Drop` answers what it holds and passes the lead on).

use std::sync::{Arc, Mutex, PoisonError};

use crate::store::StoreError;
use crate::wait::Slot;

/// What a read queued is given: its answer, or the lead with the reads queued behind it.
enum Turn<T> {
    Done(Answer<T>),
    Lead(Vec<Queued<T>>),
}

/// The answer to one read: its row, none, or why its rows could not be read.
pub(super) type Answer<T> = Result<Option<T>, StoreError>;

/// What runs one statement: the answers to its keys, in their order; an error when the
/// statement itself failed.
type Run<'r, T> = &'r dyn Fn(&[&str]) -> Result<Vec<Answer<T>>, StoreError>;

/// A read waiting in the queue.
struct Queued<T> {
    key: String,
    slot: Arc<Slot<Turn<T>>>,
}

struct State<T> {
    /// Statements running.
    leading: usize,
    queued: Vec<Queued<T>>,
}

/// A group of reads of one kind (see the module's documentation).
pub(super) struct ReadGroup<T> {
    state: Mutex<State<T>>,
}

/// How many statements of a group run at a time: enough to keep the server's cores busy while
/// a leader carries its answers back, few enough that reads gather behind them.
const LEADERS: usize = 2;

/// The most reads one statement takes.
const MOST: usize = 64;

impl<T> Default for ReadGroup<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                leading: 0,
                queued: Vec::new(),
            }),
        }
    }
}

impl<T> ReadGroup<T> {
    /// Reads `key`, alone or with the reads that arrive meanwhile: `run` is given the keys of
    /// one statement (the leader's first, a key as often as it was asked) and answers each, in
    /// their order. A read queued blocks its thread until it is answered or leads.
    pub(super) fn read(
        &self,
        key: &str,
        run: impl Fn(&[&str]) -> Result<Vec<Answer<T>>, StoreError>,
    ) -> Answer<T> {
        let mut state = self.lock();
        let behind = if state.leading < LEADERS {
            state.leading += 1;
            let n = state.queued.len().min(MOST - 1);
            let behind = state.queued.drain(..n).collect();
            drop(state);
            behind
        } else {
            let slot = Arc::new(Slot::default());
            state.queued.push(Queued {
                key: key.to_owned(),
                slot: Arc::clone(&slot),
            });
            drop(state);
            match super::blocking(|| slot.wait()) {
                Turn::Done(answer) => return answer,
                Turn::Lead(behind) => behind,
            }
        };
        let mut lead = Lead {
            group: self,
            behind,
        };
        lead.run(key, &run)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A statement led: the reads it answers besides the leader's own.
struct Lead<'g, T> {
    group: &'g ReadGroup<T>,
    behind: Vec<Queued<T>>,
}

impl<T> Lead<'_, T> {
    fn run(&mut self, own: &str, run: Run<'_, T>) -> Answer<T> {
        let mut keys = Vec::with_capacity(self.behind.len() + 1);
        keys.push(own);
        keys.extend(self.behind.iter().map(|q| q.key.as_str()));
        match run(&keys) {
            Ok(answers) if answers.len() == keys.len() => {
                let mut answers = answers.into_iter();
                let mine = answers.next().unwrap_or(Ok(None));
                for (queued, answer) in std::mem::take(&mut self.behind).into_iter().zip(answers) {
                    queued.slot.give(Turn::Done(answer));
                }
                mine
            }
            Ok(answers) => {
                let e = StoreError::Database(format!(
                    "{} answers to a statement of {} reads",
                    answers.len(),
                    keys.len()
                ));
                self.fail(&e);
                Err(e)
            }
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    /// Answers every read behind the leader with `e`.
    fn fail(&mut self, e: &StoreError) {
        for queued in std::mem::take(&mut self.behind) {
            queued.slot.give(Turn::Done(Err(e.clone())));
        }
    }
}

impl<T> Drop for Lead<'_, T> {
    fn drop(&mut self) {
        // Answered already, unless the leader unwound.
        if !self.behind.is_empty() {
            self.fail(&StoreError::Database(
                "a read of the same statement failed".into(),
            ));
        }
        let mut state = self.group.lock();
        if state.queued.is_empty() {
            state.leading -= 1;
            return;
        }
        let n = state.queued.len().min(MOST);
        let mut next: Vec<Queued<T>> = state.queued.drain(..n).collect();
        drop(state);
        let first = next.remove(0);
        first.slot.give(Turn::Lead(next));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// A statement that answers each key with its length times ten, after a pause, counting
    /// the statements running at once and the keys of each.
    struct Statement {
        running: AtomicUsize,
        most_at_once: AtomicUsize,
        batches: Mutex<Vec<usize>>,
    }

    impl Statement {
        fn new() -> Self {
            Self {
                running: AtomicUsize::new(0),
                most_at_once: AtomicUsize::new(0),
                batches: Mutex::new(Vec::new()),
            }
        }

        fn run(&self, keys: &[&str]) -> Result<Vec<Answer<usize>>, StoreError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            self.batches.lock().unwrap().push(keys.len());
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(keys
                .iter()
                .map(|k| match k.chars().next() {
                    Some('!') => Err(StoreError::Corrupt(format!("the row of {k}"))),
                    _ => Ok((!k.starts_with('-')).then_some(k.len() * 10)),
                })
                .collect())
        }
    }

    #[test]
    fn reads_at_once_share_statements_and_each_gets_its_own_answer() {
        let group = ReadGroup::default();
        let statement = Statement::new();
        std::thread::scope(|s| {
            for t in 0..12 {
                let (group, statement) = (&group, &statement);
                s.spawn(move || {
                    for i in 0..40 {
                        // Keys of different lengths, some asked by several at once, some
                        // without an answer, and some whose rows cannot be read: those fail
                        // alone.
                        let key = match (t + i) % 5 {
                            0 => "-".repeat(1 + i % 3),
                            1 => "!".repeat(1 + i % 2),
                            n => "k".repeat(n + t),
                        };
                        let read = group.read(&key, |k| statement.run(k));
                        if key.starts_with('!') {
                            let e = read.unwrap_err();
                            assert_eq!(
                                e.to_string(),
                                format!("corrupt stored value in the row of {key}")
                            );
                        } else {
                            let want = (!key.starts_with('-')).then_some(key.len() * 10);
                            assert_eq!(read.unwrap(), want);
                        }
                    }
                });
            }
        });
        let batches = statement.batches.lock().unwrap();
        assert_eq!(batches.iter().sum::<usize>(), 12 * 40);
        assert!(batches.iter().any(|&n| n > 1), "no read shared a statement");
        assert!(batches.iter().all(|&n| n <= MOST));
        assert!(statement.most_at_once.load(Ordering::SeqCst) <= LEADERS);
        assert_eq!(group.lock().leading, 0);
        assert!(group.lock().queued.is_empty());
    }

    #[test]
    fn a_lone_read_runs_at_once_alone() {
        let group = ReadGroup::default();
        let statement = Statement::new();
        assert_eq!(group.read("abc", |k| statement.run(k)).unwrap(), Some(30));
        assert_eq!(group.read("-", |k| statement.run(k)).unwrap(), None);
        assert_eq!(*statement.batches.lock().unwrap(), [1, 1]);
        assert_eq!(group.lock().leading, 0);
    }

    /// A statement that fails, or a leader that unwinds, answers every read of it with an
    /// error, and the group goes on.
    #[test]
    fn a_failed_statement_fails_its_reads_and_the_next_ones_go_on() {
        for unwind in [false, true] {
            let group = ReadGroup::default();
            let failed = AtomicUsize::new(0);
            let statements = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    let (group, failed, statements) = (&group, &failed, &statements);
                    s.spawn(move || {
                        for _ in 0..20 {
                            let read =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    group.read("key", |keys| {
                                        std::thread::sleep(Duration::from_millis(1));
                                        // Every third statement fails.
                                        if statements.fetch_add(1, Ordering::SeqCst) % 3 == 1 {
                                            if unwind {
                                                panic!("a leader unwinds");
                                            }
                                            return Err(StoreError::Unavailable("gone".into()));
                                        }
                                        Ok(keys.iter().map(|k| Ok(Some(k.len()))).collect())
                                    })
                                }));
                            match read {
                                Ok(Ok(answer)) => assert_eq!(answer, Some(3)),
                                Ok(Err(e)) => {
                                    assert!(
                                        matches!(e, StoreError::Unavailable(_))
                                            || (unwind && matches!(e, StoreError::Database(_))),
                                        "{e}"
                                    );
                                    failed.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(_) => {
                                    assert!(unwind);
                                    failed.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        }
                    });
                }
            });
            assert!(failed.load(Ordering::SeqCst) > 0);
            assert_eq!(group.lock().leading, 0, "unwind: {unwind}");
            assert!(group.lock().queued.is_empty());
            let lengths = |keys: &[&str]| Ok(keys.iter().map(|k| Ok(Some(k.len()))).collect());
            assert_eq!(group.read("ab", lengths).unwrap(), Some(2));
        }
    }

    #[test]
    fn a_statement_that_answers_too_few_fails_its_reads() {
        let group: ReadGroup<usize> = ReadGroup::default();
        let e = group.read("k", |_| Ok(Vec::new())).unwrap_err();
        assert!(
            e.to_string()
                .contains("0 answers to a statement of 1 reads"),
            "{e}"
        );
        assert_eq!(group.lock().leading, 0);
    }
}
