//! The default policy against DOMAIN.md's role table, over every role × purpose × category.
//!
//! The table below is written from DOMAIN.md independently of `default.cedar`; the test puts
//! every combination to the engine and compares. Each row: role, categories it may see, the
//! purposes it may act for. Extra rules checked for every combination: special categories need a
//! case reference and justification; nothing confidential through social media; records are read
//! only under their own purpose unless the policy names the reuse compatible.

use kluis::{
    domain::{
        AccessContext, Category, Category as C, Principal, PrincipalId, Purpose, Purpose as P,
        Role, SubjectId,
    },
    policy::{Action, Engine, FieldResource},
};

/// Which identity fields a role may see: all of them, or names only (maintenance).
#[derive(Clone, Copy, PartialEq)]
enum Identity {
    All,
    NameOnly,
}

struct Row {
    role: Role,
    categories: &'static [Category],
    purposes: &'static [Purpose],
    identity: Identity,
    writes: bool,
}

const TABLE: &[Row] = &[
    Row {
        role: Role::CustomerService,
        categories: &[C::Identity, C::Contact],
        purposes: &[P::CustomerService, P::Contract, P::Complaints],
        identity: Identity::All,
        writes: true,
    },
    Row {
        role: Role::AllocationOfficer,
        categories: &[C::Identity, C::Contact, C::Income],
        purposes: &[P::Allocation, P::FinancialScreening],
        identity: Identity::All,
        writes: true,
    },
    Row {
        role: Role::FinanceOfficer,
        categories: &[C::Identity, C::Contact, C::Financial],
        purposes: &[P::Payments, P::DebtCollection],
        identity: Identity::All,
        writes: true,
    },
    Row {
        role: Role::MaintenancePlanner,
        categories: &[C::Identity, C::Contact],
        purposes: &[P::Maintenance],
        identity: Identity::NameOnly,
        writes: true,
    },
    Row {
        role: Role::Contractor,
        categories: &[C::Identity, C::Contact],
        purposes: &[P::Maintenance],
        identity: Identity::NameOnly,
        writes: false,
    },
    Row {
        role: Role::AdaptationAdvisor,
        categories: &[C::Identity, C::Contact, C::Medical],
        purposes: &[P::HomeAdaptation],
        identity: Identity::All,
        writes: true,
    },
    Row {
        role: Role::NuisanceOfficer,
        categories: &[C::Identity, C::Contact, C::NuisanceEvidence, C::Criminal],
        purposes: &[P::Nuisance, P::Safety],
        identity: Identity::All,
        writes: true,
    },
    Row {
        role: Role::FraudInvestigator,
        categories: &[C::Identity, C::Contact, C::Fraud, C::Income],
        purposes: &[P::HousingFraud],
        identity: Identity::All,
        writes: true,
    },
    Row {
        role: Role::LegalCounsel,
        categories: &[
            C::Identity,
            C::Contact,
            C::Financial,
            C::Contract,
            C::NuisanceEvidence,
            C::Fraud,
        ],
        purposes: &[P::LegalDisputes, P::DebtCollection],
        identity: Identity::All,
        writes: true,
    },
    Row {
        role: Role::Bailiff,
        categories: &[C::Identity, C::Contact, C::Financial, C::Contract],
        purposes: &[P::DebtCollection, P::LegalDisputes],
        identity: Identity::All,
        writes: false,
    },
    Row {
        role: Role::Lawyer,
        categories: &[C::Identity, C::Contact, C::Financial, C::Contract],
        purposes: &[P::DebtCollection, P::LegalDisputes],
        identity: Identity::All,
        writes: false,
    },
    Row {
        role: Role::Auditor,
        categories: &[C::Contract, C::Financial],
        purposes: &[P::Audit],
        identity: Identity::All,
        writes: false,
    },
    Row {
        role: Role::Analyst,
        categories: &[],
        purposes: &[],
        identity: Identity::All,
        writes: false,
    },
    Row {
        role: Role::PrivacyOfficer,
        categories: &[],
        purposes: &[],
        identity: Identity::All,
        writes: false,
    },
    Row {
        role: Role::SecurityOfficer,
        categories: &[],
        purposes: &[],
        identity: Identity::All,
        writes: false,
    },
    // The subject reads their own data of every purpose, except what an open fraud, nuisance or
    // safety case keeps back (the records in this table are open), and never writes. A
    // representative reads only under a mandate (none here; see tests/it/rights.rs).
    Row {
        role: Role::Subject,
        categories: &[
            C::Identity,
            C::Contact,
            C::Financial,
            C::Income,
            C::Contract,
            C::Medical,
            C::NuisanceEvidence,
            C::Fraud,
            C::Criminal,
        ],
        purposes: &[
            P::Contract,
            P::Allocation,
            P::Payments,
            P::DebtCollection,
            P::Maintenance,
            P::CustomerService,
            P::Complaints,
            P::LegalDisputes,
            P::Audit,
            P::PortfolioAnalysis,
            P::FinancialScreening,
            P::HomeAdaptation,
        ],
        identity: Identity::All,
        writes: false,
    },
    Row {
        role: Role::Representative,
        categories: &[],
        purposes: &[],
        identity: Identity::All,
        writes: false,
    },
];

