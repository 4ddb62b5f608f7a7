//! `kluis init`: create the store and its root key, and print the first security-officer token
//! once.

use std::path::PathBuf;

use clap::Args;
use kluis::{
    config::{self, KeySource, SystemEnv},
    crypto::Algorithm,
    domain::{PrincipalId, Role},
    keys::{Keyring, RootSecret},
    vault::tokens::TokenSpec,
};

use super::{Exit, fail, open_failed};

/// Arguments of `kluis init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory for the store (created if missing).
    #[arg(long, env = "KLUIS_DATA_DIR", required_unless_present_any = ["store", "config"])]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL store instead of SQLite in the data directory: a libpq-style connection
    /// string (`postgresql://user@host:5432/db?sslmode=verify-full&sslrootcert=FILE`, or
    /// `host=/run/postgresql dbname=kluis`).
    #[arg(long, env = "KLUIS_STORE")]
    pub store: Option<String>,
    /// TOML configuration file: `data_dir`, `store` and `[seal]` are taken from it (the flags
    /// win).
    #[arg(long, short = 'c', env = "KLUIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Root key file: used if it exists, created (64 hex digits, mode 0600) if not.
    #[arg(long, conflicts_with_all = ["passphrase_file", "shares", "pkcs11"])]
    pub key_file: Option<PathBuf>,
    /// Split a new random root key into this many shares (2 to 16), one file each in
    /// --share-dir; the server then starts sealed until custodians give --threshold of them.
    #[arg(long, requires_all = ["threshold", "share_dir"], conflicts_with_all = ["passphrase_file", "pkcs11"])]
    pub shares: Option<u8>,
    /// How many shares open the store (2 to --shares).
    #[arg(long, requires = "shares")]
    pub threshold: Option<u8>,
    /// Where the share files are written (created with mode 0700; hand each file to its
    /// custodian and remove it from here).
    #[arg(long, requires = "shares")]
    pub share_dir: Option<PathBuf>,
    /// Seal a new random root key with the HSM of `[seal]` in --config (PKCS#11); the AES key
    /// is created on the token when none has its label. The server unseals itself at start.
    #[arg(long, requires = "config", conflicts_with = "passphrase_file")]
    pub pkcs11: bool,
    /// File holding the root passphrase (else KLUIS_PASSPHRASE, else a prompt).
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// AEAD for new ciphertexts.
    #[arg(long, default_value = "aes-256-gcm", value_parser = ["aes-256-gcm", "xchacha20-poly1305"])]
    pub algorithm: String,
    /// Principal id of the first security officer.
    #[arg(long, default_value = "security-officer")]
    pub principal: String,
    /// Principal id of the first privacy officer, who approves the tokens that read personal
    /// data (the second person of the two-person rule). A token for them is printed too.
    #[arg(long)]
    pub privacy_officer: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `kluis init`.
