//! Several kluis nodes on one PostgreSQL store, over real gRPC: what one node writes the other
//! reads, a change made through one is in force on the other within a second (the bound the
//! README states), the audit trail stays one chain, and a database that goes away answers
//! `UNAVAILABLE` and is used again by itself when it is back.

use std::time::{Duration, Instant};

use kluis::{domain::Role, keys::RootSecret, pb, policy::DEFAULT_POLICIES};
use tonic::Code;

use crate::{common::*, pg};

/// The bound the README states for a change to be in force on every node.
const IN_FORCE_WITHIN: Duration = Duration::from_secs(1);

/// Two nodes on the database `url`, with role tokens issued on A.
async fn two_nodes_on(url: &str) -> (tempfile::TempDir, TestServer, TestServer) {
    two_nodes_at(url, None).await
}

/// Two nodes on a fresh database of `cluster`, with role tokens issued on A.
async fn two_nodes(
    cluster: &pg::Cluster,
    policy_file: Option<&std::path::Path>,
) -> (tempfile::TempDir, TestServer, TestServer) {
    two_nodes_at(&cluster.database(), policy_file).await
}

async fn two_nodes_at(
    url: &str,
    policy_file: Option<&std::path::Path>,
) -> (tempfile::TempDir, TestServer, TestServer) {
    let url = url.to_owned();
    let tmp = private_tempdir();
    let secret = RootSecret::create_key_file(&tmp.path().join("root.key")).unwrap();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&dir_a, &dir_b] {
        kluis::config::create_private_dir(d).unwrap();
    }
    let mut a = match policy_file {
        None => TestServer::start_node(&url, &dir_a, &secret).await,
        Some(f) => TestServer::start_node_with_policies(&url, &dir_a, &secret, f).await,
    };
    a.issue_role_tokens();
    let mut b = match policy_file {
        None => TestServer::start_node(&url, &dir_b, &secret).await,
        Some(f) => TestServer::start_node_with_policies(&url, &dir_b, &secret, f).await,
    };
    b.share_tokens(&a);
    (tmp, a, b)
}

