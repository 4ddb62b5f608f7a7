//! Equality search on encrypted fields (`FindRecords`): exact and normalised matches, colliding
//! tags removed inside the vault, nothing found that the caller may not read, the value never on
//! the trail, tags replaced with their value and gone with it (checked in the database file), a
//! tag edited by hand that only costs a comparison, and the index key's rotation with searches
//! during the backfill.

use std::collections::BTreeMap;

use kluis::{domain::Role, pb, search::RawSearch};
use tonic::Code;

use crate::common::{TestServer, audit_entries, bad_rows, ctx, put, rekey, req, text};

fn search_config(tag_bits: u8) -> kluis::config::RawConfig {
    kluis::config::RawConfig {
        search: Some(BTreeMap::from([(
            "contract".to_owned(),
            RawSearch {
                fields: vec![
                    "email".into(),
                    "phone".into(),
                    "iban".into(),
                    "postcode".into(),
                ],
                tag_bits: Some(tag_bits),
                types: None,
            },
        )])),
        ..Default::default()
    }
}

fn contract() -> Option<pb::AccessContext> {
    ctx("contract", "", "")
}

async fn find(
    server: &TestServer,
    role: Role,
    field: &str,
    value: &str,
    limit: u32,
) -> Result<Vec<pb::RecordInfo>, tonic::Status> {
    server
        .client()
        .await
        .find_records(req(
            server.token(role),
            pb::FindRecordsRequest {
                context: contract(),
                field: field.into(),
                value: value.into(),
                limit,
            },
        ))
        .await
        .map(|r| r.into_inner().records)
}

fn subjects(records: &[pb::RecordInfo]) -> Vec<String> {
    records.iter().map(|r| r.subject_id.clone()).collect()
}

fn db(server: &TestServer) -> rusqlite::Connection {
    rusqlite::Connection::open(server.db_path()).unwrap()
}

