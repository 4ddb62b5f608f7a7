//! Crash safety: the real `kluis` binary under concurrent writes, rectifications, reads, key
//! rotations with their rewraps, rekeys and retention sweeps, killed with SIGKILL at a random
//! moment, again and again. After every restart:
//!
//! - every acknowledged write reads back exactly (a rectification in flight at the kill may have
//!   landed or not, nothing else);
//! - nothing unacknowledged is half-visible: every stored record has all its fields;
//! - every acknowledged evidence upload reads back byte for byte, an upload cut off by the kill
//!   leaves no row and no segment file, and every segment file is named by a row;
//! - the audit chain verifies;
//! - no field is sealed under a subject key that does not exist, and the key report is sound.
//!
//! ```text
//! cargo test --test it crash                                    # 3 cycles (CI)
//! KLUIS_CRASH_CYCLES=50 cargo test --test it crash -- --nocapture   # the long variant
//! KLUIS_CRASH_SEED=1234 ...                                     # replay a run's timing
//! ```

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use kluis::{
    crypto::stream::SEGMENT_SIZE,
    pb::{self, admin_client::AdminClient, vault_client::VaultClient},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rusqlite::Connection;
use tonic::transport::Channel;

use crate::{
    common::*,
    rotation::{connect, free_port, prepare, start},
};

/// What the harness knows of a record: the last value of `note` the server acknowledged, and a
/// rectification that was in flight when the server died (it may or may not have landed).
#[derive(Clone, Debug)]
struct Known {
    phone: String,
    note: String,
    pending: Option<String>,
}

type Ledger = Arc<Mutex<BTreeMap<String, Known>>>;

/// The acknowledged evidence uploads: id → (seed of its bytes, size).
type Uploads = Arc<Mutex<BTreeMap<String, (u64, u64)>>>;

#[expect(
    clippy::disallowed_methods,
    reason = "the harness reads its cycle count and seed from the environment"
)]
fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_random_sigkills() {
    let cycles = env_u64("KLUIS_CRASH_CYCLES").unwrap_or(3);
    let seed = env_u64("KLUIS_CRASH_SEED").unwrap_or_else(rand::random);
    println!("crash harness: {cycles} cycles, KLUIS_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = private_tempdir();
    let dir = tmp.path();
    let (so, officer, _) = prepare(dir, 0);
    let ledger: Ledger = Arc::default();
    let uploads: Uploads = Arc::default();
    let acknowledged = Arc::new(AtomicU64::new(0));
    let mut privacy: Option<String> = None;

    for cycle in 0..cycles {
        let port = free_port();
        let server = start(dir, port);
        let channel = connect(port).await;
        verify(&channel, &officer, &so, &ledger, &uploads, dir).await;
        if privacy.is_none() {
            privacy = Some(issue_privacy_officer(&channel, &so).await);
        }

        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..4 {
            tasks.push(tokio::spawn(writer(
                channel.clone(),
                officer.clone(),
                Arc::clone(&ledger),
                Arc::clone(&stop),
                Arc::clone(&acknowledged),
                format!("c{cycle}w{w}"),
            )));
        }
        tasks.push(tokio::spawn(rectifier(
            channel.clone(),
            officer.clone(),
            Arc::clone(&ledger),
            Arc::clone(&stop),
            Arc::clone(&acknowledged),
            format!("c{cycle}"),
            rng.r#gen(),
        )));
        tasks.push(tokio::spawn(uploader(
            channel.clone(),
            officer.clone(),
            Arc::clone(&uploads),
            Arc::clone(&stop),
            Arc::clone(&acknowledged),
            rng.r#gen(),
        )));
        tasks.push(tokio::spawn(key_work(
            channel.clone(),
            so.clone(),
            privacy.clone().unwrap_or_default(),
            Arc::clone(&stop),
            cycle,
        )));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
        // SIGKILL, in the middle of whatever is going on.
        drop(server);
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
    }
    let port = free_port();
    let _server = start(dir, port);
    let channel = connect(port).await;
    verify(&channel, &officer, &so, &ledger, &uploads, dir).await;
    let records = ledger.lock().unwrap().len();
    let files = uploads.lock().unwrap().len();
    println!(
        "crash harness: {cycles} kill/restart cycles survived; {} writes acknowledged, {records} \
         records and {files} evidence files verified after every restart",
        acknowledged.load(Ordering::SeqCst)
    );
    assert!(records > 0, "the load stored nothing");
    assert!(files > 0, "no upload finished");
}

async fn issue_privacy_officer(channel: &Channel, so: &str) -> String {
    AdminClient::new(channel.clone())
        .issue_token(req(
            so,
            pb::IssueTokenRequest {
                principal_id: "crash-privacy".into(),
                roles: vec!["privacy-officer".into()],
                ttl_seconds: 3600,
                scope_subject_id: String::new(),
                justification: "crash harness".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token
}

/// Stores records of three fields, over a few subjects, until stopped.
async fn writer(
    channel: Channel,
    officer: String,
    ledger: Ledger,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    tag: String,
) {
    let mut client = VaultClient::new(channel);
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let phone = format!("06-{tag}-{i}");
        let note = format!("note-{tag}-{i}");
        let result = client
            .put_record(req(
                &officer,
                pb::PutRecordRequest {
                    context: nuisance_ctx(),
                    subject_id: format!("REL-C{}", i % 7),
                    fields: vec![
                        text("phone", "contact", &phone),
                        text("email", "contact", &format!("{tag}-{i}@example.nl")),
                        text("note", "contact", &note),
                    ],
                    labels: Default::default(),
                },
            ))
            .await;
        match result {
            Ok(resp) => {
                acknowledged.fetch_add(1, Ordering::SeqCst);
                ledger.lock().unwrap().insert(
                    resp.into_inner().record_id,
                    Known {
                        phone,
                        note,
                        pending: None,
                    },
                );
            }
            // The server is gone: this write was never acknowledged.
            Err(_) => return,
        }
    }
}

/// Uploads evidence files of up to four segments, each to a new record, until stopped.
async fn uploader(
    channel: Channel,
    officer: String,
    uploads: Uploads,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client = VaultClient::new(channel);
    while !stop.load(Ordering::SeqCst) {
        let seed: u64 = rng.r#gen();
        let size = rng.gen_range(1..4 * SEGMENT_SIZE as u64);
        let chunk = 50_000u64;
        let data = (0..size.div_ceil(chunk)).map(move |i| pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::Data(
                file_bytes(seed, i * chunk, (size - i * chunk).min(chunk) as usize).into(),
            )),
        });
        let messages = std::iter::once(evidence_start(
            nuisance_ctx(),
            &format!("REL-E{}", seed % 3),
            "",
            "clip",
            "video/mp4",
            "camera.mp4",
        ))
        .chain(data)
        .chain(std::iter::once(evidence_end(size)));
        match client
            .put_evidence(req(&officer, tokio_stream::iter(messages)))
            .await
        {
            Ok(resp) => {
                acknowledged.fetch_add(1, Ordering::SeqCst);
                uploads
                    .lock()
                    .unwrap()
                    .insert(resp.into_inner().evidence_id, (seed, size));
            }
            // Not acknowledged: the server is gone, or the upload was refused (a rekey
            // replaced its subject key meanwhile); uploads go on until the kill.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Rectifies the `note` of known records until stopped.
async fn rectifier(
    channel: Channel,
    officer: String,
    ledger: Ledger,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    tag: String,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client = VaultClient::new(channel);
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let pick = {
            let ledger = ledger.lock().unwrap();
            if ledger.is_empty() {
                None
            } else {
                let n = rng.gen_range(0..ledger.len());
                ledger.keys().nth(n).cloned()
            }
        };
        let Some(id) = pick else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        i += 1;
        let note = format!("rectified-{tag}-{i}");
        if let Some(k) = ledger.lock().unwrap().get_mut(&id) {
            k.pending = Some(note.clone());
        }
        let result = client
            .update_record(req(
                &officer,
                pb::UpdateRecordRequest {
                    context: nuisance_ctx(),
                    record_id: id.clone(),
                    fields: vec![text("note", "contact", &note)],
                },
            ))
            .await;
        if result.is_err() {
            // In flight at the kill: either value may be stored.
            return;
        }
        acknowledged.fetch_add(1, Ordering::SeqCst);
        if let Some(k) = ledger.lock().unwrap().get_mut(&id) {
            k.note = note;
            k.pending = None;
        }
    }
}

/// Rotates the purpose key (which starts a rewrap), rekeys, and sweeps retention.
async fn key_work(
    channel: Channel,
    so: String,
    privacy: String,
    stop: Arc<AtomicBool>,
    cycle: u64,
) {
    let mut admin = AdminClient::new(channel);
    let mut round = cycle;
    while !stop.load(Ordering::SeqCst) {
        let result = match round % 3 {
            0 => admin
                .rotate_key(req(
                    &so,
                    pb::RotateKeyRequest {
                        purpose: "nuisance".into(),
                        algorithm: if round.is_multiple_of(2) {
                            "xchacha20-poly1305".into()
                        } else {
                            "aes-256-gcm".into()
                        },
                        justification: "crash harness".into(),
                    },
                ))
                .await
                .map(drop),
            1 => match admin
                .rekey(req(
                    &so,
                    pb::KeyJobRequest {
                        purpose: "nuisance".into(),
                        justification: "crash harness".into(),
                    },
                ))
                .await
            {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(_)) => {}
                            Ok(None) => break Ok(()),
                            Err(e) => break Err(e),
                        }
                    }
                }
                Err(e) => Err(e),
            },
            _ => admin
                .sweep_retention(req(&privacy, pb::SweepRetentionRequest { dry_run: false }))
                .await
                .map(drop),
        };
        if result.is_err() && stop.load(Ordering::SeqCst) {
            return;
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The checks after a restart.
async fn verify(
    channel: &Channel,
    officer: &str,
    so: &str,
    ledger: &Ledger,
    uploads: &Uploads,
    dir: &Path,
) {
    let known: Vec<(String, Known)> = ledger
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut client = VaultClient::new(channel.clone());
    let mut landed = Vec::new();
    for (id, k) in &known {
        let resp = client
            .get_record(req(
                officer,
                pb::GetRecordRequest {
                    context: nuisance_ctx(),
                    record_id: id.clone(),
                    fields: vec![],
                },
            ))
            .await
            .unwrap_or_else(|s| panic!("acknowledged record {id} lost: {s:?}"))
            .into_inner();
        let value = |name: &str| {
            field(&resp, name)
                .map(|f| text_of(f).to_owned())
                .unwrap_or_else(|| panic!("record {id} lost field {name}"))
        };
        assert_eq!(value("phone"), k.phone, "record {id}");
        let note = value("note");
        if note == k.note {
        } else if k.pending.as_deref() == Some(note.as_str()) {
            landed.push((id.clone(), note));
        } else {
            panic!(
                "record {id}: note {note:?}, expected {:?} or {:?}",
                k.note, k.pending
            );
        }
    }
    {
        // What is stored now is what the next round expects.
        let mut ledger = ledger.lock().unwrap();
        for (id, k) in ledger.iter_mut() {
            k.pending = None;
            if let Some((_, note)) = landed.iter().find(|(i, _)| i == id) {
                k.note = note.clone();
            }
        }
    }
    let files: Vec<(String, (u64, u64))> = uploads
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    for (id, (seed, size)) in files {
        let mut stream = client
            .get_evidence(req(
                officer,
                pb::GetEvidenceRequest {
                    context: nuisance_ctx(),
                    evidence_id: id.clone(),
                    range: None,
                    export: false,
                },
            ))
            .await
            .unwrap_or_else(|s| panic!("acknowledged evidence {id} lost: {s:?}"))
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(msg) = stream
            .message()
            .await
            .unwrap_or_else(|s| panic!("acknowledged evidence {id} damaged: {s:?}"))
        {
            if let Some(pb::evidence_data::Part::Data(d)) = msg.part {
                bytes.extend_from_slice(&d);
            }
        }
        assert!(
            bytes == file_bytes(seed, 0, size as usize),
            "evidence {id} reads back other bytes"
        );
    }
    let mut admin = AdminClient::new(channel.clone());
    let audit = admin
        .verify_audit(req(so, pb::VerifyAuditRequest { expect_head: None }))
        .await
        .unwrap()
        .into_inner();
    assert!(audit.intact, "audit chain broken: {}", audit.problem);
    let report = admin
        .key_report(req(so, pb::KeyReportRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(report.sound, "key report unsound");
    let db = Connection::open(dir.join("kluis.db")).unwrap();
    let half: i64 = db
        .query_row(
            "SELECT count(*) FROM records r
             WHERE (SELECT count(*) FROM fields f WHERE f.record_id = r.id) != 3
             AND NOT EXISTS (SELECT 1 FROM evidence e WHERE e.record_id = r.id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(half, 0, "a record is stored without all its fields");
    let orphans: i64 = db
        .query_row(
            "SELECT count(*) FROM fields f JOIN records r ON r.id = f.record_id
             WHERE NOT EXISTS (SELECT 1 FROM subject_keys k WHERE k.subject = r.subject
                               AND k.purpose = r.purpose AND k.generation = f.key_gen)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0, "a field is sealed under a missing subject key");
    let keyless: i64 = db
        .query_row(
            "SELECT count(*) FROM records r WHERE NOT EXISTS (
                SELECT 1 FROM subject_keys k WHERE k.subject = r.subject AND k.purpose = r.purpose)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(keyless, 0, "a subject's records have no subject key");
    // Every record stored is on the trail, allowed: a write's entry commits before the write
    // (the trail's file first), so a kill between the two leaves an entry without its record,
    // never a record without its entry.
    let unaudited = records_off_the_trail(&dir.join("kluis.db"));
    assert!(
        unaudited.is_empty(),
        "records stored without an allowed entry naming them: {unaudited:?}"
    );
    // An upload the kill cut off was discarded at start, with its segment file; every file
    // left is named by a finished upload's rows.
    let unfinished: i64 = db
        .query_row(
            "SELECT count(*) FROM evidence WHERE complete <> 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unfinished, 0, "an unfinished upload survived the restart");
    let named: Vec<String> = db
        .prepare(
            "SELECT DISTINCT evidence_id FROM evidence_segments WHERE at IS NOT NULL
             ORDER BY evidence_id",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        segment_files(&dir.join("kluis.db")),
        named,
        "segment files not named by any row, or rows naming no file"
    );
    let stale: i64 = db
        .query_row(
            "SELECT count(*) FROM evidence_segments s JOIN evidence e ON e.id = s.evidence_id
             JOIN records r ON r.id = e.record_id
             WHERE NOT EXISTS (SELECT 1 FROM subject_keys k WHERE k.subject = r.subject
                               AND k.purpose = r.purpose AND k.generation = s.key_gen)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stale, 0, "a segment is sealed under a missing subject key");
}
