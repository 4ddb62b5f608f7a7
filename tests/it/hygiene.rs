//! Secret hygiene: a whole scenario against the `kluis` binary with every log at trace level,
//! then a scan of everything it wrote for the values, the tokens and the key.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use kluis::pb::{self, admin_client::AdminClient, vault_client::VaultClient};
use tonic::transport::Channel;

use crate::common::{ctx, evidence_start, nuisance_ctx, req, text};

const VALUE: &str = "Geheime-Diagnose-QX7-hygiene";
const FILE_NAME: &str = "Jansen-QX7-portiek.mp4";
/// A bank account customer service sees masked only: neither it nor its digits may be logged.
const IBAN: &str = "NL91ABNA0417164300";

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `kluis init --json` for a store in `dir` with its root key in `key`, every log at
/// trace level; its answer.
fn init_store(dir: &std::path::Path, key: &std::path::Path) -> serde_json::Value {
    let init = Command::new(env!("CARGO_BIN_EXE_kluis"))
        .args([
            "init",
            "--json",
            "--privacy-officer",
            "emp-po",
            "--data-dir",
        ])
        .arg(dir)
        .arg("--key-file")
        .arg(key)
        .env("KLUIS_LOG", "trace")
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    serde_json::from_slice(&init.stdout).unwrap()
}

/// Starts `kluis serve` on the store in `dir` on a free port of 127.0.0.1, logging at `level`
/// into `log`; the server and its port.
fn serve(
    dir: &std::path::Path,
    key: &std::path::Path,
    level: &str,
    log: &std::path::Path,
) -> (Server, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_kluis"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir)
            .arg("--key-file")
            .arg(key)
            .env("KLUIS_LOG", level)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    (server, port)
}

