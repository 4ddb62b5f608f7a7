//! `kluis operator`: the custodians' commands for one server: unseal it with shares (or its
//! passphrase, key file, a new try of its HSM), see whether it is sealed, and replace the set
//! of shares. They need no token: a quorum of shares is their authority.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kluis::{
    pb::{self, operator_client::OperatorClient},
    seal::shares::{self, Share},
};
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::{Exit, admin, fail};

/// Arguments of `kluis operator`.
#[derive(Args, Debug)]
pub struct OperatorArgs {
    /// The server, e.g. http://127.0.0.1:50051 or https://kluis.internal:50051.
    #[arg(
        long,
        visible_alias = "addr",
        env = "KLUIS_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// CA certificate (PEM) to trust for an https server.
    #[arg(long, env = "KLUIS_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Print results as JSON.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: OperatorCommand,
}

/// Operator subcommands.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Give your share to a sealed server (or, for a store sealed otherwise, its passphrase or
    /// key file, or a new try of its HSM). Shows how many shares are in; a wrong share is named
    /// and nothing of it is kept. Without a file, the share is asked for at a prompt.
    Unseal {
        /// Your share file (`kluis-share-…txt`, mode 0600).
        #[arg(long, conflicts_with_all = ["passphrase_file", "key_file", "hsm"])]
        share_file: Option<PathBuf>,
        /// The passphrase, for a store sealed by one.
        #[arg(long, conflicts_with_all = ["key_file", "hsm"])]
        passphrase_file: Option<PathBuf>,
        /// The key file, for a store sealed by one.
        #[arg(long, conflicts_with = "hsm")]
        key_file: Option<PathBuf>,
        /// Try the server's HSM again (after it failed at start).
        #[arg(long)]
        hsm: bool,
        /// Forget the shares given so far (alone: give none now).
        #[arg(long)]
        reset: bool,
    },
    /// Whether the server is sealed, by what, and how many shares are in.
    Status,
    /// Make a new set of shares (a new number and threshold) from a quorum of the old ones,
    /// without changing the root key. The new files are written first; the old shares stop
    /// working once the server took the new set.
    RekeyShares {
        /// A share file of the set in force; give it once per share (a quorum of them).
        #[arg(long = "share-file", required = true)]
        share_files: Vec<PathBuf>,
        /// How many shares to make (2 to 16).
        #[arg(long)]
        shares: u8,
        /// How many of them open the store (2 to --shares).
        #[arg(long)]
        threshold: u8,
        /// Directory for the new share files (created with mode 0700).
        #[arg(long)]
        share_dir: PathBuf,
    },
}

/// Runs `kluis operator`.
pub fn run(args: &OperatorArgs) -> Exit {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    runtime.block_on(async {
        let channel = match admin::connect_to(&args.server, args.ca_cert.as_deref()).await {
            Ok(c) => c,
            Err(exit) => return exit,
        };
        let mut client = OperatorClient::new(channel);
        match &args.command {
            OperatorCommand::Unseal {
                share_file,
                passphrase_file,
                key_file,
                hsm,
                reset,
            } => {
                let secret = match unseal_secret(
                    share_file.as_ref(),
                    passphrase_file.as_ref(),
                    key_file.as_ref(),
                    *hsm,
                    *reset,
                ) {
                    Ok(s) => s,
                    Err(e) => return fail(e),
                };
                let req = pb::UnsealRequest {
                    secret,
                    reset: *reset,
                };
                match client.unseal(req).await {
                    Ok(r) => show_status(&r.into_inner(), args.json),
                    Err(s) => admin::status_exit(&s),
                }
            }
            OperatorCommand::Status => match client.status(pb::SealStatusRequest {}).await {
                Ok(r) => show_status(&r.into_inner(), args.json),
                Err(s) => admin::status_exit(&s),
            },
            OperatorCommand::RekeyShares {
                share_files,
                shares,
                threshold,
                share_dir,
            } => {
                rekey_shares(
                    &mut client,
                    share_files,
                    *shares,
                    *threshold,
                    share_dir,
                    args.json,
                )
                .await
            }
        }
    })
}

