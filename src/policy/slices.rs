//! The policies a request can match, cut from the set once (the first time a request needs
//! them): per action, and per action and role. A fresh decision evaluates only its slice, since a
//! policy whose scope names another action, or a role the principal does not hold, cannot apply
//! to it.
//!
//! Each policy in a slice is also specialised to what the slice knows of every request it decides:
//! the action, and for a slice per role, that the principal holds that one role. Comparisons of
//! `action` with action literals, `principal in` a role literal and `principal.single_role` are
//! replaced by their value, and the conditions are simplified around those values; a policy whose
//! condition becomes `false` is left out of the slice. What is left evaluates to the same value,
//! with the same errors, as the original for every request of the slice, so a slice decides as the
//! whole set does (`tests::slices_agree` and the memo tests compare them).
//!
//! Invariant: a rewrite never removes an expression whose evaluation could fail. `e && false`
//! becomes `false` (and `e || true` becomes `true`) only when `e` is built from literals,
//! variables, attributes kluis always supplies, and operators that cannot fail on those.
//! Invariant: anything the rewrite does not understand is kept as it is, and a policy that cannot
//! be rewritten (no JSON form, or the JSON does not read back) stays in the slice unchanged.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, OnceLock, PoisonError},
};

use cedar_policy::{
    ActionConstraint, EntityId, EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint, Schema,
};
use serde_json::{Value as Json, json};

use crate::domain::Role;

/// The type of actions in the schema.
const ACTION_TYPE: &str = "Kluis::Action";
/// The type of roles in the schema.
const ROLE_TYPE: &str = "Kluis::Role";

/// Attributes kluis supplies on every request, per variable: reading one cannot fail.
/// (`principal.scope_subject` is supplied only for a scoped token, so it is not here.)
const ALWAYS_SUPPLIED: &[(&str, &[&str])] = &[
    ("principal", &["single_role"]),
    (
        "resource",
        &[
            "name",
            "category",
            "purpose",
            "subject",
            "record_closed",
            "objected",
            "mandated",
            "restricted",
        ],
    ),
    (
        "context",
        &[
            "purpose",
            "case_ref",
            "justification",
            "channel",
            "break_glass",
        ],
    ),
];

/// The slices of one policy set. A slice is cut the first time a request needs it, from the
/// policies read when the set loaded (a set loads and reloads quickly: most of its slices are
/// never needed by one node, and none is cut twice).
#[derive(Default)]
pub struct Slices {
    /// Per action: its id, the ids of the action and its groups, and the policies whose action
    /// scope holds for it.
    actions: Vec<ForAction>,
    /// Per action, one slot per role and one for a principal holding none or several
    /// (`Role::ALL.len() + 1` each, in action order).
    slots: Vec<OnceLock<PolicySet>>,
    builder: Mutex<Builder>,
}

impl std::fmt::Debug for Slices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slices")
            .field("actions", &self.actions.len())
            .field(
                "cut",
                &self.slots.iter().filter(|s| s.get().is_some()).count(),
            )
            .finish_non_exhaustive()
    }
}

/// One action's share of the set.
struct ForAction {
    action: String,
    action_in: HashSet<(String, String)>,
    policies: Vec<Policy>,
}

/// What every request a slice decides has in common.
struct Known<'a> {
    /// The action's id.
    action: &'a str,
    /// The action and every action group it is in, as (type, id): a group may be an action of
    /// another namespace.
    action_in: &'a HashSet<(String, String)>,
    /// The one role the principal holds, for a slice per role.
    role: Option<Role>,
}

/// The (type, id) of an entity uid.
fn type_and_id(uid: &EntityUid) -> (String, String) {
    (uid.type_name().to_string(), uid.id().unescaped().to_owned())
}

/// Whether the policy's action scope holds for `action`, which is in the groups `action_in`
/// (itself included, each as (type, id)).
fn action_matches(policy: &Policy, action: &str, action_in: &HashSet<(String, String)>) -> bool {
    match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(uid) => {
            uid.type_name().to_string() == ACTION_TYPE && uid.id().unescaped() == action
        }
        ActionConstraint::In(uids) => uids.iter().any(|uid| action_in.contains(&type_and_id(uid))),
    }
}

