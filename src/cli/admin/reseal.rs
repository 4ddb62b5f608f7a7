//! `kluis admin root reseal --to shares|pkcs11|passphrase|key-file`: a new root key under a
//! new seal, with the dual control of a root change.

use std::path::{Path, PathBuf};

use clap::Args;
use kluis::{
    crypto::RootKey,
    keys::RootSecret,
    pb::{self, admin_client::AdminClient, rotate_root_request::Secret},
    seal::shares::{self, Share},
};
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::{Exit, authed, fail, status_exit};

/// Arguments of `kluis admin root reseal`.
#[derive(Args, Debug)]
pub struct ResealArgs {
    /// The new seal.
    #[arg(long, value_parser = ["shares", "pkcs11", "passphrase", "key-file"])]
    pub to: String,
    /// Shares: how many to make (2 to 16) when asking.
    #[arg(long)]
    pub shares: Option<u8>,
    /// Shares: how many open the store (2 to --shares) when asking.
    #[arg(long)]
    pub threshold: Option<u8>,
    /// Shares: the directory the new set is written to when asking (created, mode 0700), and
    /// read from when carrying out (unless --share-file is given).
    #[arg(long)]
    pub share_dir: Option<PathBuf>,
    /// Shares, carrying out: a share file of the new set; once per share (a quorum).
    #[arg(long = "share-file")]
    pub share_files: Vec<PathBuf>,
    /// Key file: the new key file (created with mode 0600 when missing).
    #[arg(long)]
    pub new_key_file: Option<PathBuf>,
    /// Passphrase: a file holding the new passphrase (else a prompt).
    #[arg(long)]
    pub new_passphrase_file: Option<PathBuf>,
    /// The id of the approved change to carry out (`root_…`); without it, ask for the change.
    #[arg(long)]
    pub request: Option<String>,
    /// Why (audited).
    #[arg(long, default_value = "")]
    pub justification: String,
}

/// Runs `kluis admin root reseal`.
pub async fn reseal(client: &mut AdminClient<Channel>, token: &str, args: &ResealArgs) -> Exit {
    let asking = args.request.is_none();
    // The files of a new set written for this request: removed again when it is refused.
    let mut written = Vec::new();
    let secret = match args.to.as_str() {
        "shares" if asking => {
            let (Some(total), Some(threshold), Some(dir)) =
                (args.shares, args.threshold, args.share_dir.as_deref())
            else {
                return fail("--to shares needs --shares N, --threshold K and --share-dir DIR");
            };
            if let Err(e) = shares::check_parameters(threshold, total) {
                return crate::cli::usage(e);
            }
            let root = RootKey::generate();
            let set = match shares::split(&root, threshold, total) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            drop(root);
            written = match shares::write_set(dir, &set) {
                Ok(w) => w,
                Err(e) => return fail(e),
            };
            Secret::Shares(pb::ShareSet {
                shares: set.iter().map(|s| s.to_text().to_string()).collect(),
            })
        }
        "shares" => match read_quorum(&args.share_files, args.share_dir.as_deref()) {
            Ok(given) => Secret::Shares(pb::ShareSet {
                shares: given.iter().map(|s| s.to_text().to_string()).collect(),
            }),
            Err(e) => return fail(e),
        },
        "pkcs11" => Secret::Hsm(true),
        "key-file" => {
            let Some(path) = &args.new_key_file else {
                return fail("--to key-file needs --new-key-file FILE");
            };
            let secret = if path.exists() {
                RootSecret::read_key_file(path)
            } else {
                RootSecret::create_key_file(path)
            };
            match secret {
                Ok(RootSecret::KeyFile(k)) => Secret::Key(k.expose_secret().to_vec()),
                Ok(_) => return fail("not a key file"),
                Err(e) => return fail(e),
            }
        }
        _ => {
            let secret = match &args.new_passphrase_file {
                Some(path) => match std::fs::read_to_string(path).map(Zeroizing::new) {
                    Ok(text) => text.trim_end_matches(['\n', '\r']).to_owned(),
                    Err(e) => return fail(format!("cannot read `{}`: {e}", path.display())),
                },
                None => match kluis::config::read_secret(
                    &kluis::config::KeySource::Prompt,
                    &kluis::config::SystemEnv,
                    asking,
                ) {
                    Ok(RootSecret::Passphrase(p)) => p.to_string(),
                    Ok(_) => return fail("not a passphrase"),
                    Err(e) => return fail(e),
                },
            };
            Secret::Passphrase(secret)
        }
    };
    let req = pb::RotateRootRequest {
        secret: Some(secret),
        justification: args.justification.clone(),
        request_id: args.request.clone().unwrap_or_default(),
    };
    match client.rotate_root(authed(token, req)).await {
        Ok(r) if r.get_ref().rotated => {
            out!(
                "the root key is now sealed by {}: the purpose keys are rewrapped; the old seal no \
                 longer opens the store.",
                args.to
            );
            if args.to == "shares" {
                out!(
                    "the next start is sealed until custodians give a quorum: `kluis operator \
                     unseal --share-file FILE`."
                );
            } else {
                out!("point the server's configuration at the new seal before its next start.");
            }
            Exit::Success
        }
        Ok(r) => {
            let r = r.into_inner();
            out!(
                "seal change {} requested; it awaits approval by a privacy officer:",
                r.request_id
            );
            out!(
                "  kluis admin root approve {} --justification WHY",
                r.request_id
            );
            out!("then, within 24 hours, carry it out:");
            match args.to.as_str() {
                "shares" => {
                    out!(
                        "  kluis admin root reseal --to shares --request {} --share-dir {}",
                        r.request_id,
                        args.share_dir
                            .as_deref()
                            .map_or_else(String::new, |d| d.display().to_string())
                    );
                    out!("the new shares were written to:");
                    for f in &written {
                        out!("  {}", f.display());
                    }
                }
                other => out!(
                    "  kluis admin root reseal --to {other} --request {} (with the same new \
                     secret)",
                    r.request_id
                ),
            }
            Exit::Success
        }
        Err(s) => {
            for f in &written {
                let _ = std::fs::remove_file(f);
            }
            status_exit(&s)
        }
    }
}

/// The shares given by file, or every share file in `dir`.
fn read_quorum(files: &[PathBuf], dir: Option<&Path>) -> Result<Vec<Share>, String> {
    let mut paths = files.to_vec();
    if paths.is_empty() {
        let Some(dir) = dir else {
            return Err(
                "carrying out a change to shares needs --share-file (a quorum of the new \
                        set) or --share-dir"
                    .into(),
            );
        };
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("kluis-share-"))
            {
                paths.push(path);
            }
        }
        paths.sort();
    }
    paths
        .iter()
        .map(|p| Share::read_file(p).map_err(|e| e.to_string()))
        .collect()
}
