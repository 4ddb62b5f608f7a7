//! OpenID Connect tokens from the organisation's identity provider: validation (RS256, PS256 and
//! ES256 only, `kid` required, `exp`, `nbf` and `iat` within 60 s, exact issuer, audience
//! contained in `aud`) and the provider's key set, cached.
//!
//! Invariant: the key set is fetched at start and, for a `kid` it does not hold, at most once per
//! `REFRESH_INTERVAL` per provider, with a `FETCH_TIMEOUT`; a failed or empty fetch keeps the last
//! good set. No other request path touches the network.
//! Invariant: no token, claim value or key appears in an error, a log line or `Debug` output;
//! errors name the claim or header, never its value.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use serde_json::Value;

use crate::domain::{PrincipalId, Role, now_unix};

/// The least time between two refreshes of one provider's keys for an unknown `kid`.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// How long a key fetch may take, at start or in a request.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 60;
/// Largest key set accepted, in bytes.
const MAX_JWKS_BYTES: u64 = 1024 * 1024;
/// Longest display claim kept for the audit trail, in characters.
const MAX_DISPLAY_CHARS: usize = 200;
/// The only signature algorithms accepted.
pub const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256];

/// Where a provider's keys come from.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum JwksSource {
    /// A JWKS document on disk (re-read on refresh).
    File(PathBuf),
    /// The provider's `jwks_uri`: `https://`, or `http://` to a loopback address only.
    Url(String),
}

/// One validated `[[oidc]]` table.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// The configuration key, e.g. `oidc[0]`, for messages.
    pub key: String,
    /// `iss`, compared exactly.
    pub issuer: String,
    /// The audience `aud` must contain.
    pub audience: String,
    /// Where the keys come from.
    pub jwks: JwksSource,
    /// The claim carrying roles or groups, as a path (`realm_access.roles` is two steps).
    pub roles_claim: Vec<String>,
    /// The claim whose value is the principal id (default `sub`).
    pub principal_claim: String,
    /// The claim shown on the audit trail as the person's name, when configured.
    pub display_claim: Option<String>,
    /// Claim values to kluis roles.
    pub role_map: BTreeMap<String, Vec<Role>>,
}

/// A person established by a valid token. No `Debug`: it holds claim values.
pub struct Verified {
    /// The issuer.
    pub issuer: String,
    /// `sub`.
    pub sub: String,
    /// The principal id from `principal_claim`.
    pub principal: PrincipalId,
    /// The display claim, when configured and present.
    pub display: Option<String>,
    /// The kluis roles the role map gives the person's claim values.
    pub roles: Vec<Role>,
    /// `exp`, unix seconds.
    pub expires_at: i64,
}

/// Why a token was refused: a sentence naming what is wrong, never a value from the token.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

/// A public key from the provider and the algorithms it may verify.
struct Key {
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// Keys by `kid`.
type KeySet = HashMap<String, Arc<Key>>;

/// A provider with its cached key set.
pub struct Provider {
    config: ProviderConfig,
    keys: RwLock<Arc<KeySet>>,
    /// When a request last refreshed the keys for an unknown `kid`.
    last_refresh: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.config.issuer)
            .field("audience", &self.config.audience)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// The provider with its keys fetched now. A failed fetch is logged and leaves the set empty
    /// until the first refresh: the vault starts when the provider is down.
    pub fn load(config: ProviderConfig) -> Self {
        let keys = match fetch(&config.jwks) {
            Ok(set) => set,
            Err(e) => {
                tracing::error!(provider = %config.key, issuer = %config.issuer, error = %e, "cannot load the provider's keys; tokens of this issuer are refused until a refresh succeeds");
                KeySet::new()
            }
        };
        Self {
            config,
            keys: RwLock::new(Arc::new(keys)),
            last_refresh: Mutex::new(None),
        }
    }

