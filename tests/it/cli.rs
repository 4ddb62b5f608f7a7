//! The `kluis` binary: `init`, `serve` (with a wrong passphrase, and `--dev` across a restart),
//! `admin token` against a running server, and `policy validate`.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use kluis::pb;

use crate::common::{ctx, req, text};

fn kluis() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kluis"));
    c.env_remove("KLUIS_PASSPHRASE")
        .env_remove("KLUIS_TOKEN")
        .env_remove("KLUIS_DATA_DIR")
        .env("KLUIS_LOG", "warn");
    c
}

struct Running(Child, String);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `kluis serve --dev` and waits for its banner; returns the process and its address.
fn serve_dev(dir: &Path) -> Running {
    let mut child = kluis()
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("kluis serve --dev exited before its banner")
            .unwrap();
        if let Some(rest) = line.strip_prefix("kluis dev server on http://") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Running(child, addr)
}

fn dev_tokens(dir: &Path) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_slice(&std::fs::read(dir.join("dev-tokens.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn serve_dev_is_ready_to_use_and_keeps_data_across_restarts() {
    let tmp = crate::common::private_tempdir();
    let dir = tmp.path().join("dev");
    let server = serve_dev(&dir);
    let tokens = dev_tokens(&dir);
    assert_eq!(
        tokens.len(),
        kluis::domain::Role::ALL.len(),
        "one token per role"
    );
    let officer = tokens["nuisance-officer"].as_str().unwrap().to_owned();

    let mut client = pb::vault_client::VaultClient::connect(format!("http://{}", server.1))
        .await
        .unwrap();
    let id = client
        .put_record(req(
            &officer,
            pb::PutRecordRequest {
                context: ctx("nuisance", "N-1", "complaint"),
                subject_id: "REL-0001".into(),
                fields: vec![text("phone", "contact", "06-40404040")],
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .record_id;

    // The admin command works against it with the security officer's token, and refuses others.
    let so = tokens["security-officer"].as_str().unwrap();
    let out = kluis()
        .args([
            "admin",
            "--server",
            &format!("http://{}", server.1),
            "token",
            "list",
        ])
        .env("KLUIS_TOKEN", so)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("dev-nuisance-officer"));
    // Its output piped into a reader that has gone (`| head -0`): a quiet end, status 0. The
    // server may also be named after the subcommand.
    let mut piped = kluis()
        .args([
            "admin",
            "token",
            "list",
            "--server",
            &format!("http://{}", server.1),
        ])
        .env("KLUIS_TOKEN", so)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(piped.stdout.take());
    let closed = piped.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&closed.stderr);
    assert_eq!(closed.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = kluis()
        .args([
            "admin",
            "--server",
            &format!("http://{}", server.1),
            "token",
            "list",
        ])
        .env("KLUIS_TOKEN", &officer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "denied has its own exit code");
    drop(server);

    let server = serve_dev(&dir);
    assert_eq!(
        dev_tokens(&dir)["nuisance-officer"].as_str().unwrap(),
        officer,
        "tokens are kept"
    );
    let mut client = pb::vault_client::VaultClient::connect(format!("http://{}", server.1))
        .await
        .unwrap();
    let resp = client
        .get_record(req(
            &officer,
            pb::GetRecordRequest {
                context: ctx("nuisance", "N-1", "follow-up"),
                record_id: id,
                fields: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.fields.len(), 1);
}

#[test]
fn serve_refuses_a_wrong_passphrase_with_a_clear_error() {
    let tmp = crate::common::private_tempdir();
    let dir = tmp.path().join("store");
    let right = tmp.path().join("right");
    let wrong = tmp.path().join("wrong");
    std::fs::write(&right, "a long and correct passphrase\n").unwrap();
    std::fs::write(&wrong, "a long and wrong passphrase\n").unwrap();

    // A secret file others can read is refused, with what to do.
    let open = kluis()
        .args(["init", "--data-dir"])
        .arg(&dir)
        .arg("--passphrase-file")
        .arg(&right)
        .output()
        .unwrap();
    assert_eq!(open.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&open.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [&right, &wrong] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    let out = kluis()
        .args(["init", "--json", "--data-dir"])
        .arg(&dir)
        .arg("--passphrase-file")
        .arg(&right)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let init: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(init["token"].as_str().unwrap().starts_with("kluis_"));

    let again = kluis()
        .args(["init", "--data-dir"])
        .arg(&dir)
        .arg("--passphrase-file")
        .arg(&right)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already initialised"));

    let out = kluis()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .arg("--passphrase-file")
        .arg(&wrong)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrong passphrase or key file"), "{stderr}");
    assert!(
        !stderr.contains("a long and wrong passphrase"),
        "the passphrase is echoed"
    );
}

#[test]
fn policy_validate_reports_cedar_errors() {
    let ok = kluis().args(["policy", "validate"]).output().unwrap();
    assert!(ok.status.success());
    let tmp = crate::common::private_tempdir();
    let bad = tmp.path().join("bad.cedar");
    std::fs::write(&bad, "@id(\"x\") permit(principal, action == Kluis::Action::\"read\", resource) when { resource.colour == 1 };").unwrap();
    let out = kluis()
        .args(["policy", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("colour"), "{stderr}");
    assert!(
        stderr.contains("bad.cedar:1:"),
        "errors name the file and line: {stderr}"
    );
    std::fs::write(&bad, "@id(\"a\")\npermit(principal, action, resource);\n\n@id(\"b\")\npermit(principal action resource);\n").unwrap();
    let out = kluis()
        .args(["policy", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.cedar:5:"),
        "a syntax error names its line: {stderr}"
    );
}

#[test]
fn policy_test_runs_a_decision_table_and_names_the_failing_line() {
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy/default-decisions.csv");
    let ok = kluis()
        .args(["policy", "test"])
        .arg(&shipped)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains(", 0 failed"));
    let tmp = crate::common::private_tempdir();
    let wrong = tmp.path().join("wrong.csv");
    std::fs::write(
        &wrong,
        format!(
            "{}\nsecurity-officer,read,nuisance,nuisance,criminal,value,C-1,why,app,false,,allow\n",
            kluis::policy::table::HEADER
        ),
    )
    .unwrap();
    let out = kluis()
        .args(["policy", "test"])
        .arg(&wrong)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("wrong.csv:2:"), "{stdout}");
    assert!(stdout.contains("got deny"), "{stdout}");
}

#[test]
fn policy_explain_names_and_prints_the_deciding_policies() {
    let out = kluis()
        .args([
            "policy",
            "explain",
            "--role",
            "nuisance-officer",
            "--purpose",
            "maintenance",
        ])
        .args(["--record-purpose", "nuisance", "--category", "contact"])
        .output()
        .unwrap();
    // A deny decided here, not a refusal by a server (3).
    assert_eq!(out.status.code(), Some(5));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("DENY: forbidden by `purpose-limitation`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("resource.purpose != context.purpose"),
        "{stdout}"
    );
    let out = kluis()
        .args([
            "policy",
            "explain",
            "--role",
            "auditor",
            "--purpose",
            "audit",
            "--record-purpose",
            "payments",
        ])
        .args(["--category", "financial"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ALLOW: permitted by `auditor`"));
}

#[cfg(target_os = "linux")]
#[test]
fn the_server_process_writes_no_core_dumps() {
    let tmp = crate::common::private_tempdir();
    let server = serve_dev(&tmp.path().join("dev"));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.0.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    // "Max core file size  <soft> <hard> bytes"
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
}