fn tags_of(server: &TestServer, record: &str) -> Vec<(String, i64)> {
    let conn = db(server);
    let mut stmt = conn
        .prepare(
            "SELECT field, version FROM search_tags WHERE record_id = ?1 ORDER BY field, version",
        )
        .unwrap();
    stmt.query_map([record], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Stores `n` contract records with contact fields, subject `T<i>`; returns their ids.
async fn tenants(server: &TestServer, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            put(
                server,
                Role::CustomerService,
                contract(),
                &format!("T{i}"),
                vec![
                    text("email", "contact", &format!("tenant{i}@example.nl")),
                    text("phone", "contact", &format!("06-1234{i:04}")),
                    text(
                        "postcode",
                        "contact",
                        if i % 2 == 0 { "1234 AB" } else { "9999 ZZ" },
                    ),
                    text("surname", "identity", "Jansen"),
                ],
            )
            .await,
        );
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_and_normalised_values_are_found_and_colliding_tags_never_leave_the_vault() {
    // Eight-bit tags: 300 values in 256 tags must collide.
    let server = TestServer::start_with_config(search_config(8)).await;
    tenants(&server, 300).await;

    // Exact, and in other spellings.
    for (field, value) in [
        ("email", "tenant7@example.nl"),
        ("email", "  TENANT7@Example.NL "),
        ("phone", "0612340007"),
        ("phone", "+31 6 1234 0007"),
        ("phone", "0031-6-12340007"),
    ] {
        let found = find(&server, Role::CustomerService, field, value, 0)
            .await
            .unwrap();
        assert_eq!(subjects(&found), ["T7"], "{field} = {value:?}");
        // Metadata as ListRecords gives it: the fields the caller may know of, no values.
        let names: Vec<&str> = found[0].fields.iter().map(|f| f.name.as_str()).collect();
        assert!(
            names.contains(&"email") && names.contains(&"surname"),
            "{names:?}"
        );
    }
    // The twin: a near miss is no hit.
    for (field, value) in [
        ("email", "tenant7@example.com"),
        ("phone", "0612340700"),
        ("email", "nobody@example.nl"),
    ] {
        assert!(
            find(&server, Role::CustomerService, field, value, 0)
                .await
                .unwrap()
                .is_empty(),
            "{field} = {value:?}"
        );
    }
    // Every value finds exactly its own record, although tags collide.
    for i in 0..300 {
        let found = find(
            &server,
            Role::CustomerService,
            "email",
            &format!("tenant{i}@example.nl"),
            0,
        )
        .await
        .unwrap();
        assert_eq!(subjects(&found), [format!("T{i}")]);
    }
    let entries = audit_entries(&server);
    let finds: Vec<&serde_json::Value> = entries.iter().filter(|e| e["action"] == "find").collect();
    let candidates = |e: &serde_json::Value| -> usize {
        let reason = e["reason"].as_str().unwrap();
        reason
            .split(": ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        finds.iter().any(|e| candidates(e) > 1),
        "no search met a colliding tag"
    );
    // Many hits: a shared postcode, at most `limit`.
    let shared = find(&server, Role::CustomerService, "postcode", "1234ab", 100)
        .await
        .unwrap();
    assert_eq!(shared.len(), 100);
    assert!(shared.iter().all(|r| {
        let n: usize = r.subject_id[1..].parse().unwrap();
        n.is_multiple_of(2)
    }));
    assert_eq!(
        find(&server, Role::CustomerService, "postcode", "1234ab", 5)
            .await
            .unwrap()
            .len(),
        5
    );

    // The trail: the search with its field and counts, each hit under its subject; never the
    // value, in any spelling.
    let found_t7: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["action"] == "found" && e["subject"] == "T7")
        .collect();
    assert!(!found_t7.is_empty());
    // Each names the policies that allowed it, as a read's entry does.
    for e in &found_t7 {
        let fields = e["fields"].as_array().unwrap();
        assert!(!fields.is_empty(), "{e}");
        for f in fields {
            let policies = f["policies"].as_array().unwrap();
            assert!(!policies.is_empty(), "a found entry names no policy: {e}");
        }
    }
    assert!(entries.iter().any(|e| e["action"] == "find-result"
        && e["reason"].as_str().unwrap().contains("`email`: 1 hit(s)")));
    // The subject's access report names the search that found them.
    let report = server
        .admin()
        .await
        .subject_access_report(req(
            server.token(Role::PrivacyOfficer),
            pb::SubjectAccessReportRequest {
                subject_id: "T7".into(),
                justification: "SAR-2026-7".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        report.events.iter().any(|e| e.action == "found"),
        "{:?}",
        report.events.iter().map(|e| &e.action).collect::<Vec<_>>()
    );
    let trail = serde_json::to_string(&entries).unwrap().to_lowercase();
    for value in ["tenant7@", "12340007", "1234ab", "1234 ab", "nobody@"] {
        assert!(!trail.contains(value), "`{value}` on the trail");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_found_that_the_caller_may_not_read() {
    let server = TestServer::start_with_config(search_config(16)).await;
    tenants(&server, 3).await;
    // Bank details on a contract record, kept by the finance officer: customer service sees the
    // record, not these fields.
    put(
        &server,
        Role::FinanceOfficer,
        contract(),
        "T1",
        vec![text("iban", "financial", "NL91ABNA0417164300")],
    )
    .await;
    let finance = find(
        &server,
        Role::FinanceOfficer,
        "iban",
        "nl91 abna 0417 1643 00",
        0,
    )
    .await
    .unwrap();
    assert_eq!(subjects(&finance), ["T1"]);
    assert!(
        find(
            &server,
            Role::CustomerService,
            "iban",
            "NL91ABNA0417164300",
            0
        )
        .await
        .unwrap()
        .is_empty()
    );
    // A role with no business in contracts finds nothing, and learns nothing from an error.
    for role in [
        Role::MaintenancePlanner,
        Role::NuisanceOfficer,
        Role::Auditor,
    ] {
        let found = find(&server, role, "email", "tenant1@example.nl", 0).await;
        assert!(
            found.as_ref().is_ok_and(Vec::is_empty),
            "{role:?}: {found:?}"
        );
    }
    // A token bound to one subject finds only that subject.
    let own = server.issue(Role::Subject, Some("T2"));
    let mut client = server.client().await;
    for (value, expected) in [("tenant2@example.nl", 1), ("tenant1@example.nl", 0)] {
        let found = client
            .find_records(req(
                &own,
                pb::FindRecordsRequest {
                    context: contract(),
                    field: "email".into(),
                    value: value.into(),
                    limit: 0,
                },
            ))
            .await
            .map(|r| r.into_inner().records.len());
        assert!(
            matches!(found, Ok(n) if n == expected) || (expected == 0 && found.is_err()),
            "{value}: {found:?}"
        );
    }
    // Bad requests: the right status, the field named, nothing about values.
    for (field, value, limit, code, named) in [
        (
            "surname",
            "Jansen",
            0,
            Code::FailedPrecondition,
            "[search.contract]",
        ),
        ("Not A Field", "x", 0, Code::InvalidArgument, "`field`"),
        ("email", "   ", 0, Code::InvalidArgument, "`value`"),
        (
            "email",
            &"a".repeat(1025),
            0,
            Code::InvalidArgument,
            "`value`",
        ),
        ("email", "a@b.nl", 101, Code::InvalidArgument, "`limit`"),
    ] {
        let status = find(&server, Role::CustomerService, field, value, limit)
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{field}: {status:?}");
        assert!(status.message().contains(named), "{status:?}");
    }
    // Without a token: nothing.
    let status = server
        .client()
        .await
        .find_records(tonic::Request::new(pb::FindRecordsRequest {
            context: contract(),
            field: "email".into(),
            value: "tenant1@example.nl".into(),
            limit: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_search_decides_as_many_records_whether_or_not_others_carry_the_values_tag() {
    let server = TestServer::start_with_config(search_config(16)).await;
    tenants(&server, 6).await;
    // The data subject T2's own token: T1's record carries the tag of T1's address, and T2
    // may not read it. Were only candidates read and decided, that search would cost a
    // record, its subject's facts and a decision more than a search for an address nobody
    // has: the time would tell that someone's record holds it.
    let own = server.issue(Role::Subject, Some("T2"));
    let mut client = server.client().await;
    let values = [
        "tenant1@example.nl",
        "nobody-at-all@example.nl",
        "tenant2@example.nl",
    ];
    for value in values {
        let found = client
            .find_records(req(
                &own,
                pb::FindRecordsRequest {
                    context: contract(),
                    field: "email".into(),
                    value: value.into(),
                    limit: 0,
                },
            ))
            .await
            .map(|r| subjects(&r.into_inner().records));
        let expected: &[&str] = if value == "tenant2@example.nl" {
            &["T2"]
        } else {
            &[]
        };
        assert!(
            found.as_ref().is_ok_and(|f| f == expected),
            "{value}: {found:?}"
        );
    }
    // Each search read and decided four records: its candidates and decoys beside them.
    let counts: Vec<(usize, usize, usize)> = audit_entries(&server)
        .iter()
        .filter(|e| e["action"] == "find")
        .map(|e| {
            let reason = e["reason"].as_str().unwrap();
            let numbers: Vec<usize> = reason
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            assert_eq!(numbers.len(), 3, "{reason}");
            (numbers[0], numbers[1], numbers[2])
        })
        .collect();
    // (candidates, of them allowed, decoys)
    assert_eq!(counts, [(1, 0, 3), (0, 0, 4), (1, 1, 3)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_record_fails_the_searches_that_find_it_and_no_other() {
    let server = TestServer::start_with_config(search_config(16)).await;
    let ids = tenants(&server, 5).await;
    // T4's record edited in the database file: its MAC no longer matches.
    db(&server)
        .execute(
            "UPDATE records SET mac = zeroblob(32) WHERE id = ?1",
            [&ids[4]],
        )
        .unwrap();
    // Other searches meet it among their decoys now and then (1 in 4 records here): it fails
    // none of them, and none names it.
    for _ in 0..20 {
        let found = find(
            &server,
            Role::CustomerService,
            "email",
            "tenant1@example.nl",
            0,
        )
        .await;
        assert!(
            found.as_ref().is_ok_and(|f| subjects(f) == ["T1"]),
            "{found:?}"
        );
    }
    // A search that finds it as a candidate fails, as a read of it does.
    let status = find(
        &server,
        Role::CustomerService,
        "email",
        "tenant4@example.nl",
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_follow_their_value_and_go_with_it() {
    let server = TestServer::start_with_config(search_config(16)).await;
    let ids = tenants(&server, 3).await;
    // Searchable fields are tagged, the others not.
    assert_eq!(
        tags_of(&server, &ids[0])
            .iter()
            .map(|(f, _)| f.as_str())
            .collect::<Vec<_>>(),
        ["email", "phone", "postcode"]
    );
    // A rectified value: found by the new value only.
    server
        .client()
        .await
        .update_record(req(
            server.token(Role::CustomerService),
            pb::UpdateRecordRequest {
                context: contract(),
                record_id: ids[1].clone(),
                fields: vec![text("email", "contact", "moved@example.nl")],
            },
        ))
        .await
        .unwrap();
    assert!(
        find(
            &server,
            Role::CustomerService,
            "email",
            "tenant1@example.nl",
            0
        )
        .await
        .unwrap()
        .is_empty()
    );
    assert_eq!(
        subjects(
            &find(
                &server,
                Role::CustomerService,
                "email",
                "moved@example.nl",
                0
            )
            .await
            .unwrap()
        ),
        ["T1"]
    );
    assert_eq!(tags_of(&server, &ids[1]).len(), 3);

    // An attacker with the database file points T0's email tag at T2's record, and at a record
    // of another purpose: the search compares the candidate and finds only T0.
    let nuisance = put(
        &server,
        Role::NuisanceOfficer,
        crate::common::nuisance_ctx(),
        "T0",
        vec![text("email", "contact", "tenant0@example.nl")],
    )
    .await;
    {
        let conn = db(&server);
        for target in [&ids[2], &nuisance] {
            conn.execute(
                "INSERT OR REPLACE INTO search_tags (record_id, field, purpose, version, bits, tag)
                 SELECT ?2, field, purpose, version, bits, tag FROM search_tags
                 WHERE record_id = ?1 AND field = 'email'",
                rusqlite::params![ids[0], target],
            )
            .unwrap();
        }
    }
    assert_eq!(
        subjects(
            &find(
                &server,
                Role::CustomerService,
                "email",
                "tenant0@example.nl",
                0
            )
            .await
            .unwrap()
        ),
        ["T0"]
    );
    // T2's own value: its tag was overwritten, so it is not found until it is tagged again.
    assert!(
        find(
            &server,
            Role::CustomerService,
            "email",
            "tenant2@example.nl",
            0
        )
        .await
        .unwrap()
        .is_empty()
    );

    // Deleting a record takes its tags; erasing a subject takes theirs.
    server
        .client()
        .await
        .delete_record(req(
            server.token(Role::CustomerService),
            pb::DeleteRecordRequest {
                context: contract(),
                record_id: ids[0].clone(),
            },
        ))
        .await
        .unwrap();
    assert!(tags_of(&server, &ids[0]).is_empty());
    server
        .admin()
        .await
        .erase_subject(req(
            server.token(Role::PrivacyOfficer),
            pb::EraseSubjectRequest {
                subject_id: "T1".into(),
                justification: "ER-2026-11".into(),
            },
        ))
        .await
        .unwrap();
    assert!(tags_of(&server, &ids[1]).is_empty());
    let left: i64 = db(&server)
        .query_row(
            "SELECT count(*) FROM search_tags t JOIN records r ON r.id = t.record_id
             WHERE r.subject IN ('T0', 'T1') AND r.purpose = 'contract'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
    assert!(
        find(
            &server,
            Role::CustomerService,
            "email",
            "moved@example.nl",
            0
        )
        .await
        .unwrap()
        .is_empty()
    );
}

async fn reindex(server: &TestServer) -> pb::KeyJobProgress {
    let mut stream = server
        .admin()
        .await
        .reindex(req(
            server.token(Role::SecurityOfficer),
            pb::KeyJobRequest {
                purpose: String::new(),
                justification: "index key rotation".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    loop {
        let p = stream.message().await.unwrap().expect("no result");
        if p.finished {
            return p;
        }
    }
}

async fn rotate_index(server: &TestServer) -> Result<u32, tonic::Status> {
    server
        .admin()
        .await
        .rotate_index_key(req(
            server.token(Role::SecurityOfficer),
            pb::RotateIndexKeyRequest {
                justification: "yearly".into(),
            },
        ))
        .await
        .map(|r| r.into_inner().version)
}

fn versions(server: &TestServer) -> BTreeMap<i64, i64> {
    let conn = db(server);
    let mut stmt = conn
        .prepare("SELECT version, count(*) FROM search_tags GROUP BY version")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_index_key_rotates_and_searches_keep_finding_during_the_backfill() {
    let server = TestServer::start_with_config(search_config(16)).await;
    let ids = tenants(&server, 400).await;
    assert_eq!(versions(&server), BTreeMap::from([(1, 1200)]));
    // Only the security officer rotates.
    let status = server
        .admin()
        .await
        .rotate_index_key(req(
            server.token(Role::PrivacyOfficer),
            pb::RotateIndexKeyRequest {
                justification: "yearly".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(rotate_index(&server).await.unwrap(), 2);
    // A second rotation waits for the backfill of the first.
    let status = rotate_index(&server).await.unwrap_err();
    assert!(status.message().contains("reindex"), "{status:?}");

    // Old values are found under the retiring version, new ones carry both tags.
    assert_eq!(
        subjects(
            &find(
                &server,
                Role::CustomerService,
                "email",
                "tenant5@example.nl",
                0
            )
            .await
            .unwrap()
        ),
        ["T5"]
    );
    let new = put(
        &server,
        Role::CustomerService,
        contract(),
        "T-NEW",
        vec![text("email", "contact", "new@example.nl")],
    )
    .await;
    assert_eq!(
        tags_of(&server, &new),
        [("email".to_owned(), 1), ("email".to_owned(), 2)]
    );

    // Searches while the backfill runs find what they look for.
    let searching = {
        let tokens = server.token(Role::CustomerService).to_owned();
        let mut client = server.client().await;
        tokio::spawn(async move {
            let mut misses = Vec::new();
            for i in (0..400).step_by(7) {
                let found = client
                    .find_records(req(
                        &tokens,
                        pb::FindRecordsRequest {
                            context: contract(),
                            field: "phone".into(),
                            value: format!("0612340{i:03}"),
                            limit: 0,
                        },
                    ))
                    .await
                    .unwrap()
                    .into_inner()
                    .records;
                if subjects(&found) != [format!("T{i}")] {
                    misses.push(i);
                }
            }
            misses
        })
    };
    let done = reindex(&server).await;
    assert!(done.finished);
    assert_eq!(searching.await.unwrap(), Vec::<usize>::new());
    // Every value tagged under version 2 only; version 1 dropped.
    assert_eq!(versions(&server), BTreeMap::from([(2, 1201)]));
    assert_eq!(tags_of(&server, &ids[9]).len(), 3);
    for (field, value, who) in [
        ("email", "tenant399@example.nl", "T399"),
        ("email", "new@example.nl", "T-NEW"),
    ] {
        let found = find(&server, Role::CustomerService, field, value, 0)
            .await
            .unwrap();
        assert_eq!(subjects(&found), [who], "{field}");
    }
    let odd = find(&server, Role::CustomerService, "postcode", "9999zz", 100)
        .await
        .unwrap();
    assert_eq!(odd.len(), 100);
    assert!(odd.iter().all(|r| {
        !r.subject_id[1..]
            .parse::<usize>()
            .unwrap()
            .is_multiple_of(2)
    }));
    // And it can rotate again.
    assert_eq!(rotate_index(&server).await.unwrap(), 3);
    let entries = audit_entries(&server);
    for action in ["index-key-rotate", "index-reindex", "index-backfill"] {
        assert!(
            entries.iter().any(|e| e["action"] == action),
            "{action} not on the trail"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_external_partys_hit_is_registered_as_a_disclosure() {
    let server = TestServer::start_with_config(kluis::config::RawConfig {
        search: Some(BTreeMap::from([(
            "maintenance".to_owned(),
            RawSearch {
                fields: vec!["email".into()],
                ..Default::default()
            },
        )])),
        ..Default::default()
    })
    .await;
    for subject in ["T1", "T2"] {
        put(
            &server,
            Role::MaintenancePlanner,
            ctx("maintenance", "", ""),
            subject,
            vec![text(
                "email",
                "contact",
                &format!("{}@example.nl", subject.to_lowercase()),
            )],
        )
        .await;
    }
    let contractor = server.issue(Role::Contractor, Some("T1"));
    let find = |value: &'static str| {
        let token = contractor.clone();
        let server = &server;
        async move {
            server
                .client()
                .await
                .find_records(req(
                    &token,
                    pb::FindRecordsRequest {
                        context: ctx("maintenance", "", ""),
                        field: "email".into(),
                        value: value.into(),
                        limit: 0,
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .records
        }
    };
    assert_eq!(subjects(&find("t1@example.nl").await), ["T1"]);
    // Another subject's value: not found, nothing registered.
    assert!(find("t2@example.nl").await.is_empty());
    let found: Vec<serde_json::Value> = audit_entries(&server)
        .into_iter()
        .filter(|e| e["action"] == "found")
        .collect();
    assert_eq!(found.len(), 1);
    let disclosure = found[0]["target"].as_str().unwrap().to_owned();
    assert!(disclosure.starts_with("dsc_"), "{disclosure}");
    let register = server
        .admin()
        .await
        .list_disclosures(req(
            server.token(Role::PrivacyOfficer),
            pb::ListDisclosuresRequest {
                subject_id: "T1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .disclosures;
    assert!(
        register.iter().any(|d| d.disclosure_id == disclosure),
        "{:?}",
        register
            .iter()
            .map(|d| &d.disclosure_id)
            .collect::<Vec<_>>()
    );
    // Deleted by hand, the hit's disclosure is named by verification: its entry says it was
    // registered.
    rusqlite::Connection::open(server.db_path())
        .unwrap()
        .execute("DELETE FROM disclosures WHERE id = ?1", [&disclosure])
        .unwrap();
    let bad = bad_rows(&server).await;
    assert!(
        bad.iter()
            .any(|b| b.kind == "disclosure" && b.id == disclosure),
        "{bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rekey_of_a_purpose_backfills_its_tags_after_an_index_key_rotation() {
    let server = TestServer::start_with_config(search_config(16)).await;
    tenants(&server, 5).await;
    assert_eq!(rotate_index(&server).await.unwrap(), 2);
    rekey(&server, "contract").await.unwrap();
    // Every value tagged under the new version only, the old one dropped, and still found.
    assert_eq!(versions(&server), BTreeMap::from([(2, 15)]));
    assert_eq!(
        subjects(
            &find(
                &server,
                Role::CustomerService,
                "email",
                "tenant3@example.nl",
                0
            )
            .await
            .unwrap()
        ),
        ["T3"]
    );
    // The rekey's own entry is on the trail before the backfill's.
    let actions: Vec<String> = audit_entries(&server)
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default().to_owned())
        .collect();
    let rekey = actions.iter().position(|a| a == "key-rekey").unwrap();
    let backfill = actions.iter().rposition(|a| a == "index-backfill").unwrap();
    assert!(rekey < backfill, "{actions:?}");
}

async fn key_report(
    server: &TestServer,
    search_candidates: u32,
) -> Result<pb::KeyReportResponse, tonic::Status> {
    server
        .admin()
        .await
        .key_report(req(
            server.token(Role::SecurityOfficer),
            pb::KeyReportRequest { search_candidates },
        ))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_report_counts_each_indexs_values_and_plans_its_width() {
    let server = TestServer::start_with_config(search_config(16)).await;
    tenants(&server, 40).await;
    let report = key_report(&server, 0).await.unwrap();
    let by_field: BTreeMap<&str, &pb::SearchIndex> = report
        .search
        .iter()
        .map(|s| (s.field.as_str(), s))
        .collect();
    assert_eq!(
        by_field.keys().copied().collect::<Vec<_>>(),
        ["email", "iban", "phone", "postcode"]
    );
    let email = by_field["email"];
    assert_eq!(
        (email.purpose.as_str(), email.tag_bits, email.values),
        ("contract", 16, 40)
    );
    assert!((email.candidates_per_search - 40.0 / 65536.0).abs() < 1e-9);
    // Forty values share no tag at 8 bits either: the narrowest width is planned.
    assert_eq!(email.planned_tag_bits, 8);
    assert_eq!(
        (by_field["iban"].values, by_field["postcode"].values),
        (0, 40)
    );
    // The plan follows the values, not the configured width: with at most one other value
    // per tag, 40 values still fit 8 bits.
    let strict = key_report(&server, 1).await.unwrap();
    assert!(strict.search.iter().all(|s| s.planned_tag_bits == 8));

    // Tags at another width (as after a change of `tag_bits` before the reindex) are counted
    // apart, and the plan covers them.
    db(&server)
        .execute("UPDATE search_tags SET bits = 12 WHERE field = 'phone'", [])
        .unwrap();
    let report = key_report(&server, 0).await.unwrap();
    let phone = report.search.iter().find(|s| s.field == "phone").unwrap();
    assert_eq!((phone.values, phone.values_at_other_widths), (0, 40));

    // The aim is bounded, and only a security officer reads the report.
    let status = key_report(&server, 1001).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("search_candidates") && status.message().contains("1000"),
        "{status:?}"
    );
    let status = server
        .admin()
        .await
        .key_report(req(
            server.token(Role::CustomerService),
            pb::KeyReportRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // No searched-for or stored value reaches the trail through the report.
    let trail = serde_json::to_string(&audit_entries(&server)).unwrap();
    assert!(!trail.contains("tenant1@example.nl"));
    server.stop().await;
}
