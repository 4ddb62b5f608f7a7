//! Configuration, loaded in stages: a TOML file (`RawConfig`, unknown keys refused), environment
//! overrides read through `Env`, then validation into a `Config` that reports every problem at
//! once. Also opens a vault from a `Config` (store → unseal → policy → vault).
//!
//! Invariant: the only module that reads the process environment.
//! Invariant: secrets arrive as file paths or environment variables, never as values in the file.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{
    crypto::Algorithm,
    domain::{Channels, Limits, Purpose, Retention},
    identity::{IdentityConfig, RawOidc, RawService},
    keys::{KeyError, Keyring, RootSecret},
    policy::{self, Engine, PolicyError},
    store::{SqliteStore, Store, StoreError},
    vault::{RetentionTable, Vault, VaultError, keyadmin::KeySettings, mask::MaskTable},
};

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// The database file inside the data directory.
pub const DB_FILE: &str = "kluis.db";

/// Most calls `limits.max_calls_running` may let run at once: the blocking threads the runtime
/// keeps (tokio's default), which exports and downloads share.
pub const MAX_CALLS_RUNNING: usize = 512;

/// The most `limits.max_report_accesses` may be: a page of a subject access report is built in
/// memory, about a kilobyte per access.
pub const MAX_REPORT_ACCESSES: usize = 100_000;

/// Where environment variables come from (the process, or a map in tests).
pub trait Env {
    /// The value of `name`, if set and valid UTF-8.
    fn var(&self, name: &str) -> Option<String>;
}

/// The longest period between two sweeps (of due key versions, of records past retention): a
/// sweep's lease lasts two periods and a minute, and a stored lease longer than that
/// (`store::MAX_LEASE_SECS`) was not written by kluis.
pub const MAX_SWEEP_INTERVAL_SECS: u64 = 86_400;

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemEnv;

impl Env for SystemEnv {
    #[expect(
        clippy::disallowed_methods,
        reason = "this is the one place that reads the environment"
    )]
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// The largest `read_cache_mib` taken: 64 GiB.
const MAX_READ_CACHE_MIB: usize = 64 * 1024;

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `host:port` to listen on.
    pub listen: Option<String>,
    /// Directory of the store.
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL store: a libpq-style connection string. Without it, SQLite in `data_dir`.
    pub store: Option<String>,
    /// AEAD for new ciphertexts: `aes-256-gcm` or `xchacha20-poly1305`.
    pub algorithm: Option<String>,
    /// File holding the root key (64 hex digits).
    pub key_file: Option<PathBuf>,
    /// File holding the root passphrase.
    pub passphrase_file: Option<PathBuf>,
    /// How many unwrapped subject keys to keep in memory.
    pub key_cache_size: Option<usize>,
    /// MiB of records read (sealed, as stored) kept in memory between reads on a SQLite store;
    /// 0 keeps none.
    pub read_cache_mib: Option<usize>,
    /// TLS certificate and key.
    pub tls: Option<RawTls>,
    /// Policy schema and files.
    pub policy: Option<RawPolicy>,
    /// Retention per purpose, e.g. `nuisance = "730d"`.
    pub retention: Option<HashMap<String, String>>,
    /// Request limits.
    pub limits: Option<RawLimits>,
    /// Key jobs.
    pub keys: Option<RawKeys>,
    /// The data lifecycle.
    pub lifecycle: Option<RawLifecycle>,
    /// The closed list of channels a request may declare (default: `app`, `counter`, `phone`,
    /// `email`, `letter`, `portal`, `social-media`).
    pub channels: Option<Vec<String>>,
    /// The audit trail.
    pub audit: Option<RawAudit>,
    /// Services (case apps, jobs) known by their client certificate or kluis token, and the
    /// roles they may act for on behalf of an employee.
    pub service: Option<Vec<RawService>>,
    /// OpenID Connect identity providers whose tokens sign staff in.
    pub oidc: Option<Vec<RawOidc>>,
    /// What seals the root key besides a key file or passphrase: an HSM.
    pub seal: Option<RawSeal>,
    /// Prometheus metrics.
    pub metrics: Option<RawMetrics>,
    /// Searchable fields per purpose: `[search.contract] fields = ["email", "iban"]`.
    pub search: Option<std::collections::BTreeMap<String, crate::search::RawSearch>>,
    /// Which mask a field a policy allows `read-masked` gets: mask name → field names, e.g.
    /// `iban = ["iban", "rekening"]` (replacing that mask's default fields).
    pub masks: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// `host:port` of the HTTP listener that serves `/metrics`.
    pub listen: Option<String>,
}

/// `[seal]`: an HSM through PKCS#11 (`type = "pkcs11"`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSeal {
    /// `pkcs11`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The PKCS#11 module (shared library).
    pub module: Option<PathBuf>,
    /// The token's label.
    pub token_label: Option<String>,
    /// The AES key's label.
    pub key_label: Option<String>,
    /// A file holding the user PIN (mode 0600).
    pub pin_file: Option<PathBuf>,
}

/// `[audit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Directory outside the store where the trail's MAC'd head is kept
    /// (`head-<store id>.json`); a store whose trail is behind it is refused at start.
    pub head_dir: Option<PathBuf>,
}

/// `[lifecycle]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLifecycle {
    /// How often records past their retention are destroyed, in seconds.
    pub sweep_interval_secs: Option<u64>,
}

/// `[keys]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    /// Subject keys (rewrap) or subjects (rekey) per transaction.
    pub batch_size: Option<usize>,
    /// Pause between batches in milliseconds, to leave room for traffic.
    pub batch_pause_ms: Option<u64>,
    /// Default waiting period before a scheduled key destruction, e.g. `7d`.
    pub destroy_wait: Option<String>,
    /// How often due destructions are carried out, in seconds.
    pub sweep_interval_secs: Option<u64>,
}

/// `[tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM certificates of the CA that signs client certificates: the server asks for one.
    pub client_ca: Option<PathBuf>,
    /// `required` (the default with `client_ca`: a connection without a client certificate
    /// fails its handshake) or `optional` (kluis tokens without a certificate still work).
    pub client_auth: Option<String>,
}

