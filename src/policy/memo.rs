//! Decision memo: a Cedar decision is a pure function of its request and entities, so a decision
//! once made can be reused for every later request that the policy set cannot tell apart from it.
//!
//! "Cannot tell apart" is established by reading the policy set once, when the engine is built.
//! For each free-text input — the field's name and subject, the caller's case reference,
//! justification and channel — the analysis looks at every place a policy uses it. When every use
//! compares it for equality with string literals (`==`, `!=`, `[..].contains(..)`) or with
//! `principal.scope_subject`, the memo key holds only which literal the value equals (or none)
//! and whether it equals the caller's scope subject; otherwise the key holds the value itself.
//! Every other input (principal id, roles, scope, action, purposes, category, the flags) is in the
//! key as it is. Two requests with the same key therefore evaluate every policy expression to the
//! same value and get the same decision.
//!
//! Invariant: a key is a complete, unambiguous (length-prefixed) encoding of everything the
//! policy set can observe; the analysis errs towards keeping values (a finer key), never towards
//! dropping them.
//! Invariant: bounded: two generations of at most `CAPACITY` entries each; a full young
//! generation becomes the old one and the previous old one is dropped.
//! Invariant: decisions that hit an evaluation error are not memoised.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use cedar_policy::PolicySet;
use serde_json::Value as Json;

use super::{Action, Decision, FieldResource};
use crate::domain::{AccessContext, Principal};

/// Entries per generation.
const CAPACITY: usize = 32 * 1024;

/// The free-text inputs the analysis may abstract.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Input {
    Name,
    Subject,
    CaseRef,
    Justification,
    Channel,
}

impl Input {
    const ALL: [Self; 5] = [
        Self::Name,
        Self::Subject,
        Self::CaseRef,
        Self::Justification,
        Self::Channel,
    ];

    fn of(var: &str, attr: &str) -> Option<Self> {
        match (var, attr) {
            ("resource", "name") => Some(Self::Name),
            ("resource", "subject") => Some(Self::Subject),
            ("context", "case_ref") => Some(Self::CaseRef),
            ("context", "justification") => Some(Self::Justification),
            ("context", "channel") => Some(Self::Channel),
            _ => None,
        }
    }

    fn var(self) -> &'static str {
        match self {
            Self::Name | Self::Subject => "resource",
            Self::CaseRef | Self::Justification | Self::Channel => "context",
        }
    }
}

/// How the policy set uses one free-text input.
#[derive(Clone, Debug, Default)]
struct Use {
    /// Used in some way other than equality with literals or the scope subject: key the value.
    raw: bool,
    /// The literals it is compared with, each with its class number.
    literals: HashMap<String, u32>,
    /// Compared with `principal.scope_subject`.
    scope: bool,
}

/// What of each input the policy set can observe.
#[derive(Clone, Debug)]
pub(super) struct Abstraction {
    uses: [Use; 5],
    /// Some policy looks at the resource entity itself (its id, or `resource` in a scope).
    resource_uid: bool,
    /// False when a decision may depend on more than one field's entity (a policy names an
    /// entity other than a role, an action or a principal, e.g. `Kluis::Field::"…"`), or the
    /// policies could not be read: then nothing is memoised.
    memoisable: bool,
}

impl Abstraction {
    /// Reads the policies (in Cedar's JSON form) and records how each input is used.
    pub(super) fn of(set: &PolicySet) -> Self {
        let mut a = Self {
            uses: Default::default(),
            resource_uid: false,
            memoisable: true,
        };
        if set.templates().next().is_some() {
            a.memoisable = false;
        }
        for policy in set.policies() {
            let Ok(policy) = policy.to_json() else {
                a.memoisable = false;
                continue;
            };
            if names_other_entities(&policy) {
                a.memoisable = false;
            }
            match policy.get("resource").and_then(|r| r.get("op")) {
                Some(Json::String(op)) if op == "All" => {}
                _ => a.resource_uid = true,
            }
            match policy.get("conditions") {
                Some(Json::Array(conditions)) => {
                    for c in conditions {
                        a.walk(c.get("body").unwrap_or(&Json::Null));
                    }
                }
                None => {}
                // An unknown shape: trust nothing.
                Some(_) => a.memoisable = false,
            }
        }
        a
    }

