//! A place where one thread waits for one value another thread leaves it: the per-caller wake-up
//! of the group commits (`audit::Appender`, `store::sqlite::group`). A leader wakes exactly the
//! callers it has an answer for, instead of every waiting thread through one shared condition
//! variable (which woke them all after every commit, to queue again on one lock).
//!
//! Invariant: a value left is taken once, by `wait` or `take_if`; nothing else reads it.

use std::sync::{Condvar, Mutex, PoisonError};

/// One caller's place.
pub(crate) struct Slot<T> {
    value: Mutex<Option<T>>,
    ready: Condvar,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            value: Mutex::new(None),
            ready: Condvar::new(),
        }
    }
}

impl<T> Slot<T> {
    /// Leaves `value` (replacing one not yet taken) and wakes the caller.
    pub(crate) fn give(&self, value: T) {
        *self.value.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
        self.ready.notify_one();
    }

    /// Waits until a value is left, and takes it.
    pub(crate) fn wait(&self) -> T {
        let mut value = self.value.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(v) = value.take() {
                return v;
            }
            value = self
                .ready
                .wait(value)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits until a value is left, or `timeout` has passed (`None`), and takes it.
    pub(crate) fn wait_timeout(&self, timeout: std::time::Duration) -> Option<T> {
        let deadline = std::time::Instant::now() + timeout;
        let mut value = self.value.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(v) = value.take() {
                return Some(v);
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            value = self
                .ready
                .wait_timeout(value, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Takes the value left, if there is one and `wanted` says so; leaves it otherwise.
    pub(crate) fn take_if(&self, wanted: impl FnOnce(&T) -> bool) -> Option<T> {
        let mut value = self.value.lock().unwrap_or_else(PoisonError::into_inner);
        match value.as_ref() {
            Some(v) if wanted(v) => value.take(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_value_left_before_or_while_waiting_is_taken_once() {
        let slot = Arc::new(Slot::default());
        slot.give(1);
        assert_eq!(slot.wait(), 1);
        assert_eq!(slot.take_if(|_| true), None);
        let waiter = {
            let slot = Arc::clone(&slot);
            std::thread::spawn(move || slot.wait())
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        slot.give(2);
        assert_eq!(waiter.join().unwrap(), 2);
        slot.give(3);
        assert_eq!(slot.take_if(|v| *v == 4), None);
        assert_eq!(
            slot.wait_timeout(std::time::Duration::from_millis(1)),
            Some(3)
        );
        let started = std::time::Instant::now();
        assert_eq!(
            slot.wait_timeout(std::time::Duration::from_millis(30)),
            None
        );
        assert!(started.elapsed() >= std::time::Duration::from_millis(30));
        slot.give(3);
        assert_eq!(slot.take_if(|v| *v == 3), Some(3));
    }
}
