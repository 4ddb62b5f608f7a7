//! Prometheus metrics from outside: the `kluis` binary with `[metrics] listen` (here
//! `KLUIS_METRICS_LISTEN`), scraped over HTTP. Calls are counted by method and status code,
//! authentication failures by reason, the sealed state and the audit trail are shown, no label
//! names a subject, record, principal or token, and every metric the Grafana dashboard and the
//! alert rules in `deploy/` use exists.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use kluis::pb::{self, vault_client::VaultClient};

use crate::{
    common::*,
    rotation::{Process, connect, free_port},
};

fn serve_dev(dir: &Path, metrics_port: u16) -> (Process, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_kluis"))
        .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.join("dev"))
        .env("KLUIS_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
        .env("KLUIS_LOG", "warn")
        .env_remove("KLUIS_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Process(child), port)
}

/// The exposition at `http://127.0.0.1:PORT/metrics`, once the listener answers.
fn scrape(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ureq::get(&format!("http://127.0.0.1:{port}/metrics")).call() {
            Ok(mut r) => {
                let kind = r
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
                return r.body_mut().read_to_string().unwrap();
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "no metrics: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The value of the sample `name{labels}` (labels as written, in order), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The metric families the exposition declares (`# TYPE name kind`), with the names their
/// samples carry.
fn families(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                _ => &[],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        }
    }
    names
}

/// Every `kluis_…` metric name in `text`.
fn names_used(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("kluis_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        used.insert(text[start..end].to_owned());
        i = end;
    }
    used
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_counted_by_method_and_code_and_no_label_names_a_person() {
    let tmp = private_tempdir();
    let metrics_port = free_port();
    let (_server, port) = serve_dev(tmp.path(), metrics_port);
    let channel = connect(port).await;
    let tokens: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(
        &std::fs::read(tmp.path().join("dev").join("dev-tokens.json")).unwrap(),
    )
    .unwrap();
    let token = |role: &str| tokens[role].as_str().unwrap().to_owned();
    let officer = token("nuisance-officer");
    let mut client = VaultClient::new(channel);
    let put = client
        .put_record(req(
            &officer,
            pb::PutRecordRequest {
                context: nuisance_ctx(),
                subject_id: "REL-7734".into(),
                fields: vec![text(
                    "note",
                    "nuisance-evidence",
                    "shouting at the neighbours",
                )],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let read = |token: String| {
        let mut client = client.clone();
        let id = put.record_id.clone();
        async move {
            client
                .get_record(req(
                    &token,
                    pb::GetRecordRequest {
                        context: nuisance_ctx(),
                        record_id: id,
                        fields: vec![],
                    },
                ))
                .await
        }
    };
    read(officer.clone()).await.unwrap();
    // Customer service may not read nuisance evidence: refused, and counted as a deny.
    let _ = read(token("customer-service")).await;
    let Err(bad) =
        read("kluis_0000000000000000000000000000000000000000000000000000000000000000".into()).await
    else {
        panic!("an unknown token was let in");
    };
    assert_eq!(bad.code(), tonic::Code::Unauthenticated);

    let text = scrape(metrics_port);
    let calls = |method: &str, code: &str| {
        sample(
            &text,
            &format!(
                "kluis_grpc_calls_total{{service=\"kluis.v1.Vault\",method=\"{method}\",code=\"{code}\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    assert!(calls("PutRecord", "OK") >= 1.0, "{text}");
    assert!(calls("GetRecord", "OK") >= 1.0, "{text}");
    assert!(calls("GetRecord", "PERMISSION_DENIED") >= 1.0, "{text}");
    assert!(calls("GetRecord", "UNAUTHENTICATED") >= 1.0, "{text}");
    assert!(
        sample(
            &text,
            "kluis_authentication_failures_total{reason=\"unknown-token\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("kluis_policy_decisions_total{action=\"read\",effect=\"deny\"")),
        "{text}"
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("kluis_grpc_call_duration_seconds_bucket{")
                && l.contains("method=\"GetRecord\"")
        ),
        "{text}"
    );
    assert!(
        sample(&text, "kluis_audit_appends_total").unwrap_or(0.0) >= 3.0,
        "{text}"
    );
    assert_eq!(sample(&text, "kluis_audit_writable"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "kluis_sealed"), Some(0.0), "{text}");
    // No subject, record, principal, token or value in any label or sample.
    for secret in [
        "REL-7734",
        put.record_id.as_str(),
        "dev-nuisance-officer",
        officer.as_str(),
        "shouting",
    ] {
        assert!(!text.contains(secret), "{secret} is in the metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_use_exists() {
    let tmp = private_tempdir();
    let metrics_port = free_port();
    let (_server, port) = serve_dev(tmp.path(), metrics_port);
    let channel = connect(port).await;
    let tokens: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(
        &std::fs::read(tmp.path().join("dev").join("dev-tokens.json")).unwrap(),
    )
    .unwrap();
    let token = |role: &str| tokens[role].as_str().unwrap().to_owned();
    // A family shows once it has a sample: make every kind of event happen once (a write and a
    // read, a refused token, a key rotation; sweeps and key jobs run at start).
    let mut client = VaultClient::new(channel.clone());
    let officer = token("nuisance-officer");
    let id = client
        .put_record(req(
            &officer,
            pb::PutRecordRequest {
                context: nuisance_ctx(),
                subject_id: "REL-7735".into(),
                fields: vec![text("note", "nuisance-evidence", "a note")],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .record_id;
    client
        .get_record(req(
            &officer,
            pb::GetRecordRequest {
                context: nuisance_ctx(),
                record_id: id,
                fields: vec![],
            },
        ))
        .await
        .unwrap();
    let _ = client
        .who_am_i(req("kluis_not-a-token", pb::WhoAmIRequest {}))
        .await;
    pb::admin_client::AdminClient::new(channel)
        .rotate_key(req(
            &token("security-officer"),
            pb::RotateKeyRequest {
                purpose: "nuisance".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = scrape(metrics_port);
    while !text.contains("kluis_sweeps_total") || !text.contains("kluis_key_job_done") {
        assert!(
            Instant::now() < deadline,
            "sweeps and key jobs never showed:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
        text = scrape(metrics_port);
    }
    let known = families(&text);
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut checked = 0;
    for file in ["grafana-dashboard.json", "prometheus-alerts.yml"] {
        let content = std::fs::read_to_string(deploy.join(file)).unwrap();
        if file.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&content).expect("the dashboard is JSON");
        }
        let used = names_used(&content);
        assert!(!used.is_empty(), "{file} uses no kluis metric");
        for name in used {
            assert!(
                known.contains(&name),
                "{file} uses `{name}`, which kluis does not export; it exports {known:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} uses checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_node_says_so_in_its_metrics() {
    let tmp = private_tempdir();
    let dir = tmp.path();
    let shares = dir.join("shares");
    let o = Command::new(env!("CARGO_BIN_EXE_kluis"))
        .args(["init", "--json", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--shares", "2", "--threshold", "2", "--share-dir"])
        .arg(&shares)
        .env("KLUIS_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success());
    let metrics_port = free_port();
    let port = free_port();
    let _server = Process(
        Command::new(env!("CARGO_BIN_EXE_kluis"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.join("data"))
            .env("KLUIS_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
            .env("KLUIS_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _ = connect(port).await;
    let text = scrape(metrics_port);
    assert_eq!(sample(&text, "kluis_sealed"), Some(1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_audit_appends_are_counted_by_kind() {
    let tmp = private_tempdir();
    let metrics_port = free_port();
    let (_server, port) = serve_dev(tmp.path(), metrics_port);
    let channel = connect(port).await;
    let data = tmp.path().join("dev");
    let tokens: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(data.join("dev-tokens.json")).unwrap()).unwrap();
    let officer = tokens["nuisance-officer"].as_str().unwrap().to_owned();
    let client = VaultClient::new(channel);
    let write = |subject: &str| {
        let mut client = client.clone();
        let request = req(
            &officer,
            pb::PutRecordRequest {
                context: nuisance_ctx(),
                subject_id: subject.into(),
                fields: vec![text("phone", "contact", "06-1")],
                ..Default::default()
            },
        );
        async move { client.put_record(request).await }
    };
    write("REL-5001").await.unwrap();
    // Both kinds are there from the start, at zero (a series that first appears at 1 would
    // show no `increase()` to the alerts).
    let failures = |kind: &str| {
        sample(
            &scrape(metrics_port),
            &format!("kluis_audit_append_failures_total{{kind=\"{kind}\"}}"),
        )
        .unwrap_or_else(|| panic!("no series of kind {kind}"))
    };
    assert_eq!(failures("unavailable"), 0.0);
    assert_eq!(failures("broken"), 0.0);
    let trail = rusqlite::Connection::open(data.join("kluis.db.trail")).unwrap();
    // A trigger on the trail: kluis refuses to write past it, and the trail is unavailable.
    trail
        .execute_batch(
            "CREATE TRIGGER quiet BEFORE INSERT ON audit BEGIN SELECT RAISE(IGNORE); END",
        )
        .unwrap();
    let refused = write("REL-5002").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(failures("unavailable") >= 1.0);
    assert_eq!(failures("broken"), 0.0);
    // Its last entry deleted: the trail is broken.
    trail
        .execute_batch(
            "DROP TRIGGER quiet; DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)",
        )
        .unwrap();
    let refused = write("REL-5003").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::DataLoss, "{refused:?}");
    assert!(failures("broken") >= 1.0);
}