/// Polls `check` until it holds, for at most the stated bound (plus a margin for a loaded test
/// machine); returns how long it took.
async fn within_bound(what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < IN_FORCE_WITHIN + Duration::from_millis(500),
            "{what}: not in force on the other node after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A token for `principal` with `role`, issued on `node` by its security officer.
async fn issue(
    node: &TestServer,
    principal: &str,
    role: &str,
    justification: &str,
) -> pb::IssueTokenResponse {
    node.admin()
        .await
        .issue_token(req(
            node.token(Role::SecurityOfficer),
            pb::IssueTokenRequest {
                principal_id: principal.into(),
                roles: vec![role.into()],
                ttl_seconds: 3600,
                scope_subject_id: String::new(),
                justification: justification.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_one_node_writes_the_other_reads_and_the_trail_is_one_chain() {
    let Some(cluster) = pg::cluster() else { return };
    let (_tmp, a, b) = two_nodes(cluster, None).await;
    let id = put(
        &a,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-N1",
        vec![text("report", "nuisance-evidence", "loud music at night")],
    )
    .await;
    let read = get(&b, b.token(Role::NuisanceOfficer), nuisance_ctx(), &id)
        .await
        .unwrap();
    assert_eq!(
        text_of(field(&read, "report").unwrap()),
        "loud music at night"
    );

    // Both nodes write at once, many times: every write lands, and the trail is one chain.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let node = if i % 2 == 0 { &a } else { &b };
        let addr = node.addr;
        let token = node.token(Role::NuisanceOfficer).to_owned();
        tasks.push(tokio::spawn(async move {
            let mut client = pb::vault_client::VaultClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            client
                .put_record(req(
                    &token,
                    pb::PutRecordRequest {
                        context: nuisance_ctx(),
                        subject_id: format!("REL-C{}", i % 5),
                        fields: vec![text("report", "nuisance-evidence", &format!("report {i}"))],
                        labels: Default::default(),
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .record_id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    for (i, id) in ids.iter().enumerate() {
        let node = if i % 2 == 0 { &b } else { &a };
        let r = get(node, node.token(Role::NuisanceOfficer), nuisance_ctx(), id)
            .await
            .unwrap();
        assert_eq!(text_of(field(&r, "report").unwrap()), format!("report {i}"));
    }
    for node in [&a, &b] {
        let verified = node
            .admin()
            .await
            .verify_audit(req(
                node.token(Role::SecurityOfficer),
                pb::VerifyAuditRequest { expect_head: None },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(verified.intact, "{}", verified.problem);
        // Both nodes' writes and reads are on it: an entry for each.
        assert!(verified.count >= 82, "{}", verified.count);
    }
}

/// Many first records of one new subject written at once through both nodes: the subject's
/// first key is stored once (the others find it taken and seal again under it), every write is
/// acknowledged, and every record opens on either node. Five subjects, sixteen writes each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_records_of_one_new_subject_through_both_nodes_at_once_all_open() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let (_tmp, a, b) = two_nodes_on(&url).await;
    let mut clients = Vec::new();
    for node in [&a, &b] {
        for _ in 0..8 {
            clients.push((
                pb::vault_client::VaultClient::connect(format!("http://{}", node.addr))
                    .await
                    .unwrap(),
                node.token(Role::NuisanceOfficer).to_owned(),
            ));
        }
    }
    for round in 0..5 {
        let subject = format!("REL-FIRST-{round}");
        let mut tasks = Vec::new();
        for (i, (client, token)) in clients.iter().cloned().enumerate() {
            let subject = subject.clone();
            let mut client = client;
            tasks.push(tokio::spawn(async move {
                let written = client
                    .put_record(req(
                        &token,
                        pb::PutRecordRequest {
                            context: nuisance_ctx(),
                            subject_id: subject,
                            fields: vec![text("report", "nuisance-evidence", &format!("r {i}"))],
                            labels: Default::default(),
                        },
                    ))
                    .await;
                (i, written)
            }));
        }
        for t in tasks {
            let (i, written) = t.await.unwrap();
            let id = written
                .unwrap_or_else(|e| panic!("write {i} for {subject}: {e:?}"))
                .into_inner()
                .record_id;
            let node = if i % 2 == 0 { &a } else { &b };
            let r = get(node, node.token(Role::NuisanceOfficer), nuisance_ctx(), &id)
                .await
                .unwrap();
            assert_eq!(text_of(field(&r, "report").unwrap()), format!("r {i}"));
        }
        let keys: i64 = tokio::task::block_in_place(|| {
            postgres::Client::connect(&url, postgres::NoTls)
                .unwrap()
                .query_one(
                    "SELECT count(*) FROM subject_keys WHERE subject = $1",
                    &[&subject],
                )
                .unwrap()
                .get(0)
        });
        assert_eq!(keys, 1, "{subject}");
    }
}

/// A node holds its purpose's active key version in memory between writes; a row of it edited
/// by hand in the database is taken in within the bound the README states, and writes fail
/// closed (`DATA_LOSS`) from then on, on both nodes. The twin: before the edit, writes on both
/// nodes land.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purpose_key_row_edited_by_hand_stops_writes_within_the_bound() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let (_tmp, a, b) = two_nodes_on(&url).await;
    let write = |node: &TestServer, subject: String| {
        let addr = node.addr;
        let token = node.token(Role::NuisanceOfficer).to_owned();
        async move {
            pb::vault_client::VaultClient::connect(format!("http://{addr}"))
                .await
                .unwrap()
                .put_record(req(
                    &token,
                    pb::PutRecordRequest {
                        context: nuisance_ctx(),
                        subject_id: subject,
                        fields: vec![text("report", "nuisance-evidence", "noise")],
                        labels: Default::default(),
                    },
                ))
                .await
        }
    };
    for node in [&a, &b] {
        write(node, "REL-E0".into()).await.unwrap();
    }
    tokio::task::block_in_place(|| {
        postgres::Client::connect(&url, postgres::NoTls)
            .unwrap()
            .batch_execute(
                "UPDATE purpose_keys SET algorithm = 'xchacha20-poly1305' \
                 WHERE purpose = 'nuisance' AND version = 1",
            )
            .unwrap();
    });
    for node in [&a, &b] {
        let mut n = 0;
        within_bound("a purpose key row edited by hand", async || {
            n += 1;
            write(node, format!("REL-E{n}"))
                .await
                .is_err_and(|s| s.code() == Code::DataLoss)
        })
        .await;
    }
}

/// The attacker deletes the entry a node committed last, lets the other node append over its
/// place, and hopes that the first node's next entries cover the gap: that node refuses to
/// chain on a trail whose entry it committed is gone, answering `DATA_LOSS` (not a `try
/// again`), and says so in `verify`. The twin, the
/// same appends without the deletion, goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entry_deleted_under_another_nodes_appends_is_not_covered_by_the_node_that_made_it() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let (_tmp, a, b) = two_nodes_on(&url).await;
    let sql = |sql: &str| {
        tokio::task::block_in_place(|| {
            let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            db.query_one(sql, &[]).unwrap().get::<_, i64>(0)
        })
    };
    let nuisance = async |node: &TestServer, subject: &str| {
        put(
            node,
            Role::NuisanceOfficer,
            nuisance_ctx(),
            subject,
            vec![text("report", "nuisance-evidence", "a broken window")],
        )
        .await
    };
    let read = async |node: &TestServer, id: &str| {
        get(node, node.token(Role::NuisanceOfficer), nuisance_ctx(), id).await
    };
    let verify = async |node: &TestServer| {
        node.admin()
            .await
            .verify_audit(req(
                node.token(Role::SecurityOfficer),
                pb::VerifyAuditRequest { expect_head: None },
            ))
            .await
            .unwrap()
            .into_inner()
    };

    // The twin: A's entry, then B's, then A's again on B's.
    let id = nuisance(&a, "REL-D1").await;
    nuisance(&b, "REL-D2").await;
    read(&a, &id).await.unwrap();
    assert!(verify(&a).await.intact);

    // A's last entry deleted; B appends three over its place; A must not chain on them.
    read(&a, &id).await.unwrap();
    let last = sql("SELECT max(seq) FROM audit");
    assert_eq!(
        sql(&format!(
            "WITH d AS (DELETE FROM audit WHERE seq = {last} RETURNING 1) SELECT count(*) FROM d"
        )),
        1
    );
    for subject in ["REL-D3", "REL-D4", "REL-D5"] {
        nuisance(&b, subject).await;
    }
    assert!(sql("SELECT max(seq) FROM audit") > last);
    let Err(refused) = read(&a, &id).await else {
        panic!("A read on a trail whose entry of A was deleted under B's");
    };
    assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
    assert!(refused.message().contains("audit verify"), "{refused:?}");
    let put_refused = a
        .client()
        .await
        .put_record(req(
            a.token(Role::NuisanceOfficer),
            pb::PutRecordRequest {
                context: nuisance_ctx(),
                subject_id: "REL-D6".into(),
                fields: vec![text("report", "nuisance-evidence", "graffiti")],
                labels: Default::default(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(put_refused.code(), Code::DataLoss, "{put_refused:?}");
    let verified = verify(&a).await;
    assert!(!verified.intact);
    assert_eq!(
        verified.broken_seq,
        u64::try_from(last).unwrap(),
        "{}",
        verified.problem
    );
}

/// A token issued on A is approved on B, and works there, at once: B does not call the row
/// altered because its copy of the token register is a poll behind. The twin: an older copy of
/// the row put back by hand is still refused on B (approved, the pending copy is not the row
/// kluis last wrote).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_changed_on_one_node_is_taken_at_once_on_the_other() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let (_tmp, a, b) = two_nodes_on(&url).await;
    let who = async |node: &TestServer, token: &str| {
        node.client()
            .await
            .who_am_i(req(token, pb::WhoAmIRequest {}))
            .await
    };
    for round in 0..5 {
        // B has read the register (a call authenticated), then A changes it.
        who(&b, b.token(Role::NuisanceOfficer)).await.unwrap();
        let issued = issue(
            &a,
            &format!("emp-{round}"),
            "nuisance-officer",
            "joined the team",
        )
        .await;
        let pending = who(&b, &issued.token).await.unwrap_err();
        assert_eq!(pending.code(), Code::Unauthenticated);
        assert!(
            pending.message().contains(&format!(
                "awaits approval by a privacy officer (`kluis admin token approve {} \
                 --justification WHY`)",
                issued.token_id
            )),
            "{pending:?}"
        );
        // The pending row as it is now, to be put back by hand after the approval.
        let copy = tokio::task::block_in_place(|| {
            let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let row = db
                .query_one(
                    "SELECT approved_by, approved_at, mac FROM tokens WHERE id = $1",
                    &[&issued.token_id],
                )
                .unwrap();
            (
                row.get::<_, Option<String>>(0),
                row.get::<_, Option<i64>>(1),
                row.get::<_, Vec<u8>>(2),
            )
        });
        approve(&b, &issued.token_id).await;
        let me = who(&b, &issued.token).await.unwrap().into_inner();
        assert_eq!(me.principal_id, format!("emp-{round}"));
        let me = who(&a, &issued.token).await.unwrap().into_inner();
        assert_eq!(me.principal_id, format!("emp-{round}"));
        if round == 0 {
            // The twin: the pending copy put back; it is not the row kluis last wrote.
            tokio::task::block_in_place(|| {
                let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                db.execute(
                    "UPDATE tokens SET approved_by = $2, approved_at = $3, mac = $4 WHERE id = $1",
                    &[&issued.token_id, &copy.0, &copy.1, &copy.2],
                )
                .unwrap();
            });
            let again = a
                .admin()
                .await
                .approve_token(req(
                    b.token(Role::PrivacyOfficer),
                    pb::ApproveTokenRequest {
                        token_id: issued.token_id.clone(),
                        justification: "checked with the team lead".into(),
                    },
                ))
                .await
                .unwrap_err();
            assert_eq!(again.code(), Code::DataLoss, "{again:?}");
        }
    }
}

/// `store verify` on one node while the other issues tokens: a token whose row and register
/// entry land between verify's two reads is not named as deleted or put back by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_verify_beside_token_changes_on_another_node_names_nothing() {
    let Some(cluster) = pg::cluster() else { return };
    let (_tmp, a, b) = two_nodes(cluster, None).await;
    let issuing = async {
        for i in 0..40 {
            let issued = issue(&a, &format!("analyst-{i}"), "analyst", "monthly figures").await;
            if i % 2 == 0 {
                a.admin()
                    .await
                    .revoke_token(req(
                        a.token(Role::SecurityOfficer),
                        pb::RevokeTokenRequest {
                            token_id: issued.token_id,
                            justification: "no longer needed".into(),
                        },
                    ))
                    .await
                    .unwrap();
            }
        }
    };
    let verifying = async {
        let mut runs = 0;
        let mut admin = b.admin().await;
        loop {
            let verified = admin
                .verify_store(req(
                    b.token(Role::SecurityOfficer),
                    pb::VerifyStoreRequest {},
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(verified.bad_rows.is_empty(), "{:?}", verified.bad_rows);
            runs += 1;
            if runs >= 40 {
                return runs;
            }
        }
    };
    let ((), runs) = tokio::join!(issuing, verifying);
    assert_eq!(runs, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_made_on_one_node_are_in_force_on_the_other_within_a_second() {
    let Some(cluster) = pg::cluster() else { return };
    let tmp = private_tempdir();
    let policy = tmp.path().join("policies.cedar");
    std::fs::write(&policy, DEFAULT_POLICIES).unwrap();
    let (_nodes, a, b) = two_nodes(cluster, Some(&policy)).await;
    let so = a.token(Role::SecurityOfficer).to_owned();
    let id = put(
        &a,
        Role::CustomerService,
        ctx("contract", "", ""),
        "REL-F1",
        vec![text("email", "contact", "f1@example.nl")],
    )
    .await;
    get(
        &b,
        b.token(Role::CustomerService),
        ctx("contract", "", ""),
        &id,
    )
    .await
    .unwrap();

    // A token issued on A works on B (B had read the token register before).
    let issued = issue(&a, "analyst-7", "analyst", "monthly figures").await;
    let who = |node: &TestServer, token: String| {
        let addr = node.addr;
        async move {
            let mut c = pb::vault_client::VaultClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            c.who_am_i(req(&token, pb::WhoAmIRequest {})).await
        }
    };
    let took = within_bound("token issue", async || {
        who(&b, issued.token.clone()).await.is_ok()
    })
    .await;
    eprintln!("token issued on A works on B after {took:?}");

    // Revoked on A: refused on B.
    a.admin()
        .await
        .revoke_token(req(
            &so,
            pb::RevokeTokenRequest {
                token_id: issued.token_id.clone(),
                justification: "no longer needed".into(),
            },
        ))
        .await
        .unwrap();
    within_bound("token revocation", async || {
        who(&b, issued.token.clone())
            .await
            .is_err_and(|s| s.code() == Code::Unauthenticated)
    })
    .await;

    // A stricter policy set reloaded on A decides on B.
    forbid_contract_reads(&policy);
    let reloaded = a
        .admin()
        .await
        .reload_policies(req(&so, pb::ReloadPoliciesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(reloaded.changed);
    let took = within_bound("policy reload", async || {
        get(
            &b,
            b.token(Role::CustomerService),
            ctx("contract", "", ""),
            &id,
        )
        .await
        .is_err_and(|s| {
            s.code() == Code::PermissionDenied
                && s.message()
                    .contains("no-contract-reads-by-customer-service")
        })
    })
    .await;
    eprintln!("policy reloaded on A decides on B after {took:?}");

    // A purpose key rotated on A: B wraps a new subject's key under the new version.
    let rotated = a
        .admin()
        .await
        .rotate_key(req(
            &so,
            pb::RotateKeyRequest {
                purpose: "nuisance".into(),
                algorithm: String::new(),
                justification: "yearly rotation".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.version, 2);
    let mut n = 0;
    within_bound("key rotation", async || {
        n += 1;
        let subject = format!("REL-R{n}");
        put(
            &b,
            Role::NuisanceOfficer,
            nuisance_ctx(),
            &subject,
            vec![text("report", "nuisance-evidence", "after rotation")],
        )
        .await;
        let keys = a
            .admin()
            .await
            .list_keys(req(
                &so,
                pb::ListKeysRequest {
                    purpose: "nuisance".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        // No nuisance subject key existed before the rotation: every one is B's, and each is
        // under the new version.
        let nuisance = keys
            .purposes
            .iter()
            .find(|p| p.purpose == "nuisance")
            .unwrap();
        let under = |v: u32| {
            nuisance
                .versions
                .iter()
                .find(|k| k.version == v)
                .map_or(0, |k| k.subject_keys)
        };
        under(1) == 0 && under(2) >= 1
    })
    .await;

    // A hold placed on A stops a deletion on B; a consent withdrawn on A stops reads on B.
    let hold_subject = "REL-H1";
    let held = put(
        &b,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        hold_subject,
        vec![text("report", "nuisance-evidence", "held")],
    )
    .await;
    let adaptation = || ctx("home-adaptation", "WV-2026-3", "stair lift assessment");
    a.admin()
        .await
        .record_consent(req(
            a.token(Role::PrivacyOfficer),
            pb::RecordConsentRequest {
                subject_id: hold_subject.into(),
                purpose: "home-adaptation".into(),
                state: "given".into(),
                justification: "signed consent form".into(),
            },
        ))
        .await
        .unwrap();
    let medical = put(
        &b,
        Role::AdaptationAdvisor,
        adaptation(),
        hold_subject,
        vec![text("needs", "medical", "stair lift")],
    )
    .await;
    get(&b, b.token(Role::AdaptationAdvisor), adaptation(), &medical)
        .await
        .unwrap();
    a.admin()
        .await
        .place_hold(req(
            a.token(Role::LegalCounsel),
            pb::PlaceHoldRequest {
                subject_id: hold_subject.into(),
                record_id: String::new(),
                reason: "claim pending".into(),
                case_ref: "LD-2026-9".into(),
            },
        ))
        .await
        .unwrap();
    let mut client = b.client().await;
    let status = client
        .delete_record(req(
            b.token(Role::NuisanceOfficer),
            pb::DeleteRecordRequest {
                context: nuisance_ctx(),
                record_id: held.clone(),
            },
        ))
        .await
        .expect_err("a held record was deleted through the other node");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    a.admin()
        .await
        .record_consent(req(
            a.token(Role::PrivacyOfficer),
            pb::RecordConsentRequest {
                subject_id: hold_subject.into(),
                purpose: "home-adaptation".into(),
                state: "withdrawn".into(),
                justification: "withdrawn by letter".into(),
            },
        ))
        .await
        .unwrap();
    let Err(status) = get(&b, b.token(Role::AdaptationAdvisor), adaptation(), &medical).await
    else {
        panic!("medical data was read through the other node after consent was withdrawn");
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_restart_fails_calls_unavailable_then_kluis_recovers_by_itself() {
    let Some(cluster) = pg::private_cluster("nodes-restart") else {
        return;
    };
    let (_tmp, a, b) = two_nodes(&cluster, None).await;
    let id = put(
        &a,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-D1",
        vec![text("report", "nuisance-evidence", "before the restart")],
    )
    .await;
    // Load on both nodes while the database goes away and comes back: every call either
    // succeeds or answers UNAVAILABLE (never INTERNAL, never a value without its entry).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..6usize {
        let node = if w % 2 == 0 { &a } else { &b };
        let (addr, token) = (node.addr, node.token(Role::NuisanceOfficer).to_owned());
        let (id, stop) = (id.clone(), std::sync::Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let mut c = pb::vault_client::VaultClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let (mut ok, mut unavailable, mut i) = (0usize, 0usize, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let outcome = if w < 3 {
                    c.get_record(req(
                        &token,
                        pb::GetRecordRequest {
                            context: nuisance_ctx(),
                            record_id: id.clone(),
                            fields: vec![],
                        },
                    ))
                    .await
                    .map(drop)
                } else {
                    c.put_record(req(
                        &token,
                        pb::PutRecordRequest {
                            context: nuisance_ctx(),
                            subject_id: format!("REL-DL{w}"),
                            fields: vec![text("report", "nuisance-evidence", &format!("{i}"))],
                            labels: Default::default(),
                        },
                    ))
                    .await
                    .map(drop)
                };
                match outcome {
                    Ok(()) => ok += 1,
                    Err(s) if s.code() == Code::Unavailable => {
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(s) => panic!("under load while the database restarts: {s:?}"),
                }
                i += 1;
            }
            (ok, unavailable)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| cluster.stop());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Health says so while the trail cannot be written.
    assert!(!tokio::task::block_in_place(|| a.vault.is_serving()));
    let Err(status) = get(&a, a.token(Role::NuisanceOfficer), nuisance_ctx(), &id).await else {
        panic!("a read succeeded while the database was down");
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(!status.message().contains("report"), "{status:?}");
    let mut client = a.client().await;
    let status = client
        .put_record(req(
            a.token(Role::NuisanceOfficer),
            pb::PutRecordRequest {
                context: nuisance_ctx(),
                subject_id: "REL-D2".into(),
                fields: vec![text("report", "nuisance-evidence", "while down")],
                labels: Default::default(),
            },
        ))
        .await
        .expect_err("a write succeeded while the database was down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    tokio::task::block_in_place(|| cluster.start());
    // No restart of kluis: the next calls reconnect.
    let deadline = Instant::now() + Duration::from_secs(10);
    let read = loop {
        match get(&a, a.token(Role::NuisanceOfficer), nuisance_ctx(), &id).await {
            Ok(r) => break r,
            Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("after the restart: {s:?}"),
        }
    };
    assert_eq!(
        text_of(field(&read, "report").unwrap()),
        "before the restart"
    );
    assert!(tokio::task::block_in_place(|| a.vault.is_serving()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        let (ok, unavailable) = t.await.unwrap();
        assert!(
            ok > 0 && unavailable > 0,
            "{ok} answered, {unavailable} unavailable"
        );
    }
    put(
        &a,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-D2",
        vec![text("report", "nuisance-evidence", "after the restart")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pg_dump_restored_into_a_new_database_serves_the_same_data() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let tmp = private_tempdir();
    let secret = RootSecret::create_key_file(&tmp.path().join("root.key")).unwrap();
    let mut a = TestServer::start_node(&url, tmp.path(), &secret).await;
    a.issue_role_tokens();
    let id = put(
        &a,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-B1",
        vec![text("report", "nuisance-evidence", "kept in the dump")],
    )
    .await;
    let database = url
        .split_whitespace()
        .find_map(|p| p.strip_prefix("dbname="))
        .unwrap()
        .to_owned();
    let dump = tmp.path().join("kluis.dump");
    tokio::task::block_in_place(|| {
        cluster.dump(&database, &dump);
        cluster.restore(&format!("{database}_restored"), &dump);
    });
    let restored_url = cluster.url(&format!("{database}_restored"));
    let dir = tmp.path().join("restored");
    kluis::config::create_private_dir(&dir).unwrap();
    let mut restored = TestServer::start_node(&restored_url, &dir, &secret).await;
    restored.share_tokens(&a);
    let r = get(
        &restored,
        restored.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &id,
    )
    .await
    .unwrap();
    assert_eq!(text_of(field(&r, "report").unwrap()), "kept in the dump");
    let verified = restored
        .admin()
        .await
        .verify_audit(req(
            restored.token(Role::SecurityOfficer),
            pb::VerifyAuditRequest { expect_head: None },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.intact, "{}", verified.problem);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_the_store_refuses_after_its_entry_is_followed_on_the_trail() {
    refused_on_postgres("records", "RAISE EXCEPTION 'refused for the test'").await;
}

/// The same with a trigger that drops the subject's field rows without an error (a `BEFORE`
/// trigger returning `NULL`): the insert reports no row, and the write is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_rows_the_database_drops_is_not_acknowledged() {
    refused_on_postgres("fields", "RETURN NULL").await;
}

/// The same with the subject's record rows dropped without an error: the write is refused (by
/// the row count of the insert, or by the fields then naming no record).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_record_row_the_database_drops_is_not_acknowledged() {
    refused_on_postgres("records", "RETURN NULL").await;
}

/// Runs `refused_writes_are_followed_on_the_trail` on a node of PostgreSQL with a trigger on
/// `table` that runs `body` for the rows of the refused subject.
async fn refused_on_postgres(table: &str, body: &str) {
    use crate::audit::{REFUSED_SUBJECT, refused_writes_are_followed_on_the_trail};
    use kluis::store::prelude::*;
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let tmp = private_tempdir();
    let secret = RootSecret::create_key_file(&tmp.path().join("root.key")).unwrap();
    let mut a = TestServer::start_node(&url, tmp.path(), &secret).await;
    a.issue_role_tokens();
    // A connection per use, made and dropped off the runtime's threads.
    let db = || postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let sql = |sql: &str| tokio::task::block_in_place(|| db().batch_execute(sql).unwrap());
    // Rows dropped without an error: the database did not keep the write, and says so.
    let refused_as = (body == "RETURN NULL").then_some(Code::DataLoss);
    refused_writes_are_followed_on_the_trail(
        &a,
        false,
        refused_as,
        |on| {
            if on {
                // A field row names its record; the subject is the record's.
                let refused = if table == "records" {
                    format!("NEW.subject = '{REFUSED_SUBJECT}'")
                } else {
                    format!(
                        "(SELECT subject FROM records WHERE id = NEW.record_id) = '{REFUSED_SUBJECT}'"
                    )
                };
                sql(&format!(
                    "CREATE FUNCTION refuse_record() RETURNS trigger LANGUAGE plpgsql AS \
                     $$ BEGIN IF {refused} THEN {body}; END IF; RETURN NEW; END $$; \
                     CREATE TRIGGER refuse_record BEFORE INSERT ON {table} FOR EACH ROW \
                     EXECUTE FUNCTION refuse_record();"
                ));
            } else {
                sql(&format!(
                    "DROP TRIGGER refuse_record ON {table}; DROP FUNCTION refuse_record();"
                ));
            }
        },
        || {
            tokio::task::block_in_place(|| {
                let store = kluis::store::PgStore::connect(&url).unwrap();
                store
                    .audit_entries(1, 100_000)
                    .unwrap()
                    .into_iter()
                    .map(|row| serde_json::from_slice(&row.entry).unwrap())
                    .collect()
            })
        },
        || {
            tokio::task::block_in_place(|| {
                db().query("SELECT id FROM records", &[])
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
            })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rekey_started_on_both_nodes_runs_once() {
    use kluis::store::prelude::*;
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let (_tmp, a, b) = two_nodes_on(&url).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(
            put(
                &a,
                Role::NuisanceOfficer,
                nuisance_ctx(),
                &format!("REL-K{i}"),
                vec![text("report", "nuisance-evidence", &format!("report {i}"))],
            )
            .await,
        );
    }
    let rekey = |node: &TestServer| {
        let addr = node.addr;
        let token = node.token(Role::SecurityOfficer).to_owned();
        async move {
            let mut admin = pb::admin_client::AdminClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let mut stream = admin
                .rekey(req(
                    &token,
                    pb::KeyJobRequest {
                        purpose: "nuisance".into(),
                        justification: "suspected key exposure".into(),
                    },
                ))
                .await?
                .into_inner();
            let mut last = None;
            while let Some(p) = stream.message().await? {
                last = Some(p);
            }
            Ok::<_, tonic::Status>(last)
        }
    };
    // Both at once: the job waits a second before it starts, so the second call comes while
    // the first holds the job.
    let (on_a, on_b) = tokio::join!(rekey(&a), rekey(&b));
    let outcomes = [on_a, on_b];
    let ran: Vec<_> = outcomes.iter().filter(|o| o.is_ok()).collect();
    let refused: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!(ran.len(), 1, "{outcomes:?}");
    assert_eq!(refused.len(), 1, "{outcomes:?}");
    assert_eq!(refused[0].code(), Code::FailedPrecondition);
    assert!(
        refused[0].message().contains("running on another node"),
        "{}",
        refused[0].message()
    );
    // Every subject was rekeyed once: one new generation each, and every value reads back.
    let entries: Vec<serde_json::Value> = tokio::task::block_in_place(|| {
        let store = kluis::store::PgStore::connect(&url).unwrap();
        store
            .audit_entries(1, 100_000)
            .unwrap()
            .into_iter()
            .map(|row| serde_json::from_slice::<serde_json::Value>(&row.entry).unwrap())
            .filter(|e| e["action"] == "key-rekey")
            .collect()
    });
    // Both requests are on the trail; one rekey ran to its end.
    assert_eq!(
        entries.iter().filter(|e| e["principal"] != "kluis").count(),
        2,
        "{entries:?}"
    );
    let done: Vec<_> = entries
        .iter()
        .filter(|e| e["principal"] == "kluis")
        .collect();
    assert_eq!(done.len(), 1, "{entries:?}");
    assert!(
        done[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("12 subjects rekeyed"),
        "{done:?}"
    );
    for (i, id) in ids.iter().enumerate() {
        let r = get(&b, b.token(Role::NuisanceOfficer), nuisance_ctx(), id)
            .await
            .unwrap();
        assert_eq!(text_of(field(&r, "report").unwrap()), format!("report {i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_job_a_dead_node_left_is_taken_over_once_its_lease_expires() {
    use kluis::store::prelude::*;
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let (_tmp, a, _b) = two_nodes_on(&url).await;
    for i in 0..3 {
        put(
            &a,
            Role::NuisanceOfficer,
            nuisance_ctx(),
            &format!("REL-L{i}"),
            vec![text("report", "nuisance-evidence", "x")],
        )
        .await;
    }
    // A node started a rekey (stopped here after its first batch, its job left recorded),
    // then held its lease and died: its lease runs out in two seconds.
    let store = tokio::task::block_in_place(|| kluis::store::PgStore::connect(&url).unwrap());
    tokio::task::block_in_place(|| {
        a.vault
            .rekey(kluis::domain::Purpose::Nuisance, |_| false)
            .unwrap();
        assert_eq!(store.key_jobs().unwrap().len(), 1);
        assert!(
            a.vault
                .take_lease("rekey:nuisance", "node-dead", 2)
                .unwrap()
        );
    });
    let vault = std::sync::Arc::clone(&a.vault);
    let jobs = |v: std::sync::Arc<kluis::vault::Vault>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            v.resume_key_jobs().unwrap();
            let store = kluis::store::PgStore::connect(&url).unwrap();
            store.key_jobs().unwrap()
        })
    };
    // While the dead node's lease runs, the job is left alone.
    let left = jobs(std::sync::Arc::clone(&vault)).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    // Then this node takes it over and finishes it.
    let left = jobs(vault).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    tokio::task::block_in_place(|| drop(store));
}

/// A `kluis` process; killed when dropped.
struct Node {
    child: std::process::Child,
    addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kluis serve` with `args`; waits for the line that names its address, on standard
/// output (`--dev`) or standard error.
fn spawn_node(args: &[&str], dev: bool) -> Node {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kluis"))
        .env_remove("KLUIS_PASSPHRASE")
        .env_remove("KLUIS_DATA_DIR")
        .env_remove("KLUIS_STORE")
        .env("KLUIS_LOG", "warn")
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (prefix, out): (&str, Box<dyn std::io::Read + Send>) = if dev {
        (
            "kluis dev server on http://",
            Box::new(child.stdout.take().unwrap()),
        )
    } else {
        (
            "kluis listening on http://",
            Box::new(child.stderr.take().unwrap()),
        )
    };
    let mut lines = BufReader::new(out).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix(prefix) {
            let addr = rest.split_whitespace().next().unwrap().to_owned();
            std::thread::spawn(move || for _ in lines {});
            return Node { child, addr };
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    let status = child.wait().unwrap();
    panic!("kluis serve {args:?} did not start ({status}): {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_under_load_loses_no_acknowledged_write_and_the_other_keeps_serving() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let tmp = private_tempdir();
    let dev_dir = tmp.path().join("dev");
    let dev = dev_dir.to_str().unwrap();
    // The README's two-node start: a dev node initialises the empty database and writes its
    // tokens and key; a second node joins with that key.
    let a = tokio::task::block_in_place(|| {
        spawn_node(&["--dev", "--store", &url, "--data-dir", dev], true)
    });
    let tokens: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(dev_dir.join("dev-tokens.json")).unwrap()).unwrap();
    let key = dev_dir.join("dev-root.key");
    assert!(key.is_file());
    let b = tokio::task::block_in_place(|| {
        spawn_node(
            &["--store", &url, "--key-file", key.to_str().unwrap()],
            false,
        )
    });
    let officer = tokens["nuisance-officer"].clone();
    let mut on_b = pb::vault_client::VaultClient::connect(format!("http://{}", b.addr))
        .await
        .unwrap();

    // Eight writers, four on each node, for two seconds; A is SIGKILLed (no clean shutdown, no
    // flush) after one. Every write either is acknowledged or fails; what was acknowledged must
    // be there.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8usize {
        let addr = if w % 2 == 0 {
            a.addr.clone()
        } else {
            b.addr.clone()
        };
        let officer = officer.clone();
        let stop = std::sync::Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let mut c = pb::vault_client::VaultClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let (mut acknowledged, mut failed) = (Vec::new(), 0usize);
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let value = format!("writer {w} report {i}");
                let put = c
                    .put_record(req(
                        &officer,
                        pb::PutRecordRequest {
                            context: nuisance_ctx(),
                            subject_id: format!("REL-S{}", i % 7),
                            fields: vec![text("report", "nuisance-evidence", &value)],
                            labels: Default::default(),
                        },
                    ))
                    .await;
                match put {
                    Ok(r) => acknowledged.push((r.into_inner().record_id, value)),
                    Err(_) if w % 2 == 0 => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(s) => panic!("node B stopped serving: {s:?}"),
                }
                i += 1;
            }
            (acknowledged, failed)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(a);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    let (mut on_killed, mut on_survivor) = (0, 0);
    for (w, t) in writers.into_iter().enumerate() {
        let (acks, failed) = t.await.unwrap();
        if w % 2 == 0 {
            on_killed += acks.len();
            assert!(failed > 0, "writer {w} never saw node A go");
        } else {
            on_survivor += acks.len();
        }
        acknowledged.extend(acks);
    }
    assert!(
        on_killed > 0 && on_survivor > on_killed,
        "{on_killed} {on_survivor}"
    );
    for (id, value) in &acknowledged {
        let r = on_b
            .get_record(req(
                &officer,
                pb::GetRecordRequest {
                    context: nuisance_ctx(),
                    record_id: id.clone(),
                    fields: vec![],
                },
            ))
            .await
            .unwrap_or_else(|s| panic!("acknowledged write `{value}` lost: {s:?}"))
            .into_inner();
        assert_eq!(text_of(field(&r, "report").unwrap()), value);
    }
    let mut admin = pb::admin_client::AdminClient::connect(format!("http://{}", b.addr))
        .await
        .unwrap();
    let verified = admin
        .verify_audit(req(
            &tokens["security-officer"],
            pb::VerifyAuditRequest { expect_head: None },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.intact, "{}", verified.problem);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rewrap_on_one_node_beside_reads_on_both_keeps_the_trail_writable() {
    let Some(cluster) = pg::cluster() else { return };
    let (_tmp, a, b) = two_nodes(cluster, None).await;
    let so = a.token(Role::SecurityOfficer).to_owned();
    let mut ids = Vec::new();
    for i in 0..150 {
        ids.push(
            put(
                if i % 2 == 0 { &a } else { &b },
                Role::NuisanceOfficer,
                nuisance_ctx(),
                &format!("REL-W{i}"),
                vec![text("report", "nuisance-evidence", &format!("report {i}"))],
            )
            .await,
        );
    }
    let mut admin = a.admin().await;
    admin
        .rotate_key(req(
            &so,
            pb::RotateKeyRequest {
                purpose: "nuisance".into(),
                algorithm: String::new(),
                justification: "yearly rotation".into(),
            },
        ))
        .await
        .unwrap();
    // Readers on both nodes while A rewraps every subject key in one batch.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..8usize {
        let node = if r % 2 == 0 { &a } else { &b };
        let (addr, token) = (node.addr, node.token(Role::NuisanceOfficer).to_owned());
        let (ids, stop) = (ids.clone(), std::sync::Arc::clone(&stop));
        readers.push(tokio::spawn(async move {
            let mut c = pb::vault_client::VaultClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = &ids[(n * 7 + r) % ids.len()];
                c.get_record(req(
                    &token,
                    pb::GetRecordRequest {
                        context: nuisance_ctx(),
                        record_id: id.clone(),
                        fields: vec![],
                    },
                ))
                .await
                .unwrap_or_else(|s| panic!("a read failed during the rewrap: {s:?}"));
                n += 1;
            }
            n
        }));
    }
    let mut progress = admin
        .rewrap(req(
            &so,
            pb::KeyJobRequest {
                purpose: "nuisance".into(),
                justification: "after the rotation".into(),
            },
        ))
        .await;
    // The rotation's own background rewrap may hold the job: then it finishes there.
    if let Ok(stream) = progress.as_mut() {
        while stream.get_mut().message().await.unwrap().is_some() {}
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let keys = admin
            .list_keys(req(
                &so,
                pb::ListKeysRequest {
                    purpose: "nuisance".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        if keys.purposes[0]
            .versions
            .iter()
            .all(|v| v.version == 2 || v.subject_keys == 0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the rewrap did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    assert!(a.vault.audit_writable() && b.vault.audit_writable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_root_key_changed_on_one_node_stops_the_other_until_it_starts_with_the_new_one() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let (tmp, a, b) = two_nodes_on(&url).await;
    let id = put(
        &a,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-RT1",
        vec![text(
            "report",
            "nuisance-evidence",
            "before the root change",
        )],
    )
    .await;
    get(&b, b.token(Role::NuisanceOfficer), nuisance_ctx(), &id)
        .await
        .unwrap();
    let new_key: [u8; 32] = rand::random();
    crate::rotation::change_root(&a, pb::rotate_root_request::Secret::Key(new_key.to_vec())).await;
    // B holds the old root key: it stops serving within the bound, saying why.
    let took = within_bound("root change", async || {
        get(&b, b.token(Role::NuisanceOfficer), nuisance_ctx(), &id)
            .await
            .is_err_and(|s| {
                s.code() == Code::Unavailable && s.message().contains("root key was replaced")
            })
    })
    .await;
    eprintln!("root change on A stops B after {took:?}");
    assert!(!b.vault.is_serving());
    // A goes on; B, started again with the new key, serves again.
    get(&a, a.token(Role::NuisanceOfficer), nuisance_ctx(), &id)
        .await
        .unwrap();
    let tokens_from = a;
    drop(b.stop().await);
    let key_file = tmp.path().join("new-root.key");
    std::fs::write(&key_file, hex::encode(new_key)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let secret = RootSecret::read_key_file(&key_file).unwrap();
    let mut b = TestServer::start_node(&url, &tmp.path().join("b"), &secret).await;
    b.share_tokens(&tokens_from);
    let r = get(&b, b.token(Role::NuisanceOfficer), nuisance_ctx(), &id)
        .await
        .unwrap();
    assert_eq!(
        text_of(field(&r, "report").unwrap()),
        "before the root change"
    );
}

/// Between a root change on A and B's next look at the store, B meets keys rewrapped under a
/// root it does not hold. That is no tampering: B answers `UNAVAILABLE` (go to another node),
/// never `DATA_LOSS`, which tells an operator to look for an edited store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_meeting_keys_of_a_root_changed_elsewhere_answers_unavailable_not_data_loss() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let (_tmp, a, b) = two_nodes_on(&url).await;
    // Records B has never read: it unwraps their keys only after the change.
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            put(
                &a,
                Role::NuisanceOfficer,
                nuisance_ctx(),
                &format!("REL-RT2-{i}"),
                vec![text("report", "nuisance-evidence", "after the root change")],
            )
            .await,
        );
    }
    // A change B takes in makes it forget the keys it unwrapped (its purpose keys with them);
    // B reads nothing until the root has changed.
    let so = a.token(Role::SecurityOfficer).to_owned();
    a.admin()
        .await
        .issue_token(req(
            &so,
            pb::IssueTokenRequest {
                principal_id: "analyst-8".into(),
                roles: vec!["analyst".into()],
                ttl_seconds: 3600,
                scope_subject_id: String::new(),
                justification: "monthly figures".into(),
            },
        ))
        .await
        .unwrap();
    tokio::time::sleep(IN_FORCE_WITHIN).await;
    let new_key: [u8; 32] = rand::random();
    crate::rotation::change_root(&a, pb::rotate_root_request::Secret::Key(new_key.to_vec())).await;
    let start = Instant::now();
    let mut codes = Vec::new();
    while start.elapsed() < IN_FORCE_WITHIN {
        for id in &ids {
            match get(&b, b.token(Role::NuisanceOfficer), nuisance_ctx(), id).await {
                Ok(_) => codes.push(Code::Ok),
                Err(s) => {
                    assert_ne!(
                        s.code(),
                        Code::DataLoss,
                        "B took the new root's keys for tampering: {s:?}"
                    );
                    codes.push(s.code());
                }
            }
        }
    }
    // B stops at its first call or at its next look at the store (every 250 ms).
    assert_eq!(codes.last(), Some(&Code::Unavailable), "{codes:?}");
    assert!(!b.vault.is_serving());
    eprintln!(
        "B's first answers after the change: {:?}",
        codes.get(..8.min(codes.len()))
    );
}

/// Runs `statement` on the database at `url`, as whoever administers it would.
fn sql_on(url: &str, statement: &str) {
    tokio::task::block_in_place(|| {
        let mut db = postgres::Client::connect(url, postgres::NoTls).unwrap();
        db.batch_execute(statement).unwrap();
    })
}

/// Two nodes on one database deciding by a policy file of their own (the defaults, until a
/// test writes a stricter set with `forbid_contract_reads`), and a contract record of
/// `subject` that customer service may read through either.
struct PolicyNodes {
    /// Holds `policy`.
    _files: tempfile::TempDir,
    /// The nodes' directories and root key.
    nodes_dir: tempfile::TempDir,
    a: TestServer,
    b: TestServer,
    policy: std::path::PathBuf,
    record: String,
}

impl PolicyNodes {
    async fn start(url: &str, subject: &str) -> Self {
        let files = private_tempdir();
        let policy = files.path().join("policies.cedar");
        std::fs::write(&policy, DEFAULT_POLICIES).unwrap();
        let (nodes_dir, a, b) = two_nodes_at(url, Some(&policy)).await;
        let record = put(
            &a,
            Role::CustomerService,
            ctx("contract", "", ""),
            subject,
            vec![text("email", "contact", "someone@example.nl")],
        )
        .await;
        let nodes = Self {
            _files: files,
            nodes_dir,
            a,
            b,
            policy,
            record,
        };
        nodes.read(&nodes.a).await.unwrap();
        nodes
    }

    /// Customer service reads the record through `node`.
    async fn read(&self, node: &TestServer) -> Result<pb::GetRecordResponse, tonic::Status> {
        get(
            node,
            node.token(Role::CustomerService),
            ctx("contract", "", ""),
            &self.record,
        )
        .await
    }

    /// The security officer reloads the policy files on `node`.
    async fn reload(&self, node: &TestServer) -> Result<pb::ReloadPoliciesResponse, tonic::Status> {
        Ok(node
            .admin()
            .await
            .reload_policies(req(
                self.a.token(Role::SecurityOfficer),
                pb::ReloadPoliciesRequest {},
            ))
            .await?
            .into_inner())
    }

    /// Waits, within the bound, for the stricter set to refuse the read on both nodes.
    async fn stricter_set_in_force(&self) {
        for node in [&self.b, &self.a] {
            within_bound("the stricter set", async || {
                self.read(node)
                    .await
                    .is_err_and(|s| s.code() == Code::PermissionDenied)
            })
            .await;
        }
    }
}

/// The policy set in force is one row under a MAC: a copy of it from before a stricter reload,
/// put back by hand, was genuine, and both nodes took up the older set again within a second,
/// the node that made the reload too. The row now carries the set's generation, and no node
/// takes up an older one than it decides by: it goes on deciding by the set in force and
/// stores that again over the copy, so that a node that starts takes it up too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_set_put_back_from_before_a_reload_is_not_taken_up() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let nodes = PolicyNodes::start(&url, "REL-P1").await;
    let (a, b) = (&nodes.a, &nodes.b);
    let sql = |statement: String| sql_on(&url, &statement);
    sql("CREATE TABLE old_policy AS SELECT value FROM meta WHERE key = 'policy_set'".into());
    forbid_contract_reads(&nodes.policy);
    assert!(nodes.reload(b).await.unwrap().changed);
    nodes.stricter_set_in_force().await;
    // The copy put back, and the change announced.
    sql(
        "UPDATE meta SET value = (SELECT value FROM old_policy) WHERE key = 'policy_set';
         UPDATE kluis_epoch SET n = n + 1"
            .into(),
    );
    tokio::time::sleep(IN_FORCE_WITHIN + Duration::from_millis(500)).await;
    for node in [a, b] {
        let Err(refused) = nodes.read(node).await else {
            panic!("the older policy set decided again");
        };
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    // The set in force is stored again: a node that starts now decides by it.
    let secret = RootSecret::read_key_file(&nodes.nodes_dir.path().join("root.key")).unwrap();
    let dir_c = nodes.nodes_dir.path().join("c");
    kluis::config::create_private_dir(&dir_c).unwrap();
    let mut c = TestServer::start_node(&url, &dir_c, &secret).await;
    c.share_tokens(a);
    let Err(refused) = nodes.read(&c).await else {
        panic!("a node that started took up the older policy set");
    };
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}

/// The change epoch is a counter: a trigger that wrote it back after every change (the
/// changing node saw it move, no other node ever did) kept a stricter policy reloaded on one
/// node out of force on the other for good, with nothing logged. A node now also compares a
/// digest of the rows it takes in (metadata, purpose keys): the change is in force on the
/// other node within the bound, the epoch held back or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_whose_epoch_a_trigger_writes_back_is_in_force_on_the_other_node() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let nodes = PolicyNodes::start(&url, "REL-B1").await;
    // Puts the trigger in place (once), and reads the epoch.
    let epoch = || {
        let url = url.clone();
        tokio::task::block_in_place(move || {
            let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            db.batch_execute(
                "CREATE OR REPLACE FUNCTION bounce_epoch() RETURNS trigger LANGUAGE plpgsql AS
                     'BEGIN
                        IF pg_trigger_depth() = 1 THEN UPDATE kluis_epoch SET n = OLD.n; END IF;
                        RETURN NULL;
                      END';
                 DO 'BEGIN
                       IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = ''bounce_epoch'')
                       THEN CREATE TRIGGER bounce_epoch AFTER UPDATE ON kluis_epoch
                            FOR EACH ROW EXECUTE FUNCTION bounce_epoch();
                       END IF;
                     END';",
            )
            .unwrap();
            db.query_one("SELECT n FROM kluis_epoch", &[])
                .unwrap()
                .get::<_, i64>(0)
        })
    };
    let before = epoch();
    forbid_contract_reads(&nodes.policy);
    assert!(nodes.reload(&nodes.b).await.unwrap().changed);
    assert_eq!(epoch(), before, "the trigger did not hold the epoch back");
    nodes.stricter_set_in_force().await;
}

/// A trigger on `meta` that kept the old policy set row (returning `OLD`) let a reload report
/// the stricter set changed and put it in force on the node that made it, while every other
/// node went on deciding by the set the row still held. The store now checks that the database
/// kept what it wrote, in the writing transaction and after its commit (a trigger deferred to
/// the commit): the reload is refused, and every node decides by the same set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_set_a_trigger_keeps_back_is_refused_not_put_in_force_on_one_node() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let nodes = PolicyNodes::start(&url, "REL-K1").await;
    let sql = |statement: &str| sql_on(&url, statement);
    forbid_contract_reads(&nodes.policy);
    for (keeps, drops) in [
        (
            "CREATE FUNCTION keep_policy() RETURNS trigger LANGUAGE plpgsql AS
                 'BEGIN RETURN OLD; END';
             CREATE TRIGGER keep_policy BEFORE UPDATE ON meta FOR EACH ROW
                 WHEN (OLD.key IN ('policy_set', 'policy_digest'))
                 EXECUTE FUNCTION keep_policy();",
            "DROP TRIGGER keep_policy ON meta; DROP FUNCTION keep_policy();",
        ),
        (
            "CREATE FUNCTION put_policy_back() RETURNS trigger LANGUAGE plpgsql AS
                 'BEGIN
                    IF coalesce(current_setting(''test.putting_back'', true), '''') = ''on'' THEN
                      RETURN NULL;
                    END IF;
                    PERFORM set_config(''test.putting_back'', ''on'', true);
                    UPDATE meta SET value = OLD.value WHERE key = OLD.key;
                    RETURN NULL;
                  END';
             CREATE CONSTRAINT TRIGGER put_policy_back AFTER UPDATE ON meta
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                 WHEN (OLD.key IN ('policy_set', 'policy_digest'))
                 EXECUTE FUNCTION put_policy_back();",
            "DROP TRIGGER put_policy_back ON meta; DROP FUNCTION put_policy_back();",
        ),
    ] {
        sql(keeps);
        let refused = nodes.reload(&nodes.b).await.unwrap_err();
        assert_eq!(refused.code(), Code::DataLoss, "{keeps}: {refused:?}");
        tokio::time::sleep(IN_FORCE_WITHIN + Duration::from_millis(300)).await;
        // Neither node decides by the stricter set: the one that asked for it neither.
        for node in [&nodes.b, &nodes.a] {
            nodes
                .read(node)
                .await
                .unwrap_or_else(|e| panic!("{keeps}: the nodes decide by different sets: {e:?}"));
        }
        sql(drops);
    }
    // The twin: without the triggers, the reload is in force on both.
    assert!(nodes.reload(&nodes.b).await.unwrap().changed);
    nodes.stricter_set_in_force().await;
}

/// A node that cannot take in what other nodes changed went on answering from what it held:
/// with the change epoch's row deleted (or kept by a trigger), a stricter policy reloaded on
/// one node was never in force on the other, which reported itself not serving and answered
/// all the same. Now a change the epoch does not announce is refused, and a node that has not
/// taken in the others' changes for the bound answers `UNAVAILABLE` until it can again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_cannot_follow_the_others_answers_unavailable_and_changes_are_refused() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let (_tmp, a, b) = two_nodes_on(&url).await;
    let sql = |statement: &str| sql_on(&url, statement);
    let who = async |node: &TestServer| {
        node.client()
            .await
            .who_am_i(req(node.token(Role::NuisanceOfficer), pb::WhoAmIRequest {}))
            .await
    };
    let tokens_of = |principal: &str| {
        let (url, principal) = (url.clone(), principal.to_owned());
        tokio::task::block_in_place(move || {
            let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            db.query_one(
                "SELECT count(*) FROM tokens WHERE principal = $1",
                &[&principal],
            )
            .unwrap()
            .get::<_, i64>(0)
        })
    };
    // Both nodes serving before the epoch breaks (a node still starting would fail its start).
    who(&a).await.unwrap();
    who(&b).await.unwrap();
    for (breaks, mends) in [
        (
            "DELETE FROM kluis_epoch",
            "INSERT INTO kluis_epoch (n) VALUES (1000)",
        ),
        (
            "CREATE FUNCTION keep_epoch() RETURNS trigger LANGUAGE plpgsql AS
                 'BEGIN NEW.n := OLD.n; RETURN NEW; END';
             CREATE TRIGGER keep_epoch BEFORE UPDATE ON kluis_epoch
                 FOR EACH ROW EXECUTE FUNCTION keep_epoch();",
            "DROP TRIGGER keep_epoch ON kluis_epoch; DROP FUNCTION keep_epoch();",
        ),
    ] {
        sql(breaks);
        // A change through B that the epoch would not announce is not made.
        let refused = b
            .admin()
            .await
            .issue_token(req(
                b.token(Role::SecurityOfficer),
                pb::IssueTokenRequest {
                    principal_id: "emp-unannounced".into(),
                    roles: vec!["nuisance-officer".into()],
                    ttl_seconds: 3600,
                    scope_subject_id: String::new(),
                    justification: "joined the team".into(),
                },
            ))
            .await;
        if breaks.starts_with("CREATE") {
            let Err(refused) = refused else {
                panic!("a change the epoch did not announce was made");
            };
            // As any store that does not keep what kluis wrote (the log names the epoch).
            assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
            assert_eq!(tokens_of("emp-unannounced"), 0);
        } else {
            // The epoch gone: no node can tell what changed, and neither serves.
            assert!(refused.is_err(), "a change was made with the epoch gone");
            assert_eq!(tokens_of("emp-unannounced"), 0);
            for node in [&a, &b] {
                within_bound("answering UNAVAILABLE", async || {
                    who(node)
                        .await
                        .is_err_and(|e| e.code() == Code::Unavailable)
                })
                .await;
            }
        }
        sql(mends);
        for node in [&a, &b] {
            within_bound("serving again", async || who(node).await.is_ok()).await;
        }
        issue(&b, "emp-announced", "nuisance-officer", "joined the team").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evidence_uploaded_through_one_node_streams_from_the_other() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let (_tmp, a, b) = two_nodes_on(&url).await;
    // Three segments and a bit: rows of 64 KiB in the database.
    let bytes = file_bytes(7, 0, 3 * 65_536 + 1234);
    let start = evidence_start(
        nuisance_ctx(),
        "REL-E1",
        "",
        "video",
        "video/mp4",
        "hallway.mp4",
    );
    let up = upload_bytes(&a, a.token(Role::NuisanceOfficer), start, &bytes)
        .await
        .unwrap();
    let (info, down) = download(
        &b,
        b.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &up.evidence_id,
        None,
    )
    .await
    .unwrap();
    assert_eq!(info.size, bytes.len() as u64);
    assert!(down == bytes, "the file read through B differs");
    // A range across a segment boundary.
    let (_, part) = download(
        &b,
        b.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &up.evidence_id,
        Some((65_530, 20)),
    )
    .await
    .unwrap();
    assert_eq!(part, bytes[65_530..65_550]);

    // A rekey on B reseals the file's segments and its name in batches; A still streams it.
    let mut admin = b.admin().await;
    let mut job = admin
        .rekey(req(
            b.token(Role::SecurityOfficer),
            pb::KeyJobRequest {
                purpose: "nuisance".into(),
                justification: "suspected key exposure".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(p) = job.message().await.unwrap() {
        last = Some(p);
    }
    assert!(last.is_some_and(|p| p.finished && p.done == 1));
    let (info, down) = download(
        &a,
        a.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &up.evidence_id,
        None,
    )
    .await
    .unwrap();
    assert_eq!(info.file_name, "hallway.mp4");
    assert!(
        down == bytes,
        "the file read through A after the rekey differs"
    );
    // Its segment rows are exactly those of its size, as `store verify` reads them.
    let bad = bad_rows(&a).await;
    assert!(bad.is_empty(), "{bad:?}");
    // A segment row copied under an index past the file's end is named.
    tokio::task::block_in_place(|| {
        let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let copied = db
            .execute(
                "INSERT INTO evidence_segments (evidence_id, idx, key_gen, sealed)
                 SELECT evidence_id, idx + 100, key_gen, sealed FROM evidence_segments
                 WHERE evidence_id = $1 AND idx = 0",
                &[&up.evidence_id],
            )
            .unwrap();
        assert_eq!(copied, 1);
    });
    let bad = bad_rows(&a).await;
    assert!(
        bad.iter()
            .any(|r| r.kind == "evidence" && r.id == up.evidence_id),
        "{bad:?}"
    );
    // The finished file marked unfinished by hand (the copied row gone again): the listing
    // through the other node is refused rather than leaving it out, and verify names it.
    let sql = |statement: &'static str| {
        let (url, id) = (url.clone(), up.evidence_id.clone());
        tokio::task::block_in_place(move || {
            let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            db.execute(
                "DELETE FROM evidence_segments WHERE evidence_id = $1 AND idx >= 100",
                &[&id],
            )
            .unwrap();
            assert_eq!(db.execute(statement, &[&id]).unwrap(), 1);
        });
    };
    sql("UPDATE evidence SET complete = false WHERE id = $1");
    let listed = list_records(&b, b.token(Role::NuisanceOfficer), nuisance_ctx(), "REL-E1").await;
    assert_eq!(
        listed.expect_err("listed without its file").code(),
        tonic::Code::DataLoss
    );
    let bad = bad_rows(&b).await;
    assert!(
        bad.iter()
            .any(|r| r.kind == "evidence" && r.id == up.evidence_id),
        "{bad:?}"
    );
    // The twin: marked finished again, it is listed with its file.
    sql("UPDATE evidence SET complete = true WHERE id = $1");
    let listed = list_records(&b, b.token(Role::NuisanceOfficer), nuisance_ctx(), "REL-E1")
        .await
        .unwrap();
    assert!(lists_evidence(&listed, &up.evidence_id), "{listed:?}");
}

/// What one read answered, to compare: the fields (name, value, masked) or the status code.
type Outcome = Result<Vec<(String, String, bool)>, Code>;

fn outcome(read: Result<pb::GetRecordResponse, tonic::Status>) -> Outcome {
    match read {
        Ok(r) => {
            let mut fields: Vec<(String, String, bool)> = r
                .fields
                .iter()
                .map(|f| {
                    let value = match &f.value {
                        Some(pb::field_value::Value::Text(t)) => t.clone(),
                        Some(pb::field_value::Value::Binary(b)) => hex::encode(b),
                        None => String::new(),
                    };
                    (f.name.clone(), value, f.masked)
                })
                .collect();
            fields.sort();
            Ok(fields)
        }
        Err(status) => Err(status.code()),
    }
}

/// On PostgreSQL, reads that arrive together share one statement (`store::postgres::group`).
/// An attacker reads beside others: callers of roles the policy allows and of roles it refuses,
/// under one purpose and another, of a record whose field row was edited in the database, of
/// ids that name nothing. Each read, among 24 callers at once over gRPC, answers exactly what
/// the same read answered alone: no value of another read, no error of another read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_that_share_a_statement_answer_each_as_alone() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let tmp = private_tempdir();
    let secret = RootSecret::create_key_file(&tmp.path().join("root.key")).unwrap();
    let mut node = TestServer::start_node(&url, tmp.path(), &secret).await;
    node.issue_role_tokens();

    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(
            put(
                &node,
                Role::NuisanceOfficer,
                nuisance_ctx(),
                &format!("REL-G{i:03}"),
                vec![
                    text("report", "nuisance-evidence", &format!("report {i}")),
                    text("phone", "contact", &format!("06-1000{i:04}")),
                ],
            )
            .await,
        );
        ids.push(
            put(
                &node,
                Role::CustomerService,
                ctx("contract", "", ""),
                &format!("REL-G{i:03}"),
                vec![
                    text("email", "contact", &format!("g{i}@example.nl")),
                    text("name", "identity", &format!("G. Jansen {i}")),
                ],
            )
            .await,
        );
    }
    // A field row edited in the database (a category kluis never writes), and ids that name
    // nothing: one that could be a record's, another spelling of a stored one.
    let edited = ids[4].clone();
    tokio::task::block_in_place(|| {
        let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        db.execute(
            "UPDATE fields SET category = 'gossip' WHERE record_id = $1 AND name = 'phone'",
            &[&edited],
        )
        .unwrap();
    });
    let mut missing = ids[0].clone();
    missing.pop();
    missing.push(if ids[0].ends_with('0') { '1' } else { '0' });
    ids.push(missing);
    ids.push(ids[1].to_uppercase());

    let readers = [
        (Role::NuisanceOfficer, nuisance_ctx()),
        (Role::NuisanceOfficer, ctx("contract", "", "")),
        (Role::CustomerService, ctx("contract", "", "")),
        (Role::CustomerService, nuisance_ctx()),
        (Role::FinanceOfficer, ctx("contract", "", "")),
        (Role::Analyst, ctx("contract", "", "")),
    ];
    let mut client = node.client().await;
    let mut alone = std::collections::HashMap::new();
    for (r, (role, context)) in readers.iter().enumerate() {
        for id in &ids {
            let read = client
                .get_record(req(
                    node.token(*role),
                    pb::GetRecordRequest {
                        context: context.clone(),
                        record_id: id.clone(),
                        fields: vec![],
                    },
                ))
                .await
                .map(tonic::Response::into_inner);
            alone.insert((r, id.clone()), outcome(read));
        }
    }
    // The twin of the reads together: alone, the reads are of every kind the attack needs.
    let answered = alone.values().filter(|o| o.is_ok()).count();
    assert!(answered >= 14, "{answered} reads answered alone");
    assert!(alone.values().any(|o| *o == Err(Code::PermissionDenied)));
    assert!(alone.values().any(|o| *o == Err(Code::NotFound)));
    let edited_alone = &alone[&(0, edited.clone())];
    assert!(
        edited_alone.is_err() && *edited_alone != Err(Code::NotFound),
        "{edited_alone:?}"
    );

    let alone = std::sync::Arc::new(alone);
    let ids = std::sync::Arc::new(ids);
    let tokens: std::sync::Arc<Vec<String>> = std::sync::Arc::new(
        readers
            .iter()
            .map(|(role, _)| node.token(*role).to_owned())
            .collect(),
    );
    let contexts: std::sync::Arc<Vec<Option<pb::AccessContext>>> =
        std::sync::Arc::new(readers.iter().map(|(_, c)| c.clone()).collect());
    let mut tasks = Vec::new();
    for t in 0..24usize {
        let mut client = node.client().await;
        let (alone, ids, tokens, contexts) = (
            std::sync::Arc::clone(&alone),
            std::sync::Arc::clone(&ids),
            std::sync::Arc::clone(&tokens),
            std::sync::Arc::clone(&contexts),
        );
        tasks.push(tokio::spawn(async move {
            let mut wrong = Vec::new();
            for i in 0..60usize {
                let r = (t * 7 + i) % tokens.len();
                let id = &ids[(t * 13 + i * 5) % ids.len()];
                let read = client
                    .get_record(req(
                        &tokens[r],
                        pb::GetRecordRequest {
                            context: contexts[r].clone(),
                            record_id: id.clone(),
                            fields: vec![],
                        },
                    ))
                    .await
                    .map(tonic::Response::into_inner);
                let got = outcome(read);
                let want = &alone[&(r, id.clone())];
                if got != *want {
                    wrong.push(format!("reader {r}, {id}: {got:?}, alone {want:?}"));
                }
            }
            wrong
        }));
    }
    let mut wrong = Vec::new();
    for t in tasks {
        wrong.extend(t.await.unwrap());
    }
    assert!(
        wrong.is_empty(),
        "{} reads answered otherwise together than alone: {wrong:#?}",
        wrong.len()
    );
}
