//! `kluis admin keys …` and `kluis admin root rotate`: key rotation against a running server.

use std::path::PathBuf;

use clap::Subcommand;
use kluis::{
    keys::RootSecret,
    pb::{self, admin_client::AdminClient},
};
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::{Exit, authed, fail, status_exit};

/// Key subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Per purpose: versions, state, algorithm, how many subject keys each version wraps.
    List {
        /// One purpose only.
        #[arg(long)]
        purpose: Option<String>,
    },
    /// Make a new purpose key version active at once; older subject keys are rewrapped in the
    /// background (watch with `keys rewrap`).
    Rotate {
        /// The purpose, e.g. `nuisance`.
        #[arg(long)]
        purpose: String,
        /// `aes-256-gcm` or `xchacha20-poly1305`; the current one when omitted.
        #[arg(long)]
        algorithm: Option<String>,
        /// Why (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// Rewrap subject keys under older versions to the active one, with progress. Resumable.
    Rewrap {
        /// The purpose.
        #[arg(long)]
        purpose: String,
        /// Why (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// Re-encrypt every field of a purpose under fresh subject keys (suspected compromise, or
    /// moving to another algorithm), with progress. Resumable.
    Rekey {
        /// The purpose.
        #[arg(long)]
        purpose: String,
        /// Why (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// Make a new blind-index key version active: new values are tagged under it and the one
    /// before until `keys reindex` has tagged every searchable value under it.
    RotateIndex {
        /// Why (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// Tag every searchable value that has no tag under the active index key version (after an
    /// index key rotation, a new searchable field or another `tag_bits`), with progress; drops
    /// the retiring version once nothing is left. Resumable.
    Reindex {
        /// One purpose only; all purposes with searchable fields when omitted.
        #[arg(long)]
        purpose: Option<String>,
        /// Why (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// Schedule the destruction of a version that wraps nothing any more.
    ScheduleDestroy {
        /// The purpose.
        #[arg(long)]
        purpose: String,
        /// The version.
        #[arg(long)]
        version: u32,
        /// Waiting period: `7d`, `12h`, `30m`, `90s` or `0`; the server's default (7 days) when
        /// omitted.
        #[arg(long)]
        wait: Option<String>,
        /// Why (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// Cancel a scheduled destruction.
    CancelDestroy {
        /// The purpose.
        #[arg(long)]
        purpose: String,
        /// The version.
        #[arg(long)]
        version: u32,
        /// Why (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// Destroy the scheduled versions that are due now (the server also does this by itself).
    DestroyDue,
    /// Refuse decryption with versions below this one (after they wrap nothing any more).
    SetMinVersion {
        /// The purpose.
        #[arg(long)]
        purpose: String,
        /// The minimum version.
        #[arg(long)]
        version: u32,
        /// Why (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// The attestation to file after a rotation: versions, destructions, and that no record
    /// depends on destroyed material (exit code 4 when something does); and each searchable
    /// field's index: values tagged, candidates per search, and the width to plan for.
    Report {
        /// The width planner's aim: at most this many other values sharing a tag (1 to 1000).
        #[arg(long, default_value_t = kluis::search::DEFAULT_PLAN_CANDIDATES)]
        search_candidates: u32,
    },
}

/// Root key subcommands.
#[derive(Debug, Subcommand)]
pub enum RootCommand {
    /// Change the root key, in two steps with a second person. Without --request: ask for the
    /// change (prints its id; a privacy officer approves it with `kluis admin root approve ID`).
    /// With --request ID, once approved and within 24 hours, with the same new key or passphrase:
    /// the purpose keys are rewrapped and the old passphrase or key file stops working. Point the
    /// server's configuration at the new one before its next start.
    Rotate {
        /// New root key file: used if it exists, created (mode 0600) if not.
        #[arg(long, conflicts_with = "new_passphrase_file")]
        new_key_file: Option<PathBuf>,
        /// File holding the new passphrase (else a prompt).
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
        /// The id of the approved root change to carry out (`root_…`).
        #[arg(long)]
        request: Option<String>,
        /// Why (audited).
        #[arg(long, default_value = "")]
        justification: String,
    },
    /// Change what seals the root key (shares, the server's HSM, a passphrase, a key file): a
    /// new root key under the new seal, in the same two steps as `rotate` (ask; a privacy
    /// officer approves; carry it out with --request). The old seal stops opening the store.
    Reseal(super::reseal::ResealArgs),
    /// Approve a pending root change (privacy officer; not the person who asked for it).
    Approve {
        /// The id of the root change (`root_…`).
        request_id: String,
        /// Why (required; audited).
        #[arg(long)]
        justification: String,
    },
}

/// Runs a keys subcommand.
pub async fn keys(
    client: &mut AdminClient<Channel>,
    token: &str,
    cmd: &KeysCommand,
    json: bool,
) -> Exit {
    match cmd {
        KeysCommand::List { purpose } => {
            let req = pb::ListKeysRequest {
                purpose: purpose.clone().unwrap_or_default(),
            };
            match client.list_keys(authed(token, req)).await {
                Ok(resp) => {
                    print_keys(&resp.into_inner().purposes, json);
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        KeysCommand::Rotate {
            purpose,
            algorithm,
            justification,
        } => {
            let req = pb::RotateKeyRequest {
                purpose: purpose.clone(),
                algorithm: algorithm.clone().unwrap_or_default(),
                justification: justification.clone(),
            };
            match client.rotate_key(authed(token, req)).await {
                Ok(resp) => {
                    let r = resp.into_inner();
                    if json {
                        out!(
                            "{}",
                            serde_json::json!({"purpose": purpose, "version": r.version, "algorithm": r.algorithm})
                        );
                    } else {
                        out!(
                            "{purpose}: version {} ({}) is active; older subject keys are being rewrapped",
                            r.version,
                            r.algorithm
                        );
                        out!("watch it with: kluis admin keys rewrap --purpose {purpose}");
                    }
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        KeysCommand::Rewrap {
            purpose,
            justification,
        }
        | KeysCommand::Rekey {
            purpose,
            justification,
        } => {
            let req = pb::KeyJobRequest {
                purpose: purpose.clone(),
                justification: justification.clone(),
            };
            let rekey = matches!(cmd, KeysCommand::Rekey { .. });
            let stream = if rekey {
                client.rekey(authed(token, req)).await
            } else {
                client.rewrap(authed(token, req)).await
            };
            let mut stream = match stream {
                Ok(s) => s.into_inner(),
                Err(s) => return status_exit(&s),
            };
            let what = if rekey {
                "subjects rekeyed"
            } else {
                "subject keys rewrapped"
            };
            let job = if rekey { "rekey" } else { "rewrap" };
            let mut bar = crate::cli::progress::Progress::new(format!("{job} of {purpose}"), json);
            loop {
                match stream.message().await {
                    Ok(Some(p)) => {
                        if json {
                            out!(
                                "{}",
                                serde_json::json!({"purpose": p.purpose, "done": p.done, "total": p.total,
                                    "finished": p.finished, "keys_on_active": (!rekey).then_some(p.keys_on_active),
                                    "keys_total": (!rekey).then_some(p.keys_total)})
                            );
                        } else if rekey {
                            bar.update(
                                p.done,
                                p.total,
                                format_args!("{}/{} {what}", p.done, p.total),
                            );
                        } else {
                            // The purpose's standing, whoever does the work: a rotation starts a
                            // rewrap of its own, which may have done it all already.
                            bar.update(
                                p.keys_on_active,
                                p.keys_total,
                                format_args!(
                                    "{}/{} subject keys under the active version",
                                    p.keys_on_active, p.keys_total
                                ),
                            );
                        }
                        if p.finished {
                            bar.finish();
                            if rekey && !json {
                                out!("{purpose}: done, {} {what}", p.done);
                            } else if !json {
                                out!(
                                    "{purpose}: done, {} of {} subject keys under the active version ({} rewrapped by this run)",
                                    p.keys_on_active,
                                    p.keys_total,
                                    p.done
                                );
                            }
                            return Exit::Success;
                        }
                    }
                    Ok(None) => {
                        return fail(
                            "the server ended the job without a result; run the command again to resume",
                        );
                    }
                    Err(s) => return status_exit(&s),
                }
            }
        }
        KeysCommand::RotateIndex { justification } => {
            let req = pb::RotateIndexKeyRequest {
                justification: justification.clone(),
            };
            match client.rotate_index_key(authed(token, req)).await {
                Ok(resp) => {
                    let version = resp.into_inner().version;
                    if json {
                        out!("{}", serde_json::json!({"index_key_version": version}));
                    } else {
                        out!(
                            "index key version {version} is active; the one before still tags and is still \
                             searched until every value is tagged again"
                        );
                        out!("tag them with: kluis admin keys reindex");
                    }
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        KeysCommand::Reindex {
            purpose,
            justification,
        } => {
            let req = pb::KeyJobRequest {
                purpose: purpose.clone().unwrap_or_default(),
                justification: justification.clone(),
            };
            let mut stream = match client.reindex(authed(token, req)).await {
                Ok(s) => s.into_inner(),
                Err(s) => return status_exit(&s),
            };
            let scope = purpose.as_deref().unwrap_or("all purposes");
            let mut bar = crate::cli::progress::Progress::new(format!("reindex of {scope}"), json);
            loop {
                match stream.message().await {
                    Ok(Some(p)) => {
                        if json {
                            out!(
                                "{}",
                                serde_json::json!({"purpose": p.purpose, "done": p.done,
                                    "total": p.total, "finished": p.finished})
                            );
                        } else {
                            bar.update(
                                p.done,
                                p.total,
                                format_args!("{}/{} values looked at", p.done, p.total),
                            );
                        }
                        if p.finished {
                            bar.finish();
                            if !json {
                                out!("{scope}: done, {} value(s) tagged", p.done);
                            }
                            return Exit::Success;
                        }
                    }
                    Ok(None) => {
                        return fail(
                            "the server ended the job without a result; run the command again to resume",
                        );
                    }
                    Err(s) => return status_exit(&s),
                }
            }
        }
        KeysCommand::ScheduleDestroy {
            purpose,
            version,
            wait,
            justification,
        } => {
            let wait_seconds = match wait
                .as_deref()
                .map(|w| crate::cli::parse_duration("--wait", w))
                .transpose()
            {
                Ok(w) => w,
                Err(e) => return crate::cli::usage(e),
            };
            let req = pb::ScheduleKeyDestructionRequest {
                purpose: purpose.clone(),
                version: *version,
                wait_seconds,
                justification: justification.clone(),
            };
            match client.schedule_key_destruction(authed(token, req)).await {
                Ok(resp) => {
                    let due = resp
                        .into_inner()
                        .destroy_after
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), crate::cli::time);
                    if json {
                        out!(
                            "{}",
                            serde_json::json!({"purpose": purpose, "version": version, "destroy_after": due})
                        );
                    } else {
                        out!(
                            "{purpose} v{version} will be destroyed at {due} (UTC); cancel with `keys cancel-destroy`"
                        );
                    }
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        KeysCommand::CancelDestroy {
            purpose,
            version,
            justification,
        } => {
            let req = pb::KeyVersionRequest {
                purpose: purpose.clone(),
                version: *version,
                justification: justification.clone(),
            };
            match client.cancel_key_destruction(authed(token, req)).await {
                Ok(_) => {
                    out!("{purpose} v{version} is no longer scheduled for destruction");
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        KeysCommand::DestroyDue => match client
            .destroy_due_keys(authed(token, pb::DestroyDueKeysRequest {}))
            .await
        {
            Ok(resp) => {
                let destroyed = resp.into_inner().destroyed;
                if json {
                    out!("{}", serde_json::json!({"destroyed": destroyed}));
                } else if destroyed.is_empty() {
                    out!("nothing was due");
                } else {
                    for d in destroyed {
                        out!("destroyed {d}");
                    }
                }
                Exit::Success
            }
            Err(s) => status_exit(&s),
        },
        KeysCommand::SetMinVersion {
            purpose,
            version,
            justification,
        } => {
            let req = pb::KeyVersionRequest {
                purpose: purpose.clone(),
                version: *version,
                justification: justification.clone(),
            };
            match client.set_min_decrypt_version(authed(token, req)).await {
                Ok(_) => {
                    out!("{purpose}: versions below {version} can no longer decrypt");
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            }
        }
        KeysCommand::Report { search_candidates } => match client
            .key_report(authed(
                token,
                pb::KeyReportRequest {
                    search_candidates: *search_candidates,
                },
            ))
            .await
        {
            Ok(resp) => {
                let r = resp.into_inner();
                let reasons = unsound_reasons(&r.purposes);
                let verdict = if r.sound { "sound" } else { "unsound" };
                let changed = r
                    .seal_changed_at
                    .as_ref()
                    .map_or_else(|| "unknown".to_owned(), crate::cli::time);
                if json {
                    print_keys(&r.purposes, true);
                    let search: Vec<serde_json::Value> = r
                        .search
                        .iter()
                        .map(|s| {
                            serde_json::json!({
                                "purpose": s.purpose,
                                "field": s.field,
                                "tag_bits": s.tag_bits,
                                "values": s.values,
                                "values_at_other_widths": s.values_at_other_widths,
                                "candidates_per_search": s.candidates_per_search,
                                "planned_tag_bits": s.planned_tag_bits,
                            })
                        })
                        .collect();
                    out!(
                        "{}",
                        serde_json::json!({
                            "verdict": verdict,
                            "sound": r.sound,
                            "reasons": reasons,
                            "seal": r.seal,
                            "seal_changed_at": changed,
                            "search": search,
                            "search_candidates": search_candidates,
                        })
                    );
                } else {
                    print_keys(&r.purposes, false);
                    print_search(&r.search, *search_candidates);
                    out!(
                        "
root key sealed by {} (since {changed})",
                        r.seal
                    );
                    if r.sound {
                        out!("\nno record depends on destroyed key material");
                    } else {
                        out!("\nWARNING: records depend on destroyed key material:");
                        for reason in &reasons {
                            out!("  - {reason}");
                        }
                    }
                }
                if r.sound {
                    Exit::Success
                } else {
                    Exit::CheckFailed
                }
            }
            Err(s) => status_exit(&s),
        },
    }
}

/// The search part of the key report, for people: each searchable field's index and the
/// width the planner gives it.
fn print_search(search: &[pb::SearchIndex], candidates: u32) {
    if search.is_empty() {
        return;
    }
    out!(
        "\nsearch indexes (values tagged under the active index key; planned: at most \
         {candidates} other values per tag):"
    );
    for s in search {
        let mut line = format!(
            "  {}.{}: {} values at {} bits, about {:.1} other values per tag (compared by \
             each search); planned width {} bits",
            s.purpose, s.field, s.values, s.tag_bits, s.candidates_per_search, s.planned_tag_bits
        );
        if s.planned_tag_bits != s.tag_bits {
            line.push_str(&format!(
                " (set `[search.{}] tag_bits = {}`, then `kluis admin keys reindex`)",
                s.purpose, s.planned_tag_bits
            ));
        }
        if s.values_at_other_widths > 0 {
            line.push_str(&format!(
                "; {} values still tagged at another width (run `kluis admin keys reindex`)",
                s.values_at_other_widths
            ));
        }
        out!("{line}");
    }
}

/// Why a key report is not sound, purpose by purpose: fields whose subject key is gone, and
/// subject keys wrapped under a destroyed version.
fn unsound_reasons(purposes: &[pb::PurposeKeys]) -> Vec<String> {
    let mut reasons = Vec::new();
    for p in purposes {
        if p.active_version == 0 {
            reasons.push(format!("{}: no active key version", p.purpose));
        }
        if p.orphan_fields > 0 {
            reasons.push(format!(
                "{}: {} fields have no subject key left to open them",
                p.purpose, p.orphan_fields
            ));
        }
        if p.keys_on_destroyed_versions > 0 {
            reasons.push(format!(
                "{}: {} subject keys are wrapped under a destroyed version",
                p.purpose, p.keys_on_destroyed_versions
            ));
        }
    }
    reasons
}

/// Runs a root subcommand.
pub async fn root(client: &mut AdminClient<Channel>, token: &str, cmd: &RootCommand) -> Exit {
    let (new_key_file, new_passphrase_file, request, justification) = match cmd {
        RootCommand::Rotate {
            new_key_file,
            new_passphrase_file,
            request,
            justification,
        } => (new_key_file, new_passphrase_file, request, justification),
        RootCommand::Reseal(args) => return super::reseal::reseal(client, token, args).await,
        RootCommand::Approve {
            request_id,
            justification,
        } => {
            let req = pb::ApproveRootChangeRequest {
                request_id: request_id.clone(),
                justification: justification.clone(),
            };
            return match client.approve_root_change(authed(token, req)).await {
                Ok(_) => {
                    out!(
                        "root change {request_id} approved; its requester can now carry it out \
                         (`kluis admin root rotate --request {request_id}` with the same new key)"
                    );
                    Exit::Success
                }
                Err(s) => status_exit(&s),
            };
        }
    };
    let secret = match (new_key_file, new_passphrase_file) {
        (Some(path), _) if path.exists() => RootSecret::read_key_file(path),
        (Some(path), _) => RootSecret::create_key_file(path),
        (None, Some(path)) => match std::fs::read_to_string(path).map(Zeroizing::new) {
            Ok(text) => Ok(RootSecret::Passphrase(Zeroizing::new(
                text.trim_end_matches(['\n', '\r']).to_owned(),
            ))),
            Err(e) => return fail(format!("cannot read `{}`: {e}", path.display())),
        },
        (None, None) => match kluis::config::read_secret(
            &kluis::config::KeySource::Prompt,
            &kluis::config::SystemEnv,
            true,
        ) {
            Ok(s) => Ok(s),
            Err(e) => return fail(e),
        },
    };
    let secret = match secret {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let secret = match &secret {
        RootSecret::Passphrase(p) => pb::rotate_root_request::Secret::Passphrase(p.to_string()),
        RootSecret::KeyFile(k) => pb::rotate_root_request::Secret::Key(k.expose_secret().to_vec()),
        RootSecret::Shares(_) | RootSecret::Hsm(_) => {
            return fail("a new seal by shares or an HSM is `kluis admin root reseal --to …`");
        }
    };
    let req = pb::RotateRootRequest {
        secret: Some(secret),
        justification: justification.clone(),
        request_id: request.clone().unwrap_or_default(),
    };
    match client.rotate_root(authed(token, req)).await {
        Ok(r) if r.get_ref().rotated => {
            out!(
                "root key changed: the purpose keys are rewrapped; the old passphrase or key file no longer opens the store."
            );
            out!("point the server's configuration at the new one before its next start.");
            Exit::Success
        }
        Ok(r) => {
            let r = r.into_inner();
            out!(
                "root change {} requested; it awaits approval by a privacy officer:",
                r.request_id
            );
            out!(
                "  kluis admin root approve {} --justification WHY",
                r.request_id
            );
            out!("then, within 24 hours, carry it out with the same new key or passphrase:");
            out!(
                "  kluis admin root rotate --request {} (and the same --new-key-file or --new-passphrase-file)",
                r.request_id
            );
            Exit::Success
        }
        Err(s) => status_exit(&s),
    }
}

fn print_keys(purposes: &[pb::PurposeKeys], json: bool) {
    if json {
        for p in purposes {
            let versions: Vec<_> = p
                .versions
                .iter()
                .map(|v| {
                    serde_json::json!({
                        "version": v.version, "state": v.state, "algorithm": v.algorithm,
                        "subject_keys": v.subject_keys,
                        "created_at": v.created_at.as_ref().map(crate::cli::time),
                        "retired_at": v.retired_at.as_ref().map(crate::cli::time),
                        "destroy_after": v.destroy_after.as_ref().map(crate::cli::time),
                        "destroyed_at": v.destroyed_at.as_ref().map(crate::cli::time),
                    })
                })
                .collect();
            out!(
                "{}",
                serde_json::json!({
                    "purpose": p.purpose, "active_version": p.active_version,
                    "min_decrypt_version": p.min_decrypt_version, "versions": versions,
                    "orphan_fields": p.orphan_fields, "keys_on_destroyed_versions": p.keys_on_destroyed_versions,
                    "rekey_pending_since": p.rekey_pending_since.as_ref().map(crate::cli::time),
                })
            );
        }
        return;
    }
    out!(
        "{:<20} {:>4} {:<13} {:<19} {:>12} {:<20} {:<20}",
        "PURPOSE",
        "VER",
        "STATE",
        "ALGORITHM",
        "SUBJECT KEYS",
        "CREATED",
        "RETIRED"
    );
    for p in purposes {
        for v in &p.versions {
            let t = |x: &Option<prost_types::Timestamp>| {
                x.as_ref().map_or("-".to_owned(), crate::cli::time)
            };
            out!(
                "{:<20} {:>4} {:<13} {:<19} {:>12} {:<20} {:<20}",
                p.purpose,
                v.version,
                v.state,
                v.algorithm,
                v.subject_keys,
                t(&v.created_at),
                t(&v.retired_at)
            );
        }
    }
}
