//! Evidence files over gRPC: round trips at the segment boundaries and at 256 MiB, range reads,
//! tampering with the stored segments, denial before the first byte, interrupted uploads, the
//! guard, rekey, erasure and export.

use kluis::{crypto::stream::SEGMENT_SIZE, domain::Role, pb};
use rusqlite::{Connection, params};
use tonic::Code;

use crate::common::*;

const SEG: u64 = SEGMENT_SIZE as u64;

fn officer(server: &TestServer) -> String {
    server.token(Role::NuisanceOfficer).to_owned()
}

fn start(subject: &str, field: &str) -> pb::EvidenceChunk {
    evidence_start(
        nuisance_ctx(),
        subject,
        "",
        field,
        "video/mp4",
        "hallway.mp4",
    )
}

/// `text` in UTF-16, big- or little-endian, without a byte order mark.
fn utf16(text: &str, big_endian: bool) -> Vec<u8> {
    text.encode_utf16()
        .flat_map(|u| {
            if big_endian {
                u.to_be_bytes()
            } else {
                u.to_le_bytes()
            }
        })
        .collect()
}

fn db(server: &TestServer) -> Connection {
    Connection::open(server.db_path()).unwrap()
}

fn count(server: &TestServer, sql: &str) -> i64 {
    db(server).query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn files_round_trip_at_every_segment_boundary() {
    let server = TestServer::start().await;
    let token = officer(&server);
    for (seed, size) in [(1, 0), (2, 1), (3, SEG), (4, SEG + 1), (5, 3 * SEG + 17)] {
        // Chunks that do not line up with segments.
        let put = upload(&server, &token, start("REL-EV", "clip"), seed, size, 40_000)
            .await
            .unwrap();
        assert_eq!(put.size, size);
        assert_eq!(put.sha256, file_sha256(seed, size), "size {size}");
        let (info, bytes) = download(&server, &token, nuisance_ctx(), &put.evidence_id, None)
            .await
            .unwrap();
        assert_eq!(bytes, file_bytes(seed, 0, size as usize), "size {size}");
        assert_eq!(
            (info.size, info.offset, info.length),
            (size, 0, size),
            "size {size}"
        );
        assert_eq!(info.sha256, put.sha256);
        assert_eq!(info.file_name, "hallway.mp4");
        assert_eq!(info.media_type, "video/mp4");
    }
    // Listed as evidence, with media type and size and never the content; the digest is sealed
    // with the file name, so a listing (which decrypts nothing) does not carry it.
    let mut client = server.client().await;
    let list = client
        .list_records(req(
            &token,
            pb::ListRecordsRequest {
                context: nuisance_ctx(),
                subject_id: "REL-EV".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.records.len(), 5);
    let field = list
        .records
        .iter()
        .map(|r| &r.fields[0])
        .find(|f| f.size == 3 * SEG + 17)
        .unwrap();
    assert_eq!(field.size, 3 * SEG + 17);
    let meta = field.evidence.as_ref().unwrap();
    assert_eq!(meta.media_type, "video/mp4");
    assert_eq!(meta.sha256, "");
    // Nothing of the file name, content or digest lies in the database in clear: whoever holds
    // the file cannot confirm that a known recording is there.
    let raw = store_file_bytes(&server.db_path());
    assert!(!raw.windows(11).any(|w| w == b"hallway.mp4"));
    let digest = file_sha256(5, 3 * SEG + 17);
    assert!(!raw.windows(64).any(|w| w == digest.as_bytes()));
    let digest_bytes = hex::decode(&digest).unwrap();
    assert!(!raw.windows(32).any(|w| w == digest_bytes.as_slice()));
    let sample = file_bytes(5, SEG, 64);
    assert!(!raw.windows(64).any(|w| w == sample.as_slice()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_file_round_trips_and_a_range_in_the_middle_is_exact() {
    let server = TestServer::start().await;
    let token = officer(&server);
    let size = 256 * 1024 * 1024;
    let put = upload(
        &server,
        &token,
        start("REL-BIG", "doorbell"),
        9,
        size,
        256 * 1024,
    )
    .await
    .unwrap();
    assert_eq!(put.size, size);
    assert_eq!(put.sha256, file_sha256(9, size));
    // The whole file: check the digest of what came back.
    let (_, bytes) = download(&server, &token, nuisance_ctx(), &put.evidence_id, None)
        .await
        .unwrap();
    assert_eq!(bytes.len() as u64, size);
    {
        use sha2::Digest;
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), put.sha256);
    }
    drop(bytes);
    // Seek into the middle: across a segment boundary, not aligned at either end.
    let (offset, length) = (100 * 1024 * 1024 + 12_345, 3 * SEG + 7);
    let (info, bytes) = download(
        &server,
        &token,
        nuisance_ctx(),
        &put.evidence_id,
        Some((offset, length)),
    )
    .await
    .unwrap();
    assert_eq!((info.offset, info.length), (offset, length));
    assert_eq!(bytes, file_bytes(9, offset, length as usize));
    // To the end (length 0), and a range past the end is refused.
    let (_, tail) = download(
        &server,
        &token,
        nuisance_ctx(),
        &put.evidence_id,
        Some((size - 5, 0)),
    )
    .await
    .unwrap();
    assert_eq!(tail, file_bytes(9, size - 5, 5));
    let status = download(
        &server,
        &token,
        nuisance_ctx(),
        &put.evidence_id,
        Some((size - 5, 6)),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("range.length"), "{status:?}");
    server.stop().await;
}

/// Uploads a file of four segments and returns its id.
async fn four_segments(server: &TestServer, subject: &str, seed: u64) -> String {
    upload(
        server,
        &officer(server),
        start(subject, "clip"),
        seed,
        4 * SEG - 10,
        65_536,
    )
    .await
    .unwrap()
    .evidence_id
}

async fn read_fails_with_data_loss(server: &TestServer, id: &str, range: Option<(u64, u64)>) {
    let status = download(server, &officer(server), nuisance_ctx(), id, range)
        .await
        .err()
        .unwrap_or_else(|| panic!("tampered evidence read back (range {range:?})"));
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
}

#[tokio::test]
async fn tampered_segments_fail_with_data_loss_also_in_a_range_read() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for seed in 11..=23 {
        ids.push(four_segments(&server, "REL-T", seed).await);
    }
    let [a, b, c, d, e, f, g, h, i, j, k, l, m] = ids.try_into().unwrap();
    let path = server.db_path();
    assert_eq!(
        segment_files(&path).len(),
        13,
        "each upload's segments in a file of its own"
    );
    let conn = db(&server);
    // Flip one bit of segment 1 of `a`, in its file.
    let mut flipped = sealed_segment(&path, &a, 1);
    flipped[100] ^= 1;
    overwrite_segment(&path, &a, 1, &flipped);
    // Swap segments 1 and 2 of `b`.
    conn.execute_batch(&format!(
        "UPDATE evidence_segments SET idx = 99 WHERE evidence_id = '{b}' AND idx = 1;
         UPDATE evidence_segments SET idx = 1 WHERE evidence_id = '{b}' AND idx = 2;
         UPDATE evidence_segments SET idx = 2 WHERE evidence_id = '{b}' AND idx = 99;"
    ))
    .unwrap();
    // Drop segment 2 of `c`.
    conn.execute(
        "DELETE FROM evidence_segments WHERE evidence_id = ?1 AND idx = 2",
        [&c],
    )
    .unwrap();
    // Truncate `d`: drop its last segment and shrink its size to match.
    conn.execute(
        "DELETE FROM evidence_segments WHERE evidence_id = ?1 AND idx = 3",
        [&d],
    )
    .unwrap();
    conn.execute(
        "UPDATE evidence SET size = ?2 WHERE id = ?1",
        params![d, (3 * SEG) as i64],
    )
    .unwrap();
    // Move segment 0 of `a` into `e`'s file.
    overwrite_segment(&path, &e, 0, &sealed_segment(&path, &a, 0));
    // A segment held in its row (as a rekey or a restore leaves it), one bit flipped.
    let mut flipped = sealed_segment(&path, &f, 1);
    flipped[100] ^= 1;
    conn.execute(
        "UPDATE evidence_segments SET sealed = ?2, at = NULL, len = NULL
         WHERE evidence_id = ?1 AND idx = 1",
        params![f, flipped],
    )
    .unwrap();
    // The file of `g` deleted, that of `h` cut short.
    let files = evidence_dir(&path);
    std::fs::remove_file(files.join(&g)).unwrap();
    let cut = std::fs::OpenOptions::new()
        .write(true)
        .open(files.join(&h))
        .unwrap();
    cut.set_len(2 * SEG).unwrap();
    drop(cut);
    // Segment 1 of `i` pointed at the bytes of its segment 2; segment 1 of `j` made longer.
    conn.execute_batch(&format!(
        "UPDATE evidence_segments SET at = (SELECT at FROM evidence_segments
             WHERE evidence_id = '{i}' AND idx = 2) WHERE evidence_id = '{i}' AND idx = 1;
         UPDATE evidence_segments SET len = len + 16 WHERE evidence_id = '{j}' AND idx = 1;"
    ))
    .unwrap();
    // Segment 1 of `k` without a length, that of `l` before the file's start; the file of `m`
    // a link to that of `a`.
    conn.execute_batch(&format!(
        "UPDATE evidence_segments SET len = NULL WHERE evidence_id = '{k}' AND idx = 1;
         UPDATE evidence_segments SET at = -1 WHERE evidence_id = '{l}' AND idx = 1;"
    ))
    .unwrap();
    std::fs::remove_file(files.join(&m)).unwrap();
    std::os::unix::fs::symlink(files.join(&a), files.join(&m)).unwrap();
    drop(conn);

    for id in [&f, &g, &h, &i, &j, &k, &l, &m] {
        read_fails_with_data_loss(&server, id, None).await;
        read_fails_with_data_loss(&server, id, Some((SEG + 5, 10))).await;
    }
    read_fails_with_data_loss(&server, &a, None).await;
    read_fails_with_data_loss(&server, &a, Some((SEG + 5, 10))).await;
    read_fails_with_data_loss(&server, &b, None).await;
    read_fails_with_data_loss(&server, &b, Some((2 * SEG, 1))).await;
    read_fails_with_data_loss(&server, &c, None).await;
    read_fails_with_data_loss(&server, &c, Some((2 * SEG + 1, 1))).await;
    read_fails_with_data_loss(&server, &d, None).await;
    // A range read at the start of the cut-off file still notices the missing end.
    read_fails_with_data_loss(&server, &d, Some((0, 100))).await;
    read_fails_with_data_loss(&server, &e, None).await;
    read_fails_with_data_loss(&server, &e, Some((10, 10))).await;
    // The untouched parts of `a` still read: damage is found, not spread.
    let (_, bytes) = download(
        &server,
        &officer(&server),
        nuisance_ctx(),
        &a,
        Some((2 * SEG, 100)),
    )
    .await
    .unwrap();
    assert_eq!(bytes, file_bytes(11, 2 * SEG, 100));
    // `store verify` names the files that are missing, shorter than their rows say or not
    // files, and rows that name no place kluis writes.
    let bad = bad_rows(&server).await;
    for id in [&g, &h, &k, &l, &m] {
        assert!(
            bad.iter()
                .any(|r| r.kind == "evidence" && r.id == *id && r.problem.contains(" file")),
            "{id}: {bad:?}"
        );
    }
    server.stop().await;
}

/// Uploads broken off at the same moment leave no segment file behind: each goes with its
/// rows, whatever the others' discards do meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_broken_off_together_leave_no_file() {
    let server = TestServer::start().await;
    let path = server.db_path();
    let (mut calls, mut senders) = (Vec::new(), Vec::new());
    for n in 0..6u64 {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::EvidenceChunk>(4);
        let mut client = server.client().await;
        let token = officer(&server);
        calls.push(tokio::spawn(async move {
            client
                .put_evidence(req(&token, tokio_stream::wrappers::ReceiverStream::new(rx)))
                .await
        }));
        tx.send(start(&format!("REL-X{n}"), "clip")).await.unwrap();
        for i in 0..20u64 {
            tx.send(pb::EvidenceChunk {
                part: Some(pb::evidence_chunk::Part::Data(
                    file_bytes(40 + n, i * SEG, SEGMENT_SIZE).into(),
                )),
            })
            .await
            .unwrap();
        }
        senders.push(tx);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while segment_files(&path).len() < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "not every upload stored a batch"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for call in &calls {
        call.abort();
    }
    drop(senders);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !segment_files(&path).is_empty() || count(&server, "SELECT count(*) FROM evidence") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {:?}",
            segment_files(&path)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_denied_caller_gets_no_byte_and_the_denial_is_audited() {
    let server = TestServer::start().await;
    let id = four_segments(&server, "REL-D", 21).await;
    for role in [
        Role::CustomerService,
        Role::MaintenancePlanner,
        Role::Analyst,
    ] {
        let mut client = server.client().await;
        let status = client
            .get_evidence(req(
                server.token(role),
                pb::GetEvidenceRequest {
                    context: nuisance_ctx(),
                    evidence_id: id.clone(),
                    range: None,
                    export: false,
                },
            ))
            .await
            .err()
            .unwrap_or_else(|| panic!("{role} got a stream"));
        assert_eq!(status.code(), Code::PermissionDenied, "{role}");
    }
    // A range past the end tells a denied caller nothing about the size: the policy answers first.
    let status = download(
        &server,
        server.token(Role::CustomerService),
        nuisance_ctx(),
        &id,
        Some((u64::MAX, 1)),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Nor may anyone without credentials, or add evidence without a right to write it.
    let status = download(&server, "nonsense", nuisance_ctx(), &id, None)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = upload_bytes(
        &server,
        server.token(Role::CustomerService),
        start("REL-D", "other"),
        b"abc",
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    let entries = audit_entries(&server);
    assert!(entries.iter().any(|e| e["action"] == "evidence-read"
        && e["decision"] == "deny"
        && e["target"] == id.as_str()));
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "evidence-upload" && e["decision"] == "deny")
    );
    assert_eq!(count(&server, "SELECT count(*) FROM evidence"), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_leaves_nothing_behind() {
    let server = TestServer::start().await;
    let (tx, call) = open_upload(&server).await;
    tx.send(start("REL-I", "clip")).await.unwrap();
    send_segments(&tx, 31, 0..40).await;
    // Wait until segments are stored, then cut the connection off mid-upload.
    a_segment_stored(&server).await;
    assert_eq!(
        count(&server, "SELECT count(*) FROM evidence WHERE complete = 1"),
        0,
        "an unfinished upload is not readable"
    );
    // While it runs it is listed by nobody, and it is no damage: an export, store verify and a
    // rekey go through it.
    let listed = list_records(&server, &officer(&server), nuisance_ctx(), "REL-I")
        .await
        .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    let po = server.token(Role::PrivacyOfficer).to_owned();
    let lines = export(
        &server,
        &po,
        ctx("nuisance", "SAR-8", "subject access request"),
        "REL-I",
        false,
    )
    .await
    .unwrap();
    assert!(
        !lines.iter().any(|l| l.to_string().contains("hallway")),
        "{lines:?}"
    );
    let bad = bad_rows(&server).await;
    assert!(bad.is_empty(), "{bad:?}");
    rekey(&server, "nuisance").await.unwrap();
    call.abort();
    drop(tx);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while count(&server, "SELECT count(*) FROM evidence_segments") > 0
        || count(&server, "SELECT count(*) FROM evidence") > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "partial segments were not cleaned up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The record the upload created went with it, and the file its segments went to.
    assert_eq!(count(&server, "SELECT count(*) FROM records"), 0);
    assert_eq!(segment_files(&server.db_path()), Vec::<String>::new());

    // An upload a crash left unfinished (its row as kluis began it, some segments, and no
    // `finish` nor discard: the process died) is discarded when the server starts.
    let id = {
        use kluis::{
            domain::{AccessContext, Category, FieldName, SubjectId},
            vault::{
                evidence::{EvidenceStart, EvidenceTarget},
                tokens::BearerToken,
            },
        };
        let vault = std::sync::Arc::clone(&server.vault);
        let token = server.token(Role::NuisanceOfficer).to_owned();
        tokio::task::spawn_blocking(move || {
            let principal = vault.authenticate(&BearerToken::new(token)).unwrap();
            let ctx = AccessContext::parse(
                "context",
                "nuisance",
                "N-2026-0042",
                "complaint",
                "app",
                false,
                vault.channels(),
            )
            .unwrap();
            let mut upload = vault
                .begin_evidence(
                    &principal,
                    &ctx,
                    EvidenceStart {
                        target: EvidenceTarget::Subject(SubjectId::parse("s", "REL-I").unwrap()),
                        name: FieldName::parse("field", "doorbell").unwrap(),
                        category: Category::NuisanceEvidence,
                        media_type: "video/mp4".into(),
                        file_name: "crash.mp4".into(),
                    },
                )
                .unwrap();
            // Enough segments that some batches are stored.
            upload.write(&vec![7u8; 40 * 65_536]).unwrap();
            // The process dies here: nothing finishes or discards it.
            std::mem::forget(upload);
        })
        .await
        .unwrap();
        let id: String = Connection::open(server.db_path())
            .unwrap()
            .query_row("SELECT id FROM evidence WHERE complete = 0", [], |r| {
                r.get(0)
            })
            .unwrap();
        id
    };
    // The write's last batch is stored on a thread of its own: it lands meanwhile.
    a_segment_stored(&server).await;
    let server = server.restart_with(|_| {}).await;
    // Start-up discards it before it serves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while count(&server, "SELECT count(*) FROM evidence_segments") > 0
        || !segment_files(&server.db_path()).is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not discarded at start-up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let status = download(&server, &officer(&server), nuisance_ctx(), &id, None)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn bad_uploads_are_refused_with_the_field_named_and_nothing_stored() {
    let server = TestServer::start_with_limits(kluis::config::RawLimits {
        max_evidence_bytes: Some(3 * SEG),
        ..Default::default()
    })
    .await;
    let token = officer(&server);
    let cases: Vec<(pb::EvidenceChunk, Vec<u8>, &str)> = vec![
        (
            pb::EvidenceChunk {
                part: Some(pb::evidence_chunk::Part::Start(pb::EvidenceStart {
                    context: nuisance_ctx(),
                    subject_id: "REL-G".into(),
                    field: "scan".into(),
                    category: "identity".into(),
                    media_type: "image/jpeg".into(),
                    ..Default::default()
                })),
            },
            b"jpeg".to_vec(),
            "start.category",
        ),
        (
            evidence_start(
                nuisance_ctx(),
                "REL-G",
                "",
                "scan",
                "image/jpeg",
                "paspoort-jansen.jpg",
            ),
            b"jpeg".to_vec(),
            "start.file_name",
        ),
        (
            evidence_start(nuisance_ctx(), "REL-G", "", "scan", "jpeg", "a.jpg"),
            b"jpeg".to_vec(),
            "start.media_type",
        ),
        (
            evidence_start(nuisance_ctx(), "", "", "scan", "image/jpeg", "a.jpg"),
            b"jpeg".to_vec(),
            "start.subject_id",
        ),
        (
            evidence_start(nuisance_ctx(), "REL-G", "", "Bad Name", "image/jpeg", ""),
            b"jpeg".to_vec(),
            "start.field",
        ),
        // A letter that holds a BSN, straddling two chunks is no way around the guard.
        (
            evidence_start(
                nuisance_ctx(),
                "REL-G",
                "",
                "letter",
                "text/plain",
                "brief.txt",
            ),
            [vec![b'a'; 70_000], b"BSN: 111222333 zie bijlage".to_vec()].concat(),
            "data",
        ),
        // Larger than the configured limit.
        (
            start("REL-G", "film"),
            vec![0u8; (3 * SEG + 1) as usize],
            "data",
        ),
    ];
    // A field named for a BSN holds no file, whatever the file says: a binary value in such a
    // field is read as the number after a label from any word on (`zie: l23456782`).
    let named: Vec<_> = [
        "bsn",
        "klant.bsn",
        "bsn_nummer",
        "burgerservicenummer",
        "sofinummer",
        "citizen_service_number",
    ]
    .into_iter()
    .flat_map(|field| {
        [b"zie: l23456782".to_vec(), b"onbekend".to_vec()]
            .map(|bytes| (start("REL-G", field), bytes, "start.field"))
    })
    .collect();
    let cases = cases.into_iter().chain(named);
    for (first, bytes, field) in cases {
        let status = upload_bytes(&server, &token, first, &bytes)
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted a bad upload ({field})"));
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().contains(&format!("`{field}`")),
            "{field}: {}",
            status.message()
        );
        assert!(!status.message().contains("111222333"));
    }
    // A stream that does not start with `start`, or has two.
    let mut client = server.client().await;
    let data = pb::EvidenceChunk {
        part: Some(pb::evidence_chunk::Part::Data(vec![1, 2, 3].into())),
    };
    for messages in [
        vec![data.clone()],
        vec![start("REL-G", "x"), data.clone(), start("REL-G", "y")],
        vec![],
    ] {
        let status = client
            .put_evidence(req(&token, tokio_stream::iter(messages)))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("`start`"), "{status:?}");
    }
    // A message that holds nothing is named as such.
    let empty = pb::EvidenceChunk { part: None };
    let status = client
        .put_evidence(req(
            &token,
            tokio_stream::iter(vec![start("REL-G", "x"), empty, data.clone()]),
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("`part`"), "{status:?}");
    // A chunk above 1 MiB, and a message above the 16 MiB any message may hold (which the
    // server cannot read), are named by the limit to send the file in.
    for size in [1024 * 1024 + 1, 16 * 1024 * 1024 + 1] {
        let big = pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::Data(vec![7; size].into())),
        };
        let status = client
            .put_evidence(req(
                &token,
                tokio_stream::iter(vec![start("REL-G", "x"), data.clone(), big]),
            ))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::InvalidArgument, "{size}: {status:?}");
        assert!(
            status
                .message()
                .contains("`data`: a chunk holds at most 1048576 bytes"),
            "{size}: {status:?}"
        );
    }
    // Too large a first message is named for the `start` it should have been.
    let big = pb::EvidenceChunk {
        part: Some(pb::evidence_chunk::Part::Data(
            vec![7; 16 * 1024 * 1024 + 1].into(),
        )),
    };
    let status = client
        .put_evidence(req(&token, tokio_stream::iter(vec![big])))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("`start`"), "{status:?}");
    // Exactly at the limit is fine; the same field name twice is not.
    let put = upload(&server, &token, start("REL-G", "film"), 41, 3 * SEG, 65_536)
        .await
        .unwrap();
    let status = upload_bytes(
        &server,
        &token,
        evidence_start(nuisance_ctx(), "", &put.record_id, "film", "video/mp4", ""),
        b"again",
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(count(&server, "SELECT count(*) FROM evidence"), 1);
    assert_eq!(count(&server, "SELECT count(*) FROM records"), 1);
    assert_eq!(
        count(&server, "SELECT count(*) FROM evidence_segments"),
        3,
        "no segment of a refused upload is left"
    );
    assert_eq!(
        segment_files(&server.db_path()),
        std::slice::from_ref(&put.evidence_id)
    );
    server.stop().await;
}

/// A refused upload is gone when its refusal comes: "nothing was stored" holds at that moment,
/// and a client that sends the file again at once, into the same record and field, is not
/// turned away by what is left of the refused one.
#[tokio::test]
async fn a_refused_upload_has_left_nothing_when_its_refusal_comes() {
    let server = TestServer::start().await;
    let token = officer(&server);
    let first = upload(&server, &token, start("REL-R", "film"), 1, SEG, 65_536)
        .await
        .unwrap();
    let into =
        |field: &str| evidence_start(nuisance_ctx(), "", &first.record_id, field, "video/mp4", "");
    let data = |bytes: Vec<u8>| pb::EvidenceChunk {
        part: Some(pb::evidence_chunk::Part::Data(bytes.into())),
    };
    // Three segments' worth of file before the refusal, so that batches of it were stored.
    let size = 3 * SEG;
    let sent = |field: &str, last: Vec<pb::EvidenceChunk>| {
        std::iter::once(into(field))
            .chain(
                file_bytes(9, 0, size as usize)
                    .chunks(65_536)
                    .map(|c| data(c.to_vec())),
            )
            .chain(last)
            .collect::<Vec<_>>()
    };
    let refusals: Vec<(&str, Vec<pb::EvidenceChunk>)> = vec![
        (
            "a BSN after three segments",
            vec![data(b"BSN: 111222333".to_vec()), evidence_end(size + 14)],
        ),
        ("a second start", vec![start("REL-R", "other")]),
        ("a chunk above 1 MiB", vec![data(vec![0; 1024 * 1024 + 1])]),
        (
            "a message that holds nothing",
            vec![pb::EvidenceChunk { part: None }],
        ),
        ("no end", vec![]),
        ("an end of another size", vec![evidence_end(size + 1)]),
        (
            "a message after end",
            vec![evidence_end(size), data(b"more".to_vec())],
        ),
    ];
    let mut client = server.client().await;
    let mut stored = vec![first.evidence_id.clone()];
    for (round, (how, last)) in refusals.into_iter().enumerate() {
        let field = format!("clip{round}");
        let segments = count(&server, "SELECT count(*) FROM evidence_segments");
        let status = client
            .put_evidence(req(&token, tokio_stream::iter(sent(&field, last))))
            .await
            .err()
            .unwrap_or_else(|| panic!("{how}: accepted"));
        assert_eq!(status.code(), Code::InvalidArgument, "{how}: {status:?}");
        // At once, nothing of it is left: no row, no segment, no file, no record field.
        assert_eq!(
            count(&server, "SELECT count(*) FROM evidence"),
            stored.len() as i64,
            "{how}"
        );
        assert_eq!(
            count(&server, "SELECT count(*) FROM evidence_segments"),
            segments,
            "{how}"
        );
        let mut files = stored.clone();
        files.sort();
        assert_eq!(segment_files(&server.db_path()), files, "{how}");
        // The same file sent again at once, into the same field, is stored.
        let put = upload(&server, &token, into(&field), round as u64, size, 65_536)
            .await
            .unwrap_or_else(|s| panic!("{how}: sent again: {s:?}"));
        stored.push(put.evidence_id);
    }
    server.stop().await;
}

/// Bytes as the BSN/MRZ guard may meet them in a file: `text` in UTF-8, or in UTF-16 either
/// way, with or without a byte order mark, at an even or odd offset, between noise and ended
/// by a NUL, placed so that it straddles the boundary of two 64 KiB messages.
fn hidden_in_a_file(text: &str) -> Vec<(&'static str, Vec<u8>)> {
    let le = |t: &str| {
        t.encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect::<Vec<u8>>()
    };
    let be = |t: &str| {
        t.encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect::<Vec<u8>>()
    };
    let encodings: Vec<(&'static str, Vec<u8>, usize)> = vec![
        ("UTF-8", text.as_bytes().to_vec(), 0),
        (
            "UTF-16LE with BOM",
            [vec![0xFF, 0xFE], le(text)].concat(),
            0,
        ),
        ("UTF-16BE without BOM", be(text), 0),
        ("UTF-16LE without BOM at an odd offset", le(text), 1),
    ];
    encodings
        .into_iter()
        .map(|(how, bytes, odd)| {
            let at = 65_536 - 9 + odd;
            let file = [
                file_bytes(31, 0, at - 2),
                vec![0, 0],
                bytes,
                vec![0, 0],
                file_bytes(32, 0, 70_000),
            ]
            .concat();
            (how, file)
        })
        .collect()
}

/// The guard reads every upload, whatever media type it declares: a BSN or an MRZ in UTF-8 or
/// UTF-16 anywhere in a photo, a PDF, a CSV file or plain bytes is refused (`data`, the value
/// not repeated, nothing stored), across message boundaries, and so are the same bytes as a
/// binary field value. The twin with digits that fail the eleven-test is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_holding_a_bsn_or_mrz_is_refused_whatever_media_type_it_declares() {
    let server = TestServer::start().await;
    let token = officer(&server);
    let mrz = "P<NLDDE<BRUIJN<<WILLEKE<LISELOTTE<<<<<<<<<<<\n\
               SPECI20142NLD6503101F2403096999999990<<<<<84";
    let media = [
        "application/octet-stream",
        "image/svg+xml",
        "application/csv",
        "application/pdf",
        "image/jpeg",
        "text/plain",
    ];
    let mut client = server.client().await;
    let mut refused = 0;
    for (i, media_type) in media.iter().enumerate() {
        let subject = format!("REL-EVG{i}");
        for (secret, twin) in [
            ("bsn 111222333", "bsn 123456789"),
            (mrz, "P<NLD DE BRUIJN WILLEKE LISELOTTE"),
        ] {
            for ((how, bytes), (_, twin_bytes)) in hidden_in_a_file(secret)
                .into_iter()
                .zip(hidden_in_a_file(twin))
            {
                let start =
                    || evidence_start(nuisance_ctx(), &subject, "", "file", media_type, "bijlage");
                let status = upload_in_chunks(&server, &token, start(), &bytes, 65_536)
                    .await
                    .err()
                    .unwrap_or_else(|| panic!("{secret:?} in {how} as {media_type} accepted"));
                assert_eq!(status.code(), Code::InvalidArgument, "{how}: {status:?}");
                assert!(status.message().contains("`data`"), "{}", status.message());
                for echo in ["111222333", "SPECI", "BRUIJN"] {
                    assert!(!status.message().contains(echo));
                }
                refused += 1;
                // The same bytes as a binary value of a record.
                let status = client
                    .put_record(req(
                        &token,
                        pb::PutRecordRequest {
                            context: nuisance_ctx(),
                            subject_id: subject.clone(),
                            fields: vec![binary("file", "nuisance-evidence", &bytes)],
                            labels: Default::default(),
                        },
                    ))
                    .await
                    .err()
                    .unwrap_or_else(|| panic!("{secret:?} in {how} as a binary value accepted"));
                assert_eq!(status.code(), Code::InvalidArgument);
                assert!(status.message().contains("fields[0].binary"));
                // The twin is stored, whole.
                let field = format!("twin{refused}");
                let put = upload_in_chunks(
                    &server,
                    &token,
                    evidence_start(nuisance_ctx(), &subject, "", &field, media_type, "bijlage"),
                    &twin_bytes,
                    65_536,
                )
                .await
                .unwrap_or_else(|s| panic!("twin of {secret:?} in {how} refused: {s:?}"));
                assert_eq!(put.size, twin_bytes.len() as u64);
            }
        }
    }
    assert_eq!(refused, media.len() * 2 * 4);
    // Only the twins were kept: one record each, no segment of a refused upload.
    assert_eq!(
        count(&server, "SELECT count(*) FROM evidence"),
        refused as i64
    );
    assert_eq!(
        count(&server, "SELECT count(*) FROM records"),
        refused as i64
    );
    server.stop().await;
}

/// The guard passes over most of a binary file without decoding it (it counts digits and MRZ
/// characters between the bytes that break any text), so a BSN written with digits that take
/// more than one byte must still be read: full-width digits (three bytes each in UTF-8),
/// Arabic-Indic ones (two) and mathematical ones (four), in noise, straddling the boundary of
/// two messages at several offsets. Each is refused; its twin with digits that fail the
/// eleven-test is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bsn_in_wide_digits_amid_noise_is_refused() {
    let server = TestServer::start().await;
    let token = officer(&server);
    let forms: [(&str, u32); 3] = [
        ("full-width", 0xFF10),
        ("Arabic-Indic", 0x0660),
        ("mathematical", 0x1D7CE),
    ];
    let write = |digits: &str, zero: u32| -> String {
        let wide: String = digits
            .chars()
            .map(|d| char::from_u32(zero + d.to_digit(10).unwrap()).unwrap())
            .collect();
        format!("bsn {wide}")
    };
    let mut stored = 0;
    for (form, zero) in forms {
        for before in [3, 10, 17, 29] {
            for (digits, refused) in [("111222333", true), ("123456789", false)] {
                let text = write(digits, zero);
                let at = 65_536 - before;
                let file = [
                    file_bytes(41, 0, at - 1),
                    vec![0xFF],
                    text.as_bytes().to_vec(),
                    vec![0xFF],
                    file_bytes(42, 0, 70_000),
                ]
                .concat();
                let field = format!("f{stored}");
                let start =
                    evidence_start(nuisance_ctx(), "REL-EVW", "", &field, "image/jpeg", "foto");
                let answer = upload_in_chunks(&server, &token, start, &file, 65_536).await;
                match (answer, refused) {
                    (Err(status), true) => {
                        assert_eq!(status.code(), Code::InvalidArgument, "{form}: {status:?}");
                        assert!(status.message().contains("`data`"), "{}", status.message());
                    }
                    (Ok(receipt), false) => {
                        assert_eq!(receipt.size, file.len() as u64);
                        stored += 1;
                    }
                    (answer, _) => {
                        panic!("{form} {digits} {before} bytes before the boundary: {answer:?}")
                    }
                }
            }
        }
    }
    assert_eq!(stored, 3 * 4);
    assert_eq!(
        count(&server, "SELECT count(*) FROM evidence"),
        i64::from(stored)
    );
    server.stop().await;
}

