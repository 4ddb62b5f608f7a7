//! `kluis restore`: turn a backup taken with `kluis admin backup` into the store of a new data
//! directory, checked before it is put in place.

use std::{
    io::{Read, Write},
    path::PathBuf,
    sync::Arc,
};

use clap::Args;
use kluis::{
    audit::{Audit, AuditError, Head, Verification},
    config::{self, KeySource, SystemEnv},
    crypto::Algorithm,
    keys::Keyring,
    store::{MetaStore, Store, StoreError},
};

use super::{Exit, fail, progress::Progress};

/// How much of the backup is read and written at a time.
const COPY_PIECE: usize = 1 << 20;

/// Arguments of `kluis restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file written by `kluis admin backup`.
    pub backup: PathBuf,
    /// A new data directory (created if missing; must not hold a store yet).
    #[arg(long, env = "KLUIS_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Root key file, to check that the backup opens with it.
    #[arg(long, conflicts_with = "passphrase_file")]
    pub key_file: Option<PathBuf>,
    /// File holding the root passphrase, to check that the backup opens with it.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// The head `kluis admin backup` printed for this backup (`SEQ:HASH:MAC:STORE_ID`), kept
    /// apart from it: the backup's trail must reach that entry with that hash, so entries cut
    /// from its end (or its whole trail) are found. Needs the root key, which checks the MAC.
    #[arg(long, value_name = "SEQ:HASH:MAC:STORE_ID")]
    pub expect_head: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `kluis restore`.
pub fn run(args: &RestoreArgs) -> Exit {
    // What the command line gets wrong is said before anything is written.
    let expect_head = match args.expect_head.as_deref().map(parse_head).transpose() {
        Ok(head) => head,
        Err(e) => {
            eprintln!("error: {}", kluis::escape::controls(&e));
            return Exit::Usage;
        }
    };
    if expect_head.is_some() && args.key_file.is_none() && args.passphrase_file.is_none() {
        eprintln!(
            "error: --expect-head needs the root key (--key-file or --passphrase-file): the \
             head's MAC and the trail's entries are checked with the audit key it opens"
        );
        return Exit::Usage;
    }
    let target = args.data_dir.join(config::DB_FILE);
    // Every path a store of this directory keeps: a log or journal left beside a new database
    // would be read into it as its own, and opening the store sweeps the evidence directory of
    // files its rows do not name; a directory with any of them is not a new one.
    let store_paths = store_paths(&target);
    let present = present(&store_paths);
    let restoring = kluis::store::sqlite::restoring_path(&target);
    if present.contains(&restoring) {
        return fail(format!(
            "`{}` holds a store whose restore stopped before its checks of the backup ended \
             (`{}` says so): delete the directory and restore again",
            args.data_dir.display(),
            restoring.display()
        ));
    }
    if present == [partial_path(&target)] {
        return fail(format!(
            "`{}` holds `{}`, left by a restore stopped during its copy; delete it and restore \
             again",
            args.data_dir.display(),
            partial_path(&target).display()
        ));
    }
    if !present.is_empty() {
        return fail(format!(
            "`{}` holds a store already (`{}`); restore into a new data directory",
            args.data_dir.display(),
            present
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join("`, `")
        ));
    }
    // The directories this restore makes (the data directory and any missing parent), deepest
    // first: a failed restore removes them again.
    let made_dirs: Vec<PathBuf> = args
        .data_dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && d.symlink_metadata().is_err())
        .map(PathBuf::from)
        .collect();
    if let Err(e) = config::create_private_dir(&args.data_dir) {
        return fail(format!("cannot create `{}`: {e}", args.data_dir.display()));
    }
    // The directory `serve` would refuse is refused here, before anything is written into it.
    if let Err(e) = config::check_private(&args.data_dir) {
        return fail(e);
    }
    // Not beside a `kluis serve` or `kluis init` of the directory, nor another restore: held
    // until the restore is done or undone.
    let lock_file = args.data_dir.join(config::LOCK_FILE);
    let lock_made = lock_file.symlink_metadata().is_err();
    let held = match config::lock_data_dir(&args.data_dir) {
        Ok(held) => held,
        Err(e) => {
            for dir in &made_dirs {
                let _ = std::fs::remove_dir(dir);
            }
            return fail(e);
        }
    };
    let mut made_store = false;
    let outcome = restore(args, expect_head.as_ref(), &target, &mut made_store)
        // Checked, and the store closed: the mark that kept it from being opened goes.
        .and_then(|done| unmark(&target).map(|()| done));
    // Nothing half-restored stays behind: once this restore made the database (and only then:
    // another one's files are not its to remove), every path of the store, and the directories
    // this restore made (each only when empty).
    if outcome.is_err() && made_store {
        for path in &store_paths {
            let _ = match path.symlink_metadata() {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
                Ok(_) => std::fs::remove_file(path),
                Err(_) => Ok(()),
            };
        }
    }
    if outcome.is_err() {
        // The lock's file too, when this restore made it: the directory is left as it was.
        if lock_made {
            let _ = std::fs::remove_file(&lock_file);
        }
        for dir in &made_dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
    drop(held);
    match outcome {
        Ok((bytes, entries)) => {
            let unsealed = entries.is_some();
            if args.json {
                out!(
                    "{}",
                    serde_json::json!({
                        "data_dir": args.data_dir.display().to_string(),
                        "bytes": bytes,
                        "root_key_checked": unsealed,
                        "trail_verified": unsealed,
                        "trail_head_checked": unsealed && expect_head.is_some(),
                        "trail_entries": entries,
                    })
                );
            } else {
                out!(
                    "restored {bytes} bytes into {}{}",
                    args.data_dir.display(),
                    if unsealed && expect_head.is_some() {
                        "; the root key opens it and its audit trail verifies, ending at the \
                         head given"
                    } else if unsealed {
                        "; the root key opens it and its audit trail verifies (without a head: \
                         entries cut from its end are found with --expect-head)"
                    } else {
                        "; serve it with the root key of the server it came from"
                    }
                );
            }
            Exit::Success
        }
        Err((exit, message)) => {
            eprintln!("error: {}", kluis::escape::controls(&message));
            exit
        }
    }
}

