//! The test harness: starts a kluis server in-process on 127.0.0.1:0 over a fresh store, with
//! one token per role, and stops it through a shutdown oneshot.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use kluis::{
    config::{self, RawConfig},
    crypto::Algorithm,
    domain::{PrincipalId, Role, SubjectId},
    keys::{Keyring, RootSecret},
    pb::{self, admin_client::AdminClient, vault_client::VaultClient},
    vault::{Vault, tokens::TokenSpec},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Request, transport::Channel};

/// The subject scoped tokens are bound to.
pub const SCOPED_SUBJECT: &str = "REL-0001";

pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub vault: Arc<Vault>,
    tokens: HashMap<Role, String>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server over a fresh store with a key file.
    pub async fn start() -> Self {
        let tmp = crate::common::private_tempdir();
        let dir = tmp.path().to_owned();
        let secret = RootSecret::create_key_file(&dir.join("root.key")).unwrap();
        init_store(&dir, &secret, Algorithm::Aes256Gcm);
        let mut server = Self::open(&dir, &secret).await.unwrap();
        server.issue_role_tokens();
        server._tmp = Some(tmp);
        server
    }

    /// A server over a fresh store whose lifecycle clock the test sets.
    pub async fn start_with_clock(clock: Arc<dyn kluis::domain::Clock>) -> Self {
        let tmp = crate::common::private_tempdir();
        let dir = tmp.path().to_owned();
        let secret = RootSecret::create_key_file(&dir.join("root.key")).unwrap();
        init_store(&dir, &secret, Algorithm::Aes256Gcm);
        let mut server = Self::open_with(&dir, &secret, Some(clock), None)
            .await
            .unwrap();
        server.issue_role_tokens();
        server._tmp = Some(tmp);
        server
    }

    /// A server over a fresh store whose policies come from `files` (reloadable).
    pub async fn start_with_policies(files: Vec<PathBuf>) -> Self {
        let tmp = crate::common::private_tempdir();
        let dir = tmp.path().to_owned();
        let secret = RootSecret::create_key_file(&dir.join("root.key")).unwrap();
        init_store(&dir, &secret, Algorithm::Aes256Gcm);
        let policy = Some(config::RawPolicy {
            schema: None,
            policies: Some(files),
        });
        let mut server = Self::open_with(&dir, &secret, None, policy).await.unwrap();
        server.issue_role_tokens();
        server._tmp = Some(tmp);
        server
    }

    /// A server over a fresh store with these `[limits]`.
    pub async fn start_with_limits(limits: config::RawLimits) -> Self {
        let tmp = crate::common::private_tempdir();
        let dir = tmp.path().to_owned();
        let secret = RootSecret::create_key_file(&dir.join("root.key")).unwrap();
        init_store(&dir, &secret, Algorithm::Aes256Gcm);
        let cfg = RawConfig {
            data_dir: Some(dir.clone()),
            limits: Some(limits),
            ..Default::default()
        };
        let mut server = Self::open_config(&dir, &secret, None, cfg).await.unwrap();
        server.issue_role_tokens();
        server._tmp = Some(tmp);
        server
    }

    /// A node on the PostgreSQL store `url`, initialised with `secret` when it is empty; local
    /// files (none of the store) in `dir`.
    pub async fn start_node(url: &str, dir: &Path, secret: &RootSecret) -> Self {
        let cfg = RawConfig {
            data_dir: Some(dir.to_owned()),
            store: Some(url.to_owned()),
            ..Default::default()
        };
        let validated = RawConfig {
            data_dir: Some(dir.to_owned()),
            store: Some(url.to_owned()),
            ..Default::default()
        }
        .validate(false)
        .unwrap();
        let store =
            config::open_configured_store(dir, validated.store.as_ref(), validated.read_cache_mib)
                .unwrap();
        if !Keyring::is_initialized(store.as_ref()).unwrap() {
            Keyring::initialize(store.as_ref(), secret, Algorithm::Aes256Gcm).unwrap();
        }
        Self::open_config(dir, secret, None, cfg).await.unwrap()
    }

    /// Like `start_node`, with the policies of `file` (reloadable).
    pub async fn start_node_with_policies(
        url: &str,
        dir: &Path,
        secret: &RootSecret,
        file: &Path,
    ) -> Self {
        let first = Self::start_node(url, dir, secret).await;
        drop(first.stop().await);
        let cfg = RawConfig {
            data_dir: Some(dir.to_owned()),
            store: Some(url.to_owned()),
            policy: Some(config::RawPolicy {
                schema: None,
                policies: Some(vec![file.to_owned()]),
            }),
            ..Default::default()
        };
        Self::open_config(dir, secret, None, cfg).await.unwrap()
    }

    /// Uses the role tokens `other` issued (on the same store).
    pub fn share_tokens(&mut self, other: &TestServer) {
        self.tokens = other.tokens.clone();
    }

    /// A server over a fresh store with this configuration (TLS, `[[service]]`, `[[oidc]]`);
    /// `cfg.data_dir` is set here.
    pub async fn start_with_config(mut cfg: RawConfig) -> Self {
        let tmp = crate::common::private_tempdir();
        let dir = tmp.path().to_owned();
        let secret = RootSecret::create_key_file(&dir.join("root.key")).unwrap();
        init_store(&dir, &secret, Algorithm::Aes256Gcm);
        cfg.data_dir = Some(dir.clone());
        let mut server = Self::open_config(&dir, &secret, None, cfg).await.unwrap();
        server.issue_role_tokens();
        server._tmp = Some(tmp);
        server
    }

    /// A server over an existing store in `dir`.
    pub async fn open(dir: &Path, secret: &RootSecret) -> Result<Self, config::OpenError> {
        Self::open_with(dir, secret, None, None).await
    }

    async fn open_with(
        dir: &Path,
        secret: &RootSecret,
        clock: Option<Arc<dyn kluis::domain::Clock>>,
        policy: Option<config::RawPolicy>,
    ) -> Result<Self, config::OpenError> {
        let cfg = RawConfig {
            data_dir: Some(dir.to_owned()),
            policy,
            ..Default::default()
        };
        Self::open_config(dir, secret, clock, cfg).await
    }

    async fn open_config(
        dir: &Path,
        secret: &RootSecret,
        clock: Option<Arc<dyn kluis::domain::Clock>>,
        cfg: RawConfig,
    ) -> Result<Self, config::OpenError> {
        let cfg = cfg.validate(false).unwrap();
        let mut vault = config::open_vault(&cfg, secret)?;
        if let Some(clock) = clock {
            vault = vault.with_clock(clock);
        }
        let vault = Arc::new(vault);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let v = Arc::clone(&vault);
        let tls = kluis::server::TlsPem::read(&cfg).unwrap();
        let identity = cfg.identity.clone();
        let identity =
            tokio::task::spawn_blocking(move || kluis::identity::Identity::load(&identity))
                .await
                .unwrap();
        let options = kluis::server::ServeOptions {
            tls,
            identity: Arc::new(identity),
            connections: cfg.connections,
            streams: cfg.streams,
            ..Default::default()
        };
        let handle = tokio::spawn(async move {
            kluis::server::serve(v, listener, options, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Ok(Self {
            addr,
            dir: dir.to_owned(),
            vault,
            tokens: HashMap::new(),
            shutdown: Some(tx),
            handle: Some(handle),
            _tmp: None,
        })
    }

    /// Issues one token per role; scoped roles are bound to `SCOPED_SUBJECT`.
    pub fn issue_role_tokens(&mut self) {
        for &role in Role::ALL {
            let scoped = matches!(
                role,
                Role::Contractor
                    | Role::Bailiff
                    | Role::Lawyer
                    | Role::Subject
                    | Role::Representative
            );
            let token = self.issue(role, scoped.then_some(SCOPED_SUBJECT));
            self.tokens.insert(role, token);
        }
    }

    /// Issues a token for `role` directly through the vault.
    pub fn issue(&self, role: Role, scope: Option<&str>) -> String {
        self.issue_to(&format!("test-{role}"), role, scope)
    }

    /// Issues a token of `principal` for `role` directly through the vault.
    pub fn issue_to(&self, principal: &str, role: Role, scope: Option<&str>) -> String {
        let spec = TokenSpec {
            principal: PrincipalId::parse("p", principal).unwrap(),
            roles: vec![role],
            ttl_secs: 3600,
            scope_subject: scope.map(|s| SubjectId::parse("s", s).unwrap()),
        };
        self.vault
            .bootstrap_token(&spec)
            .unwrap()
            .token
            .expose_secret()
            .to_owned()
    }

    pub fn token(&self, role: Role) -> &str {
        &self.tokens[&role]
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join(config::DB_FILE)
    }

    /// The audit trail's file beside the database.
    pub fn trail_path(&self) -> PathBuf {
        kluis::store::sqlite::trail_path(&self.db_path())
    }

    /// A connection to both of the store's files as kluis opens them: the trail's as `main`,
    /// the database attached as `store`, every table found by its name alone.
    pub fn store_files(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(self.trail_path()).unwrap();
        conn.execute(
            "ATTACH DATABASE ?1 AS store",
            [self.db_path().to_str().unwrap()],
        )
        .unwrap();
        conn
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn client(&self) -> VaultClient<Channel> {
        VaultClient::new(self.channel().await)
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    pub async fn raw_channel(&self) -> Channel {
        self.channel().await
    }

    /// Stops the server, runs `between` on the database file, and starts it again on the same
    /// store with the same tokens.
    pub async fn restart_with(self, between: impl FnOnce(&Path)) -> Self {
        let stopped = self.stop_then(between).await;
        let server = Self::open(&stopped.dir, &stopped.secret).await.unwrap();
        stopped.resume(server)
    }

    /// Stops the server and runs `between` on its database file: what a restart needs.
    async fn stop_then(mut self, between: impl FnOnce(&Path)) -> Stopped {
        let tokens = std::mem::take(&mut self.tokens);
        let dir = self.dir.clone();
        let db = self.db_path();
        let tmp = self.stop().await;
        between(&db);
        let secret = RootSecret::read_key_file(&dir.join("root.key")).unwrap();
        Stopped {
            dir,
            db,
            secret,
            tokens,
            tmp,
        }
    }

    /// Stops the server, runs `between` on the database file, and expects the server not to
    /// start again; runs `repair` on the file then and starts it. The refusal's message, and
    /// the server started after the repair (with the same tokens).
    pub async fn restart_refused(
        self,
        between: impl FnOnce(&Path),
        repair: impl FnOnce(&Path),
    ) -> (String, Self) {
        let stopped = self.stop_then(between).await;
        let refusal = match Self::open(&stopped.dir, &stopped.secret).await {
            Ok(_) => panic!("the server started over the file `between` left"),
            Err(e) => e.to_string(),
        };
        repair(&stopped.db);
        let server = Self::open(&stopped.dir, &stopped.secret).await.unwrap();
        (refusal, stopped.resume(server))
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
        self._tmp.take()
    }
}

/// Initialises a store in `dir`.
pub fn init_store(dir: &Path, secret: &RootSecret, algorithm: Algorithm) {
    let store = config::open_store(dir).unwrap();
    Keyring::initialize(store.as_ref(), secret, algorithm).unwrap();
}

/// A request carrying `token`.
/// Writes to `file` the default policies and one more that forbids customer service to read
/// contract data (policy `no-contract-reads-by-customer-service`): a stricter set to reload.
pub fn forbid_contract_reads(file: &Path) {
    std::fs::write(
        file,
        format!(
            "{}\n@id(\"no-contract-reads-by-customer-service\")\nforbid (principal in Kluis::Role::\"customer-service\", action == Kluis::Action::\"read\", resource) when {{ resource.purpose == \"contract\" }};\n",
            kluis::policy::DEFAULT_POLICIES
        ),
    )
    .unwrap();
}

pub fn req<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// An access context.
pub fn ctx(purpose: &str, case_ref: &str, justification: &str) -> Option<pb::AccessContext> {
    Some(pb::AccessContext {
        purpose: purpose.into(),
        case_ref: case_ref.into(),
        justification: justification.into(),
        channel: "app".into(),
        break_glass: false,
    })
}

/// A nuisance context with case reference and justification.
pub fn nuisance_ctx() -> Option<pb::AccessContext> {
    ctx(
        "nuisance",
        "N-2026-0042",
        "handling the complaint of the neighbours",
    )
}

pub fn text(name: &str, category: &str, value: &str) -> pb::FieldValue {
    pb::FieldValue {
        name: name.into(),
        category: category.into(),
        value: Some(pb::field_value::Value::Text(value.into())),
        masked: false,
    }
}

pub fn binary(name: &str, category: &str, value: &[u8]) -> pb::FieldValue {
    pb::FieldValue {
        name: name.into(),
        category: category.into(),
        value: Some(pb::field_value::Value::Binary(value.to_vec())),
        masked: false,
    }
}

pub fn text_of(field: &pb::FieldValue) -> &str {
    match &field.value {
        Some(pb::field_value::Value::Text(t)) => t,
        _ => panic!("field `{}` is not text", field.name),
    }
}

pub fn field<'a>(resp: &'a pb::GetRecordResponse, name: &str) -> Option<&'a pb::FieldValue> {
    resp.fields.iter().find(|f| f.name == name)
}

/// Stores a record and returns its id.
pub async fn put(
    server: &TestServer,
    role: Role,
    context: Option<pb::AccessContext>,
    subject: &str,
    fields: Vec<pb::FieldValue>,
) -> String {
    let mut client = server.client().await;
    client
        .put_record(req(
            server.token(role),
            pb::PutRecordRequest {
                context,
                subject_id: subject.into(),
                fields,
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .record_id
}

/// Reads a record.
pub async fn get(
    server: &TestServer,
    token: &str,
    context: Option<pb::AccessContext>,
    record_id: &str,
) -> Result<pb::GetRecordResponse, tonic::Status> {
    let mut client = server.client().await;
    client
        .get_record(req(
            token,
            pb::GetRecordRequest {
                context,
                record_id: record_id.into(),
                fields: vec![],
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// The audit entries as JSON values.
/// Asserts that `status` refuses a call at a cap (`RESOURCE_EXHAUSTED`) and that its message says
/// each of `says` (the limit's key, what the caller can do).
#[track_caller]
pub fn assert_exhausted(status: &tonic::Status, says: &[&str]) {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    for part in says {
        assert!(
            status.message().contains(part),
            "`{part}` not in: {}",
            status.message()
        );
    }
}

/// `call`, tried every 100 ms for 5 s while it is refused at a cap (a place given back only once
/// the server sees its client gone): its first success. Any other error, or a cap still full at
/// the end, fails the test.
pub async fn once_a_place_is_free<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    for _ in 0..50 {
        match call().await {
            Ok(done) => return done,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(other) => panic!("{what}: {other:?}"),
        }
    }
    panic!("{what}: still refused at its cap after 5 s");
}

/// The action and decision of each of the last `n` of `entries`, oldest first.
pub fn last_decisions(entries: &[serde_json::Value], n: usize) -> Vec<(&str, &str)> {
    entries[entries.len() - n..]
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
            )
        })
        .collect()
}

pub fn audit_entries(server: &TestServer) -> Vec<serde_json::Value> {
    use kluis::store::prelude::*;
    let store = kluis::store::SqliteStore::open(&server.db_path()).unwrap();
    store
        .audit_entries(1, 100_000)
        .unwrap()
        .into_iter()
        .map(|row| serde_json::from_slice(&row.entry).unwrap())
        .collect()
}

/// A temporary directory open to its owner only, as kluis requires of a data directory.
pub fn private_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    dir
}

/// A lifecycle clock the test moves.
#[derive(Debug)]
pub struct TestClock(pub std::sync::atomic::AtomicI64);

impl kluis::domain::Clock for TestClock {
    fn now(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl TestClock {
    /// A clock at the real now.
    pub fn at_now() -> Arc<Self> {
        Arc::new(Self(std::sync::atomic::AtomicI64::new(
            kluis::domain::now_unix(),
        )))
    }

    /// Moves the clock by `secs` (negative: back).
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }

    /// The clock's now.
    pub fn now_for_test(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The byte at `pos` of test file `seed`: reproducible without holding the file.
pub fn file_bytes(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let word = |w: u64| (w ^ seed.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let first = offset / 8;
    let last = (offset + len as u64).div_ceil(8);
    let mut out = Vec::with_capacity(((last - first) * 8) as usize);
    for w in first..last {
        out.extend_from_slice(&word(w).to_le_bytes());
    }
    let skip = (offset % 8) as usize;
    out.drain(..skip);
    out.truncate(len);
    out
}

/// The SHA-256 of test file `seed` of `size` bytes, hex.
pub fn file_sha256(seed: u64, size: u64) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut at = 0;
    while at < size {
        let n = (size - at).min(1 << 20) as usize;
        h.update(file_bytes(seed, at, n));
        at += n as u64;
    }
    hex::encode(h.finalize())
}

/// The first message of an upload.
pub fn evidence_start(
    context: Option<pb::AccessContext>,
    subject_id: &str,
    record_id: &str,
    field: &str,
    media_type: &str,
    file_name: &str,
) -> pb::EvidenceChunk {
    pb::EvidenceChunk {
        part: Some(pb::evidence_chunk::Part::Start(pb::EvidenceStart {
            context,
            subject_id: subject_id.into(),
            record_id: record_id.into(),
            field: field.into(),
            category: "nuisance-evidence".into(),
            media_type: media_type.into(),
            file_name: file_name.into(),
        })),
    }
}

/// The message that ends an upload of `size` bytes.
pub fn evidence_end(size: u64) -> pb::EvidenceChunk {
    pb::EvidenceChunk {
        part: Some(pb::evidence_chunk::Part::End(pb::EvidenceEnd {
            size,
            sha256: String::new(),
        })),
    }
}

/// Uploads test file `seed` of `size` bytes in chunks of `chunk` bytes after `start`.
pub async fn upload(
    server: &TestServer,
    token: &str,
    start: pb::EvidenceChunk,
    seed: u64,
    size: u64,
    chunk: usize,
) -> Result<pb::PutEvidenceResponse, tonic::Status> {
    let data = (0..size.div_ceil(chunk as u64)).map(move |i| {
        let offset = i * chunk as u64;
        let n = (size - offset).min(chunk as u64) as usize;
        pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::Data(
                file_bytes(seed, offset, n).into(),
            )),
        }
    });
    let messages = std::iter::once(start)
        .chain(data)
        .chain(std::iter::once(evidence_end(size)));
    let mut client = server.client().await;
    client
        .put_evidence(req(token, tokio_stream::iter(messages)))
        .await
        .map(tonic::Response::into_inner)
}

/// Uploads `bytes` as one file after `start`.
pub async fn upload_bytes(
    server: &TestServer,
    token: &str,
    start: pb::EvidenceChunk,
    bytes: &[u8],
) -> Result<pb::PutEvidenceResponse, tonic::Status> {
    let messages = vec![
        start,
        pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::Data(bytes.to_vec().into())),
        },
        evidence_end(bytes.len() as u64),
    ];
    let mut client = server.client().await;
    client
        .put_evidence(req(token, tokio_stream::iter(messages)))
        .await
        .map(tonic::Response::into_inner)
}

/// Uploads `bytes` as one file after `start`, in messages of `chunk` bytes.
pub async fn upload_in_chunks(
    server: &TestServer,
    token: &str,
    start: pb::EvidenceChunk,
    bytes: &[u8],
    chunk: usize,
) -> Result<pb::PutEvidenceResponse, tonic::Status> {
    let messages: Vec<pb::EvidenceChunk> = std::iter::once(start)
        .chain(bytes.chunks(chunk).map(|c| pb::EvidenceChunk {
            part: Some(pb::evidence_chunk::Part::Data(c.to_vec().into())),
        }))
        .chain(std::iter::once(evidence_end(bytes.len() as u64)))
        .collect();
    let mut client = server.client().await;
    client
        .put_evidence(req(token, tokio_stream::iter(messages)))
        .await
        .map(tonic::Response::into_inner)
}

/// Downloads an evidence file (or a range): the info message and the bytes.
pub async fn download(
    server: &TestServer,
    token: &str,
    context: Option<pb::AccessContext>,
    evidence_id: &str,
    range: Option<(u64, u64)>,
) -> Result<(pb::EvidenceInfo, Vec<u8>), tonic::Status> {
    let mut client = server.client().await;
    let mut stream = client
        .get_evidence(req(
            token,
            pb::GetEvidenceRequest {
                context,
                evidence_id: evidence_id.into(),
                range: range.map(|(offset, length)| pb::ByteRange { offset, length }),
                export: false,
            },
        ))
        .await?
        .into_inner();
    let Some(pb::EvidenceData {
        part: Some(pb::evidence_data::Part::Info(info)),
    }) = stream.message().await?
    else {
        panic!("the first message of GetEvidence is not `info`");
    };
    let mut bytes = Vec::new();
    while let Some(msg) = stream.message().await? {
        match msg.part {
            Some(pb::evidence_data::Part::Data(d)) => bytes.extend_from_slice(&d),
            _ => panic!("a second `info` message"),
        }
    }
    Ok((info, bytes))
}

/// Approves a token that waits for its second person, as the privacy officer of `server`.
pub async fn approve(server: &TestServer, token_id: &str) {
    server
        .admin()
        .await
        .approve_token(req(
            server.token(Role::PrivacyOfficer),
            kluis::pb::ApproveTokenRequest {
                token_id: token_id.into(),
                justification: "checked with the team lead".into(),
            },
        ))
        .await
        .unwrap();
}

/// `ListRecords` of `subject` with `token` in `context`, page after page: the records of all
/// pages.
pub async fn list_records(
    server: &TestServer,
    token: &str,
    context: Option<pb::AccessContext>,
    subject: &str,
) -> Result<Vec<pb::RecordInfo>, tonic::Status> {
    let mut client = server.client().await;
    let mut records = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_records(req(
                token,
                pb::ListRecordsRequest {
                    context: context.clone(),
                    subject_id: subject.into(),
                    page_size: 0,
                    page_token,
                },
            ))
            .await?
            .into_inner();
        records.extend(page.records);
        if page.next_page_token.is_empty() {
            return Ok(records);
        }
        page_token = page.next_page_token;
    }
}

/// `ExportSubject` of `subject` with `token` in `context`: every line, parsed.
pub async fn export(
    server: &TestServer,
    token: &str,
    context: Option<pb::AccessContext>,
    subject: &str,
    portable: bool,
) -> Result<Vec<serde_json::Value>, tonic::Status> {
    let mut stream = server
        .client()
        .await
        .export_subject(req(
            token,
            pb::ExportSubjectRequest {
                context,
                subject_id: subject.into(),
                portable,
            },
        ))
        .await?
        .into_inner();
    let mut lines = Vec::new();
    while let Some(line) = stream.message().await? {
        lines.push(serde_json::from_str(&line.json).unwrap());
    }
    Ok(lines)
}

/// `RectifyRecord` of `record_id` under the rectification request `request_id`, with `token`.
pub async fn rectify(
    server: &TestServer,
    token: &str,
    request_id: &str,
    record_id: &str,
    fields: Vec<pb::FieldValue>,
) -> Result<pb::RectifyRecordResponse, tonic::Status> {
    server
        .admin()
        .await
        .rectify_record(req(
            token,
            pb::RectifyRecordRequest {
                request_id: request_id.into(),
                record_id: record_id.into(),
                fields,
                justification: "letter 2026-91".into(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// A stopped server's store, secret, tokens and directory (`TestServer::stop_then`).
struct Stopped {
    dir: PathBuf,
    db: PathBuf,
    secret: RootSecret,
    tokens: HashMap<Role, String>,
    tmp: Option<tempfile::TempDir>,
}

impl Stopped {
    /// `server`, started again on this store, with its tokens and directory.
    fn resume(self, mut server: TestServer) -> TestServer {
        server.tokens = self.tokens;
        server._tmp = self.tmp;
        server
    }
}

/// Copies the rows of record `id` (the record, its fields and their search tags) into a file
/// of their own beside the database, as a thief keeps a copy before a deletion.
pub fn keep_copy(server: &TestServer, id: &str, name: &str) {
    let conn = rusqlite::Connection::open(server.db_path()).unwrap();
    let copy = server.db_path().with_file_name(format!("{name}.db"));
    conn.execute("ATTACH ?1 AS copy", [copy.to_str().unwrap()])
        .unwrap();
    for table in ["records", "fields", "search_tags"] {
        let column = if table == "records" {
            "id"
        } else {
            "record_id"
        };
        conn.execute(
            &format!("CREATE TABLE copy.{table} AS SELECT * FROM main.{table} WHERE {column} = ?1"),
            [id],
        )
        .unwrap();
    }
}

/// Puts the copy kept by `keep_copy` back in place.
pub fn put_copy_back(server: &TestServer, name: &str) {
    let conn = rusqlite::Connection::open(server.db_path()).unwrap();
    let copy = server.db_path().with_file_name(format!("{name}.db"));
    conn.execute("ATTACH ?1 AS copy", [copy.to_str().unwrap()])
        .unwrap();
    for table in ["records", "fields", "search_tags"] {
        conn.execute(
            &format!("INSERT INTO main.{table} SELECT * FROM copy.{table}"),
            [],
        )
        .unwrap();
    }
}

/// A rekey of `purpose` by the security officer, to its end.
pub async fn rekey(server: &TestServer, purpose: &str) -> Result<(), tonic::Status> {
    let mut stream = server
        .admin()
        .await
        .rekey(req(
            server.token(Role::SecurityOfficer),
            pb::KeyJobRequest {
                purpose: purpose.into(),
                justification: "yearly".into(),
            },
        ))
        .await?
        .into_inner();
    while stream.message().await?.is_some() {}
    Ok(())
}

/// Whether a listing's records name the evidence file `evidence_id` among their fields.
pub fn lists_evidence(records: &[pb::RecordInfo], evidence_id: &str) -> bool {
    records.iter().flat_map(|r| &r.fields).any(|f| {
        f.evidence
            .as_ref()
            .is_some_and(|e| e.evidence_id == evidence_id)
    })
}

/// The rows `store verify` (by the security officer, through `server`) names.
pub async fn bad_rows(server: &TestServer) -> Vec<pb::BadRow> {
    server
        .admin()
        .await
        .verify_store(req(
            server.token(Role::SecurityOfficer),
            pb::VerifyStoreRequest {},
        ))
        .await
        .unwrap()
        .into_inner()
        .bad_rows
}

/// The directory of the evidence segment files beside the SQLite database at `db`.
pub fn evidence_dir(db: &Path) -> PathBuf {
    let name = db.file_name().unwrap().to_string_lossy().into_owned();
    db.with_file_name(format!("{name}.evidence"))
}

/// The sealed bytes of segment `index` of `evidence_id` in the SQLite database at `db`, where
/// they are: in the upload's file at the row's place, or in the row.
pub fn sealed_segment(db: &Path, evidence_id: &str, index: i64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let conn = rusqlite::Connection::open(db).unwrap();
    let (sealed, at, len): (Vec<u8>, Option<i64>, Option<i64>) = conn
        .query_row(
            "SELECT sealed, at, len FROM evidence_segments WHERE evidence_id = ?1 AND idx = ?2",
            rusqlite::params![evidence_id, index],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    match at {
        None => sealed,
        Some(at) => {
            let file = std::fs::File::open(evidence_dir(db).join(evidence_id)).unwrap();
            let mut bytes = vec![0; usize::try_from(len.unwrap()).unwrap()];
            file.read_exact_at(&mut bytes, u64::try_from(at).unwrap())
                .unwrap();
            bytes
        }
    }
}

/// Writes `bytes` over segment `index` of `evidence_id` where it is stored, as someone with
/// the data directory could: in the file at the row's place (as many bytes as it names), or in
/// the row.
pub fn overwrite_segment(db: &Path, evidence_id: &str, index: i64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let conn = rusqlite::Connection::open(db).unwrap();
    let at: Option<i64> = conn
        .query_row(
            "SELECT at FROM evidence_segments WHERE evidence_id = ?1 AND idx = ?2",
            rusqlite::params![evidence_id, index],
            |r| r.get(0),
        )
        .unwrap();
    match at {
        None => {
            conn.execute(
                "UPDATE evidence_segments SET sealed = ?3 WHERE evidence_id = ?1 AND idx = ?2",
                rusqlite::params![evidence_id, index, bytes],
            )
            .unwrap();
        }
        Some(at) => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(evidence_dir(db).join(evidence_id))
                .unwrap();
            file.write_all_at(bytes, u64::try_from(at).unwrap())
                .unwrap();
        }
    }
}

/// The evidence ids that have a segment file beside the SQLite database at `db`.
pub fn segment_files(db: &Path) -> Vec<String> {
    let mut ids: Vec<String> = match std::fs::read_dir(evidence_dir(db)) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{e}"),
    };
    ids.sort();
    ids
}

/// Every byte of the store's files beside `db` (the database and the audit trail's file, each
/// with its write-ahead log and shared-memory index): what a thief of the data directory reads.
pub fn store_file_bytes(db: &Path) -> Vec<u8> {
    let trail = kluis::store::sqlite::trail_path(db);
    [db, trail.as_path()]
        .iter()
        .flat_map(|file| ["", "-wal", "-shm"].map(|s| format!("{}{s}", file.display())))
        .filter_map(|path| std::fs::read(path).ok())
        .flatten()
        .collect()
}

/// The records in the store file `db` that no allowed entry of its trail's file names: a write
/// stored without its entry (the entry commits first, so there should be none).
pub fn records_off_the_trail(db: &Path) -> Vec<String> {
    let trail = rusqlite::Connection::open(kluis::store::sqlite::trail_path(db)).unwrap();
    let audited: std::collections::HashSet<String> = trail
        .prepare(
            "SELECT json_extract(CAST(entry AS TEXT), '$.record') FROM audit
             WHERE json_extract(CAST(entry AS TEXT), '$.decision') = 'allow'
               AND json_extract(CAST(entry AS TEXT), '$.record') IS NOT NULL",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let records: Vec<String> = rusqlite::Connection::open(db)
        .unwrap()
        .prepare("SELECT id FROM records")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    records
        .into_iter()
        .filter(|id| !audited.contains(id))
        .collect()
}

/// The status a call's response ends with: in its headers when trailers-only (as refusals
/// before a handler's first message are), else in the trailers at the end of its body.
pub async fn status_of_response<B>(response: tonic::codegen::http::Response<B>) -> tonic::Status
where
    B: http_body::Body + Unpin,
    B::Error: std::fmt::Debug,
{
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    loop {
        match std::future::poll_fn(|cx| {
            http_body::Body::poll_frame(std::pin::Pin::new(&mut body), cx)
        })
        .await
        {
            Some(Ok(frame)) => {
                if let Some(status) = frame
                    .trailers_ref()
                    .and_then(tonic::Status::from_header_map)
                {
                    return status;
                }
            }
            Some(Err(e)) => panic!("the call ended without a status: {e:?}"),
            None => panic!("the call ended without a status"),
        }
    }
}