/// A BSN written in UTF-16 runs straight into bytes that are not text, as when a program
/// writes a string into a binary file with no end mark: the next two bytes read as a letter of
/// some script (Yi, CJK, Hangul, Cyrillic; after a combining mark too). That letter does not
/// make the number a code: each file is refused, in either byte order, at several offsets
/// from a message boundary, and nothing is stored. The twins, digits that fail the
/// eleven-test, are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bsn_in_utf16_glued_to_binary_data_is_refused() {
    let server = TestServer::start().await;
    let token = officer(&server);
    let mut stored = 0;
    for (i, glued) in [
        "\u{A0B8}",
        "\u{20E2}\u{A0B8}",
        "\u{4E00}",
        "\u{AC00}",
        "\u{0416}",
    ]
    .into_iter()
    .enumerate()
    {
        for big_endian in [false, true] {
            for before in [5, 20] {
                for (digits, refused) in [("111222333", true), ("123456789", false)] {
                    let at = 65_536 - before;
                    let file = [
                        file_bytes(51, 0, at - 1),
                        vec![0xFF],
                        utf16(&format!("bsn {digits}{glued}"), big_endian),
                        file_bytes(52 + i as u64, 0, 70_000),
                    ]
                    .concat();
                    let field = format!("f{i}{big_endian}{before}{digits}");
                    let start =
                        evidence_start(nuisance_ctx(), "REL-EVU", "", &field, "image/jpeg", "foto");
                    let answer = upload_in_chunks(&server, &token, start, &file, 65_536).await;
                    match (answer, refused) {
                        (Err(status), true) => {
                            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                            assert!(status.message().contains("`data`"), "{}", status.message());
                            assert!(!status.message().contains("111"), "{}", status.message());
                        }
                        (Ok(_), false) => stored += 1,
                        (answer, _) => panic!(
                            "{digits}{glued:?} big endian {big_endian}, {before} bytes before \
                             the boundary: {answer:?}"
                        ),
                    }
                }
            }
        }
    }
    assert_eq!(stored, 5 * 2 * 2);
    assert_eq!(
        count(&server, "SELECT count(*) FROM evidence"),
        i64::from(stored)
    );
    server.stop().await;
}