/// The paths of the store whose database is `target`: its file, its trail's file, each with
/// SQLite's log, index and journal, and the evidence directory.
fn store_paths(target: &std::path::Path) -> Vec<PathBuf> {
    let trail = kluis::store::sqlite::trail_path(target);
    let mut paths: Vec<PathBuf> = [target, trail.as_path()]
        .iter()
        .flat_map(|f| {
            ["", "-wal", "-shm", "-journal"].map(|suffix| {
                let mut name = f.as_os_str().to_owned();
                name.push(suffix);
                PathBuf::from(name)
            })
        })
        .collect();
    let mut evidence = target.as_os_str().to_owned();
    evidence.push(".evidence");
    paths.push(PathBuf::from(evidence));
    paths.push(partial_path(target));
    paths.push(kluis::store::sqlite::restoring_path(target));
    paths
}

/// Puts the mark beside `target` that keeps the store from being opened (by `serve`, `init`)
/// until this restore's checks have passed, durable (with its name) before the backup
/// takes the store's name: a restore stopped during its checks (an interrupt, a kill, a power
/// cut) leaves a store nothing opens, not an unchecked one that serves.
fn mark(target: &std::path::Path) -> Result<(), (Exit, String)> {
    let restoring = kluis::store::sqlite::restoring_path(target);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(&restoring)
        .and_then(|mut file| {
            file.write_all(
                b"kluis restore put the store here and had not finished checking it; \
                  delete this directory and restore the backup again\n",
            )?;
            file.sync_all()
        })
        .and_then(|()| sync_dir(&restoring))
        .map_err(|e| {
            (
                Exit::Error,
                format!("cannot create `{}`: {e}", restoring.display()),
            )
        })
}

