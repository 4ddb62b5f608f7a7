//! `kluis serve`: run the gRPC server. `--dev` makes a ready-to-use local server: an embedded
//! store in a local folder with a dev key file, the default policies, and one token per role in
//! `<data dir>/dev-tokens.json`.

use std::{
    collections::BTreeMap,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use clap::Args;
use kluis::{
    config::{self, Config, Env, KeySource, RawConfig, SystemEnv},
    domain::{PrincipalId, Role, SubjectId},
    keys::{Keyring, RootSecret, StoreSeal},
    seal::pkcs11::Hsm,
    server::{self, TlsPem},
    vault::{Vault, tokens::TokenSpec},
};

use super::{Exit, fail, open_failed};

/// The data directory of `--dev` when none is given.
pub const DEV_DATA_DIR: &str = ".kluis-dev";
/// The subject that scoped dev tokens (contractor, bailiff, lawyer, subject) are bound to.
pub const DEV_SUBJECT: &str = "REL-0001";

/// Arguments of `kluis serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Development mode: local store, dev key file, one token per role. Never for real data.
    #[arg(long)]
    pub dev: bool,
    /// TOML configuration file (see README, "Configuration").
    #[arg(long, short = 'c', env = "KLUIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of the store (overrides the configuration).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL store (overrides `store` and KLUIS_STORE): a libpq-style connection string,
    /// e.g. `postgresql://kluis@db:5432/kluis?sslmode=verify-full&sslrootcert=/etc/kluis/db-ca.pem`
    /// or `host=/run/postgresql dbname=kluis`. Several nodes serve one such store.
    #[arg(long)]
    pub store: Option<String>,
    /// Address to listen on, e.g. 127.0.0.1:50051 (overrides the configuration).
    #[arg(long)]
    pub listen: Option<String>,
    /// Root key file (overrides the configuration).
    #[arg(long, conflicts_with = "passphrase_file")]
    pub key_file: Option<PathBuf>,
    /// File holding the root passphrase (overrides the configuration).
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// Directory outside the store where the audit trail's MAC'd head is kept, as
    /// `head-<store id>.json` (overrides `[audit] head_dir` and KLUIS_HEAD_DIR). A store whose
    /// trail is behind it is refused (exit code 4). `--dev` defaults to `<data dir>-head`.
    #[arg(long)]
    pub head_dir: Option<PathBuf>,
    /// Start even though the store is behind its head file (a restored backup, an older copy
    /// put back on purpose): the accepted rollback is recorded on the audit trail.
    #[arg(long)]
    pub accept_rollback: bool,
    /// Lock all of the process's memory in RAM (mlockall), so keys and plaintext never reach
    /// swap; fails when the memlock limit (`ulimit -l`, LimitMEMLOCK=) is too small.
    #[arg(long)]
    pub lock_memory: bool,
}

