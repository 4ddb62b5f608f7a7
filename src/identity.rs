//! Identity the organisation already has: case apps by their client certificate (mutual TLS,
//! `[[service]]`), staff by their identity provider's OpenID Connect token (`[[oidc]]`), and the
//! two together: a service acting on behalf of the employee at the screen, who sends the
//! employee's token in `x-kluis-user`. Turns what a caller presented into one `Principal`.
//!
//! Invariant: on behalf of an employee, the roles are the employee's mapped roles that the
//! service `may_act_for`, never more; a service's own roles never apply to an employee's call.
//! Invariant: an employee's token is taken in `x-kluis-user` only from an authenticated service.
//! Invariant: no configuration that would let one identity hold `security-officer` and another
//! role, or a role bound to one subject, passes `IdentityConfig::validate`.
//! Invariant: never logs, returns in an error or prints in `Debug` a token, a claim value or a
//! key. Knows neither gRPC nor SQL: `api` hands in the credentials.

pub mod oidc;

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{
    domain::{Employee, Principal, PrincipalId, Role, check_roles},
    vault::{Vault, VaultError, tokens::BearerToken},
};

pub use oidc::{JwksSource, Provider, ProviderConfig};

/// The metadata key that carries the employee's token when a service calls on their behalf.
pub const USER_METADATA: &str = "x-kluis-user";

/// `[[service]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// The service's principal id (also the principal of its kluis token, when it has one).
    pub principal: String,
    /// Certificate DNS names (SAN `dNSName`) that identify it.
    #[serde(default)]
    pub dns: Vec<String>,
    /// Certificate URIs (SAN `uniformResourceIdentifier`, e.g. a SPIFFE id) that identify it.
    #[serde(default)]
    pub uri: Vec<String>,
    /// The roles it may act for on behalf of an employee.
    #[serde(default)]
    pub may_act_for: Vec<String>,
    /// Its own roles when it calls with no employee (a batch job); none by default.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// `[[oidc]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    /// The issuer (`iss`), compared exactly.
    pub issuer: String,
    /// The audience `aud` must contain.
    pub audience: String,
    /// A JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// The provider's `jwks_uri`.
    pub jwks_url: Option<String>,
    /// The claim carrying roles or groups; dots walk into objects (`realm_access.roles`).
    pub roles_claim: String,
    /// The claim whose value is the principal id (default `sub`).
    pub principal_claim: Option<String>,
    /// The claim written to the audit trail as the person's name (e.g. `preferred_username`).
    pub display_claim: Option<String>,
    /// Claim values to kluis roles: `"kluis-cs" = "customer-service"` or a list.
    #[serde(default)]
    pub role_map: BTreeMap<String, OneOrMany>,
}

/// A role or a list of roles in `role_map`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One role.
    One(String),
    /// Several roles.
    Many(Vec<String>),
}

/// A case app or job, known by its certificate names or its kluis token's principal.
#[derive(Clone, Debug)]
pub struct Service {
    /// Its principal id.
    pub principal: PrincipalId,
    /// Certificate DNS names, lower case.
    pub dns: Vec<String>,
    /// Certificate URIs.
    pub uri: Vec<String>,
    /// The roles it may act for.
    pub may_act_for: Vec<Role>,
    /// Its own roles (a batch job).
    pub roles: Vec<Role>,
}

/// The validated `[[service]]` and `[[oidc]]` tables.
#[derive(Clone, Debug, Default)]
pub struct IdentityConfig {
    /// The services.
    pub services: Vec<Service>,
    /// The identity providers.
    pub providers: Vec<ProviderConfig>,
}

impl IdentityConfig {
    /// Validates the tables, pushing every problem, each naming its key, onto `problems`.
    pub fn validate(
        services: Vec<RawService>,
        oidc: Vec<RawOidc>,
        problems: &mut Vec<String>,
    ) -> Self {
        let mut out = Self::default();
        for (i, raw) in services.into_iter().enumerate() {
            if let Some(s) = validate_service(i, raw, &out.services, problems) {
                out.services.push(s);
            }
        }
        for (i, raw) in oidc.into_iter().enumerate() {
            if let Some(p) = validate_oidc(i, raw, &out.providers, problems) {
                out.providers.push(p);
            }
        }
        out
    }
}

