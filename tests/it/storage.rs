//! What lies on disk: no plaintext anywhere in the SQLite files, and tampered or moved
//! ciphertexts give DATA_LOSS, never wrong plaintext.

use kluis::domain::Role;
use rusqlite::{Connection, params};
use tonic::Code;

use crate::common::*;

const DISTINCTIVE: &str = "Diagnose-ZX81-rolstoeltoegankelijk-douche";

fn read_all_db_files(server: &TestServer) -> Vec<u8> {
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", server.db_path().display());
        if let Ok(b) = std::fs::read(&path) {
            bytes.extend(b);
        }
    }
    bytes
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
    let bytes: Vec<u8> = ["", "-wal", "-shm"]
        .iter()
        .filter_map(|s| std::fs::read(format!("{}{s}", db.display())).ok())
        .flatten()
        .collect();
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