/// Takes the mark (`mark`) away once the checks have passed and the store is closed, durably.
fn unmark(target: &std::path::Path) -> Result<(), (Exit, String)> {
    let restoring = kluis::store::sqlite::restoring_path(target);
    std::fs::remove_file(&restoring)
        .and_then(|()| sync_dir(&restoring))
        .map_err(|e| {
            (
                Exit::Error,
                format!(
                    "the backup was checked, but `{}` cannot be removed ({e}); nothing was \
                     restored",
                    restoring.display()
                ),
            )
        })
}

/// The paths of `paths` that exist (as anything, a dangling link too).
fn present(paths: &[PathBuf]) -> Vec<PathBuf> {
    paths
        .iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .cloned()
        .collect()
}

/// Where the backup is copied before it is put in place as `target`: a restore stopped during
/// the copy (an interrupt, a kill, a power cut) leaves no `kluis.db` that `serve` would open.
fn partial_path(target: &std::path::Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Makes the directory entry of `path` durable (a rename is not, until its directory is).
fn sync_dir(path: &std::path::Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// A size as people read it: bytes below a KiB, KiB below a MiB, MiB above.
fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} bytes"),
        1024..1_048_576 => format!("{} KiB", bytes >> 10),
        _ => format!("{} MiB", bytes >> 20),
    }
}

/// Parses `SEQ:HASH:MAC:STORE_ID`, as `kluis admin backup` and `audit head` print it.
fn parse_head(s: &str) -> Result<Head, String> {
    super::admin::parse_head(s).map(|h| Head {
        seq: h.seq,
        hash: h.hash,
        mac: h.mac,
        store_id: h.store_id,
    })
}

