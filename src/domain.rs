//! The domain vocabulary of `DOMAIN.md`: purposes, categories, roles, and the parsed, validated
//! values that the core works with (`SubjectId`, `FieldName`, `CaseRef`, ...).
//!
//! Parsing is where bad input stops: every constructor here checks sizes and characters, and
//! values that may be stored run through the BSN/MRZ guard (`vault::guard`). The core never sees
//! raw strings. Nothing here knows about gRPC or SQL.

use std::{fmt, str::FromStr};

use crate::vault::guard;

/// Why a value was refused at the boundary. The message names the field and the limit and never
/// repeats the value itself (it may be personal data).
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("`{field}`: {problem}")]
pub struct InputError {
    /// The request field that was refused, e.g. `context.purpose` or `fields[2].name`.
    pub field: String,
    /// What is wrong and what to do about it.
    pub problem: String,
}

impl InputError {
    /// An error for `field` with a human explanation.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) { $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
        pub enum $name { $( $(#[$vmeta])* $variant ),+ }

        impl $name {
            /// Every value, in the order of `DOMAIN.md`.
            pub const ALL: &'static [$name] = &[ $( $name::$variant ),+ ];

            /// The wire and policy name, e.g. `nuisance-evidence`.
            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text ),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    _ => Err(format!(
                        "unknown {}; expected one of: {}",
                        $what,
                        [$( $text ),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum! {
    /// A purpose ("doel"): every record belongs to exactly one.
    pub enum Purpose ("purpose") {
        /// Executing the rental or purchase agreement.
        Contract = "contract",
        /// Checking income and household to allocate a suitable home.
        Allocation = "allocation",
        /// Paying and receiving money.
        Payments = "payments",
        /// Reclaiming a debt.
        DebtCollection = "debt-collection",
        /// Maintaining, renovating and repairing homes.
        Maintenance = "maintenance",
        /// Customer service.
        CustomerService = "customer-service",
        /// Handling complaints.
        Complaints = "complaints",
        /// Disputes and substantiating legal claims.
        LegalDisputes = "legal-disputes",
        /// The accountant's audit.
        Audit = "audit",
        /// Analyses of the housing stock (no personal data in clear).
        PortfolioAnalysis = "portfolio-analysis",
        /// Credit screening before allocation by an external agency.
        FinancialScreening = "financial-screening",
        /// Medical data for adaptations of a home.
        HomeAdaptation = "home-adaptation",
        /// Nuisance or aggression, with evidence.
        Nuisance = "nuisance",
        /// Housing fraud or unlawful use of a home.
        HousingFraud = "housing-fraud",
        /// Criminal or disruptive behaviour; safety of staff and residents.
        Safety = "safety",
    }
}

string_enum! {
    /// The category of a field's data.
    pub enum Category ("category") {
        /// Name, first names, initials, title, gender, date of birth.
        Identity = "identity",
        /// Address, postcode, city, phone number, e-mail address.
        Contact = "contact",
        /// Bank account number, payment data, debts.
        Financial = "financial",
        /// Income data for allocation, landlord's statement.
        Income = "income",
        /// Data needed to execute the agreement.
        Contract = "contract",
        /// Medical data (GDPR art. 9).
        Medical = "medical",
        /// Photos, film, sound, e-mails, letters about nuisance.
        NuisanceEvidence = "nuisance-evidence",
        /// Housing-fraud findings.
        Fraud = "fraud",
        /// Criminal behaviour (GDPR art. 10).
        Criminal = "criminal",
    }
}

string_enum! {
    /// A role a principal acts in.
    pub enum Role ("role") {
        /// Customer service staff.
        CustomerService = "customer-service",
        /// Allocation officer.
        AllocationOfficer = "allocation-officer",
        /// Finance officer.
        FinanceOfficer = "finance-officer",
        /// Maintenance planner.
        MaintenancePlanner = "maintenance-planner",
        /// External contractor on one job.
        Contractor = "contractor",
        /// Home-adaptation advisor.
        AdaptationAdvisor = "adaptation-advisor",
        /// Nuisance officer.
        NuisanceOfficer = "nuisance-officer",
        /// Fraud investigator.
        FraudInvestigator = "fraud-investigator",
        /// In-house legal counsel.
        LegalCounsel = "legal-counsel",
        /// External bailiff, for one case.
        Bailiff = "bailiff",
        /// External lawyer, for one case.
        Lawyer = "lawyer",
        /// External accountant.
        Auditor = "auditor",
        /// Analyst: nothing in clear.
        Analyst = "analyst",
        /// Privacy officer: subject requests, reads the audit trail.
        PrivacyOfficer = "privacy-officer",
        /// Security officer: keys, credentials, audit verification; never personal data.
        SecurityOfficer = "security-officer",
        /// The data subject themself.
        Subject = "subject",
        /// A representative holding a mandate.
        Representative = "representative",
    }
}

impl Role {
    /// External and subject-side roles (the subject, a representative, a contractor, a bailiff, a
    /// lawyer): never combined with another role and always bound to one subject, so that no rule
    /// written for them widens what a staff role may do, or the other way round.
    pub fn is_subject_bound(self) -> bool {
        matches!(
            self,
            Role::Subject | Role::Representative | Role::Contractor | Role::Bailiff | Role::Lawyer
        )
    }

    /// Roles that may see personal data in clear through kluis. A token carrying one takes effect
    /// only once a privacy officer other than its requester has approved it; whoever holds or
    /// held `security-officer` never gets one.
    pub fn reads_personal_data(self) -> bool {
        !matches!(self, Role::SecurityOfficer | Role::Analyst)
    }

    /// The investigation a role works on, if it is an investigating role: whatever it touches
    /// tells of a case of that purpose, so an access line of it is decided as one.
    pub fn investigation(self) -> Option<Purpose> {
        match self {
            Role::NuisanceOfficer => Some(Purpose::Nuisance),
            Role::FraudInvestigator => Some(Purpose::HousingFraud),
            _ => None,
        }
    }
}

/// Checks that `roles` may be held together, by one token, with `scope` as its subject. The one
/// place these rules live: issuing a token, reading one back from the store and building a
/// `Principal` all go through it.
///
/// - at least one role;
/// - `security-officer` is held alone (whoever manages keys and credentials reads no data);
/// - an external or subject-side role is held alone and bound to one subject.
pub fn check_roles(roles: &[Role], scope: Option<&SubjectId>) -> Result<(), InputError> {
    if roles.is_empty() {
        return Err(InputError::new("roles", "at least one role is required"));
    }
    if roles.contains(&Role::SecurityOfficer) && roles.len() > 1 {
        return Err(InputError::new(
            "roles",
            "`security-officer` cannot be combined with other roles (separation of duties: \
             whoever manages keys and credentials never reads personal data)",
        ));
    }
    if let Some(r) = roles.iter().find(|r| r.is_subject_bound()) {
        if roles.len() > 1 {
            return Err(InputError::new(
                "roles",
                format!(
                    "`{r}` is an external or subject-side role and cannot be combined with \
                     another role; issue a separate token"
                ),
            ));
        }
        if scope.is_none() {
            return Err(InputError::new(
                "scope_subject_id",
                format!("a token with role `{r}` must be bound to one subject"),
            ));
        }
    }
    Ok(())
}

impl Purpose {
    /// How long records of this purpose are kept, and from when that period counts
    /// (the defaults of `DOMAIN.md`; configurable).
    pub fn default_retention(self) -> Retention {
        use RetentionStart::{Closing, Creation};
        let (days, from) = match self {
            Purpose::Contract => (2 * 365, Closing),
            Purpose::Allocation => (365, Creation),
            Purpose::Payments => (7 * 365, Creation),
            Purpose::DebtCollection => (7 * 365, Creation),
            Purpose::Maintenance => (2 * 365, Creation),
            Purpose::CustomerService => (2 * 365, Creation),
            Purpose::Complaints => (2 * 365, Creation),
            Purpose::LegalDisputes => (5 * 365, Closing),
            Purpose::Audit => (7 * 365, Creation),
            Purpose::PortfolioAnalysis => (365, Creation),
            Purpose::FinancialScreening => (365, Creation),
            Purpose::HomeAdaptation => (365, Closing),
            Purpose::Nuisance => (2 * 365, Closing),
            Purpose::HousingFraud => (5 * 365, Closing),
            Purpose::Safety => (2 * 365, Closing),
        };
        Retention { days, from }
    }
}

impl Purpose {
    /// The lawful basis (GDPR art. 6, and art. 9 for medical data) from `DOMAIN.md`.
    pub fn lawful_basis(self) -> &'static str {
        match self {
            Purpose::Contract | Purpose::Payments | Purpose::Maintenance => "contract",
            Purpose::Allocation | Purpose::Audit => "legal obligation",
            Purpose::CustomerService => "contract / legitimate interest",
            Purpose::DebtCollection
            | Purpose::Complaints
            | Purpose::LegalDisputes
            | Purpose::PortfolioAnalysis => "legitimate interest",
            Purpose::FinancialScreening => "legitimate interest (objection possible)",
            Purpose::HomeAdaptation => "explicit consent / art. 9(2)",
            Purpose::Nuisance | Purpose::Safety => "legitimate interest / safety",
            Purpose::HousingFraud => "legitimate interest / legal obligation",
        }
    }

    /// Records kept under a legal obligation (allocation checks, the accountant's audit, fiscal
    /// payment records) survive an erasure request until their retention ends.
    pub fn survives_erasure(self) -> bool {
        matches!(
            self,
            Purpose::Allocation | Purpose::Audit | Purpose::Payments
        )
    }
}

impl Category {
    /// Special categories need a case reference and a justification on every access.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            Category::Medical | Category::NuisanceEvidence | Category::Fraud | Category::Criminal
        )
    }
}

/// A retention period and the moment it counts from.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Retention {
    /// Length of the period in days.
    pub days: u32,
    /// What the period counts from.
    pub from: RetentionStart,
}

/// What a retention period counts from.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum RetentionStart {
    /// The record's creation.
    Creation,
    /// The record's closing (end of tenancy, case closed); no expiry until then.
    Closing,
}

impl RetentionStart {
    /// `creation` or `closing`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionStart::Creation => "creation",
            RetentionStart::Closing => "closing",
        }
    }
}

