//! Records read with their subject's facts, kept between reads for as long as no commit came to
//! the store's file: a read that finds its record here runs no statement but one
//! `PRAGMA store.data_version`.
//!
//! What is kept is the rows as the file holds them: values sealed, their MACs, the record's
//! labels and the facts' rows (in clear there as here), shared with the reads that find them
//! (`RecordRead`, never changed once read). The core checks them as it checks rows read from the
//! file, once (the read marks who found it authentic), and decides each read afresh. A read's
//! answer is the file's content as of the moment it looked, as it is without the cache:
//!
//! - Only the readers of the pool look here (never the writer, whose own commits its
//!   `data_version` does not count). Each remembers the `data_version` it last saw. A reader
//!   that sees another (any commit to the file by any connection or process since: a write, a
//!   row edited by hand), or looks for the first time (it cannot tell what came before), asks
//!   the store's watch connection after it, and the store's count of changes moves on when the
//!   watch sees a value it had not seen: each commit moves it on once, whichever reader sees
//!   it first, and a commit the watch saw before moved it on then (under the watch's lock, so
//!   that no reader finds the watch has seen a commit before the count has moved on for it).
//! - An entry is stamped with the count read before the snapshot it was read in began, and is
//!   found only while the count is still that.
//!
//! So an entry read before a commit is never found after any reader saw that commit, and each
//! read looks, on its own reader, before it searches: whatever a read finds was the file's
//! content at or after that look. The first reader to see a commit empties the cache, so that
//! values a write replaced or deleted are not kept in memory past the next read.
//!
//! A record is kept from its second read under one count on, so that reads spread over more
//! records than the cache holds copy nothing into it.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::store::RecordRead;

/// The most bytes of entries kept by default, as `weight` counts them (`read_cache_mib` in the
/// configuration sets another): past it the cache starts over.
pub(super) const DEFAULT_BYTES: usize = super::DEFAULT_READ_CACHE_MIB * 1024 * 1024;

/// What one entry is counted as besides its values: its allocations and the map's slot.
const ENTRY_OVERHEAD: usize = 256;

/// The most ids remembered as read once (8 bytes each): past it they are forgotten.
const MAX_ONCE: usize = 256 * 1024;

pub(super) struct ReadCache {
    /// The most bytes of entries kept (0: none is kept).
    max_bytes: usize,
    /// Moves on whenever a reader sees a `data_version` it had not seen.
    changes: AtomicU64,
    entries: Mutex<Entries>,
    /// Keys the ids remembered as read once.
    hasher: RandomState,
    /// Reads answered from the cache, for the tests that show it is used.
    #[cfg(test)]
    pub(super) hits: AtomicU64,
}

#[derive(Default)]
struct Entries {
    /// The count of changes every entry was read under.
    stamp: u64,
    map: HashMap<String, (Arc<RecordRead>, usize)>,
    bytes: usize,
    /// The ids read once under `stamp` and not kept: a record is kept at its second read, so
    /// that reads spread over more records than the cache holds copy nothing into it.
    once: HashSet<u64>,
}

/// What an emptied cache held, dropped once its lock is released: dropping thousands of
/// entries holds up no read.
pub(super) type Emptied = (HashMap<String, (Arc<RecordRead>, usize)>, HashSet<u64>);

impl Entries {
    fn empty(&mut self) -> Emptied {
        self.bytes = 0;
        (
            std::mem::take(&mut self.map),
            std::mem::take(&mut self.once),
        )
    }
}

impl Default for ReadCache {
    fn default() -> Self {
        Self::new(DEFAULT_BYTES)
    }
}