/// Interpretation recorded in `default.cedar`: bank details on the contract record belong to the
/// finance officer.
fn extra_allow(role: Role, purpose: Purpose, category: Category) -> bool {
    role == Role::FinanceOfficer && purpose == P::Contract && category == C::Financial
}

/// `read-masked` (a masked view, never the value): customer service confirms bank details of
/// contract and payments records, declaring one of its own purposes. Nobody else.
fn masked_allow(role: Role, declared: Purpose, stored: Purpose, category: Category) -> bool {
    role == Role::CustomerService
        && [P::CustomerService, P::Contract, P::Complaints].contains(&declared)
        && [P::Contract, P::Payments].contains(&stored)
        && category == C::Financial
}

const SUBJECT: &str = "REL-4242";

fn principal(role: Role) -> Principal {
    let scoped = matches!(
        role,
        Role::Contractor | Role::Bailiff | Role::Lawyer | Role::Subject | Role::Representative
    );
    Principal::new(
        PrincipalId::parse("p", "table").unwrap(),
        vec![role],
        scoped.then(|| SubjectId::parse("s", SUBJECT).unwrap()),
        "tok_table",
        i64::MAX,
    )
    .unwrap()
}

fn context(purpose: Purpose, case: bool, channel: &str) -> AccessContext {
    let (case_ref, justification) = if case {
        ("CASE-1", "needed for the case")
    } else {
        ("", "")
    };
    AccessContext::parse(
        "c",
        purpose.as_str(),
        case_ref,
        justification,
        channel,
        false,
        &Default::default(),
    )
    .unwrap()
}

fn fields(purpose: Purpose) -> Vec<FieldResource> {
    let mut out: Vec<FieldResource> = Category::ALL
        .iter()
        .map(|&category| FieldResource {
            record: "rec_t".into(),
            name: "value".into(),
            category,
            purpose,
            subject: SUBJECT.into(),
            flags: Default::default(),
        })
        .collect();
    out.push(FieldResource {
        record: "rec_t".into(),
        name: "name".into(),
        category: C::Identity,
        purpose,
        subject: SUBJECT.into(),
        flags: Default::default(),
    });
    out
}

fn expected(
    row: &Row,
    purpose: Purpose,
    f: &FieldResource,
    action: Action,
    case: bool,
    channel: &str,
) -> bool {
    if action == Action::Write && !row.writes {
        return false;
    }
    let confidential = matches!(f.category, C::Financial | C::Income) || f.category.is_special();
    if action == Action::ReadMasked {
        return masked_allow(row.role, purpose, purpose, f.category)
            && !(channel == "social-media" && confidential);
    }
    let mut allowed = (row.purposes.contains(&purpose) && row.categories.contains(&f.category))
        || extra_allow(row.role, purpose, f.category);
    if f.category == C::Identity && row.identity == Identity::NameOnly && f.name != "name" {
        allowed = false;
    }
    if f.category.is_special() && !case {
        allowed = false;
    }
    if channel == "social-media" && confidential {
        allowed = false;
    }
    allowed
}