/// Limits on what one request may carry. Errors name the limit.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Fields per record.
    pub max_fields: usize,
    /// Bytes per field value.
    pub max_value_bytes: usize,
    /// Labels per record.
    pub max_labels: usize,
    /// Bytes of values per record (so a whole record always fits one response).
    pub max_record_bytes: usize,
    /// Bytes per evidence file.
    pub max_evidence_bytes: u64,
    /// Requests per second one token may make on average (0: no limit); bursts of twice as many
    /// pass.
    pub requests_per_second: u32,
    /// Calls running on blocking threads at once; the others wait their turn, in order.
    pub max_calls_running: usize,
    /// Of those, calls of one caller (one credential).
    pub max_calls_running_per_caller: usize,
    /// Bytes of record values being opened and answered at once, in all.
    pub answer_bytes: usize,
    /// Bytes of record values being opened and answered at once for one caller (principal).
    pub answer_bytes_per_caller: usize,
    /// Accesses in one answer of a subject access report (its page size, and the most a report
    /// asked for whole may hold).
    pub max_report_accesses: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_fields: 256,
            max_value_bytes: 1024 * 1024,
            max_labels: 32,
            max_record_bytes: 8 * 1024 * 1024,
            max_evidence_bytes: 8 * 1024 * 1024 * 1024,
            requests_per_second: 2000,
            max_calls_running: 64,
            max_calls_running_per_caller: 64,
            answer_bytes: 512 * 1024 * 1024,
            answer_bytes_per_caller: 64 * 1024 * 1024,
            max_report_accesses: 2_000,
        }
    }
}

/// Checks a short identifier-like string: not empty, at most `max` bytes, printable (no control
/// or invisible characters), no surrounding whitespace.
fn check_token(field: &str, s: &str, max: usize, what: &str) -> Result<(), InputError> {
    if s.is_empty() {
        return Err(InputError::new(field, format!("{what} is required")));
    }
    if s.len() > max {
        return Err(InputError::new(
            field,
            format!("{what} is longer than {max} bytes"),
        ));
    }
    check_printable(field, s, what)?;
    if s.trim() != s {
        return Err(InputError::new(
            field,
            format!("{what} has leading or trailing whitespace"),
        ));
    }
    Ok(())
}