fn parse_roles(key: &str, names: &[String], problems: &mut Vec<String>) -> Vec<Role> {
    let mut roles = Vec::new();
    for (j, name) in names.iter().enumerate() {
        match name.parse::<Role>() {
            Ok(r) if r.is_subject_bound() => problems.push(format!(
                "`{key}[{j}]`: `{r}` is bound to one subject and is given only as a kluis token \
                 scoped to that subject (`kluis admin token issue --scope-subject`)"
            )),
            Ok(r) => {
                if !roles.contains(&r) {
                    roles.push(r);
                }
            }
            Err(e) => problems.push(format!("`{key}[{j}]`: {e}")),
        }
    }
    roles
}

/// `security-officer` together with any other role, which `check_roles` never allows one
/// principal to hold.
fn separation_problem(key: &str, roles: &[Role], why: &str) -> Option<String> {
    (roles.contains(&Role::SecurityOfficer) && roles.len() > 1).then(|| {
        format!(
            "`{key}`: gives `security-officer` and other roles ({}){why}; separation of duties: \
             whoever manages keys and credentials never reads personal data",
            roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

fn validate_service(
    i: usize,
    raw: RawService,
    seen: &[Service],
    problems: &mut Vec<String>,
) -> Option<Service> {
    let key = format!("service[{i}]");
    let before = problems.len();
    let principal = match PrincipalId::parse(&format!("{key}.principal"), &raw.principal) {
        Ok(p) => Some(p),
        Err(e) => {
            problems.push(format!("`{key}.principal`: {}", e.problem));
            None
        }
    };
    if let Some(p) = &principal
        && seen.iter().any(|s| &s.principal == p)
    {
        problems.push(format!(
            "`{key}.principal`: `{p}` is named by an earlier `[[service]]`; one table per service"
        ));
    }
    let dns: Vec<String> = raw.dns.iter().map(|d| d.to_ascii_lowercase()).collect();
    for (j, d) in dns.iter().enumerate() {
        if d.is_empty() || d.contains(char::is_whitespace) {
            problems.push(format!("`{key}.dns[{j}]`: not a DNS name"));
        } else if seen.iter().any(|s| s.dns.contains(d)) {
            problems.push(format!(
                "`{key}.dns[{j}]`: `{d}` already identifies an earlier `[[service]]`"
            ));
        }
    }
    for (j, u) in raw.uri.iter().enumerate() {
        if !u.contains(':') || u.contains(char::is_whitespace) {
            problems.push(format!(
                "`{key}.uri[{j}]`: not a URI (e.g. `spiffe://corp.example/case-app`)"
            ));
        } else if seen.iter().any(|s| s.uri.contains(u)) {
            problems.push(format!(
                "`{key}.uri[{j}]`: `{u}` already identifies an earlier `[[service]]`"
            ));
        }
    }
    let may_act_for = parse_roles(&format!("{key}.may_act_for"), &raw.may_act_for, problems);
    problems.extend(separation_problem(
        &format!("{key}.may_act_for"),
        &may_act_for,
        ": an employee holding both would act in both through it",
    ));
    let roles = parse_roles(&format!("{key}.roles"), &raw.roles, problems);
    if !roles.is_empty()
        && let Err(e) = check_roles(&roles, None)
    {
        problems.push(format!("`{key}.roles`: {}", e.problem));
    }
    if roles.contains(&Role::SecurityOfficer) && !may_act_for.is_empty() {
        problems.push(format!(
            "`{key}`: a service holding `security-officer` (`roles`) acts for no employee \
             (`may_act_for`); separation of duties: give the key jobs a service of their own"
        ));
    }
    if problems.len() > before {
        return None;
    }
    Some(Service {
        principal: principal?,
        dns,
        uri: raw.uri,
        may_act_for,
        roles,
    })
}

fn validate_oidc(
    i: usize,
    raw: RawOidc,
    seen: &[ProviderConfig],
    problems: &mut Vec<String>,
) -> Option<ProviderConfig> {
    let key = format!("oidc[{i}]");
    let before = problems.len();
    if raw.issuer.trim().is_empty() || raw.issuer.trim() != raw.issuer {
        problems.push(format!(
            "`{key}.issuer`: give the issuer exactly as the provider's tokens carry it in `iss`"
        ));
    }
    if raw.audience.trim().is_empty() {
        problems.push(format!(
            "`{key}.audience`: give the audience kluis's tokens carry in `aud` (the client id \
             or application id URI of the API registration)"
        ));
    }
    if seen
        .iter()
        .any(|p| p.issuer == raw.issuer && p.audience == raw.audience)
    {
        problems.push(format!(
            "`{key}`: issuer `{}` with audience `{}` is configured twice",
            raw.issuer, raw.audience
        ));
    }
    let jwks = match (raw.jwks_file, raw.jwks_url) {
        (Some(f), None) => Some(JwksSource::File(f)),
        (None, Some(u)) => match check_jwks_url(&u) {
            Ok(()) => Some(JwksSource::Url(u)),
            Err(e) => {
                problems.push(format!("`{key}.jwks_url`: {e}"));
                None
            }
        },
        _ => {
            problems.push(format!(
                "`{key}`: give exactly one of `jwks_file` and `jwks_url` (the provider's \
                 `jwks_uri` from `<issuer>/.well-known/openid-configuration`)"
            ));
            None
        }
    };
    let roles_claim: Vec<String> = raw.roles_claim.split('.').map(str::to_owned).collect();
    if roles_claim.iter().any(String::is_empty) {
        problems.push(format!(
            "`{key}.roles_claim`: name the claim that carries roles or groups, e.g. `roles`, \
             `groups` or `realm_access.roles`"
        ));
    }
    let principal_claim = raw.principal_claim.unwrap_or_else(|| "sub".into());
    if principal_claim.is_empty() {
        problems.push(format!("`{key}.principal_claim`: name a claim, e.g. `sub`"));
    }
    if raw.role_map.is_empty() {
        problems.push(format!(
            "`{key}.role_map`: map at least one claim value to a kluis role, e.g. \
             `[oidc.role_map] \"kluis-customer-service\" = \"customer-service\"`"
        ));
    }
    let mut role_map = BTreeMap::new();
    let mut all = Vec::new();
    for (value, roles) in raw.role_map {
        let names = match roles {
            OneOrMany::One(r) => vec![r],
            OneOrMany::Many(rs) => rs,
        };
        let roles = parse_roles(&format!("{key}.role_map.\"{value}\""), &names, problems);
        if let Some(p) = separation_problem(&format!("{key}.role_map.\"{value}\""), &roles, "") {
            problems.push(p);
        }
        for r in &roles {
            if !all.contains(r) {
                all.push(*r);
            }
        }
        role_map.insert(value, roles);
    }
    if all.len() > 1
        && let Some(p) = separation_problem(
            &format!("{key}.role_map"),
            &all,
            ": one person holding both claim values would get both; sign security officers in \
             through a provider entry of their own (another audience)",
        )
    {
        problems.push(p);
    }
    if problems.len() > before {
        return None;
    }
    Some(ProviderConfig {
        key,
        issuer: raw.issuer,
        audience: raw.audience,
        jwks: jwks?,
        roles_claim,
        principal_claim,
        display_claim: raw.display_claim.filter(|c| !c.is_empty()),
        role_map,
    })
}

/// `https://`, or `http://` to a loopback address (a provider on the same host, or a test).
fn check_jwks_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    if let Some(rest) = url.strip_prefix("http://") {
        let host = rest.split(['/', '?']).next().unwrap_or_default();
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        };
        if matches!(host, "127.0.0.1" | "[::1]" | "localhost") {
            return Ok(());
        }
    }
    Err(format!(
        "`{url}` is not `https://`; plain `http://` is accepted for a loopback address only"
    ))
}

/// A client certificate's names, as the TLS layer verified it (chain to `[tls] client_ca`,
/// validity).
#[derive(Clone, Debug)]
pub struct PeerCertificate {
    /// SAN DNS names, lower case.
    pub dns: Vec<String>,
    /// SAN URIs.
    pub uri: Vec<String>,
    /// `notAfter`, unix seconds.
    pub not_after: i64,
    /// `cert:` and the first 16 hex digits of the certificate's SHA-256.
    pub id: String,
}

impl PeerCertificate {
    /// Reads the names of a DER certificate, or `None` when it cannot be read.
    pub fn parse(der: &[u8]) -> Option<Self> {
        use x509_cert::{
            der::{Decode, oid::AssociatedOid},
            ext::pkix::{SubjectAltName, name::GeneralName},
        };
        let cert = x509_cert::Certificate::from_der(der).ok()?;
        let tbs = &cert.tbs_certificate;
        let mut dns = Vec::new();
        let mut uri = Vec::new();
        for ext in tbs.extensions.iter().flatten() {
            if ext.extn_id != SubjectAltName::OID {
                continue;
            }
            let san = SubjectAltName::from_der(ext.extn_value.as_bytes()).ok()?;
            for name in san.0 {
                match name {
                    GeneralName::DnsName(d) => dns.push(d.as_str().to_ascii_lowercase()),
                    GeneralName::UniformResourceIdentifier(u) => uri.push(u.as_str().to_owned()),
                    _ => {}
                }
            }
        }
        let not_after =
            i64::try_from(tbs.validity.not_after.to_unix_duration().as_secs()).unwrap_or(i64::MAX);
        let digest = Sha256::digest(der);
        let id = format!("cert:{}", hex::encode(digest.get(..8).unwrap_or_default()));
        Some(Self {
            dns,
            uri,
            not_after,
            id,
        })
    }

    fn names(&self) -> String {
        let names: Vec<String> = self
            .dns
            .iter()
            .map(|d| format!("dns:{d}"))
            .chain(self.uri.iter().map(|u| format!("uri:{u}")))
            .collect();
        if names.is_empty() {
            "no DNS or URI names".into()
        } else {
            names.join(", ")
        }
    }
}

/// What a caller presented: taken from the request by `api`, judged here.
#[derive(Debug, Default)]
pub struct Credentials {
    /// `authorization: Bearer`: a kluis token or an OpenID Connect token.
    pub bearer: Option<BearerToken>,
    /// `x-kluis-user`: the employee's OpenID Connect token.
    pub user: Option<BearerToken>,
    /// The verified client certificate.
    pub peer: Option<PeerCertificate>,
    /// Told when the caller is authenticated.
    pub authenticated: CallMark,
}

impl Credentials {
    /// Whether judging these may wait on the network: an OpenID Connect token (as `bearer` or
    /// as the employee's `user` token) whose provider's key is not cached yet is fetched. A
    /// kluis token and a client certificate alone are judged from the store.
    pub fn may_fetch_keys(&self) -> bool {
        self.user.is_some()
            || self.bearer.as_ref().is_some_and(|b| {
                !b.expose_secret()
                    .starts_with(crate::vault::tokens::TOKEN_PREFIX)
            })
    }
}

/// A call's mark that its caller was authenticated, put on each request by the server's
/// metering layer: the connection caps keep a place for connections whose callers had a
/// credential (`server::accept`).
#[derive(Clone, Default)]
pub struct CallMark(Option<std::sync::Arc<MarkFn>>);

/// What a `CallMark` runs, with the principal's id.
type MarkFn = dyn Fn(&str) + Send + Sync;

impl CallMark {
    /// A mark that runs `set` with the principal's id when the caller is authenticated.
    pub fn new(set: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self(Some(std::sync::Arc::new(set)))
    }

    fn set(&self, principal: &str) {
        if let Some(set) = &self.0 {
            set(principal);
        }
    }
}

impl std::fmt::Debug for CallMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallMark")
    }
}