    /// Whether decisions may be memoised at all.
    pub(super) fn memoisable(&self) -> bool {
        self.memoisable
    }

    fn use_mut(&mut self, input: Input) -> &mut Use {
        let [name, subject, case_ref, justification, channel] = &mut self.uses;
        match input {
            Input::Name => name,
            Input::Subject => subject,
            Input::CaseRef => case_ref,
            Input::Justification => justification,
            Input::Channel => channel,
        }
    }

    fn use_of(&self, input: Input) -> &Use {
        let [name, subject, case_ref, justification, channel] = &self.uses;
        match input {
            Input::Name => name,
            Input::Subject => subject,
            Input::CaseRef => case_ref,
            Input::Justification => justification,
            Input::Channel => channel,
        }
    }

    fn literal(&mut self, input: Input, s: &str) {
        let u = self.use_mut(input);
        let next = u32::try_from(u.literals.len()).unwrap_or(u32::MAX);
        u.literals.entry(s.to_owned()).or_insert(next);
    }

    fn walk(&mut self, e: &Json) {
        match e {
            Json::Array(items) => items.iter().for_each(|i| self.walk(i)),
            Json::Object(map) => {
                if map.len() == 1
                    && let Some((k, v)) = map.iter().next()
                    && self.node(k, v)
                {
                    return;
                }
                map.values().for_each(|v| self.walk(v));
            }
            _ => {}
        }
    }