/// Refuses control characters, line and paragraph separators, and characters that show nothing
/// or change how the text around them shows (`guard::is_invisible`: zero-width spaces and
/// joiners, direction marks, overrides and isolates, variation selectors, tags, fillers).
fn check_printable(field: &str, s: &str, what: &str) -> Result<(), InputError> {
    if s.chars()
        .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        return Err(InputError::new(
            field,
            format!("{what} holds control characters or line breaks"),
        ));
    }
    if s.chars().any(guard::is_invisible) {
        return Err(InputError::new(
            field,
            format!(
                "{what} holds an invisible or text-direction character (a zero-width space or \
                 joiner, a direction mark, override or isolate, a variation selector, tag or \
                 filler: Unicode format characters); write it without them"
            ),
        ));
    }
    // A combining mark shows only on the character before it: one that opens the text, or a
    // text of marks and spaces alone, shows nothing (or dresses what comes before it).
    let is_mark = |c: char| {
        use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};
        !c.is_ascii() && c.general_category_group() == GeneralCategoryGroup::Mark
    };
    if s.chars().next().is_some_and(is_mark)
        || (s.chars().any(is_mark) && s.chars().all(|c| c.is_whitespace() || is_mark(c)))
    {
        return Err(InputError::new(
            field,
            format!(
                "{what} begins with a combining mark or holds nothing but marks and spaces: it \
                 shows nothing; write it out"
            ),
        ));
    }
    Ok(())
}

/// Whether a free text must hold something.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Need {
    /// A value is required: empty, or only whitespace, is refused.
    Required,
    /// May be empty.
    Optional,
}

/// Checks a free text that kluis keeps in clear or decides on (a case reference, justification,
/// hold reason, request note, label value, file name): when `need` is `Required`, something
/// besides whitespace; at most `max` bytes; no control characters, line breaks or invisible
/// characters (`check_printable`); and no BSN or MRZ (`guard::check_text`). The one check every
/// such text goes through. The error names `field` and `what` and never repeats the text.
pub fn check_free_text(
    field: &str,
    s: &str,
    what: &str,
    max: usize,
    need: Need,
) -> Result<(), InputError> {
    if need == Need::Required && s.trim().is_empty() {
        return Err(InputError::new(
            field,
            format!("{what} is required; whitespace alone does not count"),
        ));
    }
    if s.len() > max {
        return Err(InputError::new(
            field,
            format!("{what} is longer than {max} bytes"),
        ));
    }
    check_printable(field, s, what)?;
    guard::check_text(field, s)
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
        pub struct $name(String);

        impl $name {
            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// The case app's opaque reference for a data subject (a relation number). Never a BSN.
    SubjectId
);
string_newtype!(
    /// A record id as issued by kluis (`rec_` and 32 hex digits).
    RecordId
);
string_newtype!(
    /// A field name: lowercase letters, digits, `_`, `-`, `.`, starting with a letter.
    FieldName
);
string_newtype!(
    /// A principal id (an employee number, a contractor's id, ...).
    PrincipalId
);

impl SubjectId {
    /// Longest accepted subject id in bytes.
    pub const MAX_LEN: usize = 128;

    /// Parses a subject id named `field` in the request, in its one spelling: ASCII letters
    /// (compared without case, kept in upper case, as relation numbers are written), digits and
    /// `-`, `.`, `_`, `:`, `/`, starting with a letter or digit, at most [`Self::MAX_LEN`]
    /// bytes. `rel-0001` and `REL-0001` are the same subject; look-alike letters from other
    /// scripts, full-width forms, other hyphens, spaces and invisible characters are refused
    /// rather than taken for another subject, whose records would escape the first one's
    /// export and erasure.
    pub fn parse(field: &str, s: &str) -> Result<Self, InputError> {
        check_token(field, s, Self::MAX_LEN, "subject id")?;
        if let Some(bad) = s.chars().find(|&c| !Self::allowed(c)) {
            let what = if bad.is_ascii() {
                "a character other than ASCII letters, digits and `-._:/`"
            } else {
                "a non-ASCII character (a subject id has one spelling: look-alike letters, \
                 full-width forms and other hyphens are refused)"
            };
            return Err(InputError::new(
                field,
                format!("subject id holds {what}; use the case app's relation number"),
            ));
        }
        if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(InputError::new(
                field,
                "subject id must start with an ASCII letter or digit",
            ));
        }
        let id = s.to_ascii_uppercase();
        guard::check_text(field, &id)?;
        if guard::is_bsn(&id) {
            return Err(InputError::new(
                field,
                "subject id is a BSN (citizen service number); kluis stores no BSNs, use the case \
                 app's own relation number",
            ));
        }
        Ok(Self(id))
    }

    /// A subject id read back from the store: accepted only in the one spelling `parse` gives,
    /// so that a row written otherwise (by hand, or by a kluis that kept ids as given) is never
    /// taken for, or beside, the subject of that spelling.
    pub fn parse_stored(s: &str) -> Result<Self, InputError> {
        let id = Self::parse("subject", s)?;
        if id.0 != s {
            return Err(InputError::new(
                "subject",
                "stored subject id is not in its one spelling (upper case)",
            ));
        }
        Ok(id)
    }

    fn allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':' | '/')
    }
}

impl RecordId {
    /// A fresh random record id.
    pub fn generate() -> Self {
        Self(format!("rec_{}", hex::encode(rand::random::<[u8; 16]>())))
    }

    /// A fresh record id in the order of issue: the first 48 of its 128 bits are the
    /// milliseconds since 1970, the other 80 random.
    ///
    /// Ids issued one after the other sort one after the other, so a new record, its fields and
    /// its search tags go at the end of the indexes keyed by record id instead of into a random
    /// page of each: a group commit of many writes dirties a few pages at the end, not a page
    /// per write per index. The 80 random bits keep an id unguessable; what the id tells beyond
    /// a random one is when it was issued, which the record's `created_at` says anyway.
    pub fn generate_in_order() -> Self {
        Self::generate_at(std::time::SystemTime::now())
    }

    fn generate_at(now: std::time::SystemTime) -> Self {
        let millis = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut bytes: [u8; 16] = rand::random();
        // 48 bits of milliseconds last until the year 10889.
        bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        Self(format!("rec_{}", hex::encode(bytes)))
    }