/// Whether a principal holding `role` (alone) can match the policy's principal constraint: only a
/// constraint `principal in Kluis::Role::"other"` rules it out.
fn role_matches(policy: &Policy, role: Role) -> bool {
    let other_role = |uid: &EntityUid| {
        uid.type_name().to_string() == ROLE_TYPE && uid.id().unescaped() != role.as_str()
    };
    match policy.principal_constraint() {
        PrincipalConstraint::In(uid) | PrincipalConstraint::IsIn(_, uid) => !other_role(&uid),
        _ => true,
    }
}

impl Slices {
    /// Prepares the slices of `policies` for `actions` (every action the engine decides) and
    /// every role, with the action groups of `schema`.
    pub fn of(policies: &PolicySet, schema: &Schema, actions: &[&str]) -> Self {
        let groups = action_groups(schema, actions);
        let actions: Vec<ForAction> = actions
            .iter()
            .filter_map(|&action| {
                let action_in = groups.get(action)?.clone();
                let policies = policies
                    .policies()
                    .filter(|p| action_matches(p, action, &action_in))
                    .cloned()
                    .collect();
                Some(ForAction {
                    action: action.to_owned(),
                    action_in,
                    policies,
                })
            })
            .collect();
        let slots = (0..actions.len() * (Role::ALL.len() + 1))
            .map(|_| OnceLock::new())
            .collect();
        Self {
            actions,
            slots,
            builder: Mutex::new(Builder::default()),
        }
    }

    /// The slice for `action` and a principal holding `roles`: per role when it holds one, per
    /// action otherwise; `None` for an action the slices were not cut for.
    pub fn get(&self, action: &str, roles: &[Role]) -> Option<&PolicySet> {
        let a = self.actions.iter().position(|f| f.action == action)?;
        let for_action = self.actions.get(a)?;
        let role = match roles {
            [role] => Some(*role),
            _ => None,
        };
        let r = match role {
            Some(role) => Role::ALL.iter().position(|x| *x == role)?,
            None => Role::ALL.len(),
        };
        let slot = self.slots.get(a * (Role::ALL.len() + 1) + r)?;
        Some(slot.get_or_init(|| {
            let known = Known {
                action,
                action_in: &for_action.action_in,
                role,
            };
            let mut builder = self.builder.lock().unwrap_or_else(PoisonError::into_inner);
            builder.set(
                for_action
                    .policies
                    .iter()
                    .filter(|p| role.is_none_or(|role| role_matches(p, role))),
                &known,
            )
        }))
    }
}

/// Per action id: the action and the groups it is in (`action "read" in ["field-access"]` in the
/// schema, or a group of another namespace), each as (type, id). An action the schema does not
/// know gets only itself.
fn action_groups(schema: &Schema, actions: &[&str]) -> HashMap<String, HashSet<(String, String)>> {
    let entities = schema.action_entities().ok();
    actions
        .iter()
        .map(|&action| {
            let mut ids = HashSet::from([(ACTION_TYPE.to_owned(), action.to_owned())]);
            if let (Some(entities), Ok(ty)) = (entities.as_ref(), ACTION_TYPE.parse())
                && let Some(ancestors) =
                    entities.ancestors(&EntityUid::from_type_name_and_id(ty, EntityId::new(action)))
            {
                ids.extend(ancestors.map(type_and_id));
            }
            (action.to_owned(), ids)
        })
        .collect()
}

/// Builds the slices' policies. Each policy's JSON form is read once, and each distinct
/// specialisation built once: a specialisation depends on the action only when the policy's
/// conditions read `action`, and on the role only when they read `principal` or its scope names a
/// role, so most policies specialise alike for most slices. A set loads and reloads quickly.
#[derive(Default)]
struct Builder {
    /// Each policy read, by id (`None`: it has no JSON form).
    read: HashMap<String, Option<Read>>,
    /// Each specialisation built.
    built: HashMap<BuiltKey, Specialised>,
}

/// A policy's JSON form and what its conditions read.
struct Read {
    est: Json,
    reads_action: bool,
    reads_principal: bool,
}

