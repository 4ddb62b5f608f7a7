//! Backup and restore: an online snapshot taken while writes go on, restored into a new data
//! directory with `kluis restore`, served with the same root key: everything written before the
//! backup reads back, the trail verifies, and the backup holds no plaintext.

use std::{
    os::unix::fs::PermissionsExt,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use kluis::{domain::Role, keys::RootSecret, pb};
use tonic::Code;

use crate::common::*;

async fn take_backup(server: &TestServer, role: Role) -> Result<Vec<u8>, tonic::Status> {
    let mut admin = server.admin().await;
    let mut stream = admin
        .backup(req(
            server.token(role),
            pb::BackupRequest {
                justification: "nightly".into(),
            },
        ))
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    let mut size = 0;
    while let Some(chunk) = stream.message().await? {
        if chunk.size > 0 {
            size = chunk.size;
        }
        bytes.extend_from_slice(&chunk.data);
    }
    assert_eq!(bytes.len() as u64, size);
    Ok(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_restores_into_a_server_that_reads_everything() {
    let server = TestServer::start().await;
    let mut before = Vec::new();
    for i in 0..40 {
        let value = format!("Backup-Waarde-{i:03}");
        let id = put(
            &server,
            Role::NuisanceOfficer,
            nuisance_ctx(),
            &format!("REL-B{}", i % 5),
            vec![text("phone", "contact", &value)],
        )
        .await;
        before.push((id, value));
    }
    let evidence = upload(
        &server,
        server.token(Role::NuisanceOfficer),
        evidence_start(
            nuisance_ctx(),
            "REL-B1",
            "",
            "clip",
            "video/mp4",
            "trap.mp4",
        ),
        77,
        200_000,
        65_536,
    )
    .await
    .unwrap();

    // Writes go on while the snapshot is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, token, addr) = (
            Arc::clone(&stop),
            server.token(Role::NuisanceOfficer).to_owned(),
            server.addr,
        );
        tokio::spawn(async move {
            let mut client = pb::vault_client::VaultClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                client
                    .put_record(req(
                        &token,
                        pb::PutRecordRequest {
                            context: nuisance_ctx(),
                            subject_id: "REL-BUSY".into(),
                            fields: vec![text("phone", "contact", &format!("busy-{n}"))],
                            labels: Default::default(),
                        },
                    ))
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let backup = take_backup(&server, Role::SecurityOfficer).await.unwrap();
    stop.store(true, Ordering::SeqCst);
    assert!(
        writer.await.unwrap() > 0,
        "writes went on during the backup"
    );

    // Only the security officer takes backups.
    for role in [Role::PrivacyOfficer, Role::NuisanceOfficer] {
        let status = take_backup(&server, role).await.err().unwrap();
        assert_eq!(status.code(), Code::PermissionDenied, "{role}");
    }
    // No plaintext in it.
    for (_, value) in &before {
        assert!(
            !backup.windows(value.len()).any(|w| w == value.as_bytes()),
            "{value} lies in the backup in clear"
        );
    }
    assert!(!backup.windows(8).any(|w| w == b"trap.mp4"));

    let tmp = private_tempdir();
    let file = tmp.path().join("kluis.backup");
    std::fs::write(&file, &backup).unwrap();
    let key = server.dir.join("root.key");
    let new_dir = tmp.path().join("restored");
    let restore_with = |dir: &std::path::Path, key: &std::path::Path| {
        restore_cli(&file, dir, &["--key-file", key.to_str().unwrap(), "--json"])
    };
    let restore = |dir: &std::path::Path| restore_with(dir, &key);
    let out = restore(&new_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["root_key_checked"], true);
    assert_eq!(summary["trail_verified"], true);
    // Never over an existing store; never with the wrong key; never from a file that is not one.
    let again = restore(&new_dir);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("holds a store already"));
    let other_key = tmp.path().join("other.key");
    RootSecret::create_key_file(&other_key).unwrap();
    let wrong = restore_with(&tmp.path().join("wrong").join("a").join("b"), &other_key);
    assert_eq!(wrong.status.code(), Some(4));
    // Nothing half-restored is left: neither the database nor the trail's file it was moving
    // the backup's trail into, nor the directories the restore made (a missing parent too).
    assert!(!tmp.path().join("wrong").exists());
    // Into a directory that was there: it stays, as it was.
    let kept = tmp.path().join("kept");
    std::fs::create_dir(&kept).unwrap();
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(kept.join("notes.txt"), b"mine").unwrap();
    let wrong = restore_with(&kept, &other_key);
    assert_eq!(wrong.status.code(), Some(4));
    let left: Vec<_> = std::fs::read_dir(&kept)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["notes.txt"]);
    // A directory open to others, which `serve` would refuse, is refused before anything is
    // written into it; the twin: the same directory closed restores.
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let refused = restore(&open);
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("chmod 700"), "{said}");
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(restore(&open).status.success());
    // A log file left beside where the database goes (it would be read into the restored
    // database as its own) is refused, and left as it was.
    // So is an older store's evidence directory, whose files opening the restored store would
    // sweep as named by no row of it.
    for stale in [
        "kluis.db-wal",
        "kluis.db.trail-shm",
        "kluis.db-journal",
        "kluis.db.evidence",
    ] {
        let dir = tmp.path().join(format!("stale-{stale}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        if stale.ends_with(".evidence") {
            std::fs::create_dir(dir.join(stale)).unwrap();
            std::fs::write(dir.join(stale).join("ev_old"), b"old pages").unwrap();
        } else {
            std::fs::write(dir.join(stale), b"old pages").unwrap();
        }
        let refused = restore(&dir);
        assert_eq!(refused.status.code(), Some(1));
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(
            said.contains("holds a store already") && said.contains(stale),
            "{said}"
        );
        let kept = if stale.ends_with(".evidence") {
            dir.join(stale).join("ev_old")
        } else {
            dir.join(stale)
        };
        assert_eq!(std::fs::read(kept).unwrap(), b"old pages");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    // A backup whose trail was edited after it was taken (an access deleted from it, an
    // entry's text changed) is refused with the key, and nothing of it is left; so is one
    // whose schema was changed (a trigger added, the trail's table rebuilt without its
    // constraints). The twin, the same backup untouched, restored above.
    for (edit, sql, expect) in [
        (
            "an entry deleted",
            "DELETE FROM audit WHERE seq = 3",
            "audit trail is broken at entry",
        ),
        (
            "an entry's text changed",
            "UPDATE audit SET entry = entry || X'20' WHERE seq = 3",
            "audit trail is broken at entry",
        ),
        (
            "a copy of an entry numbered below 1",
            "INSERT INTO audit SELECT -5, entry, prev_hash, hash, mac FROM audit WHERE seq = 3",
            "numbered below 1",
        ),
        (
            "a trigger added",
            "CREATE TRIGGER quiet BEFORE INSERT ON audit BEGIN SELECT RAISE(IGNORE); END",
            "changed outside kluis",
        ),
        (
            "the trail's index by subject dropped",
            "DROP TABLE audit_runs",
            "does not open as the store kluis wrote",
        ),
        (
            "the trail's mark dropped",
            "DROP TABLE trail_mark",
            "does not open as the store kluis wrote",
        ),
        (
            "the store's mark taken back below its trail's",
            "DELETE FROM meta WHERE key = 'store_mark'",
            "does not open as the store kluis wrote",
        ),
        (
            "the trail's table rebuilt without its constraints",
            "CREATE TABLE loose (seq INTEGER PRIMARY KEY, entry, prev_hash, hash, mac); \
             INSERT INTO loose SELECT * FROM audit; DROP TABLE audit; \
             ALTER TABLE loose RENAME TO audit; UPDATE audit SET mac = NULL WHERE seq = 3",
            "changed outside kluis",
        ),
    ] {
        let edited = tmp.path().join("edited.backup");
        std::fs::write(&edited, &backup).unwrap();
        let db = rusqlite::Connection::open(&edited).unwrap();
        db.execute_batch(sql).unwrap();
        assert!(
            db.total_changes() > 0 || edit.contains("trigger") || edit.contains("dropped"),
            "{edit}"
        );
        drop(db);
        let dir = tmp.path().join("from-edited");
        let out = restore_cli(&edited, &dir, &["--key-file", key.to_str().unwrap()]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{edit}: {said}");
        assert!(said.contains(expect), "{edit}: {said}");
        assert!(
            !dir.exists(),
            "{edit}: a refused restore left its directory"
        );
    }

    let tokens_from = server.token(Role::NuisanceOfficer).to_owned();
    let secret = RootSecret::read_key_file(&key).unwrap();
    let restored = TestServer::open(&new_dir, &secret).await.unwrap();
    // The backup's trail is as new as its records (the snapshot reads the store's file first,
    // and a write's entry is durable before the write): every record is on it.
    assert_eq!(
        records_off_the_trail(&restored.db_path()),
        Vec::<String>::new()
    );
    for (id, value) in &before {
        let resp = get(&restored, &tokens_from, nuisance_ctx(), id)
            .await
            .unwrap();
        assert_eq!(text_of(&resp.fields[0]), value);
    }
    let (_, bytes) = download(
        &restored,
        &tokens_from,
        nuisance_ctx(),
        &evidence.evidence_id,
        None,
    )
    .await
    .unwrap();
    assert_eq!(bytes, file_bytes(77, 0, 200_000));
    // The backup is one file: it holds the segments the store kept in files beside it (the
    // download above is from the restored store, which has no segment file).
    assert!(segment_files(&server.db_path()).contains(&evidence.evidence_id));
    assert!(matches!(
        restored.vault.audit().verify(None).unwrap(),
        kluis::audit::Verification::Intact { .. }
    ));
    restored.stop().await;
    server.stop().await;
}

/// Runs `kluis restore BACKUP --data-dir DIR` with `extra` options.
fn restore_cli(
    backup: &std::path::Path,
    dir: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kluis"))
        .arg("restore")
        .arg(backup)
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env("KLUIS_LOG", "warn")
        .output()
        .unwrap()
}

/// Restores `backup` into a new directory with `extra` options and checks it was refused with
/// exit 4, saying `expect`, with nothing left behind; `what` names the case.
fn assert_refused(
    backup: &std::path::Path,
    dir: &std::path::Path,
    extra: &[&str],
    expect: &str,
    what: &str,
) {
    let out = restore_cli(backup, dir, extra);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{what}: {said}");
    assert!(said.contains(expect), "{what}: {said}");
    assert!(
        !dir.exists(),
        "{what}: a refused restore left its directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_checked_against_the_backups_head_finds_entries_cut_from_its_end() {
    let server = TestServer::start().await;
    for i in 0..4 {
        put(
            &server,
            Role::NuisanceOfficer,
            nuisance_ctx(),
            &format!("REL-07{i}"),
            vec![text("note", "nuisance-evidence", "noise at night")],
        )
        .await;
    }
    let tmp = private_tempdir();
    let backup = tmp.path().join("kluis.backup");
    // Writes go on while the backups are taken: each head must be that of the trail its
    // snapshot holds, not the live trail's a moment later.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, mut client) = (Arc::clone(&stop), server.client().await);
        let token = server.token(Role::NuisanceOfficer).to_owned();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                client
                    .put_record(req(
                        &token,
                        pb::PutRecordRequest {
                            context: nuisance_ctx(),
                            subject_id: format!("REL-08{n}"),
                            fields: vec![text("phone", "contact", "06-2")],
                            labels: Default::default(),
                        },
                    ))
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let admin = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_kluis"))
            .args(["admin", "--server", &format!("http://{}", server.addr)])
            .args(args)
            .env("KLUIS_TOKEN", server.token(Role::SecurityOfficer))
            .env("KLUIS_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = admin(&["backup".as_ref(), backup.as_os_str(), "--json".as_ref()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let taken: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let head = taken["trail_head"].as_str().unwrap().to_owned();
    let seq: u64 = head.split(':').next().unwrap().parse().unwrap();
    assert!(seq >= 4, "{head}");
    // Said to a person too, with what to do with it.
    let out = admin(&[
        "backup".as_ref(),
        tmp.path().join("second.backup").as_os_str(),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("its audit trail ends at") && said.contains("--expect-head"),
        "{said}"
    );
    // A later backup, of a longer trail.
    let later = tmp.path().join("later.backup");
    let out = admin(&["backup".as_ref(), later.as_os_str(), "--json".as_ref()]);
    let taken: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let later_head = taken["trail_head"].as_str().unwrap().to_owned();
    stop.store(true, Ordering::SeqCst);
    assert!(
        writer.await.unwrap() > 0,
        "writes went on during the backups"
    );
    let key = server.dir.join("root.key");
    let key = key.to_str().unwrap();

    // The earlier backup put in place of the later one and restored against the later head:
    // the entries between the two are missing from its end.
    assert_refused(
        &backup,
        &tmp.path().join("from-earlier"),
        &["--key-file", key, "--expect-head", &later_head],
        "removed from the tail",
        "an earlier backup against a later head",
    );
    // The later backup against the earlier head, as it is and cut back to just past that head:
    // the head is not its own, and vouches for neither.
    let cut = tmp.path().join("later-cut.backup");
    std::fs::copy(&later, &cut).unwrap();
    let db = rusqlite::Connection::open(&cut).unwrap();
    db.execute("DELETE FROM audit WHERE seq > ?1 + 1", [seq])
        .unwrap();
    drop(db);
    for file in [&later, &cut] {
        assert_refused(
            file,
            &tmp.path().join("from-later"),
            &["--key-file", key, "--expect-head", &head],
            "goes on past the head given",
            "a later backup against an earlier head",
        );
    }

    // Entries cut from the end, the whole trail emptied, rows the check below 1 and the chain
    // cannot see missing: each is found against the head, with exit 4, and nothing is left.
    for (edit, sql) in [
        (
            "the last entry cut",
            "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)",
        ),
        (
            "the last three entries cut",
            "DELETE FROM audit WHERE seq > (SELECT max(seq) - 3 FROM audit)",
        ),
        ("the whole trail emptied", "DELETE FROM audit"),
    ] {
        let edited = tmp.path().join("edited.backup");
        std::fs::copy(&backup, &edited).unwrap();
        let db = rusqlite::Connection::open(&edited).unwrap();
        db.execute_batch(sql).unwrap();
        assert!(db.total_changes() > 0, "{edit}");
        drop(db);
        assert_refused(
            &edited,
            &tmp.path().join("from-edited"),
            &["--key-file", key, "--expect-head", &head],
            &format!("the anchored head is entry {seq}: entries were removed from the tail"),
            edit,
        );
    }

    // A head that is not this backup's: another store's id, a MAC changed, an entry further
    // on than the backup holds (its MAC then does not match).
    let mut parts: Vec<String> = head.split(':').map(str::to_owned).collect();
    let flip = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        b[0] = if b[0] == b'0' { b'1' } else { b'0' };
        String::from_utf8(b).unwrap()
    };
    let mut heads = Vec::new();
    for (what, i) in [
        ("another store's id", 3),
        ("a changed MAC", 2),
        ("a changed hash", 1),
    ] {
        let kept = parts[i].clone();
        parts[i] = flip(&kept);
        heads.push((what, parts.join(":")));
        parts[i] = kept;
    }
    heads.push((
        "an entry further on",
        format!("{}:{}", seq + 1, parts[1..].join(":")),
    ));
    for (what, forged) in heads {
        assert_refused(
            &backup,
            &tmp.path().join("from-forged"),
            &["--key-file", key, "--expect-head", &forged],
            "the head given does not vouch for this backup",
            what,
        );
    }

    // The command line: a head without the key that checks it, or one that is no head, is a
    // usage error before anything is written.
    for (what, extra) in [
        ("no key", vec!["--expect-head", head.as_str()]),
        (
            "not a head",
            vec!["--key-file", key, "--expect-head", "12:abc"],
        ),
    ] {
        let dir = tmp.path().join("from-usage");
        let out = restore_cli(&backup, &dir, &extra);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!dir.exists(), "{what}");
    }

    // A backup cut short is damaged: a check that failed (exit 4), nothing left behind.
    let bytes = std::fs::read(&backup).unwrap();
    let short = tmp.path().join("short.backup");
    std::fs::write(&short, &bytes[..bytes.len() / 2]).unwrap();
    assert_refused(
        &short,
        &tmp.path().join("from-short"),
        &["--key-file", key],
        "the backup is damaged",
        "cut short",
    );

    // The twin: the untouched backup restores against its head, and says so.
    let dir = tmp.path().join("restored");
    let out = restore_cli(
        &backup,
        &dir,
        &["--key-file", key, "--expect-head", &head, "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["trail_verified"], true);
    assert_eq!(summary["trail_head_checked"], true);
    assert_eq!(summary["trail_entries"], seq);
    // `--json` keeps stderr for errors; a person is told each step as it begins.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("restore:"), "{said}");
    let dir = tmp.path().join("restored-by-hand");
    let out = restore_cli(&backup, &dir, &["--key-file", key, "--expect-head", &head]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    for step in [
        "restore: copied ",
        "checking the database",
        "verifying its audit trail",
    ] {
        assert!(said.contains(step), "{step}: {said}");
    }
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("its audit trail verifies, ending at the head given"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Starts `kluis restore` of a FIFO into `tmp/restored` and feeds it the start of a database,
/// then nothing more: returns once the copy has begun and waits for the rest (the restore, the
/// FIFO's open end, and the data directory).
fn restore_paused(
    tmp: &std::path::Path,
) -> (std::process::Child, std::fs::File, std::path::PathBuf) {
    use std::io::Write;
    let fifo = tmp.join("backup.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let dir = tmp.join("restored");
    let restore = Command::new(env!("CARGO_BIN_EXE_kluis"))
        .arg("restore")
        .arg(&fifo)
        .arg("--data-dir")
        .arg(&dir)
        .env("KLUIS_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut feed = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    feed.write_all(b"SQLite format 3\0").unwrap();
    feed.write_all(&vec![7u8; 64 * 1024]).unwrap();
    // Under either name: a restore that copied straight to `kluis.db` is caught below, not here.
    let copied = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while copied("kluis.db.partial").max(copied("kluis.db")) < 16 {
        assert!(
            std::time::Instant::now() < deadline,
            "the restore did not start its copy"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (restore, feed, dir)
}

/// A restore stopped while it copies (killed, interrupted, the power cut) leaves no `kluis.db`
/// that `serve` would open: the copy takes the store's name only once whole and on disk, and
/// what it left is named when a restore into the directory is tried again.
#[test]
fn a_restore_stopped_during_its_copy_leaves_no_store() {
    let tmp = private_tempdir();
    let (mut restore, feed, dir) = restore_paused(tmp.path());
    restore.kill().unwrap();
    restore.wait().unwrap();
    drop(feed);
    assert!(
        !dir.join("kluis.db").exists(),
        "a restore killed during its copy left a kluis.db"
    );
    // Not mistaken for a new directory: what is left is named, and nothing is overwritten.
    let backup = tmp.path().join("kluis.backup");
    std::fs::write(&backup, b"SQLite format 3\0").unwrap();
    let out = restore_cli(&backup, &dir, &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("kluis.db.partial") && said.contains("delete it and restore again"),
        "{said}"
    );
}

/// A file of a store another process made in the directory while a restore copied its backup
/// (the database, a log that would be read into the copy as its own, a trail) is neither
/// replaced nor read in, nor removed when the restore gives up.
#[test]
fn a_restore_leaves_a_store_file_made_meanwhile_as_it_was() {
    for name in [
        "kluis.db",
        "kluis.db-wal",
        "kluis.db.trail",
        "kluis.db-journal",
    ] {
        let tmp = private_tempdir();
        let (restore, feed, dir) = restore_paused(tmp.path());
        std::fs::write(dir.join(name), b"another's").unwrap();
        drop(feed);
        let out = restore.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {said}");
        assert!(said.contains("made by another process"), "{name}: {said}");
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap(),
            b"another's",
            "{name}"
        );
        assert!(
            !dir.join("kluis.db.partial").exists(),
            "{name}: the restore left its copy"
        );
        if name != "kluis.db" {
            assert!(!dir.join("kluis.db").exists(), "{name}: restored beside it");
        }
    }
}

/// Runs `kluis ARGS` until it exits, or (a `serve` that starts) until it says it listens, when
/// it is stopped: the exit code is then `None`, and stderr holds what it said until then.
fn run_until_it_stops(args: &[&std::ffi::OsStr]) -> std::process::Output {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kluis"))
        .args(args)
        .env("KLUIS_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut stderr = Vec::new();
    let mut line = String::new();
    while said.read_line(&mut line).unwrap() > 0 {
        stderr.extend_from_slice(line.as_bytes());
        if line.contains("kluis listening on") {
            child.kill().unwrap();
            break;
        }
        line.clear();
    }
    let status = child.wait().unwrap();
    std::io::Read::read_to_end(&mut said, &mut stderr).unwrap();
    std::process::Output {
        status,
        stdout: Vec::new(),
        stderr,
    }
}

/// A restore stopped during its checks (killed while it waits for the root key, after the
/// backup took the store's name and SQLite's checks passed) leaves a store that nothing opens:
/// `serve` and `init` refuse it with exit 4, naming what the restore left and what to do, and a
/// restore into the directory names it too. The twin: the same restore given the key ends its
/// checks and takes its mark away, and the store serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_stopped_during_its_checks_leaves_a_store_nothing_opens() {
    use std::io::{BufRead, Write};
    let server = TestServer::start().await;
    put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-0901",
        vec![text("note", "nuisance-evidence", "noise at night")],
    )
    .await;
    let bytes = take_backup(&server, Role::SecurityOfficer).await.unwrap();
    let tmp = private_tempdir();
    let key = tmp.path().join("root.key");
    std::fs::copy(server.dir.join("root.key"), &key).unwrap();
    let backup = tmp.path().join("kluis.backup");
    std::fs::write(&backup, &bytes).unwrap();
    server.stop().await;

    for given in [false, true] {
        let dir = tmp.path().join(format!("restored-{given}"));
        // The root key comes through a FIFO: the restore waits at it, its checks half done.
        let fifo = tmp.path().join(format!("root-{given}.key"));
        let made = Command::new("mkfifo")
            .args(["-m", "600"])
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let mut restore = Command::new(env!("CARGO_BIN_EXE_kluis"))
            .arg("restore")
            .arg(&backup)
            .arg("--data-dir")
            .arg(&dir)
            .arg("--key-file")
            .arg(&fifo)
            .env("KLUIS_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = std::io::BufReader::new(restore.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("opening it with the root key") {
            line.clear();
            assert!(
                said.read_line(&mut line).unwrap() > 0,
                "the restore ended before it asked for the key"
            );
        }
        assert!(dir.join("kluis.db").exists(), "{given}: no store in place");
        let restoring = dir.join("kluis.db.restoring");
        if given {
            let mut feed = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            feed.write_all(&std::fs::read(&key).unwrap()).unwrap();
            drop(feed);
            let status = restore.wait().unwrap();
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut said, &mut rest).unwrap();
            assert!(status.success(), "{rest}");
            assert!(!restoring.exists(), "a finished restore left its mark");
        } else {
            restore.kill().unwrap();
            restore.wait().unwrap();
            assert!(restoring.exists(), "nothing marks the store unchecked");
        }
        let serve = run_until_it_stops(&[
            "serve".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--data-dir".as_ref(),
            dir.as_os_str(),
            "--key-file".as_ref(),
            key.as_os_str(),
        ]);
        if given {
            // It started, and was stopped once it listened.
            assert_eq!(
                serve.status.code(),
                None,
                "{}",
                String::from_utf8_lossy(&serve.stderr)
            );
            continue;
        }
        let init = run_until_it_stops(&[
            "init".as_ref(),
            "--data-dir".as_ref(),
            dir.as_os_str(),
            "--key-file".as_ref(),
            key.as_os_str(),
        ]);
        for (what, out) in [("serve", &serve), ("init", &init)] {
            let said = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(4), "{what}: {said}");
            assert!(
                said.contains("kluis.db.restoring")
                    && said.contains("stopped before its checks")
                    && said.contains("restore the backup again"),
                "{what}: {said}"
            );
        }
        // A restore into it names what is there, and leaves it.
        let again = restore_cli(&backup, &dir, &["--key-file", key.to_str().unwrap()]);
        let said = String::from_utf8_lossy(&again.stderr);
        assert_eq!(again.status.code(), Some(1), "{said}");
        assert!(
            said.contains("stopped before its checks") && said.contains("delete the directory"),
            "{said}"
        );
        assert!(restoring.exists() && dir.join("kluis.db").exists());
    }
}