    /// Parses a record id named `field` in the request.
    pub fn parse(field: &str, s: &str) -> Result<Self, InputError> {
        let ok = s.len() == 36
            && s.starts_with("rec_")
            && s.bytes()
                .skip(4)
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else if s.is_empty() {
            Err(InputError::new(field, "record id is required"))
        } else {
            Err(InputError::new(
                field,
                "not a record id: expected `rec_` and 32 lowercase hex digits",
            ))
        }
    }
}

impl FieldName {
    /// Longest accepted field name in bytes.
    pub const MAX_LEN: usize = 64;

    /// Parses a field name named `field` in the request.
    pub fn parse(field: &str, s: &str) -> Result<Self, InputError> {
        if s.is_empty() {
            return Err(InputError::new(field, "field name is required"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(InputError::new(
                field,
                format!("field name is longer than {} bytes", Self::MAX_LEN),
            ));
        }
        let mut bytes = s.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
        let rest_ok = bytes.all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        });
        if !(first_ok && rest_ok) {
            return Err(InputError::new(
                field,
                "field name must start with a lowercase letter and hold only lowercase letters, \
                 digits, `_`, `-` and `.`",
            ));
        }
        // Field names are kept in clear, in the record and in every audit entry that names
        // the field.
        guard::check_text(field, s)?;
        Ok(Self(s.to_owned()))
    }
}

impl PrincipalId {
    /// Longest accepted principal id in bytes.
    pub const MAX_LEN: usize = 128;

    /// Parses a principal id named `field` in the request, in its normal form: ASCII letters
    /// (compared without case, kept in lower case), digits and `.`, `_`, `-`, `@`, `+`, `:`,
    /// `/`. One person has one spelling: `Alice`, `ALICE` and `alice` are the same principal, and
    /// look-alike letters from other scripts are refused rather than taken for another person.
    pub fn parse(field: &str, s: &str) -> Result<Self, InputError> {
        check_token(field, s, Self::MAX_LEN, "principal id")?;
        if let Some(bad) = s.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+' | ':' | '/'))
        }) {
            let what = if bad.is_ascii() {
                "a character other than ASCII letters, digits and `._-@+:/`"
            } else {
                "a non-ASCII character (principal ids are compared in one spelling only)"
            };
            return Err(InputError::new(
                field,
                format!("principal id holds {what}; use the employee number or account name"),
            ));
        }
        guard::check_text(field, s)?;
        if guard::is_bsn(s) {
            return Err(InputError::new(
                field,
                "principal id is a BSN; use an employee number",
            ));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
}

/// Parses a `purpose` named `field`.
pub fn parse_purpose(field: &str, s: &str) -> Result<Purpose, InputError> {
    if s.is_empty() {
        return Err(InputError::new(
            field,
            "purpose is required: declare why you access the data",
        ));
    }
    s.parse().map_err(|e: String| InputError::new(field, e))
}

/// Parses a `category` named `field`.
pub fn parse_category(field: &str, s: &str) -> Result<Category, InputError> {
    if s.is_empty() {
        return Err(InputError::new(field, "category is required"));
    }
    s.parse().map_err(|e: String| InputError::new(field, e))
}

/// Parses a `role` named `field`.
pub fn parse_role(field: &str, s: &str) -> Result<Role, InputError> {
    s.parse().map_err(|e: String| InputError::new(field, e))
}

/// The channels a request may arrive through: a closed list, `Channels::DEFAULT` unless the
/// configuration names others. A channel outside it is refused, so that a rule about one channel
/// (`social-media`) cannot be escaped by another spelling of it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Channels(Vec<String>);

impl Channels {
    /// The default list.
    pub const DEFAULT: &'static [&'static str] = &[
        "app",
        "counter",
        "phone",
        "email",
        "letter",
        "portal",
        "social-media",
    ];

    /// A closed list of channel names: each at most `AccessContext::MAX_CHANNEL` lowercase
    /// letters, digits or `-`, no duplicates, not empty.
    pub fn new(names: &[String]) -> Result<Self, InputError> {
        if names.is_empty() {
            return Err(InputError::new(
                "channels",
                "at least one channel is required",
            ));
        }
        let mut out: Vec<String> = Vec::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            let ok = !n.is_empty()
                && n.len() <= AccessContext::MAX_CHANNEL
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(InputError::new(
                    format!("channels[{i}]"),
                    format!(
                        "a channel is 1 to {} lowercase letters, digits or `-`",
                        AccessContext::MAX_CHANNEL
                    ),
                ));
            }
            if out.contains(n) {
                return Err(InputError::new(
                    format!("channels[{i}]"),
                    format!("channel `{n}` is listed twice"),
                ));
            }
            out.push(n.clone());
        }
        Ok(Self(out))
    }

    /// Whether `channel` is on the list.
    pub fn contains(&self, channel: &str) -> bool {
        self.0.iter().any(|c| c == channel)
    }

    /// The names, in the configured order.
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

impl Default for Channels {
    fn default() -> Self {
        Self(Self::DEFAULT.iter().map(|&c| c.to_owned()).collect())
    }
}

/// Why a call is made: checked by the policy and written to the audit trail.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct AccessContext {
    /// The declared purpose.
    pub purpose: Purpose,
    /// The case reference; empty when none was given.
    pub case_ref: String,
    /// The justification, trimmed; empty when none, or only whitespace, was given (and then a
    /// rule that needs one is not met).
    pub justification: String,
    /// The channel, e.g. `app`, `counter`, `social-media`; `app` when none was given.
    pub channel: String,
    /// Emergency access (break-glass) requested.
    pub break_glass: bool,
}

impl AccessContext {
    /// Longest accepted case reference in bytes.
    pub const MAX_CASE_REF: usize = 128;
    /// Longest accepted justification in bytes.
    pub const MAX_JUSTIFICATION: usize = 1024;
    /// Longest accepted channel name in bytes.
    pub const MAX_CHANNEL: usize = 32;