/// File names that say they are an identity document are refused however they are spelled:
/// look-alike letters, digits for letters, spaces between the letters, `ß`, and the names in
/// French and German. Their ordinary neighbours are stored.
#[tokio::test]
async fn identity_document_file_names_are_refused_however_they_are_spelled() {
    let server = TestServer::start().await;
    let token = officer(&server);
    let start =
        |name: &str| evidence_start(nuisance_ctx(), "REL-EVF", "", "scan", "image/jpeg", name);
    for name in [
        "p\u{0430}spoort.jpg",
        "pasp0ort.jpg",
        "p a s p o o r t.jpg",
        "Pa\u{00DF}port.jpg",
        "passeport.jpg",
        "Personalausweis.jpg",
        "vreemdelingendocument.pdf",
        "carte d'identit\u{00E9}.png",
        "ID-bewijs.pdf",
    ] {
        let status = upload_bytes(&server, &token, start(name), b"jpeg")
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted {name:?}"));
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(status.message().contains("`start.file_name`"), "{status:?}");
        assert!(!status.message().contains(name));
    }
    assert_eq!(count(&server, "SELECT count(*) FROM evidence"), 0);
    for (i, name) in [
        "pasfoto.jpg",
        "paspoortfoto-beleid.pdf",
        "transport.jpg",
        "sport 5.jpg",
    ]
    .into_iter()
    .enumerate()
    {
        let first = evidence_start(
            nuisance_ctx(),
            "REL-EVF",
            "",
            &format!("scan{i}"),
            "image/jpeg",
            name,
        );
        upload_bytes(&server, &token, first, b"jpeg")
            .await
            .unwrap_or_else(|s| panic!("refused {name:?}: {s:?}"));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_reencrypts_segments_and_the_file_still_reads() {
    let server = TestServer::start().await;
    let token = officer(&server);
    let put = upload(
        &server,
        &token,
        start("REL-K", "clip"),
        51,
        2 * SEG + 3,
        50_000,
    )
    .await
    .unwrap();
    let path = server.db_path();
    let before: Vec<Vec<u8>> = (0..3)
        .map(|i| sealed_segment(&path, &put.evidence_id, i))
        .collect();
    assert_eq!(segment_files(&path), std::slice::from_ref(&put.evidence_id));
    let vault = server.vault.clone();
    tokio::task::spawn_blocking(move || {
        vault
            .rekey(kluis::domain::Purpose::Nuisance, |_| true)
            .unwrap()
    })
    .await
    .unwrap();
    let conn = db(&server);
    // The resealed segments are held by their rows, and the file that held the old ones is gone.
    let gens: Vec<(u32, Vec<u8>)> = conn
        .prepare("SELECT key_gen, sealed FROM evidence_segments WHERE at IS NULL ORDER BY idx")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(gens.len(), 3);
    assert_eq!(segment_files(&path), Vec::<String>::new());
    for ((generation, sealed), old) in gens.iter().zip(&before) {
        assert_eq!(*generation, 2);
        assert_ne!(sealed, old, "re-encrypted, not copied");
    }
    let old_keys: i64 = conn
        .query_row(
            "SELECT count(*) FROM subject_keys WHERE subject = 'REL-K' AND generation = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old_keys, 0, "the old subject key is gone");
    drop(conn);
    let (info, bytes) = download(&server, &token, nuisance_ctx(), &put.evidence_id, None)
        .await
        .unwrap();
    assert_eq!(bytes, file_bytes(51, 0, (2 * SEG + 3) as usize));
    assert_eq!(info.file_name, "hallway.mp4");
    server.stop().await;
}

#[tokio::test]
async fn erasure_and_record_deletion_take_the_evidence_with_them() {
    let server = TestServer::start().await;
    let token = officer(&server);
    let kept = upload(
        &server,
        &token,
        start("REL-KEEP", "clip"),
        61,
        SEG + 1,
        65_536,
    )
    .await
    .unwrap();
    let gone = upload(
        &server,
        &token,
        start("REL-GONE", "clip"),
        62,
        SEG + 1,
        65_536,
    )
    .await
    .unwrap();
    let deleted = upload(&server, &token, start("REL-KEEP", "photo"), 63, 10, 65_536)
        .await
        .unwrap();
    // A record with evidence is deleted only by who may delete the evidence too.
    let mut client = server.client().await;
    client
        .delete_record(req(
            &token,
            pb::DeleteRecordRequest {
                context: nuisance_ctx(),
                record_id: deleted.record_id.clone(),
            },
        ))
        .await
        .unwrap();
    let mut admin = server.admin().await;
    admin
        .erase_subject(req(
            server.token(Role::PrivacyOfficer),
            pb::EraseSubjectRequest {
                subject_id: "REL-GONE".into(),
                justification: "ER-2026-11".into(),
            },
        ))
        .await
        .unwrap();
    for id in [&gone.evidence_id, &deleted.evidence_id] {
        let status = download(&server, &token, nuisance_ctx(), id, None)
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::NotFound);
    }
    assert_eq!(
        count(
            &server,
            &format!(
                "SELECT count(*) FROM evidence_segments WHERE evidence_id = '{}'",
                gone.evidence_id
            )
        ),
        0
    );
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM subject_keys WHERE subject = 'REL-GONE'"
        ),
        0,
        "crypto-shredded"
    );
    // The files of the erased and the deleted record went with their rows.
    assert_eq!(
        segment_files(&server.db_path()),
        std::slice::from_ref(&kept.evidence_id)
    );
    let (_, bytes) = download(&server, &token, nuisance_ctx(), &kept.evidence_id, None)
        .await
        .unwrap();
    assert_eq!(bytes, file_bytes(61, 0, (SEG + 1) as usize));
    server.stop().await;
}