    /// The provider with the keys of a JWKS document, fetching nothing (the fuzz checks).
    pub(crate) fn with_jwks(config: ProviderConfig, jwks: &str) -> Self {
        Self {
            config,
            keys: RwLock::new(Arc::new(parse_jwks(jwks).unwrap_or_default())),
            // No refresh for an unknown `kid` (the source is not read) for a year.
            last_refresh: Mutex::new(Some(
                Instant::now()
                    .checked_add(Duration::from_secs(86_400 * 365))
                    .unwrap_or_else(Instant::now),
            )),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// Whether a token with these (unverified) claims is meant for this provider: its issuer
    /// and audience.
    pub fn accepts(&self, iss: Option<&str>, aud: Option<&Value>) -> bool {
        iss == Some(self.config.issuer.as_str()) && audience_contains(aud, &self.config.audience)
    }

    /// Validates `token` (whose header is `header`) and maps its claims.
    pub fn verify(&self, token: &str, alg: Algorithm, kid: &str) -> Result<Verified, TokenError> {
        let key = self.key(kid).ok_or_else(|| {
            TokenError(format!(
                "the token's `kid` is not among the keys of issuer `{}` (they are refreshed at \
                 most every {} s); ask the provider's administrator whether the key was rotated",
                self.config.issuer,
                REFRESH_INTERVAL.as_secs()
            ))
        })?;
        if !key.algorithms.contains(&alg) {
            return Err(TokenError(
                "the token's `alg` does not match the algorithm of its key".into(),
            ));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation)
            .map_err(|e| TokenError(refusal(e.kind()).into()))?;
        let claims = data.claims;
        let iat = claims.get("iat").and_then(seconds).ok_or_else(|| {
            TokenError("the token has no `iat` claim (a number of seconds)".into())
        })?;
        let leeway = i64::try_from(LEEWAY_SECS).unwrap_or(60);
        if iat > now_unix().saturating_add(leeway) {
            return Err(TokenError(
                "the token was issued in the future (`iat`); check the clocks".into(),
            ));
        }
        let expires_at = claims.get("exp").and_then(seconds).unwrap_or(0);
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TokenError("the token's `sub` claim is empty".into()))?
            .to_owned();
        let principal_claim = &self.config.principal_claim;
        let principal = claims
            .get(principal_claim)
            .and_then(Value::as_str)
            .and_then(|v| PrincipalId::parse(principal_claim, v).ok())
            .ok_or_else(|| {
                TokenError(format!(
                    "the token's `{principal_claim}` claim is missing or not a usable principal \
                     id (`{}.principal_claim`)",
                    self.config.key
                ))
            })?;
        let display = self
            .config
            .display_claim
            .as_ref()
            .and_then(|c| claims.get(c))
            .and_then(Value::as_str)
            .map(|s| {
                s.chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_DISPLAY_CHARS)
                    .collect::<String>()
            })
            .filter(|s| !s.trim().is_empty());
        let roles = self.roles(&claims);
        Ok(Verified {
            issuer: self.config.issuer.clone(),
            sub,
            principal,
            display,
            roles,
            expires_at,
        })
    }

    /// The kluis roles for the values of `roles_claim` (a string or an array of strings);
    /// values the map does not name give nothing.
    fn roles(&self, claims: &Value) -> Vec<Role> {
        let mut at = Some(claims);
        for step in &self.config.roles_claim {
            at = at.and_then(|v| v.get(step));
        }
        let values: Vec<&str> = match at {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let mut roles = Vec::new();
        for v in values {
            for role in self.config.role_map.get(v).into_iter().flatten() {
                if !roles.contains(role) {
                    roles.push(*role);
                }
            }
        }
        roles
    }

    /// The key `kid`, refreshing the set once when it is unknown and the last such refresh is
    /// `REFRESH_INTERVAL` ago.
    fn key(&self, kid: &str) -> Option<Arc<Key>> {
        if let Some(k) = self.current().get(kid) {
            return Some(Arc::clone(k));
        }
        self.refresh_for(kid, Instant::now(), || fetch(&self.config.jwks))
    }

    fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// One refresh for an unknown `kid` at `now`, rate-limited; requests that arrive meanwhile
    /// wait for it (at most `FETCH_TIMEOUT`) and then look again.
    fn refresh_for(
        &self,
        kid: &str,
        now: Instant,
        fetch: impl FnOnce() -> Result<KeySet, String>,
    ) -> Option<Arc<Key>> {
        let mut last = self
            .last_refresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(k) = self.current().get(kid) {
            return Some(Arc::clone(k));
        }
        if last.is_some_and(|t| now.saturating_duration_since(t) < REFRESH_INTERVAL) {
            return None;
        }
        *last = Some(now);
        match fetch() {
            Ok(set) if !set.is_empty() => {
                tracing::info!(provider = %self.config.key, issuer = %self.config.issuer, keys = set.len(), "refreshed the provider's keys");
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
            }
            Ok(_) => {
                tracing::warn!(provider = %self.config.key, issuer = %self.config.issuer, "the provider's key set holds no usable key; the last good set stays");
            }
            Err(e) => {
                tracing::warn!(provider = %self.config.key, issuer = %self.config.issuer, error = %e, "refreshing the provider's keys failed; the last good set stays");
            }
        }
        self.current().get(kid).map(Arc::clone)
    }
}

/// A NumericDate in whole seconds (an integer, or a number with a fraction, which RFC 7519
/// allows).
fn seconds(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && f.abs() < 1e15)
            .map(|f| f.trunc() as i64)
    })
}