    /// Parses and checks the parts of an access context; `prefix` names it in errors.
    pub fn parse(
        prefix: &str,
        purpose: &str,
        case_ref: &str,
        justification: &str,
        channel: &str,
        break_glass: bool,
        channels: &Channels,
    ) -> Result<Self, InputError> {
        let purpose = parse_purpose(&format!("{prefix}.purpose"), purpose)?;
        if !case_ref.is_empty() {
            check_token(
                &format!("{prefix}.case_ref"),
                case_ref,
                Self::MAX_CASE_REF,
                "case reference",
            )?;
            guard::check_text(&format!("{prefix}.case_ref"), case_ref)?;
        }
        check_free_text(
            &format!("{prefix}.justification"),
            justification,
            "justification",
            Self::MAX_JUSTIFICATION,
            Need::Optional,
        )?;
        let channel = if channel.is_empty() { "app" } else { channel };
        if !channels.contains(channel) {
            return Err(InputError::new(
                format!("{prefix}.channel"),
                format!(
                    "unknown channel; expected one of: {} (the closed list of `channels` in the \
                     configuration)",
                    channels.names().join(", ")
                ),
            ));
        }
        Ok(Self {
            purpose,
            case_ref: case_ref.to_owned(),
            justification: justification.trim().to_owned(),
            channel: channel.to_owned(),
            break_glass,
        })
    }
}

/// Who is calling, as established by their credentials. Built only by `Principal::new`, which
/// refuses a combination of roles that `check_roles` does not allow.
#[derive(Clone, Debug, Eq, PartialEq)]
#[non_exhaustive]
pub struct Principal {
    /// The principal's id.
    pub id: PrincipalId,
    /// The roles the token carries.
    pub roles: Vec<Role>,
    /// The subject a scoped token is bound to.
    pub scope_subject: Option<SubjectId>,
    /// The id of the token used (never the token itself).
    pub token_id: String,
    /// When the token expires (unix seconds).
    pub expires_at: i64,
    /// The service that made the call: the case app acting for `employee`, or acting on its own
    /// (a batch job) when there is no employee.
    pub service: Option<PrincipalId>,
    /// The person signed in at the organisation's identity provider, when the credential is
    /// (or carries) an OpenID Connect token.
    pub employee: Option<Employee>,
}

/// A person as the organisation's identity provider names them. What is audited of them; the
/// `Debug` output shows the issuer only.
#[derive(Clone, Eq, PartialEq)]
pub struct Employee {
    /// The provider's `iss`, exactly as configured.
    pub issuer: String,
    /// The provider's `sub` for the person.
    pub sub: String,
    /// The configured display claim (a name or account), when configured and present.
    pub display: Option<String>,
}

impl fmt::Debug for Employee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Employee")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Principal {
    /// A principal holding `roles`, bound to `scope_subject` when given, authenticated by the
    /// token `token_id` that expires at `expires_at` (unix seconds).
    pub fn new(
        id: PrincipalId,
        roles: Vec<Role>,
        scope_subject: Option<SubjectId>,
        token_id: impl Into<String>,
        expires_at: i64,
    ) -> Result<Self, InputError> {
        check_roles(&roles, scope_subject.as_ref())?;
        Ok(Self {
            id,
            roles,
            scope_subject,
            token_id: token_id.into(),
            expires_at,
            service: None,
            employee: None,
        })
    }

    /// A principal the organisation's identity established: a service by its client
    /// certificate, an employee by the provider's token, or an employee through a service.
    /// `roles` may be empty (a service with no roles of its own, an employee with none the
    /// service may act for): such a principal is refused every decision, and each refusal is
    /// audited with who asked. Roles bound to one subject are refused: they are kluis tokens.
    pub fn organisational(
        id: PrincipalId,
        roles: Vec<Role>,
        token_id: impl Into<String>,
        expires_at: i64,
        service: Option<PrincipalId>,
        employee: Option<Employee>,
    ) -> Result<Self, InputError> {
        if !roles.is_empty() {
            check_roles(&roles, None)?;
        }
        Ok(Self {
            id,
            roles,
            scope_subject: None,
            token_id: token_id.into(),
            expires_at,
            service,
            employee,
        })
    }

    /// Whether the roles are a combination `check_roles` allows. The policy engine asks again
    /// before every decision, so a principal changed after it was built decides nothing.
    pub fn roles_are_valid(&self) -> bool {
        check_roles(&self.roles, self.scope_subject.as_ref()).is_ok()
    }
}

/// Where the lifecycle's "now" comes from: record times, retention, holds, subject requests.
/// The system clock in production; tests pass their own to move time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in unix seconds.
    fn now(&self) -> i64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        now_unix()
    }
}

string_enum! {
    /// A subject request (GDPR art. 15–21), answered within four weeks.
    pub enum RequestKind ("request kind") {
        /// A copy of the data (art. 15).
        Access = "access",
        /// Correction or completion (art. 16).
        Rectification = "rectification",
        /// Deletion (art. 17).
        Erasure = "erasure",
        /// Objection to processing (art. 21).
        Objection = "objection",
    }
}

string_enum! {
    /// Who a subject's data was disclosed to (DOMAIN.md, rule 11).
    pub enum RecipientKind ("recipient kind") {
        /// The police or the public prosecutor.
        Police = "police",
        /// A municipality.
        Municipality = "municipality",
        /// A bailiff ("deurwaarder").
        Bailiff = "bailiff",
        /// A lawyer.
        Lawyer = "lawyer",
        /// A care institution.
        CareInstitution = "care-institution",
        /// A contractor (plumber, builder).
        Contractor = "contractor",
        /// Any other party; the recipient and legal basis say who and why.
        Other = "other",
    }
}

impl RecipientKind {
    /// The kind of recipient a read by an external role is a disclosure to, if it is one:
    /// contractors, bailiffs and lawyers work outside the organisation.
    pub fn of_external(role: Role) -> Option<Self> {
        match role {
            Role::Contractor => Some(RecipientKind::Contractor),
            Role::Bailiff => Some(RecipientKind::Bailiff),
            Role::Lawyer => Some(RecipientKind::Lawyer),
            _ => None,
        }
    }
}

/// A disclosure as the caller describes it (`Vault/RecordDisclosure`), parsed and checked:
/// every text through `check_free_text` or `check_token` and the BSN/MRZ guard.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct DisclosureInput {
    /// Who received the data: an organisation or a person in their role.
    pub recipient: String,
    /// What kind of party that is.
    pub kind: RecipientKind,
    /// The legal basis of the disclosure (a court order, a statutory duty, the contract).
    pub legal_basis: String,
    /// The case reference; empty when none was given.
    pub case_ref: String,
}

impl DisclosureInput {
    /// Longest accepted recipient in bytes.
    pub const MAX_RECIPIENT: usize = 200;
    /// Longest accepted legal basis in bytes.
    pub const MAX_LEGAL_BASIS: usize = 500;

