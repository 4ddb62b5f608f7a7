//! What lies on disk: no plaintext anywhere in the SQLite files, and tampered or moved
//! ciphertexts give DATA_LOSS, never wrong plaintext.

use kluis::domain::Role;
use rusqlite::{Connection, params};
use tonic::Code;

use crate::common::*;

const DISTINCTIVE: &str = "Diagnose-ZX81-rolstoeltoegankelijk-douche";

fn read_all_db_files(server: &TestServer) -> Vec<u8> {
    store_file_bytes(&server.db_path())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn sqlite_files_hold_no_plaintext() {
    let server = TestServer::start().await;
    let id = put(
        &server,
        Role::AdaptationAdvisor,
        ctx("home-adaptation", "WA-2026-7", "adaptation request"),
        "REL-0500",
        vec![
            text("diagnosis", "medical", DISTINCTIVE),
            text("name", "identity", "Mevrouw K. Distinctiefnaam"),
        ],
    )
    .await;
    // The value reads back, so it really was stored.
    let resp = get(
        &server,
        server.token(Role::AdaptationAdvisor),
        ctx("home-adaptation", "WA-2026-7", "visit"),
        &id,
    )
    .await
    .unwrap();
    assert_eq!(text_of(field(&resp, "diagnosis").unwrap()), DISTINCTIVE);
    let dir = server.dir.clone();
    let db = server.db_path();
    let tmp = server.stop().await;
    let bytes = store_file_bytes(&db);
    assert!(bytes.len() > 4096, "the database files were read");
    assert!(
        !contains(&bytes, DISTINCTIVE.as_bytes()),
        "plaintext found in the SQLite files"
    );
    assert!(
        !contains(&bytes, b"Distinctiefnaam"),
        "plaintext found in the SQLite files"
    );
    // Nothing else in the data directory holds it either.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let b = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!contains(&b, DISTINCTIVE.as_bytes()));
    }
    drop(tmp);
}

async fn two_records(server: &TestServer) -> (String, String) {
    let a = put(
        server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-0601",
        vec![
            text("phone", "contact", "06-10000001"),
            text("email", "contact", "a@example.nl"),
        ],
    )
    .await;
    let b = put(
        server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-0602",
        vec![text("phone", "contact", "06-20000002")],
    )
    .await;
    (a, b)
}

fn sealed(conn: &Connection, record: &str, name: &str) -> Vec<u8> {
    conn.query_row(
        "SELECT sealed FROM fields WHERE record_id = ?1 AND name = ?2",
        params![record, name],
        |r| r.get(0),
    )
    .unwrap()
}

fn overwrite(conn: &Connection, record: &str, name: &str, value: &[u8]) {
    let n = conn
        .execute(
            "UPDATE fields SET sealed = ?3 WHERE record_id = ?1 AND name = ?2",
            params![record, name, value],
        )
        .unwrap();
    assert_eq!(n, 1);
}

