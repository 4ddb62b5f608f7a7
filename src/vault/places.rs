//! Places for calls to run: a call waits for one before it does its work on a blocking thread,
//! and holds it until that work ends.
//!
//! There are `Limits::max_calls_running` places in all, and a caller (told apart by its
//! credential, before it is judged) takes at most `Limits::max_calls_running_per_caller` of them:
//! its further calls wait in a line of their own, not in front of everyone else's. A call waits
//! for the total only once it has its caller's place, so when a flood of slow calls (searches
//! over many candidates, reads of large records) from one credential holds every place, another
//! caller still gets the next one that frees; a share below the total also leaves places free.
//!
//! Invariant: a `CallPlace` holds one permit of its caller's semaphore and one of the total; a
//! caller's semaphore is in the map while anything holds or waits for one of its permits.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Who a call counts under: a digest of its credential (never the credential).
pub type CallerKey = [u8; 32];

/// The places of one node.
#[derive(Debug)]
pub struct CallPlaces {
    total: Arc<Semaphore>,
    per_caller: usize,
    callers: Arc<Mutex<HashMap<CallerKey, Arc<Semaphore>>>>,
}

/// A call's place, given back when dropped.
#[derive(Debug)]
pub struct CallPlace {
    total: Option<OwnedSemaphorePermit>,
    mine: Option<OwnedSemaphorePermit>,
    key: CallerKey,
    callers: Arc<Mutex<HashMap<CallerKey, Arc<Semaphore>>>>,
}

/// The node is stopping: no more places are given.
#[derive(Debug)]
pub struct Closed;

impl CallPlaces {
    /// `total` places, at most `per_caller` of them for one caller.
    pub fn new(total: usize, per_caller: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            per_caller,
            callers: Arc::default(),
        }
    }

    /// Waits, in order, for a place among `key`'s and then for one among all.
    pub async fn take(&self, key: CallerKey) -> Result<CallPlace, Closed> {
        let own = {
            let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(
                callers
                    .entry(key)
                    .or_insert_with(|| Arc::new(Semaphore::new(self.per_caller))),
            )
        };
        // From here on the place's drop tidies the map, whatever happens below.
        let mut place = CallPlace {
            total: None,
            mine: None,
            key,
            callers: Arc::clone(&self.callers),
        };
        place.mine = Some(own.acquire_owned().await.map_err(|_| Closed)?);
        place.total = Some(
            Arc::clone(&self.total)
                .acquire_owned()
                .await
                .map_err(|_| Closed)?,
        );
        Ok(place)
    }

    /// Callers with a semaphore in the map.
    #[cfg(test)]
    fn callers(&self) -> usize {
        self.callers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for CallPlace {
    fn drop(&mut self) {
        self.total.take();
        self.mine.take();
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it: nobody holds or waits for one of its permits (a waiter holds
        // a clone, taken under this lock).
        if callers
            .get(&self.key)
            .is_some_and(|own| Arc::strong_count(own) == 1)
        {
            callers.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_caller_takes_at_most_its_share_and_others_get_the_rest() {
        let places = Arc::new(CallPlaces::new(3, 2));
        let (a, b) = ([1; 32], [2; 32]);
        let a1 = places.take(a).await.unwrap();
        let _a2 = places.take(a).await.unwrap();
        // A third of Alice's waits behind her own two, not in front of Bob.
        let waiting = {
            let places = Arc::clone(&places);
            tokio::spawn(async move { places.take(a).await.unwrap() })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let b1 = places.take(b).await.unwrap();
        // All three places are taken: Bob's next waits for the total.
        let next = {
            let places = Arc::clone(&places);
            tokio::spawn(async move { places.take(b).await.unwrap() })
        };
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        // Alice's first ends: her waiting call has her share's place, then Bob's gets the
        // total's once his first ends.
        drop(a1);
        drop(b1);
        let a3 = waiting.await.unwrap();
        let b2 = next.await.unwrap();
        drop((a3, b2, _a2));
        // Nobody holds or waits: the map is empty again.
        assert_eq!(places.callers(), 0);
    }

    #[tokio::test]
    async fn a_call_that_gives_up_waiting_leaves_nothing_behind() {
        let places = Arc::new(CallPlaces::new(1, 1));
        let held = places.take([1; 32]).await.unwrap();
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(20), places.take([2; 32])).await;
        assert!(gave_up.is_err());
        // One that gives up waiting behind its own caller's place.
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(20), places.take([1; 32])).await;
        assert!(gave_up.is_err());
        drop(held);
        assert_eq!(places.callers(), 0);
        let _again = places.take([2; 32]).await.unwrap();
    }
}
