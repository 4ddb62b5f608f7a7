//! Long calls are judged again while they send: an export of the trail or of a subject, a
//! backup and an evidence download end once the caller's token is revoked, or once the policy
//! in force or the subject's facts (a mandate revoked) no longer allow what they send, instead
//! of sending on until they are complete. Each test opens the call through a client with a
//! small flow-control window, so that the server has sent only a little when the change is
//! made, reads a first message, makes the change, and then reads on.

use std::time::Duration;

use kluis::{
    domain::{PrincipalId, Role, SubjectId},
    pb,
    vault::tokens::{IssuedToken, TokenSpec},
};
use tonic::{Code, Streaming, transport::Endpoint};

use crate::common::{
    SCOPED_SUBJECT, TestServer, audit_entries, ctx, evidence_start, nuisance_ctx, private_tempdir,
    put, req, text, upload,
};

/// A token of `principal` for `role`, issued through the vault (its id is needed to revoke it).
fn issue(server: &TestServer, principal: &str, role: Role, scope: Option<&str>) -> IssuedToken {
    server
        .vault
        .bootstrap_token(&TokenSpec {
            principal: PrincipalId::parse("p", principal).unwrap(),
            roles: vec![role],
            ttl_secs: 3600,
            scope_subject: scope.map(|s| SubjectId::parse("s", s).unwrap()),
        })
        .unwrap()
}

fn secret(token: &IssuedToken) -> String {
    token.token.expose_secret().to_owned()
}

/// A client that reads slowly: a window of 16 KiB, so that the server can send little ahead.
async fn slow_reader(server: &TestServer) -> tonic::transport::Channel {
    Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .unwrap()
}

/// Revokes token `id` as another security officer.
async fn revoke(server: &TestServer, id: &str) {
    server
        .admin()
        .await
        .revoke_token(req(
            server.token(Role::SecurityOfficer),
            pb::RevokeTokenRequest {
                token_id: id.into(),
                justification: "left the organisation".into(),
            },
        ))
        .await
        .unwrap();
}