/// `[policy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Cedar schema file (`.cedarschema`).
    pub schema: Option<PathBuf>,
    /// Cedar policy files.
    pub policies: Option<Vec<PathBuf>>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Fields per record.
    pub max_fields: Option<usize>,
    /// Bytes per field value.
    pub max_value_bytes: Option<usize>,
    /// Labels per record.
    pub max_labels: Option<usize>,
    /// Bytes of values per record.
    pub max_record_bytes: Option<usize>,
    /// Bytes per evidence file.
    pub max_evidence_bytes: Option<u64>,
    /// Requests per second per token (0: no limit).
    pub requests_per_second: Option<u32>,
    /// Connections open at once, in all (kept below the open file limit).
    pub max_connections: Option<usize>,
    /// Connections open at once from one address (an IPv6 /64).
    pub max_connections_per_address: Option<usize>,
    /// Connections of one principal that keep their places against newcomers.
    pub max_connections_per_caller: Option<usize>,
    /// Seconds a connection gets to finish the TLS handshake and send the HTTP/2 preface.
    pub handshake_timeout_secs: Option<u64>,
    /// Seconds a server stream waits for the client to read before it ends.
    pub stream_idle_secs: Option<u64>,
    /// Subject exports, audit exports and backups running at once, in all.
    pub max_exports: Option<usize>,
    /// Subject exports, audit exports and backups running at once per caller.
    pub max_exports_per_caller: Option<usize>,
    /// Evidence uploads open at once, in all.
    pub max_uploads: Option<usize>,
    /// Evidence uploads open at once per caller.
    pub max_uploads_per_caller: Option<usize>,
    /// Evidence downloads being sent at once, in all.
    pub max_downloads: Option<usize>,
    /// Evidence downloads being sent at once per caller.
    pub max_downloads_per_caller: Option<usize>,
    /// Watches of the audit trail open at once, in all.
    pub max_watches: Option<usize>,
    /// Watches of the audit trail open at once per caller.
    pub max_watches_per_caller: Option<usize>,
    /// Seconds a response may wait for its client to take any of it before the connection is
    /// closed.
    pub unread_response_secs: Option<u64>,
    /// Bytes of responses waiting for their clients to read them, in all.
    pub unread_response_bytes: Option<usize>,
    /// Bytes of responses waiting for their clients to read them, per peer address.
    pub unread_response_bytes_per_address: Option<usize>,
    /// Bytes of request messages being received (begun, not yet whole), in all.
    pub request_bytes: Option<usize>,
    /// Bytes of request messages being received, per peer address.
    pub request_bytes_per_address: Option<usize>,
    /// Bytes of request messages being received on connections whose calls were authenticated,
    /// per principal (the caller of the connection's last call of use).
    pub request_bytes_per_caller: Option<usize>,
    /// Bytes of request messages being received on connections that have carried no
    /// authenticated call yet, in all.
    pub request_bytes_unauthenticated: Option<usize>,
    /// Seconds a request message that has begun may wait for its next bytes.
    pub request_idle_secs: Option<u64>,
    /// The slowest pace a request message may arrive at, in bytes per second (after
    /// `request_idle_secs` of grace).
    pub request_min_bytes_per_sec: Option<u64>,
    /// Calls running on blocking threads at once; the others wait their turn.
    pub max_calls_running: Option<usize>,
    /// Of those, calls of one caller (one credential).
    pub max_calls_running_per_caller: Option<usize>,
    /// Bytes of record values being opened and answered at once, in all.
    pub answer_bytes: Option<usize>,
    /// Bytes of record values being opened and answered at once for one caller.
    pub answer_bytes_per_caller: Option<usize>,
    /// Accesses in one answer of a subject access report.
    pub max_report_accesses: Option<usize>,
}

/// Where the root key comes from.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum KeySource {
    /// A key file.
    KeyFile(PathBuf),
    /// A file holding the passphrase.
    PassphraseFile(PathBuf),
    /// The `KLUIS_PASSPHRASE` environment variable.
    PassphraseEnv,
    /// Ask on the terminal.
    Prompt,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory (of the SQLite store; with a PostgreSQL store, of local files only).
    pub data_dir: PathBuf,
    /// The PostgreSQL store, if one is configured; else SQLite in `data_dir`.
    pub store: Option<StoreUrl>,
    /// AEAD for new ciphertexts.
    pub algorithm: Algorithm,
    /// Root key source.
    pub key_source: KeySource,
    /// Subject key cache size.
    pub key_cache_size: usize,
    /// MiB of records read kept between reads on a SQLite store (`read_cache_mib`).
    pub read_cache_mib: usize,
    /// TLS files.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The CA that signs client certificates (`[tls] client_ca`).
    pub client_ca: Option<PathBuf>,
    /// Connections without a client certificate are accepted (`client_auth = "optional"`).
    pub client_auth_optional: bool,
    /// `[[service]]` and `[[oidc]]`.
    pub identity: IdentityConfig,
    /// Schema file, or the built-in schema.
    pub policy_schema: Option<PathBuf>,
    /// Policy files, or the built-in policies.
    pub policy_files: Vec<PathBuf>,
    /// Retention per purpose.
    pub retention: RetentionTable,
    /// Request limits.
    pub limits: Limits,
    /// How key jobs run.
    pub key_settings: KeySettings,
    /// How often due key destructions are carried out.
    pub key_sweep_interval: std::time::Duration,
    /// How often records past their retention are destroyed.
    pub retention_sweep_interval: std::time::Duration,
    /// The channels a request may declare.
    pub channels: Channels,
    /// Where the trail's head is kept outside the store; none: not kept.
    pub head_dir: Option<PathBuf>,
    /// Start on a store behind its head file (`--accept-rollback`; never from the file).
    pub accept_rollback: bool,
    /// The HSM of `[seal]`, if configured.
    pub hsm: Option<crate::seal::pkcs11::HsmConfig>,
    /// Where `/metrics` is served (`[metrics] listen`); none: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Searchable fields per purpose (`[search.<purpose>]`).
    pub search: crate::search::SearchConfig,
    /// Which mask each field allowed `read-masked` gets (`[masks]`).
    pub masks: MaskTable,
    /// The connection caps and the time a connection gets to start (`[limits]`).
    pub connections: crate::server::ConnectionLimits,
    /// The idle limit of server streams and the caps on exports (`[limits]`).
    pub streams: crate::api::stream::StreamLimits,
}

/// Configuration problems, all of them.
#[derive(Debug, thiserror::Error)]
#[error("configuration problems:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<String>);

