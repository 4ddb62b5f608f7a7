//! Freshness: the `kluis` binary keeps the trail's head in a head directory outside the store and
//! refuses (exit code 4) a store rolled back as a whole, a head file without this store's MAC,
//! another store's head file and a deleted one; `--accept-rollback` starts anyway and says so on
//! the trail. `serve --dev` refuses a store it did not create.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use kluis::{pb, store::prelude::*};

use crate::common::req;

fn kluis() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kluis"));
    c.env_remove("KLUIS_PASSPHRASE")
        .env_remove("KLUIS_TOKEN")
        .env_remove("KLUIS_DATA_DIR")
        .env_remove("KLUIS_HEAD_DIR")
        .env("KLUIS_LOG", "warn");
    c
}

/// A running `kluis serve`; killed when dropped unless stopped.
struct Running {
    child: Child,
    addr: String,
}

impl Running {
    /// Stops the server with `signal` (`-INT` as Ctrl-C does, `-TERM` as systemd and `kill` do)
    /// and waits for a clean exit.
    fn stop_by(mut self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "kluis serve exited with {exit}");
    }

    async fn admin(&self) -> pb::admin_client::AdminClient<tonic::transport::Channel> {
        pb::admin_client::AdminClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One store: its data directory, key file and head directory, in a temporary directory.
struct Store {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    key: PathBuf,
    heads: PathBuf,
    token: String,
}

impl Store {
    /// `kluis init` of a new store with a key file; `heads` is the head directory to serve with.
    fn init(heads: Option<&Path>) -> Self {
        let tmp = crate::common::private_tempdir();
        let root = tmp.path().to_owned();
        let (data, key) = (root.join("data"), root.join("root.key"));
        let out = kluis()
            .args(["init", "--json", "--data-dir"])
            .arg(&data)
            .arg("--key-file")
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let init: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        Self {
            heads: heads.map_or_else(|| root.join("heads"), Path::to_owned),
            token: init["token"].as_str().unwrap().to_owned(),
            _tmp: tmp,
            root,
            data,
            key,
        }
    }

    /// Starts `kluis serve` with the head directory and `extra` arguments: the running server,
    /// or the exit code and standard error of a server that did not start.
    fn serve(&self, extra: &[&str]) -> Result<Running, (Option<i32>, String)> {
        let mut child = kluis()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data)
            .arg("--key-file")
            .arg(&self.key)
            .arg("--head-dir")
            .arg(&self.heads)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(addr) = line.strip_prefix("kluis listening on http://") {
                let addr = addr.trim().to_owned();
                std::thread::spawn(move || for _ in lines {});
                return Ok(Running { child, addr });
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        let status = child.wait().unwrap();
        Err((status.code(), seen))
    }

    /// Starts, makes `calls` audited calls, and stops cleanly.
    async fn session(&self, calls: usize, extra: &[&str]) {
        self.session_stopped_by(calls, extra, "-INT").await;
    }

    /// `session`, stopped with `signal`.
    async fn session_stopped_by(&self, calls: usize, extra: &[&str], signal: &str) {
        let server = self.serve(extra).unwrap_or_else(|(code, err)| {
            panic!("kluis serve did not start ({code:?}): {err}");
        });
        let mut admin = server.admin().await;
        for _ in 0..calls {
            admin
                .list_tokens(req(
                    &self.token,
                    pb::ListTokensRequest {
                        include_inactive: false,
                    },
                ))
                .await
                .unwrap();
        }
        drop(admin);
        // Off the runtime's thread: the client's connection must be able to close meanwhile.
        let signal = signal.to_owned();
        tokio::task::spawn_blocking(move || server.stop_by(&signal))
            .await
            .unwrap();
    }

    fn head_file(&self) -> PathBuf {
        std::fs::read_dir(&self.heads)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "json"))
            .expect("a head file")
    }

    fn head(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.head_file()).unwrap()).unwrap()
    }

    /// The trail: (action, reason) of every entry.
    fn trail(&self) -> Vec<(String, String)> {
        let store = kluis::store::SqliteStore::open(&self.data.join("kluis.db")).unwrap();
        store
            .audit_entries(1, 100_000)
            .unwrap()
            .into_iter()
            .map(|row| {
                let e: serde_json::Value = serde_json::from_slice(&row.entry).unwrap();
                (
                    e["action"].as_str().unwrap_or_default().to_owned(),
                    e["reason"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// A copy of the data directory, taken while the server is stopped.
    fn copy_data(&self, name: &str) -> PathBuf {
        let to = self.root.join(name);
        copy_dir(&self.data, &to);
        to
    }

    /// Puts a copy of the data directory back in place of the current one.
    fn put_back(&self, copy: &Path) {
        std::fs::remove_dir_all(&self.data).unwrap();
        copy_dir(copy, &self.data);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn refused(result: Result<Running, (Option<i32>, String)>) -> String {
    match result {
        Ok(_) => panic!("kluis served a store it should have refused"),
        Err((code, stderr)) => {
            assert_eq!(code, Some(4), "{stderr}");
            assert!(stderr.contains("--accept-rollback"), "{stderr}");
            stderr
        }
    }
}

#[tokio::test]
async fn a_store_rolled_back_as_a_whole_is_refused_unless_accepted_on_the_trail() {
    let store = Store::init(None);
    store.session(2, &[]).await;
    let first = store.head();
    assert_eq!(
        first["store_id"].as_str().unwrap().len(),
        32,
        "the head names its store: {first}"
    );
    assert_eq!(
        first["seq"].as_u64().unwrap(),
        store.trail().len() as u64,
        "a clean stop leaves the last head"
    );
    let old = store.copy_data("old");

    store.session(3, &[]).await;
    let newer = store.head()["seq"].as_u64().unwrap();
    assert!(newer > first["seq"].as_u64().unwrap());

    store.put_back(&old);
    let behind = store.trail().len();
    let stderr = refused(store.serve(&[]));
    assert!(
        stderr.contains(&format!("the trail ends at entry {behind}"))
            && stderr.contains(&format!("names entry {newer}")),
        "{stderr}"
    );
    // Refused means nothing was appended to the rolled-back trail.
    assert_eq!(store.trail().len(), behind);

    // Accepted on purpose: it serves, and the trail says from where to where.
    store.session(1, &["--accept-rollback"]).await;
    let trail = store.trail();
    let accepted: Vec<_> = trail
        .iter()
        .filter(|(action, _)| action == "audit-rollback-accepted")
        .collect();
    assert_eq!(accepted.len(), 1, "{trail:?}");
    assert!(
        accepted[0]
            .1
            .contains(&format!("from entry {newer} to entry {behind}")),
        "{}",
        accepted[0].1
    );
    // From then on the head file follows this trail: a plain start serves again.
    store.session(1, &[]).await;
    assert_eq!(
        store.head()["seq"].as_u64().unwrap(),
        store.trail().len() as u64
    );
}

/// systemd, `kill` and container runtimes stop a service with SIGTERM: kluis stops as cleanly as
/// on Ctrl-C (exit 0, the head file naming the last entry, though the calls came faster than its
/// deferred writes), so a store rolled back or a trail cut while it is down is refused at the
/// next start.
#[tokio::test]
async fn sigterm_stops_as_cleanly_as_ctrl_c() {
    for signal in ["-TERM", "-INT"] {
        let store = Store::init(None);
        store.session_stopped_by(5, &[], signal).await;
        assert_eq!(
            store.head()["seq"].as_u64().unwrap(),
            store.trail().len() as u64,
            "{signal}: a clean stop leaves the last head"
        );
    }
}

#[tokio::test]
async fn a_head_file_that_is_not_this_stores_is_refused() {
    let store = Store::init(None);
    store.session(1, &[]).await;
    let path = store.head_file();
    let good = std::fs::read(&path).unwrap();
    let head: serde_json::Value = serde_json::from_slice(&good).unwrap();

    // The MAC changed, or stripped: not an anchor this store made.
    let mut changed = head.clone();
    let mac = changed["mac"].as_str().unwrap().to_owned();
    let flipped = if mac.starts_with('0') { "1" } else { "0" };
    changed["mac"] = format!("{flipped}{}", &mac[1..]).into();
    std::fs::write(&path, serde_json::to_vec(&changed).unwrap()).unwrap();
    let stderr = refused(store.serve(&[]));
    assert!(stderr.contains("MAC is not this store's"), "{stderr}");
    let mut stripped = head.clone();
    stripped["mac"] = "".into();
    std::fs::write(&path, serde_json::to_vec(&stripped).unwrap()).unwrap();
    let stderr = refused(store.serve(&[]));
    assert!(stderr.contains("has no MAC"), "{stderr}");
    // A later sequence number under the old MAC: forged, refused.
    let mut forged = head.clone();
    forged["seq"] = (head["seq"].as_u64().unwrap() + 5).into();
    std::fs::write(&path, serde_json::to_vec(&forged).unwrap()).unwrap();
    refused(store.serve(&[]));

    // Another store's head file, put in place of this one's.
    let other = Store::init(Some(&store.root.join("other-heads")));
    other.session(1, &[]).await;
    std::fs::copy(other.head_file(), &path).unwrap();
    let stderr = refused(store.serve(&[]));
    assert!(stderr.contains("not of this store"), "{stderr}");

    // Deleted: the store knows it keeps a head file.
    std::fs::remove_file(&path).unwrap();
    let stderr = refused(store.serve(&[]));
    assert!(stderr.contains("there is no head file"), "{stderr}");

    // Its own head back: served.
    std::fs::write(&path, &good).unwrap();
    store.session(1, &[]).await;
}

#[tokio::test]
async fn the_first_start_with_a_head_directory_anchors_the_trail_on_it() {
    let store = Store::init(None);
    assert!(!store.heads.exists());
    store.session(1, &[]).await;
    let trail = store.trail();
    assert!(
        trail
            .iter()
            .any(|(action, _)| action == "audit-head-anchor"),
        "{trail:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&store.heads)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    // `--accept-rollback` without a head directory is refused: there is nothing to accept.
    let out = kluis()
        .args([
            "serve",
            "--accept-rollback",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&store.data)
        .arg("--key-file")
        .arg(&store.key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a head directory"));
}

/// Runs `kluis serve --dev` on `data` and expects a refusal: exit code 4, the message.
fn dev_refused(data: &Path) -> String {
    let out = kluis()
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("`kluis serve --dev` did not create")
            && stderr.contains("kluis serve --data-dir"),
        "{stderr}"
    );
    assert!(
        !data.join("dev-tokens.json").exists(),
        "no dev tokens for a store --dev did not create"
    );
    stderr
}

#[tokio::test]
async fn serve_dev_refuses_a_store_it_did_not_create() {
    // A store made by `kluis init`: refused before any key is read or token minted.
    let store = Store::init(None);
    let before = store.trail();
    dev_refused(&store.data);
    assert_eq!(store.trail(), before, "nothing was appended");

    // The mark set by editing the database, with the root key where --dev looks for it: the
    // mark must point at an entry only the audit key makes, so it is refused all the same.
    let db = kluis::store::SqliteStore::open(&store.data.join("kluis.db")).unwrap();
    db.set_meta("dev_store", b"1").unwrap();
    drop(db);
    std::fs::copy(&store.key, store.data.join("dev-root.key")).unwrap();
    dev_refused(&store.data);
    let minted = store
        .trail()
        .iter()
        .filter(|(action, _)| action == "token-issue")
        .count();
    assert_eq!(minted, 1, "only the token of `kluis init`");

    // A store `serve --dev` made is served again by `serve --dev`.
    let tmp = crate::common::private_tempdir();
    let dev = tmp.path().join("dev");
    for _ in 0..2 {
        let mut child = kluis()
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dev)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let banner = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map(Result::unwrap)
            .find(|l| l.starts_with("kluis dev server on"));
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            banner.is_some(),
            "serve --dev did not start on its own store"
        );
    }
    assert!(
        tmp.path().join("dev-head").is_dir(),
        "--dev keeps its head beside the store"
    );
}