    /// Parses the parts of a disclosure; each error names its request field and limit.
    pub fn parse(
        recipient: &str,
        kind: &str,
        legal_basis: &str,
        case_ref: &str,
    ) -> Result<Self, InputError> {
        check_free_text(
            "recipient",
            recipient,
            "recipient",
            Self::MAX_RECIPIENT,
            Need::Required,
        )?;
        let kind = kind
            .parse::<RecipientKind>()
            .map_err(|e| InputError::new("recipient_kind", e))?;
        check_free_text(
            "legal_basis",
            legal_basis,
            "legal basis",
            Self::MAX_LEGAL_BASIS,
            Need::Required,
        )?;
        if !case_ref.is_empty() {
            check_token(
                "case_ref",
                case_ref,
                AccessContext::MAX_CASE_REF,
                "case reference",
            )?;
            guard::check_text("case_ref", case_ref)?;
        }
        Ok(Self {
            recipient: recipient.trim().to_owned(),
            kind,
            legal_basis: legal_basis.trim().to_owned(),
            case_ref: case_ref.to_owned(),
        })
    }
}

string_enum! {
    /// What a stored field value is: text (UTF-8) or bytes.
    pub enum FieldKind ("field kind") {
        /// UTF-8 text.
        Text = "text",
        /// Bytes.
        Binary = "binary",
    }
}

string_enum! {
    /// A subject's recorded stance on one purpose.
    pub enum ConsentState ("consent state") {
        /// Consent given (consent-based purposes).
        Given = "given",
        /// Consent withdrawn.
        Withdrawn = "withdrawn",
        /// Objection made (purposes on legitimate interest that allow it).
        Objected = "objected",
    }
}

/// How long the vault has to answer a subject request: four weeks, counted in days of the
/// organisation's calendar (`REQUEST_TIME_ZONE`).
pub const REQUEST_DEADLINE_DAYS: i32 = 28;

/// The time zone whose calendar days count for subject requests.
pub const REQUEST_TIME_ZONE: &str = "Europe/Amsterdam";

/// When a subject request received at `received_at` (unix seconds) must be answered: at the end
/// of the day four weeks after the day it was received on, in Amsterdam: the last second of
/// that day (23:59:59 local time, whether summer or winter time). A request received at 23:50
/// on 1 March is due at the end of 29 March, not at 23:50, and one received at 00:10 on 2 March
/// at the end of 30 March. Falls back to four times 7 × 24 hours after the day began in UTC
/// should the zone be unknown or the date out of range.
pub fn request_due_at(received_at: i64) -> i64 {
    let in_zone = || -> Result<i64, jiff::Error> {
        let zone = jiff::tz::TimeZone::get(REQUEST_TIME_ZONE)?;
        let day = jiff::Timestamp::from_second(received_at)?
            .to_zoned(zone.clone())
            .date();
        let next_day = day.checked_add(jiff::Span::new().days(REQUEST_DEADLINE_DAYS + 1))?;
        // The first moment of the day after the due day, less one second.
        Ok(next_day.to_zoned(zone)?.timestamp().as_second() - 1)
    };
    in_zone().unwrap_or_else(|_| {
        let day_start = received_at - received_at.rem_euclid(86_400);
        day_start.saturating_add(i64::from(REQUEST_DEADLINE_DAYS + 1) * 86_400 - 1)
    })
}

/// Most calendar months a subject request's deadline may be extended by in all (GDPR art.
/// 12(3): "by two further months where necessary").
pub const REQUEST_EXTENSION_MONTHS: u32 = 2;

/// `at` moved by `months` calendar months and `days` days, in Amsterdam (a month from the 31st
/// ends on the last day of a shorter month); `None` when out of range.
pub fn request_deadline_plus(at: i64, months: u32, days: u32) -> Option<i64> {
    let zone = jiff::tz::TimeZone::get(REQUEST_TIME_ZONE).ok()?;
    let zoned = jiff::Timestamp::from_second(at).ok()?.to_zoned(zone);
    let span = jiff::Span::new()
        .try_months(i64::from(months))
        .ok()?
        .try_days(i64::from(days))
        .ok()?;
    Some(zoned.checked_add(span).ok()?.timestamp().as_second())
}

/// The latest a subject request first due at `due_at` may be extended to: two calendar months
/// later, in Amsterdam.
pub fn request_extension_limit(due_at: i64) -> i64 {
    request_deadline_plus(due_at, REQUEST_EXTENSION_MONTHS, 0)
        .unwrap_or_else(|| due_at.saturating_add(61 * 86_400))
}