impl RawConfig {
    /// Reads a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("cannot read `{}`: {e}", path.display())]))?;
        toml::from_str(&text).map_err(|e| ConfigError(vec![format!("`{}`: {e}", path.display())]))
    }

    /// Applies `KLUIS_*` environment overrides.
    pub fn with_env(mut self, env: &dyn Env) -> Self {
        if let Some(v) = env.var("KLUIS_LISTEN") {
            self.listen = Some(v);
        }
        if let Some(v) = env.var("KLUIS_METRICS_LISTEN") {
            self.metrics.get_or_insert_with(RawMetrics::default).listen = Some(v);
        }
        if let Some(v) = env.var("KLUIS_DATA_DIR") {
            self.data_dir = Some(v.into());
        }
        if let Some(v) = env.var("KLUIS_STORE") {
            self.store = Some(v);
        }
        if let Some(v) = env.var("KLUIS_ALGORITHM") {
            self.algorithm = Some(v);
        }
        if let Some(v) = env.var("KLUIS_KEY_FILE") {
            self.key_file = Some(v.into());
        }
        if let Some(v) = env.var("KLUIS_PASSPHRASE_FILE") {
            self.passphrase_file = Some(v.into());
        }
        if let Some(v) = env.var("KLUIS_HEAD_DIR") {
            self.audit.get_or_insert_with(RawAudit::default).head_dir = Some(v.into());
        }
        if let (Some(cert), Some(key)) = (env.var("KLUIS_TLS_CERT"), env.var("KLUIS_TLS_KEY")) {
            let (client_ca, client_auth) = self
                .tls
                .take()
                .map(|t| (t.client_ca, t.client_auth))
                .unwrap_or_default();
            self.tls = Some(RawTls {
                cert: cert.into(),
                key: key.into(),
                client_ca,
                client_auth,
            });
        }
        self
    }

    /// Validates into a `Config`, collecting every problem. `has_passphrase_env` tells whether
    /// `KLUIS_PASSPHRASE` is set.
    pub fn validate(self, has_passphrase_env: bool) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let listen = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen.parse::<SocketAddr>().unwrap_or_else(|_| {
            problems.push(format!(
                "`listen`: `{listen}` is not an address like 127.0.0.1:50051"
            ));
            SocketAddr::from(([127, 0, 0, 1], 50051))
        });
        let store = match self.store {
            None => None,
            Some(url) if crate::store::postgres::is_postgres_url(&url) => Some(StoreUrl(url)),
            Some(_) => {
                problems.push(
                    "`store` is not a PostgreSQL connection string: write \
                     `postgresql://user@host:5432/db?sslmode=verify-full&sslrootcert=FILE` or \
                     `host=/run/postgresql dbname=kluis`, or leave it out for SQLite in \
                     `data_dir`"
                        .into(),
                );
                None
            }
        };
        let data_dir = match (self.data_dir, &store) {
            (Some(d), _) => d,
            // A node on a PostgreSQL store keeps nothing of the store locally.
            (None, Some(_)) => PathBuf::new(),
            (None, None) => {
                problems.push(
                    "`data_dir` is required (or set KLUIS_DATA_DIR), or a PostgreSQL `store` \
                     (KLUIS_STORE)"
                        .into(),
                );
                PathBuf::new()
            }
        };
        let read_cache_mib = match self.read_cache_mib {
            None => crate::store::sqlite::DEFAULT_READ_CACHE_MIB,
            Some(mib) if mib <= MAX_READ_CACHE_MIB => mib,
            Some(mib) => {
                problems.push(format!(
                    "`read_cache_mib`: {mib} is more than {MAX_READ_CACHE_MIB} (64 GiB); give \
                     the MiB of records to keep in memory, or 0 to keep none"
                ));
                crate::store::sqlite::DEFAULT_READ_CACHE_MIB
            }
        };
        let algorithm = match self.algorithm.as_deref() {
            None => Algorithm::default(),
            Some(a) => Algorithm::parse(a).unwrap_or_else(|| {
                problems.push(format!(
                    "`algorithm`: `{a}` is not `aes-256-gcm` or `xchacha20-poly1305`"
                ));
                Algorithm::default()
            }),
        };
        let metrics_listen =
            self.metrics
                .and_then(|m| m.listen)
                .and_then(|l| match l.parse::<SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        problems.push(format!(
                            "`[metrics] listen`: `{l}` is not an address like 127.0.0.1:9464"
                        ));
                        None
                    }
                });
        let hsm = match self.seal {
            None => None,
            Some(seal) => match seal.kind.as_deref() {
                Some("pkcs11") => {
                    let mut missing = |key: &str| {
                        problems.push(format!("`[seal] {key}` is required with type \"pkcs11\""));
                    };
                    let module = seal.module.unwrap_or_else(|| {
                        missing("module");
                        PathBuf::new()
                    });
                    let token_label = seal.token_label.unwrap_or_else(|| {
                        missing("token_label");
                        String::new()
                    });
                    let key_label = seal.key_label.unwrap_or_else(|| {
                        missing("key_label");
                        String::new()
                    });
                    let pin_file = seal.pin_file.unwrap_or_else(|| {
                        missing("pin_file");
                        PathBuf::new()
                    });
                    Some(crate::seal::pkcs11::HsmConfig {
                        module,
                        token_label,
                        key_label,
                        pin_file,
                    })
                }
                other => {
                    problems.push(format!(
                        "`[seal] type`: {} is not \"pkcs11\" (a store sealed by shares needs no \
                         `[seal]`: it starts sealed and custodians unseal it)",
                        other.map_or_else(|| "nothing".to_owned(), |t| format!("`{t}`"))
                    ));
                    None
                }
            },
        };
        let key_source = match (self.key_file, self.passphrase_file) {
            (Some(_), Some(_)) => {
                problems.push("give either `key_file` or `passphrase_file`, not both".into());
                KeySource::Prompt
            }
            (Some(k), None) => KeySource::KeyFile(k),
            (None, Some(p)) => KeySource::PassphraseFile(p),
            (None, None) if has_passphrase_env => KeySource::PassphraseEnv,
            (None, None) => KeySource::Prompt,
        };
        let mut retention = RetentionTable::default();
        for (purpose, period) in self.retention.unwrap_or_default() {
            match (purpose.parse::<Purpose>(), parse_days(&period)) {
                (Ok(p), Some(days)) => {
                    retention.set(
                        p,
                        Retention {
                            days,
                            from: p.default_retention().from,
                        },
                    );
                }
                (Err(e), _) => problems.push(format!("`retention.{purpose}`: {e}")),
                (_, None) => problems.push(format!(
                    "`retention.{purpose}`: `{period}` is not a period like `730d` or `2y`"
                )),
            }
        }
        let mut limits = Limits::default();
        let mut connections = crate::server::ConnectionLimits::default();
        let mut streams = crate::api::stream::StreamLimits::default();
        if let Some(l) = self.limits {
            let mut count = |key: &str, value: Option<usize>, into: &mut usize| match value {
                Some(0) => problems.push(format!("`limits.{key}` must be at least 1")),
                Some(n) => *into = n,
                None => {}
            };
            count(
                "max_connections",
                l.max_connections,
                &mut connections.max_connections,
            );
            count(
                "max_connections_per_address",
                l.max_connections_per_address,
                &mut connections.max_connections_per_address,
            );
            count(
                "max_connections_per_caller",
                l.max_connections_per_caller,
                &mut connections.max_connections_per_caller,
            );
            count("max_exports", l.max_exports, &mut streams.max_exports);
            count(
                "max_exports_per_caller",
                l.max_exports_per_caller,
                &mut streams.max_exports_per_caller,
            );
            count("max_uploads", l.max_uploads, &mut streams.max_uploads);
            count(
                "max_uploads_per_caller",
                l.max_uploads_per_caller,
                &mut streams.max_uploads_per_caller,
            );
            count("max_downloads", l.max_downloads, &mut streams.max_downloads);
            count(
                "max_downloads_per_caller",
                l.max_downloads_per_caller,
                &mut streams.max_downloads_per_caller,
            );
            count("max_watches", l.max_watches, &mut streams.max_watches);
            count(
                "max_watches_per_caller",
                l.max_watches_per_caller,
                &mut streams.max_watches_per_caller,
            );
            let mut secs = |key: &str,
                            value: Option<u64>,
                            max: u64,
                            into: &mut std::time::Duration| {
                match value {
                    Some(n) if (1..=max).contains(&n) => *into = std::time::Duration::from_secs(n),
                    Some(_) => problems.push(format!("`limits.{key}` must be 1 to {max} seconds")),
                    None => {}
                }
            };
            secs(
                "handshake_timeout_secs",
                l.handshake_timeout_secs,
                60,
                &mut connections.handshake_timeout,
            );
            secs(
                "stream_idle_secs",
                l.stream_idle_secs,
                3600,
                &mut streams.idle,
            );
            secs(
                "unread_response_secs",
                l.unread_response_secs,
                3600,
                &mut connections.unread_timeout,
            );
            secs(
                "request_idle_secs",
                l.request_idle_secs,
                3600,
                &mut connections.receiving_timeout,
            );
            // A response of the largest message must fit, with its framing and the smaller
            // messages a stream packs before it (up to 32 KiB).
            let largest = crate::server::MAX_MESSAGE_BYTES + 64 * 1024;
            if let Some(n) = l.unread_response_bytes_per_address {
                connections.unread_bytes_per_address = n;
            }
            if let Some(n) = l.unread_response_bytes {
                connections.unread_bytes = n;
            }
            if connections.unread_bytes_per_address < largest {
                problems.push(format!(
                    "`limits.unread_response_bytes_per_address` must be at least {largest} bytes \
                     (the largest message with its framing)"
                ));
            }
            if connections.unread_bytes < connections.unread_bytes_per_address {
                problems.push(
                    "`limits.unread_response_bytes` must be at least \
                     `limits.unread_response_bytes_per_address`"
                        .into(),
                );
            }
            if let Some(n) = l.request_bytes_per_address {
                connections.receiving_bytes_per_address = n;
            }
            if let Some(n) = l.request_bytes {
                connections.receiving_bytes = n;
            }
            // The largest message must fit, with its framing.
            if connections.receiving_bytes_per_address < largest {
                problems.push(format!(
                    "`limits.request_bytes_per_address` must be at least {largest} bytes (the \
                     largest message with its framing)"
                ));
            }
            if connections.receiving_bytes < connections.receiving_bytes_per_address {
                problems.push(
                    "`limits.request_bytes` must be at least `limits.request_bytes_per_address`"
                        .into(),
                );
            }
            for (key, given, limit) in [
                (
                    "request_bytes_per_caller",
                    l.request_bytes_per_caller,
                    &mut connections.receiving_bytes_per_caller,
                ),
                (
                    "request_bytes_unauthenticated",
                    l.request_bytes_unauthenticated,
                    &mut connections.receiving_bytes_unauthenticated,
                ),
            ] {
                if let Some(n) = given {
                    *limit = n;
                }
                if *limit < largest {
                    problems.push(format!(
                        "`limits.{key}` must be at least {largest} bytes (the largest message \
                         with its framing)"
                    ));
                }
            }
            match l.request_min_bytes_per_sec {
                Some(n) if (1024..=1 << 30).contains(&n) => connections.receiving_min_rate = n,
                Some(_) => problems.push(
                    "`limits.request_min_bytes_per_sec` must be 1024 to 1073741824 (1 KiB/s to \
                     1 GiB/s)"
                        .into(),
                ),
                None => {}
            }
            limits.max_fields = l.max_fields.unwrap_or(limits.max_fields);
            limits.max_value_bytes = l.max_value_bytes.unwrap_or(limits.max_value_bytes);
            limits.max_labels = l.max_labels.unwrap_or(limits.max_labels);
            limits.max_record_bytes = l.max_record_bytes.unwrap_or(limits.max_record_bytes);
            limits.max_evidence_bytes = l.max_evidence_bytes.unwrap_or(limits.max_evidence_bytes);
            limits.requests_per_second =
                l.requests_per_second.unwrap_or(limits.requests_per_second);
            match l.max_calls_running {
                Some(n) if (1..=MAX_CALLS_RUNNING).contains(&n) => limits.max_calls_running = n,
                Some(_) => problems.push(format!(
                    "`limits.max_calls_running` must be 1 to {MAX_CALLS_RUNNING} (the blocking \
                     threads the runtime keeps)"
                )),
                None => {}
            }
            limits.max_calls_running_per_caller = l.max_calls_running_per_caller.unwrap_or(
                limits
                    .max_calls_running_per_caller
                    .min(limits.max_calls_running),
            );
            if !(1..=limits.max_calls_running).contains(&limits.max_calls_running_per_caller) {
                problems.push(
                    "`limits.max_calls_running_per_caller` must be 1 to \
                     `limits.max_calls_running`"
                        .into(),
                );
            }
            match l.max_report_accesses {
                Some(n) if (1..=MAX_REPORT_ACCESSES).contains(&n) => {
                    limits.max_report_accesses = n;
                }
                Some(_) => problems.push(format!(
                    "`limits.max_report_accesses` must be 1 to {MAX_REPORT_ACCESSES} (each \
                     access is about a kilobyte in the server while its page is answered)"
                )),
                None => {}
            }
            limits.answer_bytes = l.answer_bytes.unwrap_or(limits.answer_bytes);
            limits.answer_bytes_per_caller = l
                .answer_bytes_per_caller
                .unwrap_or(limits.answer_bytes_per_caller);
            // The largest record, as stored (each value sealed with a nonce and a tag), must fit
            // one caller's place.
            let largest = limits.max_record_bytes + 64 * 1024;
            if limits.answer_bytes_per_caller < largest {
                problems.push(format!(
                    "`limits.answer_bytes_per_caller` must be at least {largest} bytes (the \
                     largest record, `limits.max_record_bytes`, as stored)"
                ));
            }
            if limits.answer_bytes < limits.answer_bytes_per_caller {
                problems.push(
                    "`limits.answer_bytes` must be at least `limits.answer_bytes_per_caller`"
                        .into(),
                );
            }
            if limits.max_record_bytes > crate::server::MAX_MESSAGE_BYTES / 2 {
                problems.push(format!(
                    "`limits.max_record_bytes` may be at most {} bytes",
                    crate::server::MAX_MESSAGE_BYTES / 2
                ));
            }
            if limits.max_value_bytes > crate::server::MAX_MESSAGE_BYTES / 2 {
                problems.push(format!(
                    "`limits.max_value_bytes` may be at most {} bytes",
                    crate::server::MAX_MESSAGE_BYTES / 2
                ));
            }
        }
        let mut key_settings = KeySettings::default();
        let mut key_sweep_interval = std::time::Duration::from_secs(60);
        if let Some(k) = self.keys {
            key_settings.batch_size = k.batch_size.unwrap_or(key_settings.batch_size);
            if key_settings.batch_size == 0 {
                problems.push("`keys.batch_size` must be at least 1".into());
            }
            key_settings.batch_pause =
                std::time::Duration::from_millis(k.batch_pause_ms.unwrap_or(0));
            if let Some(w) = k.destroy_wait {
                match parse_days(&w) {
                    Some(days) => key_settings.destroy_wait_secs = u64::from(days) * 86_400,
                    None => problems.push(format!(
                        "`keys.destroy_wait`: `{w}` is not a period like `7d`"
                    )),
                }
            }
            if let Some(s) = k.sweep_interval_secs {
                if s > MAX_SWEEP_INTERVAL_SECS {
                    problems.push(format!(
                        "`keys.sweep_interval_secs`: {s} is more than a day \
                         ({MAX_SWEEP_INTERVAL_SECS}); key versions due for destruction would \
                         wait that long"
                    ));
                }
                key_sweep_interval = std::time::Duration::from_secs(s.max(1));
            }
        }
        let retention_secs = self
            .lifecycle
            .and_then(|l| l.sweep_interval_secs)
            .unwrap_or(3600);
        if retention_secs > MAX_SWEEP_INTERVAL_SECS {
            problems.push(format!(
                "`lifecycle.sweep_interval_secs`: {retention_secs} is more than a day \
                 ({MAX_SWEEP_INTERVAL_SECS}); records past their retention would wait that long"
            ));
        }
        let retention_sweep_interval = std::time::Duration::from_secs(retention_secs.max(1));
        let policy = self.policy.unwrap_or_default();
        let head_dir = self.audit.and_then(|a| a.head_dir);
        if let Some(dir) = &head_dir
            && !data_dir.as_os_str().is_empty()
            && dir.starts_with(&data_dir)
        {
            problems.push(format!(
                "`audit.head_dir` `{}` lies inside the data directory: a copy of the data \
                 directory would carry its head along; put it on another volume or at least \
                 beside the data directory",
                dir.display()
            ));
        }
        let channels = match self.channels {
            None => Channels::default(),
            Some(names) => Channels::new(&names).unwrap_or_else(|e| {
                problems.push(e.to_string());
                Channels::default()
            }),
        };
        let masks = match &self.masks {
            None => MaskTable::default(),
            Some(raw) => MaskTable::from_config(raw, &mut problems),
        };
        let (client_ca, client_auth_optional) = match &self.tls {
            None => (None, false),
            Some(t) => {
                let optional = match (t.client_ca.is_some(), t.client_auth.as_deref()) {
                    (_, None | Some("required")) => false,
                    (true, Some("optional")) => true,
                    (false, Some(_)) => {
                        problems.push(
                            "`tls.client_auth` needs `tls.client_ca`: the CA that signs the \
                             client certificates"
                                .into(),
                        );
                        false
                    }
                    (true, Some(other)) => {
                        problems.push(format!(
                            "`tls.client_auth`: `{other}` is not `required` or `optional`"
                        ));
                        false
                    }
                };
                (t.client_ca.clone(), optional)
            }
        };
        let names_certificates = self
            .service
            .iter()
            .flatten()
            .any(|s| !s.dns.is_empty() || !s.uri.is_empty());
        let identity = IdentityConfig::validate(
            self.service.unwrap_or_default(),
            self.oidc.unwrap_or_default(),
            &mut problems,
        );
        if client_ca.is_none() && names_certificates {
            problems.push(
                "`service`: a `[[service]]` names certificate names (`dns`, `uri`) but \
                 `[tls] client_ca` is not set, so no client certificate is asked for"
                    .into(),
            );
        }
        let search =
            crate::search::SearchConfig::from_raw(self.search.unwrap_or_default(), &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(Config {
            search,
            client_ca,
            client_auth_optional,
            identity,
            listen,
            data_dir,
            store,
            algorithm,
            key_source,
            key_cache_size: self.key_cache_size.unwrap_or(10_000),
            read_cache_mib,
            tls: self.tls.map(|t| (t.cert, t.key)),
            policy_schema: policy.schema,
            policy_files: policy.policies.unwrap_or_default(),
            retention,
            limits,
            key_settings,
            key_sweep_interval,
            retention_sweep_interval,
            channels,
            head_dir,
            accept_rollback: false,
            hsm,
            metrics_listen,
            masks,
            connections,
            streams,
        })
    }
}