// The child's output goes to a file while the test talks to it; keep a worker free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_values_tokens_or_keys() {
    let tmp = crate::common::private_tempdir();
    let dir = tmp.path().join("data");
    let key = tmp.path().join("root.key");
    let init = init_store(&dir, &key);
    let so = init["token"].as_str().unwrap().to_owned();
    let po = init["privacy_officer_token"].as_str().unwrap().to_owned();
    let log_path = tmp.path().join("server.log");
    let (server, port) = serve(&dir, &key, "trace", &log_path);
    let deadline = Instant::now() + Duration::from_secs(30);
    let channel = loop {
        match Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("kluis did not come up: {e}"),
        }
    };
    let mut admin = AdminClient::new(channel.clone());
    let officer = admin
        .issue_token(req(
            &so,
            pb::IssueTokenRequest {
                principal_id: "emp-1".into(),
                roles: vec!["nuisance-officer".into()],
                ttl_seconds: 600,
                scope_subject_id: String::new(),
                justification: "hygiene".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    admin
        .approve_token(req(
            &po,
            pb::ApproveTokenRequest {
                token_id: officer.token_id.clone(),
                justification: "hygiene".into(),
            },
        ))
        .await
        .unwrap();
    let officer = officer.token;
    let mut vault = VaultClient::new(channel);
    // A masked view: the finance officer stores an IBAN, customer service reads it masked.
    let mut role_token = async |principal: &str, role: &str| {
        let t = admin
            .issue_token(req(
                &so,
                pb::IssueTokenRequest {
                    principal_id: principal.into(),
                    roles: vec![role.into()],
                    ttl_seconds: 600,
                    scope_subject_id: String::new(),
                    justification: "hygiene".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        admin
            .approve_token(req(
                &po,
                pb::ApproveTokenRequest {
                    token_id: t.token_id.clone(),
                    justification: "hygiene".into(),
                },
            ))
            .await
            .unwrap();
        t.token
    };
    let finance = role_token("emp-2", "finance-officer").await;
    let service = role_token("emp-3", "customer-service").await;
    let contract = vault
        .put_record(req(
            &finance,
            pb::PutRecordRequest {
                context: ctx("contract", "", ""),
                subject_id: "REL-HY".into(),
                fields: vec![text("iban", "financial", IBAN)],
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .record_id;
    let masked = vault
        .get_record(req(
            &service,
            pb::GetRecordRequest {
                context: ctx("contract", "", ""),
                record_id: contract,
                fields: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(masked.fields[0].masked);
    assert_eq!(
        crate::common::text_of(&masked.fields[0]),
        "NL** **** **** **43 00"
    );
    let id = vault
        .put_record(req(
            &officer,
            pb::PutRecordRequest {
                context: nuisance_ctx(),
                subject_id: "REL-HY".into(),
                fields: vec![text("statement", "nuisance-evidence", VALUE)],
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .record_id;
    let read = vault
        .get_record(req(
            &officer,
            pb::GetRecordRequest {
                context: nuisance_ctx(),
                record_id: id.clone(),
                fields: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(crate::common::text_of(&read.fields[0]), VALUE);
    // An evidence file in and out: neither its name nor its content may be logged.
    let content = VALUE.repeat(5000).into_bytes();
    let put = vault
        .put_evidence(req(
            &officer,
            tokio_stream::iter([
                evidence_start(nuisance_ctx(), "REL-HY", "", "clip", "video/mp4", FILE_NAME),
                pb::EvidenceChunk {
                    part: Some(pb::evidence_chunk::Part::Data(content.clone().into())),
                },
                crate::common::evidence_end(content.len() as u64),
            ]),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut stream = vault
        .get_evidence(req(
            &officer,
            pb::GetEvidenceRequest {
                context: nuisance_ctx(),
                evidence_id: put.evidence_id,
                range: Some(pb::ByteRange {
                    offset: 10,
                    length: 100_000,
                }),
                export: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        if let Some(pb::evidence_data::Part::Data(d)) = m.part {
            got.extend_from_slice(&d);
        }
    }
    assert_eq!(got, content[10..100_010]);
    // A refusal, a bad request and a tampering-free rotation add their own log lines.
    let _ = vault
        .get_record(req(
            &officer,
            pb::GetRecordRequest {
                context: ctx("maintenance", "", ""),
                record_id: id.clone(),
                fields: vec![],
            },
        ))
        .await;
    let _ = vault
        .put_record(req(
            &officer,
            pb::PutRecordRequest {
                context: nuisance_ctx(),
                subject_id: "111222333".into(),
                fields: vec![text("statement", "nuisance-evidence", VALUE)],
                labels: Default::default(),
            },
        ))
        .await;
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(server);

    let log = std::fs::read(&log_path).unwrap();
    assert!(
        log.len() > 1000,
        "trace logging produced output ({} bytes)",
        log.len()
    );
    let key_hex = std::fs::read_to_string(&key).unwrap();
    let key_bytes = hex::decode(key_hex.trim()).unwrap();
    let contains = |needle: &[u8]| log.windows(needle.len()).any(|w| w == needle);
    // The scenario was logged: our own lines and the transport's trace lines.
    assert!(
        contains(b"record stored"),
        "kluis's own log lines are there"
    );
    assert!(contains(b"TRACE"), "trace-level lines are there");
    assert!(!contains(VALUE.as_bytes()), "a field value is in the logs");
    assert!(!contains(IBAN.as_bytes()), "a masked IBAN is in the logs");
    assert!(
        !contains(b"0417164300"),
        "the digits of a masked IBAN are in the logs"
    );
    assert!(!contains(officer.as_bytes()), "a token is in the logs");
    assert!(
        !contains(so.as_bytes()),
        "the security officer's token is in the logs"
    );
    assert!(
        !contains(po.as_bytes()),
        "the privacy officer's token is in the logs"
    );
    assert!(
        !contains(key_hex.trim().as_bytes()),
        "the root key (hex) is in the logs"
    );
    assert!(!contains(&key_bytes), "the root key (bytes) is in the logs");
    assert!(!contains(b"111222333"), "a refused BSN is in the logs");
    assert!(
        !contains(FILE_NAME.as_bytes()),
        "an evidence file name is in the logs"
    );
}

/// A name that comes from the database file (here a table someone added to it, whose name holds
/// a line break and a forged log line) is logged on the line of the entry that names it, with
/// the break escaped: it cannot pass for an entry of its own. The twin: the same name is in the
/// log, escaped, so the scan would see a raw one.
#[test]
fn a_name_from_the_database_cannot_forge_a_log_line() {
    const FORGED: &str = "2026-12-06T03:00:00.000000Z  INFO kluis: key rotation done by emp-forged";
    let tmp = crate::common::private_tempdir();
    let dir = tmp.path().join("data");
    let key = tmp.path().join("root.key");
    init_store(&dir, &key);
    let table = format!("notes\n{FORGED}");
    rusqlite::Connection::open(dir.join("kluis.db"))
        .unwrap()
        .execute_batch(&format!("CREATE TABLE \"{table}\" (a)"))
        .unwrap();
    let log_path = tmp.path().join("server.log");
    let (server, _) = serve(&dir, &key, "info", &log_path);
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("emp-forged") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the added table was not logged:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(server);
    assert!(
        log.contains(&format!("notes\\n{FORGED}")),
        "the name is logged escaped on its entry's line:\n{log}"
    );
    for line in log.lines() {
        assert!(!line.starts_with(FORGED), "a forged log line:\n{log}");
    }
}