/// A file is stored only when its upload ends with `end` and `end` matches what arrived. A
/// client that cancels the call after whole messages (HTTP/2 ends such a request body as if it
/// were complete), one that ends the call without `end`, and one whose `end` names another size
/// or digest all leave nothing stored: no file, no segment, no record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_upload_ended_by_a_matching_end_is_stored() {
    let server = TestServer::start().await;
    let token = officer(&server);
    let data = |seed: u64, n: u64| pb::EvidenceChunk {
        part: Some(pb::evidence_chunk::Part::Data(
            file_bytes(seed, 0, n as usize).into(),
        )),
    };
    let nothing_left = |server: &TestServer| {
        count(server, "SELECT count(*) FROM evidence")
            + count(server, "SELECT count(*) FROM evidence_segments")
            + count(server, "SELECT count(*) FROM records")
            + i64::try_from(segment_files(&server.db_path()).len()).unwrap()
    };
    let wait_for_nothing_left = |server: &TestServer, what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while nothing_left(server) > 0 {
            assert!(std::time::Instant::now() < deadline, "{what}: left behind");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };

    // Cancelled after whole messages, with segments already stored.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::EvidenceChunk>(4);
    let mut client = server.client().await;
    let call = tokio::spawn({
        let token = token.clone();
        async move {
            client
                .put_evidence(req(&token, tokio_stream::wrappers::ReceiverStream::new(rx)))
                .await
        }
    });
    tx.send(start("REL-END", "cancelled")).await.unwrap();
    for _ in 0..40 {
        tx.send(data(41, SEG)).await.unwrap();
    }
    a_segment_stored(&server).await;
    call.abort(); // the client cancels the call: RST_STREAM(CANCEL) after a whole message
    drop(tx);
    wait_for_nothing_left(&server, "a cancelled upload");

    // Ended without `end`; with an `end` of another size; with another digest; with a digest
    // that is not one: refused, naming the field, nothing stored.
    let mut client = server.client().await;
    let end = |size: u64, sha256: &str| pb::EvidenceChunk {
        part: Some(pb::evidence_chunk::Part::End(pb::EvidenceEnd {
            size,
            sha256: sha256.into(),
        })),
    };
    let right = file_sha256(42, 5000);
    for (what, messages, field) in [
        (
            "no end",
            vec![start("REL-END", "a"), data(42, 5000)],
            "`end`",
        ),
        (
            "another size",
            vec![start("REL-END", "b"), data(42, 5000), end(4999, "")],
            "`end.size`",
        ),
        (
            "nothing sent but an end of more",
            vec![start("REL-END", "c"), end(1, "")],
            "`end.size`",
        ),
        (
            "another digest",
            vec![
                start("REL-END", "d"),
                data(42, 5000),
                end(5000, &file_sha256(43, 5000)),
            ],
            "`end.sha256`",
        ),
        (
            "not a digest",
            vec![
                start("REL-END", "e"),
                data(42, 5000),
                end(5000, &right.to_uppercase()),
            ],
            "`end.sha256`",
        ),
        (
            "data after the end",
            vec![
                start("REL-END", "f"),
                data(42, 5000),
                end(5000, &right),
                data(42, 10),
            ],
            "`end`",
        ),
        (
            "an end of nothing, then the file",
            vec![start("REL-END", "g"), end(0, ""), data(42, 5000)],
            "`end`",
        ),
        (
            "a second end",
            vec![
                start("REL-END", "h"),
                data(42, 5000),
                end(5000, ""),
                end(5000, ""),
            ],
            "`end`",
        ),
    ] {
        let status = client
            .put_evidence(req(&token, tokio_stream::iter(messages)))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains(field) && status.message().contains("nothing"),
            "{what}: {}",
            status.message()
        );
        wait_for_nothing_left(&server, what);
    }

    // Ended rightly, but the client never closes its side: after a wait, nothing is stored.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::EvidenceChunk>(4);
    for message in [start("REL-END", "open"), data(42, 5000), end(5000, &right)] {
        tx.send(message).await.unwrap();
    }
    let status = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        client.put_evidence(req(&token, tokio_stream::wrappers::ReceiverStream::new(rx))),
    )
    .await
    .expect("an upload left open after `end` was waited for past its limit")
    .expect_err("an upload left open after `end` was stored");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("`end`") && status.message().contains("nothing"),
        "{}",
        status.message()
    );
    drop(tx);
    wait_for_nothing_left(&server, "left open after `end`");

    // The same file ended rightly, with and without its digest: stored and read back whole.
    for sha256 in [right.as_str(), ""] {
        let put = client
            .put_evidence(req(
                &token,
                tokio_stream::iter(vec![
                    start("REL-END", "f"),
                    data(42, 5000),
                    end(5000, sha256),
                ]),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((put.size, put.sha256.as_str()), (5000, right.as_str()));
        let (_, bytes) = download(&server, &token, nuisance_ctx(), &put.evidence_id, None)
            .await
            .unwrap();
        assert_eq!(bytes, file_bytes(42, 0, 5000));
    }
    server.stop().await;
}

/// Three of the guard's five readings of an upload (UTF-16 little-endian from an odd byte,
/// big-endian from either) are read on a helper thread one chunk behind the call. A BSN only
/// those readings find, in the chunk whose sealed segments fill a batch, keeps that batch from
/// being stored: no segment lands while the call waits for its next message, and the upload is
/// refused with nothing stored. Chunks of two segments, so the batch holds bytes of the chunk
/// that filled it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bsn_read_one_chunk_behind_keeps_its_batch_from_being_stored() {
    let server = TestServer::start().await;
    let token = officer(&server);
    let chunk = 2 * SEGMENT_SIZE;
    for (i, (how, odd, big_endian)) in [
        ("UTF-16LE from an odd byte", 1, false),
        ("UTF-16BE from an even byte", 0, true),
        ("UTF-16BE from an odd byte", 1, true),
    ]
    .into_iter()
    .enumerate()
    {
        // Eight clean chunks seal fifteen segments and buffer the sixteenth; the ninth seals
        // it and the seventeenth, its own first half, which holds the BSN. Its groups are
        // joined by no-break spaces, whose second byte (`A0`) after a NUL breaks any UTF-8:
        // the readings on the call's thread (UTF-8, UTF-16LE from an even byte) find nothing.
        // Prose after it gives the helper's readings text enough to read the number within the
        // chunk, as they read what gathers every 16 Ki units: the finding is made while the
        // chunk is read, not at the end of the file.
        let text = format!(
            "bsn 111\u{A0}222\u{A0}333 {}",
            "de buurman belt aan. ".repeat(1400)
        );
        let ninth = [
            file_bytes(60, 0, 1000 + odd),
            vec![0, 0],
            utf16(&text, big_endian),
            file_bytes(61, 0, chunk),
        ]
        .concat();
        assert!(1000 + odd + 2 + 2 * text.chars().count() < SEGMENT_SIZE);
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::EvidenceChunk>(4);
        let mut client = server.client().await;
        let call_token = token.clone();
        let call = tokio::spawn(async move {
            client
                .put_evidence(req(
                    &call_token,
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                ))
                .await
        });
        let data = |bytes: &[u8]| pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::Data(bytes.to_vec().into())),
        };
        tx.send(start(&format!("REL-EVH{i}"), "clip"))
            .await
            .unwrap();
        for k in 0..8u64 {
            let clean = file_bytes(62 + i as u64, k * chunk as u64, chunk);
            tx.send(data(&clean)).await.unwrap();
        }
        tx.send(data(&ninth[..chunk])).await.unwrap();
        // The ninth chunk is read, hashed and sealed while the call waits for the tenth: its
        // batch is refused, not stored. (Stored, it would land within milliseconds.)
        for _ in 0..25 {
            tokio::time::sleep(std::time::Duration::from_millis(40)).await;
            assert_eq!(
                count(&server, "SELECT count(*) FROM evidence_segments"),
                0,
                "{how}: a batch holding the BSN was stored"
            );
        }
        // The refusal may have ended the call already: `end` then finds it closed.
        let _ = tx.send(evidence_end(9 * chunk as u64)).await;
        drop(tx);
        let status = call
            .await
            .unwrap()
            .err()
            .unwrap_or_else(|| panic!("{how}: accepted"));
        assert_eq!(status.code(), Code::InvalidArgument, "{how}: {status:?}");
        assert!(status.message().contains("`data`"), "{}", status.message());
        assert!(!status.message().contains("111"), "{}", status.message());
        assert_eq!(
            count(&server, "SELECT count(*) FROM evidence_segments"),
            0,
            "{how}"
        );
        assert_eq!(count(&server, "SELECT count(*) FROM evidence"), 0, "{how}");
    }
    assert!(segment_files(&server.db_path()).is_empty());
    server.stop().await;
}

