//! `kluis admin`: administer a running server over the `Admin` gRPC service.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kluis::{
    config::{Env, SystemEnv},
    pb::{self, admin_client::AdminClient},
};
use tonic::{
    Code, Request,
    transport::{Certificate, Channel, ClientTlsConfig},
};
use zeroize::Zeroizing;

use super::{Exit, fail};

/// Arguments of `kluis admin`.
#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The server, e.g. http://127.0.0.1:50051 or https://kluis.internal:50051.
    #[arg(long, env = "KLUIS_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// CA certificate (PEM) to trust for an https server.
    #[arg(long, env = "KLUIS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// File holding your bearer token (else the KLUIS_TOKEN environment variable).
    #[arg(long, env = "KLUIS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print results as JSON.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Admin subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Manage bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// Token subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token; it is printed once.
    Issue {
        /// Whom the token is for (employee number, contractor id, ...).
        #[arg(long)]
        principal: String,
        /// A role (repeat for several).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Lifetime: `30d`, `12h`, `90m`; at most 400 days.
        #[arg(long, default_value = "30d")]
        ttl: String,
        /// Bind the token to one subject (required for contractor, bailiff, lawyer, subject).
        #[arg(long)]
        subject: Option<String>,
        /// Why the token is issued (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// Revoke a token by id.
    Revoke {
        /// The token id (`tok_…`).
        token_id: String,
        /// Why (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// List tokens (never the tokens themselves).
    List {
        /// Include revoked and expired tokens.
        #[arg(long)]
        all: bool,
    },
}

/// Runs `kluis admin`.
pub fn run(args: &AdminArgs) -> Exit {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    runtime.block_on(run_async(args))
}

async fn run_async(args: &AdminArgs) -> Exit {
    let token = match read_token(args) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let channel = match connect(args).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mut client = AdminClient::new(channel);
    let AdminCommand::Token(cmd) = &args.command;
    match cmd {
        TokenCommand::Issue {
            principal,
            roles,
            ttl,
            subject,
            justification,
        } => {
            let Some(ttl_seconds) = parse_ttl(ttl) else {
                return fail(format!(
                    "--ttl `{ttl}` is not a duration like 30d, 12h or 90m"
                ));
            };
            let req = pb::IssueTokenRequest {
                principal_id: principal.clone(),
                roles: roles.clone(),
                ttl_seconds,
                scope_subject_id: subject.clone().unwrap_or_default(),
                justification: justification.clone(),
            };
            match client.issue_token(authed(&token, req)).await {
                Ok(resp) => {
                    let r = resp.into_inner();
                    let expires = r.expires_at.map(|t| t.seconds).unwrap_or_default();
                    if args.json {
                        println!(
                            "{}",
                            serde_json::json!({"token_id": r.token_id, "token": r.token, "expires_at": expires})
                        );
                    } else {
                        println!("token id:   {}", r.token_id);
                        println!("expires at: {} (unix seconds)", expires);
                        println!("token (shown once):");
                        println!("{}", r.token);
                    }
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        TokenCommand::Revoke {
            token_id,
            justification,
        } => {
            let req = pb::RevokeTokenRequest {
                token_id: token_id.clone(),
                justification: justification.clone(),
            };
            match client.revoke_token(authed(&token, req)).await {
                Ok(_) => {
                    if args.json {
                        println!("{}", serde_json::json!({"revoked": token_id}));
                    } else {
                        println!("revoked {token_id}");
                    }
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        TokenCommand::List { all } => match client
            .list_tokens(authed(
                &token,
                pb::ListTokensRequest {
                    include_inactive: *all,
                },
            ))
            .await
        {
            Ok(resp) => {
                let tokens = resp.into_inner().tokens;
                if args.json {
                    for t in &tokens {
                        println!(
                            "{}",
                            serde_json::json!({
                                "token_id": t.token_id, "principal_id": t.principal_id, "roles": t.roles,
                                "scope_subject_id": t.scope_subject_id, "state": t.state,
                                "expires_at": t.expires_at.as_ref().map(|x| x.seconds),
                            })
                        );
                    }
                } else {
                    println!(
                        "{:<22} {:<24} {:<8} {:<12} ROLES",
                        "TOKEN ID", "PRINCIPAL", "STATE", "SUBJECT"
                    );
                    for t in &tokens {
                        println!(
                            "{:<22} {:<24} {:<8} {:<12} {}",
                            t.token_id,
                            t.principal_id,
                            t.state,
                            t.scope_subject_id,
                            t.roles.join(",")
                        );
                    }
                }
                Exit::Success
            }
            Err(s) => status_exit(&s),
        },
    }
}

/// Wraps `msg` in a request carrying `authorization: Bearer <token>`.
fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

fn read_token(args: &AdminArgs) -> Result<Zeroizing<String>, String> {
    if let Some(path) = &args.token_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read token file `{}`: {e}", path.display()))?,
        );
        return Ok(Zeroizing::new(text.trim().to_owned()));
    }
    SystemEnv
        .var("KLUIS_TOKEN")
        .map(|t| Zeroizing::new(t.trim().to_owned()))
        .ok_or_else(|| "no credentials: give --token-file or set KLUIS_TOKEN".to_owned())
}

async fn connect(args: &AdminArgs) -> Result<Channel, String> {
    let mut endpoint = Channel::from_shared(args.server.clone())
        .map_err(|e| format!("--server `{}`: {e}", args.server))?
        .connect_timeout(std::time::Duration::from_secs(10));
    if args.server.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &args.ca_cert {
            let pem =
                std::fs::read(ca).map_err(|e| format!("cannot read CA `{}`: {e}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach kluis at {}: {e}", args.server))
}

fn status_exit(s: &tonic::Status) -> Exit {
    eprintln!("error: {}", s.message());
    match s.code() {
        Code::Unauthenticated | Code::PermissionDenied => Exit::Denied,
        _ => Exit::Error,
    }
}

/// Parses `30d`, `12h`, `90m` or `3600s` into seconds.
fn parse_ttl(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    n.checked_mul(match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return None,
    })
}
