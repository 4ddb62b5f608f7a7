//! The head file: the trail's MAC'd head kept outside the store, in a directory of its own
//! (`[audit] head_dir`), as `head-<store id>.json`. A store rolled back as a whole (an older copy
//! of the data directory put back) holds a trail behind that head; `Audit::check_fresh` finds
//! it at start-up. The file is replaced atomically (temporary file, fsync, rename, fsync of the
//! directory), so a crash leaves the old head or the new one, never half a file.
//!
//! Invariant: the head file never names an entry that is not committed: it is written from what
//! the writer published after a commit.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Committed, CommittedState, Head, StoreId};

/// How often, at most, the head file is rewritten while entries are committed. Entries
/// committed since the last write (at most this long ago, plus one write) are what a rollback
/// to a copy taken at that moment could hide; a clean stop writes the last head.
pub const HEAD_INTERVAL: Duration = Duration::from_millis(200);

/// Where a vault keeps its head file, and whether it may start on a store behind it.
#[derive(Clone, Debug)]
pub struct Anchor {
    /// The head directory (`[audit] head_dir`).
    pub dir: PathBuf,
    /// Start even when the store is behind its head file (or the file is missing, damaged or
    /// another store's); the start is recorded on the trail (`--accept-rollback`).
    pub accept_rollback: bool,
}

/// The head file of one store in a head directory.
#[derive(Clone, Debug)]
pub struct HeadFile {
    dir: PathBuf,
    path: PathBuf,
}

impl HeadFile {
    /// The head file of store `store_id` in `dir`.
    pub fn new(dir: &Path, store_id: StoreId) -> Self {
        Self {
            dir: dir.to_owned(),
            path: dir.join(format!("head-{store_id}.json")),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The head directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The head in the file; `Ok(None)` when there is no file. A file that is not a head is an
    /// error that says so.
    pub fn read(&self) -> Result<Option<Head>, String> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read the head file: {e}")),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "the head file is not a head (store_id, seq, hash, mac as JSON): {e}; it was \
                 damaged or replaced"
            )
        })
    }

    /// Replaces the file with `head`: a temporary file in the same directory, written and
    /// synced, renamed over the old one, then the directory synced. Creates the directory (mode
    /// 0700) when missing.
    pub fn write(&self, head: &Head) -> std::io::Result<()> {
        if !self.dir.exists() {
            std::fs::create_dir_all(&self.dir)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
            }
        }
        let json = serde_json::to_vec_pretty(head).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

/// The head keeper's loop: waits for a commit past `written`, writes its head, waits
/// `interval` (or until the trail closes), and so on; writes the last head when the trail
/// closes.
pub(super) fn keep(
    file: &HeadFile,
    committed: &Committed,
    interval: Duration,
    mut written: u64,
    head_of: impl Fn(&CommittedState) -> Head,
) {
    loop {
        let state = {
            let guard = committed
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *committed
                .changed
                .wait_while(guard, |s| s.seq == written && !s.closed)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if state.seq != written {
            match file.write(&head_of(&state)) {
                Ok(()) => written = state.seq,
                Err(e) => tracing::error!(
                    error = %e,
                    path = %file.path().display(),
                    seq = state.seq,
                    "cannot write the audit head file; a rollback of the store past this entry \
                     would not be found at start-up"
                ),
            }
        }
        if state.closed {
            return;
        }
        // At most one write per interval; the last head is written when the trail closes.
        let guard = committed
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(
            committed
                .changed
                .wait_timeout_while(guard, interval, |s| !s.closed)
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }
}
