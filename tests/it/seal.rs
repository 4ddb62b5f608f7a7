//! Root key custody, from outside: the real binary, over gRPC on 127.0.0.1. Shares with a
//! quorum (init, start sealed, unseal one by one, a wrong share named and not kept, a restart
//! forgets, seal again, a new set of shares), an HSM through PKCS#11 (SoftHSM2 in a temporary
//! token directory: unseals itself, a wrong PIN or an altered sealed key keeps it sealed), and
//! moving between seals with the dual control of a root change.
//!
//! The HSM tests skip with a loud note where SoftHSM2 is missing; `KLUIS_REQUIRE_SOFTHSM=1`
//! (set by `.ci/run`) turns the skip into a failure.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use kluis::pb::{
    self, admin_client::AdminClient, operator_client::OperatorClient, vault_client::VaultClient,
};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    common::*,
    rotation::{Process, connect, free_port},
};

const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn kluis() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kluis"));
    c.env_remove("KLUIS_TOKEN")
        .env_remove("KLUIS_CONFIG")
        .env_remove("KLUIS_SERVER")
        .env_remove("KLUIS_PASSPHRASE")
        .env("KLUIS_LOG", "warn");
    c
}

fn run(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The tokens `kluis init --json` printed: (security officer, privacy officer).
struct Init {
    so: String,
    po: String,
}

fn init(dir: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Init {
    let mut c = kluis();
    c.args(["init", "--json", "--privacy-officer", "po"])
        .args(args)
        .envs(envs.iter().copied());
    if !args.contains(&"--config") {
        c.arg("--data-dir").arg(dir.join("data"));
    }
    let o = run(c);
    assert!(o.status.success(), "init failed: {}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    Init {
        so: json["token"].as_str().unwrap().to_owned(),
        po: json["privacy_officer_token"].as_str().unwrap().to_owned(),
    }
}

/// `init` of a store on two shares, both needed; returns the tokens and where the shares are.
fn init_on_two_shares(dir: &Path) -> (Init, PathBuf) {
    let shares = dir.join("shares");
    let tokens = init(
        dir,
        &[
            "--shares",
            "2",
            "--threshold",
            "2",
            "--share-dir",
            shares.to_str().unwrap(),
        ],
        &[],
    );
    (tokens, shares)
}

/// A server process with its stderr in `log`.
struct Node {
    _process: Process,
    port: u16,
    log: PathBuf,
}

fn serve(dir: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Node {
    let port = free_port();
    let log = dir.join(format!("serve-{port}.log"));
    let mut c = kluis();
    c.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .envs(envs.iter().copied())
        .env("KLUIS_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if !args.contains(&"--config") {
        c.arg("--data-dir").arg(dir.join("data"));
    }
    Node {
        _process: Process(c.spawn().unwrap()),
        port,
        log,
    }
}

impl Node {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn channel(&self) -> Channel {
        connect(self.port).await
    }

    /// `kluis operator …` against this node.
    fn operator(&self, args: &[&str]) -> Output {
        let mut c = kluis();
        c.args(["operator", "--server", &self.url()]).args(args);
        run(c)
    }

    /// `kluis admin …` against this node with `token`.
    fn admin(&self, token: &str, args: &[&str]) -> Output {
        let mut c = kluis();
        c.args(["admin", "--server", &self.url()])
            .args(args)
            .env("KLUIS_TOKEN", token);
        run(c)
    }

    /// The seal status; a call cut off while the node switches between sealed and unsealed
    /// (its connections close) is made again.
    async fn status(&self) -> pb::SealStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match OperatorClient::new(self.channel().await)
                .status(pb::SealStatusRequest {})
                .await
            {
                Ok(r) => return r.into_inner(),
                Err(s)
                    if matches!(
                        s.code(),
                        Code::Cancelled | Code::Unavailable | Code::Unknown
                    ) && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(s) => panic!("status: {s:?}"),
            }
        }
    }

    async fn unseal_text(&self, share: &str) -> Result<pb::SealStatus, tonic::Status> {
        OperatorClient::new(self.channel().await)
            .unseal(pb::UnsealRequest {
                secret: Some(pb::unseal_request::Secret::Share(share.to_owned())),
                reset: false,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn health(&self, service: &str) -> ServingStatus {
        let resp = HealthClient::new(self.channel().await)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        ServingStatus::try_from(resp.status).unwrap()
    }

    async fn who_am_i(&self, token: &str) -> Result<pb::WhoAmIResponse, tonic::Status> {
        VaultClient::new(self.channel().await)
            .who_am_i(req(token, pb::WhoAmIRequest {}))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Waits until the node serves data calls (after an unseal it starts its vault).
    async fn wait_serving(&self, token: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.who_am_i(token).await {
                Ok(_) => break,
                Err(s)
                    if matches!(
                        s.code(),
                        Code::Unavailable | Code::Cancelled | Code::Unknown
                    ) && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => panic!("the node does not serve: {s:?}"),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.health("").await != ServingStatus::Serving {
            assert!(Instant::now() < deadline, "health stays NOT_SERVING");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the node answers as unsealed (it answers the last share before it opens).
    async fn wait_unsealed(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.status().await.sealed {
            assert!(Instant::now() < deadline, "the node does not unseal");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the node answers as sealed.
    async fn wait_sealed(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.status().await.sealed {
            assert!(Instant::now() < deadline, "the node does not seal");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The share files in `dir`, by number.
fn share_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort_by_key(|p| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let number: u32 = name.rsplit('-').nth(2).unwrap().parse().unwrap();
        number
    });
    files
}

/// The `kluis-share-v1:` line of a share file.
fn share_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("kluis-share-v1:"))
        .unwrap()
        .to_owned()
}

/// The share's value (hex), to look for it where it must not be.
fn share_value(path: &Path) -> String {
    share_line(path).split(':').nth(5).unwrap().to_owned()
}

/// `line` with one hex digit of its value changed; with `fix_checksum` its checksum recomputed
/// (a forged share that parses).
fn altered(line: &str, fix_checksum: bool) -> String {
    use sha2::Digest;
    let mut parts: Vec<String> = line.split(':').map(str::to_owned).collect();
    let value = &mut parts[5];
    let first = if value.starts_with('a') { "b" } else { "a" };
    value.replace_range(0..1, first);
    if fix_checksum {
        let body = parts[..6].join(":");
        parts[6] = hex::encode(&sha2::Sha256::digest(body.as_bytes())[..4]);
    }
    parts.join(":")
}

fn assert_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str) {
    match r {
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert!(s.message().contains(needle), "{needle:?} not in {s:?}");
        }
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_shares_starts_sealed_and_custodians_unseal_it_one_by_one() {
    let tmp = private_tempdir();
    let dir = tmp.path();
    let shares = dir.join("shares");
    let tokens = init(
        dir,
        &[
            "--shares",
            "5",
            "--threshold",
            "3",
            "--share-dir",
            shares.to_str().unwrap(),
        ],
        &[],
    );
    let files = share_files(&shares);
    assert_eq!(files.len(), 5);
    #[cfg(unix)]
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let node = serve(dir, &[], &[]);
    let _ = node.channel().await;

    // Sealed: health says so, every data and admin call is UNAVAILABLE and says why.
    assert_eq!(node.health("").await, ServingStatus::NotServing);
    assert_eq!(
        node.health("kluis.v1.Vault").await,
        ServingStatus::NotServing
    );
    assert_status(node.who_am_i(&tokens.so).await, Code::Unavailable, "sealed");
    let report = AdminClient::new(node.channel().await)
        .key_report(req(&tokens.so, pb::KeyReportRequest::default()))
        .await;
    assert_status(report, Code::Unavailable, "sealed");
    let status = node.status().await;
    assert!(status.sealed);
    assert_eq!((status.threshold, status.total, status.progress), (3, 5, 0));

    // One share: progress shown.
    let o = node.operator(&["unseal", "--share-file", files[0].to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("1 of 3"), "{}", stdout(&o));

    // A mistyped share (checksum), a forged one (checksum recomputed), one of another store's
    // set, and garbage: each named, none kept.
    let line2 = share_line(&files[1]);
    assert_status(
        node.unseal_text(&altered(&line2, false)).await,
        Code::InvalidArgument,
        "checksum",
    );
    assert_status(
        node.unseal_text(&altered(&line2, true)).await,
        Code::InvalidArgument,
        "share 2 of 5",
    );
    let other = tempfile::tempdir().unwrap();
    let other_shares = other.path().join("s");
    init(
        other.path(),
        &[
            "--shares",
            "5",
            "--threshold",
            "3",
            "--share-dir",
            other_shares.to_str().unwrap(),
        ],
        &[],
    );
    let foreign = share_line(&share_files(&other_shares)[1]);
    assert_status(
        node.unseal_text(&foreign).await,
        Code::InvalidArgument,
        "not of this store's shares",
    );
    assert_status(
        node.unseal_text("not a share").await,
        Code::InvalidArgument,
        "not a kluis share",
    );
    // Nobody without a share may make the custodians start over.
    let reset = OperatorClient::new(node.channel().await)
        .unseal(pb::UnsealRequest {
            secret: None,
            reset: true,
        })
        .await;
    assert_status(reset, Code::InvalidArgument, "give your share with it");
    // The same share twice counts once.
    let again = node.unseal_text(&share_line(&files[0])).await.unwrap();
    assert!(again.message.contains("given already"), "{again:?}");
    let status = node.status().await;
    assert_eq!(status.progress, 1, "nothing of a refused share was kept");

    // K-1 shares do not unseal. (The call is also served as `Admin/Unseal`, the one Admin call
    // a sealed node answers, with `Admin/SealStatus`.)
    let two = AdminClient::new(node.channel().await)
        .unseal(pb::UnsealRequest {
            secret: Some(pb::unseal_request::Secret::Share(share_line(&files[1]))),
            reset: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(two.sealed && two.progress == 2, "{two:?}");
    let status = AdminClient::new(node.channel().await)
        .seal_status(pb::SealStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.sealed, status.progress, status.given.clone()),
        (true, 2, vec![1, 2])
    );
    assert_status(node.who_am_i(&tokens.so).await, Code::Unavailable, "sealed");

    // A restart forgets the shares given.
    let log_before = node.log_text();
    drop(node);
    let node = serve(dir, &[], &[]);
    let _ = node.channel().await;
    let status = node.status().await;
    assert!(status.sealed);
    assert_eq!(status.progress, 0, "a restart forgets submitted shares");

    // K shares from K other files unseal it.
    for (i, f) in [&files[1], &files[3], &files[4]].iter().enumerate() {
        let o = node.operator(&["unseal", "--share-file", f.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        if i < 2 {
            assert!(
                stdout(&o).contains(&format!("{} of 3", i + 1)),
                "{}",
                stdout(&o)
            );
        } else {
            assert!(stdout(&o).contains("unsealed"), "{}", stdout(&o));
        }
    }
    node.wait_serving(&tokens.so).await;
    assert_eq!(node.health("kluis.v1.Vault").await, ServingStatus::Serving);
    assert_status(
        node.unseal_text(&share_line(&files[0])).await,
        Code::FailedPrecondition,
        "not sealed",
    );
    let unsealed = AdminClient::new(node.channel().await)
        .unseal(pb::UnsealRequest {
            secret: Some(pb::unseal_request::Secret::Share(share_line(&files[0]))),
            reset: false,
        })
        .await;
    assert_status(unsealed, Code::FailedPrecondition, "not sealed");

    // The unseal is on the trail: which shares, never their bytes.
    let o = node.admin(&tokens.so, &["audit", "export"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let trail = stdout(&o);
    let unseal = trail
        .lines()
        .find(|l| l.contains("\"action\":\"unseal\""))
        .expect("an unseal entry");
    assert!(unseal.contains("shares 2, 4, 5"), "{unseal}");
    let logs = format!("{log_before}{}", node.log_text());
    for f in &files {
        let value = share_value(f);
        assert!(!trail.contains(&value), "a share's value is on the trail");
        assert!(!logs.contains(&value), "a share's value is in the log");
        assert!(
            !logs.contains(&value[..16]),
            "part of a share's value is in the log"
        );
    }
    // The keys report names the seal.
    let o = node.admin(&tokens.so, &["keys", "report"]);
    assert!(stdout(&o).contains("shares: any 3 of 5"), "{}", stdout(&o));
}

/// Refused unseal attempts are limited per caller, counted before they are judged: forty
/// guesses sent at once get twenty judgements, the rest `RESOURCE_EXHAUSTED`, and so does the
/// next guess, or a forged share that parses. A share that checks out is not a guess: it is
/// taken from a caller at the limit too, so that someone guessing from the custodians' address
/// (a shared NAT or jump host) cannot keep them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unseal_calls_without_a_token_are_rate_limited() {
    let tmp = private_tempdir();
    let dir = tmp.path();
    let (_, shares) = init_on_two_shares(dir);
    let node = serve(dir, &[], &[]);
    let channel = node.channel().await;
    let mut guesses = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let mut client = OperatorClient::new(channel.clone());
        guesses.spawn(async move {
            client
                .unseal(pb::UnsealRequest {
                    secret: Some(pb::unseal_request::Secret::Share("guess".into())),
                    reset: false,
                })
                .await
        });
    }
    let answers = guesses.join_all().await;
    let count = |code: Code| {
        answers
            .iter()
            .filter(|a| a.as_ref().err().is_some_and(|s| s.code() == code))
            .count()
    };
    let limit = kluis::api::operator::ATTEMPTS_PER_MINUTE;
    assert_eq!(count(Code::InvalidArgument), limit, "{answers:?}");
    assert_eq!(count(Code::ResourceExhausted), 40 - limit, "{answers:?}");
    assert_status(
        node.unseal_text("guess").await,
        Code::ResourceExhausted,
        "wait",
    );
    let files = share_files(&shares);
    let line = share_line(&files[0]);
    assert_status(
        node.unseal_text(&altered(&line, true)).await,
        Code::ResourceExhausted,
        "wait",
    );
    // The custodian's share is taken, and counts for nothing against the address.
    let status = node.unseal_text(&line).await.unwrap();
    assert!(status.sealed);
    assert_eq!(status.progress, 1, "{status:?}");
    assert_status(
        node.unseal_text("guess").await,
        Code::ResourceExhausted,
        "wait",
    );
    node.unseal_text(&share_line(&files[1])).await.unwrap();
    node.wait_unsealed().await;
}

/// A sealed node answers `Status` and `Unseal` to anyone, without a credential. 2,000 status
/// questions at once wait for one of a few places (`SEALED_AT_ONCE`, 4) and run on as many
/// threads, instead of taking a blocking thread each (tokio's pool would start up to 512), and
/// custodians' shares are taken meanwhile and open the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_questions_to_a_sealed_node_takes_no_thread_each() {
    const QUESTIONS: usize = 2000;
    let tmp = private_tempdir();
    let dir = tmp.path();
    let (tokens, shares) = init_on_two_shares(dir);
    let node = serve(dir, &[], &[]);
    assert!(node.status().await.sealed);
    let pid = node._process.0.id();
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(node.channel().await);
    }
    let ask = |c: Channel| async move {
        OperatorClient::new(c)
            .status(pb::SealStatusRequest {})
            .await
    };
    // What the node runs once it has answered a few questions at once.
    let mut warm = tokio::task::JoinSet::new();
    for i in 0..16 {
        warm.spawn(ask(channels[i % channels.len()].clone()));
    }
    while let Some(done) = warm.join_next().await {
        assert!(done.unwrap().unwrap().into_inner().sealed);
    }
    let threads_before = crate::dos::proc_status(pid, "Threads");
    let mut questions = tokio::task::JoinSet::new();
    for i in 0..QUESTIONS {
        questions.spawn(ask(channels[i % channels.len()].clone()));
    }
    let files = share_files(&shares);
    let share = share_line(&files[0]);
    let first = node.unseal_text(&share);
    tokio::pin!(first);
    let (mut most, mut given) = (0, None);
    while !questions.is_empty() {
        most = most.max(crate::dos::proc_status(pid, "Threads"));
        tokio::select! {
            done = questions.join_next() => {
                if let Some(done) = done {
                    // Answered as sealed, or cut off once the second share below opened it.
                    if let Ok(answer) = done.unwrap() {
                        assert!(answer.into_inner().sealed);
                    }
                }
            }
            status = &mut first, if given.is_none() => given = Some(status),
        }
    }
    let given = match given {
        Some(status) => status,
        None => first.await,
    };
    eprintln!("FIG sealed status: threads {most}, before {threads_before}");
    assert_eq!(given.expect("the first share was not taken").progress, 1);
    assert!(
        most <= threads_before + 4,
        "{most} threads while {QUESTIONS} status questions ran, {threads_before} before"
    );
    // The second share opens the node.
    assert!(
        !node
            .unseal_text(&share_line(&files[1]))
            .await
            .unwrap()
            .sealed
    );
    node.wait_serving(&tokens.so).await;
    assert_eq!(node.health("kluis.v1.Vault").await, ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_officer_seals_a_running_node_and_custodians_unseal_it_again() {
    let tmp = private_tempdir();
    let dir = tmp.path();
    let shares = dir.join("shares");
    let tokens = init(
        dir,
        &[
            "--shares",
            "3",
            "--threshold",
            "2",
            "--share-dir",
            shares.to_str().unwrap(),
        ],
        &[],
    );
    let files = share_files(&shares);
    let node = serve(dir, &[], &[]);
    let _ = node.channel().await;
    for f in &files[..2] {
        assert!(node.unseal_text(&share_line(f)).await.is_ok());
    }
    node.wait_serving(&tokens.so).await;

    // Only a security officer seals.
    let o = node.admin(&tokens.po, &["operator", "seal", "--justification", "test"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(!node.status().await.sealed);
    let anonymous = OperatorClient::new(node.channel().await)
        .seal(pb::SealRequest::default())
        .await;
    assert_status(anonymous, Code::Unauthenticated, "");
    assert!(!node.status().await.sealed);

    // A client holding a stream open (a health watch) does not keep the vault alive: the
    // seal drains for a few seconds, then cuts it.
    let mut watch = HealthClient::new(node.channel().await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());
    let o = node.admin(
        &tokens.so,
        &["operator", "seal", "--justification", "incident 42"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    node.wait_sealed().await;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(_)) = watch.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "the watch stream outlived the seal");
    assert_status(node.who_am_i(&tokens.so).await, Code::Unavailable, "sealed");
    assert_eq!(node.health("").await, ServingStatus::NotServing);
    assert_status(
        OperatorClient::new(node.channel().await)
            .seal(req(&tokens.so, pb::SealRequest::default()))
            .await,
        Code::FailedPrecondition,
        "sealed already",
    );

    // Unsealed again with two other shares; the seal is on the trail.
    for f in &files[1..] {
        assert!(node.unseal_text(&share_line(f)).await.is_ok());
    }
    node.wait_serving(&tokens.so).await;
    let trail = stdout(&node.admin(&tokens.so, &["audit", "export"]));
    assert!(
        trail
            .lines()
            .any(|l| l.contains("\"action\":\"seal\"") && l.contains("incident 42")),
        "{trail}"
    );
    assert_eq!(
        trail
            .lines()
            .filter(|l| l.contains("\"action\":\"unseal\""))
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_set_of_shares_replaces_the_old_without_changing_the_root_key() {
    let tmp = private_tempdir();
    let dir = tmp.path();
    let shares = dir.join("shares");
    let tokens = init(
        dir,
        &[
            "--shares",
            "3",
            "--threshold",
            "2",
            "--share-dir",
            shares.to_str().unwrap(),
        ],
        &[],
    );
    let old = share_files(&shares);
    let node = serve(dir, &[], &[]);
    let _ = node.channel().await;
    // Sealed: no new set.
    let refused = dir.join("refused");
    let o = node.operator(&[
        "rekey-shares",
        "--share-file",
        old[0].to_str().unwrap(),
        "--share-file",
        old[1].to_str().unwrap(),
        "--shares",
        "4",
        "--threshold",
        "3",
        "--share-dir",
        refused.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unseal it first"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_dir(&refused).unwrap().count(),
        0,
        "no new set left"
    );
    for f in &old[..2] {
        assert!(node.unseal_text(&share_line(f)).await.is_ok());
    }
    node.wait_serving(&tokens.so).await;
    // Fewer than a quorum of old shares: refused, nothing written.
    let short = dir.join("short");
    let o = node.operator(&[
        "rekey-shares",
        "--share-file",
        old[0].to_str().unwrap(),
        "--shares",
        "4",
        "--threshold",
        "3",
        "--share-dir",
        short.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("1 of 3 shares given"), "{}", stderr(&o));
    assert!(!short.exists() || std::fs::read_dir(&short).unwrap().count() == 0);

    let new_dir = dir.join("new");
    let o = node.operator(&[
        "rekey-shares",
        "--share-file",
        old[0].to_str().unwrap(),
        "--share-file",
        old[2].to_str().unwrap(),
        "--shares",
        "4",
        "--threshold",
        "3",
        "--share-dir",
        new_dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let new = share_files(&new_dir);
    assert_eq!(new.len(), 4);

    // After a restart the old set opens nothing and the new one opens the same store.
    drop(node);
    let node = serve(dir, &[], &[]);
    let _ = node.channel().await;
    assert_status(
        node.unseal_text(&share_line(&old[0])).await,
        Code::InvalidArgument,
        "not of this store's shares",
    );
    for f in &new[1..] {
        assert!(node.unseal_text(&share_line(f)).await.is_ok());
    }
    node.wait_serving(&tokens.so).await;
    // Same root key: the trail written under the old set verifies.
    let o = node.admin(&tokens.so, &["audit", "verify"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let trail = stdout(&node.admin(&tokens.so, &["audit", "export"]));
    assert!(trail.contains("\"action\":\"shares-replace\""), "{trail}");

    // A custodian's typos in the new set are no guesses: with old shares that check out they
    // never count against the address; a wrong old share still does, up to the limit.
    let replace = |old: Vec<String>, new: Vec<String>| {
        let node = &node;
        async move {
            OperatorClient::new(node.channel().await)
                .replace_shares(pb::ReplaceSharesRequest {
                    old_shares: old,
                    new_shares: new,
                })
                .await
        }
    };
    let quorum: Vec<String> = new[1..].iter().map(|f| share_line(f)).collect();
    let limit = kluis::api::operator::ATTEMPTS_PER_MINUTE;
    for _ in 0..limit + 5 {
        assert_status(
            replace(quorum.clone(), vec!["not a share".into()]).await,
            Code::InvalidArgument,
            "new_shares",
        );
    }
    let forged = vec![altered(&quorum[0], true), quorum[1].clone()];
    for _ in 0..limit {
        assert_status(
            replace(forged.clone(), vec!["not a share".into()]).await,
            Code::InvalidArgument,
            "is not the share this store recorded",
        );
    }
    assert_status(
        replace(forged, vec!["not a share".into()]).await,
        Code::ResourceExhausted,
        "wait",
    );
}

/// SoftHSM2 with one initialised token in a temporary directory, or `None` (a loud note) where
/// it is missing; with `KLUIS_REQUIRE_SOFTHSM=1` a missing SoftHSM2 fails the test.
struct SoftHsm {
    conf: PathBuf,
    config: PathBuf,
    pin: PathBuf,
}

/// The test token's user PIN: long and unlike anything else a log holds, so that finding it in
/// the log means the PIN leaked (a four-digit PIN turns up by chance in timestamps and ports).
const HSM_PIN: &str = "kluis-test-pin-Qx7wZ";

#[expect(
    clippy::disallowed_methods,
    reason = "CI says through the environment that SoftHSM2 is required"
)]
fn softhsm(dir: &Path) -> Option<SoftHsm> {
    let present = Path::new(SOFTHSM_MODULE).exists()
        && Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !present {
        assert!(
            std::env::var_os("KLUIS_REQUIRE_SOFTHSM").is_none(),
            "KLUIS_REQUIRE_SOFTHSM is set but SoftHSM2 ({SOFTHSM_MODULE}, softhsm2-util) is missing"
        );
        eprintln!(
            "\n*** SKIPPED: SoftHSM2 is not installed (apt-get install softhsm2); the PKCS#11 \
             seal is NOT tested here ***\n"
        );
        return None;
    }
    let tokens = dir.join("hsm-tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let o = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "kluis-test",
            "--pin",
            HSM_PIN,
            "--so-pin",
            "8765",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let pin = dir.join("hsm.pin");
    write_private(&pin, &format!("{HSM_PIN}\n"));
    let config = dir.join("kluis.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[seal]\ntype = \"pkcs11\"\nmodule = \"{SOFTHSM_MODULE}\"\n\
             token_label = \"kluis-test\"\nkey_label = \"kluis-root\"\npin_file = \"{}\"\n",
            dir.join("data").display(),
            pin.display()
        ),
    )
    .unwrap();
    Some(SoftHsm { conf, config, pin })
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// The `root` metadata row of the SQLite store in `dir/data`, as JSON.
fn root_meta(dir: &Path) -> serde_json::Value {
    let db = rusqlite::Connection::open(dir.join("data").join(kluis::config::DB_FILE)).unwrap();
    let bytes: Vec<u8> = db
        .query_row("SELECT value FROM meta WHERE key = 'root'", [], |r| {
            r.get(0)
        })
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn set_root_meta(dir: &Path, meta: &serde_json::Value) {
    let db = rusqlite::Connection::open(dir.join("data").join(kluis::config::DB_FILE)).unwrap();
    db.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'root'",
        [serde_json::to_vec(meta).unwrap()],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hsm_unseals_the_server_by_itself_and_a_wrong_pin_keeps_it_sealed() {
    let tmp = private_tempdir();
    let dir = tmp.path();
    let Some(hsm) = softhsm(dir) else { return };
    let env = [("SOFTHSM2_CONF", hsm.conf.as_path())];
    let config = hsm.config.to_str().unwrap();
    let tokens = init(dir, &["--config", config, "--pkcs11"], &env);
    let meta = root_meta(dir);
    assert_eq!(meta["source"], "pkcs11", "{meta}");

    // Unsealed at start, without a person.
    let node = serve(dir, &["--config", config], &env);
    node.wait_serving(&tokens.so).await;
    let o = node.admin(&tokens.so, &["keys", "report"]);
    assert!(
        stdout(&o).contains("HSM: key `kluis-root`"),
        "{}",
        stdout(&o)
    );
    drop(node);

    // A wrong PIN: sealed, and the status says what to check.
    write_private(&hsm.pin, "0000\n");
    let node = serve(dir, &["--config", config], &env);
    let _ = node.channel().await;
    let status = node.status().await;
    assert!(status.sealed, "{status:?}");
    assert!(status.message.contains("PIN"), "{status:?}");
    assert_status(node.who_am_i(&tokens.so).await, Code::Unavailable, "sealed");
    assert_eq!(node.health("").await, ServingStatus::NotServing);
    // Trying again with the PIN file unchanged is refused before the token sees it (each wrong
    // PIN brings its lock-out nearer).
    let o = node.operator(&["unseal", "--hsm"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("has not changed"), "{}", stderr(&o));
    // Put right, one more try unseals it.
    std::thread::sleep(Duration::from_millis(20));
    write_private(&hsm.pin, &format!("{HSM_PIN}\n"));
    let o = node.operator(&["unseal", "--hsm"]);
    assert!(o.status.success(), "{}", stderr(&o));
    node.wait_serving(&tokens.so).await;
    assert!(!node.log_text().contains(HSM_PIN), "the PIN is in the log");
    // Sealed by a security officer, the HSM does not unseal it on anyone's word: only a restart.
    let o = node.admin(
        &tokens.so,
        &["operator", "seal", "--justification", "incident"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    node.wait_sealed().await;
    let o = node.operator(&["unseal", "--hsm"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("security officer sealed"),
        "{}",
        stderr(&o)
    );
    assert!(node.status().await.sealed);
    drop(node);

    // The sealed root key altered in the database: sealed, not opened with something else.
    let mut tampered = meta.clone();
    let sealed = tampered["sealed"].as_str().unwrap().to_owned();
    let flipped = if sealed.starts_with('0') { "1" } else { "0" };
    tampered["sealed"] = format!("{flipped}{}", &sealed[1..]).into();
    set_root_meta(dir, &tampered);
    let node = serve(dir, &["--config", config], &env);
    let _ = node.channel().await;
    let status = node.status().await;
    assert!(status.sealed, "{status:?}");
    assert!(status.message.contains("does not open"), "{status:?}");
    drop(node);
    // Its twin: put back, it opens.
    set_root_meta(dir, &meta);
    let node = serve(dir, &["--config", config], &env);
    node.wait_serving(&tokens.so).await;
}

/// Asks for a seal change, has the privacy officer approve it, and carries it out.
fn reseal(node: &Node, tokens: &Init, ask: &[&str], carry_out: &[&str]) {
    let mut args = vec!["root", "reseal", "--justification", "custody"];
    args.extend_from_slice(ask);
    let o = node.admin(&tokens.so, &args);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("root_"))
        .unwrap()
        .to_owned();
    let o = node.admin(
        &tokens.po,
        &["root", "approve", &id, "--justification", "custody"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut args = vec!["root", "reseal", "--request", &id];
    args.extend_from_slice(carry_out);
    let o = node.admin(&tokens.so, &args);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

/// A token for a nuisance officer, approved by the privacy officer.
async fn nuisance_officer(node: &Node, tokens: &Init) -> String {
    let mut admin = AdminClient::new(node.channel().await);
    let issued = admin
        .issue_token(req(
            &tokens.so,
            pb::IssueTokenRequest {
                principal_id: "no-1".into(),
                roles: vec!["nuisance-officer".into()],
                ttl_seconds: 3600,
                scope_subject_id: String::new(),
                justification: "custody test".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    admin
        .approve_token(req(
            &tokens.po,
            pb::ApproveTokenRequest {
                token_id: issued.token_id,
                justification: "custody test".into(),
            },
        ))
        .await
        .unwrap();
    issued.token
}

async fn put_note(node: &Node, token: &str) -> String {
    VaultClient::new(node.channel().await)
        .put_record(req(
            token,
            pb::PutRecordRequest {
                context: nuisance_ctx(),
                subject_id: "REL-7001".into(),
                fields: vec![text(
                    "note",
                    "nuisance-evidence",
                    "noise at night, third floor",
                )],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .record_id
}

async fn read_note(node: &Node, token: &str, id: &str) {
    let resp = VaultClient::new(node.channel().await)
        .get_record(req(
            token,
            pb::GetRecordRequest {
                context: nuisance_ctx(),
                record_id: id.to_owned(),
                fields: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        text_of(field(&resp, "note").unwrap()),
        "noise at night, third floor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_moves_from_key_file_to_hsm_and_back_and_on_to_shares() {
    let tmp = private_tempdir();
    let dir = tmp.path();
    let Some(hsm) = softhsm(dir) else { return };
    let env = [("SOFTHSM2_CONF", hsm.conf.as_path())];
    let config = hsm.config.to_str().unwrap();
    let key = dir.join("root.key");
    let key_arg = key.to_str().unwrap();
    let tokens = init(dir, &["--config", config, "--key-file", key_arg], &env);
    let node = serve(dir, &["--config", config, "--key-file", key_arg], &env);
    node.wait_serving(&tokens.so).await;
    let officer = nuisance_officer(&node, &tokens).await;
    let id = put_note(&node, &officer).await;

    // Key file → HSM.
    reseal(&node, &tokens, &["--to", "pkcs11"], &["--to", "pkcs11"]);
    read_note(&node, &officer, &id).await;
    let o = node.admin(&tokens.so, &["keys", "report"]);
    assert!(stdout(&o).contains("HSM: key"), "{}", stdout(&o));
    drop(node);
    let hsm_meta = root_meta(dir);
    // The HSM opens the store by itself.
    let node = serve(dir, &["--config", config], &env);
    node.wait_serving(&tokens.so).await;
    read_note(&node, &officer, &id).await;

    // HSM → a new key file ("and back").
    let key2 = dir.join("root2.key");
    let key2_arg = key2.to_str().unwrap();
    reseal(
        &node,
        &tokens,
        &["--to", "key-file", "--new-key-file", key2_arg],
        &["--to", "key-file", "--new-key-file", key2_arg],
    );
    drop(node);
    // The old seals stop working: the first key file is refused as wrong (exit 4), and the
    // HSM's sealed root key put back into the store opens a root key that no longer fits.
    let refused = |args: &[&str]| {
        let mut c = kluis();
        c.args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
            .args(args)
            .envs(env);
        let o = run(c);
        assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
        assert!(stderr(&o).contains("wrong"), "{}", stderr(&o));
    };
    refused(&["--config", config, "--key-file", key_arg]);
    let key_meta = root_meta(dir);
    set_root_meta(dir, &hsm_meta);
    refused(&["--config", config]);
    set_root_meta(dir, &key_meta);
    let node = serve(dir, &["--config", config, "--key-file", key2_arg], &env);
    node.wait_serving(&tokens.so).await;
    read_note(&node, &officer, &id).await;

    // Key file → shares: the next start is sealed until a quorum is given.
    let shares = dir.join("shares");
    let shares_arg = shares.to_str().unwrap();
    reseal(
        &node,
        &tokens,
        &[
            "--to",
            "shares",
            "--shares",
            "3",
            "--threshold",
            "2",
            "--share-dir",
            shares_arg,
        ],
        &["--to", "shares", "--share-dir", shares_arg],
    );
    drop(node);
    let node = serve(dir, &["--config", config, "--key-file", key2_arg], &env);
    let _ = node.channel().await;
    assert!(
        node.status().await.sealed,
        "a store on shares starts sealed"
    );
    // The old seals are refused for what they are.
    let o = node.operator(&["unseal", "--key-file", key2_arg]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("sealed by shares"), "{}", stderr(&o));
    let o = node.operator(&["unseal", "--hsm"]);
    assert!(!o.status.success());
    for f in &share_files(&shares)[1..] {
        assert!(node.unseal_text(&share_line(f)).await.is_ok());
    }
    node.wait_serving(&tokens.so).await;
    read_note(&node, &officer, &id).await;
    let o = node.admin(&tokens.so, &["audit", "verify"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn a_split_that_is_not_one_is_a_usage_error_naming_the_option() {
    let tmp = private_tempdir();
    for (shares, threshold, flag) in [
        ("3", "1", "--threshold"),
        ("3", "4", "--threshold"),
        ("17", "2", "--shares"),
    ] {
        let mut c = kluis();
        c.args(["init", "--data-dir"])
            .arg(tmp.path().join("data"))
            .args(["--shares", shares, "--threshold", threshold, "--share-dir"])
            .arg(tmp.path().join("shares"));
        let o = run(c);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(flag), "{}", stderr(&o));
        assert!(!tmp.path().join("shares").exists(), "no share was written");
    }
}
