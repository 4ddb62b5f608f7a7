//! Key rotation over real gRPC: rotate and rewrap while clients read and write, destroy what
//! nothing depends on, rekey (also to another algorithm), change the root key, and survive a
//! SIGKILL in the middle of a rewrap and of a rekey.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kluis::{
    domain::{Category, FieldName, Principal, PrincipalId, Purpose, Role, SubjectId},
    keys::RootSecret,
    pb::{self, admin_client::AdminClient},
    vault::{NewField, Value},
};
use rusqlite::Connection;
use tonic::{Code, transport::Channel};
use zeroize::Zeroizing;

use crate::common::*;

fn value_of(i: usize) -> String {
    format!("06-{i:08}")
}

async fn store_many(server: &TestServer, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let v = value_of(i);
        let id = put(
            server,
            Role::NuisanceOfficer,
            nuisance_ctx(),
            &format!("REL-{i:05}"),
            vec![text("phone", "contact", &v)],
        )
        .await;
        out.push((id, v));
    }
    out
}

async fn keys_of(admin: &mut AdminClient<Channel>, token: &str, purpose: &str) -> pb::PurposeKeys {
    admin
        .list_keys(req(
            token,
            pb::ListKeysRequest {
                purpose: purpose.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .purposes
        .remove(0)
}

async fn run_job(
    admin: &mut AdminClient<Channel>,
    token: &str,
    purpose: &str,
    rekey: bool,
) -> pb::KeyJobProgress {
    let request = req(
        token,
        pb::KeyJobRequest {
            purpose: purpose.into(),
            justification: "test".into(),
        },
    );
    let mut stream = if rekey {
        admin.rekey(request).await
    } else {
        admin.rewrap(request).await
    }
    .unwrap()
    .into_inner();
    loop {
        let p = stream
            .message()
            .await
            .unwrap()
            .expect("the job ended without a result");
        if p.finished {
            return p;
        }
    }
}

async fn read_all(server: &TestServer, records: &[(String, String)]) {
    for (id, v) in records {
        let resp = get(
            server,
            server.token(Role::NuisanceOfficer),
            nuisance_ctx(),
            id,
        )
        .await
        .unwrap();
        assert_eq!(text_of(&resp.fields[0]), v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_keeps_every_record_readable_while_clients_read_and_write() {
    let server = TestServer::start().await;
    let records = store_many(&server, 60).await;
    let so = server.token(Role::SecurityOfficer).to_owned();
    let mut admin = server.admin().await;

    // Four clients read and write throughout the rotation and rewrap.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let records = records.clone();
        let stop = std::sync::Arc::clone(&stop);
        let token = server.token(Role::NuisanceOfficer).to_owned();
        let mut client = server.client().await;
        clients.push(tokio::spawn(async move {
            let mut written = Vec::new();
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 20 {
                let (id, v) = &records[(c * 13 + n) % records.len()];
                let resp = client
                    .get_record(req(
                        &token,
                        pb::GetRecordRequest {
                            context: nuisance_ctx(),
                            record_id: id.clone(),
                            fields: vec![],
                        },
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(text_of(&resp.fields[0]), v);
                let value = format!("written-{c}-{n}");
                let id = client
                    .put_record(req(
                        &token,
                        pb::PutRecordRequest {
                            context: nuisance_ctx(),
                            subject_id: format!("REL-W{c}-{n}"),
                            fields: vec![text("phone", "contact", &value)],
                            labels: Default::default(),
                        },
                    ))
                    .await
                    .unwrap()
                    .into_inner()
                    .record_id;
                written.push((id, value));
                n += 1;
            }
            written
        }));
    }

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
    run_job(&mut admin, &so, "nuisance", false).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = Vec::new();
    for c in clients {
        written.extend(c.await.unwrap());
    }
    // A rewrap after the clients stopped catches keys made under v1 just before the rotation.
    run_job(&mut admin, &so, "nuisance", false).await;

    let keys = keys_of(&mut admin, &so, "nuisance").await;
    assert_eq!(keys.active_version, 2);
    assert_eq!(keys.versions[0].state, "decrypt-only");
    assert_eq!(
        keys.versions[0].subject_keys, 0,
        "v1 wraps nothing after the rewrap"
    );
    assert_eq!(
        keys.versions[1].subject_keys as usize,
        records.len() + written.len()
    );
    read_all(&server, &records).await;
    read_all(&server, &written).await;
    // The rotation is on the audit trail.
    let entries = audit_entries(&server);
    let rotate = entries
        .iter()
        .find(|e| e["action"] == "key-rotate")
        .unwrap();
    assert_eq!(rotate["principal"], "test-security-officer");
    assert_eq!(rotate["roles"][0], "security-officer");
    assert_eq!(rotate["purpose"], "nuisance");
    assert_eq!(rotate["justification"], "yearly");
    assert_eq!(rotate["decision"], "allow");
    assert_eq!(
        rotate["policies"][0],
        "security-officer-manages-tokens-and-keys"
    );
    server.stop().await;
}

#[tokio::test]
async fn destroying_a_version_in_use_is_refused_and_an_unused_one_is_erased() {
    let server = TestServer::start().await;
    let records = store_many(&server, 5).await;
    let so_principal = Principal::new(
        PrincipalId::parse("p", "so").unwrap(),
        vec![Role::SecurityOfficer],
        None,
        "tok_so",
        i64::MAX,
    )
    .unwrap();
    // "Another node" holds the rewrap's lease, so that the rewrap this server's start resumes
    // in the background cannot move the keys after the rotation below (on a busy machine it
    // may run that late). Released before the rewrap further down. Should that rewrap hold the
    // lease already (it holds it while it runs, a moment), it is taken once the rewrap is done.
    let db = Connection::open(server.db_path()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server
        .vault
        .take_lease("rewrap:nuisance", "another-node", 600)
        .unwrap()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the rewrap's lease was not free within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Rotate in the core (no rewrap of its own) so v1 still wraps the five subject keys.
    server
        .vault
        .rotate_key(&so_principal, Purpose::Nuisance, None, "")
        .unwrap();
    let so = server.token(Role::SecurityOfficer).to_owned();
    let mut admin = server.admin().await;
    let schedule = |version, wait| {
        req(
            &so,
            pb::ScheduleKeyDestructionRequest {
                purpose: "nuisance".into(),
                version,
                wait_seconds: wait,
                justification: String::new(),
            },
        )
    };
    let status = admin
        .schedule_key_destruction(schedule(1, Some(0)))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("still wraps 5 subject keys"),
        "{}",
        status.message()
    );
    let status = admin
        .schedule_key_destruction(schedule(2, Some(0)))
        .await
        .err()
        .unwrap();
    assert!(
        status.message().contains("active version"),
        "{}",
        status.message()
    );
    // Data roles may not touch keys.
    let status = admin
        .rotate_key(req(
            server.token(Role::NuisanceOfficer),
            pb::RotateKeyRequest {
                purpose: "nuisance".into(),
                ..Default::default()
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);

    // The other node gone, the rewrap moves all five to v2.
    db.execute(
        "DELETE FROM leases WHERE name = 'rewrap:nuisance' AND holder = 'another-node'",
        [],
    )
    .unwrap();
    let done = run_job(&mut admin, &so, "nuisance", false).await;
    assert_eq!((done.keys_on_active, done.keys_total), (5, 5));
    // The default wait is a week: nothing is due yet; cancelling works.
    admin
        .schedule_key_destruction(schedule(1, None))
        .await
        .unwrap();
    assert!(
        admin
            .destroy_due_keys(req(&so, pb::DestroyDueKeysRequest {}))
            .await
            .unwrap()
            .into_inner()
            .destroyed
            .is_empty()
    );
    admin
        .cancel_key_destruction(req(
            &so,
            pb::KeyVersionRequest {
                purpose: "nuisance".into(),
                version: 1,
                justification: String::new(),
            },
        ))
        .await
        .unwrap();
    admin
        .schedule_key_destruction(schedule(1, Some(0)))
        .await
        .unwrap();
    let old_material: Vec<u8> = Connection::open(server.db_path())
        .unwrap()
        .query_row(
            "SELECT wrapped FROM purpose_keys WHERE purpose = 'nuisance' AND version = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(old_material.len() > 40);
    let destroyed = admin
        .destroy_due_keys(req(&so, pb::DestroyDueKeysRequest {}))
        .await
        .unwrap()
        .into_inner()
        .destroyed;
    assert_eq!(destroyed, ["nuisance v1"]);
    let wrapped: Vec<u8> = Connection::open(server.db_path())
        .unwrap()
        .query_row(
            "SELECT wrapped FROM purpose_keys WHERE purpose = 'nuisance' AND version = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(wrapped.is_empty(), "the material of v1 is erased");
    // Not just from the row: from every byte of the database files.
    let bytes = store_file_bytes(&server.db_path());
    assert!(
        !bytes
            .windows(old_material.len())
            .any(|w| w == old_material.as_slice()),
        "the destroyed key material is still somewhere in the database files"
    );
    read_all(&server, &records).await;
    admin
        .set_min_decrypt_version(req(
            &so,
            pb::KeyVersionRequest {
                purpose: "nuisance".into(),
                version: 2,
                justification: String::new(),
            },
        ))
        .await
        .unwrap();
    read_all(&server, &records).await;

    let report = admin
        .key_report(req(&so, pb::KeyReportRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(report.sound);
    let nuisance = report
        .purposes
        .iter()
        .find(|p| p.purpose == "nuisance")
        .unwrap();
    assert_eq!(nuisance.versions[0].state, "destroyed");
    assert!(nuisance.versions[0].destroyed_at.is_some());
    assert_eq!(nuisance.min_decrypt_version, 2);
    let entries = audit_entries(&server);
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "key-destroy" && e["target"] == "nuisance v1")
    );
    server.stop().await;
}

#[tokio::test]
async fn rekey_to_xchacha_reencrypts_every_field_and_drops_old_subject_keys() {
    let server = TestServer::start().await;
    let records = store_many(&server, 12).await;
    let so = server.token(Role::SecurityOfficer).to_owned();
    let mut admin = server.admin().await;
    admin
        .rotate_key(req(
            &so,
            pb::RotateKeyRequest {
                purpose: "nuisance".into(),
                algorithm: "xchacha20-poly1305".into(),
                justification: String::new(),
            },
        ))
        .await
        .unwrap();
    let done = run_job(&mut admin, &so, "nuisance", true).await;
    assert_eq!(done.done, 12);
    read_all(&server, &records).await;
    let conn = Connection::open(server.db_path()).unwrap();
    let mut stmt = conn.prepare("SELECT key_gen, sealed FROM fields").unwrap();
    let rows: Vec<(u32, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 12);
    for (generation, sealed) in rows {
        assert_eq!(generation, 2);
        assert_eq!(sealed[1], 2, "algorithm id of XChaCha20-Poly1305");
        assert_eq!(
            u32::from_be_bytes(sealed[2..6].try_into().unwrap()),
            2,
            "key reference is generation 2"
        );
    }
    let old: i64 = conn
        .query_row(
            "SELECT count(*) FROM subject_keys WHERE generation = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old, 0, "old subject keys are destroyed");
    let keys = keys_of(&mut admin, &so, "nuisance").await;
    assert_eq!(keys.versions[0].subject_keys, 0);
    assert!(keys.rekey_pending_since.is_none());
    // New writes after the rekey use the new algorithm too.
    let id = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-NEW",
        vec![text("phone", "contact", "06-9")],
    )
    .await;
    let sealed: Vec<u8> = conn
        .query_row(
            "SELECT sealed FROM fields WHERE record_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(sealed[1], 2);
    server.stop().await;
}

/// Asks for a root change to `secret` as `so`: the request id.
async fn request_root(
    admin: &mut AdminClient<Channel>,
    so: &str,
    secret: pb::rotate_root_request::Secret,
) -> String {
    let resp = admin
        .rotate_root(req(
            so,
            pb::RotateRootRequest {
                secret: Some(secret),
                justification: "custodian change".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.rotated, "a request changes nothing yet");
    assert!(resp.request_id.starts_with("root_"), "{}", resp.request_id);
    assert!(resp.expires_at.is_some());
    resp.request_id
}

/// Carries out root change `id` with `secret` as `so`.
async fn carry_out_root(
    admin: &mut AdminClient<Channel>,
    so: &str,
    id: &str,
    secret: pb::rotate_root_request::Secret,
) -> Result<pb::RotateRootResponse, tonic::Status> {
    admin
        .rotate_root(req(
            so,
            pb::RotateRootRequest {
                secret: Some(secret),
                justification: String::new(),
                request_id: id.into(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Approves root change `id` with `token`.
async fn approve_root(
    admin: &mut AdminClient<Channel>,
    token: &str,
    id: &str,
) -> Result<(), tonic::Status> {
    admin
        .approve_root_change(req(
            token,
            pb::ApproveRootChangeRequest {
                request_id: id.into(),
                justification: "checked with the key custodian".into(),
            },
        ))
        .await
        .map(drop)
}

/// Asks for, approves (as the privacy officer) and carries out a root change to `secret`.
pub(crate) async fn change_root(server: &TestServer, secret: pb::rotate_root_request::Secret) {
    let so = server.token(Role::SecurityOfficer).to_owned();
    let mut admin = server.admin().await;
    let id = request_root(&mut admin, &so, secret.clone()).await;
    approve_root(&mut admin, server.token(Role::PrivacyOfficer), &id)
        .await
        .unwrap();
    let done = carry_out_root(&mut admin, &so, &id, secret).await.unwrap();
    assert!(done.rotated);
}

/// The actions and decisions of the trail's root-change entries.
fn root_entries(server: &TestServer) -> Vec<(String, String)> {
    audit_entries(server)
        .into_iter()
        .filter(|e| e["action"].as_str().is_some_and(|a| a.starts_with("root-")))
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn root_key_change_refuses_the_old_key_and_opens_with_the_new() {
    let server = TestServer::start().await;
    let records = store_many(&server, 4).await;
    let new_key = [0x42u8; 32];
    change_root(
        &server,
        pb::rotate_root_request::Secret::Key(new_key.to_vec()),
    )
    .await;
    assert_eq!(
        root_entries(&server),
        [
            ("root-change-request", "allow"),
            ("root-change-approve", "allow"),
            ("root-rotate", "allow")
        ]
        .map(|(a, d)| (a.to_owned(), d.to_owned()))
    );
    read_all(&server, &records).await;
    let dir = server.dir.clone();
    let tokens_server = server;
    let reopened = tokens_server
        .restart_with(|_| {
            // The new key goes where the old one was.
            std::fs::write(
                dir.join("root.key.old"),
                std::fs::read(dir.join("root.key")).unwrap(),
            )
            .unwrap();
            std::fs::write(dir.join("root.key"), format!("{}\n", hex::encode(new_key))).unwrap();
        })
        .await;
    read_all(&reopened, &records).await;
    let old = RootSecret::read_key_file(&dir.join("root.key.old")).unwrap();
    let err = TestServer::open(&dir, &old).await.err().unwrap();
    assert!(
        err.to_string().contains("wrong passphrase or key file"),
        "{err}"
    );
    // And to a passphrase, through the admin command's other form.
    change_root(
        &reopened,
        pb::rotate_root_request::Secret::Passphrase("a brand new long passphrase".into()),
    )
    .await;
    let tmp = reopened.stop().await;
    let pass = RootSecret::Passphrase(Zeroizing::new("a brand new long passphrase".into()));
    let server = TestServer::open(&dir, &pass).await.unwrap();
    let resp = server.vault.audit().verify(None).unwrap();
    assert!(matches!(resp, kluis::audit::Verification::Intact { .. }));
    server.stop().await;
    drop(tmp);
}

/// The root key in force still opens the store of a stopped `server`, and `other` does not.
async fn root_unchanged(server: TestServer, other: &[u8; 32]) {
    let dir = server.dir.clone();
    let tmp = server.stop().await;
    let key = RootSecret::read_key_file(&dir.join("root.key")).unwrap();
    let again = TestServer::open(&dir, &key).await.unwrap();
    again.stop().await;
    std::fs::write(dir.join("other.key"), format!("{}\n", hex::encode(other))).unwrap();
    let other = RootSecret::read_key_file(&dir.join("other.key")).unwrap();
    assert!(TestServer::open(&dir, &other).await.is_err());
    drop(tmp);
}

#[tokio::test]
async fn a_root_change_without_approval_is_refused() {
    let server = TestServer::start().await;
    let so = server.token(Role::SecurityOfficer).to_owned();
    let mut admin = server.admin().await;
    let new_key = pb::rotate_root_request::Secret::Key(vec![0x43; 32]);
    // No request at all: an invented id is refused.
    let status = carry_out_root(&mut admin, &so, "root_0000000000000000", new_key.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("no pending root change"),
        "{status:?}"
    );
    // Asked for, not approved: refused, and it says who approves.
    let id = request_root(&mut admin, &so, new_key.clone()).await;
    let status = carry_out_root(&mut admin, &so, &id, new_key.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("awaits approval by a privacy officer")
            && status
                .message()
                .contains(&format!("kluis admin root approve {id} --justification")),
        "{status:?}"
    );
    assert_eq!(
        root_entries(&server),
        [
            ("root-rotate", "deny"),
            ("root-change-request", "allow"),
            ("root-rotate", "deny")
        ]
        .map(|(a, d)| (a.to_owned(), d.to_owned()))
    );
    root_unchanged(server, &[0x43; 32]).await;
}

#[tokio::test]
async fn the_requester_of_a_root_change_cannot_approve_it() {
    // Under the default policy a security officer does not approve at all.
    let server = TestServer::start().await;
    let so = server.token(Role::SecurityOfficer).to_owned();
    let mut admin = server.admin().await;
    let new_key = pb::rotate_root_request::Secret::Key(vec![0x44; 32]);
    let id = request_root(&mut admin, &so, new_key.clone()).await;
    let status = approve_root(&mut admin, &so, &id).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    server.stop().await;

    // Under a policy that lets security officers approve, the vault still refuses the requester.
    let tmp = crate::common::private_tempdir();
    let files = [
        ("default.cedar", kluis::policy::DEFAULT_POLICIES.to_owned()),
        (
            "officers-approve.cedar",
            "@id(\"test-security-officer-approves\")\npermit (principal in \
             Kluis::Role::\"security-officer\", action == Kluis::Action::\"approve\", \
             resource);\n"
                .to_owned(),
        ),
    ]
    .map(|(name, text)| {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    });
    let server = TestServer::start_with_policies(files.to_vec()).await;
    let so = server.token(Role::SecurityOfficer).to_owned();
    let mut admin = server.admin().await;
    let id = request_root(&mut admin, &so, new_key.clone()).await;
    let status = approve_root(&mut admin, &so, &id).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("the requester of a root change cannot approve it"),
        "{status:?}"
    );
    let status = carry_out_root(&mut admin, &so, &id, new_key.clone())
        .await
        .unwrap_err();
    assert!(status.message().contains("awaits approval"), "{status:?}");
    assert!(
        root_entries(&server).contains(&("root-change-approve".into(), "deny".into())),
        "the refused approval is on the trail"
    );
    root_unchanged(server, &[0x44; 32]).await;
}

#[tokio::test]
async fn an_approved_root_change_takes_only_its_own_new_key_and_requester() {
    let server = TestServer::start().await;
    let so = server.token(Role::SecurityOfficer).to_owned();
    let mut admin = server.admin().await;
    let approved = pb::rotate_root_request::Secret::Key(vec![0x45; 32]);
    let id = request_root(&mut admin, &so, approved.clone()).await;
    approve_root(&mut admin, server.token(Role::PrivacyOfficer), &id)
        .await
        .unwrap();
    // A second approval is not needed and not taken.
    let status = approve_root(&mut admin, server.token(Role::PrivacyOfficer), &id)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // Another new key than the approved one: refused.
    for other in [
        pb::rotate_root_request::Secret::Key(vec![0x46; 32]),
        pb::rotate_root_request::Secret::Passphrase("a passphrase nobody approved".into()),
    ] {
        let status = carry_out_root(&mut admin, &so, &id, other)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("is not the one root change"),
            "{status:?}"
        );
    }
    // Another security officer than the requester: refused.
    let second = server
        .vault
        .bootstrap_token(&kluis::vault::tokens::TokenSpec {
            principal: PrincipalId::parse("p", "second-security-officer").unwrap(),
            roles: vec![Role::SecurityOfficer],
            ttl_secs: 3600,
            scope_subject: None,
        })
        .unwrap();
    let status = carry_out_root(
        &mut admin,
        second.token.expose_secret(),
        &id,
        approved.clone(),
    )
    .await
    .unwrap_err();
    assert!(
        status.message().contains("only they carry it out"),
        "{status:?}"
    );

    // The approved key by its requester: done, and the request is used up.
    assert!(
        carry_out_root(&mut admin, &so, &id, approved.clone())
            .await
            .unwrap()
            .rotated
    );
    let status = carry_out_root(&mut admin, &so, &id, approved)
        .await
        .unwrap_err();
    assert!(
        status.message().contains("no pending root change"),
        "{status:?}"
    );
    let dir = server.dir.clone();
    let tmp = server.stop().await;
    std::fs::write(
        dir.join("new.key"),
        format!("{}\n", hex::encode([0x45u8; 32])),
    )
    .unwrap();
    let new = RootSecret::read_key_file(&dir.join("new.key")).unwrap();
    TestServer::open(&dir, &new).await.unwrap().stop().await;
    drop(tmp);
}

// ---------------------------------------------------------------- SIGKILL in the middle --

pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A store with `n` subjects under `nuisance`, a key file, a config that makes key jobs slow
/// (small batches, pauses), and tokens for the security and nuisance officers.
pub(crate) fn prepare(dir: &Path, n: usize) -> (String, String, Vec<(String, String)>) {
    let secret = RootSecret::create_key_file(&dir.join("root.key")).unwrap();
    init_store(dir, &secret, kluis::crypto::Algorithm::Aes256Gcm);
    let cfg = kluis::config::RawConfig {
        data_dir: Some(dir.to_owned()),
        ..Default::default()
    }
    .validate(false)
    .unwrap();
    let vault = kluis::config::open_vault(&cfg, &secret).unwrap();
    let spec = |role: Role| kluis::vault::tokens::TokenSpec {
        principal: PrincipalId::parse("p", &format!("kill-{role}")).unwrap(),
        roles: vec![role],
        ttl_secs: 3600,
        scope_subject: None,
    };
    let so = vault
        .bootstrap_token(&spec(Role::SecurityOfficer))
        .unwrap()
        .token
        .expose_secret()
        .to_owned();
    let officer = vault
        .bootstrap_token(&spec(Role::NuisanceOfficer))
        .unwrap()
        .token
        .expose_secret()
        .to_owned();
    let principal = vault
        .authenticate(&kluis::vault::tokens::BearerToken::new(officer.clone()))
        .unwrap();
    let ctx = kluis::domain::AccessContext::parse(
        "c",
        "nuisance",
        "N-1",
        "setup",
        "app",
        false,
        &Default::default(),
    )
    .unwrap();
    let vault = std::sync::Arc::new(vault);
    let records = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let vault = std::sync::Arc::clone(&vault);
                let (principal, ctx) = (principal.clone(), ctx.clone());
                s.spawn(move || {
                    (t..n)
                        .step_by(8)
                        .map(|i| {
                            let v = value_of(i);
                            let field = NewField {
                                name: FieldName::parse("f", "phone").unwrap(),
                                category: Category::Contact,
                                value: Value::Text(Zeroizing::new(v.clone())),
                            };
                            let subject = SubjectId::parse("s", &format!("REL-{i:05}")).unwrap();
                            let (id, _) = vault
                                .put_record(
                                    &principal,
                                    &ctx,
                                    &subject,
                                    vec![field],
                                    Default::default(),
                                )
                                .unwrap();
                            (id.as_str().to_owned(), v)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    std::fs::write(
        dir.join("kluis.toml"),
        format!(
            "data_dir = \"{}\"\nkey_file = \"{}\"\n[keys]\nbatch_size = 5\nbatch_pause_ms = 40\n",
            dir.display(),
            dir.join("root.key").display()
        ),
    )
    .unwrap();
    (so, officer, records)
}

pub(crate) fn start(dir: &Path, port: u16) -> Process {
    Process(
        Command::new(env!("CARGO_BIN_EXE_kluis"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--config",
            ])
            .arg(dir.join("kluis.toml"))
            .env("KLUIS_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

pub(crate) async fn connect(port: u16) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("kluis did not come up: {e}"),
        }
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_until(mut done: impl AsyncFnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn all_decrypt(channel: Channel, officer: &str, records: &[(String, String)]) {
    let mut client = pb::vault_client::VaultClient::new(channel);
    for (id, v) in records {
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
            .unwrap()
            .into_inner();
        assert_eq!(text_of(&resp.fields[0]), v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_interrupted_by_sigkill_completes_after_restart() {
    let tmp = crate::common::private_tempdir();
    let (so, officer, records) = prepare(tmp.path(), 200);
    let port = free_port();
    let server = start(tmp.path(), port);
    let mut admin = AdminClient::new(connect(port).await);
    admin
        .rotate_key(req(
            &so,
            pb::RotateKeyRequest {
                purpose: "nuisance".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    // Kill it once the background rewrap is under way but not done.
    wait_until(
        async || {
            let v1 = keys_of(&mut admin, &so, "nuisance").await.versions[0].subject_keys;
            v1 < 200
        },
        "the rewrap to start",
    )
    .await;
    drop(server);
    let left: i64 = Connection::open(tmp.path().join("kluis.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM subject_keys WHERE purpose_version = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        left > 0,
        "the server was killed in the middle of the rewrap"
    );

    let port = free_port();
    let _server = start(tmp.path(), port);
    let channel = connect(port).await;
    let mut admin = AdminClient::new(channel.clone());
    wait_until(
        async || keys_of(&mut admin, &so, "nuisance").await.versions[0].subject_keys == 0,
        "the resumed rewrap",
    )
    .await;
    assert_eq!(
        keys_of(&mut admin, &so, "nuisance").await.versions[1].subject_keys,
        200
    );
    all_decrypt(channel, &officer, &records).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_interrupted_by_sigkill_completes_after_restart() {
    let tmp = crate::common::private_tempdir();
    let (so, officer, records) = prepare(tmp.path(), 200);
    let port = free_port();
    let server = start(tmp.path(), port);
    let mut admin = AdminClient::new(connect(port).await);
    let mut stream = admin
        .rekey(req(
            &so,
            pb::KeyJobRequest {
                purpose: "nuisance".into(),
                justification: "suspected leak".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // Wait for the first progress report, then kill.
    let first = stream.message().await.unwrap().unwrap();
    assert!(!first.finished && first.done > 0);
    drop(server);
    let db = Connection::open(tmp.path().join("kluis.db")).unwrap();
    let old: i64 = db
        .query_row("SELECT count(*) FROM fields WHERE key_gen = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(old > 0, "the server was killed in the middle of the rekey");
    let pending: i64 = db
        .query_row("SELECT count(*) FROM key_jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(pending, 1);

    let port = free_port();
    let _server = start(tmp.path(), port);
    let channel = connect(port).await;
    let mut admin = AdminClient::new(channel.clone());
    wait_until(
        async || {
            keys_of(&mut admin, &so, "nuisance")
                .await
                .rekey_pending_since
                .is_none()
        },
        "the resumed rekey",
    )
    .await;
    let old: i64 = db
        .query_row("SELECT count(*) FROM fields WHERE key_gen = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(old, 0);
    let old_keys: i64 = db
        .query_row(
            "SELECT count(*) FROM subject_keys WHERE generation = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old_keys, 0);
    all_decrypt(channel, &officer, &records).await;
}

// The `kluis` child process is awaited synchronously: keep a worker free for the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_keys_commands_report_clearly_to_people_and_scripts() {
    let server = TestServer::start().await;
    store_many(&server, 3).await;
    let run = |token: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kluis"))
            .args(["admin", "--addr", &format!("http://{}", server.addr)])
            .args(args)
            .env("KLUIS_TOKEN", token)
            .env("KLUIS_LOG", "warn")
            .output()
            .unwrap()
    };
    let so = server.token(Role::SecurityOfficer);
    let out = run(so, &["keys", "rotate", "--purpose", "nuisance", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rotated["version"], 2);
    let out = run(so, &["keys", "rewrap", "--purpose", "nuisance"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nuisance: done"));
    let out = run(so, &["keys", "list", "--purpose", "nuisance", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["active_version"], 2);
    assert_eq!(listed["versions"][0]["subject_keys"], 0);
    assert_eq!(listed["versions"][1]["subject_keys"], 3);
    let out = run(so, &["keys", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("decrypt-only"));

    let out = run(so, &["keys", "rotate", "--purpose", "gossip"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown purpose"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        server.token(Role::NuisanceOfficer),
        &["keys", "rotate", "--purpose", "nuisance"],
    );
    assert_eq!(out.status.code(), Some(3));
    let out = run("kluis_nonsense", &["keys", "list"]);
    assert_eq!(out.status.code(), Some(3));
    let out = run(so, &["keys", "report"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("no record depends on destroyed key material")
    );
    let unreachable = Command::new(env!("CARGO_BIN_EXE_kluis"))
        .args(["admin", "--addr", "http://127.0.0.1:9", "keys", "list"])
        .env("KLUIS_TOKEN", so)
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unreachable.stderr)
            .contains("connection refused at http://127.0.0.1:9")
    );
    server.stop().await;
}

/// The pending root change as the database file holds it (its JSON and MAC).
fn root_change_row(conn: &Connection) -> Vec<u8> {
    conn.query_row(
        "SELECT value FROM meta WHERE key = 'root_change'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// Writes `value` into the database file as the pending root change, there or not.
fn put_root_change_row(conn: &Connection, value: &[u8]) {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('root_change', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [value],
    )
    .unwrap();
}

/// A root change carried out over another root key than it was asked over is refused.
fn assert_refused_over_another_root(status: &tonic::Status) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("over another root key"),
        "{status:?}"
    );
}

#[tokio::test]
async fn an_approval_of_a_root_change_written_into_the_database_is_not_obeyed() {
    let server = TestServer::start().await;
    let so = server.token(Role::SecurityOfficer).to_owned();
    let mut admin = server.admin().await;
    let new_key = pb::rotate_root_request::Secret::Key(vec![0x44; 32]);
    let id = request_root(&mut admin, &so, new_key.clone()).await;
    // The security officer writes the privacy officer's approval into the pending request.
    let conn = Connection::open(server.db_path()).unwrap();
    let stored = root_change_row(&conn);
    let (json, mac) = stored.split_at(stored.len() - 32);
    let mut change: serde_json::Value = serde_json::from_slice(json).unwrap();
    change["approved_by"] = "test-privacy-officer".into();
    change["approved_at"] = 1.into();
    let mut forged = serde_json::to_vec(&change).unwrap();
    forged.extend_from_slice(mac);
    put_root_change_row(&conn, &forged);
    let status = carry_out_root(&mut admin, &so, &id, new_key.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    // Twin: the request as stored, approved through the API, goes through.
    put_root_change_row(&conn, &stored);
    approve_root(&mut admin, server.token(Role::PrivacyOfficer), &id)
        .await
        .unwrap();
    assert!(
        carry_out_root(&mut admin, &so, &id, new_key)
            .await
            .unwrap()
            .rotated
    );
    server.stop().await;
}

/// An approved root change, copied from the database before it was carried out and put back
/// after a later change, let the security officer alone take the root back to the first new
/// key: the row's MAC still held. A request now names the root key it changes, and is refused
/// over any other.
#[tokio::test]
async fn an_approved_root_change_put_back_after_the_root_changed_is_refused() {
    let server = TestServer::start().await;
    let so = server.token(Role::SecurityOfficer).to_owned();
    let po = server.token(Role::PrivacyOfficer).to_owned();
    let mut admin = server.admin().await;
    let first = pb::rotate_root_request::Secret::Key(vec![0x51; 32]);
    let id = request_root(&mut admin, &so, first.clone()).await;
    approve_root(&mut admin, &po, &id).await.unwrap();
    let conn = Connection::open(server.db_path()).unwrap();
    let approved = root_change_row(&conn);
    assert!(
        carry_out_root(&mut admin, &so, &id, first.clone())
            .await
            .unwrap()
            .rotated
    );
    change_root(
        &server,
        pb::rotate_root_request::Secret::Key(vec![0x52; 32]),
    )
    .await;
    put_root_change_row(&conn, &approved);
    let status = carry_out_root(&mut admin, &so, &id, first.clone())
        .await
        .unwrap_err();
    assert_refused_over_another_root(&status);
    // Nor may it be approved again.
    let status = approve_root(&mut admin, &po, &id).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // The twin: asked for again over the root in force, approved, it goes through.
    change_root(&server, first.clone()).await;
    // And after a change back to the same key: an approved change from the first new key,
    // copied before it was carried out, put back once the root is that key again, is refused
    // too (the check value alone would match again).
    let third = pb::rotate_root_request::Secret::Key(vec![0x53; 32]);
    let id = request_root(&mut admin, &so, third.clone()).await;
    approve_root(&mut admin, &po, &id).await.unwrap();
    let approved = root_change_row(&conn);
    assert!(
        carry_out_root(&mut admin, &so, &id, third.clone())
            .await
            .unwrap()
            .rotated
    );
    change_root(&server, first).await;
    put_root_change_row(&conn, &approved);
    let status = carry_out_root(&mut admin, &so, &id, third)
        .await
        .unwrap_err();
    assert_refused_over_another_root(&status);
    server.stop().await;
}

#[tokio::test]
async fn a_rewrap_another_node_runs_is_followed_and_taken_over_when_it_stops() {
    let server = TestServer::start().await;
    store_many(&server, 3).await;
    let so_principal = Principal::new(
        PrincipalId::parse("p", "so").unwrap(),
        vec![Role::SecurityOfficer],
        None,
        "tok_so",
        i64::MAX,
    )
    .unwrap();
    // "Another node" holds the rewrap's lease for three more seconds and does nothing, as a
    // node that died in its rewrap. Taken before the rotation, so that the rewrap this server's
    // start resumes in the background cannot move the keys itself.
    assert!(
        server
            .vault
            .take_lease("rewrap:nuisance", "another-node", 3)
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Rotated in the core: no rewrap of its own.
    server
        .vault
        .rotate_key(&so_principal, Purpose::Nuisance, None, "")
        .unwrap();
    let mut admin = server.admin().await;
    let mut stream = admin
        .rewrap(req(
            server.token(Role::SecurityOfficer),
            pb::KeyJobRequest {
                purpose: "nuisance".into(),
                justification: "test".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut messages = Vec::new();
    while let Some(p) = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("the rewrap neither followed nor finished")
        .unwrap()
    {
        let finished = p.finished;
        messages.push(p);
        if finished {
            break;
        }
    }
    // First it followed: nothing done here, three subject keys left, none yet on v2.
    let first = &messages[0];
    assert!(!first.finished, "it followed before it took over");
    assert_eq!((first.done, first.total), (0, 3));
    assert_eq!((first.keys_on_active, first.keys_total), (0, 3));
    // Then, the lease lapsed, it took the job over and did it.
    let last = messages.last().unwrap();
    assert!(last.finished);
    assert_eq!(last.done, 3);
    assert_eq!((last.keys_on_active, last.keys_total), (3, 3));
    server.stop().await;
}
