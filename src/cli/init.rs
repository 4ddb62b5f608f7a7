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

use super::{Exit, fail};

/// Arguments of `kluis init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory for the store (created if missing).
    #[arg(long, env = "KLUIS_DATA_DIR", required_unless_present = "store")]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL store instead of SQLite in the data directory: a libpq-style connection
    /// string (`postgresql://user@host:5432/db?sslmode=verify-full&sslrootcert=FILE`, or
    /// `host=/run/postgresql dbname=kluis`).
    #[arg(long, env = "KLUIS_STORE")]
    pub store: Option<String>,
    /// Root key file: used if it exists, created (64 hex digits, mode 0600) if not.
    #[arg(long, conflicts_with = "passphrase_file")]
    pub key_file: Option<PathBuf>,
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
    let cfg = match (config::RawConfig {
        data_dir: args.data_dir.clone(),
        store: args.store.clone(),
        ..Default::default()
    })
    .validate(false)
    {
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
    let secret = match &args.key_file {
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
    let store = match config::open_configured_store(&cfg.data_dir, cfg.store.as_ref()) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if let Err(e) = Keyring::initialize(store.as_ref(), &secret, algorithm) {
        return fail(format!("{e} ({location})"));
    }
    drop(store);
    let vault = match config::open_vault(&cfg, &secret) {
        Ok(v) => v,
        Err(e) => return fail(e),
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
        });
        out!("{out}");
    } else {
        out!("kluis store initialised ({location})");
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
                out!("with `kluis admin token approve TOKEN_ID`.");
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
