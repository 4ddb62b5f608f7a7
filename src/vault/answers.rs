//! What a read may take of the node's memory while it is being answered.
//!
//! A read of a record decrypts its values and builds an answer of about the same size; with
//! many of them at once, of large records, the node would hold several times those bytes before
//! any limit on responses sees them (`server::metered` counts an answer only once it is built).
//! So a read, once the policy has allowed it, takes a place for the bytes it will open, per
//! caller and in all, and is refused at once (`RESOURCE_EXHAUSTED`, naming the limit) when there
//! is none: nothing registered, opened or put on the trail. Taken after the decision, a refusal
//! tells nothing of what the caller may not read. The place goes with the answer to the
//! response (`api`, on the response's extensions) and is let go when the response's last piece
//! has been handed to HTTP/2, or the response is dropped (`server::metered`): answers waiting
//! for clients that do not read keep their places, so further reads are refused before they
//! open anything, not built and then thrown away. (What a read loads before its decision is
//! bounded by the calls running at once, `Limits::max_calls_running`, each at most
//! `Limits::max_record_bytes`.)
//!
//! The last quarter of the bytes in all is kept for callers who hold none: callers at their
//! own limit, however many, fill three quarters at most.
//!
//! Invariant: the bytes held are the sums of the live `AnswerHold`s (a hold and its clones
//! count once), per caller and in all, and neither passes its limit (`Limits::answer_bytes`,
//! `Limits::answer_bytes_per_caller`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::VaultError;

/// The places of the answers being made, per caller and in all.
#[derive(Debug)]
pub(crate) struct Answers {
    per_caller: usize,
    total: usize,
    held: Arc<Mutex<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    per_caller: HashMap<String, usize>,
}

/// A place for the bytes of one answer; let go when the hold and all its clones are dropped
/// (a clone travels with the response, see the module).
#[derive(Clone, Debug)]
pub struct AnswerHold {
    _place: Arc<Place>,
}

#[derive(Debug)]
struct Place {
    caller: String,
    bytes: usize,
    held: Arc<Mutex<Held>>,
}

impl Answers {
    /// Places for `per_caller` bytes per caller and `total` in all.
    pub(crate) fn new(per_caller: usize, total: usize) -> Self {
        Self {
            per_caller,
            total,
            held: Arc::default(),
        }
    }

    /// A place for `bytes` of `caller`'s answer, or `Exhausted` naming the limit it would pass.
    pub(crate) fn hold(&self, caller: &str, bytes: usize) -> Result<AnswerHold, VaultError> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mine = held.per_caller.get(caller).copied().unwrap_or(0);
        if mine.saturating_add(bytes) > self.per_caller {
            return Err(VaultError::Exhausted(format!(
                "your reads being answered already hold {mine} bytes and this one needs {bytes} \
                 (`limits.answer_bytes_per_caller` = {}); read fewer large records at once, or \
                 name the fields you need",
                self.per_caller
            )));
        }
        if held.total.saturating_add(bytes) > self.total {
            return Err(VaultError::Exhausted(format!(
                "the reads being answered hold {} bytes and this one needs {bytes} \
                 (`limits.answer_bytes` = {}); retry shortly",
                held.total, self.total
            )));
        }
        // The last quarter is kept for callers who hold none, so that callers at their own
        // share cannot fill it all (as `api::stream` keeps the last places of each cap).
        let reserve = self.total / 4;
        if mine > 0 && held.total.saturating_add(bytes) > self.total - reserve {
            return Err(VaultError::Exhausted(format!(
                "the reads being answered hold {} bytes, and the last {reserve} of \
                 `limits.answer_bytes` = {} are kept for callers with no read being answered; \
                 read the answers you asked for, then retry",
                held.total, self.total
            )));
        }
        held.total += bytes;
        *held.per_caller.entry(caller.to_owned()).or_insert(0) += bytes;
        Ok(AnswerHold {
            _place: Arc::new(Place {
                caller: caller.to_owned(),
                bytes,
                held: Arc::clone(&self.held),
            }),
        })
    }

    /// Bytes held in all.
    #[cfg(test)]
    pub(crate) fn total_held(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.total = held.total.saturating_sub(self.bytes);
        if let Some(mine) = held.per_caller.get_mut(&self.caller) {
            *mine = mine.saturating_sub(self.bytes);
            if *mine == 0 {
                held.per_caller.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(r: Result<AnswerHold, VaultError>) -> String {
        match r {
            Err(VaultError::Exhausted(m)) => m,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_caller_holds_at_most_its_share_and_all_callers_at_most_the_total() {
        let answers = Answers::new(100, 150);
        let a = answers.hold("alice", 60).unwrap();
        // Alice's share is 100: 60 + 50 would pass it.
        let m = refusal(answers.hold("alice", 50));
        assert!(m.contains("`limits.answer_bytes_per_caller` = 100"), "{m}");
        // Bob has a share of his own, but the total is 150.
        let b = answers.hold("bob", 80).unwrap();
        let m = refusal(answers.hold("carol", 20));
        assert!(m.contains("`limits.answer_bytes` = 150"), "{m}");
        assert_eq!(answers.total_held(), 140);
        // A refusal held nothing; dropping a place lets go of exactly its bytes.
        drop(a);
        assert_eq!(answers.total_held(), 80);
        let _c = answers.hold("alice", 70).unwrap();
        drop(b);
        assert_eq!(answers.total_held(), 70);
    }

    #[test]
    fn the_last_quarter_is_kept_for_callers_with_nothing_held() {
        // 200 in all, 100 per caller: 50 kept for callers with no read being answered.
        let answers = Answers::new(100, 200);
        let _a = answers.hold("alice", 90).unwrap();
        let _a2 = answers.hold("alice", 10).unwrap();
        let _b = answers.hold("bob", 50).unwrap();
        // Bob holds bytes already: the last 50 are not his to take.
        let m = refusal(answers.hold("bob", 10));
        assert!(m.contains("kept for callers with no read"), "{m}");
        assert!(m.contains("`limits.answer_bytes` = 200"), "{m}");
        // Carol holds none: she takes them, up to the total.
        let _c = answers.hold("carol", 40).unwrap();
        let m = refusal(answers.hold("dave", 20));
        assert!(m.contains("retry shortly"), "{m}");
        assert_eq!(answers.total_held(), 190);
    }

    #[test]
    fn a_hold_and_its_clone_count_once_and_go_with_the_last() {
        let answers = Answers::new(100, 150);
        let a = answers.hold("alice", 60).unwrap();
        let travelling = a.clone();
        assert_eq!(answers.total_held(), 60);
        drop(a);
        // The clone on the response still holds the place.
        assert_eq!(answers.total_held(), 60);
        assert!(answers.hold("alice", 50).is_err());
        drop(travelling);
        assert_eq!(answers.total_held(), 0);
        let _b = answers.hold("alice", 100).unwrap();
    }
}