impl ReadCache {
    /// A cache that keeps at most `max_bytes` of entries (none when 0).
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            changes: AtomicU64::default(),
            entries: Mutex::default(),
            hasher: RandomState::default(),
            #[cfg(test)]
            hits: AtomicU64::default(),
        }
    }

    /// The stamp to search and fill under, after the reader about to read looked: `changed`
    /// when a commit came that moved nobody's count on yet (`move_on`).
    pub(super) fn stamp(&self, changed: bool) -> u64 {
        if changed {
            self.move_on().0
        } else {
            self.changes.load(Ordering::SeqCst)
        }
    }

    /// Moves the count of changes on and empties the cache: the new stamp, and what the cache
    /// held, for the caller to drop once it holds no lock.
    pub(super) fn move_on(&self) -> (u64, Option<Emptied>) {
        let stamp = self.changes.fetch_add(1, Ordering::SeqCst) + 1;
        let emptied = match self.entries.lock() {
            Ok(mut entries) if entries.stamp < stamp => {
                entries.stamp = stamp;
                Some(entries.empty())
            }
            _ => None,
        };
        (stamp, emptied)
    }

    /// The record `id` as read under `stamp`, if it was and nothing changed since.
    pub(super) fn get(&self, id: &str, stamp: u64) -> Option<Arc<RecordRead>> {
        let kept = {
            let entries = self.entries.lock().ok()?;
            if entries.stamp != stamp {
                return None;
            }
            Arc::clone(&entries.map.get(id)?.0)
        };
        #[cfg(test)]
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(kept)
    }

    /// Keeps `found`, read in a snapshot begun under `stamp`, unless a change came since or
    /// this is the first read of `id` under `stamp`.
    pub(super) fn put(&self, id: &str, stamp: u64, found: &Arc<RecordRead>) {
        if self.max_bytes == 0 || self.changes.load(Ordering::SeqCst) != stamp {
            return;
        }
        let key = self.hasher.hash_one(id);
        // Declared before the lock is taken, so dropped once it is released.
        let mut emptied: Option<Emptied> = None;
        {
            let Ok(mut entries) = self.entries.lock() else {
                return;
            };
            match entries.settle(stamp) {
                Settled::Stale => return,
                Settled::Emptied(e) => emptied = Some(e),
                Settled::Same => {}
            }
            if !entries.once.contains(&key) {
                if entries.once.len() >= MAX_ONCE {
                    entries.once.clear();
                }
                entries.once.insert(key);
                return;
            }
        }
        drop(emptied);
        // Weighed outside the lock, then kept if nothing changed meanwhile.
        let size = weight(id, found);
        if size > self.max_bytes {
            return;
        }
        let kept = (Arc::clone(found), size);
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.stamp != stamp {
            return;
        }
        let full = (entries.bytes + size > self.max_bytes).then(|| entries.empty());
        if let Some((_, replaced)) = entries.map.insert(id.to_owned(), kept) {
            entries.bytes -= replaced;
        }
        entries.bytes += size;
        drop(entries);
        drop(full);
    }
}

/// What `Entries::settle` found.
enum Settled {
    /// The entries were read under `stamp`.
    Same,
    /// They were read under an earlier count, and are now emptied for `stamp`.
    Emptied(Emptied),
    /// The count moved on past `stamp`: nothing read under it is kept.
    Stale,
}

impl Entries {
    /// Makes the entries those of `stamp`, unless they are of a later count.
    fn settle(&mut self, stamp: u64) -> Settled {
        match self.stamp.cmp(&stamp) {
            std::cmp::Ordering::Equal => Settled::Same,
            std::cmp::Ordering::Greater => Settled::Stale,
            std::cmp::Ordering::Less => {
                self.stamp = stamp;
                Settled::Emptied(self.empty())
            }
        }
    }
}