pub fn run(args: &InitArgs) -> Exit {
    let env = SystemEnv;
    let algorithm = Algorithm::parse(&args.algorithm).unwrap_or_default();
    let mut raw = match &args.config {
        Some(path) => match config::RawConfig::from_file(path) {
            Ok(r) => r,
            Err(e) => return fail(e),
        },
        None => config::RawConfig::default(),
    };
    if args.data_dir.is_some() {
        raw.data_dir = args.data_dir.clone();
    }
    if args.store.is_some() {
        raw.store = args.store.clone();
    }
    // The key source of a configuration is the server's business; init takes its own flags.
    raw.key_file = None;
    raw.passphrase_file = None;
    let cfg = match raw.validate(false) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let location = match &cfg.store {
        Some(url) => url.to_string(),
        None => format!("data dir `{}`", cfg.data_dir.display()),
    };
    if cfg.store.is_none()
        && let Err(e) = config::create_private_dir(&cfg.data_dir)
    {
        return fail(format!("cannot create `{}`: {e}", cfg.data_dir.display()));
    }
    // A directory open to others is refused before anything is written in it: the server
    // would refuse it after.
    if cfg.store.is_none()
        && let Err(e) = config::check_private(&cfg.data_dir)
    {
        return fail(e);
    }
    // Not beside a `kluis serve` or another `kluis init` of the same store.
    let _held = match &cfg.store {
        None => match config::lock_data_dir(&cfg.data_dir) {
            Ok(held) => Some(held),
            Err(e) => return fail(e),
        },
        Some(_) => None,
    };
    let mut share_files = Vec::new();
    let secret = match &args.key_file {
        _ if args.pkcs11 => {
            let Some(hsm) = &cfg.hsm else {
                return fail(
                    "--pkcs11 needs `[seal] type = \"pkcs11\"` (module, token_label, key_label, \
                     pin_file) in --config",
                );
            };
            kluis::seal::pkcs11::Hsm::open(hsm)
                .map(|h| RootSecret::Hsm(std::sync::Arc::new(h)))
                .map_err(|e| config::OpenError::from(kluis::keys::KeyError::from(e)))
        }
        _ if args.shares.is_some() => {
            let (Some(total), Some(threshold), Some(dir)) =
                (args.shares, args.threshold, args.share_dir.as_deref())
            else {
                return fail("--shares needs --threshold and --share-dir");
            };
            if let Err(e) = kluis::seal::shares::check_parameters(threshold, total) {
                return super::usage(e);
            }
            let root = kluis::crypto::RootKey::generate();
            let set = match kluis::seal::shares::split(&root, threshold, total) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            drop(root);
            // The files first: a store whose shares were not written opens for nobody.
            share_files = match kluis::seal::shares::write_set(dir, &set) {
                Ok(f) => f,
                Err(e) => return fail(e),
            };
            Ok(RootSecret::Shares(set))
        }
        Some(path) if path.exists() => {
            RootSecret::read_key_file(path).map_err(config::OpenError::from)
        }
        Some(path) => RootSecret::create_key_file(path).map_err(config::OpenError::from),
        None => {
            let source = match &args.passphrase_file {
                Some(p) => KeySource::PassphraseFile(p.clone()),
                None if kluis::config::Env::var(&env, "KLUIS_PASSPHRASE").is_some() => {
                    KeySource::PassphraseEnv
                }
                None => KeySource::Prompt,
            };
            config::read_secret(&source, &env, true)
        }
    };
    let secret = match secret {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let store = match config::open_configured_store(
        &cfg.data_dir,
        cfg.store.as_ref(),
        cfg.read_cache_mib,
    ) {
        Ok(s) => s,
        Err(e) => return open_failed(e),
    };
    if let Err(e) = Keyring::initialize(store.as_ref(), &secret, algorithm) {
        for f in &share_files {
            let _ = std::fs::remove_file(f);
        }
        return fail(format!("{e} ({location})"));
    }
    drop(store);
    let vault = match config::open_vault(&cfg, &secret) {
        Ok(v) => v,
        Err(e) => return open_failed(e),
    };
    let spec = match PrincipalId::parse("--principal", &args.principal) {
        Ok(principal) => TokenSpec {
            principal,
            roles: vec![Role::SecurityOfficer],
            ttl_secs: 30 * 86_400,
            scope_subject: None,
        },
        Err(e) => return fail(e),
    };
    let privacy_spec = match args.privacy_officer.as_deref().map(|p| {
        PrincipalId::parse("--privacy-officer", p).map(|principal| TokenSpec {
            principal,
            roles: vec![Role::PrivacyOfficer],
            ttl_secs: 30 * 86_400,
            scope_subject: None,
        })
    }) {
        None => None,
        Some(Ok(privacy)) if privacy.principal == spec.principal => {
            return fail(
                "--privacy-officer must name another person than --principal (separation of \
                 duties)",
            );
        }
        Some(Ok(spec)) => Some(spec),
        Some(Err(e)) => return fail(e),
    };
    let issued = match vault.bootstrap_token(&spec) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let privacy = match privacy_spec.map(|s| vault.bootstrap_token(&s)).transpose() {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    if args.json {
        let out = serde_json::json!({
            "data_dir": cfg.store.is_none().then(|| cfg.data_dir.display().to_string()),
            "store": cfg.store.as_ref().map(|u| u.to_string()),
            "token_id": issued.id,
            "token": issued.token.expose_secret(),
            "expires_at": issued.expires_at,
            "privacy_officer_token_id": privacy.as_ref().map(|p| p.id.clone()),
            "privacy_officer_token": privacy.as_ref().map(|p| p.token.expose_secret()),
            "seal": seal_kind(&secret),
            "share_files": share_files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        });
        out!("{out}");
    } else {
        out!(
            "kluis store initialised ({location}), sealed by {}",
            seal_kind(&secret)
        );
        if !share_files.is_empty() {
            out!();
            out!(
                "The root key is split into {} shares; any {} of them open the store. Give each \
                 custodian one file, then remove them here:",
                share_files.len(),
                args.threshold.unwrap_or_default()
            );
            for f in &share_files {
                out!("  {}", f.display());
            }
            out!(
                "`kluis serve` starts sealed; custodians unseal it with `kluis operator unseal --share-file FILE`."
            );
        }
        out!();
        out!("First security-officer token (shown once; kluis keeps only its hash):");
        out!();
        out!("  {}", issued.token.expose_secret());
        out!();
        out!(
            "Token id {} expires in 30 days. Store it in a secret manager and use it with",
            issued.id
        );
        out!("`kluis admin token issue` to create the tokens your staff and apps need.");
        match &privacy {
            Some(p) => {
                out!();
                out!("First privacy-officer token (shown once), id {}:", p.id);
                out!();
                out!("  {}", p.token.expose_secret());
                out!();
                out!("Tokens that read personal data work once a privacy officer approves them");
                out!("with `kluis admin token approve TOKEN_ID --justification WHY`.");
            }
            None => {
                out!();
                out!(
                    "Tokens that read personal data work once a privacy officer approves them; \
                     no privacy officer"
                );
                out!("exists yet (`kluis init --privacy-officer ID` makes the first one at init).");
            }
        }
    }
    Exit::Success
}

/// `shares`, `pkcs11`, `passphrase` or `key-file`.
fn seal_kind(secret: &RootSecret) -> &'static str {
    match secret {
        RootSecret::Passphrase(_) => "passphrase",
        RootSecret::KeyFile(_) => "key-file",
        RootSecret::Shares(_) => "shares",
        RootSecret::Hsm(_) => "pkcs11",
    }
}
