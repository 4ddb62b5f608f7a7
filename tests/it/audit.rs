//! The audit trail over gRPC: entries for reads, writes and token issues; no values anywhere in
//! it; tamper detection against the real database file; fail-closed reads; export and the subject
//! access report for the privacy officer only.

use kluis::{domain::Role, pb};
use rusqlite::{Connection, params};
use tonic::Code;

use crate::common::*;

const SECRET_VALUE: &str = "Vechtpartij-trappenhuis-Q7Z3";

async fn some_traffic(server: &TestServer) -> String {
    let id = put(
        server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-1000",
        vec![
            text("statement", "nuisance-evidence", SECRET_VALUE),
            text("phone", "contact", "06-70707070"),
        ],
    )
    .await;
    get(
        server,
        server.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &id,
    )
    .await
    .unwrap();
    get(
        server,
        server.token(Role::CustomerService),
        ctx("customer-service", "", "caller asked"),
        &id,
    )
    .await
    .err()
    .unwrap();
    id
}

async fn verify(
    server: &TestServer,
    expect_head: Option<pb::AuditHead>,
) -> pb::VerifyAuditResponse {
    let mut admin = server.admin().await;
    admin
        .verify_audit(req(
            server.token(Role::SecurityOfficer),
            pb::VerifyAuditRequest { expect_head },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn head(server: &TestServer) -> pb::AuditHead {
    let mut admin = server.admin().await;
    admin
        .audit_head(req(
            server.token(Role::SecurityOfficer),
            pb::AuditHeadRequest {},
        ))
        .await
        .unwrap()
        .into_inner()
        .head
        .unwrap()
}

#[tokio::test]
async fn writes_reads_and_denials_are_recorded_with_their_context() {
    let server = TestServer::start().await;
    let id = some_traffic(&server).await;
    let entries = audit_entries(&server);
    let write = entries.iter().find(|e| e["action"] == "write").unwrap();
    assert_eq!(write["decision"], "allow");
    assert_eq!(write["principal"], "test-nuisance-officer");
    assert_eq!(write["purpose"], "nuisance");
    assert_eq!(write["case_ref"], "N-2026-0042");
    assert_eq!(write["subject"], "REL-1000");
    assert_eq!(write["record"], id);
    let names: Vec<&str> = write["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["statement", "phone"]);
    assert_eq!(write["fields"][0]["policies"][0], "nuisance-officer");

    let denied = entries
        .iter()
        .find(|e| e["action"] == "read" && e["decision"] == "deny")
        .unwrap();
    assert_eq!(denied["roles"][0], "customer-service");
    assert_eq!(denied["justification"], "caller asked");
    let policies: Vec<&str> = denied["fields"][0]["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(policies.contains(&"purpose-limitation"), "{policies:?}");
    assert!(entries.iter().any(|e| e["action"] == "token-issue"));
    server.stop().await;
}

#[tokio::test]
async fn the_audit_table_holds_no_values_or_tokens() {
    let server = TestServer::start().await;
    some_traffic(&server).await;
    let conn = Connection::open(server.trail_path()).unwrap();
    let mut stmt = conn
        .prepare("SELECT seq, entry, prev_hash, hash, mac FROM audit")
        .unwrap();
    let mut raw = Vec::new();
    let rows = stmt
        .query_map([], |r| {
            let mut v: Vec<u8> = r.get::<_, i64>(0)?.to_be_bytes().to_vec();
            for i in 1..5 {
                v.extend(r.get::<_, Vec<u8>>(i)?);
            }
            Ok(v)
        })
        .unwrap();
    for row in rows {
        raw.extend(row.unwrap());
    }
    assert!(raw.len() > 1000, "the audit table was read");
    let contains = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(SECRET_VALUE.as_bytes()));
    assert!(!contains(b"06-70707070"));
    for role in Role::ALL {
        assert!(
            !contains(server.token(*role).as_bytes()),
            "a token of {role} is in the trail"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn an_untouched_trail_verifies() {
    let server = TestServer::start().await;
    some_traffic(&server).await;
    let anchored = head(&server).await;
    let r = verify(&server, Some(anchored.clone())).await;
    assert!(r.intact, "{}", r.problem);
    assert!(r.count >= anchored.seq);
    server.stop().await;
}

/// Each tampering, done to the real database file, is caught and the entry named.
#[tokio::test]
async fn verify_detects_edited_deleted_swapped_and_inserted_entries() {
    type Tamper = fn(&Connection);
    let cases: [(&str, Tamper, u64); 7] = [
        (
            "edited",
            |c| {
                let n = c
                .execute("UPDATE audit SET entry = CAST(replace(CAST(entry AS TEXT), 'test-', 'evil-') AS BLOB) WHERE seq = 5", [])
                .unwrap();
                assert_eq!(n, 1);
            },
            5,
        ),
        // SQLite keeps a value of any type in any column: the same bytes stored as text, or
        // a MAC stored as a number, do not read as an entry at all.
        (
            "retyped",
            |c| {
                let n = c
                    .execute(
                        "UPDATE audit SET entry = CAST(entry AS TEXT) WHERE seq = 5",
                        [],
                    )
                    .unwrap();
                assert_eq!(n, 1);
            },
            5,
        ),
        (
            "mac as a number",
            |c| {
                let n = c
                    .execute("UPDATE audit SET mac = 7 WHERE seq = 6", [])
                    .unwrap();
                assert_eq!(n, 1);
            },
            6,
        ),
        (
            "deleted",
            |c| {
                c.execute("DELETE FROM audit WHERE seq = 4", []).unwrap();
            },
            4,
        ),
        (
            "swapped",
            |c| {
                c.execute_batch(
                    "UPDATE audit SET seq = -1 WHERE seq = 3;
                 UPDATE audit SET seq = 3 WHERE seq = 4;
                 UPDATE audit SET seq = 4 WHERE seq = -1;",
                )
                .unwrap();
            },
            3,
        ),
        (
            "inserted",
            |c| {
                // A forged entry chained correctly but MAC'd without the audit key.
                let (prev, seq): (Vec<u8>, i64) = c
                    .query_row("SELECT hash, seq FROM audit WHERE seq = 2", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .unwrap();
                c.execute("UPDATE audit SET seq = seq + 1000 WHERE seq > 2", [])
                    .unwrap();
                c.execute("UPDATE audit SET seq = seq - 999 WHERE seq > 1000", [])
                    .unwrap();
                let entry = br#"{"time":0,"principal":"nobody","roles":[],"token_id":"","action":"read","break_glass":false,"decision":"allow"}"#;
                use sha2::Digest;
                let mut h = sha2::Sha256::new();
                h.update(b"kluis.v1.audit");
                h.update(((seq + 1) as u64).to_be_bytes());
                h.update(&prev);
                h.update(entry);
                let hash = h.finalize().to_vec();
                c.execute(
                "INSERT INTO audit (seq, entry, prev_hash, hash, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![seq + 1, entry.to_vec(), prev, hash, vec![0u8; 32]],
            )
            .unwrap();
            },
            3,
        ),
        // A row numbered below the first entry, which nothing reads from entry 1 on: a copy
        // of an authentic entry, its MAC and all.
        (
            "inserted below 1",
            |c| {
                let n = c
                    .execute(
                        "INSERT INTO audit (seq, entry, prev_hash, hash, mac) \
                         SELECT -5, entry, prev_hash, hash, mac FROM audit WHERE seq = 3",
                        [],
                    )
                    .unwrap();
                assert_eq!(n, 1);
            },
            0,
        ),
    ];
    for (what, tamper, expected_seq) in cases {
        let server = TestServer::start().await;
        some_traffic(&server).await;
        assert!(verify(&server, None).await.intact);
        tamper(&Connection::open(server.trail_path()).unwrap());
        let r = verify(&server, None).await;
        assert!(!r.intact, "{what} entry not detected");
        assert_eq!(r.broken_seq, expected_seq, "{what}: {}", r.problem);
        // Entries renumbered past the one inserted: the trail takes no entry on a last one out
        // of its place, and the verification that finds it says it is not on the trail.
        assert_eq!(
            r.problem.contains("this verification is not on the trail"),
            what == "inserted",
            "{what}: {}",
            r.problem
        );
        server.stop().await;
    }
}

/// An entry of a subject's, stored by hand as another type than kluis writes, fails that
/// subject's access report as damaged data that `audit verify` names, not as an internal fault.
/// The twin: before the edit the report is answered.
#[tokio::test]
async fn an_access_report_over_a_retyped_entry_is_refused_as_data_loss() {
    let server = TestServer::start().await;
    some_traffic(&server).await;
    let report = || async {
        server
            .admin()
            .await
            .subject_access_report(req(
                server.token(Role::PrivacyOfficer),
                pb::SubjectAccessReportRequest {
                    subject_id: "REL-1000".into(),
                    justification: "SAR-2026-71".into(),
                    page_size: 100,
                    after_seq: 0,
                },
            ))
            .await
    };
    let answered = report().await.unwrap().into_inner();
    assert!(answered.events.iter().any(|e| e.action == "read"));
    let conn = Connection::open(server.trail_path()).unwrap();
    let seq: i64 = conn
        .query_row(
            "SELECT seq FROM audit WHERE CAST(entry AS TEXT) LIKE '%\"subject\":\"REL-1000\"%'
             ORDER BY seq LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE audit SET entry = CAST(entry AS TEXT) WHERE seq = ?1",
        [seq],
    )
    .unwrap();
    let refused = report().await.unwrap_err();
    assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
    assert!(
        refused.message().contains("kluis admin audit verify"),
        "{}",
        refused.message()
    );
    let r = verify(&server, None).await;
    assert!(!r.intact);
    assert_eq!(r.broken_seq, u64::try_from(seq).unwrap(), "{}", r.problem);
    assert!(
        r.problem.contains("edited in the database file"),
        "{}",
        r.problem
    );
    server.stop().await;
}

#[tokio::test]
async fn verify_with_expected_head_detects_a_truncated_tail() {
    let server = TestServer::start().await;
    some_traffic(&server).await;
    let anchored = head(&server).await;
    // Cut off the tail while the server is down, as an intruder with file access would.
    let server = server
        .restart_with(|db| {
            Connection::open(kluis::store::sqlite::trail_path(db))
                .unwrap()
                .execute(
                    "DELETE FROM audit WHERE seq >= ?1",
                    [anchored.seq as i64 - 5],
                )
                .unwrap();
        })
        .await;
    // (The restarted server records its policy set: the trail grows again, but stays shorter.)
    // Without the anchor the shortened trail looks whole …
    let plain = verify(&server, None).await;
    assert!(plain.intact);
    // … with it, the cut is found and named.
    let r = verify(&server, Some(anchored.clone())).await;
    assert!(!r.intact);
    // The first entry missing is named, and the anchor it was missed against.
    assert!(r.broken_seq < anchored.seq, "{}", r.problem);
    assert!(
        r.problem
            .contains(&format!("the anchored head is entry {}", anchored.seq)),
        "{}",
        r.problem
    );
    assert!(r.problem.contains("removed from the tail"), "{}", r.problem);
    // A head that was not MAC'd by this vault is refused.
    let forged = pb::AuditHead {
        mac: "00".repeat(32),
        ..anchored
    };
    assert!(!verify(&server, Some(forged)).await.intact);
    server.stop().await;
}

#[tokio::test]
async fn a_head_anchors_only_the_store_it_came_from_and_only_with_its_mac() {
    let a = TestServer::start().await;
    let b = TestServer::start().await;
    some_traffic(&a).await;
    some_traffic(&b).await;
    let head_a = head(&a).await;
    let head_b = head(&b).await;
    assert_eq!(head_a.store_id.len(), 32, "{head_a:?}");
    assert_ne!(head_a.store_id, head_b.store_id);
    // Each store's own head anchors its own trail …
    assert!(verify(&a, Some(head_a.clone())).await.intact);
    assert!(verify(&b, Some(head_b.clone())).await.intact);
    // … not the other store's, by its store id nor renamed to the other store.
    let r = verify(&b, Some(head_a.clone())).await;
    assert!(!r.intact);
    assert!(r.problem.contains("not of this store"), "{}", r.problem);
    let renamed = pb::AuditHead {
        store_id: head_b.store_id.clone(),
        ..head_a.clone()
    };
    let r = verify(&b, Some(renamed)).await;
    assert!(!r.intact);
    assert!(
        r.problem.contains("MAC is not this store's"),
        "{}",
        r.problem
    );
    // A head stripped of its MAC is no anchor, not even on its own store.
    let stripped = pb::AuditHead {
        mac: String::new(),
        ..head_a.clone()
    };
    let r = verify(&a, Some(stripped)).await;
    assert!(!r.intact);
    assert!(r.problem.contains("no MAC"), "{}", r.problem);
    // The refusal is on the trail like every verification.
    let entries = audit_entries(&a);
    assert!(entries.iter().any(|e| e["action"] == "audit-verify"
        && e["reason"].as_str().is_some_and(|r| r.contains("no MAC"))));
    // A malformed store id is an invalid argument, not a verification.
    let mut admin = a.admin().await;
    let status = admin
        .verify_audit(req(
            a.token(Role::SecurityOfficer),
            pb::VerifyAuditRequest {
                expect_head: Some(pb::AuditHead {
                    store_id: "not-hex".into(),
                    ..head_a
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    a.stop().await;
    b.stop().await;
}

/// Someone with the database file adds a trigger that drops the trail's rows without an error
/// (`RAISE(IGNORE)`): the insert "succeeds" and stores nothing. A read must not be answered
/// (its entry is not durable), nor a write acknowledged; once the trigger is gone the same read
/// is answered and the whole chain verifies (nothing of the refused batches was kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fail_closed_when_the_database_drops_the_trails_rows() {
    let server = TestServer::start().await;
    let id = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-1011",
        vec![text("statement", "nuisance-evidence", SECRET_VALUE)],
    )
    .await;
    let officer = server.token(Role::NuisanceOfficer);
    // The twin: answered before the edit.
    let resp = get(&server, officer, nuisance_ctx(), &id).await.unwrap();
    assert_eq!(text_of(&resp.fields[0]), SECRET_VALUE);
    let conn = server.store_files();
    conn.execute_batch(
        "CREATE TRIGGER drop_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(IGNORE); END;",
    )
    .unwrap();
    for _ in 0..3 {
        let status = get(&server, officer, nuisance_ctx(), &id)
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(!status.message().contains(SECRET_VALUE));
    }
    let mut client = server.client().await;
    let status = client
        .put_record(req(
            officer,
            pb::PutRecordRequest {
                context: nuisance_ctx(),
                subject_id: "REL-1012".into(),
                fields: vec![text("phone", "contact", "06-1")],
                labels: Default::default(),
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let stored: i64 = conn
        .query_row(
            "SELECT count(*) FROM records WHERE subject = 'REL-1012'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, 0, "a write without its entry was stored");
    conn.execute_batch("DROP TRIGGER drop_audit;").unwrap();
    let resp = get(&server, officer, nuisance_ctx(), &id).await.unwrap();
    assert_eq!(text_of(&resp.fields[0]), SECRET_VALUE);
    assert!(verify(&server, None).await.intact);
    server.stop().await;
}

#[tokio::test]
async fn reads_fail_closed_when_the_trail_cannot_be_written() {
    let server = TestServer::start().await;
    let id = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-1001",
        vec![text("statement", "nuisance-evidence", SECRET_VALUE)],
    )
    .await;
    let conn = Connection::open(server.trail_path()).unwrap();
    conn.execute_batch("CREATE TRIGGER block_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END;").unwrap();
    let status = get(
        &server,
        server.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &id,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(!status.message().contains(SECRET_VALUE));
    // Writes fail too, and store nothing.
    let mut client = server.client().await;
    let status = client
        .put_record(req(
            server.token(Role::NuisanceOfficer),
            pb::PutRecordRequest {
                context: nuisance_ctx(),
                subject_id: "REL-1002".into(),
                fields: vec![text("phone", "contact", "06-1")],
                labels: Default::default(),
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unavailable);
    conn.execute_batch("DROP TRIGGER block_audit;").unwrap();
    let resp = get(
        &server,
        server.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &id,
    )
    .await
    .unwrap();
    assert_eq!(text_of(&resp.fields[0]), SECRET_VALUE);
    let listed = client
        .list_records(req(
            server.token(Role::PrivacyOfficer),
            pb::ListRecordsRequest {
                context: nuisance_ctx(),
                subject_id: "REL-1002".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.records.is_empty());
    assert!(verify(&server, None).await.intact);
    server.stop().await;
}

/// The trail's last entry edited in the database file while kluis runs (its hash, or the entry
/// deleted: the trail cut back), and every read and write is refused as `DATA_LOSS` naming
/// `audit verify`, not as `UNAVAILABLE` (which tells a client to try again, and an on-call
/// officer that the disk is full): no value is answered and no record stored. Its twin, the
/// row put back as it was: the same read is answered, the write stored, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_over_an_edited_tail_of_the_trail_are_refused_as_data_loss() {
    let server = TestServer::start().await;
    let id = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-1001",
        vec![text("statement", "nuisance-evidence", SECRET_VALUE)],
    )
    .await;
    let conn = Connection::open(server.trail_path()).unwrap();
    let tail = || -> (i64, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        conn.query_row(
            "SELECT seq, entry, prev_hash, hash, mac FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap()
    };
    let write = |subject: &str| pb::PutRecordRequest {
        context: nuisance_ctx(),
        subject_id: subject.into(),
        fields: vec![text("phone", "contact", "06-1")],
        labels: Default::default(),
    };
    let mut client = server.client().await;
    let edits = [
        (
            "its hash edited",
            "UPDATE audit SET hash = zeroblob(32) WHERE seq = ?1",
        ),
        ("deleted", "DELETE FROM audit WHERE seq = ?1"),
    ];
    for (n, (edit, sql)) in edits.into_iter().enumerate() {
        let (seq, entry, prev_hash, hash, mac) = tail();
        assert_eq!(conn.execute(sql, [seq]).unwrap(), 1);
        let read = get(
            &server,
            server.token(Role::NuisanceOfficer),
            nuisance_ctx(),
            &id,
        )
        .await
        .err()
        .unwrap();
        assert_eq!(read.code(), Code::DataLoss, "tail {edit}: {read:?}");
        assert!(read.message().contains("audit verify"), "{read:?}");
        assert!(!read.message().contains(SECRET_VALUE));
        let subject = format!("REL-20{n}");
        let written = client
            .put_record(req(server.token(Role::NuisanceOfficer), write(&subject)))
            .await
            .err()
            .unwrap();
        assert_eq!(written.code(), Code::DataLoss, "tail {edit}: {written:?}");
        // Twin: the row put back as it was.
        conn.execute(
            "INSERT OR REPLACE INTO audit (seq, entry, prev_hash, hash, mac) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![seq, entry, prev_hash, hash, mac],
        )
        .unwrap();
        let resp = get(
            &server,
            server.token(Role::NuisanceOfficer),
            nuisance_ctx(),
            &id,
        )
        .await
        .unwrap();
        assert_eq!(text_of(&resp.fields[0]), SECRET_VALUE, "tail {edit}");
        client
            .put_record(req(server.token(Role::NuisanceOfficer), write(&subject)))
            .await
            .unwrap();
    }
    assert!(verify(&server, None).await.intact);
    server.stop().await;
}

/// Many reads at once, with writes among them, while the trail cannot be written: every read
/// and write fails `UNAVAILABLE` with no value (reads and writes queue their entries and do not
/// wait for them, so the answer comes from whichever thread committed the batch), and nothing
/// is stored, no entry and no record. Its twin, the trail writable again: every read gets the
/// value, every write's record is stored, and the chain holds an entry for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_fail_closed_when_the_trail_cannot_be_written() {
    let server = TestServer::start().await;
    let id = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-1001",
        vec![text("statement", "nuisance-evidence", SECRET_VALUE)],
    )
    .await;
    let channel = server.raw_channel().await;
    let token = server.token(Role::NuisanceOfficer).to_string();
    let storm = |round: usize| {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..48 {
            let mut client = pb::vault_client::VaultClient::new(channel.clone());
            let (token, id) = (token.clone(), id.clone());
            calls.spawn(async move {
                if i % 8 == 7 {
                    // A write among the reads: queued with its entry, in its transaction.
                    let put = client
                        .put_record(req(
                            &token,
                            pb::PutRecordRequest {
                                context: nuisance_ctx(),
                                subject_id: format!("REL-{}", 3000 + round * 100 + i),
                                fields: vec![text("phone", "contact", "06-1")],
                                labels: Default::default(),
                            },
                        ))
                        .await;
                    return (false, put.map(|_| Vec::new()));
                }
                let read = client
                    .get_record(req(
                        &token,
                        pb::GetRecordRequest {
                            context: nuisance_ctx(),
                            record_id: id,
                            fields: vec![],
                        },
                    ))
                    .await;
                (true, read.map(|r| r.into_inner().fields))
            });
        }
        calls.join_all()
    };
    let entries_before = audit_entries(&server).len();
    let conn = server.store_files();
    let records = || -> i64 {
        conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0))
            .unwrap()
    };
    let records_before = records();
    conn.execute_batch("CREATE TRIGGER block_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END;").unwrap();
    for (_, answer) in storm(0).await {
        let Err(status) = answer else {
            panic!("answered while the trail cannot be written");
        };
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(!status.message().contains(SECRET_VALUE));
    }
    assert_eq!(audit_entries(&server).len(), entries_before);
    assert_eq!(
        records(),
        records_before,
        "a write stored without its entry"
    );
    conn.execute_batch("DROP TRIGGER block_audit;").unwrap();
    let answers = storm(1).await;
    let reads = answers.iter().filter(|(read, _)| *read).count();
    for (read, answer) in answers {
        let fields = answer.unwrap_or_else(|status| panic!("{status:?}"));
        if read {
            assert_eq!(text_of(&fields[0]), SECRET_VALUE);
        }
    }
    assert_eq!(records(), records_before + 6);
    let entries = audit_entries(&server);
    assert_eq!(entries.len(), entries_before + 48);
    let read_entries = entries
        .iter()
        .skip(entries_before)
        .filter(|e| e["action"] == "read" && e["decision"] == "allow")
        .count();
    assert_eq!(read_entries, reads);
    assert!(verify(&server, None).await.intact);
    server.stop().await;
}

/// The subject whose records the store refuses in `refused_writes_are_followed_on_the_trail`.
pub(crate) const REFUSED_SUBJECT: &str = "REL-4242";

/// Writes the policy allows and the store then refuses (a trigger on `records` for
/// `REFUSED_SUBJECT`, switched by `refuse`), among writes it takes: each refused one fails, its
/// allowed `write` entry is followed by a `deny` entry for the same record saying it was not
/// carried out, and no record of it exists; each taken one is stored with its allowed entry
/// alone. With `all_refused` the store refuses every write while `refuse` is on (kluis on SQLite
/// refuses any statement that would run a trigger added to the file), and the twin is a write
/// after it is off. `entries` reads the whole trail, `stored` the ids of the stored records.
pub(crate) async fn refused_writes_are_followed_on_the_trail(
    server: &TestServer,
    all_refused: bool,
    refused_as: Option<Code>,
    refuse: impl Fn(bool),
    entries: impl Fn() -> Vec<serde_json::Value>,
    stored: impl Fn() -> Vec<String>,
) {
    let channel = server.raw_channel().await;
    let token = server.token(Role::NuisanceOfficer).to_string();
    let before = entries().len();
    let stored_before = stored().len();
    refuse(true);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..24 {
        let mut client = pb::vault_client::VaultClient::new(channel.clone());
        let token = token.clone();
        calls.spawn(async move {
            let refused = all_refused || i % 3 == 0;
            let subject = if i % 3 == 0 {
                REFUSED_SUBJECT.to_string()
            } else {
                format!("REL-{}", 5000 + i)
            };
            let put = client
                .put_record(req(
                    &token,
                    pb::PutRecordRequest {
                        context: nuisance_ctx(),
                        subject_id: subject,
                        fields: vec![text("statement", "nuisance-evidence", SECRET_VALUE)],
                        labels: Default::default(),
                    },
                ))
                .await;
            (refused, put.map(|r| r.into_inner().record_id))
        });
    }
    let answers = calls.join_all().await;
    refuse(false);
    let refused_count = if all_refused { 24 } else { 8 };
    // The twin after the refusals: a write the store takes.
    let after = server
        .client()
        .await
        .put_record(req(
            &token,
            pb::PutRecordRequest {
                context: nuisance_ctx(),
                subject_id: "REL-4243".into(),
                fields: vec![text("statement", "nuisance-evidence", SECRET_VALUE)],
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .record_id;
    let mut taken = Vec::new();
    for (refused, answer) in answers {
        match answer {
            Ok(id) => {
                assert!(!refused, "a write the store refused answered OK ({id})");
                taken.push(id);
            }
            Err(status) => {
                assert!(refused, "a write the store takes failed: {status:?}");
                assert_ne!(status.code(), Code::Ok);
                if let Some(code) = refused_as {
                    assert_eq!(status.code(), code, "{status:?}");
                }
                assert!(!status.message().contains(SECRET_VALUE), "{status:?}");
            }
        }
    }
    assert_eq!(taken.len(), 24 - refused_count);
    taken.push(after);
    let now_stored = stored();
    assert_eq!(
        now_stored.len(),
        stored_before + 25 - refused_count,
        "{now_stored:?}"
    );
    for id in &taken {
        assert!(
            now_stored.contains(id),
            "{id} answered OK and is not stored"
        );
    }
    let trail = entries();
    let new = trail.get(before..).unwrap_or_default();
    let writes: Vec<&serde_json::Value> = new.iter().filter(|e| e["action"] == "write").collect();
    let allowed: Vec<&&serde_json::Value> =
        writes.iter().filter(|e| e["decision"] == "allow").collect();
    assert_eq!(allowed.len(), 25, "{writes:?}");
    for entry in allowed {
        let record = entry["record"].as_str().unwrap();
        let pos = new.iter().position(|e| std::ptr::eq(e, *entry)).unwrap();
        let followed = new
            .iter()
            .skip(pos + 1)
            .find(|e| e["action"] == "write" && e["decision"] == "deny" && e["record"] == record);
        if !taken.iter().any(|id| id == record) {
            assert!(
                all_refused || entry["subject"] == REFUSED_SUBJECT,
                "{entry}"
            );
            assert!(!now_stored.iter().any(|id| id == record), "{record} stored");
            let followed =
                followed.unwrap_or_else(|| panic!("the refused write of {record} is not followed"));
            let reason = followed["reason"].as_str().unwrap();
            assert!(reason.starts_with("not carried out"), "{reason}");
            assert!(!reason.contains(SECRET_VALUE));
        } else {
            // The twin: a stored record's allowed entry stands alone.
            assert!(
                now_stored.iter().any(|id| id == record),
                "{record} not stored"
            );
            assert!(
                followed.is_none(),
                "{record} stored and marked not carried out"
            );
        }
    }
    assert_eq!(writes.len(), 25 + refused_count, "{writes:?}");
    assert!(verify(server, None).await.intact);
}

/// `refused_writes_are_followed_on_the_trail` on a server of its own whose SQLite file gets
/// the trigger `create` (named `trigger`): kluis refuses every statement that would run it,
/// so every write is refused while it stands, after its entry.
async fn refused_on_sqlite(trigger: &str, create: &str) {
    let drop = format!("DROP TRIGGER {trigger};");
    refused_on_edited_sqlite(|conn, on| {
        conn.execute_batch(if on { create } else { &drop }).unwrap();
    })
    .await;
}

/// `refused_writes_are_followed_on_the_trail` on a server of its own whose SQLite file is
/// edited by `edit(conn, true)` and put back by `edit(conn, false)`.
async fn refused_on_edited_sqlite(edit: impl Fn(&Connection, bool)) {
    let server = TestServer::start().await;
    let conn = std::sync::Mutex::new(Connection::open(server.db_path()).unwrap());
    refused_writes_are_followed_on_the_trail(
        &server,
        true,
        None,
        |on| edit(&conn.lock().unwrap(), on),
        || audit_entries(&server),
        || {
            let conn = conn.lock().unwrap();
            let mut stmt = conn.prepare("SELECT id FROM records").unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_store_refuses_after_its_entry_is_followed_on_the_trail() {
    refused_on_sqlite(
        "refuse_record",
        &format!(
            "CREATE TRIGGER refuse_record BEFORE INSERT ON records \
             WHEN NEW.subject = '{REFUSED_SUBJECT}' \
             BEGIN SELECT RAISE(ABORT, 'refused for the test'); END;"
        ),
    )
    .await;
}

/// The same with the schema edited in the file: an index added, or the field rows' key given
/// a conflict clause that drops a clashing row without an error (through `writable_schema`,
/// which SQLite does not check). kluis writes only on the schema its migrations made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_schema_edited_in_the_file_is_refused_after_its_entry() {
    refused_on_edited_sqlite(|conn, on| {
        conn.execute_batch(if on {
            "CREATE INDEX records_by_labels ON records (labels)"
        } else {
            "DROP INDEX records_by_labels"
        })
        .unwrap();
    })
    .await;
    refused_on_edited_sqlite(|conn, on| {
        let (from, to) = (
            "PRIMARY KEY (record_id, name)",
            "PRIMARY KEY (record_id, name) ON CONFLICT IGNORE",
        );
        let (from, to) = if on { (from, to) } else { (to, from) };
        let version: i64 = conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .unwrap();
        conn.execute_batch("PRAGMA writable_schema = ON").unwrap();
        let n = conn
            .execute(
                "UPDATE sqlite_master SET sql = replace(sql, ?1, ?2) \
                 WHERE name = 'fields' AND instr(sql, ?1) > 0",
                [from, to],
            )
            .unwrap();
        assert_eq!(n, 1);
        conn.execute_batch(&format!(
            "PRAGMA schema_version = {}; PRAGMA writable_schema = OFF",
            version + 1
        ))
        .unwrap();
    })
    .await;
}

/// The same with a trigger that drops a subject's field rows without an error
/// (`RAISE(IGNORE)`): no write is acknowledged, each entry is followed, nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_rows_the_database_drops_is_not_acknowledged() {
    refused_on_sqlite(
        "drop_fields",
        &format!(
            "CREATE TRIGGER drop_fields BEFORE INSERT ON fields \
             WHEN (SELECT subject FROM records WHERE id = NEW.record_id) = '{REFUSED_SUBJECT}' \
             BEGIN SELECT RAISE(IGNORE); END;"
        ),
    )
    .await;
}

/// An update the policy allows and the store then refuses (a trigger on `fields` in the file,
/// which kluis refuses to run): its allowed `update` entry is followed by a `deny` entry saying
/// it was not carried out, and the record keeps its value. The twin: once the trigger is gone
/// the same update is made, its allowed entry alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_the_store_refuses_after_its_entry_is_followed_on_the_trail() {
    let server = TestServer::start().await;
    let id = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-7100",
        vec![text("statement", "nuisance-evidence", SECRET_VALUE)],
    )
    .await;
    let officer = server.token(Role::NuisanceOfficer);
    let update = |value: &'static str| {
        let server = &server;
        let id = id.clone();
        async move {
            server
                .client()
                .await
                .update_record(req(
                    officer,
                    pb::UpdateRecordRequest {
                        context: nuisance_ctx(),
                        record_id: id,
                        fields: vec![text("statement", "nuisance-evidence", value)],
                    },
                ))
                .await
        }
    };
    let updates = |decision: &str| {
        audit_entries(&server)
            .into_iter()
            .filter(|e| e["action"] == "update" && e["record"] == id.as_str())
            .filter(|e| e["decision"] == decision)
            .count()
    };
    let conn = Connection::open(server.db_path()).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER no_updates BEFORE INSERT ON fields BEGIN SELECT RAISE(IGNORE); END;
         CREATE TRIGGER no_replacements BEFORE UPDATE ON fields BEGIN SELECT RAISE(IGNORE); END;",
    )
    .unwrap();
    let status = update("Nieuwe-verklaring-1").await.err().unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!((updates("allow"), updates("deny")), (1, 1));
    let denied = audit_entries(&server)
        .into_iter()
        .find(|e| e["action"] == "update" && e["decision"] == "deny")
        .unwrap();
    let reason = denied["reason"].as_str().unwrap();
    assert!(reason.starts_with("not carried out"), "{reason}");
    assert!(!reason.contains("Nieuwe-verklaring"), "{reason}");
    conn.execute_batch("DROP TRIGGER no_updates; DROP TRIGGER no_replacements;")
        .unwrap();
    let resp = get(&server, officer, nuisance_ctx(), &id).await.unwrap();
    assert_eq!(text_of(&resp.fields[0]), SECRET_VALUE);
    update("Nieuwe-verklaring-2").await.unwrap();
    assert_eq!((updates("allow"), updates("deny")), (2, 1));
    let resp = get(&server, officer, nuisance_ctx(), &id).await.unwrap();
    assert_eq!(text_of(&resp.fields[0]), "Nieuwe-verklaring-2");
    assert!(verify(&server, None).await.intact);
    server.stop().await;
}

/// The trail's index by subject is kept apart from the entries (in runs of 2,048): someone
/// with the database file who deletes an index row hides that read from the subject's access
/// report, with the chain intact, and `audit verify` finds it. The twin: before the edit the
/// report lists every read and the trail verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_hidden_from_the_access_report_by_an_edited_index_is_found_by_verify() {
    let server = TestServer::start().await;
    let id = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-7000",
        vec![text("statement", "nuisance-evidence", SECRET_VALUE)],
    )
    .await;
    // Enough reads for the first run of the index.
    let channel = server.raw_channel().await;
    let token = server.token(Role::NuisanceOfficer).to_string();
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let mut client = pb::vault_client::VaultClient::new(channel.clone());
        let (token, id) = (token.clone(), id.clone());
        readers.spawn(async move {
            for _ in 0..70 {
                client
                    .get_record(req(
                        &token,
                        pb::GetRecordRequest {
                            context: nuisance_ctx(),
                            record_id: id.clone(),
                            fields: vec![],
                        },
                    ))
                    .await
                    .unwrap();
            }
        });
    }
    readers.join_all().await;
    // The reads in the report, page by page (more than one page holds).
    let reads = || async {
        let mut admin = server.admin().await;
        let (mut count, mut after_seq) = (0, 0);
        loop {
            let page = admin
                .subject_access_report(req(
                    server.token(Role::PrivacyOfficer),
                    pb::SubjectAccessReportRequest {
                        subject_id: "REL-7000".into(),
                        justification: "SAR-2026-70".into(),
                        page_size: 2_000,
                        after_seq,
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            count += page.events.iter().filter(|e| e.action == "read").count();
            if page.next_after_seq == 0 {
                return count;
            }
            after_seq = page.next_after_seq;
        }
    };
    assert_eq!(reads().await, 32 * 70);
    assert!(verify(&server, None).await.intact);
    let conn = Connection::open(server.trail_path()).unwrap();
    let hidden: i64 = conn
        .query_row(
            "SELECT seq FROM audit_subjects WHERE subject = 'REL-7000' ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute("DELETE FROM audit_subjects WHERE seq = ?1", [hidden])
        .unwrap();
    assert_eq!(reads().await, 32 * 70 - 1, "the edit hides the read");
    let verified = verify(&server, None).await;
    assert!(!verified.intact);
    assert!(
        verified.problem.contains("index by subject misses it"),
        "{}",
        verified.problem
    );
    server.stop().await;
}

#[tokio::test]
async fn privacy_officer_exports_and_reports_and_nobody_else_may() {
    let server = TestServer::start().await;
    let id = some_traffic(&server).await;
    let _other = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-2000",
        vec![text("phone", "contact", "06-2")],
    )
    .await;
    let mut admin = server.admin().await;
    let export = |role: Role, subject: &str| {
        req(
            server.token(role),
            pb::ExportAuditRequest {
                subject_id: subject.into(),
                justification: "SAR-2026-17".into(),
                ..Default::default()
            },
        )
    };
    let mut stream = admin
        .export_audit(export(Role::PrivacyOfficer, "REL-1000"))
        .await
        .unwrap()
        .into_inner();
    let mut lines = Vec::new();
    while let Some(entry) = stream.message().await.unwrap() {
        lines.push(serde_json::from_str::<serde_json::Value>(&entry.json).unwrap());
    }
    assert_eq!(lines.len(), 3, "write, allowed read, denied read");
    assert!(lines.iter().all(|l| l["subject"] == "REL-1000"));

    for role in [Role::NuisanceOfficer, Role::CustomerService, Role::Analyst] {
        let status = admin
            .export_audit(export(role, "REL-1000"))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::PermissionDenied, "{role}");
        let status = admin
            .subject_access_report(req(
                server.token(role),
                pb::SubjectAccessReportRequest {
                    subject_id: "REL-1000".into(),
                    justification: String::new(),
                    ..Default::default()
                },
            ))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::PermissionDenied, "{role}");
    }

    let report = admin
        .subject_access_report(req(
            server.token(Role::PrivacyOfficer),
            pb::SubjectAccessReportRequest {
                subject_id: "REL-1000".into(),
                justification: "SAR-2026-17".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.events.len(), 3);
    let read = report
        .events
        .iter()
        .find(|e| e.action == "read" && e.decision == "allow")
        .unwrap();
    assert_eq!(read.principal_id, "test-nuisance-officer");
    assert_eq!(read.roles, ["nuisance-officer"]);
    assert_eq!(read.purpose, "nuisance");
    assert_eq!(read.case_ref, "N-2026-0042");
    assert_eq!(
        read.justification,
        "handling the complaint of the neighbours"
    );
    assert_eq!(read.record_id, id);
    assert_eq!(read.fields_allowed, ["phone", "statement"]);
    let denied = report.events.iter().find(|e| e.decision == "deny").unwrap();
    assert_eq!(denied.principal_id, "test-customer-service");
    // Reading the trail is itself on the trail.
    let entries = audit_entries(&server);
    assert!(entries.iter().any(|e| e["action"] == "audit-export"
        && e["principal"] == "test-privacy-officer"
        && e["justification"] == "SAR-2026-17"));
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "subject-access-report" && e["decision"] == "allow")
    );
    server.stop().await;
}

// The `kluis` child process is awaited synchronously: keep a worker free for the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_audit_commands_work_against_a_running_server() {
    let server = TestServer::start().await;
    some_traffic(&server).await;
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kluis"))
            .args(["admin", "--server", &format!("http://{}", server.addr)])
            .args(args)
            .env("KLUIS_TOKEN", server.token(Role::SecurityOfficer))
            .env("KLUIS_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = run(&["audit", "head"]);
    assert!(out.status.success());
    let head = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(head.split(':').count(), 4, "{head}");
    let out = run(&["audit", "verify", "--expect-head", &head]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Whether the expected head was found, then the verdict on the whole trail.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("FOUND: "), "{stdout}");
    assert!(
        stdout.lines().nth(1).unwrap().starts_with("OK: "),
        "{stdout}"
    );
    let out = run(&["audit", "export", "--subject", "REL-1000"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);

    let seq: i64 = head.split(':').next().unwrap().parse().unwrap();
    Connection::open(server.trail_path())
        .unwrap()
        .execute("DELETE FROM audit WHERE seq = ?1", [seq])
        .unwrap();
    let out = run(&["audit", "verify", "--expect-head", &head, "--json"]);
    assert_eq!(out.status.code(), Some(4));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["intact"], false);
    assert_eq!(r["broken_seq"], seq);
    assert_eq!(r["expected_head_found"], false);
    server.stop().await;
}

#[test]
fn a_changed_policy_set_is_recorded_at_start() {
    let tmp = crate::common::private_tempdir();
    let dir = tmp.path();
    let secret = kluis::keys::RootSecret::create_key_file(&dir.join("root.key")).unwrap();
    init_store(dir, &secret, kluis::crypto::Algorithm::Aes256Gcm);
    let open = |policies: Option<Vec<std::path::PathBuf>>| {
        let raw = kluis::config::RawConfig {
            data_dir: Some(dir.to_owned()),
            policy: Some(kluis::config::RawPolicy {
                schema: None,
                policies,
            }),
            ..Default::default()
        };
        kluis::config::open_vault(&raw.validate(false).unwrap(), &secret).unwrap()
    };
    drop(open(None));
    drop(open(None));
    let stricter = dir.join("stricter.cedar");
    std::fs::write(
        &stricter,
        format!(
            "{}\n@id(\"no-complaints-by-phone\")\nforbid (principal, action == Kluis::Action::\"read\", resource) when {{ context.channel == \"phone\" && context.purpose == \"complaints\" }};\n",
            kluis::policy::DEFAULT_POLICIES
        ),
    )
    .unwrap();
    drop(open(Some(vec![stricter])));
    let store = kluis::store::SqliteStore::open(&dir.join("kluis.db")).unwrap();
    use kluis::store::prelude::*;
    let actions: Vec<(String, String)> = store
        .audit_entries(1, 100)
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.entry).unwrap())
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(actions.len(), 3);
    assert_eq!(actions[0].0, "policy-load");
    assert_eq!(actions[1].0, "policy-load");
    assert_eq!(actions[2].0, "policy-change");
    assert!(
        actions[2].1.contains("replaces sha256:"),
        "{}",
        actions[2].1
    );
}

/// A subject access report costs the server what one answer holds: at most
/// `limits.max_report_accesses` accesses. A larger page holds that many; pages, chained by
/// `next_after_seq`, list every access once, in order; each page is decided and audited as the
/// first; and a report asked for whole that holds more is refused, and says how to page, with
/// the trail showing it was not given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_access_report_is_answered_page_by_page() {
    let server = TestServer::start_with_limits(kluis::config::RawLimits {
        max_report_accesses: Some(5),
        ..Default::default()
    })
    .await;
    let id = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-3000",
        vec![text("phone", "contact", "06-30003000")],
    )
    .await;
    let other = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-3001",
        vec![text("phone", "contact", "06-30013001")],
    )
    .await;
    for i in 0..12 {
        let (role, ctx) = if i % 4 == 3 {
            (
                Role::CustomerService,
                ctx("customer-service", "", "caller asked"),
            )
        } else {
            (Role::NuisanceOfficer, nuisance_ctx())
        };
        let _ = get(&server, server.token(role), ctx.clone(), &id).await;
        // Reads of another subject among them (its write and 4 reads: exactly the limit).
        if i < 4 {
            let _ = get(&server, server.token(role), ctx, &other).await;
        }
    }
    // The accesses to REL-3000 on the trail: the write, 9 reads allowed and 3 refused.
    let accesses: Vec<u64> = audit_entries(&server)
        .iter()
        .zip(1u64..)
        .filter(|(e, _)| {
            e["subject"] == "REL-3000" && ["write", "read"].contains(&e["action"].as_str().unwrap())
        })
        .map(|(_, seq)| seq)
        .collect();
    assert_eq!(accesses.len(), 13);

    let mut admin = server.admin().await;
    let ask = |role: Role, subject: &str, page_size: u32, after_seq: u64| {
        req(
            server.token(role),
            pb::SubjectAccessReportRequest {
                subject_id: subject.into(),
                justification: "SAR-2026-30".into(),
                page_size,
                after_seq,
            },
        )
    };

    // Whole: more than the limit, refused before anything is answered, and how to page said.
    let status = admin
        .subject_access_report(ask(Role::PrivacyOfficer, "REL-3000", 0, 0))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    for named in [
        "more than 5 accesses",
        "`limits.max_report_accesses`",
        "`page_size`",
        "`after_seq`",
        "`next_after_seq`",
    ] {
        assert!(
            status.message().contains(named),
            "{named}: {}",
            status.message()
        );
    }
    let entries = audit_entries(&server);
    assert_eq!(
        last_decisions(&entries, 2),
        [
            ("subject-access-report", "allow"),
            ("subject-access-report", "deny")
        ]
    );
    assert!(
        entries[entries.len() - 1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("not carried out: ")
    );

    // In pages: a page asked larger than the limit holds as many as the limit.
    let mut seen = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = admin
            .subject_access_report(ask(Role::PrivacyOfficer, "REL-3000", 100, after))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(
            page.events.len() <= 5,
            "page {pages}: {}",
            page.events.len()
        );
        assert!(page.events.iter().all(|e| e.seq > after));
        seen.extend(page.events.iter().map(|e| e.seq));
        if page.next_after_seq == 0 {
            break;
        }
        assert_eq!(page.events.len(), 5);
        assert_eq!(page.next_after_seq, page.events.last().unwrap().seq);
        after = page.next_after_seq;
        // Paging is no way around the decision: each page is decided as the first.
        let status = admin
            .subject_access_report(ask(Role::CustomerService, "REL-3000", 5, after))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::PermissionDenied);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, accesses, "every access once, in order");
    // The refused attempts are in the subject's own trail (its export and report), not only
    // in the whole trail.
    let refused = audit_entries(&server)
        .into_iter()
        .filter(|e| {
            e["action"] == "subject-access-report"
                && e["decision"] == "deny"
                && e["principal"] == "test-customer-service"
        })
        .collect::<Vec<_>>();
    assert_eq!(refused.len(), 2);
    assert!(
        refused.iter().all(|e| e["subject"] == "REL-3000"),
        "{refused:?}"
    );

    // Each page is an entry of its own, naming where it began.
    let reasons: Vec<String> = audit_entries(&server)
        .iter()
        .filter(|e| {
            e["action"] == "subject-access-report"
                && e["decision"] == "allow"
                && e["principal"] == "test-privacy-officer"
        })
        .skip(1)
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons.len(), 3);
    // The page as answered: 5, though 100 were asked for.
    assert_eq!(reasons[0], "at most 5 accesses after entry 0");
    assert!(
        reasons[1].contains(&format!("after entry {}", accesses[4])),
        "{}",
        reasons[1]
    );

    // A page past the end of the trail was never a `next_after_seq`: refused, not answered
    // empty as if the report were complete.
    let status = admin
        .subject_access_report(ask(Role::PrivacyOfficer, "REL-3000", 5, u64::MAX - 1))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("after_seq"),
        "{}",
        status.message()
    );
    assert_eq!(
        last_decisions(&audit_entries(&server), 2),
        [
            ("subject-access-report", "allow"),
            ("subject-access-report", "deny")
        ]
    );

    // A report of as many accesses as the limit still comes whole, and says it is complete.
    let whole = admin
        .subject_access_report(ask(Role::PrivacyOfficer, "REL-3001", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.events.len(), 5);
    assert_eq!(whole.next_after_seq, 0);
    assert!(whole.events.iter().all(|e| e.record_id == other));

    // `kluis admin audit report` follows the pages to the end.
    let run = |json: bool| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kluis"))
            .args(["admin", "--server", &format!("http://{}", server.addr)])
            .args(["audit", "report", "--subject", "REL-3000"])
            .args(json.then_some("--json"))
            .env("KLUIS_TOKEN", server.token(Role::PrivacyOfficer))
            .env("KLUIS_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let printed: Vec<u64> = run(true)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(printed, accesses);
    let text = run(false);
    assert_eq!(text.lines().count(), 14, "{text}");
    assert!(
        text.ends_with("13 recorded accesses to REL-3000\n"),
        "{text}"
    );
    server.stop().await;
}
