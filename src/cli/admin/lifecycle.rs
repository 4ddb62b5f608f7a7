//! `kluis admin retention|hold|erase|requests|restrict`: the data lifecycle and subject rights.

use clap::Subcommand;
use kluis::pb::{self, admin_client::AdminClient};
use tonic::transport::Channel;

use super::{Exit, authed, status_exit};
use crate::cli::{parse_moment, usage};

/// Retention subcommands.
#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Destroy records past their retention that no legal hold covers (the server also does
    /// this by itself); `--dry-run` lists what would go.
    Sweep {
        /// List only; destroy nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Legal hold subcommands.
#[derive(Debug, Subcommand)]
pub enum HoldCommand {
    /// Suspend destruction of a subject's data (or one record).
    Place {
        /// The subject.
        #[arg(long)]
        subject: String,
        /// One record only.
        #[arg(long)]
        record: Option<String>,
        /// Why, e.g. the pending claim.
        #[arg(long)]
        reason: String,
        /// The case the hold belongs to.
        #[arg(long)]
        case_ref: String,
    },
    /// Release a hold.
    Release {
        /// The hold id (`hold_…`).
        hold_id: String,
        /// Why (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// List holds.
    List {
        /// Of one subject only.
        #[arg(long)]
        subject: Option<String>,
        /// Also released holds.
        #[arg(long)]
        all: bool,
    },
}

/// Subject request subcommands.
#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// Register a subject request; its deadline is four weeks after receipt.
    Open {
        /// The subject.
        #[arg(long)]
        subject: String,
        /// `access`, `rectification`, `erasure` or `objection`.
        #[arg(long)]
        kind: String,
        /// When it was received: RFC 3339 (2026-01-31T17:00:00Z), a date (2026-01-31) or unix
        /// seconds, within the past year; now when omitted. It is due at the end of the day four
        /// weeks later, in Amsterdam.
        #[arg(long)]
        received: Option<String>,
        /// A note without personal data, e.g. the letter's reference.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Mark a request answered.
    Complete {
        /// The request id (`req_…`).
        request_id: String,
        /// How it was answered (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// List requests; `--overdue` for the open ones past their deadline in force, extended or
    /// not (exit code 4 if any).
    List {
        /// Only overdue requests.
        #[arg(long)]
        overdue: bool,
    },
    /// Extend an open request's deadline (GDPR art. 12(3)): at most two months beyond the
    /// original due date in all, however many extensions.
    Extend {
        /// The request id (`req_…`).
        request_id: String,
        /// By how much, from the deadline in force: calendar months as `1mo` or `2mo`, or
        /// days as `14d` or weeks as `2w` (Europe/Amsterdam). `m` alone is refused: it means
        /// minutes in other options.
        #[arg(long)]
        by: String,
        /// Why the request needs longer (required; no personal data; audited and listed).
        #[arg(long)]
        reason: String,
    },
}

/// Parses the `--by` of an extension: `Nmo` (calendar months), `Nw` or `Nd`; into (months,
/// days).
pub fn parse_extension(flag: &str, s: &str) -> Result<(u32, u32), String> {
    let t = s.trim();
    let number = |n: &str| -> Option<u32> {
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .then(|| n.parse::<u32>().ok())
            .flatten()
    };
    if let Some(n) = t.strip_suffix("mo").and_then(number) {
        return Ok((n, 0));
    }
    if let Some(n) = t.strip_suffix('w').and_then(number) {
        return n
            .checked_mul(7)
            .map(|d| (0, d))
            .ok_or_else(|| format!("{flag} `{s}` is too long"));
    }
    if let Some(n) = t.strip_suffix('d').and_then(number) {
        return Ok((0, n));
    }
    if t.strip_suffix('m').and_then(number).is_some() {
        return Err(format!(
            "{flag} `{s}` is ambiguous: write calendar months as `{}mo`, or days as `60d`",
            t.trim_end_matches('m')
        ));
    }
    Err(format!(
        "{flag} `{s}` is not an extension: give a number and a unit, such as 1mo, 2mo, 2w or 30d"
    ))
}

/// Restriction of processing (GDPR art. 18), as `kluis admin restrict`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("mode").args(["lift", "list"])))]
pub struct RestrictArgs {
    /// The subject (required except with `--list`).
    #[arg(long, required_unless_present = "list")]
    pub subject: Option<String>,
    /// Why the processing is restricted, e.g. the accuracy is contested (required to restrict;
    /// no personal data; audited).
    #[arg(long, required_unless_present_any = ["lift", "list"], conflicts_with_all = ["lift", "list"])]
    pub reason: Option<String>,
    /// Lift the restriction in force instead.
    #[arg(long)]
    pub lift: bool,
    /// List restrictions (of `--subject`, or all), lifted ones included.
    #[arg(long)]
    pub list: bool,
    /// Why it is lifted (audited).
    #[arg(long, default_value = "", requires = "lift")]
    pub justification: String,
}

/// Runs `restrict`.
pub async fn restrict(
    client: &mut AdminClient<Channel>,
    token: &str,
    args: &RestrictArgs,
    json: bool,
) -> Exit {
    let print = |r: &pb::Restriction| {
        let t = |x: &Option<prost_types::Timestamp>| x.as_ref().map(crate::cli::time);
        let state = if r.lifted_at.is_some() {
            "lifted"
        } else {
            "in force"
        };
        if json {
            out!(
                "{}",
                serde_json::json!({"restriction_id": r.restriction_id, "subject_id": r.subject_id,
                    "reason": r.reason, "placed_by": r.placed_by, "placed_at": t(&r.placed_at),
                    "lifted_at": t(&r.lifted_at), "lifted_by": (!r.lifted_by.is_empty()).then_some(&r.lifted_by),
                    "state": state})
            );
        } else {
            out!(
                "{} {} {state} since {} by {}{}: {}",
                r.restriction_id,
                r.subject_id,
                t(&r.placed_at).unwrap_or_default(),
                r.placed_by,
                t(&r.lifted_at)
                    .map(|l| format!(", lifted {l} by {}", r.lifted_by))
                    .unwrap_or_default(),
                r.reason
            );
        }
    };
    let subject = args.subject.clone().unwrap_or_default();
    let answer = if args.list {
        let req = pb::ListRestrictionsRequest {
            subject_id: subject,
        };
        match client.list_restrictions(authed(token, req)).await {
            Ok(resp) => {
                resp.into_inner().restrictions.iter().for_each(print);
                return Exit::Success;
            }
            Err(s) => Err(s),
        }
    } else if args.lift {
        let req = pb::LiftRestrictionRequest {
            subject_id: subject,
            justification: args.justification.clone(),
        };
        client.lift_restriction(authed(token, req)).await
    } else {
        let req = pb::RestrictProcessingRequest {
            subject_id: subject,
            reason: args.reason.clone().unwrap_or_default(),
        };
        client.restrict_processing(authed(token, req)).await
    };
    match answer {
        Ok(resp) => {
            print(&resp.into_inner());
            Exit::Success
        }
        Err(s) => status_exit(&s),
    }
}

/// Runs `retention`.
pub async fn retention(
    client: &mut AdminClient<Channel>,
    token: &str,
    cmd: &RetentionCommand,
    json: bool,
) -> Exit {
    let RetentionCommand::Sweep { dry_run } = cmd;
    // The server answers at the end of the sweep: until then, how long it has been running.
    let mut bar = crate::cli::progress::Progress::new("retention sweep", json);
    let started = std::time::Instant::now();
    let sweep = client.sweep_retention(authed(
        token,
        pb::SweepRetentionRequest { dry_run: *dry_run },
    ));
    tokio::pin!(sweep);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let answer = loop {
        tokio::select! {
            answer = &mut sweep => break answer,
            _ = tick.tick() => bar.waiting(started.elapsed()),
        }
    };
    bar.finish();
    match answer {
        Ok(resp) => {
            let records = resp.into_inner().records;
            for r in &records {
                let expired = r
                    .expired_at
                    .as_ref()
                    .map(crate::cli::time)
                    .unwrap_or_default();
                if json {
                    out!(
                        "{}",
                        serde_json::json!({"record_id": r.record_id, "subject_id": r.subject_id, "purpose": r.purpose, "expired_at": expired})
                    );
                } else {
                    out!(
                        "{} {} {} expired at {expired}",
                        r.record_id,
                        r.subject_id,
                        r.purpose
                    );
                }
            }
            if !json {
                let verb = if *dry_run {
                    "would be destroyed"
                } else {
                    "destroyed"
                };
                out!("{} records {verb}", records.len());
            }
            Exit::Success
        }
        Err(s) => status_exit(&s),
    }
}

/// Runs `hold`.
pub async fn hold(
    client: &mut AdminClient<Channel>,
    token: &str,
    cmd: &HoldCommand,
    json: bool,
) -> Exit {
    match cmd {
        HoldCommand::Place {
            subject,
            record,
            reason,
            case_ref,
        } => {
            let req = pb::PlaceHoldRequest {
                subject_id: subject.clone(),
                record_id: record.clone().unwrap_or_default(),
                reason: reason.clone(),
                case_ref: case_ref.clone(),
            };
            match client.place_hold(authed(token, req)).await {
                Ok(resp) => {
                    let h = resp.into_inner();
                    if json {
                        out!("{}", serde_json::json!({"hold_id": h.hold_id}));
                    } else {
                        out!("placed {} on {}", h.hold_id, h.subject_id);
                    }
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        HoldCommand::Release {
            hold_id,
            justification,
        } => {
            let req = pb::ReleaseHoldRequest {
                hold_id: hold_id.clone(),
                justification: justification.clone(),
            };
            match client.release_hold(authed(token, req)).await {
                Ok(_) => {
                    out!("released {hold_id}");
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        HoldCommand::List { subject, all } => {
            let req = pb::ListHoldsRequest {
                subject_id: subject.clone().unwrap_or_default(),
                include_released: *all,
            };
            match client.list_holds(authed(token, req)).await {
                Ok(resp) => {
                    for h in resp.into_inner().holds {
                        let released = h.released_at.as_ref().map(crate::cli::time);
                        if json {
                            out!(
                                "{}",
                                serde_json::json!({"hold_id": h.hold_id, "subject_id": h.subject_id, "record_id": h.record_id,
                                    "reason": h.reason, "case_ref": h.case_ref, "placed_by": h.placed_by,
                                    "placed_at": h.placed_at.as_ref().map(crate::cli::time), "released_at": released})
                            );
                        } else {
                            let scope = if h.record_id.is_empty() {
                                "all records"
                            } else {
                                h.record_id.as_str()
                            };
                            let state = if released.is_some() {
                                "released"
                            } else {
                                "active"
                            };
                            out!(
                                "{} {} ({scope}) {state} case={} reason: {}",
                                h.hold_id,
                                h.subject_id,
                                h.case_ref,
                                h.reason
                            );
                        }
                    }
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
    }
}

/// Runs `erase`.
pub async fn erase(
    client: &mut AdminClient<Channel>,
    token: &str,
    subject: &str,
    justification: &str,
    json: bool,
) -> Exit {
    let req = pb::EraseSubjectRequest {
        subject_id: subject.into(),
        justification: justification.into(),
    };
    match client.erase_subject(authed(token, req)).await {
        Ok(resp) => {
            let r = resp.into_inner();
            if json {
                let kept: Vec<_> = r
                    .kept
                    .iter()
                    .map(|k| serde_json::json!({"record_id": k.record_id, "purpose": k.purpose, "reason": k.reason}))
                    .collect();
                out!(
                    "{}",
                    serde_json::json!({"destroyed": r.destroyed_record_ids, "shredded_purposes": r.shredded_purposes, "kept": kept})
                );
            } else {
                out!(
                    "{subject}: {} records destroyed",
                    r.destroyed_record_ids.len()
                );
                for k in &r.kept {
                    out!("kept {} ({}): {}", k.record_id, k.purpose, k.reason);
                }
            }
            Exit::Success
        }
        Err(s) => status_exit(&s),
    }
}

/// Runs `requests`.
pub async fn requests(
    client: &mut AdminClient<Channel>,
    token: &str,
    cmd: &RequestsCommand,
    json: bool,
) -> Exit {
    match cmd {
        RequestsCommand::Open {
            subject,
            kind,
            received,
            note,
        } => {
            let received_at = match received
                .as_deref()
                .map(|r| parse_moment("--received", r))
                .transpose()
            {
                Ok(r) => r.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
                Err(e) => return usage(e),
            };
            let req = pb::OpenSubjectRequestRequest {
                subject_id: subject.clone(),
                kind: kind.clone(),
                received_at,
                note: note.clone(),
            };
            match client.open_subject_request(authed(token, req)).await {
                Ok(resp) => {
                    let r = resp.into_inner();
                    let due = r.due_at.as_ref().map(crate::cli::time).unwrap_or_default();
                    if json {
                        out!(
                            "{}",
                            serde_json::json!({"request_id": r.request_id, "due_at": due})
                        );
                    } else {
                        out!("{} registered, due at {due}", r.request_id);
                    }
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        RequestsCommand::Complete {
            request_id,
            justification,
        } => {
            let req = pb::CompleteSubjectRequestRequest {
                request_id: request_id.clone(),
                justification: justification.clone(),
            };
            match client.complete_subject_request(authed(token, req)).await {
                Ok(_) => {
                    out!("{request_id} answered");
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        RequestsCommand::Extend {
            request_id,
            by,
            reason,
        } => {
            let (months, days) = match parse_extension("--by", by) {
                Ok(x) => x,
                Err(e) => return usage(e),
            };
            let req = pb::ExtendSubjectRequestRequest {
                request_id: request_id.clone(),
                months,
                days,
                reason: reason.clone(),
            };
            match client.extend_subject_request(authed(token, req)).await {
                Ok(resp) => {
                    let r = resp.into_inner();
                    let t = |x: &Option<prost_types::Timestamp>| x.as_ref().map(crate::cli::time);
                    if json {
                        out!(
                            "{}",
                            serde_json::json!({"request_id": r.request_id, "due_at": t(&r.due_at),
                                "original_due_at": t(&r.original_due_at), "extension_reason": r.extension_reason})
                        );
                    } else {
                        out!(
                            "{} extended: due {} (originally {})",
                            r.request_id,
                            t(&r.due_at).unwrap_or_default(),
                            t(&r.original_due_at).unwrap_or_default()
                        );
                    }
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        RequestsCommand::List { overdue } => {
            match client
                .list_subject_requests(authed(
                    token,
                    pb::ListSubjectRequestsRequest {
                        overdue_only: *overdue,
                    },
                ))
                .await
            {
                Ok(resp) => {
                    let requests = resp.into_inner().requests;
                    for r in &requests {
                        let t =
                            |x: &Option<prost_types::Timestamp>| x.as_ref().map(crate::cli::time);
                        if json {
                            out!(
                                "{}",
                                serde_json::json!({"request_id": r.request_id, "subject_id": r.subject_id, "kind": r.kind,
                                    "received_at": t(&r.received_at), "due_at": t(&r.due_at),
                                    "original_due_at": t(&r.original_due_at), "extended": r.extended,
                                    "extension_reason": r.extended.then_some(&r.extension_reason),
                                    "completed_at": t(&r.completed_at), "overdue": r.overdue, "note": r.note})
                            );
                        } else {
                            let state = if r.overdue {
                                "OVERDUE"
                            } else if r.completed_at.is_some() {
                                "answered"
                            } else {
                                "open"
                            };
                            let extension = if r.extended {
                                format!(
                                    " (extended from {}: {})",
                                    t(&r.original_due_at).unwrap_or_default(),
                                    r.extension_reason
                                )
                            } else {
                                String::new()
                            };
                            out!(
                                "{} {} {} received {} due {}{extension} {state}",
                                r.request_id,
                                r.subject_id,
                                r.kind,
                                t(&r.received_at).unwrap_or_default(),
                                t(&r.due_at).unwrap_or_default()
                            );
                        }
                    }
                    if *overdue && !requests.is_empty() {
                        Exit::CheckFailed
                    } else {
                        Exit::Success
                    }
                }
                Err(s) => status_exit(&s),
            }
        }
    }
}

/// Mandate subcommands.
#[derive(Debug, Subcommand)]
pub enum MandateCommand {
    /// Record a mandate ("volmacht"): the representative acts for the subject within a scope.
    Grant {
        /// The subject who gives it.
        #[arg(long)]
        subject: String,
        /// The representative's principal id.
        #[arg(long)]
        representative: String,
        /// A purpose it covers (repeat for several).
        #[arg(long = "purpose", required = true)]
        purposes: Vec<String>,
        /// A category it covers (repeat for several).
        #[arg(long = "category", required = true)]
        categories: Vec<String>,
        /// Valid until: a duration from now (`90d`, `2w`), RFC 3339 (2026-01-31T17:00:00Z), a
        /// date (2026-01-31) or unix seconds; in the future and at most 5 years ahead.
        #[arg(long)]
        until: String,
        /// Why, e.g. the signed mandate's reference (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// Revoke a mandate at once.
    Revoke {
        /// The mandate id (`mdt_…`).
        mandate_id: String,
        /// Why (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// List mandates.
    List {
        /// Of one subject only.
        #[arg(long)]
        subject: Option<String>,
    },
}

/// Runs `mandate`.
pub async fn mandate(
    client: &mut AdminClient<Channel>,
    token: &str,
    cmd: &MandateCommand,
    json: bool,
) -> Exit {
    let now = kluis::domain::now_unix();
    let print = |m: &pb::Mandate| {
        let t = |x: &Option<prost_types::Timestamp>| x.as_ref().map(crate::cli::time);
        // A mandate past its end no longer lets the representative act: say so.
        let state = if m.revoked_at.is_some() {
            "revoked"
        } else if m.valid_until.as_ref().is_some_and(|u| u.seconds <= now) {
            "expired"
        } else {
            "active"
        };
        if json {
            out!(
                "{}",
                serde_json::json!({"mandate_id": m.mandate_id, "subject_id": m.subject_id,
                    "representative_id": m.representative_id, "purposes": m.purposes, "categories": m.categories,
                    "valid_from": t(&m.valid_from), "valid_until": t(&m.valid_until), "revoked_at": t(&m.revoked_at),
                    "state": state})
            );
        } else {
            out!(
                "{} {} -> {} purposes={} categories={} until {} {state}",
                m.mandate_id,
                m.subject_id,
                m.representative_id,
                m.purposes.join(","),
                m.categories.join(","),
                t(&m.valid_until).unwrap_or_default()
            );
        }
    };
    match cmd {
        MandateCommand::Grant {
            subject,
            representative,
            purposes,
            categories,
            until,
            justification,
        } => {
            let now = kluis::domain::now_unix();
            let valid_until = match crate::cli::parse_moment_ahead("--until", until, now) {
                Ok(s) => Some(prost_types::Timestamp {
                    seconds: s,
                    nanos: 0,
                }),
                Err(e) => return usage(e),
            };
            let req = pb::GrantMandateRequest {
                subject_id: subject.clone(),
                representative_id: representative.clone(),
                purposes: purposes.clone(),
                categories: categories.clone(),
                valid_until,
                justification: justification.clone(),
            };
            match client.grant_mandate(authed(token, req)).await {
                Ok(resp) => {
                    print(&resp.into_inner());
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        MandateCommand::Revoke {
            mandate_id,
            justification,
        } => {
            let req = pb::RevokeMandateRequest {
                mandate_id: mandate_id.clone(),
                justification: justification.clone(),
            };
            match client.revoke_mandate(authed(token, req)).await {
                Ok(_) => {
                    out!("revoked {mandate_id}");
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        MandateCommand::List { subject } => {
            let req = pb::ListMandatesRequest {
                subject_id: subject.clone().unwrap_or_default(),
            };
            match client.list_mandates(authed(token, req)).await {
                Ok(resp) => {
                    resp.into_inner().mandates.iter().for_each(print);
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
    }
}

/// Runs `consent`.
pub async fn consent(
    client: &mut AdminClient<Channel>,
    token: &str,
    subject: &str,
    purpose: &str,
    state: &str,
    justification: &str,
) -> Exit {
    let req = pb::RecordConsentRequest {
        subject_id: subject.into(),
        purpose: purpose.into(),
        state: state.into(),
        justification: justification.into(),
    };
    match client.record_consent(authed(token, req)).await {
        Ok(_) => {
            out!("{subject}: {purpose} {state}");
            Exit::Success
        }
        Err(s) => status_exit(&s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_take_calendar_months_weeks_and_days_and_refuse_a_bare_m() {
        let p = |s| parse_extension("--by", s);
        assert_eq!(p("2mo"), Ok((2, 0)));
        assert_eq!(p("1mo"), Ok((1, 0)));
        assert_eq!(p("2w"), Ok((0, 14)));
        assert_eq!(p("60d"), Ok((0, 60)));
        let e = p("2m").unwrap_err();
        assert!(e.contains("ambiguous") && e.contains("`2mo`"), "{e}");
        for bad in [
            "2",
            "mo",
            "2h",
            "1.5mo",
            "-1mo",
            "2 months",
            "",
            "99999999999w",
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.starts_with("--by `"), "{bad}: {e}");
        }
    }
}
