//! `kluis policy validate|test|explain`: check policies without a server.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kluis::{
    config::{OpenError, load_policy},
    domain::{
        AccessContext, Principal, PrincipalId, SubjectId, parse_category, parse_purpose, parse_role,
    },
    policy::{Action, Effect, Engine, FieldResource, table},
};

use super::{Exit, fail, usage};

/// Arguments of `kluis policy`.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// Which schema and policies to use: the built-in ones unless files are given.
#[derive(Args, Debug)]
pub struct PolicySource {
    /// Cedar schema file; the built-in schema when omitted.
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// Cedar policy file (repeat for several); the built-in policies when none are given.
    #[arg(long = "policies")]
    pub policies: Vec<PathBuf>,
}

/// Policy subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files against a schema (the built-in ones when none are given).
    Validate {
        /// Cedar schema file; the built-in schema when omitted.
        #[arg(long)]
        schema: Option<PathBuf>,
        /// Cedar policy files; the built-in policies when none are given.
        files: Vec<PathBuf>,
    },
    /// Run a decision table (CSV) against a policy set; exit code 4 when a row differs.
    Test {
        /// The decision table, e.g. tests/policy/default-decisions.csv.
        file: PathBuf,
        #[command(flatten)]
        source: PolicySource,
    },
    /// Explain one decision: allow or deny, and the policies that decided it, with their text.
    Explain(Box<ExplainArgs>),
}

/// Arguments of `kluis policy explain`.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The role asking.
    #[arg(long)]
    role: String,
    /// Principal id (for the audit-style output only).
    #[arg(long, default_value = "someone")]
    principal: String,
    /// `read`, `write`, `delete`, `list`, `export`, `close` or `read-masked`.
    #[arg(long, default_value = "read")]
    action: String,
    /// The declared purpose.
    #[arg(long)]
    purpose: String,
    /// The purpose the record was stored under; the declared purpose when omitted.
    #[arg(long)]
    record_purpose: Option<String>,
    /// The field's category.
    #[arg(long)]
    category: String,
    /// The field's name.
    #[arg(long, default_value = "value")]
    field: String,
    /// Case reference.
    #[arg(long, default_value = "")]
    case_ref: String,
    /// Justification.
    #[arg(long, default_value = "")]
    justification: String,
    /// Channel.
    #[arg(long, default_value = "app")]
    channel: String,
    /// Break-glass.
    #[arg(long)]
    break_glass: bool,
    /// The token is bound to the record's subject (`own`) or another one (`other`).
    #[arg(long)]
    scope: Option<String>,
    #[command(flatten)]
    source: PolicySource,
}

/// Runs `kluis policy`.
pub fn run(args: &PolicyArgs) -> Exit {
    match &args.command {
        PolicyCommand::Validate { schema, files } => match load(schema.as_ref(), files) {
            Ok(engine) => {
                out!(
                    "policies are valid ({} policies, sha256:{})",
                    engine.len(),
                    engine.digest()
                );
                Exit::Success
            }
            Err(exit) => exit,
        },
        PolicyCommand::Test { file, source } => {
            let engine = match load(source.schema.as_ref(), &source.policies) {
                Ok(e) => e,
                Err(exit) => return exit,
            };
            let text = match std::fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) => return fail(format!("cannot read `{}`: {e}", file.display())),
            };
            match table::run(&engine, &text) {
                Ok(report) => {
                    for f in &report.failures {
                        out!("{}:{}: {} -> got {}", file.display(), f.line, f.row, f.got);
                    }
                    out!(
                        "policy: {} passed, {} failed",
                        report.passed,
                        report.failures.len()
                    );
                    if report.failures.is_empty() {
                        Exit::Success
                    } else {
                        Exit::CheckFailed
                    }
                }
                Err(e) => fail(format!("{}: {e}", file.display())),
            }
        }
        PolicyCommand::Explain(explain) => {
            let ExplainArgs {
                role,
                principal,
                action,
                purpose,
                record_purpose,
                category,
                field,
                case_ref,
                justification,
                channel,
                break_glass,
                scope,
                source,
            } = explain.as_ref();
            let engine = match load(source.schema.as_ref(), &source.policies) {
                Ok(e) => e,
                Err(exit) => return exit,
            };
            let parsed = (|| {
                let role = parse_role("--role", role)?;
                let ctx = AccessContext::parse(
                    "context",
                    purpose,
                    case_ref,
                    justification,
                    channel,
                    *break_glass,
                    &kluis::domain::Channels::default(),
                )?;
                let record_purpose = parse_purpose(
                    "--record-purpose",
                    record_purpose.as_deref().unwrap_or(purpose),
                )?;
                let category = parse_category("--category", category)?;
                let scope_subject = match scope.as_deref() {
                    None => None,
                    Some("own") => Some(SubjectId::parse("scope", "REL-EXPLAIN-1")?),
                    Some(_) => Some(SubjectId::parse("scope", "REL-EXPLAIN-2")?),
                };
                let principal = Principal::new(
                    PrincipalId::parse("--principal", principal)?,
                    vec![role],
                    scope_subject,
                    "tok_explain",
                    i64::MAX,
                )?;
                let resource = FieldResource {
                    record: "rec_explain".into(),
                    name: field.clone(),
                    category,
                    purpose: record_purpose,
                    subject: "REL-EXPLAIN-1".into(),
                    flags: Default::default(),
                };
                Ok::<_, kluis::domain::InputError>((principal, ctx, resource))
            })();
            let (principal, ctx, resource) = match parsed {
                Ok(p) => p,
                Err(e) => return usage(super::with_flags(&e.to_string())),
            };
            let Some(action) = Action::from_name(action) else {
                return usage(format!(
                    "--action `{action}`: expected one of {}",
                    Action::names()
                ));
            };
            let decision = match engine.decide_fields(
                &principal,
                action,
                &ctx,
                std::slice::from_ref(&resource),
            ) {
                Ok(mut d) => match d.pop() {
                    Some(d) => d,
                    None => return fail("no decision"),
                },
                Err(e) => return fail(e),
            };
            let verdict = if decision.effect == Effect::Allow {
                "ALLOW"
            } else {
                "DENY"
            };
            out!("{verdict}: {}", decision.reason);
            for id in &decision.policies {
                out!("\n-- {id}");
                out!("{}", engine.policy_text(id).unwrap_or_default());
            }
            if decision.effect == Effect::Allow {
                Exit::Success
            } else {
                Exit::PolicyDeny
            }
        }
    }
}

fn load(schema: Option<&PathBuf>, files: &[PathBuf]) -> Result<Engine, Exit> {
    match load_policy(schema.map(PathBuf::as_path), files) {
        Ok(engine) => Ok(engine),
        Err(OpenError::Policy(e)) => {
            eprintln!("{e}");
            Err(Exit::CheckFailed)
        }
        Err(e) => Err(fail(e)),
    }
}