/// Reads the rest of `stream`: how many messages came and how it ended. Fails when it ends as
/// if it were complete, or runs on for 20 s.
async fn rest<T>(stream: &mut Streaming<T>) -> (usize, tonic::Status) {
    let mut n = 0;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => n += 1,
                Ok(None) => panic!("the stream went on to its end after {n} more messages"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream still runs 20 s later");
    (n, ended)
}

/// The entry that says a call of `principal` (entry `action`) was cut off when its token was
/// revoked.
fn cut_off(server: &TestServer, action: &str, principal: &str) -> serde_json::Value {
    let entry = audit_entries(server)
        .into_iter()
        .find(|e| e["action"] == action && e["decision"] == "deny" && e["principal"] == principal)
        .unwrap_or_else(|| panic!("no entry says the {action} of {principal} was cut off"));
    assert!(
        entry["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("the call ended") && r.contains("revoked")),
        "{entry}"
    );
    entry
}

/// A file of 12 MiB for `SCOPED_SUBJECT`, uploaded by the nuisance officer: larger than what
/// a download or a backup holds ahead of a client (a few MiB).
async fn large_file(server: &TestServer) -> pb::PutEvidenceResponse {
    upload(
        server,
        server.token(Role::NuisanceOfficer),
        evidence_start(
            nuisance_ctx(),
            SCOPED_SUBJECT,
            "",
            "clip",
            "video/mp4",
            "stairwell.mp4",
        ),
        7,
        12 << 20,
        64 * 1024,
    )
    .await
    .unwrap()
}

/// Opens a download of `evidence_id` with `token` through a slow reader, and reads its `info`
/// and first piece of data.
async fn open_download(
    server: &TestServer,
    token: &str,
    evidence_id: &str,
) -> Streaming<pb::EvidenceData> {
    let mut client = pb::vault_client::VaultClient::new(slow_reader(server).await);
    let mut stream = client
        .get_evidence(req(
            token,
            pb::GetEvidenceRequest {
                context: nuisance_ctx(),
                evidence_id: evidence_id.into(),
                range: None,
                export: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        stream.message().await.unwrap().expect("info, then data");
    }
    stream
}

/// 64 KiB pieces of a 12 MiB file.
const PIECES: usize = 192;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evidence_download_ends_once_its_token_is_revoked() {
    let server = TestServer::start().await;
    let file = large_file(&server).await;
    let officer = issue(&server, "downloading-officer", Role::NuisanceOfficer, None);
    let mut stream = open_download(&server, &secret(&officer), &file.evidence_id).await;
    revoke(&server, &officer.id).await;
    let (more, status) = rest(&mut stream).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // What was ahead of the client when the token was revoked (the stream's queue, the
    // batch being sent, the window), not the file.
    assert!(
        more < PIECES / 2,
        "{more} of {PIECES} pieces after the revocation"
    );
    let entry = cut_off(&server, "evidence-read", "downloading-officer");
    assert_eq!(entry["target"], file.evidence_id.as_str());
    server.stop().await;
}

/// A policy reloaded mid-download that forbids the read ends it with PERMISSION_DENIED, and the
/// denial is on the trail, saying the download ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evidence_download_ends_once_the_policy_forbids_it() {
    use kluis::policy::DEFAULT_POLICIES;
    let tmp = private_tempdir();
    let policies = tmp.path().join("policies.cedar");
    std::fs::write(&policies, DEFAULT_POLICIES).unwrap();
    let server = TestServer::start_with_policies(vec![policies.clone()]).await;
    let file = large_file(&server).await;
    let mut stream = open_download(
        &server,
        server.token(Role::NuisanceOfficer),
        &file.evidence_id,
    )
    .await;
    std::fs::write(
        &policies,
        format!(
            "{DEFAULT_POLICIES}\n@id(\"no-nuisance-evidence\")\nforbid (principal in \
             Kluis::Role::\"nuisance-officer\", action == Kluis::Action::\"read\", resource) \
             when {{ resource.category == \"nuisance-evidence\" }};\n"
        ),
    )
    .unwrap();
    let reloaded = server
        .admin()
        .await
        .reload_policies(req(
            server.token(Role::PrivacyOfficer),
            pb::ReloadPoliciesRequest {},
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(reloaded.changed);
    let (more, status) = rest(&mut stream).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        more < PIECES / 2,
        "{more} of {PIECES} pieces after the reload"
    );
    let denied = audit_entries(&server)
        .into_iter()
        .find(|e| e["action"] == "evidence-read" && e["decision"] == "deny")
        .expect("the denial is on the trail");
    assert_eq!(denied["target"], file.evidence_id.as_str());
    assert!(
        denied["reason"].as_str().is_some_and(
            |r| r.starts_with("the download ended") && r.contains("no-nuisance-evidence")
        ),
        "{denied}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_ends_once_its_token_is_revoked() {
    let server = TestServer::start().await;
    large_file(&server).await;
    let officer = issue(&server, "backing-up-officer", Role::SecurityOfficer, None);
    let mut admin = pb::admin_client::AdminClient::new(slow_reader(&server).await);
    let mut stream = admin
        .backup(req(
            &secret(&officer),
            pb::BackupRequest {
                justification: "nightly".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first chunk");
    let size = first.size;
    assert!(size > 12 << 20, "the store holds the file: {size} bytes");
    revoke(&server, &officer.id).await;
    let (more, status) = rest(&mut stream).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // Chunks of 1 MiB: what was queued ahead of the client, not the snapshot.
    assert!(
        ((more + 1) as u64) << 20 < size,
        "{} of {size} bytes sent",
        (more + 1) << 20
    );
    cut_off(&server, "backup", "backing-up-officer");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_export_ends_once_its_token_is_revoked() {
    let server = TestServer::start().await;
    // A trail of some thousands of entries: each read of the head is one.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut admin = server.admin().await;
        let token = server.token(Role::PrivacyOfficer).to_owned();
        calls.spawn(async move {
            for _ in 0..300 {
                admin
                    .audit_head(req(&token, pb::AuditHeadRequest {}))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
    let officer = issue(&server, "exporting-officer", Role::SecurityOfficer, None);
    let mut admin = pb::admin_client::AdminClient::new(slow_reader(&server).await);
    let mut stream = admin
        .export_audit(req(
            &secret(&officer),
            pb::ExportAuditRequest {
                justification: "yearly review".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("a first entry");
    revoke(&server, &officer.id).await;
    let (more, status) = rest(&mut stream).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        more < 1_200,
        "{more} of about 2,400 entries after the revocation"
    );
    cut_off(&server, "audit-export", "exporting-officer");
    server.stop().await;
}

/// `n` records of 64 KiB of `SCOPED_SUBJECT` (contract purpose, identity category): a subject
/// export of them is far larger than a small window.
async fn large_records(server: &TestServer, n: usize) {
    for i in 0..n {
        put(
            server,
            Role::CustomerService,
            ctx("contract", "", ""),
            SCOPED_SUBJECT,
            vec![text(
                "name",
                "identity",
                &format!("{i} {}", "A".repeat(64 * 1024)),
            )],
        )
        .await;
    }
}

/// Opens a subject export of `SCOPED_SUBJECT` with `token` through a slow reader and reads its
/// header.
async fn open_export(server: &TestServer, token: &str) -> Streaming<pb::ExportLine> {
    let mut client = pb::vault_client::VaultClient::new(slow_reader(server).await);
    let mut stream = client
        .export_subject(req(
            token,
            pb::ExportSubjectRequest {
                portable: false,
                context: ctx("contract", "", "a copy for the subject"),
                subject_id: SCOPED_SUBJECT.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let header = stream.message().await.unwrap().expect("a header");
    assert!(header.json.contains("schema"), "{}", header.json);
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_export_ends_once_its_token_is_revoked() {
    let server = TestServer::start().await;
    large_records(&server, 40).await;
    let officer = issue(
        &server,
        "exporting-privacy-officer",
        Role::PrivacyOfficer,
        None,
    );
    let mut stream = open_export(&server, &secret(&officer)).await;
    revoke(&server, &officer.id).await;
    let (more, status) = rest(&mut stream).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(more < 20, "{more} of 40 records after the revocation");
    let entry = cut_off(&server, "export", "exporting-privacy-officer");
    assert_eq!(entry["subject"], SCOPED_SUBJECT);
    server.stop().await;
}

/// A representative's export ends once the mandate it exports under is revoked: the subject's
/// facts are decided on again before each record goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_representatives_export_ends_once_the_mandate_is_revoked() {
    let server = TestServer::start().await;
    large_records(&server, 40).await;
    let mut admin = server.admin().await;
    let mandate = admin
        .grant_mandate(req(
            server.token(Role::PrivacyOfficer),
            pb::GrantMandateRequest {
                subject_id: SCOPED_SUBJECT.into(),
                representative_id: "test-representative".into(),
                purposes: vec!["contract".into()],
                categories: vec!["identity".into()],
                valid_until: Some(prost_types::Timestamp {
                    seconds: kluis::domain::now_unix() + 30 * 86_400,
                    nanos: 0,
                }),
                justification: "signed volmacht".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut stream = open_export(&server, server.token(Role::Representative)).await;
    let line = stream.message().await.unwrap().expect("a first record");
    assert!(line.json.contains("\"complete\""), "under the mandate");
    admin
        .revoke_mandate(req(
            server.token(Role::PrivacyOfficer),
            pb::RevokeMandateRequest {
                mandate_id: mandate.mandate_id,
                justification: "revoked by letter".into(),
            },
        ))
        .await
        .unwrap();
    let (more, status) = rest(&mut stream).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(more < 20, "{more} of 40 records after the revocation");
    let denied = audit_entries(&server)
        .into_iter()
        .find(|e| e["action"] == "export" && e["decision"] == "deny")
        .expect("the denial is on the trail");
    assert_eq!(denied["principal"], "test-representative");
    assert!(
        denied["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("the export ended")),
        "{denied}"
    );
    server.stop().await;
}

/// An upload whose messages the test sends one by one: the sender, and the call's outcome.
async fn open_upload(
    server: &TestServer,
    token: &str,
    subject: &str,
) -> (
    tokio::sync::mpsc::Sender<pb::EvidenceChunk>,
    tokio::task::JoinHandle<Result<tonic::Response<pb::PutEvidenceResponse>, tonic::Status>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::EvidenceChunk>(1);
    let mut client = server.client().await;
    let token = token.to_owned();
    let call = tokio::spawn(async move {
        client
            .put_evidence(req(&token, tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
    });
    tx.send(evidence_start(
        nuisance_ctx(),
        subject,
        "",
        "clip",
        "video/mp4",
        "porch.mp4",
    ))
    .await
    .unwrap();
    (tx, call)
}

/// Piece `i` of 64 KiB of test file 11.
fn piece(i: u64) -> pb::EvidenceChunk {
    pb::EvidenceChunk {
        part: Some(pb::evidence_chunk::Part::Data(
            crate::common::file_bytes(11, i << 16, 1 << 16).into(),
        )),
    }
}

/// Evidence rows of `subject` in the store, finished or not.
fn stored_evidence(server: &TestServer) -> i64 {
    rusqlite::Connection::open(server.db_path())
        .unwrap()
        .query_row("SELECT count(*) FROM evidence", [], |r| r.get(0))
        .unwrap()
}

/// Waits (at most 10 s) until the upload's rows are gone from the store.
async fn nothing_stored(server: &TestServer) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stored_evidence(server) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the refused upload was not discarded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upload is judged again while it runs and always before it is stored: a token revoked
/// mid-upload cannot finish it, whether the client then sends its `end` at once or goes on
/// sending data; nothing is stored and the trail says the upload was not carried out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evidence_upload_ends_once_its_token_is_revoked() {
    let server = TestServer::start().await;
    for goes_on in [false, true] {
        let officer = issue(&server, "uploading-officer", Role::NuisanceOfficer, None);
        let (tx, call) = open_upload(&server, &secret(&officer), SCOPED_SUBJECT).await;
        let mut sent = 0;
        for _ in 0..8 {
            tx.send(piece(sent)).await.unwrap();
            sent += 1;
        }
        revoke(&server, &officer.id).await;
        if goes_on {
            // Data for a while after the revocation: refused within about a second.
            let until = std::time::Instant::now() + Duration::from_secs(3);
            while std::time::Instant::now() < until && tx.send(piece(sent)).await.is_ok() {
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = tx.send(crate::common::evidence_end(sent << 16)).await;
        drop(tx);
        let status = call
            .await
            .unwrap()
            .expect_err("a revoked token finished an upload");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        nothing_stored(&server).await;
    }
    let not_carried_out: Vec<_> = audit_entries(&server)
        .into_iter()
        .filter(|e| {
            e["action"] == "evidence-upload"
                && e["decision"] == "deny"
                && e["principal"] == "uploading-officer"
        })
        .collect();
    assert_eq!(
        not_carried_out.len(),
        2,
        "each refused upload is on the trail"
    );
    for entry in not_carried_out {
        assert!(
            entry["reason"].as_str().is_some_and(|r| r
                .starts_with("not carried out: the upload ended")
                && r.contains("revoked")),
            "{entry}"
        );
    }
    server.stop().await;
}

/// A policy reloaded mid-upload that forbids the write ends it with PERMISSION_DENIED, nothing
/// stored, and the trail says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evidence_upload_ends_once_the_policy_forbids_it() {
    use kluis::policy::DEFAULT_POLICIES;
    let tmp = private_tempdir();
    let policies = tmp.path().join("policies.cedar");
    std::fs::write(&policies, DEFAULT_POLICIES).unwrap();
    let server = TestServer::start_with_policies(vec![policies.clone()]).await;
    let (tx, call) = open_upload(&server, server.token(Role::NuisanceOfficer), "REL-0077").await;
    for i in 0..4 {
        tx.send(piece(i)).await.unwrap();
    }
    std::fs::write(
        &policies,
        format!(
            "{DEFAULT_POLICIES}\n@id(\"no-new-nuisance-evidence\")\nforbid (principal in \
             Kluis::Role::\"nuisance-officer\", action == Kluis::Action::\"write\", resource) \
             when {{ resource.category == \"nuisance-evidence\" }};\n"
        ),
    )
    .unwrap();
    let reloaded = server
        .admin()
        .await
        .reload_policies(req(
            server.token(Role::PrivacyOfficer),
            pb::ReloadPoliciesRequest {},
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(reloaded.changed);
    let _ = tx.send(crate::common::evidence_end(4 << 16)).await;
    drop(tx);
    let status = call
        .await
        .unwrap()
        .expect_err("a forbidden upload was stored");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    nothing_stored(&server).await;
    let entry = audit_entries(&server)
        .into_iter()
        .rev()
        .find(|e| e["action"] == "evidence-upload" && e["decision"] == "deny")
        .expect("the refusal is on the trail");
    assert!(
        entry["reason"].as_str().is_some_and(
            |r| r.contains("the upload ended") && r.contains("no-new-nuisance-evidence")
        ),
        "{entry}"
    );
    server.stop().await;
}

/// A subject erased while an export of it runs ends the export with NOT_FOUND, as a download of
/// an erased file ends: no line about the erased records (their ids, the names of their
/// fields) goes out after the erasure, and the export never ends as if complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_export_ends_once_the_subject_is_erased() {
    let server = TestServer::start().await;
    large_records(&server, 40).await;
    let mut stream = open_export(&server, server.token(Role::PrivacyOfficer)).await;
    let erased = server
        .admin()
        .await
        .erase_subject(req(
            server.token(Role::PrivacyOfficer),
            pb::EraseSubjectRequest {
                subject_id: SCOPED_SUBJECT.into(),
                justification: "ER-2026-7".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(erased.kept.is_empty(), "{erased:?}");
    let mut after = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(line)) => {
                after += 1;
                assert!(
                    !line.json.contains("changed while this export ran"),
                    "a line about an erased record went out: {}",
                    &line.json[..line.json.len().min(200)]
                );
            }
            Ok(None) => panic!("the export ended as if complete after the erasure"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("erased"), "{status:?}");
    assert!(after < 20, "{after} of 40 records after the erasure");
    server.stop().await;
}