/// What a specialisation of one policy depends on.
#[derive(Clone, Hash, PartialEq, Eq)]
struct BuiltKey {
    id: String,
    action: Option<String>,
    role: Option<Role>,
}

impl Builder {
    /// A set of the policies (each of whose action scope holds for the slice's action), each
    /// specialised to `known`; those that can never apply left out.
    fn set<'a>(
        &mut self,
        policies: impl Iterator<Item = &'a Policy>,
        known: &Known<'_>,
    ) -> PolicySet {
        let mut set = PolicySet::new();
        for p in policies {
            let kept = match self.specialise(p, known) {
                Specialised::Never => continue,
                Specialised::As(q) => *q,
                Specialised::Unchanged => p.clone(),
            };
            // Ids are unique in the whole set, so in every part of it.
            let _ = set.add(kept);
        }
        set
    }

    /// Specialises one policy, whose action scope holds for the slice's action, to `known`.
    fn specialise(&mut self, policy: &Policy, known: &Known<'_>) -> Specialised {
        let id = policy.id().to_string();
        let read = self.read.entry(id.clone()).or_insert_with(|| {
            let est = policy.to_json().ok()?;
            let conditions = est.get("conditions").cloned().unwrap_or(Json::Null);
            Some(Read {
                reads_action: reads_var(&conditions, "action"),
                reads_principal: reads_var(&conditions, "principal")
                    || role_literal(est.get("principal").and_then(|p| p.get("entity"))).is_some(),
                est,
            })
        });
        let Some(read) = read.as_ref() else {
            return Specialised::Unchanged;
        };
        let key = BuiltKey {
            id,
            action: read.reads_action.then(|| known.action.to_owned()),
            role: known.role.filter(|_| read.reads_principal),
        };
        if let Some(built) = self.built.get(&key) {
            return built.clone();
        }
        let built = match specialised_json(&read.est, known) {
            None => Specialised::Never,
            Some(est) => Policy::from_json(Some(PolicyId::new(policy.id())), est)
                .map_or(Specialised::Unchanged, |p| Specialised::As(Box::new(p))),
        };
        self.built.insert(key, built.clone());
        built
    }
}

/// Whether the JSON expression `e` (or anything in it) reads the variable `name`.
fn reads_var(e: &Json, name: &str) -> bool {
    match e {
        Json::Object(map) => map
            .iter()
            .any(|(k, v)| (k == "Var" && v.as_str() == Some(name)) || reads_var(v, name)),
        Json::Array(items) => items.iter().any(|v| reads_var(v, name)),
        _ => false,
    }
}

/// What became of one policy.
#[derive(Clone)]
enum Specialised {
    /// Its condition is `false` for every request of the slice.
    Never,
    /// The rewritten policy.
    As(Box<Policy>),
    /// Kept as it was.
    Unchanged,
}