fn restore(
    args: &RestoreArgs,
    expect_head: Option<&Head>,
    target: &std::path::Path,
    made_store: &mut bool,
) -> Result<(u64, Option<u64>), (Exit, String)> {
    let error = |m: String| (Exit::Error, m);
    let mut bar = Progress::new("restore", args.json);
    let cannot_read =
        |e: std::io::Error| error(format!("cannot read `{}`: {e}", args.backup.display()));
    // Read in pieces, not whole: a backup with its evidence may be larger than the memory at
    // hand.
    let mut backup = std::fs::File::open(&args.backup).map_err(cannot_read)?;
    let total = backup.metadata().map_err(cannot_read)?.len();
    let mut header = [0u8; 16];
    let whole = match backup.read_exact(&mut header) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
        Err(e) => return Err(cannot_read(e)),
    };
    if !whole || &header != b"SQLite format 3\0" {
        return Err(error(format!(
            "`{}` is not a kluis backup (not an SQLite database)",
            args.backup.display()
        )));
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let partial = partial_path(target);
    let mut file = options
        .open(&partial)
        .map_err(|e| error(format!("cannot create `{}`: {e}", partial.display())))?;
    *made_store = true;
    let cannot_write =
        |e: std::io::Error| error(format!("cannot write `{}`: {e}", partial.display()));
    file.write_all(&header).map_err(cannot_write)?;
    let mut bytes = header.len() as u64;
    let mut piece = vec![0u8; COPY_PIECE];
    loop {
        let n = match backup.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(cannot_read(e)),
        };
        // `read` returns at most the piece's length.
        let read = piece.get(..n).unwrap_or_default();
        file.write_all(read).map_err(cannot_write)?;
        bytes += n as u64;
        match total {
            // A pipe: its size is not known before its end.
            0 => bar.update(bytes, bytes, format_args!("copied {}", size(bytes))),
            _ => bar.update(
                bytes,
                total,
                format_args!("copied {} of {}", size(bytes), size(total)),
            ),
        }
    }
    file.sync_all().map_err(cannot_write)?;
    drop(file);
    // Whole and on disk before it takes the store's name (and the name on disk before the
    // checks that follow write beside it). A link, not a rename: a `kluis.db` another process
    // made meanwhile is not replaced (the link fails on it).
    // A file of a store put in the directory while the backup was copied (a log would be read
    // into the restored database as its own) is another's: refused and left as it is.
    let meanwhile: Vec<PathBuf> = present(&store_paths(target))
        .into_iter()
        .filter(|p| *p != partial)
        .collect();
    if !meanwhile.is_empty() {
        let _ = std::fs::remove_file(&partial);
        *made_store = false;
        return Err(error(format!(
            "`{}` was made by another process while this restore copied the backup; nothing \
             was restored: restore into a new data directory",
            meanwhile
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join("`, `")
        )));
    }
    if let Err(e) = mark(target) {
        // Its name taken meanwhile (another's, not this restore's to remove), or no room.
        let _ = std::fs::remove_file(&partial);
        *made_store = false;
        return Err(e);
    }
    let linked = match std::fs::hard_link(&partial, target) {
        Ok(()) => std::fs::remove_file(&partial),
        // A file system without links: the name is free (checked at the start).
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists && !target.exists() => {
            std::fs::rename(&partial, target)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another's database, made meanwhile: not this restore's to remove.
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(kluis::store::sqlite::restoring_path(target));
            *made_store = false;
            return Err(error(format!(
                "`{}` was made by another process while this restore copied the backup; \
                 nothing was restored: restore into a new data directory",
                target.display()
            )));
        }
        Err(e) => Err(e),
    };
    linked.and_then(|()| sync_dir(target)).map_err(|e| {
        error(format!(
            "cannot put `{}` in place as `{}`: {e}",
            partial.display(),
            target.display()
        ))
    })?;
    bar.step(format_args!(
        "copy complete ({bytes} bytes); checking the database (SQLite's integrity check, its \
         trail moved into a file of its own, the schema)"
    ));
    let check: String = rusqlite::Connection::open(target)
        .and_then(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get(0)))
        .map_err(|e| match e.sqlite_error_code() {
            // Its header is SQLite's (checked above): the rest is not.
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => (
                Exit::CheckFailed,
                format!(
                    "the backup is damaged ({e}): it was cut short or changed after it was \
                     taken; restore an earlier backup"
                ),
            ),
            _ => error(format!("the backup does not open as a database: {e}")),
        })?;
    if check != "ok" {
        return Err((Exit::CheckFailed, format!("the backup is damaged: {check}")));
    }
    // The file is a sound database (checked above) that restore made itself: what keeps it
    // from opening as a store (its mark behind its trail's, a value of another type) is in its
    // content, put there after kluis wrote it.
    let store = config::open_restored_store(
        &args.data_dir,
        kluis::store::sqlite::DEFAULT_READ_CACHE_MIB,
    )
    .map_err(|e| match e {
        config::OpenError::Store {
            source:
                StoreError::Config(why)
                | StoreError::Corrupt(why)
                | StoreError::RolledBack(why)
                | StoreError::Refused(why),
            ..
        } => (
            Exit::CheckFailed,
            format!(
                "the backup does not open as the store kluis wrote ({why}): it was edited after \
                 it was taken, or the store it came from was; restore an earlier backup"
            ),
        ),
        e => error(e.to_string()),
    })?;
    // The schema the migrations made, and SQLite's own check of both files: a trigger, view,
    // table or column added by hand, a table rebuilt without its constraints, is refused here
    // as `serve` would refuse to write on it.
    let problems = store
        .structure_problems()
        .map_err(|e| error(format!("cannot check the backup's structure: {e}")))?;
    if !problems.is_empty() {
        return Err((
            Exit::CheckFailed,
            format!(
                "the backup's database was changed outside kluis ({}): it was edited after it \
                 was taken, or the store it came from was; restore an earlier backup",
                problems.join("; ")
            ),
        ));
    }
    let source = match (&args.key_file, &args.passphrase_file) {
        (Some(k), _) => Some(KeySource::KeyFile(k.clone())),
        (None, Some(p)) => Some(KeySource::PassphraseFile(p.clone())),
        (None, None) => None,
    };
    let Some(source) = source else {
        return match Keyring::is_initialized(store.as_ref()) {
            Ok(true) => Ok((bytes, None)),
            _ => Err(error("the backup holds no initialised kluis store".into())),
        };
    };
    bar.step(format_args!(
        "the database is sound; opening it with the root key, then verifying its audit trail \
         (every entry's hash and MAC)"
    ));
    let secret =
        config::read_secret(&source, &SystemEnv, false).map_err(|e| error(e.to_string()))?;
    let store: Arc<dyn Store> = store;
    let keyring =
        Keyring::unseal(Arc::clone(&store), &secret, Algorithm::default(), 16).map_err(|e| {
            (
                Exit::CheckFailed,
                format!("the root key does not open this backup: {e}"),
            )
        })?;
    let entries = check_trail(store, &keyring, expect_head)?;
    Ok((bytes, Some(entries)))
}

