//! Writing to the database file grants nothing. For each kind of row that grants, withholds or
//! shapes access (tokens, records, consent states, mandates, legal holds), the row is edited,
//! inserted or deleted by hand in the running server's SQLite file, as a thief of the file with
//! write access would, and kluis must not obey it: the call fails closed, and
//! `kluis admin store verify` names the row (exit 4). Each tampering has its untouched twin
//! that still works.

use kluis::{domain::Role, pb};
use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::common::*;

fn db(server: &TestServer) -> Connection {
    Connection::open(server.db_path()).unwrap()
}

/// `WhoAmI` with `token`, after trying the reads a token opens with it: of a whole record, of
/// one that does not exist, with a malformed id, and of one field of a record. Every door must
/// judge the token as `WhoAmI` does: all refuse it as unauthenticated, or none does.
async fn who_am_i(server: &TestServer, token: &str) -> Result<pb::WhoAmIResponse, tonic::Status> {
    let record = put(
        server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-DOORS",
        vec![text("statement", "nuisance-evidence", "a letter")],
    )
    .await;
    let missing = format!("rec_{}", "0".repeat(32));
    let mut client = server.client().await;
    let mut doors = Vec::new();
    for (id, fields) in [
        (record.as_str(), vec![]),
        (missing.as_str(), vec![]),
        ("rec_not-an-id", vec![]),
        (record.as_str(), vec!["statement".to_owned()]),
    ] {
        let read = client
            .get_record(req(
                token,
                pb::GetRecordRequest {
                    context: nuisance_ctx(),
                    record_id: id.into(),
                    fields,
                },
            ))
            .await;
        doors.push((id.to_owned(), read.map(|_| ()).map_err(|s| s.code())));
    }
    let who = client
        .who_am_i(req(token, pb::WhoAmIRequest {}))
        .await
        .map(tonic::Response::into_inner);
    let refused = who
        .as_ref()
        .is_err_and(|s| s.code() == Code::Unauthenticated);
    for (id, read) in &doors {
        assert_eq!(
            *read == Err(Code::Unauthenticated),
            refused,
            "GetRecord of `{id}` judged the token otherwise than WhoAmI: {read:?}, {who:?}"
        );
    }
    who
}

/// Calls `WhoAmI` with `token`, whose row was edited or deleted by hand at `edited`, until it is
/// refused as unauthenticated. Until then it authenticates as the row kluis wrote (`role`), never
/// as edited, and only for calls sent less than a second after the edit (`TOKEN_SEEN_FOR`,
/// counted from before the row was last read, which was before the edit).
async fn refused_within_a_second(
    server: &TestServer,
    token: &str,
    edited: std::time::Instant,
    role: &str,
) {
    let mut client = server.client().await;
    loop {
        let sent = std::time::Instant::now();
        match client.who_am_i(req(token, pb::WhoAmIRequest {})).await {
            Ok(me) => {
                assert_eq!(me.into_inner().roles, [role], "as edited");
                assert!(
                    sent.duration_since(edited) < std::time::Duration::from_millis(1100),
                    "a token row edited or deleted by hand still authenticates after a second"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                return;
            }
        }
    }
}

/// `kluis admin store verify --json` against `server`: exit code and the bad rows.
fn store_verify(server: &TestServer) -> (i32, Vec<serde_json::Value>) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kluis"))
        .args(["admin", "--server", &format!("http://{}", server.addr)])
        .args(["--json", "store", "verify"])
        .env("KLUIS_TOKEN", server.token(Role::SecurityOfficer))
        .env("KLUIS_LOG", "warn")
        .output()
        .unwrap();
    let rows = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.code().unwrap(), rows)
}

fn names(rows: &[serde_json::Value], kind: &str, id: &str) -> bool {
    rows.iter().any(|r| r["kind"] == kind && r["id"] == id)
}

/// A doorbell clip of `size` bytes (made from `seed`, sent in chunks of `chunk`) uploaded by
/// `officer` into a new nuisance record of `subject`.
async fn doorbell(
    server: &TestServer,
    officer: &str,
    subject: &str,
    seed: u64,
    size: u64,
    chunk: usize,
) -> pb::PutEvidenceResponse {
    let start = evidence_start(
        nuisance_ctx(),
        subject,
        "",
        "doorbell",
        "video/mp4",
        "doorbell.mp4",
    );
    upload(server, officer, start, seed, size, chunk)
        .await
        .unwrap()
}

