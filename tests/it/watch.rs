//! Following the audit trail (`Admin/WatchAudit`, `kluis admin audit tail`): entries arrive as
//! they commit, in order, chained; a watch resumes exactly where it is told; officers only; a
//! reader that stops reading for a while loses nothing; a stopping server ends the watch.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use kluis::{domain::Role, pb};
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

use crate::common::*;

fn watch_req(after_seq: Option<u64>, last: Option<u32>, follow: bool) -> pb::WatchAuditRequest {
    pb::WatchAuditRequest {
        after_seq,
        last,
        follow,
        justification: "shipping to the SIEM".into(),
    }
}

async fn watch(
    server: &TestServer,
    role: Role,
    request: pb::WatchAuditRequest,
) -> Result<Streaming<pb::AuditWatchEntry>, tonic::Status> {
    server
        .admin()
        .await
        .watch_audit(req(server.token(role), request))
        .await
        .map(tonic::Response::into_inner)
}

/// The next `n` entries of `stream`, each within 10 s.
async fn next_entries(
    stream: &mut Streaming<pb::AuditWatchEntry>,
    n: usize,
) -> Vec<pb::AuditWatchEntry> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let entry = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} entries arrived", out.len()))
            .expect("the stream ended early")
            .unwrap();
        out.push(entry);
    }
    out
}

/// What a receiver checks: each entry's hash is its own, and each follows on from the one
/// before.
fn assert_chained(entries: &[pb::AuditWatchEntry]) {
    for e in entries {
        let hash = Sha256::new()
            .chain_update(b"kluis.v1.audit")
            .chain_update(e.seq.to_be_bytes())
            .chain_update(hex::decode(&e.prev_hash).unwrap())
            .chain_update(e.json.as_bytes())
            .finalize();
        assert_eq!(
            hex::encode(hash),
            e.hash,
            "entry {} has its own hash",
            e.seq
        );
    }
    for pair in entries.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "consecutive sequence numbers");
        assert_eq!(
            pair[1].prev_hash, pair[0].hash,
            "entry {} chains",
            pair[1].seq
        );
    }
}