/// Whether the unverified `aud` (a string or an array of strings) holds `audience`.
pub fn audience_contains(aud: Option<&Value>, audience: &str) -> bool {
    match aud {
        Some(Value::String(s)) => s == audience,
        Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(audience)),
        _ => false,
    }
}

/// What the caller is told for a failed validation.
fn refusal(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired (`exp`)",
        ErrorKind::ImmatureSignature => "the token is not valid yet (`nbf`)",
        ErrorKind::InvalidSignature => "the token's signature does not verify",
        ErrorKind::InvalidIssuer => "the token's `iss` is not the configured issuer",
        ErrorKind::InvalidAudience => "the token's `aud` does not contain the configured audience",
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => "the token has no `exp` claim",
            "aud" => "the token has no `aud` claim",
            "iss" => "the token has no `iss` claim",
            _ => "the token has no `sub` claim",
        },
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "the token's `alg` must be RS256, PS256 or ES256"
        }
        _ => "the token is malformed",
    }
}

/// Reads the key set from its source.
fn fetch(source: &JwksSource) -> Result<KeySet, String> {
    let text = match source {
        JwksSource::File(path) => {
            let len = std::fs::metadata(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
                .len();
            if len > MAX_JWKS_BYTES {
                return Err(format!(
                    "`{}` is larger than {MAX_JWKS_BYTES} bytes",
                    path.display()
                ));
            }
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
        }
        JwksSource::Url(url) => {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(FETCH_TIMEOUT))
                .proxy(None)
                .max_redirects(0)
                .build()
                .into();
            let mut response = agent
                .get(url)
                .call()
                .map_err(|e| format!("GET `{url}`: {e}"))?;
            response
                .body_mut()
                .with_config()
                .limit(MAX_JWKS_BYTES)
                .read_to_string()
                .map_err(|e| format!("GET `{url}`: {e}"))?
        }
    };
    parse_jwks(&text)
}

