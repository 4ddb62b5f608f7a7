//! The policies a request can match, cut from the set once when it loads: per action, and per
//! action and role. A fresh decision evaluates only its slice, since a policy whose scope names
//! another action, or a role the principal does not hold, cannot apply to it. Every other policy
//! (an unconstrained scope, an entity type, anything not a plain role or action) stays in every
//! slice, so a slice decides as the whole set does (`tests::memo_agrees` compares them).

use std::collections::HashMap;

use cedar_policy::{ActionConstraint, EntityUid, Policy, PolicySet, PrincipalConstraint};

use crate::domain::Role;

/// The slices of one policy set.
#[derive(Debug, Default)]
pub struct Slices {
    by_action: HashMap<String, PolicySet>,
    by_action_role: HashMap<(String, Role), PolicySet>,
}

/// The action (by its id) a constraint can match.
fn action_matches(policy: &Policy, action: &str) -> bool {
    let is = |uid: &EntityUid| {
        uid.type_name().to_string() == "Kluis::Action" && uid.id().unescaped() == action
    };
    match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(uid) => is(&uid),
        ActionConstraint::In(uids) => uids.iter().any(is),
    }
}

/// Whether a principal holding `role` (alone) can match the policy's principal constraint: only a
/// constraint `principal in Kluis::Role::"other"` rules it out.
fn role_matches(policy: &Policy, role: Role) -> bool {
    let other_role = |uid: &EntityUid| {
        uid.type_name().to_string() == "Kluis::Role" && uid.id().unescaped() != role.as_str()
    };
    match policy.principal_constraint() {
        PrincipalConstraint::In(uid) | PrincipalConstraint::IsIn(_, uid) => !other_role(&uid),
        _ => true,
    }
}

fn set_of<'a>(policies: impl Iterator<Item = &'a Policy>) -> PolicySet {
    let mut set = PolicySet::new();
    for p in policies {
        // Ids are unique in the whole set, so in every part of it.
        let _ = set.add(p.clone());
    }
    set
}

impl Slices {
    /// Cuts `policies` for `actions` (every action the engine decides) and every role.
    pub fn of(policies: &PolicySet, actions: &[&str]) -> Self {
        let mut slices = Self::default();
        for &action in actions {
            let for_action: Vec<&Policy> = policies
                .policies()
                .filter(|p| action_matches(p, action))
                .collect();
            for &role in Role::ALL {
                slices.by_action_role.insert(
                    (action.to_owned(), role),
                    set_of(for_action.iter().copied().filter(|p| role_matches(p, role))),
                );
            }
            slices
                .by_action
                .insert(action.to_owned(), set_of(for_action.into_iter()));
        }
        slices
    }

    /// The slice for `action` and a principal holding `roles`: per role when it holds one, per
    /// action otherwise; `None` for an action the slices were not cut for.
    pub fn get(&self, action: &str, roles: &[Role]) -> Option<&PolicySet> {
        match roles {
            [role] => self.by_action_role.get(&(action.to_owned(), *role)),
            _ => self.by_action.get(action),
        }
    }
}
