//! The SQLite store's evidence segments in files beside the database.
//!
//! An upload's sealed segments are appended, in the order they come, to one file of its own in
//! the directory `<database file>.evidence/` (named by the evidence id), and each row of
//! `evidence_segments` names where its bytes are (`at`, `len`) instead of holding them: the
//! database's log and pages no longer carry every byte of every upload twice. A row whose `at`
//! is NULL holds its bytes itself (segments stored before the files, resealed by a rekey, or
//! restored from a backup, which copies them in).
//!
//! Invariants:
//! - A row names bytes that were written before it was committed, and the file of a finished
//!   upload is synced (file and directory) before the upload's finishing commit.
//! - What the file holds is only ever read through a row, and every segment is sealed with its
//!   evidence id and index as associated data under a key of its own file: bytes edited in a
//!   file, a row pointing at other bytes, or another upload's file put in its place all fail to
//!   open (`DATA_LOSS`), as a row edited in the database does. A file that is missing or short
//!   is named as corrupt, never read as empty.
//! - A file goes once no row names it and no upload is unfinished under its id (`sweep`),
//!   after the commit that took its last row; never while a snapshot is copying segments out.
//! - Paths come from evidence ids kluis gives (`ev_` and hex); any other id read from a row is
//!   refused before it comes near the file system, and no link is followed.

use std::{
    collections::HashSet,
    fs::{File, OpenOptions},
    os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use crate::store::{SegmentRow, StoreError};

/// The most bytes a segment row may name: a sealed 64 KiB segment with room to spare. A row
/// edited to name more is refused before anything is allocated for it.
pub(super) const MAX_SEALED: i64 = 64 * 1024 + 1024;

/// Files kept open for reading (downloads read one segment per call).
const KEPT_OPEN: usize = 16;

/// The segment files of one database.
pub(super) struct SegmentFiles {
    dir: PathBuf,
    open: Mutex<Vec<(String, Arc<File>)>>,
    /// Held (shared) while a snapshot copies segments out of the files.
    pinned: RwLock<()>,
    /// Files whose rows are gone, to remove once no snapshot holds the pin.
    owed: Mutex<Vec<String>>,
    /// Held while files are removed.
    remover: Mutex<()>,
}

/// Where a segment's bytes went in its file.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) struct Placed {
    pub at: i64,
    pub len: i64,
}