/// The usable signing keys of a JWKS document: RSA (RS256, PS256) and P-256 (ES256) keys with a
/// `kid`, for signing; other keys are skipped.
fn parse_jwks(text: &str) -> Result<KeySet, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }
    let doc: Document = serde_json::from_str(text)
        .map_err(|e| format!("not a JWKS document (an object with `keys`): {e}"))?;
    let mut set = KeySet::new();
    for value in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            continue;
        }
        let (decoding, mut algorithms) = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => match DecodingKey::from_rsa_components(&p.n, &p.e) {
                Ok(k) => (k, vec![Algorithm::RS256, Algorithm::PS256]),
                Err(_) => continue,
            },
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                match DecodingKey::from_ec_components(&p.x, &p.y) {
                    Ok(k) => (k, vec![Algorithm::ES256]),
                    Err(_) => continue,
                }
            }
            _ => continue,
        };
        if let Some(alg) = jwk.common.key_algorithm {
            let named = match alg {
                KeyAlgorithm::RS256 => Algorithm::RS256,
                KeyAlgorithm::PS256 => Algorithm::PS256,
                KeyAlgorithm::ES256 => Algorithm::ES256,
                _ => continue,
            };
            algorithms.retain(|a| *a == named);
            if algorithms.is_empty() {
                continue;
            }
        }
        set.insert(
            kid,
            Arc::new(Key {
                decoding,
                algorithms,
            }),
        );
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    const EC_JWKS: &str = r#"{"keys":[
        {"kty":"EC","crv":"P-256","kid":"one","use":"sig",
         "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
         "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        {"kty":"oct","kid":"secret","k":"c2VjcmV0"},
        {"kty":"EC","crv":"P-384","kid":"big","x":"AAAA","y":"AAAA"},
        {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"}
    ]}"#;

    fn provider() -> Provider {
        Provider {
            config: ProviderConfig {
                key: "oidc[0]".into(),
                issuer: "https://idp.example".into(),
                audience: "kluis".into(),
                jwks: JwksSource::File(PathBuf::from("/nonexistent")),
                roles_claim: vec!["realm_access".into(), "roles".into()],
                principal_claim: "sub".into(),
                display_claim: None,
                role_map: BTreeMap::from([
                    ("cs".into(), vec![Role::CustomerService]),
                    ("nuisance".into(), vec![Role::NuisanceOfficer]),
                ]),
            },
            keys: RwLock::new(Arc::new(KeySet::new())),
            last_refresh: Mutex::new(None),
        }
    }

    #[test]
    fn jwks_keeps_only_signing_keys_kluis_accepts() {
        let set = parse_jwks(EC_JWKS).unwrap();
        assert_eq!(set.keys().collect::<Vec<_>>(), vec!["one"]);
        assert!(parse_jwks("{}").is_err());
    }

    #[test]
    fn unknown_kid_refreshes_at_most_once_per_interval() {
        let p = provider();
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let fetch = || {
            calls.set(calls.get() + 1);
            parse_jwks(EC_JWKS)
        };
        assert!(p.refresh_for("one", t0, fetch).is_some());
        assert_eq!(calls.get(), 1);
        // Known now: no fetch.
        assert!(p.refresh_for("one", t0, || unreachable!()).is_some());
        // Unknown within the interval: no fetch.
        assert!(
            p.refresh_for("two", t0 + Duration::from_secs(29), fetch)
                .is_none()
        );
        assert_eq!(calls.get(), 1);
        assert!(p.refresh_for("two", t0 + REFRESH_INTERVAL, fetch).is_none());
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn failed_or_empty_refresh_keeps_the_last_good_keys() {
        let p = provider();
        let t0 = Instant::now();
        assert!(p.refresh_for("one", t0, || parse_jwks(EC_JWKS)).is_some());
        let later = t0 + REFRESH_INTERVAL;
        assert!(p.refresh_for("x", later, || Err("down".into())).is_none());
        assert!(p.current().contains_key("one"));
        let later = later + REFRESH_INTERVAL;
        assert!(
            p.refresh_for("x", later, || parse_jwks(r#"{"keys":[]}"#))
                .is_none()
        );
        assert!(p.current().contains_key("one"));
    }

    #[test]
    fn roles_follow_the_claim_path_and_ignore_unmapped_values() {
        let p = provider();
        let claims = serde_json::json!({"realm_access": {"roles": ["cs", "other", "cs"]}});
        assert_eq!(p.roles(&claims), vec![Role::CustomerService]);
        let claims = serde_json::json!({"realm_access": {"roles": "nuisance"}});
        assert_eq!(p.roles(&claims), vec![Role::NuisanceOfficer]);
        assert!(p.roles(&serde_json::json!({"roles": ["cs"]})).is_empty());
    }

    #[test]
    fn numeric_dates_may_carry_a_fraction() {
        assert_eq!(
            seconds(&serde_json::json!(1_795_000_000)),
            Some(1_795_000_000)
        );
        assert_eq!(
            seconds(&serde_json::json!(1_795_000_000.7)),
            Some(1_795_000_000)
        );
        assert_eq!(seconds(&serde_json::json!("1795000000")), None);
        assert_eq!(seconds(&serde_json::json!(1e300)), None);
    }

    #[test]
    fn audience_may_be_a_string_or_an_array() {
        let one = serde_json::json!("kluis");
        let many = serde_json::json!(["x", "kluis"]);
        assert!(audience_contains(Some(&one), "kluis"));
        assert!(audience_contains(Some(&many), "kluis"));
        assert!(!audience_contains(Some(&many), "kluis2"));
        assert!(!audience_contains(None, "kluis"));
    }
}