/// Sends the segments `range` of the file `file_bytes(seed, …)`, one message each.
async fn send_segments(
    tx: &tokio::sync::mpsc::Sender<pb::EvidenceChunk>,
    seed: u64,
    range: std::ops::Range<u64>,
) {
    for i in range {
        let data = file_bytes(seed, i * SEG, SEGMENT_SIZE);
        tx.send(pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::Data(data.into())),
        })
        .await
        .unwrap();
    }
}

/// Waits (30 s at most) until a segment of some upload is stored.
async fn a_segment_stored(server: &TestServer) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while count(server, "SELECT count(*) FROM evidence_segments") == 0 {
        assert!(std::time::Instant::now() < deadline, "no segment stored");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An upload by the nuisance officer, running: the sender of its messages, and the call.
async fn open_upload(
    server: &TestServer,
) -> (
    tokio::sync::mpsc::Sender<pb::EvidenceChunk>,
    tokio::task::JoinHandle<Result<tonic::Response<pb::PutEvidenceResponse>, tonic::Status>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::EvidenceChunk>(4);
    let mut client = server.client().await;
    let token = officer(server);
    let call = tokio::spawn(async move {
        client
            .put_evidence(req(&token, tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
    });
    (tx, call)
}

/// An upload whose segment file is taken while it runs is not finished: its rows name bytes
/// that are gone, so `end` is answered DATA_LOSS and nothing becomes readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_file_went_is_not_finished() {
    let server = TestServer::start().await;
    let (tx, call) = open_upload(&server).await;
    tx.send(start("REL-EVF", "clip")).await.unwrap();
    let chunks = 20u64;
    send_segments(&tx, 70, 0..chunks).await;
    a_segment_stored(&server).await;
    let files = segment_files(&server.db_path());
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::remove_file(evidence_dir(&server.db_path()).join(&files[0])).unwrap();
    tx.send(evidence_end(chunks * SEG)).await.unwrap();
    drop(tx);
    let status = call.await.unwrap().expect_err("finished without its file");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert_eq!(
        count(&server, "SELECT count(*) FROM evidence WHERE complete = 1"),
        0
    );
    server.stop().await;
}

/// A batch that cannot be stored fails the upload: its outcome, taken from the thread that
/// stores the upload's batches, reaches the client, and nothing of the upload is left. Here
/// the upload's row is deleted from the database file while it runs, as a rival that
/// discarded it would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_be_stored_fails_the_upload() {
    let server = TestServer::start().await;
    let (tx, call) = open_upload(&server).await;
    tx.send(start("REL-EVS", "clip")).await.unwrap();
    // A batch is sixteen segments: the seventeenth sends the first to be stored.
    send_segments(&tx, 80, 0..20).await;
    a_segment_stored(&server).await;
    db(&server)
        .execute("DELETE FROM evidence WHERE complete = 0", [])
        .unwrap();
    // The next batch fails, and the call ends when its outcome is taken, at the flush after
    // it: before `end`, which is never sent (the request stream stays open meanwhile).
    for i in 20..80u64 {
        let data = file_bytes(80, i * SEG, SEGMENT_SIZE);
        let message = pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::Data(data.into())),
        };
        if tx.send(message).await.is_err() {
            break;
        }
    }
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), call)
        .await
        .expect("the upload went on after a batch failed")
        .unwrap()
        .expect_err("stored without its row");
    drop(tx);
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("nothing was stored"),
        "{}",
        status.message()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while count(&server, "SELECT count(*) FROM evidence_segments") > 0
        || !segment_files(&server.db_path()).is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload left segments"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;
}

