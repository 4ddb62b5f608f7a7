//! `kluis admin disclosures list`: the disclosure register, for the privacy officer.

use clap::Subcommand;
use kluis::pb::{self, admin_client::AdminClient};
use tonic::transport::Channel;

use super::{Exit, authed, status_exit};
use crate::cli::{parse_duration, parse_moment, usage};

/// Disclosure register subcommands.
#[derive(Debug, Subcommand)]
pub enum DisclosuresCommand {
    /// List disclosures: who received which fields of whose record, on which legal basis, when;
    /// oldest first.
    List {
        /// Of one subject only.
        #[arg(long)]
        subject: Option<String>,
        /// Only those since this moment: RFC 3339 (2026-01-31T17:00:00Z), a date (2026-01-31),
        /// unix seconds, or a duration back from now (30d, 12h).
        #[arg(long)]
        since: Option<String>,
        /// At most this many (the server gives at most 10000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
}

/// Parses `--since`: a duration back from now, or a moment as `parse_moment` takes it.
pub fn parse_since(flag: &str, s: &str, now: i64) -> Result<i64, String> {
    if let Ok(d) = parse_duration(flag, s) {
        return i64::try_from(d)
            .ok()
            .and_then(|d| now.checked_sub(d))
            .filter(|t| *t >= 0)
            .ok_or_else(|| format!("{flag} `{s}` lies too far back"));
    }
    parse_moment(flag, s).map_err(|e| format!("{e}, or a duration back from now such as 30d"))
}

/// Runs `disclosures`.
pub async fn disclosures(
    client: &mut AdminClient<Channel>,
    token: &str,
    cmd: &DisclosuresCommand,
    json: bool,
) -> Exit {
    let DisclosuresCommand::List {
        subject,
        since,
        limit,
    } = cmd;
    let now = kluis::domain::now_unix();
    let since = match since
        .as_deref()
        .map(|s| parse_since("--since", s, now))
        .transpose()
    {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let req = pb::ListDisclosuresRequest {
        subject_id: subject.clone().unwrap_or_default(),
        since: since.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        limit: *limit,
    };
    let list = match client.list_disclosures(authed(token, req)).await {
        Ok(resp) => resp.into_inner().disclosures,
        Err(s) => return status_exit(&s),
    };
    for d in &list {
        let when = d
            .disclosed_at
            .as_ref()
            .map(crate::cli::time)
            .unwrap_or_default();
        if json {
            out!(
                "{}",
                serde_json::json!({
                    "disclosure_id": d.disclosure_id, "subject_id": d.subject_id,
                    "record_id": d.record_id, "purpose": d.purpose, "fields": d.fields,
                    "categories": d.categories, "recipient": d.recipient,
                    "recipient_kind": d.recipient_kind, "legal_basis": d.legal_basis,
                    "case_ref": d.case_ref, "disclosed_at": when, "recorded_by": d.recorded_by,
                    "automatic": d.automatic,
                })
            );
        } else {
            out!(
                "{} {when} {} {} fields={} to {} `{}` basis `{}`{}{}",
                d.disclosure_id,
                d.subject_id,
                d.record_id,
                d.fields.join(","),
                d.recipient_kind,
                d.recipient,
                d.legal_basis,
                if d.case_ref.is_empty() {
                    String::new()
                } else {
                    format!(" case {}", d.case_ref)
                },
                if d.automatic {
                    " (read by the recipient)".to_owned()
                } else {
                    format!(" recorded by {}", d.recorded_by)
                }
            );
        }
    }
    Exit::Success
}