async fn assert_data_loss(server: &TestServer, record: &str) {
    let status = get(
        server,
        server.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        record,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
}

#[tokio::test]
async fn read_of_untampered_records_succeeds() {
    let server = TestServer::start().await;
    let (a, b) = two_records(&server).await;
    for id in [a, b] {
        get(
            &server,
            server.token(Role::NuisanceOfficer),
            nuisance_ctx(),
            &id,
        )
        .await
        .unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn flipped_ciphertext_byte_gives_data_loss() {
    let server = TestServer::start().await;
    let (a, _) = two_records(&server).await;
    let conn = Connection::open(server.db_path()).unwrap();
    let mut value = sealed(&conn, &a, "phone");
    let last = value.len() - 1;
    value[last / 2] ^= 0x20;
    overwrite(&conn, &a, "phone", &value);
    assert_data_loss(&server, &a).await;
    server.stop().await;
}

#[tokio::test]
async fn ciphertext_copied_to_another_field_gives_data_loss() {
    let server = TestServer::start().await;
    let (a, _) = two_records(&server).await;
    let conn = Connection::open(server.db_path()).unwrap();
    let phone = sealed(&conn, &a, "phone");
    overwrite(&conn, &a, "email", &phone);
    assert_data_loss(&server, &a).await;
    server.stop().await;
}

#[tokio::test]
async fn ciphertext_copied_to_another_subject_gives_data_loss() {
    let server = TestServer::start().await;
    let (a, b) = two_records(&server).await;
    let conn = Connection::open(server.db_path()).unwrap();
    let phone_a = sealed(&conn, &a, "phone");
    overwrite(&conn, &b, "phone", &phone_a);
    assert_data_loss(&server, &b).await;
    server.stop().await;
}

#[tokio::test]
async fn changed_category_or_kind_in_the_store_gives_data_loss() {
    let server = TestServer::start().await;
    let (a, _) = two_records(&server).await;
    let conn = Connection::open(server.db_path()).unwrap();
    conn.execute(
        "UPDATE fields SET kind = 'binary' WHERE record_id = ?1 AND name = 'phone'",
        [&a],
    )
    .unwrap();
    assert_data_loss(&server, &a).await;
    server.stop().await;
    let _ = read_all_db_files;
}

/// The transactions committed to the write-ahead log of `server`'s database since the log last
/// started over, with the salt that tells one start of the log from the next: frames whose
/// header marks a commit, as SQLite writes them (`wal.c`: a 32-byte log header, then frames of
/// a 24-byte header and a page; a commit frame names the database's size, and every frame of
/// the current log carries the log header's salt).
fn wal_commits(server: &TestServer) -> (Vec<u8>, [u64; 2]) {
    let mut salts = Vec::new();
    let mut counts = [0; 2];
    for (file, count) in [server.db_path(), server.trail_path()]
        .iter()
        .zip(&mut counts)
    {
        let wal = std::fs::read(format!("{}-wal", file.display())).unwrap_or_default();
        if wal.len() < 32 {
            continue;
        }
        let word = |at: usize| u32::from_be_bytes(wal[at..at + 4].try_into().unwrap());
        let page = match word(8) {
            1 => 65_536,
            n => n as usize,
        };
        let salt = &wal[16..24];
        let mut at = 32;
        while at + 24 + page <= wal.len() && &wal[at + 8..at + 16] == salt {
            if word(at + 4) != 0 {
                *count += 1;
            }
            at += 24 + page;
        }
        salts.extend_from_slice(salt);
    }
    (salts, counts)
}

/// The commits of the database's file and of the trail's that a `put` of the record
/// `subject(i)` gives, in the try of ten with the fewest. The server's own background work (a
/// job taking and giving back its lease) may commit while a put runs, so a try can only count
/// more than the put's own commits, never fewer; a try over which a log started over (another
/// salt) does not count.
async fn commits_of_a_put(server: &TestServer, subject: impl Fn(usize) -> String) -> [u64; 2] {
    // The key jobs a server resumes when it starts take and give back a lease per purpose,
    // commits of their own: wait (up to 20 s) until the logs have seen none for 300 ms.
    let started = std::time::Instant::now();
    let mut last = wal_commits(server);
    while started.elapsed() < std::time::Duration::from_secs(20) {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = wal_commits(server);
        if now == last {
            break;
        }
        last = now;
    }
    let mut fewest: Option<[u64; 2]> = None;
    let mut tries = Vec::new();
    for i in 0..10 {
        let (salt, before) = wal_commits(server);
        put(
            server,
            Role::NuisanceOfficer,
            nuisance_ctx(),
            &subject(i),
            vec![text("statement", "nuisance-evidence", "geluidsoverlast")],
        )
        .await;
        let (salt_after, after) = wal_commits(server);
        tries.push((before, after));
        if salt.len() == 16 && salt == salt_after && after[0] >= before[0] && after[1] >= before[1]
        {
            let made = [after[0] - before[0], after[1] - before[1]];
            if fewest.is_none_or(|f| made.iter().sum::<u64>() < f.iter().sum::<u64>()) {
                fewest = Some(made);
            }
        }
    }
    if fewest != Some([1, 1]) {
        // What else was committed meanwhile, for the failure's message.
        let actions: Vec<String> = audit_entries(server)
            .iter()
            .rev()
            .take(8)
            .map(|e| format!("{} {}", e["action"], e["decision"]))
            .collect();
        eprintln!("log commits before and after each put: {tries:?}; last entries: {actions:?}");
    }
    fewest.expect("a try over which neither log started over")
}

#[tokio::test]
async fn a_record_and_its_audit_entry_are_stored_in_one_commit() {
    let server = TestServer::start().await;
    // Warm: the caller's token and the purpose key are in use already.
    put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-3000",
        vec![text("statement", "nuisance-evidence", "melding")],
    )
    .await;
    // A subject's first record: its subject key, its anchor, the record and the entry, in
    // one transaction: one commit in each file, the trail's first.
    assert_eq!(
        commits_of_a_put(&server, |i| format!("REL-31{i:02}")).await,
        [1, 1]
    );
    // A record of a subject with a key.
    assert_eq!(
        commits_of_a_put(&server, |_| "REL-3000".into()).await,
        [1, 1]
    );
    // And everything is where it belongs: the records open, each write on the trail once.
    let entries = audit_entries(&server);
    let writes = entries
        .iter()
        .filter(|e| e["action"] == "write" && e["decision"] == "allow")
        .count();
    assert_eq!(writes, 21);
    let id = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-3200",
        vec![text("statement", "nuisance-evidence", "melding")],
    )
    .await;
    let got = get(
        &server,
        server.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &id,
    )
    .await
    .unwrap();
    assert_eq!(text_of(&got.fields[0]), "melding");
}