/// Runs `kluis serve`.
pub fn run(args: &ServeArgs) -> Exit {
    // Before any secret is read: no core dumps, no ptrace or /proc/<pid>/mem by other processes
    // of the same user, and, when asked, no swapping.
    if let Err(e) = kluis::server::harden_process(args.lock_memory) {
        return fail(e);
    }
    let env = SystemEnv;
    let mut raw = match &args.config {
        Some(path) => match RawConfig::from_file(path) {
            Ok(r) => r,
            Err(e) => return fail(e),
        },
        None => RawConfig::default(),
    }
    .with_env(&env);
    if let Some(d) = &args.data_dir {
        raw.data_dir = Some(d.clone());
    }
    if let Some(l) = &args.listen {
        raw.listen = Some(l.clone());
    }
    if let Some(url) = &args.store {
        raw.store = Some(url.clone());
    }
    if let Some(k) = &args.key_file {
        raw.key_file = Some(k.clone());
        raw.passphrase_file = None;
    }
    if let Some(p) = &args.passphrase_file {
        raw.passphrase_file = Some(p.clone());
        raw.key_file = None;
    }
    if let Some(h) = &args.head_dir {
        raw.audit.get_or_insert_with(Default::default).head_dir = Some(h.clone());
    }
    if args.dev {
        let dir = raw
            .data_dir
            .get_or_insert_with(|| PathBuf::from(DEV_DATA_DIR))
            .clone();
        if raw.key_file.is_none() && raw.passphrase_file.is_none() {
            raw.key_file = Some(dir.join("dev-root.key"));
        }
        let audit = raw.audit.get_or_insert_with(Default::default);
        if audit.head_dir.is_none() {
            audit.head_dir = Some(dev_head_dir(&dir));
        }
    }
    let mut cfg = match raw.validate(env.var("KLUIS_PASSPHRASE").is_some()) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if args.accept_rollback && cfg.head_dir.is_none() {
        return fail(
            "--accept-rollback needs a head directory (--head-dir, `[audit] head_dir` or \
             KLUIS_HEAD_DIR): without one there is no head to be behind",
        );
    }
    cfg.accept_rollback = args.accept_rollback;
    // One process on a SQLite store, held until this one ends (`config::lock_data_dir`).
    let _held = match &cfg.store {
        None => match hold_data_dir(&cfg, args.dev) {
            Ok(held) => Some(held),
            Err(e) => return fail(e),
        },
        Some(_) => None,
    };
    let opened = if args.dev {
        open_dev(&cfg).and_then(|v| Ok((Ok(v), node_source(&cfg).map_err(open_failed)?)))
    } else {
        node_source(&cfg)
            .map_err(open_failed)
            .and_then(|source| Ok((open_node(&cfg, &source)?, source)))
    };
    let (first, source) = match opened {
        Ok((first, source)) => (first, Arc::new(source)),
        Err(exit) => return exit,
    };
    let tls = match TlsPem::read(&cfg) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    if tls.is_none() && !cfg.identity.providers.is_empty() && !cfg.listen.ip().is_loopback() {
        tracing::warn!(listen = %cfg.listen, "employees' provider tokens would cross the network in clear: configure `[tls]`");
    }
    if tls.is_none() && !cfg.listen.ip().is_loopback() {
        tracing::warn!(listen = %cfg.listen, "shares, passphrases and keys given to `kluis operator unseal` would cross the network in clear: configure `[tls]`");
    }
    // Before the runtime: the providers' keys are fetched now, with a short timeout each.
    let identity = Arc::new(kluis::identity::Identity::load(&cfg.identity));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        let listener = match std::net::TcpListener::bind(cfg.listen) {
            Ok(l) => l,
            Err(e) => return fail(format!("cannot listen on {}: {e}", cfg.listen)),
        };
        let addr = listener.local_addr().unwrap_or(cfg.listen);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let tls_on = tls.is_some();
        match &cfg.store {
            Some(url) => tracing::info!(%addr, tls = tls_on, store = %url, "kluis serving"),
            None => {
                tracing::info!(%addr, tls = tls_on, data_dir = %cfg.data_dir.display(), "kluis serving");
            }
        }
        if args.dev {
            print_dev_banner(&cfg.data_dir, addr);
        } else if let Err(why) = &first {
            eprintln!(
                "kluis listening on {scheme}://{addr}, SEALED ({why}): custodians unseal it with \
                 `kluis operator unseal`"
            );
        } else {
            eprintln!("kluis listening on {scheme}://{addr}");
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stop_signal().await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        });
        let stopped = move || {
            let mut stop = stop_rx.clone();
            async move {
                let _ = stop.wait_for(|s| *s).await;
            }
        };
        if let Some(addr) = cfg.metrics_listen {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(%addr, "metrics on http://{addr}/metrics");
                    tokio::spawn(server::serve_metrics(l, stopped()));
                }
                Err(e) => return fail(format!("cannot listen on {addr} (`[metrics] listen`): {e}")),
            }
        }
        let shutdown = stopped();
        // The connection caps, not the open file limit, decide who is refused.
        let connections = match server::raise_fd_limit() {
            Ok(nofile) => {
                let fitted = cfg.connections.fitted(nofile);
                if fitted != cfg.connections {
                    tracing::warn!(
                        nofile,
                        max_connections = fitted.max_connections,
                        "`limits.max_connections` lowered below the open file limit"
                    );
                }
                fitted
            }
            Err(e) => {
                tracing::warn!(error = %e, "the open file limit is unknown");
                cfg.connections
            }
        };
        let options = server::ServeOptions {
            tls,
            key_sweep_interval: cfg.key_sweep_interval,
            retention_sweep_interval: cfg.retention_sweep_interval,
            identity,
            reload_on_hangup: true,
            connections,
            streams: cfg.streams,
        };
        // The trail's close, when the vault is dropped at the end of a phase, writes the last
        // head to the head file.
        match server::serve_node(source, first, listener, options, shutdown).await {
            Ok(()) => Exit::Success,
            Err(e) => fail(e),
        }
    })
}