/// The configured services and providers, with the providers' keys.
#[derive(Debug, Default)]
pub struct Identity {
    services: Vec<Service>,
    providers: Vec<Provider>,
}

impl Identity {
    /// Nothing configured: kluis tokens only.
    pub fn none() -> Self {
        Self::default()
    }

    /// The configured identity, with each provider's keys fetched now (a provider that cannot
    /// be reached is logged and refreshed on its first token).
    pub fn load(config: &IdentityConfig) -> Self {
        Self {
            services: config.services.clone(),
            providers: config
                .providers
                .iter()
                .cloned()
                .map(Provider::load)
                .collect(),
        }
    }

    /// Whether nothing is configured (kluis tokens only).
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.providers.is_empty()
    }

    /// The configuration in force, for the audit trail: each service with its certificate
    /// names, the roles it may act for and its own roles; each provider with its issuer,
    /// audience and role map. Configuration only, never a key.
    pub fn summary(&self) -> String {
        let roles = |rs: &[Role]| {
            if rs.is_empty() {
                "none".to_owned()
            } else {
                rs.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
            }
        };
        let mut lines = Vec::new();
        for s in &self.services {
            let names: Vec<String> = s
                .dns
                .iter()
                .map(|d| format!("dns:{d}"))
                .chain(s.uri.iter().map(|u| format!("uri:{u}")))
                .collect();
            lines.push(format!(
                "service `{}` ({}): may act for {}; own roles {}",
                s.principal,
                if names.is_empty() {
                    "kluis token only".to_owned()
                } else {
                    names.join(", ")
                },
                roles(&s.may_act_for),
                roles(&s.roles)
            ));
        }
        for p in &self.providers {
            let c = p.config();
            let map: Vec<String> = c
                .role_map
                .iter()
                .map(|(value, rs)| format!("`{value}` → {}", roles(rs)))
                .collect();
            lines.push(format!(
                "{} `{}` audience `{}`, roles from `{}`: {}",
                c.key,
                c.issuer,
                c.audience,
                c.roles_claim.join("."),
                map.join("; ")
            ));
        }
        lines.join("\n")
    }

    /// Establishes who called. See README, "Identity from the organisation", for each refusal.
    pub fn authenticate(
        &self,
        vault: &Vault,
        creds: &Credentials,
    ) -> Result<Principal, VaultError> {
        let principal = self.judge(vault, creds)?;
        creds.authenticated.set(principal.id.as_str());
        Ok(principal)
    }

    fn judge(&self, vault: &Vault, creds: &Credentials) -> Result<Principal, VaultError> {
        // Whoever calls: a node whose root key another node replaced serves nobody.
        vault.check_root_current()?;
        let unauthenticated = |m: String| {
            crate::metrics::auth_failure("on-behalf");
            VaultError::Unauthenticated(m)
        };
        let by_cert = match &creds.peer {
            Some(peer) => self.service_for(peer)?,
            None => None,
        };
        if let Some((service, peer)) = by_cert {
            if creds.bearer.is_some() {
                return Err(unauthenticated(format!(
                    "the client certificate identifies service `{}`; send no `authorization` \
                     with it (an employee's token goes in `{USER_METADATA}`)",
                    service.principal
                )));
            }
            let key = format!("{}/{}", peer.id, service.principal);
            return match &creds.user {
                Some(user) => {
                    let employee = self.verify(user.expose_secret(), USER_METADATA)?;
                    vault.admit(&format!("{key}/{}", employee.principal))?;
                    on_behalf(service, &peer.id, peer.not_after, employee)
                }
                None => {
                    vault.admit(&key)?;
                    Principal::organisational(
                        service.principal.clone(),
                        service.roles.clone(),
                        peer.id.clone(),
                        peer.not_after,
                        Some(service.principal.clone()),
                        None,
                    )
                    .map_err(|e| VaultError::Denied(e.to_string()))
                }
            };
        }
        let Some(bearer) = &creds.bearer else {
            return Err(unauthenticated(match (&creds.user, &creds.peer) {
                (Some(_), Some(peer)) => format!(
                    "`{USER_METADATA}` is taken only from an authenticated service, and the \
                     client certificate ({}) names no `[[service]]`; add its name to the \
                     service's `dns` or `uri`",
                    peer.names()
                ),
                (Some(_), None) => format!(
                    "`{USER_METADATA}` is taken only from an authenticated service: a client \
                     certificate named in a `[[service]]` table, or a kluis service token in \
                     `authorization`"
                ),
                (None, Some(peer)) => format!(
                    "missing credentials: the client certificate ({}) names no `[[service]]`; \
                     add its name to a `[[service]]` table or send `authorization: Bearer \
                     <token>` metadata",
                    peer.names()
                ),
                (None, None) => "missing credentials: send `authorization: Bearer <token>` \
                                 metadata or a client certificate"
                    .into(),
            }));
        };
        let token = bearer.expose_secret();
        if looks_like_jwt(token) {
            if creds.user.is_some() {
                return Err(unauthenticated(format!(
                    "`{USER_METADATA}` is taken only from an authenticated service; the \
                     `authorization` token is an employee's, not a service's"
                )));
            }
            let employee = self.verify(token, "authorization")?;
            vault.admit(&format!("jwt:{}/{}", employee.issuer, employee.principal))?;
            let expires_at = employee.expires_at;
            return Principal::organisational(
                employee.principal,
                employee.roles,
                "jwt",
                expires_at,
                None,
                Some(Employee {
                    issuer: employee.issuer,
                    sub: employee.sub,
                    display: employee.display,
                }),
            )
            .map_err(|e| VaultError::Denied(e.to_string()));
        }
        let mut principal = vault.authenticate(bearer)?;
        let Some(user) = &creds.user else {
            // A service calling on its own with its kluis token is audited as the service.
            if self.services.iter().any(|s| s.principal == principal.id) {
                principal.service = Some(principal.id.clone());
            }
            return Ok(principal);
        };
        let Some(service) = self.services.iter().find(|s| s.principal == principal.id) else {
            return Err(VaultError::Denied(format!(
                "principal `{}` is not a configured `[[service]]` and may not act for an \
                 employee (`{USER_METADATA}`)",
                principal.id
            )));
        };
        if principal.scope_subject.is_some() || principal.roles.contains(&Role::SecurityOfficer) {
            return Err(VaultError::Denied(format!(
                "token `{}` is bound to one subject or carries `security-officer`, and acts for \
                 no employee (`{USER_METADATA}`); give the service a token of its own",
                principal.token_id
            )));
        }
        let employee = self.verify(user.expose_secret(), USER_METADATA)?;
        on_behalf(service, &principal.token_id, principal.expires_at, employee)
    }

    /// The service a certificate names; a certificate that names two services identifies
    /// neither.
    fn service_for<'a>(
        &'a self,
        peer: &'a PeerCertificate,
    ) -> Result<Option<(&'a Service, &'a PeerCertificate)>, VaultError> {
        let mut named = self.services.iter().filter(|s| {
            s.dns.iter().any(|d| peer.dns.contains(d)) || s.uri.iter().any(|u| peer.uri.contains(u))
        });
        let first = named.next();
        if let (Some(a), Some(b)) = (first, named.next()) {
            crate::metrics::auth_failure("certificate");
            return Err(VaultError::Unauthenticated(format!(
                "the client certificate ({}) names two services, `{}` and `{}`; give each \
                 service a certificate of its own",
                peer.names(),
                a.principal,
                b.principal
            )));
        }
        Ok(first.map(|s| (s, peer)))
    }

    /// A provider whose P-256 key `one` is known and whose private key is not: for the fuzz
    /// checks, which send it anything and expect nothing to authenticate.
    pub(crate) fn for_fuzzing() -> Self {
        const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"one","use":"sig",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let config = ProviderConfig {
            key: "oidc[0]".into(),
            issuer: "https://idp.example".into(),
            audience: "kluis".into(),
            jwks: JwksSource::File(PathBuf::new()),
            roles_claim: vec!["roles".into()],
            principal_claim: "sub".into(),
            display_claim: Some("name".into()),
            role_map: BTreeMap::from([("cs".into(), vec![Role::CustomerService])]),
        };
        Self {
            services: Vec::new(),
            providers: vec![Provider::with_jwks(config, JWKS)],
        }
    }

    /// Validates an OpenID Connect token sent in `key`.
    pub(crate) fn verify(&self, token: &str, key: &str) -> Result<oidc::Verified, VaultError> {
        let refuse = |m: &str| {
            crate::metrics::auth_failure("provider-token");
            VaultError::Unauthenticated(format!("`{key}`: {m}"))
        };
        if self.providers.is_empty() {
            return Err(refuse(
                "an OpenID Connect token, but no `[[oidc]]` provider is configured",
            ));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            refuse("not a signed JWT with an algorithm kluis accepts (RS256, PS256, ES256)")
        })?;
        if !oidc::ALGORITHMS.contains(&header.alg) {
            return Err(refuse("the token's `alg` must be RS256, PS256 or ES256"));
        }
        let Some(kid) = header.kid.as_deref().filter(|k| !k.is_empty()) else {
            return Err(refuse("the token has no `kid` in its header"));
        };
        let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| refuse("the token is malformed"))?;
        let iss = claims.get("iss").and_then(serde_json::Value::as_str);
        let aud = claims.get("aud");
        let provider = self
            .providers
            .iter()
            .find(|p| p.accepts(iss, aud))
            .ok_or_else(|| {
                match self
                    .providers
                    .iter()
                    .find(|p| Some(p.config().issuer.as_str()) == iss)
                {
                    Some(p) => refuse(&format!(
                        "the token's `aud` does not contain `{}`, the audience of `{}` for \
                         its issuer",
                        p.config().audience,
                        p.config().key
                    )),
                    None => refuse(
                        "the token's `iss` is not the `issuer` of any `[[oidc]]` table (it is \
                         compared exactly; Entra ID v1 tokens carry `https://sts.windows.net/…`)",
                    ),
                }
            })?;
        provider
            .verify(token, header.alg, kid)
            .map_err(|e| refuse(&e.0))
    }
}