#[test]
fn default_policy_matches_the_role_table_for_every_combination() {
    let engine = Engine::default_policies().unwrap();
    assert_eq!(TABLE.len(), Role::ALL.len(), "every role has a row");
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for row in TABLE {
        let p = principal(row.role);
        for &purpose in Purpose::ALL {
            let resources = fields(purpose);
            for action in [Action::Read, Action::Write, Action::ReadMasked] {
                for case in [true, false] {
                    for channel in ["app", "social-media"] {
                        let decisions = engine
                            .decide_fields(&p, action, &context(purpose, case, channel), &resources)
                            .unwrap();
                        for (f, d) in resources.iter().zip(&decisions) {
                            checked += 1;
                            let want = expected(row, purpose, f, action, case, channel);
                            if d.is_allow() != want {
                                mismatches.push(format!(
                                    "{} {:?} {} `{}` ({}) case={case} channel={channel}: expected {}, got {} ({})",
                                    row.role, action, purpose, f.category, f.name,
                                    if want { "allow" } else { "deny" }, if d.is_allow() { "allow" } else { "deny" }, d.reason
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {checked} decisions differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert_eq!(
        checked,
        Role::ALL.len() * Purpose::ALL.len() * (Category::ALL.len() + 1) * 12
    );
}

#[test]
fn reads_are_limited_to_the_records_purpose_except_named_compatible_reuse() {
    let engine = Engine::default_policies().unwrap();
    let read = |role: Role, declared: Purpose, stored: Purpose, category: Category, case: bool| {
        let f = FieldResource {
            record: "rec_t".into(),
            name: "value".into(),
            category,
            purpose: stored,
            subject: SUBJECT.into(),
            flags: Default::default(),
        };
        engine
            .decide_fields(
                &principal(role),
                Action::Read,
                &context(declared, case, "app"),
                &[f],
            )
            .unwrap()[0]
            .is_allow()
    };
    // Nuisance and fraud evidence may substantiate a legal claim, with a case reference.
    assert!(read(
        Role::LegalCounsel,
        P::LegalDisputes,
        P::Nuisance,
        C::NuisanceEvidence,
        true
    ));
    assert!(read(
        Role::LegalCounsel,
        P::LegalDisputes,
        P::HousingFraud,
        C::Fraud,
        true
    ));
    assert!(!read(
        Role::LegalCounsel,
        P::LegalDisputes,
        P::Nuisance,
        C::NuisanceEvidence,
        false
    ));
    assert!(!read(
        Role::LegalCounsel,
        P::LegalDisputes,
        P::HomeAdaptation,
        C::Medical,
        true
    ));
    // The accountant audits contract and payment records.
    assert!(read(
        Role::Auditor,
        P::Audit,
        P::Contract,
        C::Contract,
        false
    ));
    assert!(read(
        Role::Auditor,
        P::Audit,
        P::Payments,
        C::Financial,
        false
    ));
    assert!(!read(
        Role::Auditor,
        P::Audit,
        P::Nuisance,
        C::Contract,
        false
    ));
    // Customer service gets a masked view of bank details of contract and payments records from
    // its own purposes, never the value, and no masked view of anything else.
    let decide =
        |action: Action, role: Role, declared: Purpose, stored: Purpose, category: Category| {
            let f = FieldResource {
                record: "rec_t".into(),
                name: "iban".into(),
                category,
                purpose: stored,
                subject: SUBJECT.into(),
                flags: Default::default(),
            };
            engine
                .decide_fields(
                    &principal(role),
                    action,
                    &context(declared, false, "app"),
                    &[f],
                )
                .unwrap()[0]
                .is_allow()
        };
    for &declared in &[P::CustomerService, P::Contract, P::Complaints] {
        for &stored in Purpose::ALL {
            for &category in Category::ALL {
                let cs = Role::CustomerService;
                assert_eq!(
                    decide(Action::ReadMasked, cs, declared, stored, category),
                    masked_allow(cs, declared, stored, category),
                    "customer service read-masked {category} of {stored} as {declared}"
                );
                if category == C::Financial {
                    assert!(!decide(Action::Read, cs, declared, stored, category));
                }
            }
        }
    }
    for row in TABLE.iter().filter(|r| r.role != Role::CustomerService) {
        for &purpose in Purpose::ALL {
            assert!(
                !decide(Action::ReadMasked, row.role, purpose, purpose, C::Financial),
                "{} read-masked financial of {purpose}",
                row.role
            );
        }
    }
    // Reuse is for reading only: the claim may not change or delete the evidence.
    let act =
        |action: Action, declared: Purpose, stored: Purpose, category: Category, channel: &str| {
            let f = FieldResource {
                record: "rec_t".into(),
                name: "value".into(),
                category,
                purpose: stored,
                subject: SUBJECT.into(),
                flags: Default::default(),
            };
            engine
                .decide_fields(
                    &principal(Role::LegalCounsel),
                    action,
                    &context(declared, true, channel),
                    &[f],
                )
                .unwrap()[0]
                .is_allow()
        };
    assert!(!act(
        Action::Write,
        P::LegalDisputes,
        P::Nuisance,
        C::NuisanceEvidence,
        "app"
    ));
    assert!(!act(
        Action::Delete,
        P::LegalDisputes,
        P::Nuisance,
        C::NuisanceEvidence,
        "app"
    ));
    assert!(act(
        Action::Delete,
        P::LegalDisputes,
        P::LegalDisputes,
        C::Contact,
        "app"
    ));
    // Nothing is deleted over social media.
    assert!(!act(
        Action::Delete,
        P::LegalDisputes,
        P::LegalDisputes,
        C::Contact,
        "social-media"
    ));
    // Special categories are not deleted without a case reference and justification either.
    let f = FieldResource {
        record: "rec_t".into(),
        name: "value".into(),
        category: C::NuisanceEvidence,
        purpose: P::Nuisance,
        subject: SUBJECT.into(),
        flags: Default::default(),
    };
    let no_case = engine
        .decide_fields(
            &principal(Role::NuisanceOfficer),
            Action::Delete,
            &context(P::Nuisance, false, "app"),
            &[f],
        )
        .unwrap();
    assert_eq!(
        no_case[0].policies,
        ["special-category-needs-case-and-justification"]
    );
    // Any other mismatch between declared and stored purpose is refused, for every staff role.
    for row in TABLE.iter().filter(|r| r.role != Role::Subject) {
        for &declared in row.purposes {
            for &stored in Purpose::ALL {
                if stored == declared || matches!(declared, P::LegalDisputes | P::Audit) {
                    continue;
                }
                for &category in row.categories {
                    assert!(
                        !read(row.role, declared, stored, category, true),
                        "{} read {stored} data as {declared}",
                        row.role
                    );
                }
            }
        }
    }
}

/// The decision table shipped in `tests/policy/default-decisions.csv` is this table, written
/// out for `kluis policy test` (which CI runs). Regenerate it after changing the table above:
/// `KLUIS_WRITE_DECISION_TABLE=1 cargo test --test it shipped_decision_table`.
#[test]
fn shipped_decision_table_is_the_role_table() {
    let mut rows = vec![kluis::policy::table::HEADER.to_owned()];
    let scoped = |role: Role| {
        matches!(
            role,
            Role::Contractor | Role::Bailiff | Role::Lawyer | Role::Subject | Role::Representative
        )
    };
    for row in TABLE {
        let scope = if scoped(row.role) { "own" } else { "" };
        for &purpose in Purpose::ALL {
            for f in fields(purpose) {
                let mut add =
                    |action: Action, case: bool, channel: &str, scope: &str, want: bool| {
                        let (case_ref, justification) = if case {
                            ("CASE-1", "needed for the case")
                        } else {
                            ("", "")
                        };
                        rows.push(format!(
                        "{},{},{},{},{},{},{case_ref},{justification},{channel},false,{scope},{}",
                        row.role,
                        action.as_str(),
                        purpose,
                        purpose,
                        f.category,
                        f.name,
                        if want { "allow" } else { "deny" }
                    ));
                    };
                for action in [Action::Read, Action::Write, Action::ReadMasked] {
                    add(
                        action,
                        true,
                        "app",
                        scope,
                        expected(row, purpose, &f, action, true, "app"),
                    );
                }
                if f.category.is_special() {
                    add(
                        Action::Read,
                        false,
                        "app",
                        scope,
                        expected(row, purpose, &f, Action::Read, false, "app"),
                    );
                }
                if matches!(f.category, C::Financial | C::Income) || f.category.is_special() {
                    add(
                        Action::Read,
                        true,
                        "social-media",
                        scope,
                        expected(row, purpose, &f, Action::Read, true, "social-media"),
                    );
                }
                if scoped(row.role) {
                    add(Action::Read, true, "app", "other", false);
                }
            }
        }
    }
    let generated = rows.join("\n") + "\n";
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy/default-decisions.csv");
    #[allow(
        clippy::disallowed_methods,
        reason = "a documented switch for regenerating the table"
    )]
    if std::env::var("KLUIS_WRITE_DECISION_TABLE").is_ok() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
    }
    let shipped =
        std::fs::read_to_string(&path).expect("tests/policy/default-decisions.csv is shipped");
    assert!(
        shipped == generated,
        "the shipped decision table differs from the role table; regenerate it"
    );
    assert!(rows.len() > 500, "{} rows", rows.len());
    // And the default policy passes it.
    let report = kluis::policy::table::run(&Engine::default_policies().unwrap(), &shipped).unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures.first());
    assert_eq!(report.passed, rows.len() - 1);
}

/// Restriction of processing (GDPR art. 18): for every role, purpose and category, a restricted
/// subject's field is read, listed or exported only when it would be unrestricted and the caller
/// declares a legal claim (`legal-disputes` with a case reference) or is the privacy officer;
/// writes decide as they would unrestricted.
#[test]
fn restriction_keeps_reads_to_legal_claims_and_the_privacy_officer() {
    let engine = Engine::default_policies().unwrap();
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for row in TABLE {
        let p = principal(row.role);
        for &declared in Purpose::ALL {
            // The record's own purpose, and two others (a compatible reuse and one not).
            let mut stored_as = vec![declared, P::Nuisance, P::Contract];
            stored_as.sort_unstable();
            stored_as.dedup();
            for stored in stored_as {
                let resources = fields(stored);
                let restricted: Vec<FieldResource> = resources
                    .iter()
                    .cloned()
                    .map(|mut f| {
                        f.flags.restricted = true;
                        f
                    })
                    .collect();
                for action in [Action::Read, Action::List, Action::Export, Action::Write] {
                    for case in [true, false] {
                        let c = context(declared, case, "app");
                        let free = engine.decide_fields(&p, action, &c, &resources).unwrap();
                        let held = engine.decide_fields(&p, action, &c, &restricted).unwrap();
                        for ((f, d), r) in resources.iter().zip(&free).zip(&held) {
                            checked += 1;
                            let reads =
                                matches!(action, Action::Read | Action::List | Action::Export);
                            let excepted = (declared == P::LegalDisputes && case)
                                || row.role == Role::PrivacyOfficer;
                            let want = d.is_allow() && (!reads || excepted);
                            if r.is_allow() != want {
                                mismatches.push(format!(
                                    "{} {action:?} declared {declared} stored {stored} `{}` ({}) case={case}: expected {}, got {} ({})",
                                    row.role, f.category, f.name,
                                    if want { "allow" } else { "deny" },
                                    if r.is_allow() { "allow" } else { "deny" }, r.reason
                                ));
                            }
                            if reads && d.is_allow() && !excepted {
                                assert_eq!(r.policies, ["restriction-of-processing"]);
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {checked} decisions differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // Some of each kind were decided: an allowed claim, the privacy officer's export, a denied
    // ordinary read.
    let d = |role, action, declared, stored, category| {
        let f = FieldResource {
            record: "rec_t".into(),
            name: "value".into(),
            category,
            purpose: stored,
            subject: SUBJECT.into(),
            flags: kluis::policy::FieldFlags {
                restricted: true,
                ..Default::default()
            },
        };
        engine
            .decide_fields(
                &principal(role),
                action,
                &context(declared, true, "app"),
                &[f],
            )
            .unwrap()[0]
            .is_allow()
    };
    assert!(d(
        Role::LegalCounsel,
        Action::Read,
        P::LegalDisputes,
        P::LegalDisputes,
        C::Contact
    ));
    assert!(d(
        Role::PrivacyOfficer,
        Action::Export,
        P::Contract,
        P::Contract,
        C::Contact
    ));
    assert!(!d(
        Role::CustomerService,
        Action::Read,
        P::Contract,
        P::Contract,
        C::Contact
    ));
    assert!(d(
        Role::CustomerService,
        Action::Write,
        P::Contract,
        P::Contract,
        C::Contact
    ));
    assert!(checked > 20_000, "{checked}");
}