/// With the root key, the backup's audit trail is verified as `kluis admin audit verify` does
/// (every entry's hash, MAC and place in the chain): a backup whose trail was edited (an
/// access deleted from it, an entry retyped) is refused before it is served, not found later.
fn check_trail(
    store: Arc<dyn Store>,
    keyring: &Keyring,
    expect_head: Option<&Head>,
) -> Result<u64, (Exit, String)> {
    // What a broken trail may come from, and what to do about each.
    const WHAT_TO_DO: &str = "the backup was edited or damaged after it was taken, or the \
        store it came from had a broken trail already (`kluis admin audit verify` there says \
        so), or (where entries are missing from its end) the head given is of a later backup \
        than this one; restore an earlier backup, or restore this one without the root key to \
        keep it as it is and investigate";
    let key = keyring.audit_key().map_err(|e| {
        (
            Exit::CheckFailed,
            format!("the backup's audit key does not open ({e}): {WHAT_TO_DO}"),
        )
    })?;
    let audit = Audit::open(store, key, keyring.store_id()).map_err(|e| match e {
        AuditError::Store(StoreError::Corrupt(why)) => (
            Exit::CheckFailed,
            format!("the backup's audit trail does not open ({why}): {WHAT_TO_DO}"),
        ),
        e => (
            Exit::Error,
            format!("cannot read the backup's audit trail: {e}"),
        ),
    })?;
    // A head that is not this store's, or not as kluis MAC'd it, says nothing of the backup:
    // most likely a line copied short or from elsewhere.
    if let Some(Verification::Broken { problem, .. }) =
        expect_head.and_then(|head| audit.refuse_anchor(head))
    {
        return Err((
            Exit::CheckFailed,
            format!(
                "the head given does not vouch for this backup ({problem}): give the whole line \
                 `kluis admin backup` printed for this backup, as it printed it; nothing was \
                 restored"
            ),
        ));
    }
    match audit.verify(expect_head) {
        Ok(Verification::Intact { count, .. }) => match expect_head {
            // A backup's own head names its last entry. One short of it is another backup's
            // (an earlier one's) and vouches only for the entries up to it: a later backup cut
            // back to past that entry would pass it.
            Some(head) if head.seq < count => Err((
                Exit::CheckFailed,
                format!(
                    "the backup's audit trail goes on past the head given (it ends at entry \
                     {count}, the head names entry {}): the head is of an earlier backup of this \
                     store, not the line `kluis admin backup` printed for this one; give that \
                     line; nothing was restored",
                    head.seq
                ),
            )),
            _ => Ok(count),
        },
        Ok(Verification::Broken { seq, problem }) => Err((
            Exit::CheckFailed,
            format!("the backup's audit trail is broken at entry {seq} ({problem}): {WHAT_TO_DO}"),
        )),
        Err(AuditError::Store(StoreError::Corrupt(why))) => Err((
            Exit::CheckFailed,
            format!("the backup's audit trail cannot be read ({why}): {WHAT_TO_DO}"),
        )),
        Err(e) => Err((
            Exit::Error,
            format!("cannot verify the backup's audit trail: {e}"),
        )),
    }
}