/// A chunk that holds a BSN is refused as soon as it is read: the client hears it while it
/// waits, not only when it sends its next message (the upload's idle limit is 30 s). Also when
/// only the guard's helper thread reads it: UTF-16 big-endian, its groups joined by no-break
/// spaces (after a NUL, `A0` breaks UTF-8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_comes_while_the_client_waits() {
    let server = TestServer::start().await;
    let prose = "De buurman belt aan. ".repeat(3000);
    for (i, (how, bytes)) in [
        (
            "UTF-8",
            format!("Geachte heer, uw BSN: 111222333 staat in het dossier. {prose}").into_bytes(),
        ),
        (
            "UTF-16BE",
            utf16(&format!("bsn 111\u{A0}222\u{A0}333 {prose}"), true),
        ),
        // A short chunk: read at the end of its write, not once 16 KiB have gathered.
        (
            "UTF-8, a short chunk",
            format!(
                "hello BSN: 111222333 en meer. {}",
                "De buurman belt aan. ".repeat(30)
            )
            .into_bytes(),
        ),
        (
            "UTF-16BE, a short chunk",
            utf16(
                &format!("bsn 111\u{A0}222\u{A0}333 {}", "Hij belt aan. ".repeat(40)),
                true,
            ),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let (tx, call) = open_upload(&server).await;
        tx.send(start(&format!("REL-EVW{i}"), "letter"))
            .await
            .unwrap();
        // A clean chunk first: the guard's helper reads from the second on.
        for data in [file_bytes(90, 0, 65_536), bytes] {
            tx.send(pb::EvidenceChunk {
                part: Some(pb::evidence_chunk::Part::Data(data.into())),
            })
            .await
            .unwrap();
        }
        // The request stream stays open, and nothing more is sent.
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), call)
            .await
            .unwrap_or_else(|_| panic!("{how}: no answer while the client waited"))
            .unwrap()
            .expect_err("a BSN was accepted");
        assert_eq!(status.code(), Code::InvalidArgument, "{how}: {status:?}");
        assert!(status.message().contains("`data`"), "{}", status.message());
        drop(tx);
    }
    assert_eq!(count(&server, "SELECT count(*) FROM evidence"), 0);
    server.stop().await;
}