fn action(e: &pb::AuditWatchEntry) -> String {
    let v: serde_json::Value = serde_json::from_str(&e.json).unwrap();
    v["action"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn entries_written_after_the_watch_started_arrive_in_order_and_chained() {
    let server = TestServer::start().await;
    let mut stream = watch(
        &server,
        Role::SecurityOfficer,
        watch_req(None, Some(1), true),
    )
    .await
    .unwrap();
    // First the last entry, which is the watch's own: it says where the watch starts.
    let own = next_entries(&mut stream, 1).await.remove(0);
    assert_eq!(action(&own), "audit-watch");
    assert!(
        own.json.contains(&format!("from entry {}", own.seq)),
        "{}",
        own.json
    );

    for n in 0..5 {
        put(
            &server,
            Role::NuisanceOfficer,
            nuisance_ctx(),
            &format!("REL-20{n}"),
            vec![text("phone", "contact", "06-70707070")],
        )
        .await;
    }
    let mut entries = vec![own];
    entries.extend(next_entries(&mut stream, 5).await);
    assert_chained(&entries);
    assert_eq!(
        entries[1..].iter().map(action).collect::<Vec<_>>(),
        vec!["write"; 5]
    );
    // The hashes are those of the trail: the head names the last one.
    let head = server
        .admin()
        .await
        .audit_head(req(
            server.token(Role::PrivacyOfficer),
            pb::AuditHeadRequest {},
        ))
        .await
        .unwrap()
        .into_inner()
        .head
        .unwrap();
    let last = entries.last().unwrap();
    assert_eq!(
        (head.seq, head.hash.as_str()),
        (last.seq, last.hash.as_str())
    );
    // The head call is itself an entry, after the five writes.
    let more = next_entries(&mut stream, 1).await;
    assert_eq!(more[0].prev_hash, last.hash);
    assert_eq!(action(&more[0]), "audit-head");
    // `last: 0`: nothing of the past, not even its own entry; then what commits.
    let mut from_now = watch(
        &server,
        Role::PrivacyOfficer,
        watch_req(None, Some(0), true),
    )
    .await
    .unwrap();
    put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-209",
        vec![text("phone", "contact", "06-70707070")],
    )
    .await;
    let first = next_entries(&mut from_now, 1).await.remove(0);
    assert_eq!(action(&first), "write");
}

#[tokio::test]
async fn since_resumes_exactly_after_the_entry_named() {
    let server = TestServer::start().await;
    for n in 0..3 {
        put(
            &server,
            Role::NuisanceOfficer,
            nuisance_ctx(),
            &format!("REL-30{n}"),
            vec![text("phone", "contact", "06-70707070")],
        )
        .await;
    }
    // The whole trail, then from a point in its middle: the same entries from there on.
    let all: Vec<_> = watch(
        &server,
        Role::PrivacyOfficer,
        watch_req(Some(0), None, false),
    )
    .await
    .unwrap()
    .map(Result::unwrap)
    .collect()
    .await;
    assert_eq!(all[0].seq, 1);
    assert_chained(&all);
    assert_eq!(
        action(all.last().unwrap()),
        "audit-watch",
        "it ends at its own entry"
    );
    let cut = all[all.len() / 2].seq;
    let resumed: Vec<_> = watch(
        &server,
        Role::PrivacyOfficer,
        watch_req(Some(cut), None, false),
    )
    .await
    .unwrap()
    .map(Result::unwrap)
    .collect()
    .await;
    assert_eq!(resumed[0].seq, cut + 1);
    assert_eq!(resumed[0].prev_hash, all[all.len() / 2].hash);
    let overlap = all.len() - all.len() / 2 - 1;
    assert_eq!(
        resumed[..overlap]
            .iter()
            .map(|e| &e.hash)
            .collect::<Vec<_>>(),
        all[all.len() / 2 + 1..]
            .iter()
            .map(|e| &e.hash)
            .collect::<Vec<_>>()
    );
    // It ends at its own entry, right after the first watch's, and says where it started.
    let own = resumed.last().unwrap();
    assert_eq!(own.seq, all.last().unwrap().seq + 1);
    assert!(
        own.json.contains(&format!("from entry {}", cut + 1)),
        "{}",
        own.json
    );
    // Without `after_seq`: the last `last` entries, ending at its own.
    let tail: Vec<_> = watch(
        &server,
        Role::PrivacyOfficer,
        watch_req(None, Some(3), false),
    )
    .await
    .unwrap()
    .map(Result::unwrap)
    .collect()
    .await;
    assert_eq!(
        tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [own.seq - 1, own.seq, own.seq + 1]
    );
    assert_eq!(action(&tail[2]), "audit-watch");
    assert_chained(&tail);
    // A sequence number beyond the trail is another store's, or a mistake: refused.
    let beyond = watch(
        &server,
        Role::PrivacyOfficer,
        watch_req(Some(own.seq + 100), None, false),
    )
    .await
    .unwrap_err();
    assert_eq!(beyond.code(), Code::InvalidArgument, "{}", beyond.message());
    assert!(
        beyond.message().contains("beyond the trail"),
        "{}",
        beyond.message()
    );
}

#[tokio::test]
async fn an_entry_edited_in_the_database_is_not_sent_and_ends_the_watch_with_data_loss() {
    let server = TestServer::start().await;
    put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-3100",
        vec![text("phone", "contact", "06-70707070")],
    )
    .await;
    let write_seq: i64 = rusqlite::Connection::open(server.trail_path())
        .unwrap()
        .query_row(
            "SELECT max(seq) FROM audit WHERE CAST(entry AS TEXT) LIKE '%\"write\"%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    rusqlite::Connection::open(server.trail_path())
        .unwrap()
        .execute(
            "UPDATE audit SET entry = CAST(replace(CAST(entry AS TEXT), 'REL-3100', 'REL-3199') AS BLOB) \
             WHERE seq = ?1",
            [write_seq],
        )
        .unwrap();
    let mut stream = watch(
        &server,
        Role::SecurityOfficer,
        watch_req(Some(0), None, false),
    )
    .await
    .unwrap();
    let mut sent = Vec::new();
    let status = loop {
        match stream
            .next()
            .await
            .expect("the watch ended without an error")
        {
            Ok(e) => sent.push(e.seq),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DataLoss, "{}", status.message());
    // Everything before it, nothing from it on.
    let expected: Vec<u64> = (1..u64::try_from(write_seq).unwrap()).collect();
    assert_eq!(sent, expected);
}

#[tokio::test]
async fn only_the_privacy_and_security_officers_may_watch() {
    let server = TestServer::start().await;
    for role in [
        Role::NuisanceOfficer,
        Role::CustomerService,
        Role::Auditor,
        Role::Analyst,
        Role::LegalCounsel,
    ] {
        let status = watch(&server, role, watch_req(None, None, true))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{role:?}");
    }
    let denied = audit_entries(&server)
        .into_iter()
        .filter(|e| e["action"] == "audit-watch" && e["decision"] == "deny")
        .count();
    assert_eq!(denied, 5, "each refusal is on the trail");
    for role in [Role::PrivacyOfficer, Role::SecurityOfficer] {
        watch(&server, role, watch_req(None, None, false))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_reader_that_stops_reading_for_a_while_loses_nothing() {
    let server = TestServer::start().await;
    let mut stream = watch(
        &server,
        Role::SecurityOfficer,
        watch_req(None, Some(1), true),
    )
    .await
    .unwrap();
    let own = next_entries(&mut stream, 1).await.remove(0);
    // Far more entries than the server queues for a watch (two pages of 256) and than HTTP/2's
    // windows hold (about 4 MiB of entries of some 300 bytes), written while nobody reads.
    let (writers, each) = (16, 250);
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let mut admin = server.admin().await;
        let token = server.token(Role::PrivacyOfficer).to_owned();
        tasks.push(tokio::spawn(async move {
            for _ in 0..each {
                admin
                    .audit_head(req(&token, pb::AuditHeadRequest {}))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut entries = vec![own];
    entries.extend(next_entries(&mut stream, writers * each).await);
    assert_chained(&entries);
    assert!(entries[1..].iter().all(|e| action(e) == "audit-head"));
}

#[tokio::test]
async fn a_stopping_server_ends_a_watch_saying_where_to_resume() {
    let server = TestServer::start().await;
    let mut stream = watch(
        &server,
        Role::SecurityOfficer,
        watch_req(None, Some(1), true),
    )
    .await
    .unwrap();
    let own = next_entries(&mut stream, 1).await.remove(0);
    // The server stops without waiting for the watch to end by itself.
    tokio::time::timeout(Duration::from_secs(20), server.stop())
        .await
        .expect("a watch kept the server from stopping");
    let Err(status) = stream.next().await.unwrap() else {
        panic!("an entry after the server stopped");
    };
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .contains(&format!("resume after entry {}", own.seq)),
        "{}",
        status.message()
    );
}

fn kluis_admin(server: &TestServer, role: Role) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kluis"));
    c.env_remove("KLUIS_TOKEN_FILE")
        .env("KLUIS_LOG", "warn")
        .env("KLUIS_TOKEN", server.token(role))
        .env("KLUIS_SERVER", format!("http://{}", server.addr))
        .arg("admin");
    c
}

// Several threads: the server runs in this process while the test waits for the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tail_prints_one_json_object_per_line_and_follows() {
    let server = TestServer::start().await;
    let out = kluis_admin(&server, Role::SecurityOfficer)
        .args(["audit", "tail", "-n", "5", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for l in &lines {
        assert!(l["seq"].is_u64() && l["hash"].is_string() && l["prev_hash"].is_string());
        let entry: serde_json::Value = serde_json::from_str(l["json"].as_str().unwrap()).unwrap();
        assert!(entry["action"].is_string());
    }
    let last = lines.last().unwrap()["seq"].as_u64().unwrap();

    // Following: an entry written afterwards arrives on its own line as it commits.
    let mut child = kluis_admin(&server, Role::SecurityOfficer)
        .args(["audit", "tail", "--follow", "--json", "--since"])
        .arg(last.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let line = |rx: &std::sync::mpsc::Receiver<String>| -> serde_json::Value {
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(20)).unwrap()).unwrap()
    };
    let own = line(&rx);
    assert_eq!(
        own["seq"].as_u64(),
        Some(last + 1),
        "--since resumes after SEQ"
    );
    put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-4000",
        vec![text("phone", "contact", "06-70707070")],
    )
    .await;
    let write = line(&rx);
    assert_eq!(write["seq"].as_u64(), Some(last + 2));
    assert_eq!(write["prev_hash"], own["hash"]);
    assert!(write["json"].as_str().unwrap().contains("\"write\""));
    let _ = child.kill();
    let _ = child.wait();

    // A role that may not read the trail: refused, with the refusal's exit code.
    let out = kluis_admin(&server, Role::NuisanceOfficer)
        .args(["audit", "tail"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

/// A watch with `follow` never ends by itself, and each reads the trail again after every
/// commit: one officer's token opening watches without end held the node's memory and its
/// store's reads (an outside review). Past `limits.max_watches_per_caller` the next is refused at
/// once, before its entry is written, saying which limit and what to do; another officer still
/// watches; the cap in all holds across callers; a closed watch gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_officer_keeps_at_most_its_share_of_watches_open() {
    let server = TestServer::start_with_limits(kluis::config::RawLimits {
        max_watches: Some(3),
        max_watches_per_caller: Some(2),
        ..kluis::config::RawLimits::default()
    })
    .await;
    let watches = |server: &TestServer| {
        audit_entries(server)
            .into_iter()
            .filter(|e| e["action"] == "audit-watch")
            .count()
    };
    // Two followed and never read past their first entry.
    let mut held = Vec::new();
    for n in 0..2 {
        let mut stream = watch(&server, Role::SecurityOfficer, watch_req(None, None, true))
            .await
            .unwrap_or_else(|s| panic!("watch {n}: {s:?}"));
        next_entries(&mut stream, 1).await;
        held.push(stream);
    }
    assert_eq!(watches(&server), 2);
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        watch(&server, Role::SecurityOfficer, watch_req(None, None, true)),
    )
    .await
    .expect("a third watch was neither refused nor begun")
    .expect_err("a third watch was begun");
    assert_exhausted(
        &refused,
        &["`limits.max_watches_per_caller`", "close a watch"],
    );
    // A watch without `follow` takes a place too, while it is sent.
    let refused = watch(
        &server,
        Role::SecurityOfficer,
        watch_req(None, Some(1), false),
    )
    .await
    .expect_err("a watch without follow was begun past the cap");
    assert_exhausted(&refused, &["`limits.max_watches_per_caller`"]);
    // Refused before anything was read or written: the trail has the two watches, not more.
    assert_eq!(watches(&server), 2);

    // Another officer has places of its own, up to the cap in all.
    let mut other = watch(&server, Role::PrivacyOfficer, watch_req(None, None, true))
        .await
        .expect("another officer's watch was refused");
    next_entries(&mut other, 1).await;
    let refused = watch(&server, Role::PrivacyOfficer, watch_req(None, None, true))
        .await
        .expect_err("a watch past the cap in all was begun");
    assert_exhausted(&refused, &["`limits.max_watches`"]);

    // A closed watch gives its place back once its task sees the client gone.
    drop(held.pop());
    let mut again = once_a_place_is_free("a closed watch's place", || {
        watch(&server, Role::SecurityOfficer, watch_req(None, None, true))
    })
    .await;
    next_entries(&mut again, 1).await;
}

/// One security officer cannot take every watch place by issuing tokens to principals of its
/// own: security officers together hold at most the cap in all less one officer's share, so
/// that the privacy officers can always watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_officers_of_one_role_leave_the_other_role_room_to_watch() {
    use kluis::{domain::PrincipalId, vault::tokens::TokenSpec};
    let server = TestServer::start_with_limits(kluis::config::RawLimits {
        max_watches: Some(6),
        max_watches_per_caller: Some(2),
        ..kluis::config::RawLimits::default()
    })
    .await;
    let mut held = Vec::new();
    for n in 0..3 {
        // Fillers, as the officer would issue them (no second person needed for this role).
        let filler = server
            .vault
            .bootstrap_token(&TokenSpec {
                principal: PrincipalId::parse("p", &format!("filler-{n}")).unwrap(),
                roles: vec![Role::SecurityOfficer],
                ttl_secs: 3600,
                scope_subject: None,
            })
            .unwrap();
        for _ in 0..2 {
            let opened = server
                .admin()
                .await
                .watch_audit(req(
                    filler.token.expose_secret(),
                    watch_req(None, Some(1), true),
                ))
                .await;
            match (held.len(), opened) {
                (0..4, Ok(stream)) => held.push(stream.into_inner()),
                (0..4, Err(status)) => panic!("watch {}: {status:?}", held.len()),
                (_, Ok(_)) => panic!("security officers took more than 6 - 2 places"),
                (_, Err(status)) => assert_exhausted(
                    &status,
                    &["`limits.max_watches`", "kept for the other role"],
                ),
            }
        }
    }
    assert_eq!(held.len(), 4);
    // The privacy officer has its share, two places.
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut stream = watch(&server, Role::PrivacyOfficer, watch_req(None, None, true))
            .await
            .expect("the privacy officer's watch was refused");
        next_entries(&mut stream, 1).await;
        kept.push(stream);
    }
    server.stop().await;
}

/// Reads `stream` while entries keep being written, until it ends; returns how it ended, how
/// long after `from` it did, and the sequence numbers it delivered meanwhile. Fails when it has
/// not ended within 10 s.
async fn ends_within(
    server: &TestServer,
    stream: &mut Streaming<pb::AuditWatchEntry>,
    from: std::time::Instant,
) -> (tonic::Status, Duration, Vec<u64>) {
    let mut admin = server.admin().await;
    let writer = server.token(Role::PrivacyOfficer).to_owned();
    let mut delivered = Vec::new();
    loop {
        assert!(
            from.elapsed() < Duration::from_secs(10),
            "the watch still runs {:?} later",
            from.elapsed()
        );
        // An entry to follow: the head, read by another officer, is audited.
        admin
            .audit_head(req(&writer, pb::AuditHeadRequest {}))
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
            Err(_) => {}
            Ok(Some(Ok(entry))) => delivered.push(entry.seq),
            Ok(Some(Err(status))) => return (status, from.elapsed(), delivered),
            Ok(None) => panic!("the watch ended without saying why"),
        }
    }
}

/// A watch is judged again while it runs: once its token is revoked, or has expired, it ends
/// within about a second with UNAUTHENTICATED instead of streaming the trail on, and gives its
/// place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ends_once_its_token_is_revoked_or_has_expired() {
    use kluis::{domain::PrincipalId, vault::tokens::TokenSpec};
    let server = TestServer::start().await;
    let issue = |principal: &str, ttl_secs| {
        server
            .vault
            .bootstrap_token(&TokenSpec {
                principal: PrincipalId::parse("p", principal).unwrap(),
                roles: vec![Role::SecurityOfficer],
                ttl_secs,
                scope_subject: None,
            })
            .unwrap()
    };
    let try_open = |token: String| {
        let server = &server;
        async move {
            server
                .admin()
                .await
                .watch_audit(req(&token, watch_req(None, Some(1), true)))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let open = |token: String| async move { try_open(token).await.unwrap() };

    // Revoked by another officer.
    let revoked = issue("watcher-revoked", 3600);
    let mut stream = open(revoked.token.expose_secret().to_owned()).await;
    next_entries(&mut stream, 1).await;
    server
        .admin()
        .await
        .revoke_token(req(
            server.token(Role::SecurityOfficer),
            pb::RevokeTokenRequest {
                token_id: revoked.id.clone(),
                justification: "left the company".into(),
            },
        ))
        .await
        .unwrap();
    let (status, after, delivered) =
        ends_within(&server, &mut stream, std::time::Instant::now()).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(after < Duration::from_secs(5), "ended {after:?} after");
    assert!(stream.next().await.is_none(), "the watch went on");
    // A revocation is in force for the watch at once: no entry written after it was made
    // went out (the revocation's own entry may have, committed just before).
    let revoked_at = audit_entries(&server)
        .iter()
        .enumerate()
        .find(|(_, e)| e["action"] == "token-revoke" && e["target"] == revoked.id.as_str())
        .map(|(i, _)| i as u64 + 1)
        .expect("the revocation is on the trail");
    assert!(
        delivered.iter().all(|&seq| seq <= revoked_at),
        "entries after the revocation ({revoked_at}) went out: {delivered:?}"
    );
    // The trail says the watch was cut off, and why.
    assert!(
        audit_entries(&server)
            .iter()
            .any(|e| e["action"] == "audit-watch"
                && e["decision"] == "deny"
                && e["principal"] == "watcher-revoked"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("the call ended"))),
        "no entry says the watch was cut off"
    );

    // Expired: a token of a few seconds.
    let expiring = issue("watcher-expiring", 3);
    let opened = std::time::Instant::now();
    let mut stream = open(expiring.token.expose_secret().to_owned()).await;
    next_entries(&mut stream, 1).await;
    let (status, after, _) = ends_within(&server, &mut stream, opened).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        after >= Duration::from_secs(2),
        "ended {after:?} after it opened"
    );
    assert!(stream.next().await.is_none(), "the watch went on");

    // Their places are free again: the revoked principal's share is whole for a new token.
    let again = issue("watcher-revoked", 3600);
    let token = again.token.expose_secret().to_owned();
    let mut open_now = Vec::new();
    for _ in 0..8 {
        open_now.push(once_a_place_is_free("a watch", || try_open(token.clone())).await);
    }
    drop(open_now);
    server.stop().await;
}

/// A policy set reloaded while a watch runs is in force for it too: once the officer may no
/// longer read the trail, the watch ends with PERMISSION_DENIED, and the denial is on the trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ends_once_the_policy_no_longer_lets_its_caller_read_the_trail() {
    use kluis::policy::DEFAULT_POLICIES;
    let tmp = private_tempdir();
    let file = tmp.path().join("policies.cedar");
    std::fs::write(&file, DEFAULT_POLICIES).unwrap();
    let server = TestServer::start_with_policies(vec![file.clone()]).await;
    let mut stream = watch(
        &server,
        Role::SecurityOfficer,
        watch_req(None, Some(1), true),
    )
    .await
    .unwrap();
    next_entries(&mut stream, 1).await;
    std::fs::write(
        &file,
        format!(
            "{DEFAULT_POLICIES}\n@id(\"no-trail-for-security\")\nforbid (principal in \
             Kluis::Role::\"security-officer\", action == Kluis::Action::\"read-audit\", \
             resource);\n"
        ),
    )
    .unwrap();
    let changed = server
        .admin()
        .await
        .reload_policies(req(
            server.token(Role::PrivacyOfficer),
            pb::ReloadPoliciesRequest {},
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(changed.changed);
    let (status, after, _) = ends_within(&server, &mut stream, std::time::Instant::now()).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("no-trail-for-security"),
        "{status:?}"
    );
    assert!(after < Duration::from_secs(5), "ended {after:?} after");
    assert!(stream.next().await.is_none(), "the watch went on");
    let entries = audit_entries(&server);
    let denied = entries
        .iter()
        .find(|e| e["action"] == "audit-watch" && e["decision"] == "deny")
        .expect("the denial is on the trail");
    assert_eq!(denied["principal"], "test-security-officer");
    assert!(
        denied["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("the call ended")),
        "{denied}"
    );
    server.stop().await;
}