/// Parses `730d`, `2y` or `52w` into days.
fn parse_days(s: &str) -> Option<u32> {
    let s = s.trim();
    [('d', 1u32), ('w', 7), ('y', 365)]
        .iter()
        .find_map(|&(unit, days)| s.strip_suffix(unit).map(|n| (n, days)))
        .and_then(|(n, days)| n.parse::<u32>().ok()?.checked_mul(days))
}

/// Errors while opening a vault.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store could not be opened.
    #[error("store `{path}`: {source}")]
    Store {
        /// The database file.
        path: String,
        /// Why.
        source: StoreError,
    },
    /// The root key could not be obtained or is wrong.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A policy file could not be read.
    #[error("cannot read policy file `{path}`: {problem}")]
    PolicyFile {
        /// The file.
        path: String,
        /// Why.
        problem: String,
    },
    /// The policies are invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The vault could not be assembled.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The secret could not be read.
    #[error("{0}")]
    Secret(String),
}

/// Obtains the root secret from the configured source.
pub fn read_secret(
    source: &KeySource,
    env: &dyn Env,
    confirm: bool,
) -> Result<RootSecret, OpenError> {
    match source {
        KeySource::KeyFile(path) => {
            check_private(path)?;
            Ok(RootSecret::read_key_file(path)?)
        }
        KeySource::PassphraseFile(path) => {
            check_private(path)?;
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                OpenError::Secret(format!(
                    "cannot read passphrase file `{}`: {e}",
                    path.display()
                ))
            })?);
            passphrase(text.trim_end_matches(['\n', '\r']))
        }
        KeySource::PassphraseEnv => {
            let text = Zeroizing::new(env.var("KLUIS_PASSPHRASE").unwrap_or_default());
            passphrase(&text)
        }
        KeySource::Prompt => {
            let first = Zeroizing::new(rpassword::prompt_password("kluis root passphrase: ").map_err(|e| {
                OpenError::Secret(format!(
                    "cannot prompt for the passphrase ({e}); give --key-file, --passphrase-file or KLUIS_PASSPHRASE"
                ))
            })?);
            if confirm {
                let second = Zeroizing::new(
                    rpassword::prompt_password("repeat the passphrase: ")
                        .map_err(|e| OpenError::Secret(e.to_string()))?,
                );
                if first.as_bytes() != second.as_bytes() {
                    return Err(OpenError::Secret("the passphrases differ".into()));
                }
            }
            passphrase(&first)
        }
    }
}