/// The JSON form `est` of a policy, whose action scope holds for the slice's action, specialised
/// to `known`; `None` when its condition is `false` for every request of the slice.
fn specialised_json(est: &Json, known: &Known<'_>) -> Option<Json> {
    let fields = est.as_object()?;
    // The conditions in the order Cedar joins them: when { a } unless { b } is a && !b. One
    // that cannot be read is kept whole: no rewrite of the conditions.
    let mut condition: Option<Json> = None;
    let mut readable = true;
    for c in fields
        .get("conditions")
        .and_then(Json::as_array)
        .map_or(&[][..], Vec::as_slice)
    {
        let term = match (c.get("kind").and_then(Json::as_str), c.get("body")) {
            (Some("when"), Some(body)) => fold(body, known),
            (Some("unless"), Some(body)) => fold(&json!({"!": {"arg": body}}), known),
            _ => {
                readable = false;
                break;
            }
        };
        condition = Some(match condition {
            None => term,
            Some(so_far) => fold_logic(true, so_far, term),
        });
    }
    if readable && condition.as_ref().and_then(as_bool) == Some(false) {
        return None;
    }
    let mut out = serde_json::Map::with_capacity(fields.len());
    for (k, v) in fields {
        let v = match k.as_str() {
            "action" => json!({"op": "All"}),
            "principal"
                if known.role.is_some_and(|role| {
                    v.get("op").and_then(Json::as_str) == Some("in")
                        && role_literal(v.get("entity")) == Some(role.as_str())
                }) =>
            {
                json!({"op": "All"})
            }
            "conditions" if readable => match condition.take() {
                Some(c) if as_bool(&c) != Some(true) => json!([{"kind": "when", "body": c}]),
                _ => json!([]),
            },
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    Some(Json::Object(out))
}

/// The id of a role entity literal (`{"type": "Kluis::Role", "id": …}`).
fn role_literal(entity: Option<&Json>) -> Option<&str> {
    let e = entity?;
    (e.get("type")?.as_str()? == ROLE_TYPE)
        .then(|| e.get("id")?.as_str())
        .flatten()
}

/// The entity (type, id) of an expression that is an entity literal.
fn entity_of(e: &Json) -> Option<(&str, &str)> {
    let entity = e.get("Value")?.get("__entity")?;
    Some((entity.get("type")?.as_str()?, entity.get("id")?.as_str()?))
}

/// The elements of an expression that is a set literal (`Set` of values, or a `Value` array),
/// each as a value expression.
fn set_elements(e: &Json) -> Option<Vec<Json>> {
    if let Some(items) = e.get("Set").and_then(Json::as_array) {
        return Some(items.clone());
    }
    e.get("Value")
        .and_then(Json::as_array)
        .map(|items| items.iter().map(|v| json!({"Value": v})).collect())
}

/// The expression's single operator and its argument.
fn node(e: &Json) -> Option<(&str, &Json)> {
    let map = e.as_object()?;
    if map.len() != 1 {
        return None;
    }
    map.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn as_bool(e: &Json) -> Option<bool> {
    e.get("Value").and_then(Json::as_bool)
}

fn boolean(b: bool) -> Json {
    json!({"Value": b})
}

fn var(e: &Json) -> Option<&str> {
    e.get("Var").and_then(Json::as_str)
}

/// Whether evaluating `e` cannot fail (and, under a validated policy, gives a value of the type
/// the validator assigned it).
fn cannot_fail(e: &Json) -> bool {
    let Some((op, arg)) = node(e) else {
        return false;
    };
    let both =
        || arg.get("left").is_some_and(cannot_fail) && arg.get("right").is_some_and(cannot_fail);
    match op {
        "Value" | "Var" => true,
        "." => {
            let (Some(v), Some(attr)) = (
                arg.get("left").and_then(var),
                arg.get("attr").and_then(Json::as_str),
            ) else {
                return false;
            };
            ALWAYS_SUPPLIED
                .iter()
                .any(|(name, attrs)| *name == v && attrs.contains(&attr))
        }
        "has" => arg.get("left").and_then(var).is_some(),
        "!" => arg.get("arg").is_some_and(cannot_fail),
        "==" | "!=" | "in" | "&&" | "||" | "contains" | "containsAll" | "containsAny" => both(),
        "Set" => arg.as_array().is_some_and(|a| a.iter().all(cannot_fail)),
        "if-then-else" => ["if", "then", "else"]
            .iter()
            .all(|k| arg.get(*k).is_some_and(cannot_fail)),
        _ => false,
    }
}

/// What the slice knows of `left op right`, when it knows it.
fn known_relation(op: &str, left: &Json, right: &Json, k: &Known<'_>) -> Option<bool> {
    let (v, other) = match (var(left), var(right)) {
        (Some(v), _) => (v, right),
        (None, Some(v)) if op == "==" || op == "!=" => (v, left),
        _ => return None,
    };
    let entities: Vec<(String, String)> = match entity_of(other) {
        Some((t, id)) => vec![(t.to_owned(), id.to_owned())],
        None if op == "in" => set_elements(other)?
            .iter()
            .map(|e| entity_of(e).map(|(t, id)| (t.to_owned(), id.to_owned())))
            .collect::<Option<Vec<_>>>()?,
        None => return None,
    };
    match (v, op) {
        ("action", "==") | ("action", "!=") => {
            let [(t, id)] = entities.as_slice() else {
                return None;
            };
            let equal = t == ACTION_TYPE && id == k.action;
            Some(if op == "==" { equal } else { !equal })
        }
        ("action", "in") => Some(
            entities
                .iter()
                .any(|(t, id)| k.action_in.contains(&(t.clone(), id.clone()))),
        ),
        ("principal", "in") => {
            let role = k.role?;
            // Only roles are known: a principal in anything else is left to Cedar.
            if entities.iter().any(|(t, _)| t != ROLE_TYPE) {
                return None;
            }
            Some(entities.iter().any(|(_, id)| id == role.as_str()))
        }
        _ => None,
    }
}

fn binary(op: &str, left: Json, right: Json) -> Json {
    let mut node = serde_json::Map::new();
    node.insert(op.to_owned(), json!({"left": left, "right": right}));
    Json::Object(node)
}

/// `l && r` (`and`) or `l || r` of two folded expressions, simplified.
fn fold_logic(and: bool, l: Json, r: Json) -> Json {
    match (as_bool(&l), as_bool(&r)) {
        // true && r is r, false && r is false (r is not evaluated); likewise for ||.
        (Some(b), _) => {
            if b == and {
                r
            } else {
                boolean(b)
            }
        }
        // l && true is l; l || false is l.
        (None, Some(b)) if b == and => l,
        // l && false is false, l || true is true, when l cannot fail.
        (None, Some(b)) if cannot_fail(&l) => boolean(b),
        _ => binary(if and { "&&" } else { "||" }, l, r),
    }
}

/// `e` with what `k` knows put in, simplified.
fn fold(e: &Json, k: &Known<'_>) -> Json {
    let Some((op, arg)) = node(e) else {
        return e.clone();
    };
    let (left, right) = (arg.get("left"), arg.get("right"));
    match op {
        "&&" | "||" => {
            let (Some(left), Some(right)) = (left, right) else {
                return e.clone();
            };
            fold_logic(op == "&&", fold(left, k), fold(right, k))
        }
        "!" => {
            let Some(inner) = arg.get("arg") else {
                return e.clone();
            };
            let a = fold(inner, k);
            match as_bool(&a) {
                Some(b) => boolean(!b),
                None => json!({"!": {"arg": a}}),
            }
        }
        "if-then-else" => {
            let (Some(c), Some(t), Some(f)) = (arg.get("if"), arg.get("then"), arg.get("else"))
            else {
                return e.clone();
            };
            let c = fold(c, k);
            match as_bool(&c) {
                Some(true) => fold(t, k),
                Some(false) => fold(f, k),
                None => json!({"if-then-else": {"if": c, "then": fold(t, k), "else": fold(f, k)}}),
            }
        }
        "==" | "!=" | "in" => {
            let (Some(left), Some(right)) = (left, right) else {
                return e.clone();
            };
            match known_relation(op, left, right, k) {
                Some(b) => boolean(b),
                None => binary(op, fold(left, k), fold(right, k)),
            }
        }
        "." => {
            if k.role.is_some()
                && left.and_then(var) == Some("principal")
                && arg.get("attr").and_then(Json::as_str) == Some("single_role")
            {
                boolean(true)
            } else {
                e.clone()
            }
        }
        "contains" => {
            // [a, b].contains(x) is x == a || x == b: no set is built for every request.
            let (Some(left), Some(right)) = (left, right) else {
                return e.clone();
            };
            let r = fold(right, k);
            match set_elements(left) {
                Some(items)
                    if !items.is_empty()
                        && items.iter().all(|i| {
                            i.get("Value")
                                .is_some_and(|v| v.is_string() || v.is_boolean() || v.is_i64())
                        }) =>
                {
                    let mut out: Option<Json> = None;
                    for item in items {
                        let test = binary("==", r.clone(), item);
                        out = Some(match out {
                            None => test,
                            Some(so_far) => binary("||", so_far, test),
                        });
                    }
                    out.unwrap_or_else(|| e.clone())
                }
                _ => binary(op, left.clone(), r),
            }
        }
        _ => e.clone(),
    }
}
