//! Concurrency: many clients rectifying and reading the same records of the same subjects while
//! a purpose key rotation (with its rewrap), a rekey and a retention sweep run. No read fails or
//! goes back in time, no acknowledged update is lost, nothing deadlocks (the test is bounded).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use kluis::{domain::Role, pb};

use crate::common::*;

const WRITERS: usize = 8;
const ROUNDS: u64 = 25;
const DAY: i64 = 86_400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_readers_rotation_rekey_and_sweep_run_together() {
    tokio::time::timeout(Duration::from_secs(240), scenario())
        .await
        .expect("deadlock: the scenario did not finish in 240 s");
}

async fn scenario() {
    let clock = TestClock::at_now();
    let server = Arc::new(TestServer::start_with_clock(clock.clone()).await);
    // Records the sweep will destroy once the clock has moved on.
    let mut victims = Vec::new();
    for i in 0..20 {
        victims.push(
            put(
                &server,
                Role::CustomerService,
                ctx("customer-service", "", ""),
                &format!("REL-V{i}"),
                vec![text("email", "contact", &format!("v{i}@example.nl"))],
            )
            .await,
        );
    }
    clock.advance(2 * 365 * DAY + DAY);
    // The shared records: every writer owns one field of each.
    let mut shared = Vec::new();
    for s in 0..6 {
        shared.push(
            put(
                &server,
                Role::NuisanceOfficer,
                nuisance_ctx(),
                &format!("REL-S{s}"),
                (0..WRITERS)
                    .map(|k| text(&format!("f{k}"), "contact", "0"))
                    .collect(),
            )
            .await,
        );
    }
    let shared = Arc::new(shared);
    let officer = server.token(Role::NuisanceOfficer).to_owned();

    let mut writers = Vec::new();
    for k in 0..WRITERS {
        let (server, shared, officer) = (Arc::clone(&server), Arc::clone(&shared), officer.clone());
        writers.push(tokio::spawn(async move {
            let mut client = server.client().await;
            let mut last = BTreeMap::new();
            for n in 1..=ROUNDS {
                for id in shared.iter() {
                    client
                        .update_record(req(
                            &officer,
                            pb::UpdateRecordRequest {
                                context: nuisance_ctx(),
                                record_id: id.clone(),
                                fields: vec![text(&format!("f{k}"), "contact", &n.to_string())],
                            },
                        ))
                        .await
                        .unwrap_or_else(|s| panic!("writer {k}: {s:?}"));
                    last.insert(id.clone(), n);
                }
            }
            last
        }));
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..3 {
        let (server, shared, officer, done) = (
            Arc::clone(&server),
            Arc::clone(&shared),
            officer.clone(),
            Arc::clone(&done),
        );
        readers.push(tokio::spawn(async move {
            let mut seen: BTreeMap<(String, String), u64> = BTreeMap::new();
            let mut reads = 0u64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for id in shared.iter() {
                    let resp = get(&server, &officer, nuisance_ctx(), id)
                        .await
                        .unwrap_or_else(|s| panic!("reader {r}: {s:?}"));
                    assert_eq!(resp.fields.len(), WRITERS);
                    for f in &resp.fields {
                        let v: u64 = text_of(f).parse().unwrap();
                        let prev = seen.entry((id.clone(), f.name.clone())).or_insert(0);
                        assert!(v >= *prev, "reader {r}: {id}.{} went back", f.name);
                        *prev = v;
                    }
                    reads += 1;
                }
            }
            reads
        }));
    }
    // Key work and the sweep, while all of that goes on.
    let mut admin = server.admin().await;
    admin
        .rotate_key(req(
            server.token(Role::SecurityOfficer),
            pb::RotateKeyRequest {
                purpose: "nuisance".into(),
                algorithm: "xchacha20-poly1305".into(),
                justification: "concurrency".into(),
            },
        ))
        .await
        .unwrap();
    let vault = Arc::clone(&server.vault);
    let jobs = tokio::task::spawn_blocking(move || {
        let rekeyed = vault
            .rekey(kluis::domain::Purpose::Nuisance, |_| true)
            .unwrap();
        let swept = vault.sweep_retention(None, false).unwrap();
        (rekeyed, swept)
    });

    let mut last = Vec::new();
    for w in writers {
        last.push(w.await.unwrap());
    }
    let (rekeyed, swept) = jobs.await.unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    assert!(reads > 0);
    assert!(rekeyed.done > 0, "the rekey did work");
    assert_eq!(
        swept.len(),
        victims.len(),
        "the sweep destroyed the expired records"
    );

    // No lost update: every field holds its writer's last acknowledged value.
    for id in shared.iter() {
        let resp = get(&server, &officer, nuisance_ctx(), id).await.unwrap();
        for (k, last) in last.iter().enumerate() {
            let f = field(&resp, &format!("f{k}")).unwrap();
            assert_eq!(text_of(f), last[id].to_string(), "{id}.f{k}");
        }
    }
    let report = admin
        .key_report(req(
            server.token(Role::SecurityOfficer),
            pb::KeyReportRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(report.sound);
    assert!(matches!(
        server.vault.audit().verify(None).unwrap(),
        kluis::audit::Verification::Intact { .. }
    ));
}

/// A new subject's first record stores its first key in the same transaction. Many first
/// records of one new subject written at once: one key wins, the others are sealed again under
/// it, and every record opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_records_of_one_new_subject_written_at_once_all_open() {
    let server = Arc::new(TestServer::start().await);
    let mut writes = Vec::new();
    for i in 0..16 {
        let server = Arc::clone(&server);
        writes.push(tokio::spawn(async move {
            let id = put(
                &server,
                Role::NuisanceOfficer,
                nuisance_ctx(),
                "REL-NEW-1",
                vec![text("note", "contact", &format!("value {i}"))],
            )
            .await;
            (i, id)
        }));
    }
    let officer = server.token(Role::NuisanceOfficer).to_owned();
    for w in writes {
        let (i, id) = w.await.unwrap();
        let got = get(&server, &officer, nuisance_ctx(), &id).await.unwrap();
        assert_eq!(text_of(field(&got, "note").unwrap()), format!("value {i}"));
    }
    let db = rusqlite::Connection::open(server.db_path()).unwrap();
    let keys: i64 = db
        .query_row(
            "SELECT count(*) FROM subject_keys WHERE subject = 'REL-NEW-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(keys, 1, "one subject key for the subject and purpose");
}