/// The current time in unix seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_due_at_the_end_of_the_day_four_weeks_later_in_amsterdam() {
        // 23:50 on 1 March (winter time, UTC+1): due at the end of 29 March, the day summer
        // time starts (UTC+2), so at 21:59:59 UTC.
        assert_eq!(request_due_at(1_772_405_400), 1_774_821_599); // 2026-03-29T21:59:59Z
        // Twenty minutes later it is 2 March in Amsterdam (still 1 March in UTC): a day later.
        assert_eq!(request_due_at(1_772_406_600), 1_774_907_999); // 2026-03-30T21:59:59Z
        // Received in summer time, due in winter time (25 October 2026): 23:59:59 UTC+1.
        assert_eq!(request_due_at(1_790_848_800), 1_793_314_799); // 2026-10-29T22:59:59Z
        // The last second of 10 June and the first of 11 June in Amsterdam.
        assert_eq!(request_due_at(1_781_128_799), 1_783_547_999); // 2026-07-08T21:59:59Z
        assert_eq!(request_due_at(1_781_128_800), 1_783_634_399); // 2026-07-09T21:59:59Z
        // Never before four weeks have passed, nor after four weeks and a day.
        for received in (1_767_225_600..1_798_761_600).step_by(3_607) {
            let due = request_due_at(received);
            assert!(due - received >= 28 * 86_400 - 3_600, "{received}");
            assert!(due - received < 29 * 86_400 + 3_600, "{received}");
        }
    }

    #[test]
    fn an_extension_counts_calendar_months_in_amsterdam() {
        // Due at the end of 29 March 2026 (summer time): two months later is the end of 29 May.
        assert_eq!(request_extension_limit(1_774_821_599), 1_780_091_999); // 2026-05-29T21:59:59Z
        // Two months from the end of 31 December (winter time) end on the last day of February
        // (28 February 2027), not on 3 March.
        let dec31 = 1_798_757_999; // 2026-12-31T22:59:59Z
        assert_eq!(
            request_deadline_plus(dec31, 2, 0),
            Some(1_803_855_599) // 2027-02-28T22:59:59Z
        );
        assert_eq!(request_deadline_plus(dec31, 0, 1), Some(dec31 + 86_400));
        assert_eq!(request_deadline_plus(dec31, 0, 0), Some(dec31));
    }

    #[test]
    fn names_round_trip() {
        for p in Purpose::ALL {
            assert_eq!(p.as_str().parse::<Purpose>().unwrap(), *p);
        }
        for c in Category::ALL {
            assert_eq!(c.as_str().parse::<Category>().unwrap(), *c);
        }
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), *r);
        }
        assert_eq!(Purpose::ALL.len(), 15);
        assert_eq!(Category::ALL.len(), 9);
    }

    #[test]
    fn unknown_purpose_lists_the_choices() {
        let err = parse_purpose("context.purpose", "gossip").unwrap_err();
        assert_eq!(err.field, "context.purpose");
        assert!(err.problem.contains("nuisance"), "{err}");
    }

    #[test]
    fn subject_id_refuses_bsn_and_control_characters() {
        assert!(SubjectId::parse("subject_id", "111222333").is_err());
        assert!(SubjectId::parse("subject_id", "111.222.333").is_err());
        assert!(SubjectId::parse("subject_id", "rel\n1").is_err());
        assert!(SubjectId::parse("subject_id", "").is_err());
        assert!(SubjectId::parse("subject_id", &"x".repeat(129)).is_err());
        assert!(SubjectId::parse("subject_id", "123456789").is_ok());
        assert!(SubjectId::parse("subject_id", "REL-000123").is_ok());
    }

    #[test]
    fn one_subject_has_one_spelling() {
        let canonical = SubjectId::parse("subject_id", "REL-0001").unwrap();
        assert_eq!(canonical.as_str(), "REL-0001");
        for same in ["rel-0001", "Rel-0001", "rEL-0001"] {
            assert_eq!(
                SubjectId::parse("subject_id", same).unwrap(),
                canonical,
                "{same}"
            );
        }
        for ok in ["12345", "urn:rel/0001", "K.2026_7", "a"] {
            let id = SubjectId::parse("subject_id", ok).unwrap();
            assert_eq!(id.as_str(), ok.to_ascii_uppercase());
            assert_eq!(SubjectId::parse_stored(id.as_str()).unwrap(), id);
        }
        let look_alikes = [
            "REL-0001\u{200B}",
            "\u{200B}REL-0001",
            "REL\u{200D}-0001",
            "REL-0001\u{FEFF}",
            "\u{202E}REL-0001",
            "\u{FF32}\u{FF25}\u{FF2C}-\u{FF10}\u{FF10}\u{FF10}\u{FF11}",
            "REL\u{2011}0001",
            "REL\u{2010}0001",
            "REL\u{2212}0001",
            "R\u{0415}L-0001",
            "REL-0001\u{FE0F}",
            "REL-0001\u{E0041}",
            "REL 0001",
            "REL\u{00A0}0001",
            "REL-0001 ",
            "REL\t0001",
            "REL,0001",
            "REL-0001'",
            "-REL-0001",
            "/REL-0001",
            "\u{0130}REL",
        ];
        for bad in look_alikes {
            let err = SubjectId::parse("subject_id", bad).unwrap_err();
            assert_eq!(err.field, "subject_id", "{bad:?}");
            assert!(!err.problem.contains("0001"), "{bad:?} echoed: {err}");
        }
        assert!(SubjectId::parse("subject_id", &"R".repeat(SubjectId::MAX_LEN)).is_ok());
        assert!(SubjectId::parse("subject_id", &"R".repeat(SubjectId::MAX_LEN + 1)).is_err());
        // A row in the store is taken only in the one spelling.
        assert!(SubjectId::parse_stored("rel-0001").is_err());
        assert!(SubjectId::parse_stored("REL-0001").is_ok());
    }

    #[test]
    fn free_text_refuses_invisible_and_direction_characters() {
        let invisible = [
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{200E}',
            '\u{200F}',
            '\u{202A}',
            '\u{202B}',
            '\u{202C}',
            '\u{202D}',
            '\u{202E}',
            '\u{2060}',
            '\u{2061}',
            '\u{2064}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{180E}',
            '\u{061C}',
            '\u{E0001}',
            '\u{E0041}',
            '\u{E007F}',
            '\u{FE00}',
            '\u{FE0F}',
            '\u{E0100}',
            '\u{034F}',
            '\u{115F}',
            '\u{1160}',
            '\u{3164}',
            '\u{FFA0}',
            '\u{2800}',
            '\u{0600}',
            '\u{FFF9}',
            '\u{1D173}',
        ];
        for c in invisible {
            for text in [c.to_string(), format!("claim{c}"), format!("{c} pending")] {
                for need in [Need::Required, Need::Optional] {
                    let err = check_free_text("reason", &text, "reason", 1024, need)
                        .expect_err(&format!("{:04X} accepted", u32::from(c)));
                    assert_eq!(err.field, "reason");
                    assert!(err.problem.contains("invisible"), "{err}");
                }
            }
            let err = AccessContext::parse(
                "context",
                "nuisance",
                &format!("N-1{c}"),
                "case work",
                "",
                false,
                &Channels::default(),
            )
            .unwrap_err();
            assert_eq!(err.field, "context.case_ref", "{:04X}", u32::from(c));
            let err = AccessContext::parse(
                "context",
                "nuisance",
                "N-1",
                &c.to_string(),
                "",
                true,
                &Channels::default(),
            )
            .unwrap_err();
            assert_eq!(err.field, "context.justification", "{:04X}", u32::from(c));
        }
        for control in [
            "a\nb",
            "a\rb",
            "a\u{1B}[31mb",
            "a\u{2028}b",
            "a\u{2029}b",
            "\u{0}",
        ] {
            let err = check_free_text("note", control, "note", 1024, Need::Optional).unwrap_err();
            assert!(err.problem.contains("control"), "{err}");
        }
        // Marks alone, or a mark first, show nothing: refused however the text is needed.
        for marks in [
            "\u{0301}",
            "\u{20D0}",
            " \u{0301} ",
            "\u{0301}abc",
            "\u{0903}",
        ] {
            for need in [Need::Required, Need::Optional] {
                assert!(
                    check_free_text("reason", marks, "reason", 1024, need).is_err(),
                    "{marks:?}"
                );
            }
        }
        // The twin: a mark on a letter is ordinary text.
        check_free_text(
            "reason",
            "ge\u{0301}ne\u{0301}",
            "reason",
            1024,
            Need::Required,
        )
        .unwrap();
        for blank in ["", " ", "\t", "\u{3000}", "\u{00A0} "] {
            let err = check_free_text("reason", blank, "reason", 1024, Need::Required);
            assert!(err.is_err(), "{blank:?}");
        }
        // The untouched twins pass: ordinary text, accents, other scripts, an emoji.
        for ok in [
            "claim pending",
            "Zaak 2026/17: één buurman",
            "جار مزعج",
            "😀 ok",
        ] {
            check_free_text("reason", ok, "reason", 1024, Need::Required).unwrap();
        }
        assert!(
            check_free_text("reason", &"x".repeat(1025), "reason", 1024, Need::Optional).is_err()
        );
        let ctx = AccessContext::parse(
            "context",
            "nuisance",
            "N-1",
            "  ",
            "",
            true,
            &Channels::default(),
        )
        .unwrap();
        assert_eq!(
            ctx.justification, "",
            "a blank justification is no justification"
        );
    }

    #[test]
    fn field_names_are_restricted() {
        assert!(FieldName::parse("f", "iban").is_ok());
        assert!(FieldName::parse("f", "address.city_2").is_ok());
        for bad in ["", "Iban", "1st", "a b", "naam'; drop table", "é"] {
            assert!(FieldName::parse("f", bad).is_err(), "{bad}");
        }
        assert!(FieldName::parse("f", &"a".repeat(65)).is_err());
    }

    /// Field names are kept in clear (in the record and in every audit entry that names the
    /// field), so they pass the BSN guard like any other clear string. A BSN glued to letters
    /// is a code and passes, as everywhere.
    #[test]
    fn field_names_holding_a_bsn_are_refused() {
        for bad in [
            "bsn.111222333",
            "a-111222333",
            "x_111222333",
            "ref.111.222.333",
            "note-1112-22-333",
            "b.12345672",
        ] {
            let err = FieldName::parse("fields[0].name", bad).unwrap_err();
            assert_eq!(err.field, "fields[0].name");
            assert!(err.problem.contains("BSN"), "{bad}: {err}");
            assert!(!err.problem.contains("111"), "{bad}: {err}");
        }
        for good in [
            "bsn.123456789",
            "a-123456789",
            "x_123456789",
            "a111222333",
            "note-2024-03-12",
            "address.line_2",
        ] {
            assert!(FieldName::parse("fields[0].name", good).is_ok(), "{good}");
        }
    }

    #[test]
    fn record_ids_parse_only_our_format() {
        let id = RecordId::generate();
        assert_eq!(RecordId::parse("r", id.as_str()).unwrap(), id);
        assert!(RecordId::parse("r", "rec_XYZ").is_err());
        assert!(RecordId::parse("r", "' or 1=1 --").is_err());
    }

    #[test]
    fn record_ids_issued_later_sort_later_and_differ_in_their_random_part() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |ms: u64| RecordId::generate_at(UNIX_EPOCH + Duration::from_millis(ms));
        let (a, b) = (at(1_764_000_000_000), at(1_764_000_000_001));
        assert!(a < b, "{a:?} {b:?}");
        assert_eq!(&a.as_str()[4..16], "019ab697e800");
        // Within one millisecond: the same first 12 digits, 80 random bits after them.
        let same: std::collections::HashSet<String> = (0..1000)
            .map(|_| at(1_764_000_000_000).as_str().to_owned())
            .collect();
        assert_eq!(same.len(), 1000);
        assert!(same.iter().all(|id| id.starts_with("rec_019ab697e800")));
        for id in [a, b, RecordId::generate_in_order(), RecordId::generate()] {
            assert_eq!(RecordId::parse("r", id.as_str()).unwrap(), id);
        }
    }

    #[test]
    fn a_disclosure_parses_only_with_its_texts_checked_and_named() {
        let ok =
            DisclosureInput::parse(" Politie Utrecht ", "police", "vordering art. 126nd Sv", "")
                .unwrap();
        assert_eq!(ok.recipient, "Politie Utrecht");
        assert_eq!(ok.kind, RecipientKind::Police);
        assert_eq!(ok.case_ref, "");
        let err =
            |r: &str, k: &str, b: &str, c: &str| DisclosureInput::parse(r, k, b, c).unwrap_err();
        assert_eq!(err("", "police", "b", "").field, "recipient");
        let long = err(&"x".repeat(201), "police", "b", "");
        assert_eq!(long.field, "recipient");
        assert!(long.problem.contains("200"), "{}", long.problem);
        assert_eq!(
            err("burger 111222333", "police", "b", "").field,
            "recipient"
        );
        assert_eq!(err("Van\u{202E}Dam", "police", "b", "").field, "recipient");
        let kind = err("r", "press", "b", "");
        assert_eq!(kind.field, "recipient_kind");
        assert!(
            kind.problem.contains("care-institution"),
            "{}",
            kind.problem
        );
        assert_eq!(err("r", "police", " ", "").field, "legal_basis");
        assert!(
            err("r", "police", &"x".repeat(501), "")
                .problem
                .contains("500")
        );
        assert_eq!(err("r", "police", "b", "CASE 1 ").field, "case_ref");
        assert_eq!(err("r", "police", "b", &"c".repeat(129)).field, "case_ref");
    }

    #[test]
    fn only_external_roles_make_a_read_a_disclosure() {
        for &role in Role::ALL {
            let kind = RecipientKind::of_external(role);
            match role {
                Role::Contractor => assert_eq!(kind, Some(RecipientKind::Contractor)),
                Role::Bailiff => assert_eq!(kind, Some(RecipientKind::Bailiff)),
                Role::Lawyer => assert_eq!(kind, Some(RecipientKind::Lawyer)),
                _ => assert_eq!(kind, None, "{role}"),
            }
        }
    }
}