/// Takes the data directory for this process (`config::lock_data_dir`), once it is there and
/// private (`--dev` makes it first), before anything opens the store: a sealed node opens it
/// long before the vault checks the directory. A directory that is not there is refused (a
/// store made there meanwhile would be opened unlocked), and so is one open to others, naming
/// the secret's file first when that is open too (as the vault's open does).
fn hold_data_dir(cfg: &Config, dev: bool) -> Result<config::DataDirLock, String> {
    let dir = &cfg.data_dir;
    if dev {
        config::create_private_dir(dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    }
    if !dir.is_dir() {
        return Err(format!(
            "the data directory `{}` does not exist: make the store with `kluis init \
             --data-dir {}` first, or give the directory that holds it",
            dir.display(),
            dir.display()
        ));
    }
    if let Err(open) = config::check_private(dir) {
        if let KeySource::KeyFile(file) | KeySource::PassphraseFile(file) = &cfg.key_source
            && file.exists()
        {
            config::check_private(file).map_err(|e| e.to_string())?;
        }
        return Err(open.to_string());
    }
    config::lock_data_dir(dir)
}

/// Where the node gets its vault from once custodians unseal it, and what seals the store.
fn node_source(cfg: &Config) -> Result<server::NodeSource, config::OpenError> {
    let store =
        config::open_configured_store(&cfg.data_dir, cfg.store.as_ref(), cfg.read_cache_mib)?;
    let open_cfg = cfg.clone();
    Ok(server::NodeSource {
        seal: Box::new(move || Ok(Keyring::store_seal(store.as_ref())?)),
        open: Box::new(move |secret| config::open_vault(&open_cfg, secret)),
        hsm: cfg.hsm.clone(),
        pin_refused: std::sync::Mutex::new(None),
    })
}

/// Opens the vault when the root key can be had without a person at the server: a key file or
/// passphrase as configured, or the HSM of `[seal]`. `Ok(Err(why))`: the node starts sealed (a
/// store sealed by shares, or an HSM that failed).
fn open_node(cfg: &Config, source: &server::NodeSource) -> Result<Result<Vault, String>, Exit> {
    let store =
        config::open_configured_store(&cfg.data_dir, cfg.store.as_ref(), cfg.read_cache_mib)
            .map_err(open_failed)?;
    let seal = Keyring::store_seal(store.as_ref()).map_err(fail)?;
    drop(store);
    match seal {
        StoreSeal::Shares(meta) => Ok(Err(format!(
            "its root key is split into shares, any {} open it",
            meta.describe()
        ))),
        StoreSeal::Pkcs11(_) => {
            let Some(hsm) = &cfg.hsm else {
                return Ok(Err(
                    "its root key is sealed by an HSM and no `[seal] type = \"pkcs11\"` is \
                     configured"
                        .into(),
                ));
            };
            // A refused PIN is remembered: a new try waits for the PIN file to change.
            let refused = |e: &kluis::seal::SealError| {
                if matches!(e, kluis::seal::SealError::HsmPin(_))
                    && let Ok(mut stamp) = source.pin_refused.lock()
                {
                    *stamp = Some(kluis::api::operator::pin_stamp(&hsm.pin_file));
                }
            };
            let secret = match Hsm::open(hsm) {
                Ok(h) => RootSecret::Hsm(Arc::new(h)),
                Err(e) => {
                    refused(&e);
                    return Ok(Err(e.to_string()));
                }
            };
            match config::open_vault(cfg, &secret) {
                Ok(v) => Ok(Ok(v)),
                Err(config::OpenError::Key(kluis::keys::KeyError::Seal(e))) => {
                    refused(&e);
                    Ok(Err(e.to_string()))
                }
                Err(e) => Err(open_failed(e)),
            }
        }
        StoreSeal::Passphrase | StoreSeal::KeyFile => open(cfg).map(Ok),
    }
}

/// The head directory of `--dev` when none is given: beside the data directory.
fn dev_head_dir(data_dir: &Path) -> PathBuf {
    match data_dir.file_name() {
        Some(name) => data_dir.with_file_name(format!("{}-head", name.to_string_lossy())),
        None => data_dir.join("..").join("kluis-dev-head"),
    }
}

fn open(cfg: &Config) -> Result<Vault, Exit> {
    let secret = config::read_secret(&cfg.key_source, &SystemEnv, false).map_err(fail)?;
    config::open_vault(cfg, &secret).map_err(open_failed)
}

/// Opens the dev store, creating it with a dev key file and one token per role on first use.
/// Refuses a store it did not create (exit code 4): `--dev` mints tokens for every role.
fn open_dev(cfg: &Config) -> Result<Vault, Exit> {
    config::create_private_dir(&cfg.data_dir)
        .map_err(|e| fail(format!("cannot create `{}`: {e}", cfg.data_dir.display())))?;
    // A directory open to others is refused before anything is written in it, not after a
    // store and a key file were.
    config::check_private(&cfg.data_dir).map_err(fail)?;
    let store =
        config::open_configured_store(&cfg.data_dir, cfg.store.as_ref(), cfg.read_cache_mib)
            .map_err(open_failed)?;
    let fresh = !Keyring::is_initialized(store.as_ref()).map_err(fail)?;
    let not_dev = || {
        match &cfg.store {
            Some(url) => eprintln!(
                "error: {url} holds a store that `kluis serve --dev` did not create (made by \
                 `kluis init`, or restored from a backup); --dev would mint a token for every \
                 role on it. Serve it with `kluis serve --store URL --key-file FILE` (or \
                 --passphrase-file) and its own root key, or give --dev an empty database"
            ),
            None => eprintln!(
                "error: `{dir}` holds a store that `kluis serve --dev` did not create (made by \
                 `kluis init`, or restored from a backup); --dev would mint a token for every \
                 role on it. Serve it with `kluis serve --data-dir {dir} --key-file FILE` (or \
                 --passphrase-file) and its own root key, or give --dev a new directory",
                dir = cfg.data_dir.display()
            ),
        }
        Exit::CheckFailed
    };
    if !fresh && !Vault::claims_dev_store(store.as_ref()).map_err(fail)? {
        return Err(not_dev());
    }
    if fresh {
        let secret = match &cfg.key_source {
            config::KeySource::KeyFile(path) if !path.exists() => {
                RootSecret::create_key_file(path).map_err(fail)?
            }
            other => config::read_secret(other, &SystemEnv, true).map_err(fail)?,
        };
        Keyring::initialize(store.as_ref(), &secret, cfg.algorithm).map_err(fail)?;
    }
    drop(store);
    let vault = open(cfg)?;
    if fresh {
        vault.mark_dev_store().map_err(fail)?;
    } else if !vault.is_dev_store().map_err(fail)? {
        return Err(not_dev());
    }
    let tokens_path = cfg.data_dir.join("dev-tokens.json");
    if fresh || !tokens_path.exists() {
        let mut tokens = BTreeMap::new();
        for &role in Role::ALL {
            let scoped = matches!(
                role,
                Role::Contractor
                    | Role::Bailiff
                    | Role::Lawyer
                    | Role::Subject
                    | Role::Representative
            );
            let spec = TokenSpec {
                principal: PrincipalId::parse("principal", &format!("dev-{role}")).map_err(fail)?,
                roles: vec![role],
                ttl_secs: kluis::vault::tokens::MAX_TTL_SECS,
                scope_subject: scoped
                    .then(|| SubjectId::parse("subject", DEV_SUBJECT))
                    .transpose()
                    .map_err(fail)?,
            };
            let issued = vault.bootstrap_token(&spec).map_err(fail)?;
            tokens.insert(
                role.as_str().to_owned(),
                issued.token.expose_secret().to_owned(),
            );
        }
        write_private(
            &tokens_path,
            &serde_json::to_vec_pretty(&tokens).unwrap_or_default(),
        )
        .map_err(|e| fail(format!("cannot write `{}`: {e}", tokens_path.display())))?;
    }
    Ok(vault)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn print_dev_banner(data_dir: &Path, addr: SocketAddr) {
    let tokens_path = data_dir.join("dev-tokens.json");
    let tokens: BTreeMap<String, String> = std::fs::read(&tokens_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    out!(
        "kluis dev server on http://{addr} (data in {}; NOT for real data)",
        data_dir.display()
    );
    out!();
    out!("Tokens, one per role (also in {}):", tokens_path.display());
    for (role, token) in &tokens {
        out!("  {role:<20} {token}");
    }
    out!();
    out!(
        "Scoped roles (contractor, bailiff, lawyer, subject, representative) are bound to subject {DEV_SUBJECT}."
    );
    out!(
        "Try:  grpcurl -plaintext -H \"authorization: Bearer $(jq -r '.\"nuisance-officer\"' {})\" {addr} kluis.v1.Vault/WhoAmI",
        tokens_path.display()
    );
    let _ = std::io::stdout().flush();
}

/// Waits for Ctrl-C (SIGINT) or, on Unix, SIGTERM: what systemd, `kill` and container runtimes
/// send to stop a service. Either stops kluis cleanly (the calls under way finish, the trail's
/// head file names the last entry).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "SIGTERM cannot be caught: stop kluis with Ctrl-C (SIGINT)")
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