fn unseal_secret(
    share_file: Option<&PathBuf>,
    passphrase_file: Option<&PathBuf>,
    key_file: Option<&PathBuf>,
    hsm: bool,
    reset: bool,
) -> Result<Option<pb::unseal_request::Secret>, String> {
    use pb::unseal_request::Secret;
    if let Some(path) = share_file {
        let share = Share::read_file(path).map_err(|e| e.to_string())?;
        return Ok(Some(Secret::Share(share.to_text().to_string())));
    }
    if let Some(path) = passphrase_file {
        kluis::config::check_private(path).map_err(|e| e.to_string())?;
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?,
        );
        return Ok(Some(Secret::Passphrase(
            text.trim_end_matches(['\n', '\r']).to_owned(),
        )));
    }
    if let Some(path) = key_file {
        kluis::config::check_private(path).map_err(|e| e.to_string())?;
        let secret = kluis::keys::RootSecret::read_key_file(path).map_err(|e| e.to_string())?;
        let kluis::keys::RootSecret::KeyFile(key) = secret else {
            return Err(format!("`{}` is not a key file", path.display()));
        };
        return Ok(Some(Secret::Key(key.expose_secret().to_vec())));
    }
    if hsm {
        return Ok(Some(Secret::Hsm(true)));
    }
    if reset {
        return Ok(None);
    }
    let typed = Zeroizing::new(
        rpassword::prompt_password("your share (the line starting with kluis-share-v1:): ")
            .map_err(|e| format!("cannot prompt for the share ({e}); give --share-file FILE"))?,
    );
    let share = Share::parse("the share typed", &typed).map_err(|e| e.to_string())?;
    Ok(Some(Secret::Share(share.to_text().to_string())))
}

/// Prints a seal status: `sealed: 2 of 3 shares given (1, 4)`.
fn show_status(s: &pb::SealStatus, json: bool) -> Exit {
    if json {
        out!(
            "{}",
            serde_json::json!({
                "sealed": s.sealed,
                "seal": s.seal,
                "description": s.description,
                "threshold": s.threshold,
                "total": s.total,
                "progress": s.progress,
                "given": s.given,
                "message": s.message,
            })
        );
        return Exit::Success;
    }
    out!(
        "{}: {}",
        if s.sealed { "sealed" } else { "unsealed" },
        s.description
    );
    if s.sealed && s.seal == "shares" && s.threshold > 0 {
        let given = s
            .given
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        out!(
            "shares given: {} of {}{}",
            s.progress,
            s.threshold,
            if given.is_empty() {
                String::new()
            } else {
                format!(" (numbers {given})")
            }
        );
    }
    if !s.message.is_empty() {
        out!("{}", s.message);
    }
    Exit::Success
}

async fn rekey_shares(
    client: &mut OperatorClient<Channel>,
    share_files: &[PathBuf],
    total: u8,
    threshold: u8,
    share_dir: &std::path::Path,
    json: bool,
) -> Exit {
    if let Err(e) = shares::check_parameters(threshold, total) {
        return super::usage(e);
    }
    let old = match share_files
        .iter()
        .map(|p| Share::read_file(p))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // The quorum is checked here first, so that no new set is written for shares that do not
    // combine; the server checks them again against what the store recorded.
    let root = match shares::combine(&old) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let new = match shares::split(&root, threshold, total) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    drop(root);
    let files = match shares::write_set(share_dir, &new) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let req = pb::ReplaceSharesRequest {
        old_shares: old.iter().map(|s| s.to_text().to_string()).collect(),
        new_shares: new.iter().map(|s| s.to_text().to_string()).collect(),
    };
    match client.replace_shares(req).await {
        Ok(r) => {
            let r = r.into_inner();
            if json {
                out!(
                    "{}",
                    serde_json::json!({
                        "old_set": r.old_set,
                        "new_set": r.new_set,
                        "threshold": r.threshold,
                        "total": r.total,
                        "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                    })
                );
            } else {
                out!(
                    "the store's shares are now set {} (any {} of {}); set {} no longer opens it: \
                     destroy those shares.",
                    r.new_set,
                    r.threshold,
                    r.total,
                    r.old_set
                );
                out!("give each custodian one new file, and keep no copies together:");
                for f in &files {
                    out!("  {}", f.display());
                }
            }
            Exit::Success
        }
        Err(s) => {
            // Refused before anything changed: the store keeps the old set, and the new files
            // open nothing. Any other outcome may have put the new set in force: keep them.
            if matches!(
                s.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::Aborted
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
            ) {
                for f in &files {
                    let _ = std::fs::remove_file(f);
                }
            } else {
                eprintln!(
                    "the outcome is not known; `kluis operator status` shows which set is in \
                     force (the new files are kept in `{}`)",
                    share_dir.display()
                );
            }
            admin::status_exit(&s)
        }
    }
}

/// `kluis admin operator seal`: seals the server again (security officer).
pub async fn seal(channel: Channel, token: &str, justification: &str, json: bool) -> Exit {
    let mut client = OperatorClient::new(channel);
    let req = admin::authed(
        token,
        pb::SealRequest {
            justification: justification.to_owned(),
        },
    );
    match client.seal(req).await {
        Ok(r) => show_status(&r.into_inner(), json),
        Err(s) => admin::status_exit(&s),
    }
}