/// Shortest accepted passphrase, in characters.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

fn passphrase(text: &str) -> Result<RootSecret, OpenError> {
    if text.chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(OpenError::Secret(format!(
            "the passphrase must be at least {MIN_PASSPHRASE_CHARS} characters"
        )));
    }
    Ok(RootSecret::Passphrase(Zeroizing::new(text.to_owned())))
}

/// Loads the policy engine: the configured files, or the built-in schema and policies.
pub fn load_policy(schema: Option<&Path>, files: &[PathBuf]) -> Result<Engine, OpenError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| OpenError::PolicyFile {
            path: p.display().to_string(),
            problem: e.to_string(),
        })
    };
    let schema_src = match schema {
        Some(p) => read(p)?,
        None => policy::DEFAULT_SCHEMA.to_owned(),
    };
    let named = if files.is_empty() {
        vec![(
            "default.cedar (built in)".to_owned(),
            policy::DEFAULT_POLICIES.to_owned(),
        )]
    } else {
        files
            .iter()
            .map(|f| Ok((f.display().to_string(), read(f)?)))
            .collect::<Result<Vec<_>, OpenError>>()?
    };
    Ok(Engine::from_files(&schema_src, &named)?)
}

/// Refuses a secret file or the data directory when its group or others may read, write or
/// enter it: the key file, the passphrase file and the data directory are the owner's alone.
pub fn check_private(path: &Path) -> Result<(), OpenError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| OpenError::Secret(format!("cannot read `{}`: {e}", path.display())))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let fix = if meta.is_dir() { "700" } else { "600" };
            return Err(OpenError::Secret(format!(
                "`{}` is open to its group or to other users (mode {mode:o}); run `chmod {fix} {}` \
                 first",
                path.display(),
                path.display()
            )));
        }
    }
    Ok(())
}

/// The file in a data directory whose lock a `kluis serve`, `kluis init` or `kluis restore`
/// holds while it works on the store there.
pub const LOCK_FILE: &str = "kluis.lock";