    /// Handles one expression node `{k: v}`; false to walk its children generically.
    fn node(&mut self, k: &str, v: &Json) -> bool {
        match k {
            "==" | "!=" => {
                let (Some(l), Some(r)) = (v.get("left"), v.get("right")) else {
                    return false;
                };
                // Either side may be the input.
                for (side, other) in [(l, r), (r, l)] {
                    let Some(input) = tracked(side) else {
                        continue;
                    };
                    if let Some(s) = string_literal(other) {
                        self.literal(input, s);
                        return true;
                    }
                    if is_scope_subject(other) {
                        self.use_mut(input).scope = true;
                        return true;
                    }
                }
                false
            }
            "contains" => {
                let (Some(l), Some(r)) = (v.get("left"), v.get("right")) else {
                    return false;
                };
                let (Some(input), Some(Json::Array(set))) = (tracked(r), l.get("Set")) else {
                    return false;
                };
                let Some(literals) = set.iter().map(string_literal).collect::<Option<Vec<_>>>()
                else {
                    return false;
                };
                for s in literals {
                    self.literal(input, s);
                }
                true
            }
            "." => {
                let Some(Json::String(attr)) = v.get("attr") else {
                    return false;
                };
                match v.get("left").and_then(|l| l.get("Var")) {
                    Some(Json::String(var)) => {
                        if let Some(input) = Input::of(var, attr) {
                            self.use_mut(input).raw = true;
                        }
                        // Any other attribute is keyed as it is.
                        true
                    }
                    _ => false,
                }
            }
            // `principal has scope_subject` is keyed (the scope); the schema fixes the rest.
            "has" => matches!(
                v.get("left").and_then(|l| l.get("Var")),
                Some(Json::String(_))
            ),
            // `resource is Kluis::Field`: the schema fixes each variable's type per action.
            "is" => {
                v.get("in").is_none()
                    && matches!(
                        v.get("left").and_then(|l| l.get("Var")),
                        Some(Json::String(_))
                    )
            }
            "Var" => {
                // A variable used whole: everything it holds may matter. (Not a variable but a
                // record literal's field named `Var`: walk it.)
                let Some(var) = v.as_str() else {
                    return false;
                };
                if var == "resource" {
                    self.resource_uid = true;
                }
                for input in Input::ALL {
                    if input.var() == var {
                        self.use_mut(input).raw = true;
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// The memo key of deciding `action` on `field` for `principal` in `ctx`, into `out`.
    pub(super) fn key(
        &self,
        out: &mut Vec<u8>,
        principal: &Principal,
        action: Action,
        ctx: &AccessContext,
        field: &FieldResource,
        position: usize,
    ) {
        out.clear();
        put(out, principal.id.as_str());
        put_len(out, principal.roles.len());
        for r in &principal.roles {
            put(out, r.as_str());
        }
        let scope = principal.scope_subject.as_ref().map(|s| s.as_str());
        match scope {
            Some(s) => {
                out.push(1);
                put(out, s);
            }
            None => out.push(0),
        }
        put(out, action.as_str());
        put(out, ctx.purpose.as_str());
        out.push(u8::from(ctx.break_glass));
        put(out, field.category.as_str());
        put(out, field.purpose.as_str());
        out.extend([
            u8::from(field.flags.record_closed),
            u8::from(field.flags.objected),
            u8::from(field.flags.mandated),
            u8::from(field.flags.restricted),
        ]);
        if self.resource_uid {
            out.push(1);
            put(out, &field.record);
            put_len(out, position);
        } else {
            out.push(0);
        }
        for input in Input::ALL {
            let value = match input {
                Input::Name => field.name.as_str(),
                Input::Subject => field.subject.as_str(),
                Input::CaseRef => ctx.case_ref.as_str(),
                Input::Justification => ctx.justification.as_str(),
                Input::Channel => ctx.channel.as_str(),
            };
            let u = self.use_of(input);
            if u.raw {
                out.push(1);
                put(out, value);
                continue;
            }
            out.push(0);
            out.extend(
                u.literals
                    .get(value)
                    .copied()
                    .unwrap_or(u32::MAX)
                    .to_be_bytes(),
            );
            if u.scope {
                out.push(match scope {
                    None => 0,
                    Some(s) if s == value => 1,
                    Some(_) => 2,
                });
            }
        }
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend(u64::try_from(n).unwrap_or(u64::MAX).to_be_bytes());
}

fn put(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// Whether `policy` names an entity (in its scope or as a literal) of a type other than a role,
/// an action or a principal. Those three are keyed (the caller's id and roles, the action); any
/// other entity, a field above all, could be one of the request's other fields.
fn names_other_entities(policy: &Json) -> bool {
    match policy {
        Json::Array(items) => items.iter().any(names_other_entities),
        Json::Object(map) => {
            let named = matches!(
                (map.get("type"), map.get("id")),
                (Some(Json::String(t)), Some(Json::String(_)))
                    if !matches!(t.as_str(), "Kluis::Role" | "Kluis::Action" | "Kluis::Principal")
            );
            named || map.values().any(names_other_entities)
        }
        _ => false,
    }
}

/// The input an expression reads, when it is `resource.x` or `context.x` of a tracked `x`.
fn tracked(e: &Json) -> Option<Input> {
    let dot = e.get(".")?;
    let var = dot.get("left")?.get("Var")?.as_str()?;
    Input::of(var, dot.get("attr")?.as_str()?)
}

fn string_literal(e: &Json) -> Option<&str> {
    e.get("Value")?.as_str()
}

fn is_scope_subject(e: &Json) -> bool {
    e.get(".").is_some_and(|dot| {
        dot.get("left")
            .and_then(|l| l.get("Var"))
            .and_then(Json::as_str)
            == Some("principal")
            && dot.get("attr").and_then(Json::as_str) == Some("scope_subject")
    })
}

/// The memoised decisions of one engine.
#[derive(Debug, Default)]
pub(super) struct Memo {
    generations: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    young: HashMap<Box<[u8]>, Arc<Decision>>,
    old: HashMap<Box<[u8]>, Arc<Decision>>,
}

impl Memo {
    /// The decision memoised under `key`, if any.
    pub(super) fn get(&self, key: &[u8]) -> Option<Arc<Decision>> {
        let mut g = self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = g.young.get(key) {
            return Some(Arc::clone(d));
        }
        let (k, d) = g.old.remove_entry(key)?;
        g.insert(k, Arc::clone(&d));
        Some(d)
    }

    /// Memoises `decision` under `key`.
    pub(super) fn put(&self, key: &[u8], decision: Decision) {
        let mut g = self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        g.insert(key.into(), Arc::new(decision));
    }

    /// The number of memoised decisions.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        let g = self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        g.young.len() + g.old.len()
    }
}

impl Generations {
    fn insert(&mut self, key: Box<[u8]>, decision: Arc<Decision>) {
        if self.young.len() >= CAPACITY {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, decision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Engine;

    /// The field actions, for policies of these tests.
    const FIELD: &str = r#"action in [Kluis::Action::"read", Kluis::Action::"write", Kluis::Action::"delete", Kluis::Action::"list", Kluis::Action::"export"]"#;

    fn abstraction(policies: &str) -> Abstraction {
        let policies = policies.replace("action,", &format!("{FIELD},"));
        let engine = Engine::from_sources(crate::policy::DEFAULT_SCHEMA, &policies).unwrap();
        engine.abstraction.clone()
    }

    #[test]
    fn the_default_policies_only_compare_free_text_for_equality() {
        let a = Engine::default_policies().unwrap().abstraction.clone();
        assert!(a.memoisable && !a.resource_uid);
        for input in Input::ALL {
            assert!(!a.use_of(input).raw, "{input:?} is keyed by value");
        }
        assert!(a.use_of(Input::Subject).scope);
        assert!(a.use_of(Input::Name).literals.contains_key("surname"));
        assert!(a.use_of(Input::CaseRef).literals.contains_key(""));
        assert!(
            a.use_of(Input::Channel)
                .literals
                .contains_key("social-media")
        );
    }

    #[test]
    fn any_other_use_keys_the_value() {
        let like = abstraction(
            r#"@id("p") permit(principal, action, resource) when { resource.name like "med*" };"#,
        );
        assert!(like.use_of(Input::Name).raw);
        assert!(!like.use_of(Input::Subject).raw);

        let cross = abstraction(
            r#"@id("p") permit(principal, action, resource) when { context.case_ref == resource.subject };"#,
        );
        assert!(cross.use_of(Input::CaseRef).raw && cross.use_of(Input::Subject).raw);

        let whole = abstraction(
            r#"@id("p") permit(principal, action, resource) when { resource == Kluis::Field::"rec_1#0" };"#,
        );
        assert!(!whole.memoisable);

        let sibling = abstraction(
            r#"@id("p") permit(principal, action, resource) when { principal has scope_subject && Kluis::Field::"rec_1#1".subject == principal.scope_subject };"#,
        );
        assert!(!sibling.memoisable);

        let named = abstraction(
            r#"@id("p") permit(principal == Kluis::Principal::"emp-1", action, resource) when { principal in Kluis::Role::"auditor" };"#,
        );
        assert!(named.memoisable);

        let typed = abstraction(
            r#"@id("p") permit(principal, action, resource) when { resource is Kluis::Field && resource.name == "x" };"#,
        );
        assert!(!typed.resource_uid && !typed.use_of(Input::Name).raw);

        let scoped = abstraction(
            r#"@id("p") permit(principal, action, resource == Kluis::Field::"rec_1#0");"#,
        );
        assert!(scoped.resource_uid && !scoped.memoisable);

        let record_field_named_var = abstraction(
            r#"@id("p") permit(principal, action, resource) when { {Var: resource.name} == {Var: "x"} };"#,
        );
        assert!(record_field_named_var.use_of(Input::Name).raw);

        let in_a_set = abstraction(
            r#"@id("p") permit(principal, action, resource) when { [context.channel, "x"].contains("app") };"#,
        );
        assert!(in_a_set.use_of(Input::Channel).raw);
    }

    #[test]
    fn memo_is_bounded() {
        let memo = Memo::default();
        let d = Decision {
            effect: crate::policy::Effect::Deny,
            policies: vec![],
            reason: String::new(),
            field: None,
            action: None,
        };
        for i in 0..(3 * CAPACITY) {
            memo.put(&i.to_be_bytes(), d.clone());
        }
        assert!(memo.len() <= 2 * CAPACITY);
        assert!(memo.get(&(3 * CAPACITY - 1).to_be_bytes()).is_some());
        assert!(memo.get(&0usize.to_be_bytes()).is_none());
    }
}