/// Cuts `bytes` into data messages whose sizes cycle through `sizes`.
fn cut(bytes: &[u8], sizes: &[usize]) -> Vec<pb::EvidenceChunk> {
    let mut out = Vec::new();
    let (mut at, mut i) = (0, 0);
    while at < bytes.len() {
        let n = sizes[i % sizes.len()].min(bytes.len() - at);
        out.push(pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::Data(
                bytes[at..at + n].to_vec().into(),
            )),
        });
        (at, i) = (at + n, i + 1);
    }
    out
}

/// The server joins short data messages that have already come into one write: an upload sent
/// in tiny messages, mixed with large ones, is stored exactly as sent, and a BSN spread over
/// such messages is refused with nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_in_tiny_messages_is_stored_as_sent_and_read_as_one() {
    let server = TestServer::start().await;
    let token = officer(&server);
    let prose = "De buurman belt aan en zegt dat hij het niet meer pikt. ".repeat(600);
    let clean = [
        file_bytes(70, 0, 20_000),
        prose.clone().into_bytes(),
        file_bytes(71, 0, 150_000),
        prose.clone().into_bytes(),
    ]
    .concat();
    let mut hidden = clean.clone();
    let at = 20_000 + prose.len() / 2;
    hidden.splice(at..at, b" uw BSN: 111222333 staat hier. ".iter().copied());
    let mut stored = 0;
    for (i, sizes) in [
        &[1][..],
        &[7, 1, 3],
        &[1, 1, 70_000, 2, 65_536, 5],
        &[65_535, 1],
    ]
    .into_iter()
    .enumerate()
    {
        for (twin, bytes) in [("clean", &clean), ("hidden", &hidden)] {
            let messages: Vec<pb::EvidenceChunk> =
                std::iter::once(start(&format!("REL-EVT{i}"), &format!("clip-{twin}")))
                    .chain(cut(bytes, sizes))
                    .chain(std::iter::once(evidence_end(bytes.len() as u64)))
                    .collect();
            let mut client = server.client().await;
            let answer = client
                .put_evidence(req(&token, tokio_stream::iter(messages)))
                .await
                .map(tonic::Response::into_inner);
            if twin == "clean" {
                let receipt = answer.unwrap_or_else(|s| panic!("{sizes:?}: {s:?}"));
                stored += 1;
                assert_eq!(receipt.size, bytes.len() as u64, "{sizes:?}");
                {
                    use sha2::Digest;
                    let sha = hex::encode(sha2::Sha256::digest(bytes));
                    assert_eq!(receipt.sha256, sha, "{sizes:?}");
                }
                let (_, read) =
                    download(&server, &token, nuisance_ctx(), &receipt.evidence_id, None)
                        .await
                        .unwrap();
                assert!(read == *bytes, "{sizes:?}: the file read back differs");
            } else {
                let status = answer.expect_err("a BSN in tiny messages was stored");
                assert_eq!(
                    status.code(),
                    Code::InvalidArgument,
                    "{sizes:?}: {status:?}"
                );
                assert!(status.message().contains("`data`"), "{}", status.message());
            }
            assert_eq!(count(&server, "SELECT count(*) FROM evidence"), stored);
        }
    }
    server.stop().await;
}
