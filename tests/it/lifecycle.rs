//! The data lifecycle over gRPC, with a clock the test controls: closing records, retention
//! with crypto-shredding, legal holds, dry runs, erasure, and subject requests' deadlines.

use kluis::{domain::Role, pb};
use rusqlite::Connection;
use tonic::Code;

use crate::common::*;

const DAY: i64 = 86_400;

fn db_bytes(server: &TestServer) -> Vec<u8> {
    store_file_bytes(&server.db_path())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn sweep(server: &TestServer, dry_run: bool) -> Vec<String> {
    let mut admin = server.admin().await;
    let mut ids: Vec<String> = admin
        .sweep_retention(req(
            server.token(Role::PrivacyOfficer),
            pb::SweepRetentionRequest { dry_run },
        ))
        .await
        .unwrap()
        .into_inner()
        .records
        .into_iter()
        .map(|r| r.record_id)
        .collect();
    ids.sort();
    ids
}

async fn exists(server: &TestServer, id: &str) -> bool {
    let mut client = server.client().await;
    let result = client
        .get_record(req(
            server.token(Role::PrivacyOfficer),
            pb::GetRecordRequest {
                context: ctx("customer-service", "", ""),
                record_id: id.into(),
                fields: vec![],
            },
        ))
        .await;
    !matches!(result, Err(s) if s.code() == Code::NotFound)
}

#[tokio::test]
async fn retention_destroys_expired_records_except_held_ones_and_shreds_their_keys() {
    let clock = TestClock::at_now();
    let server = TestServer::start_with_clock(clock.clone()).await;
    let cs = || ctx("customer-service", "", "");
    let expired = put(
        &server,
        Role::CustomerService,
        cs(),
        "REL-A",
        vec![text("phone", "contact", "Bewaartermijn-Verlopen-A1")],
    )
    .await;
    let held = put(
        &server,
        Role::CustomerService,
        cs(),
        "REL-B",
        vec![text("phone", "contact", "06-2")],
    )
    .await;
    let kept = put(
        &server,
        Role::FinanceOfficer,
        ctx("payments", "", ""),
        "REL-A",
        vec![text("iban", "financial", "NL02RABO0123456789")],
    )
    .await;
    let nuisance = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-C",
        vec![text("phone", "contact", "06-3")],
    )
    .await;
    let wrapped_key: Vec<u8> = Connection::open(server.db_path())
        .unwrap()
        .query_row("SELECT wrapped FROM subject_keys WHERE subject = 'REL-A' AND purpose = 'customer-service'", [], |r| r.get(0))
        .unwrap();

    // A nuisance record expires only once its case is closed.
    let mut client = server.client().await;
    let closed = client
        .close_record(req(
            server.token(Role::NuisanceOfficer),
            pb::CloseRecordRequest {
                context: nuisance_ctx(),
                record_id: nuisance.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        closed.expires_at.unwrap().seconds,
        clock.now_for_test() + 730 * DAY
    );

    let mut admin = server.admin().await;
    let hold = admin
        .place_hold(req(
            server.token(Role::LegalCounsel),
            pb::PlaceHoldRequest {
                subject_id: "REL-B".into(),
                record_id: String::new(),
                reason: "rent arrears claim pending".into(),
                case_ref: "LD-2026-3".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // Nothing has expired yet.
    assert!(sweep(&server, true).await.is_empty());

    clock.advance(731 * DAY);
    let mut due = vec![expired.clone(), nuisance.clone()];
    due.sort();
    assert_eq!(
        sweep(&server, true).await,
        due,
        "the dry run lists what would go"
    );
    assert!(
        exists(&server, &expired).await,
        "the dry run destroyed nothing"
    );
    assert_eq!(sweep(&server, false).await, due);
    assert!(!exists(&server, &expired).await);
    assert!(!exists(&server, &nuisance).await);
    assert!(exists(&server, &held).await, "held data survives");
    assert!(
        exists(&server, &kept).await,
        "payments are kept seven years"
    );

    // Crypto-shredding: REL-A has nothing left under customer-service, so its key is gone, and
    // neither the value nor the wrapped key is anywhere in the database files.
    let conn = Connection::open(server.db_path()).unwrap();
    let keys: i64 = conn
        .query_row("SELECT count(*) FROM subject_keys WHERE subject = 'REL-A' AND purpose = 'customer-service'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(keys, 0);
    let payments_key: i64 = conn
        .query_row(
            "SELECT count(*) FROM subject_keys WHERE subject = 'REL-A' AND purpose = 'payments'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(payments_key, 1);
    let bytes = db_bytes(&server);
    assert!(
        !contains(&bytes, &wrapped_key),
        "the shredded subject key is still in the files"
    );
    assert!(!contains(&bytes, b"Bewaartermijn-Verlopen-A1"));
    let entries = audit_entries(&server);
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "retention-destroy" && e["record"] == expired.as_str())
    );

    // Once the hold is released, the held record goes at the next sweep.
    admin
        .release_hold(req(
            server.token(Role::PrivacyOfficer),
            pb::ReleaseHoldRequest {
                hold_id: hold.hold_id,
                justification: "claim settled".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(sweep(&server, false).await, vec![held.clone()]);
    assert!(!exists(&server, &held).await);
    server.stop().await;
}

#[tokio::test]
async fn erasure_leaves_only_what_a_hold_or_the_law_keeps_and_says_why() {
    let server = TestServer::start().await;
    let cs = put(
        &server,
        Role::CustomerService,
        ctx("customer-service", "", ""),
        "REL-E",
        vec![text("email", "contact", "erase-me@example.nl")],
    )
    .await;
    let held = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-E",
        vec![text("phone", "contact", "06-4")],
    )
    .await;
    let fiscal = put(
        &server,
        Role::FinanceOfficer,
        ctx("payments", "", ""),
        "REL-E",
        vec![text("iban", "financial", "NL02RABO0123456789")],
    )
    .await;
    let other = put(
        &server,
        Role::CustomerService,
        ctx("customer-service", "", ""),
        "REL-F",
        vec![text("email", "contact", "keep@example.nl")],
    )
    .await;
    let mut admin = server.admin().await;
    admin
        .place_hold(req(
            server.token(Role::LegalCounsel),
            pb::PlaceHoldRequest {
                subject_id: "REL-E".into(),
                record_id: held.clone(),
                reason: "evidence for an eviction case".into(),
                case_ref: "LD-2026-9".into(),
            },
        ))
        .await
        .unwrap();
    // Only the privacy officer erases.
    let status = admin
        .erase_subject(req(
            server.token(Role::CustomerService),
            pb::EraseSubjectRequest {
                subject_id: "REL-E".into(),
                justification: "ER-2026-4".into(),
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    // And says why: an erasure without a justification destroys nothing.
    for justification in ["", "   "] {
        let status = admin
            .erase_subject(req(
                server.token(Role::PrivacyOfficer),
                pb::EraseSubjectRequest {
                    subject_id: "REL-E".into(),
                    justification: justification.into(),
                },
            ))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("`justification`"), "{status:?}");
    }
    let erased = admin
        .erase_subject(req(
            server.token(Role::PrivacyOfficer),
            pb::EraseSubjectRequest {
                subject_id: "REL-E".into(),
                justification: "ER-2026-4".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.destroyed_record_ids, std::slice::from_ref(&cs));
    assert_eq!(erased.shredded_purposes, ["customer-service"]);
    let mut kept: Vec<(String, String)> = erased
        .kept
        .iter()
        .map(|k| (k.record_id.clone(), k.reason.clone()))
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 2);
    let reason_of = |id: &str| kept.iter().find(|(r, _)| r == id).unwrap().1.clone();
    assert!(
        reason_of(&held).contains("legal hold"),
        "{}",
        reason_of(&held)
    );
    assert!(reason_of(&held).contains("LD-2026-9"));
    assert!(
        reason_of(&fiscal).contains("legal obligation"),
        "{}",
        reason_of(&fiscal)
    );
    assert!(!exists(&server, &cs).await);
    assert!(exists(&server, &held).await);
    assert!(exists(&server, &fiscal).await);
    assert!(
        exists(&server, &other).await,
        "another subject is untouched"
    );
    assert!(!contains(&db_bytes(&server), b"erase-me@example.nl"));
    server.stop().await;
}

#[tokio::test]
async fn a_request_received_29_days_ago_is_overdue() {
    let clock = TestClock::at_now();
    let server = TestServer::start_with_clock(clock.clone()).await;
    let mut admin = server.admin().await;
    let po = server.token(Role::PrivacyOfficer);
    let open = |days_ago: i64, kind: &str| {
        req(
            po,
            pb::OpenSubjectRequestRequest {
                subject_id: "REL-R".into(),
                kind: kind.into(),
                received_at: Some(prost_types::Timestamp {
                    seconds: clock.now_for_test() - days_ago * DAY,
                    nanos: 0,
                }),
                note: "letter 2026-77".into(),
            },
        )
    };
    let late = admin
        .open_subject_request(open(29, "access"))
        .await
        .unwrap()
        .into_inner();
    let recent = admin
        .open_subject_request(open(10, "erasure"))
        .await
        .unwrap()
        .into_inner();
    // Due at the end of the day four weeks on, in Amsterdam: at least 28 days less an hour
    // (received late in the evening, summer time begun since), less than 29 days and an hour.
    let (received, due) = (
        late.received_at.unwrap().seconds,
        late.due_at.unwrap().seconds,
    );
    assert_eq!(due, kluis::domain::request_due_at(received));
    assert!((28 * DAY - 3_600..29 * DAY + 3_600).contains(&(due - received)));
    let overdue = admin
        .list_subject_requests(req(
            po,
            pb::ListSubjectRequestsRequest { overdue_only: true },
        ))
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(
        overdue
            .iter()
            .map(|r| r.request_id.as_str())
            .collect::<Vec<_>>(),
        [late.request_id.as_str()]
    );
    let status = admin
        .open_subject_request(open(1, "complaint"))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Eighteen days on, the recent one is late too; answering takes a request off the list.
    clock.advance(19 * DAY);
    admin
        .complete_subject_request(req(
            po,
            pb::CompleteSubjectRequestRequest {
                request_id: late.request_id.clone(),
                justification: "copy sent".into(),
            },
        ))
        .await
        .unwrap();
    let overdue = admin
        .list_subject_requests(req(
            po,
            pb::ListSubjectRequestsRequest { overdue_only: true },
        ))
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(
        overdue
            .iter()
            .map(|r| r.request_id.as_str())
            .collect::<Vec<_>>(),
        [recent.request_id.as_str()]
    );
    let status = admin
        .list_subject_requests(req(
            server.token(Role::CustomerService),
            pb::ListSubjectRequestsRequest {
                overdue_only: false,
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    server.stop().await;
}

async fn export(
    server: &TestServer,
    role: Role,
    subject: &str,
) -> Result<Vec<serde_json::Value>, tonic::Status> {
    let mut client = server.client().await;
    let mut stream = client
        .export_subject(req(
            server.token(role),
            pb::ExportSubjectRequest {
                context: ctx("customer-service", "SAR-2026-5", "subject access request"),
                subject_id: subject.into(),
                portable: false,
            },
        ))
        .await?
        .into_inner();
    let mut lines = Vec::new();
    while let Some(line) = stream.message().await? {
        lines.push(serde_json::from_str(&line.json).unwrap());
    }
    Ok(lines)
}

#[tokio::test]
async fn export_returns_every_record_with_values_and_the_access_report() {
    let server = TestServer::start().await;
    let me = SCOPED_SUBJECT;
    let a = put(
        &server,
        Role::CustomerService,
        ctx("customer-service", "", ""),
        me,
        vec![text("email", "contact", "me@example.nl")],
    )
    .await;
    let b = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        me,
        vec![
            text("phone", "contact", "06-5"),
            binary("photo", "nuisance-evidence", b"\x89PNG"),
        ],
    )
    .await;
    let c = put(
        &server,
        Role::FinanceOfficer,
        ctx("payments", "", ""),
        me,
        vec![text("iban", "financial", "NL02RABO0123456789")],
    )
    .await;
    let _other = put(
        &server,
        Role::CustomerService,
        ctx("customer-service", "", ""),
        "REL-9999",
        vec![text("email", "contact", "x@example.nl")],
    )
    .await;
    get(
        &server,
        server.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &b,
    )
    .await
    .unwrap();
    // An evidence file in the nuisance record.
    let video = upload(
        &server,
        server.token(Role::NuisanceOfficer),
        evidence_start(
            nuisance_ctx(),
            "",
            &b,
            "doorbell",
            "video/mp4",
            "deurbel-2026-03-14.mp4",
        ),
        7,
        100_000,
        65_536,
    )
    .await
    .unwrap();

    let lines = export(&server, Role::PrivacyOfficer, me).await.unwrap();
    assert_eq!(lines[0]["schema"], "kluis.export.v1");
    assert_eq!(lines[0]["subject_id"], me);
    let records: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "record").collect();
    let mut ids: Vec<&str> = records
        .iter()
        .map(|r| r["record_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut want = vec![a.as_str(), b.as_str(), c.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want, "all three purposes, nobody else's");
    let nuisance = records
        .iter()
        .find(|r| r["record_id"] == b.as_str())
        .unwrap();
    assert_eq!(nuisance["purpose"], "nuisance");
    assert_eq!(nuisance["lawful_basis"], "legitimate interest / safety");
    assert_eq!(nuisance["retention"]["counts_from"], "closing");
    let photo = nuisance["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "photo")
        .unwrap();
    assert_eq!(photo["binary_hex"], "89504e47");
    // The evidence file with what it is; its content comes through `GetEvidence`.
    let evidence = &nuisance["evidence"][0];
    assert_eq!(evidence["evidence_id"], video.evidence_id.as_str());
    assert_eq!(evidence["media_type"], "video/mp4");
    assert_eq!(evidence["file_name"], "deurbel-2026-03-14.mp4");
    assert_eq!(evidence["size"], 100_000);
    assert_eq!(evidence["sha256"], file_sha256(7, 100_000).as_str());
    assert_eq!(evidence["category"], "nuisance-evidence");
    let payments = records
        .iter()
        .find(|r| r["record_id"] == c.as_str())
        .unwrap();
    assert_eq!(payments["fields"][0]["text"], "NL02RABO0123456789");
    let accesses: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["type"] == "access").collect();
    assert!(accesses.iter().any(|x| x["action"] == "read"
        && x["principal_id"] == "test-nuisance-officer"
        && x["record_id"] == b.as_str()));
    assert!(
        accesses
            .iter()
            .any(|x| x["action"] == "write" && x["purpose"] == "payments")
    );

    // The subject themself gets the same copy of their own data, and nobody else's.
    let own = export(&server, Role::Subject, me).await.unwrap();
    // ... minus the nuisance case while it is open: not even its existence shows.
    let own_records: Vec<&serde_json::Value> =
        own.iter().filter(|l| l["type"] == "record").collect();
    assert_eq!(own_records.len(), 2);
    assert!(own_records.iter().all(|r| r["record_id"] != b.as_str()));
    let status = export(&server, Role::Subject, "REL-9999")
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    for role in [Role::SecurityOfficer, Role::CustomerService, Role::Analyst] {
        let status = export(&server, role, me).await.err().unwrap();
        assert_eq!(status.code(), Code::PermissionDenied, "{role}");
    }
    // The export is on the trail before anything was decrypted.
    let entries = audit_entries(&server);
    assert!(entries.iter().any(|e| e["action"] == "export"
        && e["principal"] == "test-privacy-officer"
        && e["case_ref"] == "SAR-2026-5"));
    server.stop().await;
}

/// Two sweeps at once (an officer's beside another, as beside the node's own): each expired
/// record is destroyed once and on the trail once, and no sweep claims that a hold kept what
/// the other destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_at_once_destroy_each_record_once_and_say_so_once() {
    let clock = TestClock::at_now();
    let server = TestServer::start_with_clock(clock.clone()).await;
    let mut expired = Vec::new();
    for i in 0..40 {
        expired.push(
            put(
                &server,
                Role::CustomerService,
                ctx("customer-service", "", ""),
                &format!("REL-TWICE-{i}"),
                vec![text("phone", "contact", "06-12345678")],
            )
            .await,
        );
    }
    clock.advance(3 * 365 * DAY);
    let (a, b) = tokio::join!(sweep(&server, false), sweep(&server, false));
    // Each in one sweep's answer at most (the node's own sweep, which runs as it starts, may
    // come after the clock moved on a loaded machine and take some first).
    let mut listed: Vec<String> = a.into_iter().chain(b).collect();
    listed.sort();
    let mut want = expired.clone();
    want.sort();
    assert!(listed.windows(2).all(|w| w[0] != w[1]), "{listed:?}");
    assert!(listed.iter().all(|r| want.contains(r)), "{listed:?}");
    let trail = audit_entries(&server);
    let entries = |decision: &str| -> Vec<String> {
        let mut found: Vec<String> = trail
            .iter()
            .filter(|e| e["action"] == "retention-destroy" && e["decision"] == decision)
            .map(|e| e["record"].as_str().unwrap_or_default().to_owned())
            .collect();
        found.sort();
        found
    };
    assert_eq!(entries("allow"), want);
    assert_eq!(entries("deny"), Vec::<String>::new());
    server.stop().await;
}

/// A sweep under way on another node (its lease in the store): an officer's sweep here is
/// refused and says why, and destroys nothing; once the other ends, the same sweep runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_under_way_on_another_node_is_not_run_beside_it() {
    let clock = TestClock::at_now();
    let server = TestServer::start_with_clock(clock.clone()).await;
    let id = put(
        &server,
        Role::CustomerService,
        ctx("customer-service", "", ""),
        "REL-ELSEWHERE",
        vec![text("phone", "contact", "06-12345678")],
    )
    .await;
    let conn = Connection::open(server.db_path()).unwrap();
    assert!(
        server
            .vault
            .take_lease("retention-sweep-run", "node-elsewhere", 3600)
            .unwrap()
    );
    clock.advance(3 * 365 * DAY);
    let status = server
        .admin()
        .await
        .sweep_retention(req(
            server.token(Role::PrivacyOfficer),
            pb::SweepRetentionRequest { dry_run: false },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("under way on another node"),
        "{status:?}"
    );
    assert!(exists(&server, &id).await);
    // The officer's sweep is on the trail as not carried out, saying why.
    assert!(
        audit_entries(&server)
            .iter()
            .any(|e| e["action"] == "retention-sweep"
                && e["decision"] == "deny"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("under way on another node"))),
        "no entry for the refused sweep"
    );
    // A dry run changes nothing and is answered beside it.
    assert_eq!(sweep(&server, true).await, std::slice::from_ref(&id));
    // The other node's sweep ended: the same sweep runs here.
    conn.execute("DELETE FROM leases WHERE name = 'retention-sweep-run'", [])
        .unwrap();
    assert_eq!(sweep(&server, false).await, std::slice::from_ref(&id));
    assert!(!exists(&server, &id).await);
    server.stop().await;
}

/// A lease row kluis did not write holds no job off, whatever the spelling: inserted by hand
/// for a node that does not exist, another node's genuine lease with its expiry moved or its
/// holder renamed, a genuine lease of another job copied over this one's, or one lasting
/// longer than any lease kluis takes. The sweep runs over each (the test above is the twin: the
/// genuine lease as kluis wrote it holds the sweep off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_row_written_by_hand_holds_no_sweep_off() {
    let clock = TestClock::at_now();
    let server = TestServer::start_with_clock(clock.clone()).await;
    let conn = Connection::open(server.db_path()).unwrap();
    let sql = |sql: &str| {
        conn.execute(sql, []).unwrap();
    };
    let genuine = |name: &str, ttl: i64| {
        assert!(
            server
                .vault
                .take_lease(name, "node-elsewhere", ttl)
                .unwrap()
        );
    };
    type Forge<'a> = Box<dyn Fn() + 'a>;
    let forgeries: Vec<(&str, Forge<'_>)> = vec![
        (
            "inserted by hand",
            Box::new(|| {
                sql("INSERT INTO leases (name, holder, until) \
                     VALUES ('retention-sweep-run', 'node-elsewhere', \
                     CAST(strftime('%s', 'now') AS INTEGER) + 3600)")
            }),
        ),
        (
            "its expiry moved",
            Box::new(|| {
                genuine("retention-sweep-run", 1);
                sql("UPDATE leases SET until = until + 3600 WHERE name = 'retention-sweep-run'");
            }),
        ),
        (
            "its holder renamed",
            Box::new(|| {
                genuine("retention-sweep-run", 600);
                sql("UPDATE leases SET holder = 'node-other' WHERE name = 'retention-sweep-run'");
            }),
        ),
        (
            "another job's lease copied over it",
            Box::new(|| {
                genuine("rewrap:contact", 600);
                sql("INSERT INTO leases (name, holder, until, mac) \
                     SELECT 'retention-sweep-run', holder, until, mac FROM leases \
                     WHERE name = 'rewrap:contact'");
            }),
        ),
        (
            "longer than any lease kluis takes",
            Box::new(|| genuine("retention-sweep-run", kluis::store::MAX_LEASE_SECS + 3600)),
        ),
    ];
    for (i, (what, forge)) in forgeries.iter().enumerate() {
        let id = put(
            &server,
            Role::CustomerService,
            ctx("customer-service", "", ""),
            &format!("REL-LEASE-{i}"),
            vec![text("phone", "contact", "06-12345678")],
        )
        .await;
        sql("DELETE FROM leases");
        forge();
        clock.advance(3 * 365 * DAY);
        assert_eq!(
            sweep(&server, false).await,
            std::slice::from_ref(&id),
            "a lease {what} held the sweep off"
        );
        assert!(!exists(&server, &id).await, "{what}");
    }
    drop(forgeries);
    server.stop().await;
}

/// A record the sweep destroys while its subject keeps another under the same purpose keeps
/// its subject key alive; its rows put back by hand from an older copy are refused as data loss
/// (read and listing), the other record reads on (the twin), and the next sweep destroys the
/// copy again without breaking the subject's anchor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swept_record_put_back_by_hand_is_not_obeyed_and_is_swept_again() {
    let clock = TestClock::at_now();
    let server = TestServer::start_with_clock(clock.clone()).await;
    let contract = || ctx("customer-service", "", "");
    let old = put(
        &server,
        Role::CustomerService,
        contract(),
        "REL-SWEPT",
        vec![text("phone", "contact", "06-7777")],
    )
    .await;
    clock.advance(400 * DAY);
    let young = put(
        &server,
        Role::CustomerService,
        contract(),
        "REL-SWEPT",
        vec![text("phone", "contact", "06-8888")],
    )
    .await;
    clock.advance(400 * DAY);
    keep_copy(&server, &old, "swept");
    assert_eq!(sweep(&server, false).await, std::slice::from_ref(&old));
    assert!(!exists(&server, &old).await);
    put_copy_back(&server, "swept");
    let cs = server.token(Role::CustomerService).to_owned();
    let status = get(&server, &cs, contract(), &old).await.err().unwrap();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    let listed = list_records(&server, &cs, contract(), "REL-SWEPT")
        .await
        .unwrap_err();
    assert_eq!(listed.code(), Code::DataLoss, "{listed:?}");
    let read = get(&server, &cs, contract(), &young).await.unwrap();
    assert_eq!(text_of(field(&read, "phone").unwrap()), "06-8888");
    // Expired still, the copy goes with the next sweep; the subject's anchor adds up after.
    assert_eq!(sweep(&server, false).await, std::slice::from_ref(&old));
    let listed = list_records(&server, &cs, contract(), "REL-SWEPT")
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].record_id, young);
    server.stop().await;
}
