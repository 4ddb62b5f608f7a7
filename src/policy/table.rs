//! Decision tables: a CSV of requests and the decision each must get, run against a policy set
//! (`kluis policy test FILE`). The repository ships the table for the default policy, generated
//! from DOMAIN.md's role table.
//!
//! Columns: `role,action,purpose,record_purpose,category,field,case_ref,justification,channel,
//! break_glass,scope,expected`; `scope` is `own` (a token bound to the record's subject),
//! `other` (bound to another subject) or empty; `expected` is `allow` or `deny`. Lines starting
//! with `#` are comments.

use super::{Action, Engine, FieldResource, PolicyError};
use crate::domain::{
    AccessContext, Principal, PrincipalId, SubjectId, parse_category, parse_purpose, parse_role,
};

/// The header line of a decision table.
pub const HEADER: &str = "role,action,purpose,record_purpose,category,field,case_ref,justification,channel,break_glass,scope,expected";

/// One row that did not get its expected decision.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Failure {
    /// Line number in the file (1-based).
    pub line: usize,
    /// The row as written.
    pub row: String,
    /// What the engine decided, with its reason.
    pub got: String,
}

/// The outcome of running a table.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Report {
    /// Rows that got their expected decision.
    pub passed: usize,
    /// Rows that did not.
    pub failures: Vec<Failure>,
}

/// Runs every row of `csv` against `engine`. A malformed row is an error naming its line.
pub fn run(engine: &Engine, csv: &str) -> Result<Report, PolicyError> {
    let mut report = Report::default();
    for (i, raw) in csv.lines().enumerate() {
        let line = i + 1;
        let row = raw.trim();
        if row.is_empty() || row.starts_with('#') || row == HEADER {
            continue;
        }
        let bad = |what: String| PolicyError::Request(format!("line {line}: {what}"));
        let cols: Vec<&str> = row.split(',').map(str::trim).collect();
        let [
            role,
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
            expected,
        ] = cols.as_slice()
        else {
            return Err(bad(format!(
                "expected 12 columns ({HEADER}), found {}",
                cols.len()
            )));
        };
        let role = parse_role("role", role).map_err(|e| bad(e.to_string()))?;
        let action = Action::from_name(action).ok_or_else(|| {
            bad(format!(
                "unknown action `{action}`; expected one of {}",
                Action::names()
            ))
        })?;
        let ctx = AccessContext::parse(
            "context",
            purpose,
            case_ref,
            justification,
            channel,
            *break_glass == "true",
            &crate::domain::Channels::default(),
        )
        .map_err(|e| bad(e.to_string()))?;
        let record_purpose =
            parse_purpose("record_purpose", record_purpose).map_err(|e| bad(e.to_string()))?;
        let category = parse_category("category", category).map_err(|e| bad(e.to_string()))?;
        let expected = match *expected {
            "allow" => true,
            "deny" => false,
            other => return Err(bad(format!("expected `allow` or `deny`, found `{other}`"))),
        };
        let subject = "REL-TABLE-1";
        let scope_subject = match *scope {
            "" => None,
            "own" => Some(subject),
            "other" => Some("REL-TABLE-2"),
            other => {
                return Err(bad(format!(
                    "scope must be `own`, `other` or empty, found `{other}`"
                )));
            }
        };
        let principal = Principal {
            id: PrincipalId::parse("principal", "table").map_err(|e| bad(e.to_string()))?,
            roles: vec![role],
            scope_subject: scope_subject
                .map(|s| SubjectId::parse("scope", s))
                .transpose()
                .map_err(|e| bad(e.to_string()))?,
            token_id: "tok_table".into(),
            expires_at: i64::MAX,
            service: None,
            employee: None,
        };
        let resource = FieldResource {
            record: "rec_table".into(),
            name: (*field).to_owned(),
            category,
            purpose: record_purpose,
            subject: subject.into(),
            flags: Default::default(),
        };
        let decision = engine
            .decide_fields(&principal, action, &ctx, std::slice::from_ref(&resource))?
            .pop()
            .ok_or_else(|| bad("no decision".into()))?;
        if decision.is_allow() == expected {
            report.passed += 1;
        } else {
            let got = if decision.is_allow() { "allow" } else { "deny" };
            report.failures.push(Failure {
                line,
                row: row.to_owned(),
                got: format!("{got} ({})", decision.reason),
            });
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_checked_and_malformed_rows_named() {
        let engine = Engine::default_policies().unwrap();
        let table = format!(
            "{HEADER}\n# a comment\n\
             nuisance-officer,read,nuisance,nuisance,contact,phone,N-1,why,app,false,,allow\n\
             customer-service,read,nuisance,nuisance,contact,phone,N-1,why,app,false,,allow\n"
        );
        let report = run(&engine, &table).unwrap();
        assert_eq!(report.passed, 1);
        assert_eq!(report.failures.len(), 1);
        assert_eq!(report.failures[0].line, 4);
        let err = run(&engine, "analyst,read,x").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