// The `kluis` child process is awaited synchronously: keep a worker free for the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rows_written_by_hand_authenticate_nobody() {
    let server = TestServer::start().await;
    // Twin: a clean store verifies.
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 0, "{rows:?}");

    // 1. An inserted row: a copy of a real one with the attacker's own token hash.
    let forged = "kluis_".to_owned() + &"ab".repeat(32);
    let hash = Sha256::digest(forged.as_bytes()).to_vec();
    db(&server)
        .execute(
            "INSERT INTO tokens (id, hash, principal, roles, scope_subject, created_at, expires_at,
                revoked_at, requested_by, needs_approval, approved_by, approved_at, mac)
             SELECT 'tok_forged', ?1, principal, roles, scope_subject, created_at, expires_at,
                revoked_at, requested_by, needs_approval, approved_by, approved_at, mac
             FROM tokens WHERE principal = 'test-nuisance-officer'",
            params![hash],
        )
        .unwrap();
    let status = who_am_i(&server, &forged).await.err().unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);

    // 2. An edited role: customer service made a fraud investigator. The token never
    //    authenticates as edited: for at most a second after it was last authenticated from
    //    its row it authenticates as kluis wrote it (`TOKEN_SEEN_FOR`), then as nobody.
    let cs = server.token(Role::CustomerService).to_owned();
    assert!(who_am_i(&server, &cs).await.is_ok(), "twin: untouched");
    db(&server)
        .execute(
            "UPDATE tokens SET roles = 'fraud-investigator' WHERE principal = 'test-customer-service'",
            [],
        )
        .unwrap();
    refused_within_a_second(&server, &cs, std::time::Instant::now(), "customer-service").await;
    let status = who_am_i(&server, &cs).await.err().unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);

    // 3. An undone revocation.
    let mut admin = server.admin().await;
    let so = server.token(Role::SecurityOfficer);
    let issued = admin
        .issue_token(req(
            so,
            pb::IssueTokenRequest {
                principal_id: "emp-77".into(),
                roles: vec!["maintenance-planner".into()],
                ttl_seconds: 3600,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    approve(&server, &issued.token_id).await;
    assert!(who_am_i(&server, &issued.token).await.is_ok());
    admin
        .revoke_token(req(
            so,
            pb::RevokeTokenRequest {
                token_id: issued.token_id.clone(),
                justification: "left".into(),
            },
        ))
        .await
        .unwrap();
    assert!(who_am_i(&server, &issued.token).await.is_err());
    db(&server)
        .execute(
            "UPDATE tokens SET revoked_at = NULL WHERE id = ?1",
            [&issued.token_id],
        )
        .unwrap();
    let status = who_am_i(&server, &issued.token).await.err().unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);

    // 4. An approval written by hand on a token waiting for one.
    let pending = admin
        .issue_token(req(
            so,
            pb::IssueTokenRequest {
                principal_id: "emp-78".into(),
                roles: vec!["nuisance-officer".into()],
                ttl_seconds: 3600,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    db(&server)
        .execute(
            "UPDATE tokens SET approved_at = 1, approved_by = 'test-privacy-officer' WHERE id = ?1",
            [&pending.token_id],
        )
        .unwrap();
    assert_eq!(
        who_am_i(&server, &pending.token)
            .await
            .err()
            .unwrap()
            .code(),
        Code::Unauthenticated
    );

    // The security officer still works, and verification names every bad row.
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4, "{rows:?}");
    assert!(names(&rows, "token", "tok_forged"), "{rows:?}");
    assert!(names(&rows, "token", &issued.token_id), "{rows:?}");
    assert!(names(&rows, "token", &pending.token_id), "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r["kind"] == "token").count(), 4);
    // Nothing of a row's contents is printed: ids and problems only.
    assert!(rows.iter().all(|r| r.as_object().unwrap().len() == 3));
    server.stop().await;
}

/// A token row deleted by hand (an operator stopping a stolen token with SQL at night)
/// authenticates nobody within a second, on every door, even when the token was just used; a
/// revocation through kluis is in force on the very next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_row_deleted_by_hand_authenticates_nobody_within_a_second() {
    let server = TestServer::start().await;
    let planner = server.token(Role::MaintenancePlanner).to_owned();
    let finance = server.token(Role::FinanceOfficer).to_owned();
    assert!(who_am_i(&server, &planner).await.is_ok());
    assert!(who_am_i(&server, &finance).await.is_ok());
    let deleted = db(&server)
        .execute(
            "DELETE FROM tokens WHERE principal = 'test-maintenance-planner'",
            [],
        )
        .unwrap();
    assert_eq!(deleted, 1);
    refused_within_a_second(
        &server,
        &planner,
        std::time::Instant::now(),
        "maintenance-planner",
    )
    .await;
    // Every door refuses it from then on; the twin, untouched, works.
    let status = who_am_i(&server, &planner).await.err().unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(who_am_i(&server, &finance).await.is_ok());

    // Revoked through kluis right after a call: refused on the next one, at every door.
    let mut admin = server.admin().await;
    let so = server.token(Role::SecurityOfficer);
    let listed = admin
        .list_tokens(req(so, pb::ListTokensRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let id = listed
        .tokens
        .iter()
        .find(|t| t.principal_id == "test-finance-officer")
        .map(|t| t.token_id.clone())
        .unwrap();
    assert!(who_am_i(&server, &finance).await.is_ok());
    admin
        .revoke_token(req(
            so,
            pb::RevokeTokenRequest {
                token_id: id,
                justification: "stolen".into(),
            },
        ))
        .await
        .unwrap();
    let status = who_am_i(&server, &finance).await.err().unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);
    server.stop().await;
}

/// A record read again and again (which a store may answer from what it kept of an earlier
/// read, found authentic then) is checked again once any of its rows, or of its subject's
/// facts, is edited by hand: the read after the edit is refused, the one after the row is put
/// back answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_read_many_times_is_checked_again_once_its_rows_are_edited() {
    let server = TestServer::start().await;
    let id = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        SCOPED_SUBJECT,
        vec![text("statement", "nuisance-evidence", "shouting at night")],
    )
    .await;
    let officer = server.token(Role::NuisanceOfficer).to_owned();
    let reads = || async {
        let mut codes = Vec::new();
        for _ in 0..3 {
            codes.push(match get(&server, &officer, nuisance_ctx(), &id).await {
                Ok(_) => Code::Ok,
                Err(status) => {
                    assert!(!status.message().contains("shouting"), "{status:?}");
                    status.code()
                }
            });
        }
        codes
    };
    assert_eq!(reads().await, [Code::Ok; 3]);
    for (edit, undo, what) in [
        (
            "UPDATE records SET closed_at = 1 WHERE id = ?1",
            "UPDATE records SET closed_at = NULL WHERE id = ?1",
            "the record's row",
        ),
        (
            "UPDATE fields SET category = 'contact' WHERE record_id = ?1",
            "UPDATE fields SET category = 'nuisance-evidence' WHERE record_id = ?1",
            "a field's row",
        ),
        (
            "UPDATE subject_anchors SET holds = holds + 1
             WHERE subject = (SELECT subject FROM records WHERE id = ?1)",
            "UPDATE subject_anchors SET holds = holds - 1
             WHERE subject = (SELECT subject FROM records WHERE id = ?1)",
            "the subject's anchor",
        ),
    ] {
        db(&server).execute(edit, [&id]).unwrap();
        assert_eq!(reads().await, [Code::DataLoss; 3], "{what}");
        db(&server).execute(undo, [&id]).unwrap();
        assert_eq!(reads().await, [Code::Ok; 3], "{what} put back");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_rows_edited_by_hand_are_not_obeyed() {
    let server = TestServer::start().await;
    let subject = SCOPED_SUBJECT;
    let id = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        subject,
        vec![text("statement", "nuisance-evidence", "shouting at night")],
    )
    .await;
    let me = server.token(Role::Subject).to_owned();
    let mine = || get(&server, &me, nuisance_ctx(), &id);
    // The open case is kept from the subject.
    assert_eq!(mine().await.err().unwrap().code(), Code::PermissionDenied);
    // `closed_at` set by hand on the open case: not obeyed, and no plaintext.
    db(&server)
        .execute("UPDATE records SET closed_at = 1 WHERE id = ?1", [&id])
        .unwrap();
    let status = mine().await.err().unwrap();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(!status.message().contains("shouting"));
    // Nor through the listing or the export.
    let mut client = server.client().await;
    let listed = client
        .list_records(req(
            &me,
            pb::ListRecordsRequest {
                context: nuisance_ctx(),
                subject_id: subject.into(),
                ..Default::default()
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(listed.code(), Code::DataLoss);
    // Twin: the officer who may read it is refused too (the row is not trusted for anyone),
    // and after putting the row back, the officer reads it again.
    let officer = server.token(Role::NuisanceOfficer).to_owned();
    assert_eq!(
        get(&server, &officer, nuisance_ctx(), &id)
            .await
            .err()
            .unwrap()
            .code(),
        Code::DataLoss
    );
    db(&server)
        .execute("UPDATE records SET closed_at = NULL WHERE id = ?1", [&id])
        .unwrap();
    assert!(get(&server, &officer, nuisance_ctx(), &id).await.is_ok());

    // A record moved to another subject, or another purpose, fails the same way.
    for (sql, what) in [
        (
            "UPDATE records SET subject = 'REL-0002' WHERE id = ?1",
            "subject",
        ),
        (
            "UPDATE records SET purpose = 'safety' WHERE id = ?1",
            "purpose",
        ),
        (
            "UPDATE records SET labels = '{\"case\":\"x\"}' WHERE id = ?1",
            "labels",
        ),
        ("UPDATE records SET expires_at = 99 WHERE id = ?1", "expiry"),
    ] {
        let before: (String, String, String, Option<i64>) = db(&server)
            .query_row(
                "SELECT subject, purpose, labels, expires_at FROM records WHERE id = ?1",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        db(&server).execute(sql, [&id]).unwrap();
        let status = get(&server, &officer, ctx("safety", "N-1", "check"), &id)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(status.code(), Code::DataLoss),
            "{what}: {status:?}"
        );
        let (code, rows) = store_verify(&server);
        assert_eq!(code, 4, "{what}");
        assert!(names(&rows, "record", &id), "{what}: {rows:?}");
        db(&server)
            .execute(
                "UPDATE records SET subject = ?2, purpose = ?3, labels = ?4, expires_at = ?5
                 WHERE id = ?1",
                params![id, before.0, before.1, before.2, before.3],
            )
            .unwrap();
    }
    let (code, _) = store_verify(&server);
    assert_eq!(code, 0);

    // A field's category edited by hand (special evidence made plain contact) or moved to
    // another record: not decided on, not listed.
    let cs = server.token(Role::CustomerService).to_owned();
    let other = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        subject,
        vec![text("phone", "contact", "06-2222")],
    )
    .await;
    db(&server)
        .execute(
            "UPDATE fields SET category = 'contact' WHERE record_id = ?1 AND name = 'statement'",
            [&id],
        )
        .unwrap();
    let status = get(&server, &officer, nuisance_ctx(), &id)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::DataLoss);
    // A read naming that field alone (which reads its row only), or another field, alike.
    for name in ["statement", "phone"] {
        let status = server
            .client()
            .await
            .get_record(req(
                &officer,
                pb::GetRecordRequest {
                    context: nuisance_ctx(),
                    record_id: id.clone(),
                    fields: vec![name.into()],
                },
            ))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::DataLoss, "{name}");
    }
    // Listed to whoever may know of the record: refused, as the read. (A caller who may know
    // of none of it gets nothing of it either way: a record is checked before it is shown.)
    let mut client = server.client().await;
    let listed = client
        .list_records(req(
            &officer,
            pb::ListRecordsRequest {
                context: nuisance_ctx(),
                subject_id: subject.into(),
                ..Default::default()
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(listed.code(), Code::DataLoss);
    let hidden = list_records(&server, &cs, nuisance_ctx(), subject)
        .await
        .unwrap();
    assert!(
        hidden.is_empty(),
        "customer service may know of no nuisance record"
    );
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4);
    assert!(
        names(&rows, "field", &format!("{id}/statement")),
        "{rows:?}"
    );
    db(&server)
        .execute(
            "UPDATE fields SET category = 'nuisance-evidence' WHERE record_id = ?1",
            [&id],
        )
        .unwrap();
    // Twin: put back, it reads again.
    assert!(get(&server, &officer, nuisance_ctx(), &id).await.is_ok());
    db(&server)
        .execute(
            "UPDATE fields SET record_id = ?2 WHERE record_id = ?1 AND name = 'statement'",
            params![id, other],
        )
        .unwrap();
    assert_eq!(
        get(&server, &officer, nuisance_ctx(), &other)
            .await
            .err()
            .unwrap()
            .code(),
        Code::DataLoss
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consents_mandates_and_holds_edited_or_deleted_by_hand_are_not_obeyed() {
    let server = TestServer::start().await;
    let subject = SCOPED_SUBJECT;
    let mut admin = server.admin().await;
    let po = server.token(Role::PrivacyOfficer).to_owned();

    // An objection flipped back to consent by hand.
    let screening = put(
        &server,
        Role::AllocationOfficer,
        ctx("financial-screening", "", ""),
        subject,
        vec![text("income", "income", "2100")],
    )
    .await;
    let allocation = server.token(Role::AllocationOfficer).to_owned();
    assert!(
        get(
            &server,
            &allocation,
            ctx("financial-screening", "", ""),
            &screening
        )
        .await
        .is_ok()
    );
    admin
        .record_consent(req(
            &po,
            pb::RecordConsentRequest {
                subject_id: subject.into(),
                purpose: "financial-screening".into(),
                state: "objected".into(),
                justification: "letter 2026-11-02".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        get(
            &server,
            &allocation,
            ctx("financial-screening", "", ""),
            &screening
        )
        .await
        .err()
        .unwrap()
        .code(),
        Code::PermissionDenied
    );
    db(&server)
        .execute("UPDATE consents SET state = 'given'", [])
        .unwrap();
    assert_eq!(
        get(
            &server,
            &allocation,
            ctx("financial-screening", "", ""),
            &screening
        )
        .await
        .err()
        .unwrap()
        .code(),
        Code::DataLoss
    );
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4);
    let consent_id = format!("{subject}/financial-screening");
    assert!(names(&rows, "consent", &consent_id), "{rows:?}");
    // The twin: the state put back, the objection is obeyed again.
    db(&server)
        .execute("UPDATE consents SET state = 'objected'", [])
        .unwrap();
    let screening_read = || {
        get(
            &server,
            &allocation,
            ctx("financial-screening", "", ""),
            &screening,
        )
    };
    assert_eq!(
        screening_read().await.err().unwrap().code(),
        Code::PermissionDenied
    );
    // Deleted outright: the subject's anchor counts a consent state that is not stored, so
    // the request path fails closed, and verification names both.
    let saved: (String, String, String, i64, String, Vec<u8>) = db(&server)
        .query_row(
            "SELECT subject, purpose, state, at, recorded_by, mac FROM consents",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .unwrap();
    db(&server).execute("DELETE FROM consents", []).unwrap();
    assert_eq!(screening_read().await.err().unwrap().code(), Code::DataLoss);
    // Writing under another purpose for the subject fails closed too.
    let status = server
        .client()
        .await
        .put_record(req(
            server.token(Role::CustomerService),
            pb::PutRecordRequest {
                context: ctx("contract", "", ""),
                subject_id: subject.into(),
                fields: vec![text("email", "contact", "me@example.nl")],
                labels: Default::default(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4);
    assert!(
        rows.iter().any(|r| r["kind"] == "consent"
            && r["id"] == consent_id.as_str()
            && r["problem"].as_str().unwrap().contains("deleted")),
        "{rows:?}"
    );
    assert!(names(&rows, "anchor", subject), "{rows:?}");
    // The anchor deleted as well: the subject has records, so it must have one.
    let anchor: (i64, i64, Vec<u8>, Vec<u8>) = db(&server)
        .query_row(
            "SELECT holds, consents, mac, digest FROM subject_anchors WHERE subject = ?1",
            [subject],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    db(&server)
        .execute("DELETE FROM subject_anchors WHERE subject = ?1", [subject])
        .unwrap();
    assert_eq!(screening_read().await.err().unwrap().code(), Code::DataLoss);
    // The twin: both rows put back as kluis wrote them, the objection is obeyed again.
    db(&server)
        .execute(
            "INSERT INTO subject_anchors (subject, holds, consents, mac, digest)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![subject, anchor.0, anchor.1, anchor.2, anchor.3],
        )
        .unwrap();
    db(&server)
        .execute(
            "INSERT INTO consents (subject, purpose, state, at, recorded_by, mac)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![saved.0, saved.1, saved.2, saved.3, saved.4, saved.5],
        )
        .unwrap();
    assert_eq!(
        screening_read().await.err().unwrap().code(),
        Code::PermissionDenied
    );

    // A mandate widened by hand.
    let contract = put(
        &server,
        Role::CustomerService,
        ctx("contract", "", ""),
        subject,
        vec![
            text("email", "contact", "me@example.nl"),
            text("name", "identity", "M. de Boer"),
        ],
    )
    .await;
    let mandate = admin
        .grant_mandate(req(
            &po,
            pb::GrantMandateRequest {
                subject_id: subject.into(),
                representative_id: "test-representative".into(),
                purposes: vec!["contract".into()],
                categories: vec!["contact".into()],
                valid_until: Some(prost_types::Timestamp {
                    seconds: kluis::domain::now_unix() + 86_400,
                    nanos: 0,
                }),
                justification: "volmacht".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let rep = server.token(Role::Representative).to_owned();
    let read = get(
        &server,
        &rep,
        ctx("contract", "", "for my mother"),
        &contract,
    )
    .await
    .unwrap();
    assert_eq!(read.fields.len(), 1, "twin: contact only");
    db(&server)
        .execute(
            "UPDATE mandates SET categories = 'contact,identity' WHERE id = ?1",
            [&mandate.mandate_id],
        )
        .unwrap();
    assert_eq!(
        get(
            &server,
            &rep,
            ctx("contract", "", "for my mother"),
            &contract
        )
        .await
        .err()
        .unwrap()
        .code(),
        Code::DataLoss
    );

    // A hold released by hand does not let deletion through; a deleted one is found.
    let held = put(
        &server,
        Role::CustomerService,
        ctx("customer-service", "", ""),
        "REL-HOLD",
        vec![text("phone", "contact", "06-1111")],
    )
    .await;
    let hold = admin
        .place_hold(req(
            &po,
            pb::PlaceHoldRequest {
                subject_id: "REL-HOLD".into(),
                record_id: String::new(),
                reason: "pending claim".into(),
                case_ref: "LD-9".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    db(&server)
        .execute(
            "UPDATE holds SET released_at = 1, released_by = 'x' WHERE id = ?1",
            [&hold.hold_id],
        )
        .unwrap();
    let mut client = server.client().await;
    let delete = || pb::DeleteRecordRequest {
        context: ctx("customer-service", "", ""),
        record_id: held.clone(),
    };
    let status = client
        .delete_record(req(server.token(Role::CustomerService), delete()))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    // Not deleted; and while its hold does not check, nothing about the subject is decided.
    let kept: i64 = db(&server)
        .query_row("SELECT count(*) FROM records WHERE id = ?1", [&held], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(kept, 1, "the record is still there");
    assert_eq!(
        get(
            &server,
            server.token(Role::CustomerService),
            ctx("customer-service", "", ""),
            &held
        )
        .await
        .err()
        .unwrap()
        .code(),
        Code::DataLoss
    );
    // Deleted outright: the anchor counts it, so deletion is still refused.
    db(&server)
        .execute("DELETE FROM holds WHERE id = ?1", [&hold.hold_id])
        .unwrap();
    let status = client
        .delete_record(req(server.token(Role::CustomerService), delete()))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    let status = admin
        .erase_subject(req(
            &po,
            pb::EraseSubjectRequest {
                subject_id: "REL-HOLD".into(),
                justification: "art. 17".into(),
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(
        get(
            &server,
            server.token(Role::CustomerService),
            ctx("customer-service", "", ""),
            &held
        )
        .await
        .is_err(),
        "nothing about the subject is decided while its restrictions do not add up"
    );
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4);
    assert!(names(&rows, "mandate", &mandate.mandate_id), "{rows:?}");
    assert!(names(&rows, "hold", &hold.hold_id), "{rows:?}");
    assert!(names(&rows, "anchor", "REL-HOLD"), "{rows:?}");
    server.stop().await;
}

// The `kluis` child process is awaited synchronously: keep a worker free for the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_ciphertext_put_back_after_a_rectification_does_not_open() {
    let server = TestServer::start().await;
    let cs = server.token(Role::CustomerService).to_owned();
    let id = put(
        &server,
        Role::CustomerService,
        ctx("contract", "", ""),
        "REL-RECT",
        vec![
            text("email", "contact", "old@example.nl"),
            text("phone", "contact", "06-3333"),
        ],
    )
    .await;
    let old: Vec<u8> = db(&server)
        .query_row(
            "SELECT sealed FROM fields WHERE record_id = ?1 AND name = 'email'",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    // The whole older row, with its own version and MAC, kept aside by the attacker.
    type Row = (String, String, i64, Vec<u8>, Vec<u8>, String);
    let whole = |name: &str| -> Row {
        db(&server)
            .query_row(
                "SELECT category, kind, key_gen, sealed, mac, version FROM fields
                 WHERE record_id = ?1 AND name = ?2",
                params![id, name],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .unwrap()
    };
    let put_back = |name: &str, row: &Row| {
        db(&server)
            .execute(
                "INSERT INTO fields (record_id, name, category, kind, key_gen, sealed, mac, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (record_id, name) DO UPDATE SET category = excluded.category,
                    kind = excluded.kind, key_gen = excluded.key_gen, sealed = excluded.sealed,
                    mac = excluded.mac, version = excluded.version",
                params![id, name, row.0, row.1, row.2, row.3, row.4, row.5],
            )
            .unwrap();
    };
    let older = whole("email");
    server
        .client()
        .await
        .update_record(req(
            &cs,
            pb::UpdateRecordRequest {
                context: ctx("contract", "", ""),
                record_id: id.clone(),
                fields: vec![text("email", "contact", "new@example.nl")],
            },
        ))
        .await
        .unwrap();
    // Twin: the rectified value reads.
    let read = get(&server, &cs, ctx("contract", "", ""), &id)
        .await
        .unwrap();
    let email = read.fields.iter().find(|f| f.name == "email").unwrap();
    assert_eq!(text_of(email), "new@example.nl");
    let current = whole("email");
    // The old ciphertext put back in the field's place: bound to its own version, it fails.
    db(&server)
        .execute(
            "UPDATE fields SET sealed = ?2 WHERE record_id = ?1 AND name = 'email'",
            params![id, old],
        )
        .unwrap();
    let status = get(&server, &cs, ctx("contract", "", ""), &id)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::DataLoss);
    assert!(!status.message().contains("old@example.nl"));
    // Moving the version along with it makes the row fail its MAC instead.
    db(&server)
        .execute(
            "UPDATE fields SET version = 'v-forged' WHERE record_id = ?1 AND name = 'email'",
            [&id],
        )
        .unwrap();
    let read_code = || async {
        get(&server, &cs, ctx("contract", "", ""), &id)
            .await
            .err()
            .map(|s| s.code())
    };
    assert_eq!(read_code().await, Some(Code::DataLoss));
    // The whole older row put back (ciphertext, version and its own MAC together): the
    // record's field set names the newer version, so it does not open either.
    put_back("email", &older);
    assert_eq!(read_code().await, Some(Code::DataLoss));
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4);
    assert!(names(&rows, "field-set", &id), "{rows:?}");
    // The twin: the current row put back, the record reads again with the rectified value.
    put_back("email", &current);
    let read = get(&server, &cs, ctx("contract", "", ""), &id)
        .await
        .unwrap();
    assert_eq!(read.fields.len(), 2);
    // A field row deleted outright (its MAC goes with it): the set no longer matches.
    let phone = whole("phone");
    db(&server)
        .execute(
            "DELETE FROM fields WHERE record_id = ?1 AND name = 'phone'",
            [&id],
        )
        .unwrap();
    assert_eq!(read_code().await, Some(Code::DataLoss));
    let listed = server
        .client()
        .await
        .list_records(req(
            &cs,
            pb::ListRecordsRequest {
                context: ctx("contract", "", ""),
                subject_id: "REL-RECT".into(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(listed.err().map(|s| s.code()), Some(Code::DataLoss));
    put_back("phone", &phone);
    assert_eq!(read_code().await, None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_rows_edited_by_hand_are_not_obeyed() {
    let server = TestServer::start().await;
    let officer = server.token(Role::NuisanceOfficer).to_owned();
    let put = doorbell(&server, &officer, "REL-EV-T", 3, 70_000, 16_384).await;
    // Twin: untouched, it downloads, with its digest for the reader.
    let (info, bytes) = download(&server, &officer, nuisance_ctx(), &put.evidence_id, None)
        .await
        .unwrap();
    assert_eq!(bytes.len(), 70_000);
    assert_eq!(info.sha256, put.sha256);
    for (sql, what) in [
        (
            "UPDATE evidence SET media_type = 'text/plain' WHERE id = ?1",
            "media type",
        ),
        ("UPDATE evidence SET size = 10 WHERE id = ?1", "size"),
        (
            "UPDATE evidence SET category = 'contact' WHERE id = ?1",
            "category",
        ),
    ] {
        let before: (String, i64, String) = db(&server)
            .query_row(
                "SELECT media_type, size, category FROM evidence WHERE id = ?1",
                [&put.evidence_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        db(&server).execute(sql, [&put.evidence_id]).unwrap();
        let status = download(&server, &officer, nuisance_ctx(), &put.evidence_id, None)
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::DataLoss, "{what}");
        let (code, rows) = store_verify(&server);
        assert_eq!(code, 4, "{what}");
        assert!(
            names(&rows, "evidence", &put.evidence_id),
            "{what}: {rows:?}"
        );
        db(&server)
            .execute(
                "UPDATE evidence SET media_type = ?2, size = ?3, category = ?4 WHERE id = ?1",
                params![put.evidence_id, before.0, before.1, before.2],
            )
            .unwrap();
    }
    assert!(
        download(&server, &officer, nuisance_ctx(), &put.evidence_id, None)
            .await
            .is_ok()
    );
    // Marked unfinished by hand: not taken for an interrupted upload at start (which would be
    // discarded), but kept, and damaged rather than absent.
    let id = put.evidence_id.clone();
    let mark = move |path: &std::path::Path| {
        Connection::open(path)
            .unwrap()
            .execute("UPDATE evidence SET complete = 0 WHERE id = ?1", [&id])
            .unwrap();
    };
    let server = server.restart_with(mark).await;
    // Start-up discards what uploads a crash left unfinished beside serving: give it time.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let status = download(&server, &officer, nuisance_ctx(), &put.evidence_id, None)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    let segments: i64 = db(&server)
        .query_row(
            "SELECT count(*) FROM evidence_segments WHERE evidence_id = ?1",
            [&put.evidence_id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(segments > 0, "the file's segments are still there");
    // Nor is it left out of the other doors as an upload still running: listed, exported or
    // deleted with its record, it is damaged; store verify names it.
    let status = list_records(&server, &officer, nuisance_ctx(), "REL-EV-T")
        .await
        .expect_err("a record whose file was marked unfinished by hand is not listed without it");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    let po = server.token(Role::PrivacyOfficer).to_owned();
    let status = export(
        &server,
        &po,
        ctx("nuisance", "SAR-7", "subject access request"),
        "REL-EV-T",
        false,
    )
    .await
    .expect_err("an export does not leave out a finished file marked unfinished by hand");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    let status = server
        .client()
        .await
        .delete_record(req(
            &officer,
            pb::DeleteRecordRequest {
                context: nuisance_ctx(),
                record_id: put.record_id.clone(),
            },
        ))
        .await
        .expect_err("a record is not deleted past a file marked unfinished by hand");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4, "{rows:?}");
    assert!(names(&rows, "evidence", &put.evidence_id), "{rows:?}");
    // A rekey would pass over it and replace the key it is sealed under: refused.
    let status = rekey(&server, "nuisance")
        .await
        .expect_err("a rekey passes over a finished file marked unfinished by hand");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    // The twin: marked complete again, it downloads whole.
    let id = put.evidence_id.clone();
    let unmark = move |path: &std::path::Path| {
        Connection::open(path)
            .unwrap()
            .execute("UPDATE evidence SET complete = 1 WHERE id = ?1", [&id])
            .unwrap();
    };
    let server = server.restart_with(unmark).await;
    let (_, bytes) = download(&server, &officer, nuisance_ctx(), &put.evidence_id, None)
        .await
        .unwrap();
    assert_eq!(bytes.len(), 70_000);
    let listed = list_records(&server, &officer, nuisance_ctx(), "REL-EV-T")
        .await
        .unwrap();
    assert!(lists_evidence(&listed, &put.evidence_id), "{listed:?}");
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 0, "{rows:?}");
    // And a rekey reseals it: it still downloads whole.
    rekey(&server, "nuisance").await.unwrap();
    let (_, again) = download(&server, &officer, nuisance_ctx(), &put.evidence_id, None)
        .await
        .unwrap();
    assert!(again == bytes, "the file read after the rekey differs");
    // Another spelling of "finished" that the store reads as finished is resealed by a rekey
    // like the others, not passed over and lost with the key it was sealed under.
    let flag = |value: &str| {
        db(&server)
            .execute(
                &format!("UPDATE evidence SET complete = {value} WHERE id = ?1"),
                [&put.evidence_id],
            )
            .unwrap();
    };
    for spelling in ["2", "-1"] {
        flag(spelling);
        rekey(&server, "nuisance").await.unwrap();
        flag("1");
        let (_, again) = download(&server, &officer, nuisance_ctx(), &put.evidence_id, None)
            .await
            .unwrap_or_else(|s| panic!("complete = {spelling} over a rekey: {s:?}"));
        assert!(again == bytes, "complete = {spelling}: the file differs");
    }
    // A flag of another type: store verify names the record's evidence and goes on, and a
    // rekey does not pass over it.
    flag("'yes'");
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4, "{rows:?}");
    assert!(names(&rows, "record", &put.record_id), "{rows:?}");
    let status = rekey(&server, "nuisance")
        .await
        .expect_err("a rekey passes over a file whose flag cannot be read");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    flag("1");
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 0, "{rows:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_request_deadline_moved_by_hand_is_not_obeyed() {
    let server = TestServer::start().await;
    let po = server.token(Role::PrivacyOfficer).to_owned();
    let mut admin = server.admin().await;
    let opened = admin
        .open_subject_request(req(
            &po,
            pb::OpenSubjectRequestRequest {
                subject_id: "REL-SAR".into(),
                kind: "access".into(),
                received_at: Some(prost_types::Timestamp {
                    seconds: kluis::domain::now_unix() - 40 * 86_400,
                    nanos: 0,
                }),
                note: "letter 12".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let overdue = || pb::ListSubjectRequestsRequest { overdue_only: true };
    // Twin: untouched, it is listed as overdue.
    let listed = admin
        .list_subject_requests(req(&po, overdue()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.requests.len(), 1);
    // The deadline moved forward by hand, to hide that it is overdue: not obeyed.
    db(&server)
        .execute(
            "UPDATE subject_requests SET due_at = due_at + 90 * 86400 WHERE id = ?1",
            [&opened.request_id],
        )
        .unwrap();
    let status = admin
        .list_subject_requests(req(&po, overdue()))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::DataLoss);
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4);
    assert!(names(&rows, "request", &opened.request_id), "{rows:?}");
    // Deleted outright: the trail says it was opened, so verification finds it missing.
    db(&server)
        .execute(
            "DELETE FROM subject_requests WHERE id = ?1",
            [&opened.request_id],
        )
        .unwrap();
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4);
    assert!(
        rows.iter().any(|r| r["kind"] == "request"
            && r["id"] == opened.request_id.as_str()
            && r["problem"].as_str().unwrap().contains("deleted")),
        "{rows:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn forged_expired_rows_do_not_stall_the_retention_sweep() {
    let clock = TestClock::at_now();
    let server = TestServer::start_with_clock(clock.clone()).await;
    let genuine = put(
        &server,
        Role::CustomerService,
        ctx("customer-service", "", ""),
        "REL-SWEEP",
        vec![text("phone", "contact", "06-3333")],
    )
    .await;
    // 600 record rows written by hand, expired long ago: more than a page of the sweep.
    let conn = db(&server);
    for i in 0..600 {
        conn.execute(
            "INSERT INTO records (id, subject, purpose, labels, created_at, updated_at,
                closed_at, expires_at, mac)
             VALUES (?1, 'REL-FORGED', 'customer-service', '{}', 1, 1, NULL, 1, x'00')",
            [format!("rec_{i:032x}")],
        )
        .unwrap();
    }
    clock.advance(3 * 365 * 86_400);
    let swept = server
        .admin()
        .await
        .sweep_retention(req(
            server.token(Role::PrivacyOfficer),
            pb::SweepRetentionRequest { dry_run: false },
        ))
        .await
        .unwrap()
        .into_inner();
    // The genuine expired record is destroyed; none of the forged ones is obeyed or destroyed.
    // The node's own sweep runs once as it starts, and on a loaded machine that run can come
    // after the clock moved: then it destroyed the record, and this sweep found nothing left.
    let listed: Vec<&str> = swept.records.iter().map(|r| r.record_id.as_str()).collect();
    assert!(
        listed.is_empty() || listed == [genuine.as_str()],
        "{listed:?}"
    );
    let destroyed: Vec<String> = audit_entries(&server)
        .iter()
        .filter(|e| e["action"] == "retention-destroy" && e["decision"] == "allow")
        .map(|e| e["record"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(destroyed, std::slice::from_ref(&genuine));
    let left: i64 = conn
        .query_row(
            "SELECT count(*) FROM records WHERE subject = 'REL-FORGED'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 600);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purpose_key_states_edited_by_hand_are_not_obeyed() {
    let server = TestServer::start().await;
    let so = server.token(Role::SecurityOfficer).to_owned();
    let mut admin = server.admin().await;
    let rotated = admin
        .rotate_key(req(
            &so,
            pb::RotateKeyRequest {
                purpose: "nuisance".into(),
                algorithm: String::new(),
                justification: "yearly".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.version, 2);
    let write = |subject: &'static str| {
        let server = &server;
        async move {
            server
                .client()
                .await
                .put_record(req(
                    server.token(Role::NuisanceOfficer),
                    pb::PutRecordRequest {
                        context: ctx("nuisance", "N-7", "complaint"),
                        subject_id: subject.into(),
                        fields: vec![text("phone", "contact", "06-2222")],
                        labels: Default::default(),
                    },
                ))
                .await
        }
    };
    write("REL-K1").await.unwrap();
    let restore = |server: &TestServer| {
        db(server)
            .execute(
                "UPDATE purpose_keys SET state = CASE version WHEN 1 THEN 'decrypt-only' ELSE 'active' END,
                    algorithm = 'aes-256-gcm', destroy_after = NULL, barred = 0
                 WHERE purpose = 'nuisance'",
                [],
            )
            .unwrap();
    };
    for (edit, what) in [
        (
            "UPDATE purpose_keys SET state = 'active' WHERE purpose = 'nuisance' AND version = 1",
            "a retired version made active again",
        ),
        (
            "UPDATE purpose_keys SET algorithm = 'xchacha20-poly1305' WHERE purpose = 'nuisance' AND version = 2",
            "the algorithm of the active version changed",
        ),
        (
            "UPDATE purpose_keys SET state = 'scheduled', destroy_after = 1 WHERE purpose = 'nuisance' AND version = 1",
            "a destruction scheduled by hand",
        ),
        (
            "UPDATE purpose_keys SET barred = 1 WHERE purpose = 'nuisance' AND version = 1",
            "a minimum raised by hand",
        ),
        (
            "UPDATE purpose_keys SET state = 'Active ' WHERE purpose = 'nuisance' AND version = 2",
            "a state no kluis writes",
        ),
    ] {
        db(&server).execute(edit, []).unwrap();
        let status = write("REL-K2")
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: obeyed"));
        assert_eq!(status.code(), Code::DataLoss, "{what}: {status:?}");
        assert!(!status.message().contains("06-2222"));
        // The allowed write that could not be carried out is on the trail all the same.
        let entry = audit_entries(&server)
            .into_iter()
            .rev()
            .find(|e| e["action"] == "write")
            .unwrap();
        assert_eq!(entry["subject"], "REL-K2", "{what}: {entry}");
        assert_eq!(entry["decision"], "deny", "{what}: {entry}");
        assert!(
            entry["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("not carried out")),
            "{what}: {entry}"
        );
        assert!(!entry.to_string().contains("06-2222"));
        let (code, rows) = store_verify(&server);
        assert_eq!(code, 4, "{what}");
        assert!(
            names(&rows, "purpose-key", "nuisance v1")
                || names(&rows, "purpose-key", "nuisance v2")
                || names(&rows, "purpose-key", "nuisance"),
            "{what}: {rows:?}"
        );
        // The twin: the row put back as kluis wrote it, writes work again.
        restore(&server);
        write("REL-K2")
            .await
            .unwrap_or_else(|s| panic!("{what}: twin {s:?}"));
    }
    // An older copy of the active row put back beside the new one: two active versions.
    db(&server)
        .execute(
            "UPDATE purpose_keys SET state = 'active', retired_at = NULL,
                mac = (SELECT mac FROM purpose_keys WHERE purpose = 'nuisance' AND version = 2)
             WHERE purpose = 'nuisance' AND version = 1",
            [],
        )
        .unwrap();
    assert_eq!(write("REL-K3").await.unwrap_err().code(), Code::DataLoss);
    let (code, _) = store_verify(&server);
    assert_eq!(code, 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rectifications_keep_the_field_set_whole() {
    let server = TestServer::start().await;
    let cs = server.token(Role::CustomerService).to_owned();
    let id = put(
        &server,
        Role::CustomerService,
        ctx("contract", "", ""),
        "REL-CONC",
        vec![text("email", "contact", "a@example.nl")],
    )
    .await;
    // Sixteen writers, each rectifying or adding its own field of the same record at once: the
    // field-set MAC is replaced over the one each read, so none is lost and none breaks it.
    let mut writers = Vec::new();
    for i in 0..16 {
        let (server_addr, cs, id) = (server.addr, cs.clone(), id.clone());
        writers.push(tokio::spawn(async move {
            let mut client =
                kluis::pb::vault_client::VaultClient::connect(format!("http://{server_addr}"))
                    .await
                    .unwrap();
            for round in 0..3 {
                let name = if i % 2 == 0 {
                    "email".to_owned()
                } else {
                    format!("note{i}")
                };
                client
                    .update_record(req(
                        &cs,
                        pb::UpdateRecordRequest {
                            context: ctx("contract", "", ""),
                            record_id: id.clone(),
                            fields: vec![text(&name, "contact", &format!("v{i}-{round}"))],
                        },
                    ))
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let read = get(&server, &cs, ctx("contract", "", ""), &id)
        .await
        .unwrap();
    assert_eq!(read.fields.len(), 9, "email and eight notes");
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 0, "{rows:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_keys_swapped_by_hand_fail_as_data_loss() {
    let server = TestServer::start().await;
    let cs = server.token(Role::CustomerService).to_owned();
    let a = put(
        &server,
        Role::CustomerService,
        ctx("contract", "", ""),
        "REL-SWAP-A",
        vec![text("email", "contact", "a@example.nl")],
    )
    .await;
    put(
        &server,
        Role::CustomerService,
        ctx("contract", "", ""),
        "REL-SWAP-B",
        vec![text("email", "contact", "b@example.nl")],
    )
    .await;
    let swap = |path: &std::path::Path| {
        let db = Connection::open(path).unwrap();
        db.execute_batch(
            "UPDATE subject_keys SET subject = 'tmp' WHERE subject = 'REL-SWAP-A';
             UPDATE subject_keys SET subject = 'REL-SWAP-A' WHERE subject = 'REL-SWAP-B';
             UPDATE subject_keys SET subject = 'REL-SWAP-B' WHERE subject = 'tmp';",
        )
        .unwrap();
    };
    // B's wrapped key presented as A's (after a restart, so nothing is cached): not an
    // internal fault but damaged data, and no value of either subject.
    let server = server.restart_with(swap).await;
    let status = get(&server, &cs, ctx("contract", "", ""), &a)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(!status.message().contains("example.nl"));
    // The twin: swapped back, A reads again.
    let server = server.restart_with(swap).await;
    let read = get(&server, &cs, ctx("contract", "", ""), &a)
        .await
        .unwrap();
    assert_eq!(text_of(&read.fields[0]), "a@example.nl");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_admin_action_the_store_refuses_is_on_the_trail_as_not_carried_out() {
    let server = TestServer::start().await;
    let po = server.token(Role::PrivacyOfficer).to_owned();
    let mut admin = server.admin().await;
    let place = |subject: &str| {
        req(
            &po,
            pb::PlaceHoldRequest {
                subject_id: subject.into(),
                record_id: String::new(),
                reason: "pending claim".into(),
                case_ref: "LD-12".into(),
            },
        )
    };
    // The database refuses every new hold (a full disk, a constraint): the policy allowed it,
    // the entry was written first, so a second entry must say it did not happen.
    db(&server)
        .execute_batch(
            "CREATE TRIGGER no_holds BEFORE INSERT ON holds
             BEGIN SELECT RAISE(ABORT, 'refused by the database'); END;",
        )
        .unwrap();
    let status = admin.place_hold(place("REL-NOHOLD")).await.unwrap_err();
    // kluis refuses the statement that would run the trigger (its log says what it found).
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let entries = audit_entries(&server);
    let holds: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["action"] == "hold-place" && e["subject"] == "REL-NOHOLD")
        .collect();
    assert_eq!(holds.len(), 2, "{holds:?}");
    assert_eq!(holds[0]["decision"], "allow");
    assert_eq!(holds[1]["decision"], "deny");
    assert!(
        holds[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("not carried out"),
        "{holds:?}"
    );
    // The twin: with the database willing again, the hold is placed and on the trail once.
    db(&server).execute_batch("DROP TRIGGER no_holds;").unwrap();
    admin.place_hold(place("REL-YESHOLD")).await.unwrap();
    let entries = audit_entries(&server);
    let placed: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["action"] == "hold-place" && e["subject"] == "REL-YESHOLD")
        .collect();
    assert_eq!(placed.len(), 1, "{placed:?}");
    assert_eq!(placed[0]["decision"], "allow");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_copy_of_a_token_row_put_back_authenticates_nobody() {
    let server = TestServer::start().await;
    let so = server.token(Role::SecurityOfficer).to_owned();
    let mut admin = server.admin().await;
    // A customer-service token, as the privacy officer approved it.
    let issued = admin
        .issue_token(req(
            &so,
            pb::IssueTokenRequest {
                principal_id: "emp-rollback".into(),
                roles: vec!["customer-service".into()],
                ttl_seconds: 3600,
                scope_subject_id: String::new(),
                justification: "new colleague".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // The row as it was while it waited for approval, kept by the attacker.
    let pending: (Vec<u8>,) = db(&server)
        .query_row(
            "SELECT mac FROM tokens WHERE id = ?1",
            [&issued.token_id],
            |r| Ok((r.get(0)?,)),
        )
        .unwrap();
    approve(&server, &issued.token_id).await;
    let token = issued.token.clone();
    assert!(who_am_i(&server, &token).await.is_ok(), "twin: it works");
    // The attacker keeps a copy of the live row, then the token is revoked.
    let copy: Vec<u8> = db(&server)
        .query_row(
            "SELECT mac FROM tokens WHERE id = ?1",
            [&issued.token_id],
            |r| r.get(0),
        )
        .unwrap();
    admin
        .revoke_token(req(
            &so,
            pb::RevokeTokenRequest {
                token_id: issued.token_id.clone(),
                justification: "left".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        who_am_i(&server, &token).await.err().unwrap().code(),
        Code::Unauthenticated
    );
    // The older row put back: authentic by its own MAC, but not the row kluis last wrote.
    db(&server)
        .execute(
            "UPDATE tokens SET revoked_at = NULL, mac = ?2 WHERE id = ?1",
            params![issued.token_id, copy],
        )
        .unwrap();
    assert_eq!(
        who_am_i(&server, &token).await.err().unwrap().code(),
        Code::Unauthenticated
    );
    // Also after a restart (nothing of it held in memory).
    let server = server.restart_with(|_| {}).await;
    assert_eq!(
        who_am_i(&server, &token).await.err().unwrap().code(),
        Code::Unauthenticated
    );
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4);
    assert!(
        rows.iter().any(|r| r["kind"] == "token"
            && r["id"] == issued.token_id.as_str()
            && r["problem"].as_str().unwrap().contains("older copy")),
        "{rows:?}"
    );
    // The pending copy put back and shown to a privacy officer: approving it would bring the
    // revoked token back, so it is refused, and it is not listed as waiting.
    db(&server)
        .execute(
            "UPDATE tokens SET revoked_at = NULL, approved_by = NULL, approved_at = NULL, mac = ?2
             WHERE id = ?1",
            params![issued.token_id, pending.0],
        )
        .unwrap();
    let status = server
        .admin()
        .await
        .approve_token(req(
            server.token(Role::PrivacyOfficer),
            pb::ApproveTokenRequest {
                token_id: issued.token_id.clone(),
                justification: "looks fine".into(),
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert_eq!(
        who_am_i(&server, &token).await.err().unwrap().code(),
        Code::Unauthenticated
    );
    // The twin: every other token still works.
    assert!(
        who_am_i(&server, server.token(Role::CustomerService))
            .await
            .is_ok()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_copy_of_a_consent_mandate_or_hold_row_put_back_is_not_obeyed() {
    let server = TestServer::start().await;
    let subject = SCOPED_SUBJECT;
    let po = server.token(Role::PrivacyOfficer).to_owned();
    let mut admin = server.admin().await;
    let contract = put(
        &server,
        Role::CustomerService,
        ctx("contract", "", ""),
        subject,
        vec![text("email", "contact", "me@example.nl")],
    )
    .await;
    let rep = server.token(Role::Representative).to_owned();
    let rep_read = || {
        get(
            &server,
            &rep,
            ctx("contract", "", "for my mother"),
            &contract,
        )
    };
    // A mandate, copied by the attacker while it is live, then revoked.
    let mandate = admin
        .grant_mandate(req(
            &po,
            pb::GrantMandateRequest {
                subject_id: subject.into(),
                representative_id: "test-representative".into(),
                purposes: vec!["contract".into()],
                categories: vec!["contact".into()],
                valid_until: Some(prost_types::Timestamp {
                    seconds: kluis::domain::now_unix() + 86_400,
                    nanos: 0,
                }),
                justification: "volmacht".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(rep_read().await.is_ok(), "twin: the mandate works");
    let live: Vec<u8> = db(&server)
        .query_row(
            "SELECT mac FROM mandates WHERE id = ?1",
            [&mandate.mandate_id],
            |r| r.get(0),
        )
        .unwrap();
    admin
        .revoke_mandate(req(
            &po,
            pb::RevokeMandateRequest {
                mandate_id: mandate.mandate_id.clone(),
                justification: "withdrawn by the subject".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        rep_read().await.err().unwrap().code(),
        Code::PermissionDenied
    );
    // The live copy put back: the revocation undone by hand is not obeyed.
    let revoked: (Option<i64>, Vec<u8>) = db(&server)
        .query_row(
            "SELECT revoked_at, mac FROM mandates WHERE id = ?1",
            [&mandate.mandate_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    db(&server)
        .execute(
            "UPDATE mandates SET revoked_at = NULL, mac = ?2 WHERE id = ?1",
            params![mandate.mandate_id, live],
        )
        .unwrap();
    assert_eq!(rep_read().await.err().unwrap().code(), Code::DataLoss);
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4);
    assert!(names(&rows, "anchor", subject), "{rows:?}");
    // The twin: the row as kluis wrote it, the representative is refused as before.
    db(&server)
        .execute(
            "UPDATE mandates SET revoked_at = ?2, mac = ?3 WHERE id = ?1",
            params![mandate.mandate_id, revoked.0, revoked.1],
        )
        .unwrap();
    assert_eq!(
        rep_read().await.err().unwrap().code(),
        Code::PermissionDenied
    );

    // A consent given, copied, then withdrawn; the copy put back.
    let adaptation = put(
        &server,
        Role::AdaptationAdvisor,
        ctx("home-adaptation", "WA-1", "stairlift"),
        subject,
        vec![text("diagnosis", "medical", "arthrosis")],
    )
    .await;
    let consent = |state: &str| {
        req(
            &po,
            pb::RecordConsentRequest {
                subject_id: subject.into(),
                purpose: "home-adaptation".into(),
                state: state.into(),
                justification: "signed form".into(),
            },
        )
    };
    admin.record_consent(consent("given")).await.unwrap();
    let given: (String, i64, Vec<u8>) = db(&server)
        .query_row(
            "SELECT state, at, mac FROM consents WHERE subject = ?1 AND purpose = 'home-adaptation'",
            [subject],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    admin.record_consent(consent("withdrawn")).await.unwrap();
    let advisor = server.token(Role::AdaptationAdvisor).to_owned();
    let advise = || {
        get(
            &server,
            &advisor,
            ctx("home-adaptation", "WA-1", "stairlift"),
            &adaptation,
        )
    };
    assert_eq!(advise().await.err().unwrap().code(), Code::PermissionDenied);
    db(&server)
        .execute(
            "UPDATE consents SET state = ?2, at = ?3, mac = ?4
             WHERE subject = ?1 AND purpose = 'home-adaptation'",
            params![subject, given.0, given.1, given.2],
        )
        .unwrap();
    assert_eq!(advise().await.err().unwrap().code(), Code::DataLoss);
    server.stop().await;
}

/// Swaps the b-trees of the records' index by subject and the disclosures' one in the file
/// (`sqlite_master`'s root pages; the SQL text stays): found by subject, a subject's records
/// would be the disclosures' entries, and an erasure would leave records behind.
fn swap_subject_indexes(path: &std::path::Path) {
    let db = Connection::open(path).unwrap();
    let root = |name: &str| -> i64 {
        db.query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap()
    };
    let (a, b) = (root("records_by_subject"), root("disclosures_by_subject"));
    let version: i64 = db
        .query_row("PRAGMA schema_version", [], |r| r.get(0))
        .unwrap();
    db.execute_batch(&format!(
        "PRAGMA writable_schema = ON;
         UPDATE sqlite_master SET rootpage = {b} WHERE name = 'records_by_subject';
         UPDATE sqlite_master SET rootpage = {a} WHERE name = 'disclosures_by_subject';
         PRAGMA schema_version = {};
         PRAGMA writable_schema = OFF;",
        version + 1
    ))
    .unwrap();
}

async fn erase_7001(server: &TestServer) -> Result<pb::EraseSubjectResponse, tonic::Status> {
    server
        .admin()
        .await
        .erase_subject(req(
            server.token(Role::PrivacyOfficer),
            pb::EraseSubjectRequest {
                subject_id: "REL-7001".into(),
                justification: "ER-2026-7".into(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Index b-trees swapped by hand while kluis runs: the next write, an erasure included, is
/// refused with `UNAVAILABLE` and nothing is erased, and `store verify` names the damage (exit
/// 4). Over a restart the integrity check at start finds it, and kluis does not start. The
/// twin: swapped back, kluis starts, the erasure takes both records and the store verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_b_trees_swapped_by_hand_are_refused_and_named() {
    let server = TestServer::start().await;
    for value in ["06-11111111", "06-22222222"] {
        put(
            &server,
            Role::CustomerService,
            ctx("contract", "", ""),
            "REL-7001",
            vec![text("phone", "contact", value)],
        )
        .await;
    }
    let records = |server: &TestServer| -> i64 {
        db(server)
            .query_row(
                "SELECT count(*) FROM records NOT INDEXED WHERE subject = 'REL-7001'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    swap_subject_indexes(&server.db_path());
    let status = erase_7001(&server).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(records(&server), 2);
    // Refused before it was decided, nothing of it on the trail (seen under load: a read before
    // the decision meets the swapped index first); or decided, and its allowed entry followed
    // by one saying it was not carried out. Never an allowed erasure left standing.
    let trail = audit_entries(&server);
    let erasures: Vec<&serde_json::Value> = trail
        .iter()
        .filter(|e| e["action"] == "erase-subject")
        .collect();
    let erasures = match erasures.as_slice() {
        [] => None,
        [allowed, followed] => Some((allowed, followed)),
        other => panic!("{other:?}"),
    };
    if let Some((allowed, followed)) = erasures {
        assert_eq!(allowed["decision"], "allow", "{allowed}");
        assert_eq!(followed["decision"], "deny", "{followed}");
        assert!(
            followed["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("not carried out")),
            "{followed}"
        );
    }
    let mut client = server.client().await;
    let status = client
        .put_record(req(
            server.token(Role::CustomerService),
            pb::PutRecordRequest {
                context: ctx("contract", "", ""),
                subject_id: "REL-7002".into(),
                fields: vec![text("phone", "contact", "06-33333333")],
                labels: Default::default(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // Nor are the subject's records listed or exported through the swapped index (a listing
    // that leaves records out), nor any record read while the file is known to be so.
    let cs = server.token(Role::CustomerService).to_owned();
    let listed = list_records(&server, &cs, ctx("contract", "", ""), "REL-7001")
        .await
        .unwrap_err();
    assert_eq!(listed.code(), Code::Unavailable, "{listed:?}");
    let exported = export(
        &server,
        server.token(Role::PrivacyOfficer),
        ctx("customer-service", "SAR-1", "access request"),
        "REL-7001",
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(exported.code(), Code::Unavailable, "{exported:?}");
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4, "{rows:?}");
    assert!(
        rows.iter().any(|r| r["kind"] == "database"
            && r["problem"]
                .as_str()
                .is_some_and(|p| p.contains("missing from index records_by_subject"))),
        "{rows:?}"
    );
    // Over a restart (kluis then knows no earlier root pages): the integrity check at start
    // finds it, and kluis does not start over the file. The twin: swapped back, it starts, the
    // store verifies, and the erasure takes both records.
    let (refusal, server) = server.restart_refused(|_| {}, swap_subject_indexes).await;
    assert!(refusal.contains("integrity check"), "{refusal}");
    assert!(
        refusal.contains("missing from index records_by_subject"),
        "{refusal}"
    );
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 0, "{rows:?}");
    let listed = list_records(&server, &cs, ctx("contract", "", ""), "REL-7001")
        .await
        .unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let erased = erase_7001(&server).await.unwrap();
    assert_eq!(erased.destroyed_record_ids.len(), 2, "{erased:?}");
    assert_eq!(records(&server), 0);
    server.stop().await;
}

/// A record deleted (or destroyed by the retention sweep) while its subject keeps others under
/// the same purpose keeps its subject key, so its old rows put back by hand would open again:
/// the subject's anchor names every record destroyed, and a destroyed record put back is not
/// obeyed through any door (read, listing, export, update, search), and `store verify` names
/// it. The twin: the same subject's other record reads on, and with the copy taken out again
/// everything works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_record_put_back_by_hand_is_not_obeyed() {
    let server = TestServer::start().await;
    let cs = server.token(Role::CustomerService).to_owned();
    let contract = || ctx("customer-service", "", "");
    let subject = "REL-BACK";
    let gone = put(
        &server,
        Role::CustomerService,
        contract(),
        subject,
        vec![text("phone", "contact", "06-2222")],
    )
    .await;
    let kept = put(
        &server,
        Role::CustomerService,
        contract(),
        subject,
        vec![text("phone", "contact", "06-3333")],
    )
    .await;
    keep_copy(&server, &gone, "stolen");
    let mut client = server.client().await;
    client
        .delete_record(req(
            &cs,
            pb::DeleteRecordRequest {
                context: contract(),
                record_id: gone.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        get(&server, &cs, contract(), &gone)
            .await
            .err()
            .unwrap()
            .code(),
        Code::NotFound
    );
    put_copy_back(&server, "stolen");
    let status = get(&server, &cs, contract(), &gone).await.err().unwrap();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(!status.message().contains("06-2222"), "{status:?}");
    // Through the other doors: one field of it, the subject's listing and its export, an
    // update, a search for its value.
    let one = client
        .get_record(req(
            &cs,
            pb::GetRecordRequest {
                context: contract(),
                record_id: gone.clone(),
                fields: vec!["phone".into()],
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(one.code(), Code::DataLoss, "{one:?}");
    let listed = list_records(&server, &cs, contract(), subject)
        .await
        .unwrap_err();
    assert_eq!(listed.code(), Code::DataLoss, "{listed:?}");
    let po = server.token(Role::PrivacyOfficer).to_owned();
    let exported = export(
        &server,
        &po,
        ctx("customer-service", "SAR-2", "access request"),
        subject,
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(exported.code(), Code::DataLoss, "{exported:?}");
    let updated = client
        .update_record(req(
            &cs,
            pb::UpdateRecordRequest {
                context: contract(),
                record_id: gone.clone(),
                fields: vec![text("phone", "contact", "06-4444")],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(updated.code(), Code::DataLoss, "{updated:?}");
    // Nor by the privacy officer's tools that act on one record: a rectification, a hold.
    let mut admin = server.admin().await;
    let request = admin
        .open_subject_request(req(
            &po,
            pb::OpenSubjectRequestRequest {
                subject_id: subject.into(),
                kind: "rectification".into(),
                received_at: None,
                note: "letter 12".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let rectified = rectify(
        &server,
        &po,
        &request.request_id,
        &gone,
        vec![text("phone", "contact", "06-4444")],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(rectified.code(), Code::DataLoss, "{rectified:?}");
    let held = admin
        .place_hold(req(
            &po,
            pb::PlaceHoldRequest {
                subject_id: subject.into(),
                record_id: gone.clone(),
                reason: "claim".into(),
                case_ref: "LD-3".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(held.code(), Code::DataLoss, "{held:?}");
    // The twin within: the subject's other record reads on.
    let read = get(&server, &cs, contract(), &kept).await.unwrap();
    assert_eq!(text_of(field(&read, "phone").unwrap()), "06-3333");
    // `store verify` names the record put back.
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4, "{rows:?}");
    assert!(names(&rows, "record", &gone), "{rows:?}");
    // Taken out again by hand: the listing and the export are whole, and the store verifies.
    db(&server)
        .execute("DELETE FROM records WHERE id = ?1", [&gone])
        .unwrap();
    let listed = list_records(&server, &cs, contract(), subject)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].record_id, kept);
    export(
        &server,
        &po,
        ctx("customer-service", "SAR-2", "access request"),
        subject,
        false,
    )
    .await
    .unwrap();
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 0, "{rows:?}");
    // The name of a destruction deleted by hand: the anchor no longer adds up, and nothing of
    // the subject is decided.
    let anchor_kept = db(&server)
        .query_row(
            "SELECT record_id FROM destroyed_records WHERE record_id = ?1",
            [&gone],
            |r| r.get::<_, String>(0),
        )
        .unwrap();
    assert_eq!(anchor_kept, gone);
    db(&server)
        .execute(
            "DELETE FROM destroyed_records WHERE record_id = ?1",
            [&gone],
        )
        .unwrap();
    let status = get(&server, &cs, contract(), &kept).await.err().unwrap();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4, "{rows:?}");
    assert!(names(&rows, "anchor", subject), "{rows:?}");
    // Put back: it reads again.
    db(&server)
        .execute(
            "INSERT INTO destroyed_records (subject, record_id) VALUES (?1, ?2)",
            [subject, gone.as_str()],
        )
        .unwrap();
    assert!(get(&server, &cs, contract(), &kept).await.is_ok());

    // The subject's older anchor put back with the rows, and the name deleted: the anchor
    // adds up again, but the trail says the record was deleted, and `store verify` names it.
    let again = put(
        &server,
        Role::CustomerService,
        contract(),
        subject,
        vec![text("phone", "contact", "06-6666")],
    )
    .await;
    keep_copy(&server, &again, "again");
    let (holds, consents, mac, digest): (i64, i64, Vec<u8>, Vec<u8>) = db(&server)
        .query_row(
            "SELECT holds, consents, mac, digest FROM subject_anchors WHERE subject = ?1",
            [subject],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    client
        .delete_record(req(
            &cs,
            pb::DeleteRecordRequest {
                context: contract(),
                record_id: again.clone(),
            },
        ))
        .await
        .unwrap();
    put_copy_back(&server, "again");
    let conn = db(&server);
    conn.execute(
        "UPDATE subject_anchors SET holds = ?2, consents = ?3, mac = ?4, digest = ?5
         WHERE subject = ?1",
        params![subject, holds, consents, mac, digest],
    )
    .unwrap();
    conn.execute(
        "DELETE FROM destroyed_records WHERE record_id = ?1",
        [&again],
    )
    .unwrap();
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4, "{rows:?}");
    assert!(names(&rows, "record", &again), "{rows:?}");
    assert!(
        !names(&rows, "anchor", subject),
        "the older anchor adds up: {rows:?}"
    );
    conn.execute("DELETE FROM records WHERE id = ?1", [&again])
        .unwrap();
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 0, "{rows:?}");

    // An erased subject's records put back: the same (the erasure also destroyed the keys, but
    // the rows are refused before anything is opened, and not listed).
    let erased = put(
        &server,
        Role::CustomerService,
        contract(),
        "REL-ERASED",
        vec![text("phone", "contact", "06-5555")],
    )
    .await;
    keep_copy(&server, &erased, "erased");
    let anchor_before: (i64, i64, Vec<u8>, Vec<u8>) = db(&server)
        .query_row(
            "SELECT holds, consents, mac, digest FROM subject_anchors WHERE subject = 'REL-ERASED'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    server
        .admin()
        .await
        .erase_subject(req(
            &po,
            pb::EraseSubjectRequest {
                subject_id: "REL-ERASED".into(),
                justification: "ER-2026-9".into(),
            },
        ))
        .await
        .unwrap();
    put_copy_back(&server, "erased");
    let status = get(&server, &cs, contract(), &erased).await.err().unwrap();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    let listed = list_records(&server, &cs, contract(), "REL-ERASED")
        .await
        .unwrap_err();
    assert_eq!(listed.code(), Code::DataLoss, "{listed:?}");
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4, "{rows:?}");
    assert!(names(&rows, "record", &erased), "{rows:?}");
    // With the older anchor put back and the name deleted as well: the erasure's entry names
    // the record, and `store verify` still names it.
    let conn = db(&server);
    let (holds, consents, mac, digest) = anchor_before;
    conn.execute(
        "UPDATE subject_anchors SET holds = ?1, consents = ?2, mac = ?3, digest = ?4
         WHERE subject = 'REL-ERASED'",
        params![holds, consents, mac, digest],
    )
    .unwrap();
    conn.execute(
        "DELETE FROM destroyed_records WHERE subject = 'REL-ERASED'",
        [],
    )
    .unwrap();
    let (code, rows) = store_verify(&server);
    assert_eq!(code, 4, "{rows:?}");
    assert!(names(&rows, "record", &erased), "{rows:?}");
    assert!(!names(&rows, "anchor", "REL-ERASED"), "{rows:?}");
    server.stop().await;
}

/// A value stored by hand as another type than kluis writes (a ciphertext or a hash as text,
/// a number as text: SQLite's columns take any type) is damaged data: `DATA_LOSS`, never
/// `INTERNAL`, and nothing of it is sent. Each edit has its twin: put back as it was, the
/// call works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_stored_by_hand_as_another_type_are_data_loss() {
    let server = TestServer::start().await;
    let officer = server.token(Role::NuisanceOfficer).to_owned();
    let record = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-TYPE",
        vec![text("statement", "nuisance-evidence", "a letter")],
    )
    .await;
    let evidence = doorbell(&server, &officer, "REL-TYPE", 5, 70_000, 16_384).await;
    let read = async || {
        get(&server, &officer, nuisance_ctx(), &record)
            .await
            .map(|_| ())
    };
    let fetch = async || {
        download(
            &server,
            &officer,
            nuisance_ctx(),
            &evidence.evidence_id,
            None,
        )
        .await
        .map(|(_, bytes)| bytes.len())
    };
    let tokens = async || {
        server
            .admin()
            .await
            .list_tokens(req(
                server.token(Role::SecurityOfficer),
                pb::ListTokensRequest::default(),
            ))
            .await
            .map(|_| ())
    };
    read().await.unwrap();
    assert_eq!(fetch().await.unwrap(), 70_000);
    tokens().await.unwrap();
    let nuisance_token = server
        .admin()
        .await
        .list_tokens(req(
            server.token(Role::SecurityOfficer),
            pb::ListTokensRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .into_iter()
        .find(|t| t.roles == ["nuisance-officer"])
        .unwrap()
        .token_id;
    for (table, column, key, id) in [
        ("fields", "sealed", "record_id", record.as_str()),
        ("records", "created_at", "id", record.as_str()),
        (
            "evidence_segments",
            "sealed",
            "evidence_id",
            evidence.evidence_id.as_str(),
        ),
        // Where a segment's bytes are in its file, as text that reads as no number (a number
        // as text is stored as the number: the columns have integer affinity).
        (
            "evidence_segments",
            "at",
            "evidence_id",
            evidence.evidence_id.as_str(),
        ),
        (
            "evidence_segments",
            "len",
            "evidence_id",
            evidence.evidence_id.as_str(),
        ),
        ("tokens", "hash", "id", nuisance_token.as_str()),
    ] {
        let set = |to: &str| {
            db(&server)
                .execute(
                    &format!("UPDATE {table} SET {column} = {to} WHERE {key} = ?1"),
                    [id],
                )
                .unwrap()
        };
        let kept: Vec<(i64, rusqlite::types::Value)> = {
            let conn = db(&server);
            let mut s = conn
                .prepare(&format!(
                    "SELECT rowid, {column} FROM {table} WHERE {key} = ?1"
                ))
                .or_else(|_| {
                    // Tables without a rowid: the key and the one row of this test.
                    conn.prepare(&format!("SELECT 0, {column} FROM {table} WHERE {key} = ?1"))
                })
                .unwrap();
            s.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert!(!kept.is_empty(), "{table}.{column}");
        let to = if matches!(column, "created_at" | "at" | "len") {
            "'yesterday'"
        } else {
            &format!("CAST({column} AS TEXT)")
        };
        assert!(set(to) > 0);
        let status = match table {
            "evidence_segments" => fetch().await.err(),
            // The token's hash no longer matches its row: it authenticates nobody, and the
            // list of tokens, which reads every row, says the register is damaged.
            "tokens" => tokens().await.err(),
            _ => read().await.err(),
        }
        .unwrap_or_else(|| panic!("{table}.{column} as another type was served"));
        assert_eq!(
            status.code(),
            Code::DataLoss,
            "{table}.{column}: {status:?}"
        );
        // `store verify` goes on past the row it cannot read, and names its kind (a segment's
        // ciphertext is checked when it is read, not by `store verify`).
        if table != "evidence_segments" {
            let kind = if table == "tokens" { "token" } else { "record" };
            let (code, rows) = store_verify(&server);
            assert_eq!(code, 4, "{table}.{column}: {rows:?}");
            assert!(
                rows.iter()
                    .any(|r| r["kind"] == kind && r["problem"].as_str().unwrap().contains(column)),
                "{table}.{column}: {rows:?}"
            );
        }
        // The twin: the value put back as it was.
        let conn = db(&server);
        for (rowid, value) in &kept {
            if *rowid > 0 {
                conn.execute(
                    &format!("UPDATE {table} SET {column} = ?1 WHERE rowid = ?2"),
                    params![value, rowid],
                )
                .unwrap();
            } else {
                conn.execute(
                    &format!("UPDATE {table} SET {column} = ?1 WHERE {key} = ?2"),
                    params![value, id],
                )
                .unwrap();
            }
        }
        read().await.unwrap();
        assert_eq!(fetch().await.unwrap(), 70_000);
        tokens().await.unwrap();
        assert_eq!(store_verify(&server).0, 0, "{table}.{column} put back");
    }
    server.stop().await;
}

/// A segment row inserted by hand under an index the file does not have (a copy of one of its
/// own segments past its end, or before its start) is never sent, and `store verify` names the
/// file; so it does for a segment row moved to another index. The twin: the rows as kluis wrote
/// them verify, and the file downloads whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_segment_rows_inserted_or_moved_by_hand_are_named() {
    let server = TestServer::start().await;
    let officer = server.token(Role::NuisanceOfficer).to_owned();
    let put = doorbell(&server, &officer, "REL-SEG", 9, 200_000, 65_536).await;
    let id = put.evidence_id.as_str();
    assert_eq!(store_verify(&server).0, 0);
    for (edit, undo) in [
        (
            "INSERT INTO evidence_segments (evidence_id, idx, key_gen, sealed, at, len)
             SELECT evidence_id, 4, key_gen, sealed, at, len FROM evidence_segments
             WHERE evidence_id = ?1 AND idx = 3",
            "DELETE FROM evidence_segments WHERE evidence_id = ?1 AND idx = 4",
        ),
        (
            "INSERT INTO evidence_segments (evidence_id, idx, key_gen, sealed, at, len)
             SELECT evidence_id, -1, key_gen, sealed, at, len FROM evidence_segments
             WHERE evidence_id = ?1 AND idx = 0",
            "DELETE FROM evidence_segments WHERE evidence_id = ?1 AND idx = -1",
        ),
        (
            "UPDATE evidence_segments SET idx = 7 WHERE evidence_id = ?1 AND idx = 1",
            "UPDATE evidence_segments SET idx = 1 WHERE evidence_id = ?1 AND idx = 7",
        ),
    ] {
        assert_eq!(db(&server).execute(edit, [id]).unwrap(), 1, "{edit}");
        let (code, rows) = store_verify(&server);
        assert_eq!(code, 4, "{edit}: {rows:?}");
        assert!(names(&rows, "evidence", id), "{edit}: {rows:?}");
        assert_eq!(db(&server).execute(undo, [id]).unwrap(), 1, "{undo}");
        let (code, rows) = store_verify(&server);
        assert_eq!(code, 0, "{undo}: {rows:?}");
        let (_, bytes) = download(&server, &officer, nuisance_ctx(), id, None)
            .await
            .unwrap();
        assert_eq!(bytes, file_bytes(9, 0, 200_000));
    }
    server.stop().await;
}

/// A key job row kluis did not start as the rekey under way is not obeyed, whatever it says:
/// written by hand to start far ahead (which held the rekey, and a node's shutdown, for as long
/// as it said), or back in the past, or a finished job's own row put back with its MAC (either
/// of which let the rekey pass over every subject keyed since, and report it done). The rekey
/// replaces such a row and rekeys every subject; a row a trigger keeps rewriting is refused
/// (`DATA_LOSS`), never reported done; a node does not resume a rekey nobody started. The
/// twin: a rekey kluis stopped after a batch is resumed, from its own row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_job_row_kluis_did_not_start_is_not_obeyed() {
    let server = TestServer::start().await;
    let generation = |subject: &str| -> i64 {
        db(&server)
            .query_row(
                "SELECT generation FROM subject_keys WHERE subject = ?1 AND purpose = 'nuisance'",
                [subject],
                |r| r.get(0),
            )
            .unwrap()
    };
    let jobs = || -> i64 {
        db(&server)
            .query_row("SELECT count(*) FROM key_jobs", [], |r| r.get(0))
            .unwrap()
    };
    let subject = |i: usize| format!("REL-JOB-{i}");
    let server_ref = &server;
    let stored = |i: usize| async move {
        put(
            server_ref,
            Role::NuisanceOfficer,
            nuisance_ctx(),
            &format!("REL-JOB-{i}"),
            vec![text("statement", "nuisance-evidence", "a letter")],
        )
        .await
    };
    // A finished job's row, as kluis wrote it: a rekey stopped after its first batch leaves
    // its row; it is copied, and the job finished.
    stored(0).await;
    tokio::task::block_in_place(|| {
        server
            .vault
            .rekey(kluis::domain::Purpose::Nuisance, |_| false)
            .unwrap()
    });
    let finished: (i64, Vec<u8>) = db(&server)
        .query_row("SELECT started_at, mac FROM key_jobs", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    rekey(&server, "nuisance").await.unwrap();
    assert_eq!(jobs(), 0);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let now = kluis::domain::now_unix();
    let forgeries: [(&str, i64, Option<&[u8]>); 3] = [
        ("starting far ahead", 4_102_444_800, None),
        ("starting an hour ago", now - 3600, None),
        (
            "a finished job's row put back",
            finished.0,
            Some(&finished.1),
        ),
    ];
    for (i, (what, started_at, mac)) in forgeries.into_iter().enumerate() {
        // A subject keyed after the forged start: a rekey that took it for the job's would
        // pass over this one.
        stored(i + 1).await;
        let before = generation(&subject(i + 1));
        db(&server)
            .execute(
                "INSERT INTO key_jobs (purpose, kind, started_at, mac) \
                 VALUES ('nuisance', 'rekey', ?1, ?2)",
                rusqlite::params![started_at, mac],
            )
            .unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            rekey(&server, "nuisance"),
        )
        .await
        .unwrap_or_else(|_| panic!("the rekey waited for a row {what}"))
        .unwrap_or_else(|e| panic!("a row {what}: {e:?}"));
        assert!(
            generation(&subject(i + 1)) > before,
            "a row {what}: the rekey passed over a subject"
        );
        assert_eq!(jobs(), 0, "{what}");
    }
    // A trigger that puts the job's start back as it is recorded: refused, not reported done
    // (on SQLite kluis runs no statement that would fire a trigger it did not create; on
    // PostgreSQL the row the trigger rewrote fails its MAC: `nodes::a_key_job_row_a_trigger_rewrites_is_refused`).
    db(&server)
        .execute_batch(
            "CREATE TRIGGER backdate AFTER INSERT ON key_jobs BEGIN \
             UPDATE key_jobs SET started_at = 1 WHERE purpose = NEW.purpose AND kind = NEW.kind; \
             END;",
        )
        .unwrap();
    let refused = rekey(&server, "nuisance").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    db(&server)
        .execute_batch("DROP TRIGGER backdate; DELETE FROM key_jobs;")
        .unwrap();
    // A node that starts resumes no rekey nobody started: the row is removed, nothing rekeyed.
    let before = generation(&subject(1));
    db(&server)
        .execute(
            "INSERT INTO key_jobs (purpose, kind, started_at) VALUES ('nuisance', 'rekey', ?1)",
            [kluis::domain::now_unix() - 60],
        )
        .unwrap();
    // `store verify` names it meanwhile.
    assert!(
        bad_rows(&server)
            .await
            .iter()
            .any(|b| b.kind == "key-job" && b.id == "rekey:nuisance"),
        "store verify did not name the key job row written by hand"
    );
    tokio::task::block_in_place(|| server.vault.resume_key_jobs().unwrap());
    assert_eq!(jobs(), 0);
    assert_eq!(generation(&subject(1)), before);
    // The twin: a rekey kluis stopped is resumed from its own row, and finished.
    tokio::task::block_in_place(|| {
        server
            .vault
            .rekey(kluis::domain::Purpose::Nuisance, |_| false)
            .unwrap()
    });
    assert_eq!(jobs(), 1);
    assert!(
        bad_rows(&server).await.iter().all(|b| b.kind != "key-job"),
        "store verify named the job kluis started"
    );
    tokio::task::block_in_place(|| server.vault.resume_key_jobs().unwrap());
    assert_eq!(jobs(), 0);
}

/// An older copy of `kluis.db`, or of its trail's file, renamed over the live one while kluis
/// runs (as `mv` or a restore by hand would put it) is not served: connections opened after it
/// would read a store kluis did not check at start, and writes would go on into a file no
/// longer in the data directory. Every read and write after the rename fails with `DATA_LOSS`
/// and carries no value, a record written after the copy included; before it, both answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_renamed_over_the_live_files_is_neither_read_nor_written() {
    for trail in [false, true] {
        let server = TestServer::start().await;
        let officer = server.token(Role::NuisanceOfficer).to_owned();
        let write = |value: &'static str| {
            let server = &server;
            let officer = officer.clone();
            async move {
                server
                    .client()
                    .await
                    .put_record(req(
                        &officer,
                        pb::PutRecordRequest {
                            context: nuisance_ctx(),
                            subject_id: SCOPED_SUBJECT.into(),
                            fields: vec![text("statement", "nuisance-evidence", value)],
                            labels: Default::default(),
                        },
                    ))
                    .await
                    .map(|r| r.into_inner().record_id)
            }
        };
        let first = write("shouting at night").await.unwrap();
        let file = if trail {
            server.db_path().with_extension("db.trail")
        } else {
            server.db_path()
        };
        let older = server.db_path().with_extension("older");
        std::fs::copy(&file, &older).unwrap();
        let second = write("a door kicked in").await.unwrap();
        for id in [&first, &second] {
            get(&server, &officer, nuisance_ctx(), id).await.unwrap();
        }
        std::fs::rename(&older, &file).unwrap();
        for id in [&first, &second] {
            let Err(status) = get(&server, &officer, nuisance_ctx(), id).await else {
                panic!("trail {trail}: a read after the rename answered");
            };
            assert_eq!(status.code(), Code::DataLoss, "trail {trail}: {status:?}");
            assert!(
                !status.message().contains("shouting") && !status.message().contains("door"),
                "{status:?}"
            );
        }
        let status = write("a window broken")
            .await
            .expect_err("a write after the rename");
        assert_eq!(status.code(), Code::DataLoss, "trail {trail}: {status:?}");
        server.stop().await;
    }
}

/// An older copy of `kluis.db` that lacks only the last acknowledged write (taken from the
/// running node's files just before it), put back with its `-wal` and `-shm` after the node
/// was killed with SIGKILL a moment after that write, is
/// refused at start: the write moved the store's mark, and the node recorded the mark in the
/// trail once its writer rested, before the kill. (Without that, the trail recorded a mark only
/// with the next append, and the copy started: the acknowledged write was gone.) The twin: the
/// files that go with the trail start and serve the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_older_only_by_the_last_write_is_refused_after_a_kill() {
    use crate::rotation::{connect, free_port, prepare, start};

    let tmp = private_tempdir();
    let dir = tmp.path();
    let (_, officer, _) = prepare(dir, 0);
    let write = |port: u16, value: &'static str| {
        let officer = officer.clone();
        async move {
            pb::vault_client::VaultClient::new(connect(port).await)
                .put_record(req(
                    &officer,
                    pb::PutRecordRequest {
                        context: nuisance_ctx(),
                        subject_id: "REL-90001".into(),
                        fields: vec![text("statement", "nuisance-evidence", value)],
                        labels: Default::default(),
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .record_id
        }
    };
    let files = ["kluis.db", "kluis.db-wal", "kluis.db-shm"];
    let keep = |to: &std::path::Path| {
        std::fs::create_dir_all(to).unwrap();
        for f in files {
            let _ = std::fs::remove_file(to.join(f));
            if dir.join(f).exists() {
                std::fs::copy(dir.join(f), to.join(f)).unwrap();
            }
        }
    };
    let put_back = |from: &std::path::Path| {
        for f in files {
            let _ = std::fs::remove_file(dir.join(f));
            if from.join(f).exists() {
                std::fs::copy(from.join(f), dir.join(f)).unwrap();
            }
        }
    };

    let port = free_port();
    let node = start(dir, port);
    write(port, "shouting at night").await;
    // A copy taken while the node rests (what a copy of the running node's files holds once
    // its writes have stopped), then one more write.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let older = dir.join("older");
    keep(&older);
    let last = write(port, "a door kicked in").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(node); // SIGKILL, the writer at rest
    let newer = dir.join("newer");
    keep(&newer);

    put_back(&older);
    let refused = serve_until_it_stops(dir).await;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "the older copy started: {said}");
    assert!(said.contains("is older than its audit trail"), "{said}");
    // A check that found a problem, as the head file's refusals: scripts tell it from a failure.
    assert_eq!(refused.status.code(), Some(4), "{said}");

    put_back(&newer);
    let port = free_port();
    let _node = start(dir, port);
    let read = pb::vault_client::VaultClient::new(connect(port).await)
        .get_record(req(
            &officer,
            pb::GetRecordRequest {
                context: nuisance_ctx(),
                record_id: last,
                fields: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(text_of(&read.fields[0]), "a door kicked in");
}

/// Runs `kluis serve` on the node `prepare` made in `dir` until it stops by itself or 30 s
/// pass (then it is killed): what it said and how it exited.
async fn serve_until_it_stops(dir: &std::path::Path) -> std::process::Output {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || serve_until_it_stops_blocking(&dir))
        .await
        .unwrap()
}

fn serve_until_it_stops_blocking(dir: &std::path::Path) -> std::process::Output {
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_kluis"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(dir.join("kluis.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while serve.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = serve.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    serve.wait_with_output().unwrap()
}

/// Store files that are not as kluis keeps them stop `kluis serve` and `kluis init` with exit
/// code 4, a check that failed (as a store older than its trail does), naming the file: the
/// trail's file gone or emptied, a directory or a link in place of a file, the two files one,
/// and a link (symbolic or hard), a directory or a FIFO where SQLite keeps a log, index or
/// journal. The file a link names is left as it was. The twin: with the files put back, the
/// node starts and serves what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_files_not_as_kluis_keeps_them_stop_the_node_with_exit_4() {
    use crate::rotation::{all_decrypt, connect, free_port, prepare, start};
    use std::os::unix::fs::PermissionsExt;

    let tmp = private_tempdir();
    let dir = tmp.path();
    let (_, officer, records) = prepare(dir, 1);
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("elsewhere");
    std::fs::write(&target, b"not kluis's").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (store, trail) = (dir.join("kluis.db"), dir.join("kluis.db.trail"));
    let kept = outside.path().join("trail-kept");
    let put_trail_away = || std::fs::rename(&trail, &kept).unwrap();
    let put_trail_back = || {
        let _ = std::fs::remove_dir(&trail);
        let _ = std::fs::remove_file(&trail);
        std::fs::rename(&kept, &trail).unwrap();
    };
    let side = |name: &str| dir.join(name);
    let fifo = |at: &std::path::Path| {
        assert!(
            std::process::Command::new("mkfifo")
                .arg(at)
                .status()
                .unwrap()
                .success()
        )
    };
    type Plant<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Plant, Plant)> = vec![
        (
            "kluis.db.trail` is missing",
            Box::new(put_trail_away),
            Box::new(put_trail_back),
        ),
        (
            "kluis.db.trail` holds no trail",
            Box::new(|| {
                put_trail_away();
                std::fs::write(&trail, b"").unwrap();
            }),
            Box::new(put_trail_back),
        ),
        (
            "kluis.db.trail` is a directory",
            Box::new(|| {
                put_trail_away();
                std::fs::create_dir(&trail).unwrap();
            }),
            Box::new(put_trail_back),
        ),
        (
            "are one file (a hard or symbolic link)",
            Box::new(|| {
                put_trail_away();
                std::os::unix::fs::symlink(&store, &trail).unwrap();
            }),
            Box::new(put_trail_back),
        ),
        (
            "kluis.db-wal` is a symbolic link",
            Box::new(|| std::os::unix::fs::symlink(&target, side("kluis.db-wal")).unwrap()),
            Box::new(|| std::fs::remove_file(side("kluis.db-wal")).unwrap()),
        ),
        (
            "kluis.db.trail-wal` is a file with another name too (a hard link)",
            Box::new(|| std::fs::hard_link(&target, side("kluis.db.trail-wal")).unwrap()),
            Box::new(|| std::fs::remove_file(side("kluis.db.trail-wal")).unwrap()),
        ),
        (
            "kluis.db.trail-shm` is a directory",
            Box::new(|| std::fs::create_dir(side("kluis.db.trail-shm")).unwrap()),
            Box::new(|| std::fs::remove_dir(side("kluis.db.trail-shm")).unwrap()),
        ),
        (
            "kluis.db.trail-journal` is a device or another special file",
            Box::new(|| fifo(&side("kluis.db.trail-journal"))),
            Box::new(|| std::fs::remove_file(side("kluis.db.trail-journal")).unwrap()),
        ),
    ];
    for (says, plant, take_away) in &cases {
        plant();
        let refused = serve_until_it_stops(dir).await;
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(said.contains(says), "{says}: {said}");
        assert_eq!(refused.status.code(), Some(4), "{says}: {said}");
        let init = std::process::Command::new(env!("CARGO_BIN_EXE_kluis"))
            .args(["init", "--config"])
            .arg(dir.join("kluis.toml"))
            .arg("--key-file")
            .arg(dir.join("root.key"))
            .output()
            .unwrap();
        let init_said = String::from_utf8_lossy(&init.stderr);
        assert!(init_said.contains(says), "init, {says}: {init_said}");
        assert_eq!(init.status.code(), Some(4), "init, {says}: {init_said}");
        take_away();
        assert_eq!(std::fs::read(&target).unwrap(), b"not kluis's", "{says}");
        assert_eq!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o644,
            "{says}"
        );
    }

    let port = free_port();
    let _node = start(dir, port);
    all_decrypt(connect(port).await, &officer, &records).await;
}