/// A data directory held by this process (`lock_data_dir`), until dropped or the process ends.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Takes the data directory `dir` for this process: an exclusive lock on `kluis.lock` there
/// (made 0600 if missing), which the system lets go when the process ends however it ends.
/// Two processes on one SQLite store would void each other's job leases and undo each other's
/// view of the trail's head; a second one is refused, naming the process that holds it.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, String> {
    let path = dir.join(LOCK_FILE);
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Not through a link (its pid is written over what it holds), nor waiting at a FIFO.
        options
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK);
    }
    let cannot = |e: std::io::Error| format!("cannot lock `{}`: {e}", path.display());
    // A lock taken on a file whose name went meanwhile (unlinked by a `kluis restore` that
    // gave up, its holder gone) holds nothing another process would see: take it again.
    for _ in 0..3 {
        let (file, held) = lock_file_once(&path, &options, &cannot)?;
        if held {
            return Ok(DataDirLock { _file: file });
        }
    }
    Err(format!(
        "cannot lock `{}`: it was replaced each time it was locked; look for another process \
         in the data directory `{}`",
        path.display(),
        dir.display()
    ))
}

/// Opens and locks the lock's file at `path`: the file, and whether it is still the one with
/// that name once locked (its holder's pid then written into it).
fn lock_file_once(
    path: &Path,
    options: &std::fs::OpenOptions,
    cannot: &dyn Fn(std::io::Error) -> String,
) -> Result<(std::fs::File, bool), String> {
    use std::io::{Read, Seek, Write};
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = options.open(path).map_err(|e| {
        if path
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            format!(
                "`{}` is a symbolic link; kluis keeps its lock in a file of its own: remove the \
                 link",
                path.display()
            )
        } else {
            cannot(e)
        }
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().map_err(cannot)?;
        if !meta.is_file() || meta.nlink() != 1 {
            return Err(format!(
                "`{}` is not a regular file of one name; kluis keeps its lock in a file of its \
                 own: remove it",
                path.display()
            ));
        }
    }
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if !holder.is_empty() && holder.bytes().all(|b| b.is_ascii_digit()) {
                format!("process {holder}")
            } else {
                "another process".to_owned()
            };
            return Err(format!(
                "another kluis ({who}) serves or initialises the store in `{}` (it holds the lock \
                 on `{}`); stop it first, or give another data directory: two processes on one \
                 store would undo each other's leases and trail head",
                dir.display(),
                path.display()
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(cannot(e)),
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let open = file.metadata().map_err(cannot)?;
        let named = path.symlink_metadata().ok();
        if !named.is_some_and(|n| {
            n.file_type().is_file() && n.dev() == open.dev() && n.ino() == open.ino()
        }) || open.nlink() != 1
        {
            return Ok((file, false));
        }
    }
    // Who holds it, for the message a second process gives.
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(cannot)?;
    Ok((file, true))
}

/// Creates `dir` (and its parents) if needed, open to its owner only.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let existed = dir.exists();
    // A link to nowhere: `create_dir_all` would answer only "File exists".
    if !existed
        && let Ok(meta) = dir.symlink_metadata()
        && meta.file_type().is_symlink()
    {
        let to = std::fs::read_link(dir).map_or_else(|_| "?".into(), |t| t.display().to_string());
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "it is a symbolic link to `{to}`, which does not exist; make the directory it \
                 names, or give another data directory"
            ),
        ));
    }
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    if !existed {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A PostgreSQL connection string. Its `Debug` and `Display` show no password.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl StoreUrl {
    /// The connection string, credentials included: for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hosts, database and user it names; never a password.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({})", self.redacted())
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// What `url` names, for messages: its hosts, database and user, never anything else of it
/// (a password may be spelled in many ways; none of them is copied).
pub fn redact_url(url: &str) -> String {
    crate::store::postgres::describe_url(url)
}

/// Opens the configured store: PostgreSQL when `store` is given (running its migrations), else
/// SQLite in `data_dir` (creating the file if needed). Neither is initialised here.
pub fn open_configured_store(
    data_dir: &Path,
    store: Option<&StoreUrl>,
    read_cache_mib: usize,
) -> Result<Arc<dyn Store>, OpenError> {
    match store {
        Some(url) => crate::store::PgStore::connect(url.expose())
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|source| OpenError::Store {
                path: url.redacted(),
                source,
            }),
        None => open_store_with_cache(data_dir, read_cache_mib).map(|s| s as Arc<dyn Store>),
    }
}

/// Opens the store in `data_dir` (creating the file if needed, not initialising it).
pub fn open_store(data_dir: &Path) -> Result<Arc<SqliteStore>, OpenError> {
    open_store_with_cache(data_dir, crate::store::sqlite::DEFAULT_READ_CACHE_MIB)
}

/// Opens the store in `data_dir` as `open_store` does, keeping `read_cache_mib` MiB of records
/// read between reads.
pub fn open_store_with_cache(
    data_dir: &Path,
    read_cache_mib: usize,
) -> Result<Arc<SqliteStore>, OpenError> {
    let path = data_dir.join(DB_FILE);
    // Whatever it is (a file, a link, a directory): its name alone says the restore stopped.
    let restoring = crate::store::sqlite::restoring_path(&path);
    if restoring.symlink_metadata().is_ok() {
        return Err(OpenError::Store {
            path: path.display().to_string(),
            source: StoreError::Refused(format!(
                "`{}` says a `kluis restore` into `{}` stopped before its checks of the backup \
                 ended: the store there is not known to be sound, and is not opened; delete the \
                 directory and restore the backup again",
                restoring.display(),
                data_dir.display()
            )),
        });
    }
    open_restored_store(data_dir, read_cache_mib)
}

/// Opens the store in `data_dir` whatever `kluis restore` left beside it: for that restore's
/// own checks, which end by taking its mark away (`store::sqlite::restoring_path`).
pub fn open_restored_store(
    data_dir: &Path,
    read_cache_mib: usize,
) -> Result<Arc<SqliteStore>, OpenError> {
    let path = data_dir.join(DB_FILE);
    SqliteStore::open_with_cache(&path, read_cache_mib.saturating_mul(1024 * 1024))
        .map(Arc::new)
        .map_err(|source| OpenError::Store {
            path: path.display().to_string(),
            source,
        })
}

/// Opens an initialised vault: store, unseal with `secret`, policies, vault.
pub fn open_vault(config: &Config, secret: &RootSecret) -> Result<Vault, OpenError> {
    if config.store.is_none() {
        check_private(&config.data_dir)?;
        // The evidence segments' files beside the database, when it has any.
        let evidence = config.data_dir.join(format!("{DB_FILE}.evidence"));
        if evidence.exists() {
            check_private(&evidence)?;
        }
    }
    let policy = load_policy(config.policy_schema.as_deref(), &config.policy_files)?;
    let store = open_configured_store(
        &config.data_dir,
        config.store.as_ref(),
        config.read_cache_mib,
    )?;
    let keyring = Keyring::unseal(
        store.clone(),
        secret,
        config.algorithm,
        config.key_cache_size,
    )?;
    let schema = config.policy_schema.clone();
    let files = config.policy_files.clone();
    let loader = move || load_policy(schema.as_deref(), &files).map_err(|e| e.to_string());
    let anchor = config
        .head_dir
        .as_ref()
        .map(|dir| crate::audit::anchor::Anchor {
            dir: dir.clone(),
            accept_rollback: config.accept_rollback,
        });
    // The HSM of `[seal]`, for root changes to it: the one that opened the store, else opened
    // now (a failure only means no change to it can be asked for).
    let hsm = match secret {
        RootSecret::Hsm(hsm) => Some(Arc::clone(hsm)),
        _ => config
            .hsm
            .as_ref()
            .and_then(|c| match crate::seal::pkcs11::Hsm::open(c) {
                Ok(h) => Some(Arc::new(h)),
                Err(e) => {
                    tracing::warn!(error = %e, "the HSM of `[seal]` cannot be used");
                    None
                }
            }),
    };
    Ok(Vault::with_anchor(
        store,
        keyring,
        policy,
        config.retention.clone(),
        config.limits,
        anchor.as_ref(),
    )?
    .with_hsm(hsm)
    .with_key_settings(config.key_settings)
    .with_channels(config.channels.clone())
    .with_search(config.search.clone())
    .with_masks(config.masks.clone())
    .with_policy_loader(Box::new(loader)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A data directory that is a link to nowhere is named as one, with what to do; nothing
    /// is made where it points. The twins: a link to a directory is that directory, and a new
    /// directory is made owner-only.
    #[test]
    fn a_data_directory_linked_to_nowhere_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let link = tmp.path().join("data");
        let nowhere = tmp.path().join("gone");
        std::os::unix::fs::symlink(&nowhere, &link).unwrap();
        let e = create_private_dir(&link).unwrap_err().to_string();
        assert!(
            e.contains("is a symbolic link to `") && e.contains("gone`, which does not exist"),
            "{e}"
        );
        assert!(!nowhere.exists());
        std::fs::create_dir(&nowhere).unwrap();
        create_private_dir(&link).unwrap();
        let new = tmp.path().join("new").join("data");
        create_private_dir(&new).unwrap();
        let mode = std::fs::metadata(&new).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    /// The lock of a data directory is a file of its own: a symbolic or hard link at
    /// `kluis.lock` (to the store's file, say) is refused and what it names keeps its bytes.
    /// The twins: a file of its own locks, names this process, and a second lock of the
    /// directory (another open of the file, as a second process makes) is refused naming it;
    /// once the first is dropped the directory locks again.
    #[test]
    fn a_data_directory_is_locked_in_a_file_of_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let lock = dir.join(LOCK_FILE);
        let store = dir.join(DB_FILE);
        std::fs::write(&store, b"the store's bytes").unwrap();
        std::os::unix::fs::symlink(&store, &lock).unwrap();
        let e = lock_data_dir(dir).unwrap_err();
        assert!(e.contains("is a symbolic link"), "{e}");
        std::fs::remove_file(&lock).unwrap();
        std::fs::hard_link(&store, &lock).unwrap();
        let e = lock_data_dir(dir).unwrap_err();
        assert!(e.contains("not a regular file of one name"), "{e}");
        assert_eq!(std::fs::read(&store).unwrap(), b"the store's bytes");
        std::fs::remove_file(&lock).unwrap();

        let held = lock_data_dir(dir).unwrap();
        let pid = std::process::id();
        assert_eq!(std::fs::read_to_string(&lock).unwrap(), format!("{pid}\n"));
        let e = lock_data_dir(dir).unwrap_err();
        assert!(e.contains(&format!("another kluis (process {pid})")), "{e}");
        drop(held);
        drop(lock_data_dir(dir).unwrap());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let raw: RawConfig = toml::from_str(
            r#"
            listen = "nowhere"
            algorithm = "rot13"
            [retention]
            nuisance = "forever"
            gossip = "1y"
            "#,
        )
        .unwrap();
        let err = raw.validate(false).unwrap_err();
        assert_eq!(err.0.len(), 5, "{err}");
    }

    #[test]
    fn the_read_cache_is_sized_in_mib_up_to_64_gib() {
        let check = |line: &str| {
            toml::from_str::<RawConfig>(&format!("data_dir = \"/d\"\n{line}"))
                .unwrap()
                .validate(false)
        };
        assert_eq!(
            check("").unwrap().read_cache_mib,
            crate::store::sqlite::DEFAULT_READ_CACHE_MIB
        );
        assert_eq!(check("read_cache_mib = 0").unwrap().read_cache_mib, 0);
        assert_eq!(
            check("read_cache_mib = 65536").unwrap().read_cache_mib,
            65536
        );
        let err = check("read_cache_mib = 65537").unwrap_err().to_string();
        assert!(
            err.contains("`read_cache_mib`") && err.contains("65536"),
            "{err}"
        );
        // Not a number of MiB: refused when read, with the key named.
        let err = toml::from_str::<RawConfig>("read_cache_mib = \"1G\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("read_cache_mib"), "{err}");
    }

    #[test]
    fn sweeps_run_at_least_daily() {
        let check = |toml_text: &str| {
            toml::from_str::<RawConfig>(&format!("data_dir = \"/d\"\n{toml_text}"))
                .unwrap()
                .validate(false)
        };
        for (section, what) in [("keys", "keys"), ("lifecycle", "lifecycle")] {
            let err = check(&format!("[{section}]\nsweep_interval_secs = 86401"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("`{what}.sweep_interval_secs`")),
                "{err}"
            );
            check(&format!("[{section}]\nsweep_interval_secs = 86400")).unwrap();
        }
    }

    #[test]
    fn the_limits_on_calls_running_and_answers_are_checked() {
        let check = |limits: &str| {
            toml::from_str::<RawConfig>(&format!("data_dir = \"/d\"\n[limits]\n{limits}"))
                .unwrap()
                .validate(false)
        };
        let ok = check(
            "max_calls_running = 8\nmax_record_bytes = 1048576\n\
             answer_bytes_per_caller = 1114112\nanswer_bytes = 1114112",
        )
        .unwrap();
        assert_eq!(
            (
                ok.limits.max_calls_running,
                ok.limits.answer_bytes_per_caller,
                ok.limits.answer_bytes
            ),
            (8, (1 << 20) + (64 << 10), (1 << 20) + (64 << 10))
        );
        // The share of one caller follows a smaller total.
        assert_eq!(ok.limits.max_calls_running_per_caller, 8);
        let defaults = check("").unwrap().limits;
        assert_eq!(
            (
                defaults.max_calls_running,
                defaults.answer_bytes_per_caller,
                defaults.answer_bytes
            ),
            (64, 64 << 20, 512 << 20)
        );
        assert_eq!(defaults.max_calls_running_per_caller, 64);
        assert_eq!(defaults.max_report_accesses, 2_000);
        assert_eq!(
            check("max_report_accesses = 250")
                .unwrap()
                .limits
                .max_report_accesses,
            250
        );
        for (limits, says) in [
            (
                "max_report_accesses = 0",
                "`limits.max_report_accesses` must be 1 to 100000",
            ),
            (
                "max_report_accesses = 100001",
                "`limits.max_report_accesses` must be 1 to 100000",
            ),
            (
                "max_calls_running = 0",
                "`limits.max_calls_running` must be 1 to 512",
            ),
            (
                "max_calls_running = 513",
                "`limits.max_calls_running` must be 1 to 512",
            ),
            (
                "max_calls_running = 8\nmax_calls_running_per_caller = 9",
                "`limits.max_calls_running_per_caller` must be 1 to `limits.max_calls_running`",
            ),
            (
                "max_calls_running_per_caller = 0",
                "`limits.max_calls_running_per_caller` must be 1 to `limits.max_calls_running`",
            ),
            (
                "answer_bytes_per_caller = 8454143",
                "`limits.answer_bytes_per_caller` must be at least 8454144",
            ),
            (
                "max_record_bytes = 1048576\nanswer_bytes_per_caller = 2000000\nanswer_bytes = 1999999",
                "`limits.answer_bytes` must be at least `limits.answer_bytes_per_caller`",
            ),
        ] {
            let err = check(limits).unwrap_err().to_string();
            assert!(err.contains(says), "{limits}: {err}");
        }
    }

    #[test]
    fn the_limits_on_messages_being_received_are_checked() {
        let check = |limits: &str| {
            toml::from_str::<RawConfig>(&format!("data_dir = \"/d\"\n[limits]\n{limits}"))
                .unwrap()
                .validate(false)
        };
        let ok = check(
            "request_idle_secs = 3\nrequest_bytes = 33554432\n\
             request_bytes_per_address = 16842752\nrequest_min_bytes_per_sec = 2048\n\
             request_bytes_per_caller = 20000000\nrequest_bytes_unauthenticated = 17000000",
        )
        .unwrap();
        assert_eq!(
            (
                ok.connections.receiving_timeout,
                ok.connections.receiving_bytes,
                ok.connections.receiving_bytes_per_address,
                ok.connections.receiving_min_rate,
                ok.connections.receiving_bytes_per_caller,
                ok.connections.receiving_bytes_unauthenticated,
            ),
            (
                std::time::Duration::from_secs(3),
                32 << 20,
                16842752,
                2048,
                20_000_000,
                17_000_000
            )
        );
        let defaults = check("").unwrap().connections;
        assert_eq!(
            (
                defaults.receiving_timeout,
                defaults.receiving_bytes,
                defaults.receiving_bytes_per_address,
                defaults.receiving_min_rate,
                defaults.receiving_bytes_per_caller,
                defaults.receiving_bytes_unauthenticated,
            ),
            (
                std::time::Duration::from_secs(10),
                1 << 30,
                256 << 20,
                256 << 10,
                64 << 20,
                64 << 20
            )
        );
        for (limits, says) in [
            (
                "request_idle_secs = 0",
                "`limits.request_idle_secs` must be 1 to 3600 seconds",
            ),
            (
                "request_min_bytes_per_sec = 1023",
                "`limits.request_min_bytes_per_sec` must be 1024 to 1073741824",
            ),
            (
                "request_bytes_per_address = 16842751",
                "`limits.request_bytes_per_address` must be at least 16842752",
            ),
            (
                "request_bytes_per_address = 16842752\nrequest_bytes = 16842751",
                "`limits.request_bytes` must be at least `limits.request_bytes_per_address`",
            ),
            (
                "request_bytes_per_caller = 16842751",
                "`limits.request_bytes_per_caller` must be at least 16842752",
            ),
            (
                "request_bytes_unauthenticated = 1024",
                "`limits.request_bytes_unauthenticated` must be at least 16842752",
            ),
        ] {
            let err = check(limits).unwrap_err().to_string();
            assert!(err.contains(says), "{limits}: {err}");
        }
    }

    #[test]
    fn the_unread_response_limits_are_checked() {
        let check = |limits: &str| {
            toml::from_str::<RawConfig>(&format!("data_dir = \"/d\"\n[limits]\n{limits}"))
                .unwrap()
                .validate(false)
        };
        let ok = check(
            "unread_response_secs = 5\nunread_response_bytes = 33554432\n\
             unread_response_bytes_per_address = 16842752",
        )
        .unwrap();
        assert_eq!(
            (
                ok.connections.unread_timeout,
                ok.connections.unread_bytes,
                ok.connections.unread_bytes_per_address
            ),
            (
                std::time::Duration::from_secs(5),
                32 << 20,
                (16 << 20) + (64 << 10)
            )
        );
        for (limits, says) in [
            (
                "unread_response_secs = 0",
                "`limits.unread_response_secs` must be 1 to 3600",
            ),
            (
                "unread_response_bytes_per_address = 1000",
                "`limits.unread_response_bytes_per_address` must be at least 16842752",
            ),
            (
                "unread_response_bytes = 16842751",
                "`limits.unread_response_bytes` must be at least `limits.unread_response_bytes_per_address`",
            ),
        ] {
            let err = check(limits).unwrap_err().to_string();
            assert!(err.contains(says), "{limits}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<RawConfig>("listne = \"x\"").is_err());
    }

    #[test]
    fn environment_overrides_the_file() {
        let raw: RawConfig = toml::from_str("listen = \"127.0.0.1:1\"\ndata_dir = \"/a\"").unwrap();
        let cfg = raw
            .with_env(&env(&[
                ("KLUIS_LISTEN", "127.0.0.1:2"),
                ("KLUIS_KEY_FILE", "/k"),
            ]))
            .validate(false)
            .unwrap();
        assert_eq!(cfg.listen.port(), 2);
        assert_eq!(cfg.key_source, KeySource::KeyFile("/k".into()));
    }

    #[test]
    fn a_postgres_store_needs_no_data_dir_and_its_password_is_never_shown() {
        let raw: RawConfig = toml::from_str(
            "store = \"postgresql://kluis:hunter2@db.example.org/kluis?sslmode=verify-full\"",
        )
        .unwrap();
        let cfg = raw.validate(false).unwrap();
        let url = cfg.store.as_ref().unwrap();
        assert!(url.expose().contains("hunter2"));
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert!(!url.to_string().contains("hunter2"));
        for url in [
            "host=/tmp dbname=k password=hunter2 user=k",
            "host=db password = hunter2 dbname=k",
            "host=db password='correct hunter2 horse' dbname=k",
            "postgresql://k@h/db?password=hunter2&sslmode=disable",
            "postgresql://k:hunter2@h/db",
            "not a connection string hunter2",
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains("hunter2"), "{url} → {shown}");
        }
        assert_eq!(
            redact_url("host=/run/postgresql dbname=kluis user=k password=hunter2"),
            "PostgreSQL at /run/postgresql (database `kluis`, user `k`)"
        );
        let env_cfg = RawConfig::default()
            .with_env(&env(&[(
                "KLUIS_STORE",
                "host=/run/postgresql dbname=kluis",
            )]))
            .validate(false)
            .unwrap();
        assert!(env_cfg.store.is_some());
        let err = RawConfig {
            store: Some("/var/lib/kluis/kluis.db".into()),
            ..Default::default()
        }
        .validate(false)
        .unwrap_err();
        assert!(
            err.to_string().contains("PostgreSQL connection string"),
            "{err}"
        );
    }

    #[test]
    fn retention_periods_parse() {
        assert_eq!(parse_days("730d"), Some(730));
        assert_eq!(parse_days("2y"), Some(730));
        assert_eq!(parse_days("1w"), Some(7));
        assert_eq!(parse_days("y"), None);
        assert_eq!(parse_days(""), None);
        assert_eq!(parse_days("7ü"), None);
        assert_eq!(parse_days("ü"), None);
    }
}
