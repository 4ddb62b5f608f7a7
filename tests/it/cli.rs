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

/// Stores a phone number of `subject` on the server at `addr` as the nuisance officer
/// `officer`; returns the record's id.
async fn put_phone(addr: &str, officer: &str, subject: &str, phone: &str) -> String {
    let mut client = pb::vault_client::VaultClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client
        .put_record(req(
            officer,
            pb::PutRecordRequest {
                context: ctx("nuisance", "N-1", "complaint"),
                subject_id: subject.into(),
                fields: vec![text("phone", "contact", phone)],
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .record_id
}

/// How many fields of record `id` the server at `addr` gives the nuisance officer `officer`.
async fn fields_read(addr: &str, officer: &str, id: &str) -> usize {
    let mut client = pb::vault_client::VaultClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client
        .get_record(req(
            officer,
            pb::GetRecordRequest {
                context: ctx("nuisance", "N-1", "follow-up"),
                record_id: id.into(),
                fields: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .fields
        .len()
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
    let id = put_phone(&server.1, &officer, "REL-0001", "06-40404040").await;

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
    assert_eq!(fields_read(&server.1, &officer, &id).await, 1);
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
    // A role or purpose that does not exist is a usage error, naming the option typed.
    let out = kluis()
        .args(["policy", "explain", "--role", "nurse", "--purpose", "audit"])
        .args(["--category", "financial"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("`--role`"), "{}", stderr_of(&out));
    let out = kluis()
        .args([
            "policy",
            "explain",
            "--role",
            "auditor",
            "--purpose",
            "gossip",
        ])
        .args(["--category", "financial"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("`--purpose`"),
        "{}",
        stderr_of(&out)
    );
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

/// `kluis admin …` against the in-process `server`, as `role`. The test must run on several
/// threads: the server runs in this process while the test waits for the command.
fn admin_as(server: &crate::common::TestServer, role: kluis::domain::Role) -> Command {
    let mut c = kluis();
    c.env_remove("KLUIS_TOKEN_FILE")
        .env_remove("KLUIS_CA_CERT")
        .env("KLUIS_TOKEN", server.token(role))
        .env("KLUIS_SERVER", format!("http://{}", server.addr))
        .arg("admin");
    c
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_token_file_others_may_read_is_refused_saying_chmod_600() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = crate::common::private_tempdir();
    let file = tmp.path().join("token");
    std::fs::write(&file, "kt_whatever").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = kluis()
        .args(["admin", "token", "list", "--token-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("chmod 600 {}", file.display())),
        "{err}"
    );
    assert!(!err.contains("kt_whatever"), "never the token itself");
    // Its twin: mode 0600 passes the check and gets as far as the (absent) server.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = kluis()
        .args(["admin", "token", "list", "--server", "http://127.0.0.1:9"])
        .arg("--token-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!stderr_of(&out).contains("chmod"), "{}", stderr_of(&out));
}

#[test]
fn an_unreachable_server_or_a_url_without_scheme_is_said_so() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = kluis()
        .env("KLUIS_TOKEN", "kt_x")
        .args(["admin", "token", "list", "--server"])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("connection refused at http://127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("transport error"), "{err}");
    let out = kluis()
        .env("KLUIS_TOKEN", "kt_x")
        .args(["admin", "token", "list", "--server"])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = stderr_of(&out);
    assert!(err.contains("http://") && err.contains("https://"), "{err}");
}

#[test]
fn values_the_cli_cannot_parse_exit_2_naming_the_option() {
    for (args, flag) in [
        (
            &[
                "token",
                "issue",
                "--principal",
                "p",
                "--role",
                "analyst",
                "--ttl",
                "3x",
            ][..],
            "--ttl",
        ),
        (
            &["audit", "export", "--since", "last tuesday"][..],
            "--since",
        ),
        (
            &["audit", "verify", "--expect-head", "12:ab"][..],
            "--expect-head",
        ),
        (
            &[
                "mandate",
                "grant",
                "--subject",
                "REL-1",
                "--representative",
                "r",
            ][..],
            "--purpose",
        ),
    ] {
        let out = kluis()
            .env("KLUIS_TOKEN", "kt_x")
            .arg("admin")
            .args(args)
            .args(["--server", "http://127.0.0.1:9"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains(flag),
            "{args:?}: {}",
            stderr_of(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refusals_name_the_options_the_user_typed() {
    use kluis::domain::Role;
    let server = crate::common::TestServer::start().await;
    let out = admin_as(&server, Role::SecurityOfficer)
        .args(["token", "issue", "--principal", "p-1", "--role", "nurse"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("`--role`"), "{err}");
    assert!(!err.contains("roles["), "{err}");
    let out = admin_as(&server, Role::SecurityOfficer)
        .args([
            "token",
            "issue",
            "--principal",
            "p-1",
            "--role",
            "contractor",
        ])
        .args(["--subject", "REL 1"])
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(err.contains("`--subject`"), "{err}");
    assert!(!err.contains("scope_subject_id"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_the_command_quietly_with_status_0() {
    use kluis::domain::Role;
    let server = crate::common::TestServer::start().await;
    // Far more output than a pipe buffers (64 KiB), so the writer meets the closed pipe.
    let mut admin = server.admin().await;
    for _ in 0..400 {
        admin
            .audit_head(req(
                server.token(Role::SecurityOfficer),
                pb::AuditHeadRequest {},
            ))
            .await
            .unwrap();
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "\"{}\" admin audit tail --since 0 --json | head -1 >/dev/null; exit ${{PIPESTATUS[0]}}",
            env!("CARGO_BIN_EXE_kluis")
        ))
        .env("KLUIS_TOKEN", server.token(Role::SecurityOfficer))
        .env("KLUIS_SERVER", format!("http://{}", server.addr))
        .env("KLUIS_LOG", "warn")
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "nothing on stderr: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rewrap_after_rotate_reports_the_rotations_own_work() {
    use kluis::domain::Role;
    let server = crate::common::TestServer::start().await;
    for n in 0..4 {
        crate::common::put(
            &server,
            Role::NuisanceOfficer,
            crate::common::nuisance_ctx(),
            &format!("REL-50{n}"),
            vec![text("phone", "contact", "06-12121212")],
        )
        .await;
    }
    let so = |args: &[&str]| {
        admin_as(&server, Role::SecurityOfficer)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(
        so(&["keys", "rotate", "--purpose", "nuisance"])
            .status
            .success()
    );
    let out = so(&["keys", "rewrap", "--purpose", "nuisance"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("nuisance: done, 4 of 4 subject keys under the active version"),
        "{stdout}"
    );
    // Not a terminal: plain progress lines on stderr, no carriage returns.
    assert!(!stderr_of(&out).contains('\r'));
    // The report ends with its verdict and reasons, as JSON.
    let out = so(&["keys", "report", "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdict: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(verdict["verdict"], "sound");
    assert_eq!(verdict["reasons"], serde_json::json!([]));
    // No searchable field here; the planner's default aim is said.
    assert_eq!(verdict["search"], serde_json::json!([]));
    assert_eq!(verdict["search_candidates"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_says_whether_the_expected_head_was_found() {
    use kluis::domain::Role;
    let server = crate::common::TestServer::start().await;
    let so = |args: &[&str]| {
        admin_as(&server, Role::SecurityOfficer)
            .args(args)
            .output()
            .unwrap()
    };
    let head = String::from_utf8(so(&["audit", "head"]).stdout).unwrap();
    let head = head.trim();
    let out = so(&["audit", "verify", "--expect-head", head]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let seq = head.split(':').next().unwrap();
    assert!(
        stdout.starts_with(&format!("FOUND: entry {seq} ")),
        "{stdout}"
    );
    // The same head with another hash (and so a MAC that does not match): not found, exit 4.
    let mut parts: Vec<String> = head.split(':').map(str::to_owned).collect();
    parts[1] = "00".repeat(32);
    let out = so(&["audit", "verify", "--expect-head", &parts.join(":")]);
    assert_eq!(out.status.code(), Some(4));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("NOT FOUND: the expected head is not entry {seq}")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandates_past_their_end_are_listed_as_expired_and_local_time_has_its_offset() {
    use kluis::domain::Role;
    let server = crate::common::TestServer::start().await;
    let until = kluis::domain::now_unix() + 2;
    let po = |args: &[&str]| {
        admin_as(&server, Role::PrivacyOfficer)
            .args(args)
            .output()
            .unwrap()
    };
    let out = po(&[
        "mandate",
        "grant",
        "--subject",
        "REL-0002",
        "--representative",
        "rep-1",
        "--purpose",
        "contract",
        "--category",
        "contact",
        "--until",
        &until.to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let listed = String::from_utf8(po(&["mandate", "list"]).stdout).unwrap();
    assert!(listed.trim_end().ends_with(" active"), "{listed}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let listed = String::from_utf8(po(&["mandate", "list", "--json"]).stdout).unwrap();
    let m: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(m["state"], "expired");
    assert!(
        m["valid_until"].as_str().unwrap().ends_with('Z'),
        "UTC by default"
    );
    // With --local, in the zone TZ names, with its offset.
    let out = admin_as(&server, Role::PrivacyOfficer)
        .env("TZ", "Europe/Amsterdam")
        .args(["--local", "mandate", "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("+01:00 expired") || listed.contains("+02:00 expired"),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_cert_trusts_a_self_signed_server_certificate_made_by_openssl() {
    use kluis::domain::Role;
    let files = crate::common::private_tempdir();
    let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    // As an operator makes one: `openssl req -x509` (a self-signed certificate, CA:TRUE).
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=kluis.test"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is needed for this test");
    assert!(made.status.success(), "{}", stderr_of(&made));
    let cfg = kluis::config::RawConfig {
        tls: Some(kluis::config::RawTls {
            cert: cert.clone(),
            key,
            client_ca: None,
            client_auth: None,
        }),
        ..Default::default()
    };
    let server = crate::common::TestServer::start_with_config(cfg).await;
    let list = |ca: Option<&Path>| {
        let mut c = admin_as(&server, Role::SecurityOfficer);
        c.env(
            "KLUIS_SERVER",
            format!("https://127.0.0.1:{}", server.addr.port()),
        );
        if let Some(ca) = ca {
            c.arg("--ca-cert").arg(ca);
        }
        c.args(["token", "list"]).output().unwrap()
    };
    let out = list(Some(&cert));
    assert!(out.status.success(), "{}", stderr_of(&out));
    // Its twin: without it the certificate is not trusted, and the message says what to do.
    let out = list(None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("--ca-cert"), "{}", stderr_of(&out));
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let tmp = crate::common::private_tempdir();
    let mut child = kluis()
        .env("KLUIS_LOG", "info")
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("dev"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(!first.contains('\u{1b}'), "{first:?}");
    assert!(first.contains("INFO"), "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_key_rotates_and_reindexes_from_the_command_line() {
    use kluis::domain::Role;
    let server = crate::common::TestServer::start_with_config(kluis::config::RawConfig {
        search: Some(std::collections::BTreeMap::from([(
            "nuisance".to_owned(),
            kluis::search::RawSearch {
                fields: vec!["phone".into()],
                ..Default::default()
            },
        )])),
        ..Default::default()
    })
    .await;
    for n in 0..3 {
        crate::common::put(
            &server,
            Role::NuisanceOfficer,
            crate::common::nuisance_ctx(),
            &format!("REL-51{n}"),
            vec![text("phone", "contact", &format!("06-1212121{n}"))],
        )
        .await;
    }
    let so = |args: &[&str]| {
        admin_as(&server, Role::SecurityOfficer)
            .args(args)
            .output()
            .unwrap()
    };
    let out = so(&["keys", "rotate-index", "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rotated["index_key_version"], 2);
    // A second rotation before the backfill: refused, saying what to run.
    let out = so(&["keys", "rotate-index"]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("reindex"), "{}", stderr_of(&out));
    let out = so(&["keys", "reindex", "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["finished"], true);
    assert_eq!(last["done"], 3);
    let out = so(&["keys", "reindex", "--purpose", "nuisance"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nuisance: done, 0 value(s) tagged"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Only a security officer.
    let out = admin_as(&server, Role::PrivacyOfficer)
        .args(["keys", "rotate-index"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // A purpose that does not exist is named.
    let out = so(&["keys", "reindex", "--purpose", "gossip"]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("purpose"), "{}", stderr_of(&out));
}

/// One process per SQLite store: while a node serves a data directory, a second `kluis serve`
/// (`--dev` or with the root key), a `kluis init` and a `kluis restore` of it are refused (exit 1) before they
/// open the store, naming the process that holds it and what to do; the first goes on serving
/// what it stored. Once that node is killed (nothing of it lets go but the system), the store
/// serves again.
#[tokio::test]
async fn a_second_process_on_a_served_data_directory_is_refused() {
    let tmp = crate::common::private_tempdir();
    let dir = tmp.path().join("dev");
    let mut first = serve_dev(&dir);
    let officer = dev_tokens(&dir)["nuisance-officer"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = put_phone(&first.1, &officer, "REL-0002", "06-40404041").await;
    let key = dir.join("dev-root.key");
    let attempts: [(&str, Vec<&std::ffi::OsStr>); 3] = [
        (
            "serve --dev",
            vec![
                "serve".as_ref(),
                "--dev".as_ref(),
                "--listen".as_ref(),
                "127.0.0.1:0".as_ref(),
            ],
        ),
        (
            "serve",
            vec![
                "serve".as_ref(),
                "--key-file".as_ref(),
                key.as_os_str(),
                "--listen".as_ref(),
                "127.0.0.1:0".as_ref(),
            ],
        ),
        (
            "init",
            vec!["init".as_ref(), "--key-file".as_ref(), key.as_os_str()],
        ),
    ];
    for (what, args) in attempts {
        let mut second = kluis()
            .args(args)
            .arg("--data-dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // One that is not refused would serve on: it is stopped, and fails below.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while second.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = second.kill();
        let out = second.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {said}");
        assert!(
            said.contains(&format!("another kluis (process {})", first.0.id()))
                && said.contains("kluis.lock")
                && said.contains("stop it first"),
            "{what}: {said}"
        );
    }
    assert!(
        first.0.try_wait().unwrap().is_none(),
        "the first node stopped"
    );
    assert_eq!(
        fields_read(&first.1, &officer, &id).await,
        1,
        "the first node no longer serves what it stored"
    );
    // A restore into the directory, its store's files moved away by hand while the node
    // serves them, is refused too, before it reads the backup.
    let away = tmp.path().join("away");
    std::fs::create_dir(&away).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name();
        if name.to_string_lossy().starts_with("kluis.db") {
            std::fs::rename(dir.join(&name), away.join(&name)).unwrap();
        }
    }
    let out = kluis()
        .args(["restore", "no-such.backup", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "restore: {said}");
    assert!(
        said.contains(&format!("another kluis (process {})", first.0.id())),
        "restore: {said}"
    );
    assert!(
        !dir.join("kluis.db").exists(),
        "restore: a store put in place"
    );
    // Killed: the system lets go of the lock; the files go back.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    drop(first);
    for entry in std::fs::read_dir(&away).unwrap() {
        let name = entry.unwrap().file_name();
        std::fs::rename(away.join(&name), dir.join(&name)).unwrap();
    }
    let again = serve_dev(&dir);
    assert_eq!(fields_read(&again.1, &officer, &id).await, 1);
}

/// `kluis serve` on a data directory that is not there says so and how to make the store,
/// and makes nothing (a store made there meanwhile by another process would otherwise be
/// opened without the directory's lock).
#[test]
fn serve_names_a_data_directory_that_does_not_exist() {
    let tmp = crate::common::private_tempdir();
    let dir = tmp.path().join("not-made").join("data");
    let key = tmp.path().join("root.key");
    kluis::keys::RootSecret::create_key_file(&key).unwrap();
    let out = kluis()
        .args(["serve", "--listen", "127.0.0.1:0", "--key-file"])
        .arg(&key)
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("does not exist") && said.contains("kluis init --data-dir"),
        "{said}"
    );
    assert!(!tmp.path().join("not-made").exists());
}