impl SegmentFiles {
    /// The segment files of the database at `db`.
    pub(super) fn beside(db: &Path) -> Self {
        let name = db
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "kluis.db".into());
        Self {
            dir: db.with_file_name(format!("{name}.evidence")),
            open: Mutex::new(Vec::new()),
            pinned: RwLock::new(()),
            owed: Mutex::new(Vec::new()),
            remover: Mutex::new(()),
        }
    }

    /// The directory of the files.
    #[cfg(test)]
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, evidence_id: &str) -> Result<PathBuf, StoreError> {
        if !is_file_id(evidence_id) {
            return Err(StoreError::Corrupt(format!(
                "evidence `{}`: not an id kluis gives",
                evidence_id.escape_debug()
            )));
        }
        Ok(self.dir.join(evidence_id))
    }

    /// Whether the directory exists, as a directory of its own: a link or anything else put in
    /// its place is refused, so that no file is made, read or removed through it. Made (0700)
    /// when `create`.
    fn checked_dir(&self, create: bool) -> Result<bool, StoreError> {
        match std::fs::symlink_metadata(&self.dir) {
            Ok(m) if m.is_dir() => return Ok(true),
            Ok(_) => {
                return Err(StoreError::Corrupt(format!(
                    "`{}` is not a directory (a link or a file in its place)",
                    self.dir.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(&self.dir, &e)),
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => {
                // The directory's name is durable before any file in it is.
                let parent = self.dir.parent().unwrap_or_else(|| Path::new("."));
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io(parent, &e))?;
                Ok(true)
            }
            // Made by another upload meanwhile: checked again.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self.checked_dir(false),
            Err(e) => Err(io(&self.dir, &e)),
        }
    }

    /// Appends `segments` to the file of `evidence_id` (creating it and the directory) and
    /// returns where each went. Not synced: `sync` before the upload's finishing commit.
    pub(super) fn append(
        &self,
        evidence_id: &str,
        segments: &[SegmentRow],
    ) -> Result<Vec<Placed>, StoreError> {
        let path = self.path(evidence_id)?;
        self.checked_dir(true)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| io(&path, &e))?;
        let meta = file.metadata().map_err(|e| io(&path, &e))?;
        if !meta.is_file() {
            return Err(not_a_file(evidence_id));
        }
        let mut at = meta.len();
        let mut placed = Vec::with_capacity(segments.len());
        for s in segments {
            file.write_all_at(&s.sealed, at)
                .map_err(|e| io(&path, &e))?;
            let len = s.sealed.len() as u64;
            placed.push(Placed {
                at: i64::try_from(at).map_err(|_| too_large(&path))?,
                len: i64::try_from(len).map_err(|_| too_large(&path))?,
            });
            at += len;
        }
        Ok(placed)
    }

    /// Makes the file of `evidence_id` durable, with its name in the directory; false when
    /// there is no such file (an upload that wrote no segment to a file).
    pub(super) fn sync(&self, evidence_id: &str) -> Result<bool, StoreError> {
        let path = self.path(evidence_id)?;
        if !self.checked_dir(false)? {
            return Ok(false);
        }
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(&path, &e)),
        };
        if !file.metadata().map_err(|e| io(&path, &e))?.is_file() {
            return Err(not_a_file(evidence_id));
        }
        file.sync_data().map_err(|e| io(&path, &e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&self.dir, &e))?;
        Ok(true)
    }

    /// The `len` bytes at `at` in the file of `evidence_id`.
    #[expect(
        clippy::slow_vector_initialization,
        reason = "a zeroed allocation of a segment's size costs page faults here (below)"
    )]
    pub(super) fn read(&self, evidence_id: &str, at: i64, len: i64) -> Result<Vec<u8>, StoreError> {
        let corrupt = |what: &str| {
            StoreError::Corrupt(format!("a segment of evidence `{evidence_id}`: {what}"))
        };
        if !(0..=MAX_SEALED).contains(&len) || at < 0 {
            return Err(corrupt("its place in the file is not one kluis writes"));
        }
        let file = self.opened(evidence_id)?;
        // Not `vec![0; len]`: a zeroed allocation of this size is one jemalloc makes by handing
        // pages back to the kernel and faulting them in again (a TLB shootdown per segment).
        let n = usize::try_from(len).unwrap_or(0);
        let mut bytes = Vec::with_capacity(n);
        bytes.resize(n, 0);
        match file.read_exact_at(&mut bytes, at.unsigned_abs()) {
            Ok(()) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(corrupt("its file is shorter than its rows say"))
            }
            Err(e) => Err(io(&self.dir.join(evidence_id), &e)),
        }
    }

    /// Whether the file of `evidence_id` holds `end` bytes, as its rows say (`store verify`).
    pub(super) fn check_holds(&self, evidence_id: &str, end: i64) -> Result<(), StoreError> {
        let path = self.path(evidence_id)?;
        self.checked_dir(false)?;
        let problem = match std::fs::symlink_metadata(&path) {
            Ok(m) if !m.is_file() => "is not a regular file",
            Ok(m) if i64::try_from(m.len()).is_ok_and(|len| len >= end) => return Ok(()),
            Ok(_) => "is shorter than its rows say",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "is missing",
            Err(e) => return Err(io(&path, &e)),
        };
        Err(StoreError::Corrupt(format!(
            "evidence `{evidence_id}`: its segment file {problem}"
        )))
    }

    fn opened(&self, evidence_id: &str) -> Result<Arc<File>, StoreError> {
        let mut open = lock(&self.open);
        if let Some(i) = open.iter().position(|(id, _)| id == evidence_id) {
            let entry = open.remove(i);
            let file = Arc::clone(&entry.1);
            open.push(entry);
            return Ok(file);
        }
        drop(open);
        let path = self.path(evidence_id)?;
        self.checked_dir(false)?;
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Corrupt(format!(
                    "evidence `{evidence_id}`: its segment file is missing"
                )));
            }
            Err(e) => return Err(io(&path, &e)),
        };
        if !file.metadata().map_err(|e| io(&path, &e))?.is_file() {
            return Err(not_a_file(evidence_id));
        }
        let file = Arc::new(file);
        let mut open = lock(&self.open);
        if open.len() >= KEPT_OPEN {
            open.remove(0);
        }
        open.push((evidence_id.to_owned(), Arc::clone(&file)));
        Ok(file)
    }

    /// Keeps the files from going while `f` copies segments out of them; removes what was
    /// owed meanwhile once `f` is done.
    pub(super) fn pinned<T>(&self, f: impl FnOnce() -> T) -> T {
        let result = {
            let _pin = self.pinned.read().unwrap_or_else(|e| e.into_inner());
            f()
        };
        self.remove(Vec::new());
        result
    }

    /// Removes the files of `ids`, whose rows a committed transaction deleted (or never
    /// wrote); how many went. While a snapshot copies segments, they are owed, and removed
    /// when the last snapshot is done. A file that cannot be removed is logged and left for
    /// the sweep at the next start.
    pub(super) fn remove(&self, ids: Vec<String>) -> usize {
        lock(&self.owed).extend(ids);
        // One remover at a time; one that finds a snapshot running leaves the ids owed, and
        // the snapshot removes them after it let go of its pin (`pinned`).
        let _remover = lock(&self.remover);
        let Ok(_pin) = self.pinned.try_write() else {
            return 0;
        };
        let owed = std::mem::take(&mut *lock(&self.owed));
        if owed.is_empty() {
            return 0;
        }
        match self.checked_dir(false) {
            Ok(true) => {}
            Ok(false) => return 0,
            Err(e) => {
                tracing::warn!(error = %e, "evidence segment files not removed");
                return 0;
            }
        }
        let mut gone = 0;
        for id in &owed {
            let Ok(path) = self.path(id) else { continue };
            match std::fs::remove_file(&path) {
                Ok(()) => gone += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    error = %io(&path, &e),
                    "an evidence segment file stays until the next start"
                ),
            }
        }
        lock(&self.open).retain(|(id, _)| !owed.contains(id));
        if gone > 0
            && let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all())
        {
            tracing::warn!(error = %io(&self.dir, &e), "evidence directory not synced");
        }
        gone
    }

    /// Removes the files that `keep` (the ids still named by a row or of an unfinished upload,
    /// read after the directory was listed) does not hold: what a crash left between a
    /// deletion's commit and its files going (at start). A file that appears after the listing
    /// is not looked at: its upload's row was committed before it.
    pub(super) fn sweep(
        &self,
        keep: impl FnOnce() -> Result<HashSet<String>, StoreError>,
    ) -> Result<usize, StoreError> {
        if !self.checked_dir(false)? {
            return Ok(0);
        }
        let listed: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(|e| io(&self.dir, &e))?
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| is_file_id(name))
            .collect();
        if listed.is_empty() {
            return Ok(0);
        }
        let keep = keep()?;
        Ok(self.remove(listed.into_iter().filter(|id| !keep.contains(id)).collect()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether `id` is an evidence id as kluis gives them (`ev_` and lowercase hex), the only
/// names the files have.
fn is_file_id(id: &str) -> bool {
    id.strip_prefix("ev_").is_some_and(|hex| {
        (1..=64).contains(&hex.len())
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn io(path: &Path, e: &std::io::Error) -> StoreError {
    // A link where a file or the directory should be (opened without following it).
    if e.raw_os_error() == Some(nix::libc::ELOOP) {
        return StoreError::Corrupt(format!(
            "`{}` is a link where kluis keeps a file of its own",
            path.display()
        ));
    }
    StoreError::Database(format!("evidence file `{}`: {e}", path.display()))
}

fn not_a_file(evidence_id: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "evidence `{evidence_id}`: its segment file is not a regular file"
    ))
}

fn too_large(path: &Path) -> StoreError {
    StoreError::Database(format!("evidence file `{}` is too large", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(index: u32, bytes: &[u8]) -> SegmentRow {
        SegmentRow {
            index,
            key_gen: 1,
            sealed: bytes.to_vec(),
        }
    }

    #[test]
    fn segments_read_back_from_where_they_were_placed() {
        let dir = tempfile::tempdir().unwrap();
        let files = SegmentFiles::beside(&dir.path().join("kluis.db"));
        let first = files
            .append("ev_ab", &[segment(0, b"one"), segment(1, b"two!")])
            .unwrap();
        let second = files.append("ev_ab", &[segment(2, b"three")]).unwrap();
        files.sync("ev_ab").unwrap();
        assert_eq!(
            files.read("ev_ab", first[1].at, first[1].len).unwrap(),
            b"two!"
        );
        assert_eq!(
            files.read("ev_ab", second[0].at, second[0].len).unwrap(),
            b"three"
        );
        // Its twin: a row naming bytes past the end, or more than a segment, is corrupt.
        assert!(matches!(
            files.read("ev_ab", second[0].at, second[0].len + 1),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            files.read("ev_ab", 0, MAX_SEALED + 1),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            files.read("ev_cd", 0, 1),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn ids_that_kluis_does_not_give_never_reach_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let files = SegmentFiles::beside(&dir.path().join("kluis.db"));
        for id in [
            "../kluis.db",
            "ev_../x",
            "ev_",
            "ev_AB",
            "x",
            "ev_ab/cd",
            "ev_ab\0",
        ] {
            assert!(
                matches!(
                    files.append(id, &[segment(0, b"x")]),
                    Err(StoreError::Corrupt(_))
                ),
                "{id:?}"
            );
            assert!(
                matches!(files.read(id, 0, 1), Err(StoreError::Corrupt(_))),
                "{id:?}"
            );
        }
        assert!(!files.dir().exists());
    }

    #[test]
    fn a_link_in_place_of_a_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let files = SegmentFiles::beside(&dir.path().join("kluis.db"));
        files.append("ev_01", &[segment(0, b"x")]).unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"secret").unwrap();
        std::os::unix::fs::symlink(&outside, files.dir().join("ev_02")).unwrap();
        assert!(files.append("ev_02", &[segment(0, b"x")]).is_err());
        assert!(files.read("ev_02", 0, 1).is_err());
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
    }

    #[test]
    fn a_link_in_place_of_the_directory_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let files = SegmentFiles::beside(&dir.path().join("kluis.db"));
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("ev_01"), b"secret").unwrap();
        std::os::unix::fs::symlink(&elsewhere, files.dir()).unwrap();
        assert!(matches!(
            files.append("ev_02", &[segment(0, b"x")]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            files.read("ev_01", 0, 1),
            Err(StoreError::Corrupt(_))
        ));
        assert!(files.sweep(|| Ok(HashSet::new())).is_err());
        assert_eq!(files.remove(vec!["ev_01".into()]), 0);
        assert!(files.check_holds("ev_01", 1).is_err());
        assert_eq!(std::fs::read(elsewhere.join("ev_01")).unwrap(), b"secret");
        assert!(!elsewhere.join("ev_02").exists());
    }

    #[test]
    fn a_sweep_keeps_what_is_named_and_waits_for_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let files = SegmentFiles::beside(&dir.path().join("kluis.db"));
        files.append("ev_01", &[segment(0, b"x")]).unwrap();
        files.append("ev_02", &[segment(0, b"y")]).unwrap();
        std::fs::write(files.dir().join("notes.txt"), b"not kluis's").unwrap();
        std::fs::create_dir(files.dir().join("ev_03")).unwrap();
        let keep = || Ok(HashSet::from(["ev_01".to_owned()]));
        // Owed while a snapshot copies, removed once it is done.
        files.pinned(|| {
            assert_eq!(files.sweep(keep).unwrap(), 0);
            assert_eq!(files.remove(vec!["ev_01".into()]), 0);
            assert!(files.dir().join("ev_02").exists());
        });
        assert!(!files.dir().join("ev_01").exists());
        assert!(!files.dir().join("ev_02").exists());
        // Not kluis's, or not a file: left alone.
        assert!(files.dir().join("notes.txt").exists());
        assert!(files.dir().join("ev_03").is_dir());
        assert_eq!(files.sweep(keep).unwrap(), 0);
        // One that cannot be removed (a directory under an id's name) holds up no other.
        files.append("ev_04", &[segment(0, b"z")]).unwrap();
        assert_eq!(files.remove(vec!["ev_03".into(), "ev_04".into()]), 1);
        assert!(!files.dir().join("ev_04").exists());
    }
}