/// What an entry is counted as against the cache's size: its strings and byte strings, and a bound
/// for each of its subject's consent, hold, mandate and restriction rows (whose free text is
/// bounded by what the API takes).
fn weight(
    id: &str,
    RecordRead {
        record,
        fields,
        facts,
        ..
    }: &RecordRead,
) -> usize {
    const FACT_ROW: usize = 2048;
    let fields: usize = fields
        .iter()
        .map(|f| {
            f.name.len() + f.sealed.len() + f.mac.len() + f.version.len() + f.tags.len() * 24 + 64
        })
        .sum();
    let labels: usize = record
        .labels
        .iter()
        .map(|(k, v)| k.len() + v.len() + 64)
        .sum();
    let facts = (facts.consents.len()
        + facts.holds.len()
        + facts.mandates.len()
        + facts.restrictions.len())
        * FACT_ROW
        + facts.destroyed.iter().map(|d| d.len() + 24).sum::<usize>()
        + facts
            .anchor
            .as_ref()
            .map_or(0, |a| a.subject.len() + a.digest.len() + a.mac.len() + 64);
    ENTRY_OVERHEAD
        + 2 * id.len()
        + record.subject.len()
        + record.mac.len()
        + record.fields_mac.len()
        + labels
        + fields
        + facts
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::{FieldRow, SubjectFacts};

    fn found(subject: &str) -> Arc<RecordRead> {
        found_with(subject, Vec::new())
    }

    fn found_with(subject: &str, fields: Vec<FieldRow>) -> Arc<RecordRead> {
        let record = crate::store::conformance::record_row("rec_1", subject);
        Arc::new(RecordRead::new(record, fields, SubjectFacts::default()))
    }

    /// Kept at its second read under `stamp`, as `put` keeps a record.
    fn keep(cache: &ReadCache, id: &str, stamp: u64, found: &Arc<RecordRead>) {
        cache.put(id, stamp, found);
        cache.put(id, stamp, found);
    }

    #[test]
    fn an_entry_is_found_under_its_stamp_only() {
        let cache = ReadCache::default();
        let stamp = cache.stamp(true);
        keep(&cache, "r", stamp, &found("s1"));
        assert_eq!(cache.get("r", stamp).unwrap().record.subject, "s1");
        // A reader saw a commit: what was read before it is not found.
        let next = cache.stamp(true);
        assert!(cache.get("r", next).is_none());
        // Nor is an entry read before that commit kept once the count moved on.
        keep(&cache, "r", stamp, &found("s1"));
        assert!(cache.get("r", next).is_none());
        // Read after it, it is.
        keep(&cache, "r", next, &found("s2"));
        assert_eq!(cache.stamp(false), next);
        assert_eq!(cache.get("r", next).unwrap().record.subject, "s2");
    }

    #[test]
    fn a_record_is_kept_at_its_second_read() {
        let cache = ReadCache::default();
        let stamp = cache.stamp(true);
        cache.put("r", stamp, &found("s"));
        assert!(cache.get("r", stamp).is_none());
        cache.put("r", stamp, &found("s"));
        assert!(cache.get("r", stamp).is_some());
        // A commit seen forgets the reads before it as well.
        let next = cache.stamp(true);
        cache.put("r", next, &found("s"));
        assert!(cache.get("r", next).is_none());
    }

    #[test]
    fn a_commit_seen_empties_the_cache_and_a_replaced_entry_is_counted_once() {
        let cache = ReadCache::default();
        let stamp = cache.stamp(true);
        let one = weight("r", &found("s"));
        for _ in 0..3 {
            keep(&cache, "r", stamp, &found("s"));
        }
        assert_eq!(cache.entries.lock().unwrap().bytes, one);
        cache.stamp(true);
        let entries = cache.entries.lock().unwrap();
        assert!(entries.map.is_empty() && entries.bytes == 0 && entries.once.is_empty());
    }

    #[test]
    fn past_its_size_the_cache_starts_over() {
        let cache = ReadCache::default();
        let stamp = cache.stamp(true);
        let big = found_with(
            "s",
            vec![FieldRow {
                name: "f".into(),
                category: crate::domain::Category::Contact,
                kind: crate::domain::FieldKind::Text,
                key_gen: 1,
                sealed: vec![0; DEFAULT_BYTES / 3],
                mac: Vec::new(),
                version: String::new(),
                tags: Vec::new(),
            }],
        );
        for id in ["a", "b", "c"] {
            keep(&cache, id, stamp, &big);
        }
        let entries = cache.entries.lock().unwrap();
        assert!(entries.bytes <= DEFAULT_BYTES, "{}", entries.bytes);
        assert!(entries.map.contains_key("c") && !entries.map.contains_key("a"));
    }

    /// A cache of the size configured keeps no more than that, and one of size 0 nothing.
    #[test]
    fn the_configured_size_bounds_the_cache() {
        let one = weight("a", &found("s"));
        let cache = ReadCache::new(2 * one);
        let stamp = cache.stamp(true);
        for id in ["a", "b"] {
            keep(&cache, id, stamp, &found("s"));
        }
        assert_eq!(cache.entries.lock().unwrap().map.len(), 2);
        keep(&cache, "c", stamp, &found("s"));
        {
            let entries = cache.entries.lock().unwrap();
            assert!(entries.bytes <= 2 * one, "{}", entries.bytes);
            assert!(entries.map.contains_key("c") && !entries.map.contains_key("a"));
        }
        let none = ReadCache::new(0);
        let stamp = none.stamp(true);
        keep(&none, "a", stamp, &found("s"));
        assert!(none.get("a", stamp).is_none());
        assert!(none.entries.lock().unwrap().once.is_empty());
    }
}