/// The principal of `service` acting for `employee`: the employee's roles the service may act
/// for.
fn on_behalf(
    service: &Service,
    credential: &str,
    service_expires_at: i64,
    employee: oidc::Verified,
) -> Result<Principal, VaultError> {
    let roles: Vec<Role> = employee
        .roles
        .iter()
        .copied()
        .filter(|r| service.may_act_for.contains(r))
        .collect();
    Principal::organisational(
        employee.principal,
        roles,
        credential,
        service_expires_at.min(employee.expires_at),
        Some(service.principal.clone()),
        Some(Employee {
            issuer: employee.issuer,
            sub: employee.sub,
            display: employee.display,
        }),
    )
    .map_err(|e| VaultError::Denied(e.to_string()))
}

/// A compact JWS (three base64url parts), not a kluis token.
fn looks_like_jwt(token: &str) -> bool {
    !token.starts_with(crate::vault::tokens::TOKEN_PREFIX) && token.split('.').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oidc(role_map: &[(&str, &[&str])]) -> RawOidc {
        RawOidc {
            issuer: "https://idp.example/realms/corp".into(),
            audience: "kluis".into(),
            jwks_file: Some("/etc/kluis/jwks.json".into()),
            jwks_url: None,
            roles_claim: "realm_access.roles".into(),
            principal_claim: None,
            display_claim: None,
            role_map: role_map
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        OneOrMany::Many(v.iter().map(|s| (*s).to_owned()).collect()),
                    )
                })
                .collect(),
        }
    }

    fn service(may_act_for: &[&str], roles: &[&str]) -> RawService {
        RawService {
            principal: "case-app".into(),
            dns: vec!["case-app.corp.example".into()],
            uri: Vec::new(),
            may_act_for: may_act_for.iter().map(|s| (*s).to_owned()).collect(),
            roles: roles.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn problems(services: Vec<RawService>, oidc: Vec<RawOidc>) -> Vec<String> {
        let mut p = Vec::new();
        IdentityConfig::validate(services, oidc, &mut p);
        p
    }

    #[test]
    fn role_map_giving_security_officer_and_another_role_is_refused() {
        let p = problems(
            Vec::new(),
            vec![oidc(&[
                ("sec", &["security-officer"]),
                ("cs", &["customer-service"]),
            ])],
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("`oidc[0].role_map`"), "{p:?}");
        let p = problems(
            Vec::new(),
            vec![oidc(&[("x", &["security-officer", "privacy-officer"])])],
        );
        assert!(
            p.iter().any(|m| m.contains("separation of duties")),
            "{p:?}"
        );
        assert!(problems(Vec::new(), vec![oidc(&[("sec", &["security-officer"])])]).is_empty());
    }

    #[test]
    fn unknown_and_subject_bound_roles_are_refused_by_key() {
        let p = problems(
            vec![service(&["customer-service", "janitor"], &["contractor"])],
            vec![oidc(&[("x", &["bailiff"])])],
        );
        assert!(
            p.iter().any(|m| m.contains("`service[0].may_act_for[1]`")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.contains("`service[0].roles[0]`")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.contains("`oidc[0].role_map.\"x\"[0]`")),
            "{p:?}"
        );
    }

    #[test]
    fn service_acting_for_security_officer_and_data_roles_is_refused() {
        let p = problems(
            vec![service(&["security-officer", "nuisance-officer"], &[])],
            Vec::new(),
        );
        assert!(
            p.iter().any(|m| m.contains("`service[0].may_act_for`")),
            "{p:?}"
        );
        assert!(
            problems(
                vec![service(&["nuisance-officer"], &["analyst"])],
                Vec::new()
            )
            .is_empty()
        );
    }

    #[test]
    fn service_holding_security_officer_acts_for_nobody() {
        let p = problems(
            vec![service(&["customer-service"], &["security-officer"])],
            Vec::new(),
        );
        assert!(
            p.iter()
                .any(|m| m.contains("`service[0]`: a service holding")),
            "{p:?}"
        );
        assert!(problems(vec![service(&[], &["security-officer"])], Vec::new()).is_empty());
    }

    #[test]
    fn one_certificate_name_identifies_one_service() {
        let mut second = service(&[], &[]);
        second.principal = "other".into();
        let p = problems(vec![service(&[], &[]), second], Vec::new());
        assert!(p.iter().any(|m| m.contains("`service[1].dns[0]`")), "{p:?}");
    }

    #[test]
    fn credentials_never_print_their_tokens() {
        let creds = Credentials {
            bearer: Some(BearerToken::new("kluis_secret-bearer".into())),
            user: Some(BearerToken::new("eyJhbGciOi.secret-user.sig".into())),
            peer: None,
            authenticated: CallMark::default(),
        };
        let shown = format!("{creds:?}");
        assert!(!shown.contains("secret"), "{shown}");
        let employee = Employee {
            issuer: "https://idp.example".into(),
            sub: "secret-sub".into(),
            display: Some("secret name".into()),
        };
        let shown = format!("{employee:?}");
        assert!(
            shown.contains("idp.example") && !shown.contains("secret"),
            "{shown}"
        );
    }

    #[test]
    fn jwks_url_must_be_https_or_loopback() {
        assert!(check_jwks_url("https://login.microsoftonline.com/t/discovery/v2.0/keys").is_ok());
        assert!(check_jwks_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_jwks_url("http://localhost/jwks").is_ok());
        assert!(check_jwks_url("http://idp.corp.example/jwks").is_err());
        assert!(check_jwks_url("http://127.0.0.1.evil.example/jwks").is_err());
        let mut o = oidc(&[("cs", &["customer-service"])]);
        o.jwks_url = Some("https://idp.example/certs".into());
        let p = problems(Vec::new(), vec![o]);
        assert!(p.iter().any(|m| m.contains("exactly one of")), "{p:?}");
    }
}
