//! `kluis admin`: administer a running server over the `Admin` gRPC service.

mod disclosures;
mod export;
mod keys;
mod lifecycle;
mod reseal;
mod tls;

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kluis::{
    config::{Env, SystemEnv},
    pb::{self, admin_client::AdminClient},
};
use tonic::{
    Code, Request,
    transport::{Channel, ClientTlsConfig},
};
use zeroize::Zeroizing;

use super::{Exit, fail, usage};

/// Arguments of `kluis admin`.
#[derive(Args, Debug)]
pub struct AdminArgs {
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
    /// File holding your bearer token (else the KLUIS_TOKEN environment variable).
    #[arg(long, env = "KLUIS_TOKEN_FILE", global = true)]
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
    /// Read and verify the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Rotate, rewrap, rekey, retire and destroy purpose keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Change the root key, or what seals it.
    #[command(subcommand)]
    Root(keys::RootCommand),
    /// Seal the server again (security officer): its keys are wiped from memory until
    /// custodians unseal it (`kluis operator unseal`).
    #[command(subcommand)]
    Operator(OperatorAdminCommand),
    /// Retention: destroy what has expired.
    #[command(subcommand)]
    Retention(lifecycle::RetentionCommand),
    /// Legal holds.
    #[command(subcommand)]
    Hold(lifecycle::HoldCommand),
    /// Erase a subject (GDPR art. 17), except what a hold or a legal obligation keeps.
    Erase {
        /// The subject.
        #[arg(long)]
        subject: String,
        /// The reference of the erasure request (required; audited).
        #[arg(long)]
        justification: String,
    },
    /// Subject requests and their four-week deadline.
    #[command(subcommand)]
    Requests(lifecycle::RequestsCommand),
    /// Mandates ("volmacht") of representatives.
    #[command(subcommand)]
    Mandate(lifecycle::MandateCommand),
    /// The disclosure register: who received a subject's data, on which basis, when.
    #[command(subcommand)]
    Disclosures(disclosures::DisclosuresCommand),
    /// Record a subject's consent (home adaptation) or objection (financial screening).
    Consent {
        /// The subject.
        #[arg(long)]
        subject: String,
        /// The purpose.
        #[arg(long)]
        purpose: String,
        /// `given`, `withdrawn` or `objected`.
        #[arg(long)]
        state: String,
        /// Why, e.g. the letter's reference (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// Restrict the processing of a subject's data (GDPR art. 18): stored, but read only for a
    /// legal claim and by the privacy officer; `--lift` ends it, `--list` shows restrictions.
    Restrict(lifecycle::RestrictArgs),
    /// Write a subject's export (JSON lines) to stdout or `--output`, with `--with-evidence
    /// DIR` each evidence file beside it, checked against its SHA-256 digest.
    Export(export::ExportArgs),
    /// Check the stored rows that grant, withhold or shape access against their MACs and the
    /// audit trail; exit 4 and list every bad row when one is found.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Reload the policy set from the server's configured files (as SIGHUP does).
    ReloadPolicies,
    /// Write a consistent online snapshot of the whole store to FILE (security officer). It
    /// holds ciphertext and wrapped keys only; restore it with `kluis restore`.
    Backup {
        /// Where to write it (must not exist).
        file: PathBuf,
        /// Why (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
}

/// Store subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Verify every authenticated row (tokens, holds, mandates, consents, records) and compare
    /// holds, mandates and consents with the audit trail. Exit 4 when a row is bad.
    Verify,
}

/// Audit subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the trail's MAC'd head (`SEQ:HASH:MAC:STORE_ID`): store it outside kluis.
    Head,
    /// Verify the whole trail; exit code 4 when an entry is edited, missing, inserted or
    /// reordered, or the tail was cut off before `--expect-head`.
    Verify {
        /// A head printed earlier by `audit head`: `SEQ:HASH:MAC:STORE_ID`.
        #[arg(long)]
        expect_head: Option<String>,
    },
    /// Export entries as JSON lines (privacy and security officers).
    Export {
        /// Only entries about this subject.
        #[arg(long)]
        subject: Option<String>,
        /// Only entries by this principal.
        #[arg(long)]
        principal: Option<String>,
        /// Only entries since this moment: RFC 3339 (2026-01-31T17:00:00Z), a date (2026-01-31) or
        /// unix seconds.
        #[arg(long)]
        since: Option<String>,
        /// Only break-glass accesses.
        #[arg(long)]
        break_glass: bool,
        /// Why the trail is read (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// Print the last entries of the trail and end, or with --follow keep printing each entry
    /// as it commits (to ship the trail to a SIEM). Every entry comes with its sequence number
    /// and chain hash, and the chain is checked as it arrives: exit 4 when it does not follow
    /// on. Privacy and security officers; the watch is itself audited.
    Tail {
        /// Keep printing entries as they are written, until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last entries to print first; with --follow, 0 prints only what is
        /// written from now on.
        #[arg(short = 'n', long = "lines", default_value_t = 20, value_name = "N")]
        lines: u32,
        /// Resume after this entry (the last sequence number you received): print every entry
        /// after it, instead of the last N. `--since 0` starts at the first entry.
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
        /// Why the trail is read (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// Who accessed a subject's data, and why (for a subject access request).
    Report {
        /// The subject.
        #[arg(long)]
        subject: String,
        /// E.g. the reference of the subject access request (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
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
        /// Lifetime: `30d`, `12h`, `30m`, `90s` (or `2w`); at most 400 days.
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
    /// Approve a token that waits for a second person (privacy officer; not its issuer, not its
    /// holder). Until then it authenticates nobody.
    Approve {
        /// The token id (`tok_…`).
        token_id: String,
        /// Why (required; audited).
        #[arg(long)]
        justification: String,
    },
    /// List tokens (never the tokens themselves).
    List {
        /// Include revoked and expired tokens.
        #[arg(long)]
        all: bool,
    },
}

/// `kluis admin operator` subcommands.
#[derive(Debug, Subcommand)]
pub enum OperatorAdminCommand {
    /// Seal the server now: it stops serving data, wipes its keys, and waits for custodians.
    Seal {
        /// Why (audited).
        #[arg(long, default_value = "")]
        justification: String,
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
    // What the user typed is checked before anything is read or sent: a usage error is one.
    if let Err(e) = check_values(&args.command) {
        return usage(e);
    }
    let token = match read_token(args) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let channel = match connect(args).await {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    // Answers as large as the server sends (a page of an access report, a key report).
    let mut client = AdminClient::new(channel.clone())
        .max_decoding_message_size(kluis::server::MAX_MESSAGE_BYTES);
    let cmd = match &args.command {
        AdminCommand::Token(cmd) => cmd,
        AdminCommand::Audit(cmd) => return audit(&mut client, &token, cmd, args.json).await,
        AdminCommand::Store(StoreCommand::Verify) => {
            return verify_store(&mut client, &token, args.json).await;
        }
        AdminCommand::Keys(cmd) => return keys::keys(&mut client, &token, cmd, args.json).await,
        AdminCommand::Root(cmd) => return keys::root(&mut client, &token, cmd).await,
        AdminCommand::Operator(OperatorAdminCommand::Seal { justification }) => {
            return super::operator::seal(channel, &token, justification, args.json).await;
        }
        AdminCommand::Retention(cmd) => {
            return lifecycle::retention(&mut client, &token, cmd, args.json).await;
        }
        AdminCommand::Hold(cmd) => {
            return lifecycle::hold(&mut client, &token, cmd, args.json).await;
        }
        AdminCommand::Erase {
            subject,
            justification,
        } => {
            return lifecycle::erase(&mut client, &token, subject, justification, args.json).await;
        }
        AdminCommand::Requests(cmd) => {
            return lifecycle::requests(&mut client, &token, cmd, args.json).await;
        }
        AdminCommand::Mandate(cmd) => {
            return lifecycle::mandate(&mut client, &token, cmd, args.json).await;
        }
        AdminCommand::Restrict(cmd) => {
            return lifecycle::restrict(&mut client, &token, cmd, args.json).await;
        }
        AdminCommand::Export(cmd) => return export::run(channel, &token, cmd, args.json).await,
        AdminCommand::Disclosures(cmd) => {
            return disclosures::disclosures(&mut client, &token, cmd, args.json).await;
        }
        AdminCommand::Consent {
            subject,
            purpose,
            state,
            justification,
        } => {
            return lifecycle::consent(&mut client, &token, subject, purpose, state, justification)
                .await;
        }
        AdminCommand::Backup {
            file,
            justification,
        } => return backup(&mut client, &token, file, justification, args.json).await,
        AdminCommand::ReloadPolicies => {
            return match client
                .reload_policies(authed(&token, pb::ReloadPoliciesRequest {}))
                .await
            {
                Ok(resp) => {
                    let r = resp.into_inner();
                    out!(
                        "policies in force: sha256:{} ({} policies, changed: {})",
                        r.digest,
                        r.policies,
                        r.changed
                    );
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            };
        }
    };
    match cmd {
        TokenCommand::Issue {
            principal,
            roles,
            ttl,
            subject,
            justification,
        } => {
            let ttl_seconds = match crate::cli::parse_duration("--ttl", ttl) {
                Ok(t) => t,
                Err(e) => return usage(e),
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
                    let expires = r
                        .expires_at
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), crate::cli::time);
                    if args.json {
                        out!(
                            "{}",
                            serde_json::json!({
                                "token_id": r.token_id, "token": r.token, "expires_at": expires,
                                "pending_approval": r.pending_approval,
                            })
                        );
                    } else {
                        out!("token id:   {}", r.token_id);
                        out!("expires at: {} (UTC)", expires);
                        if r.pending_approval {
                            out!(
                                "pending:    works once a privacy officer runs \
                                 `kluis admin token approve {} --justification WHY`",
                                r.token_id
                            );
                        }
                        out!("token (shown once):");
                        out!("{}", r.token);
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
                        out!("{}", serde_json::json!({"revoked": token_id}));
                    } else {
                        out!("revoked {token_id}");
                    }
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        TokenCommand::Approve {
            token_id,
            justification,
        } => {
            let req = pb::ApproveTokenRequest {
                token_id: token_id.clone(),
                justification: justification.clone(),
            };
            match client.approve_token(authed(&token, req)).await {
                Ok(_) => {
                    if args.json {
                        out!("{}", serde_json::json!({"approved": token_id}));
                    } else {
                        out!("approved {token_id}");
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
                        out!(
                            "{}",
                            serde_json::json!({
                                "token_id": t.token_id, "principal_id": t.principal_id, "roles": t.roles,
                                "scope_subject_id": t.scope_subject_id, "state": t.state,
                                "expires_at": t.expires_at.as_ref().map(crate::cli::time),
                                "requested_by": t.requested_by, "approved_by": t.approved_by,
                            })
                        );
                    }
                } else {
                    out!(
                        "{:<22} {:<24} {:<8} {:<12} ROLES",
                        "TOKEN ID",
                        "PRINCIPAL",
                        "STATE",
                        "SUBJECT"
                    );
                    for t in &tokens {
                        out!(
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

async fn verify_store(client: &mut AdminClient<Channel>, token: &str, json: bool) -> Exit {
    match client
        .verify_store(authed(token, pb::VerifyStoreRequest {}))
        .await
    {
        Ok(resp) => {
            let bad = resp.into_inner().bad_rows;
            if json {
                for b in &bad {
                    out!(
                        "{}",
                        serde_json::json!({"kind": b.kind, "id": b.id, "problem": b.problem})
                    );
                }
            } else if bad.is_empty() {
                out!("OK: every authenticated row is sound and matches the audit trail");
            } else {
                out!("{:<8} {:<40} PROBLEM", "KIND", "ID");
                for b in &bad {
                    out!("{:<8} {:<40} {}", b.kind, b.id, b.problem);
                }
            }
            if bad.is_empty() {
                Exit::Success
            } else {
                Exit::CheckFailed
            }
        }
        Err(s) => status_exit(&s),
    }
}

async fn audit(
    client: &mut AdminClient<Channel>,
    token: &str,
    cmd: &AuditCommand,
    json: bool,
) -> Exit {
    match cmd {
        AuditCommand::Head => match client
            .audit_head(authed(token, pb::AuditHeadRequest {}))
            .await
        {
            Ok(resp) => {
                let h = resp.into_inner().head.unwrap_or_default();
                if json {
                    out!(
                        "{}",
                        serde_json::json!({"seq": h.seq, "hash": h.hash, "mac": h.mac, "store_id": h.store_id})
                    );
                } else {
                    out!("{}:{}:{}:{}", h.seq, h.hash, h.mac, h.store_id);
                }
                Exit::Success
            }
            Err(s) => status_exit(&s),
        },
        AuditCommand::Verify { expect_head } => {
            let expect_head = match expect_head.as_deref().map(parse_head).transpose() {
                Ok(h) => h,
                Err(e) => return usage(e),
            };
            let anchor = expect_head.as_ref().map(|h| (h.seq, h.hash.clone()));
            match client
                .verify_audit(authed(token, pb::VerifyAuditRequest { expect_head }))
                .await
            {
                Ok(resp) => {
                    let r = resp.into_inner();
                    if json {
                        out!(
                            "{}",
                            serde_json::json!({"intact": r.intact, "count": r.count, "head_hash": r.head_hash,
                                "broken_seq": r.broken_seq, "problem": r.problem,
                                "expected_head_found": anchor.as_ref().map(|_| r.intact)})
                        );
                    } else if r.intact {
                        if let Some((seq, hash)) = &anchor {
                            out!("FOUND: entry {seq} of this trail has the expected hash {hash}");
                        }
                        out!("OK: {} entries, head {}", r.count, r.head_hash);
                    } else {
                        if let Some((seq, _)) = &anchor {
                            out!(
                                "NOT FOUND: the expected head is not entry {seq} of this trail, or the \
                                 trail is broken before it"
                            );
                        }
                        out!("BROKEN at entry {}: {}", r.broken_seq, r.problem);
                    }
                    if r.intact {
                        Exit::Success
                    } else {
                        Exit::CheckFailed
                    }
                }
                Err(s) => status_exit(&s),
            }
        }
        AuditCommand::Export {
            subject,
            principal,
            since,
            break_glass,
            justification,
        } => {
            let since = match since
                .as_deref()
                .map(|s| crate::cli::parse_moment("--since", s))
                .transpose()
            {
                Ok(s) => s,
                Err(e) => return usage(e),
            };
            let req = pb::ExportAuditRequest {
                subject_id: subject.clone().unwrap_or_default(),
                principal_id: principal.clone().unwrap_or_default(),
                since: since.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
                break_glass_only: *break_glass,
                justification: justification.clone(),
            };
            let mut stream = match client.export_audit(authed(token, req)).await {
                Ok(resp) => resp.into_inner(),
                Err(s) => return status_exit(&s),
            };
            loop {
                match stream.message().await {
                    Ok(Some(entry)) => out!("{}", entry.json),
                    Ok(None) => return Exit::Success,
                    Err(s) => return status_exit(&s),
                }
            }
        }
        AuditCommand::Tail {
            follow,
            lines,
            since,
            justification,
        } => tail(client, token, *follow, *lines, *since, justification, json).await,
        AuditCommand::Report {
            subject,
            justification,
        } => report(client, token, subject, justification, json).await,
    }
}

/// Accesses asked for per page of `audit report`; the server answers at most its
/// `limits.max_report_accesses`.
const REPORT_PAGE: u32 = 1_000;

/// `audit report`: the subject access report, page after page as the server answers them
/// (each page a call of its own on the trail), each printed as it comes; the restrictions
/// and disclosures, which come with the first page, after the last.
async fn report(
    client: &mut AdminClient<Channel>,
    token: &str,
    subject: &str,
    justification: &str,
    json: bool,
) -> Exit {
    let page = |after_seq| {
        authed(
            token,
            pb::SubjectAccessReportRequest {
                subject_id: subject.to_owned(),
                justification: justification.to_owned(),
                page_size: REPORT_PAGE,
                after_seq,
            },
        )
    };
    // The first page carries the restrictions and disclosures, printed after the last.
    let first = match client.subject_access_report(page(0)).await {
        Ok(resp) => resp.into_inner(),
        Err(s) => return status_exit(&s),
    };
    first.events.iter().for_each(|e| print_access(e, json));
    let mut accesses = first.events.len();
    let mut after_seq = 0;
    let mut next = first.next_after_seq;
    while next != 0 {
        if next <= after_seq {
            eprintln!(
                "error: the server named page after entry {next} to follow the page after \
                 {after_seq}; the report is incomplete"
            );
            return Exit::Error;
        }
        after_seq = next;
        let r = match client.subject_access_report(page(after_seq)).await {
            Ok(resp) => resp.into_inner(),
            Err(s) => return status_exit(&s),
        };
        r.events.iter().for_each(|e| print_access(e, json));
        accesses += r.events.len();
        next = r.next_after_seq;
    }
    for x in &first.restrictions {
        let t = |t: &Option<prost_types::Timestamp>| t.as_ref().map(crate::cli::time);
        if json {
            out!(
                "{}",
                serde_json::json!({"type": "restriction", "restriction_id": x.restriction_id,
                    "reason": x.reason, "placed_by": x.placed_by, "placed_at": t(&x.placed_at),
                    "lifted_at": t(&x.lifted_at)})
            );
        } else {
            out!(
                "processing restricted {} by {} ({}){}: {}",
                t(&x.placed_at).unwrap_or_default(),
                x.placed_by,
                x.restriction_id,
                t(&x.lifted_at)
                    .map(|l| format!(", lifted {l}"))
                    .unwrap_or_default(),
                x.reason
            );
        }
    }
    for d in &first.disclosures {
        let at = d.disclosed_at.as_ref().map(crate::cli::time);
        if json {
            out!(
                "{}",
                serde_json::json!({"type": "disclosure", "disclosure_id": d.disclosure_id,
                    "record_id": d.record_id, "purpose": d.purpose, "fields": d.fields,
                    "recipient": d.recipient, "recipient_kind": d.recipient_kind,
                    "legal_basis": d.legal_basis, "case_ref": d.case_ref, "disclosed_at": at,
                    "recorded_by": d.recorded_by, "automatic": d.automatic})
            );
        } else {
            out!(
                "disclosed {} to {} ({}) on {}: {} of {} [{}] case={} ({})",
                at.unwrap_or_default(),
                d.recipient,
                d.recipient_kind,
                d.legal_basis,
                d.fields.join(","),
                d.purpose,
                d.record_id,
                d.case_ref,
                d.disclosure_id
            );
        }
    }
    if !json {
        out!("{accesses} recorded accesses to {}", first.subject_id);
    }
    Exit::Success
}

/// One access of a subject access report, as a line of text or of JSON.
fn print_access(e: &pb::AccessEvent, json: bool) {
    let time = e.time.as_ref().map(crate::cli::time).unwrap_or_default();
    if json {
        out!(
            "{}",
            serde_json::json!({"seq": e.seq, "time": time, "principal_id": e.principal_id,
                "roles": e.roles, "action": e.action, "purpose": e.purpose,
                "case_ref": e.case_ref, "justification": e.justification,
                "channel": e.channel, "break_glass": e.break_glass, "record_id": e.record_id,
                "decision": e.decision, "fields_allowed": e.fields_allowed,
                "fields_denied": e.fields_denied, "fields_masked": e.fields_masked})
        );
    } else {
        out!(
            "{time} {} ({}) {} {} for {} case={} fields={} [{}] why: {}",
            e.principal_id,
            e.roles.join(","),
            e.decision,
            e.action,
            e.purpose,
            e.case_ref,
            e.fields_allowed.join(","),
            e.record_id,
            e.justification
        );
    }
}

/// `audit tail`: prints entries from `WatchAudit` as they come, checking that each follows on
/// from the one before (sequence number, previous hash, its own hash).
async fn tail(
    client: &mut AdminClient<Channel>,
    token: &str,
    follow: bool,
    lines: u32,
    since: Option<u64>,
    justification: &str,
    json: bool,
) -> Exit {
    use sha2::Digest;
    let req = pb::WatchAuditRequest {
        after_seq: since,
        last: Some(lines),
        follow,
        justification: justification.to_owned(),
    };
    let mut stream = match client.watch_audit(authed(token, req)).await {
        Ok(resp) => resp.into_inner(),
        Err(s) => return status_exit(&s),
    };
    let mut last: Option<(u64, String)> = None;
    loop {
        let entry = match stream.message().await {
            Ok(Some(entry)) => entry,
            Ok(None) => return Exit::Success,
            Err(s) => {
                let exit = status_exit(&s);
                if let Some((seq, _)) = &last {
                    eprintln!("the last entry received is {seq}: resume with --since {seq}");
                }
                return exit;
            }
        };
        let hash = hex::encode(
            sha2::Sha256::new()
                .chain_update(b"kluis.v1.audit")
                .chain_update(entry.seq.to_be_bytes())
                .chain_update(hex::decode(&entry.prev_hash).unwrap_or_default())
                .chain_update(entry.json.as_bytes())
                .finalize(),
        );
        let follows = last
            .as_ref()
            .is_none_or(|(seq, prev)| entry.seq == seq + 1 && &entry.prev_hash == prev);
        if hash != entry.hash || !follows {
            eprintln!(
                "error: entry {} does not follow on from the entry before it or does not match \
                its hash; run `kluis admin audit verify` on the server",
                entry.seq
            );
            return Exit::CheckFailed;
        }
        if json {
            out!(
                "{}",
                serde_json::json!({"seq": entry.seq, "hash": entry.hash,
                    "prev_hash": entry.prev_hash, "json": entry.json})
            );
        } else {
            out!("{} {} {}", entry.seq, entry.hash, entry.json);
        }
        last = Some((entry.seq, entry.hash));
    }
}

/// Streams an online backup from the server into a new file (0600), written as `.partial` first.
async fn backup(
    client: &mut AdminClient<Channel>,
    token: &str,
    file: &std::path::Path,
    justification: &str,
    json: bool,
) -> Exit {
    use sha2::Digest;
    use std::io::Write;
    if file.exists() {
        return fail(format!("`{}` exists; choose a new file", file.display()));
    }
    let partial = PathBuf::from(format!("{}.partial", file.display()));
    let req = pb::BackupRequest {
        justification: justification.to_owned(),
    };
    let mut stream = match client.backup(authed(token, req)).await {
        Ok(resp) => resp.into_inner(),
        Err(s) => return status_exit(&s),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut out = match options.open(&partial) {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot create `{}`: {e}", partial.display())),
    };
    let (mut written, mut size, mut hash) = (0u64, 0u64, sha2::Sha256::new());
    let mut head = None;
    let mut bar = super::progress::Progress::new("backup", json);
    let outcome = loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                if chunk.size > 0 {
                    size = chunk.size;
                }
                if chunk.head.is_some() {
                    head = chunk.head;
                }
                if let Err(e) = out.write_all(&chunk.data) {
                    break Err(fail(format!("cannot write `{}`: {e}", partial.display())));
                }
                hash.update(&chunk.data);
                written += chunk.data.len() as u64;
                bar.update(
                    written,
                    size,
                    format_args!("{} of {} MiB", written >> 20, size >> 20),
                );
            }
            Ok(None) => break Ok(()),
            Err(s) => break Err(status_exit(&s)),
        }
    };
    bar.finish();
    let outcome = outcome.and_then(|()| {
        if written != size {
            return Err(fail(format!(
                "the server sent {written} of {size} bytes; nothing was written"
            )));
        }
        out.sync_all()
            .and_then(|()| std::fs::rename(&partial, file))
            .map_err(|e| fail(format!("cannot write `{}`: {e}", file.display())))
    });
    if let Err(exit) = outcome {
        let _ = std::fs::remove_file(&partial);
        return exit;
    }
    let digest = hex::encode(hash.finalize());
    let head = head.map(|h| format!("{}:{}:{}:{}", h.seq, h.hash, h.mac, h.store_id));
    if json {
        out!(
            "{}",
            serde_json::json!({
                "file": file.display().to_string(),
                "bytes": written,
                "sha256": digest,
                "trail_head": head,
            })
        );
    } else {
        out!(
            "backup written to {} ({written} bytes, sha256 {digest}); it holds ciphertext and \
             wrapped keys only. Restore with `kluis restore {} --data-dir DIR`.",
            file.display(),
            file.display()
        );
        if let Some(head) = head {
            out!(
                "its audit trail ends at {head}: keep this line apart from the backup; \
                 `kluis restore --expect-head` with it finds entries cut from the backup's end"
            );
        }
    }
    Exit::Success
}

/// Parses `SEQ:HASH:MAC:STORE_ID`, as `audit head` prints it.
pub(super) fn parse_head(s: &str) -> Result<pb::AuditHead, String> {
    let mut parts = s.trim().split(':');
    let seq = parts.next().and_then(|p| p.parse().ok());
    let (hash, mac, store_id) = (parts.next(), parts.next(), parts.next());
    match (seq, hash, mac, store_id) {
        (Some(seq), Some(hash), Some(mac), Some(store_id))
            if parts.next().is_none() && !mac.is_empty() && !store_id.is_empty() =>
        {
            Ok(pb::AuditHead {
                seq,
                hash: hash.to_owned(),
                mac: mac.to_owned(),
                store_id: store_id.to_owned(),
            })
        }
        _ => Err(format!(
            "--expect-head `{s}` is not SEQ:HASH:MAC:STORE_ID as printed by `audit head` or \
             `kluis admin backup` (a head is accepted as an anchor only with its MAC and store id)"
        )),
    }
}

/// Checks the values of `command` that the CLI parses itself (moments, durations, heads), so
/// that a mistyped one is a usage error (exit 2) before any connection is made.
fn check_values(command: &AdminCommand) -> Result<(), String> {
    use crate::cli::{parse_duration, parse_moment};
    match command {
        AdminCommand::Token(TokenCommand::Issue { ttl, .. }) => {
            parse_duration("--ttl", ttl).map(drop)
        }
        AdminCommand::Audit(AuditCommand::Export {
            since: Some(since), ..
        }) => parse_moment("--since", since).map(drop),
        AdminCommand::Audit(AuditCommand::Verify {
            expect_head: Some(head),
        }) => parse_head(head).map(drop),
        AdminCommand::Keys(keys::KeysCommand::ScheduleDestroy {
            wait: Some(wait), ..
        }) => parse_duration("--wait", wait).map(drop),
        AdminCommand::Mandate(lifecycle::MandateCommand::Grant { until, .. }) => {
            crate::cli::parse_moment_ahead("--until", until, 0).map(drop)
        }
        AdminCommand::Disclosures(disclosures::DisclosuresCommand::List {
            since: Some(since),
            ..
        }) => disclosures::parse_since("--since", since, kluis::domain::now_unix()).map(drop),
        AdminCommand::Requests(lifecycle::RequestsCommand::Open {
            received: Some(received),
            ..
        }) => parse_moment("--received", received).map(drop),
        AdminCommand::Requests(lifecycle::RequestsCommand::Extend { by, .. }) => {
            lifecycle::parse_extension("--by", by).map(drop)
        }
        _ => Ok(()),
    }
}

/// Wraps `msg` in a request carrying `authorization: Bearer <token>`.
pub(super) fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

fn read_token(args: &AdminArgs) -> Result<Zeroizing<String>, String> {
    if let Some(path) = &args.token_file {
        check_private(path)?;
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

/// Refuses a token file that others may read, as the server refuses its key files: a bearer
/// token is a credential.
fn check_private(path: &std::path::Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| format!("cannot read token file `{}`: {e}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "token file `{}` may be read by others (mode {:03o}): run `chmod 600 {}` (and \
                 consider the token exposed if others could read it)",
                path.display(),
                mode & 0o777,
                path.display()
            ));
        }
    }
    Ok(())
}

/// Connects to `--server`. A URL without its scheme, and a server that cannot be reached, are
/// said so, with what to do.
async fn connect(args: &AdminArgs) -> Result<Channel, Exit> {
    connect_to(&args.server, args.ca_cert.as_deref()).await
}

/// A channel to the kluis at `server`, trusting `ca_cert` (a CA, or the server's self-signed
/// certificate) for https.
pub(super) async fn connect_to(
    server: &str,
    ca_cert: Option<&std::path::Path>,
) -> Result<Channel, Exit> {
    let server = server.trim();
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        return Err(usage(format!(
            "--server `{server}` needs its scheme: http://{server} (plain, on this host) or \
             https://{server} (TLS)"
        )));
    }
    let endpoint = Channel::from_shared(server.to_owned())
        .map_err(|e| usage(format!("--server `{server}` is not a URL: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(10));
    if !server.starts_with("https://") {
        return endpoint
            .connect()
            .await
            .map_err(|e| fail(connect_error(server, &e)));
    }
    let Some(ca) = ca_cert else {
        // Without --ca-cert: tonic's TLS with the roots kluis is built with (none: an https
        // server is reached with its CA given).
        return endpoint
            .tls_config(ClientTlsConfig::new())
            .map_err(|e| fail(format!("TLS: {e}")))?
            .connect()
            .await
            .map_err(|e| fail(connect_error(server, &e)));
    };
    let pem = std::fs::read(ca).map_err(|e| {
        fail(format!(
            "cannot read the CA certificate `{}` (--ca-cert): {e}",
            ca.display()
        ))
    })?;
    // TLS beneath tonic, which then speaks plain HTTP/2 over it.
    let uri: tonic::transport::Uri = server
        .parse()
        .map_err(|e| usage(format!("--server `{server}` is not a URL: {e}")))?;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let plain = format!(
        "http://{}",
        uri.authority().map(|a| a.as_str()).unwrap_or("")
    );
    let endpoint = Channel::from_shared(plain)
        .map_err(|e| usage(format!("--server `{server}` is not a URL: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(10));
    tls::connect(endpoint, host, &pem)
        .await
        .map_err(|e| match e {
            Ok(e) => fail(connect_error(server, &e)),
            Err(message) => fail(message),
        })
}

/// Why `connect` failed, for a person: what is wrong and what to do.
fn connect_error(server: &str, e: &tonic::transport::Error) -> String {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return format!(
                        "connection refused at {server}: is kluis running there, on that port? \
                         (give the server with --server or KLUIS_SERVER)"
                    );
                }
                std::io::ErrorKind::TimedOut => {
                    return format!(
                        "no answer from {server} within 10 s: check the address and any firewall"
                    );
                }
                _ => {}
            }
        }
        let text = cause.to_string();
        if text.contains("certificate") || text.contains("Certificate") {
            return format!(
                "the TLS certificate of {server} is not trusted ({text}): give the server's CA \
                 certificate, or its self-signed certificate, with --ca-cert"
            );
        }
        source = cause.source();
    }
    format!("cannot reach kluis at {server}: {e}")
}

/// Says why the server refused or failed, in the options the user typed, and picks the exit
/// code.
pub(super) fn status_exit(s: &tonic::Status) -> Exit {
    eprintln!(
        "error: {}",
        kluis::escape::controls(&crate::cli::with_flags(s.message()))
    );
    match s.code() {
        Code::Unauthenticated | Code::PermissionDenied => Exit::Denied,
        _ => Exit::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let h = parse_head("12:abcd:ef:0123").unwrap();
        assert_eq!(
            (h.seq, h.hash.as_str(), h.mac.as_str(), h.store_id.as_str()),
            (12, "abcd", "ef", "0123")
        );
        assert!(parse_head("abcd").is_err());
        // Without its MAC or store id a head is no anchor.
        assert!(parse_head("12:abcd").is_err());
        assert!(parse_head("12:abcd:ef").is_err());
        assert!(parse_head("12:abcd::0123").is_err());
        assert!(parse_head("12:abcd:ef:").is_err());
        assert!(parse_head("1:2:3:4:5").is_err());
    }
}
