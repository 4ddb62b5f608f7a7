//! Identity from the organisation, end to end over TLS on 127.0.0.1: case apps by client
//! certificate, staff by OpenID Connect token (keys served by a JWKS endpoint on 127.0.0.1),
//! acting on their behalf. Certificates and signing keys are made here (rcgen, rsa).

use std::{
    io::{Read, Write},
    net::TcpListener,
    path::Path,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use kluis::{
    config::RawConfig,
    domain::{PrincipalId, Role, now_unix},
    pb::{self, vault_client::VaultClient},
    vault::tokens::TokenSpec,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
    SanType,
};
use serde_json::{Value, json};
use tonic::{
    Code, Request,
    transport::{Certificate, Channel, ClientTlsConfig, Identity as ClientIdentity},
};

use crate::common::{TestServer, audit_entries, ctx, nuisance_ctx, req, text};

const ISSUER: &str = "https://idp.corp.example/realms/corp";
const AUDIENCE: &str = "kluis";
const EMPLOYEE: &str = "3f2a9c1e-0d4b-4e8a-9a77-5c1d2e3f4a5b";
const APP_DNS: &str = "case-app.corp.example";
const BATCH_URI: &str = "spiffe://corp.example/batch";

/// A certificate and its key, PEM.
#[derive(Clone)]
struct Pem {
    cert: String,
    key: String,
}

/// The organisation's CA, the server's certificate, and client certificates.
struct Pki {
    ca: String,
    server: Pem,
    app: Pem,
    batch: Pem,
    expired_app: Pem,
    future_app: Pem,
    both: Pem,
    stranger: Pem,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// When a certificate is valid: now, in the past or in the future.
#[derive(Clone, Copy)]
enum Validity {
    Now,
    Past,
    Future,
}

fn leaf(issuer: &Issuer<'_, KeyPair>, sans: Vec<SanType>, validity: Validity) -> Pem {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    match validity {
        Validity::Now => {}
        Validity::Past => {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        Validity::Future => {
            params.not_before = rcgen::date_time_ymd(2099, 1, 1);
            params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        }
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let (ca_pem, issuer) = ca("corp CA");
        let (_, other) = ca("another CA");
        let dns = |d: &str| SanType::DnsName(d.try_into().unwrap());
        let server = leaf(
            &issuer,
            vec![
                dns("localhost"),
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
            ],
            Validity::Now,
        );
        Pki {
            ca: ca_pem,
            server,
            app: leaf(&issuer, vec![dns(APP_DNS)], Validity::Now),
            batch: leaf(
                &issuer,
                vec![SanType::URI(BATCH_URI.try_into().unwrap())],
                Validity::Now,
            ),
            expired_app: leaf(&issuer, vec![dns(APP_DNS)], Validity::Past),
            future_app: leaf(&issuer, vec![dns(APP_DNS)], Validity::Future),
            both: leaf(
                &issuer,
                vec![dns(APP_DNS), SanType::URI(BATCH_URI.try_into().unwrap())],
                Validity::Now,
            ),
            stranger: leaf(&other, vec![dns(APP_DNS)], Validity::Now),
        }
    })
}

/// A signing key of the identity provider and its public JWK.
struct SigningKey {
    kid: &'static str,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    /// The public key in PEM, for the HS256-with-the-public-key attack.
    public_pem: String,
}

fn rsa_key(kid: &'static str) -> SigningKey {
    use rsa::{
        pkcs1::EncodeRsaPrivateKey,
        pkcs8::{EncodePublicKey, LineEnding},
    };
    let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let der = private.to_pkcs1_der().unwrap();
    let public_pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let encoding = EncodingKey::from_rsa_der(der.as_bytes());
    signing_key(kid, Algorithm::RS256, encoding, public_pem)
}

fn ec_key(kid: &'static str) -> SigningKey {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let encoding = EncodingKey::from_ec_der(&key.serialize_der());
    signing_key(kid, Algorithm::ES256, encoding, key.public_key_pem())
}

fn signing_key(
    kid: &'static str,
    alg: Algorithm,
    encoding: EncodingKey,
    public_pem: String,
) -> SigningKey {
    let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    // Providers publish RSA keys without `alg` (Entra ID) so that RS256 and PS256 both verify.
    if alg == Algorithm::RS256 {
        jwk.common.key_algorithm = None;
    }
    SigningKey {
        kid,
        alg,
        encoding,
        jwk: serde_json::to_value(jwk).unwrap(),
        public_pem,
    }
}

/// The provider's keys: two RSA keys (the second published only after a rotation) and a P-256
/// key. RSA key generation is slow: made once.
struct Keys {
    rsa: SigningKey,
    rotated: SigningKey,
    ec: SigningKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa: rsa_key("rsa-1"),
        rotated: rsa_key("rsa-2"),
        ec: ec_key("ec-1"),
    })
}

fn jwks(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// Claims of a valid token for `EMPLOYEE`, who is a nuisance officer and customer service.
fn claims() -> Value {
    let now = now_unix();
    json!({
        "iss": ISSUER,
        "aud": [AUDIENCE, "account"],
        "sub": EMPLOYEE,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "preferred_username": "j.jansen",
        "realm_access": {"roles": ["kluis-nuisance", "kluis-cs", "offline_access"]},
    })
}

fn sign(key: &SigningKey, alg: Algorithm, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(key.kid.into());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

fn token(key: &SigningKey) -> String {
    sign(key, key.alg, &claims())
}

fn token_with(key: &SigningKey, change: impl FnOnce(&mut Value)) -> String {
    let mut c = claims();
    change(&mut c);
    sign(key, key.alg, &c)
}

/// A JWKS endpoint on 127.0.0.1 whose document the test changes, counting its requests.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/realms/corp/protocol/openid-connect/certs",
            listener.local_addr().unwrap()
        );
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (Arc::clone(&body), Arc::clone(&hits));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let body = b.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { url, body, hits }
    }

    fn serve(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The configuration of a housing association: the case app acts for customer service only,
/// the batch job has the analyst role of its own, `token-app` is a service with a kluis token.
fn config(dir: &Path, client_auth: &str, jwks_url: &str) -> RawConfig {
    let p = pki();
    let text = format!(
        r#"
[tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
client_auth = "{client_auth}"

[[service]]
principal = "case-app"
dns = ["{APP_DNS}"]
may_act_for = ["customer-service"]

[[service]]
principal = "batch"
uri = ["{BATCH_URI}"]
roles = ["analyst"]

[[service]]
principal = "token-app"
may_act_for = ["nuisance-officer", "customer-service"]

[[oidc]]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_url = "{jwks_url}"
roles_claim = "realm_access.roles"
display_claim = "preferred_username"
[oidc.role_map]
"kluis-nuisance" = "nuisance-officer"
"kluis-cs" = ["customer-service"]
"#,
        cert = write(dir, "server.pem", &p.server.cert),
        key = write(dir, "server.key", &p.server.key),
        ca = write(dir, "ca.pem", &p.ca),
    );
    toml::from_str(&text).unwrap()
}

/// A server with `client_auth`, whose provider publishes `published`.
async fn start(client_auth: &str, published: &[&SigningKey]) -> (TestServer, JwksServer) {
    let idp = JwksServer::start(jwks(published));
    let files = tempfile::tempdir().unwrap();
    let cfg = config(files.path(), client_auth, &idp.url);
    let server = TestServer::start_with_config(cfg).await;
    (server, idp)
}

/// A client over TLS, presenting `cert` when given.
async fn client(server: &TestServer, cert: Option<&Pem>) -> VaultClient<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki().ca))
        .domain_name("localhost");
    if let Some(c) = cert {
        tls = tls.identity(ClientIdentity::from_pem(&c.cert, &c.key));
    }
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", server.addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    VaultClient::new(channel)
}

/// A request with `x-kluis-user` and, when given, a bearer token.
fn on_behalf<T>(user: Option<&str>, bearer: Option<&str>, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(u) = user {
        r.metadata_mut().insert("x-kluis-user", u.parse().unwrap());
    }
    if let Some(b) = bearer {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {b}").parse().unwrap());
    }
    r
}

async fn who(
    client: &mut VaultClient<Channel>,
    user: Option<&str>,
    bearer: Option<&str>,
) -> Result<pb::WhoAmIResponse, tonic::Status> {
    client
        .who_am_i(on_behalf(user, bearer, pb::WhoAmIRequest {}))
        .await
        .map(tonic::Response::into_inner)
}

/// Stores a record over TLS with the kluis token of `role`; returns its id.
async fn put(
    server: &TestServer,
    role: Role,
    context: Option<pb::AccessContext>,
    subject: &str,
    fields: Vec<pb::FieldValue>,
) -> String {
    client(server, None)
        .await
        .put_record(req(
            server.token(role),
            pb::PutRecordRequest {
                context,
                subject_id: subject.into(),
                fields,
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .record_id
}

fn get_request(record_id: &str, context: Option<pb::AccessContext>) -> pb::GetRecordRequest {
    pb::GetRecordRequest {
        context,
        record_id: record_id.into(),
        fields: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_acts_for_employee_with_the_roles_both_allow() {
    let k = keys();
    let (server, _idp) = start("optional", &[&k.rsa, &k.ec]).await;
    let mut app = client(&server, Some(&pki().app)).await;
    let employee = token(&k.ec);

    let me = who(&mut app, Some(&employee), None).await.unwrap();
    assert_eq!(me.principal_id, EMPLOYEE);
    // The employee is a nuisance officer and customer service; the case app acts for customer
    // service only.
    assert_eq!(me.roles, vec!["customer-service"]);
    assert_eq!(me.service_id, "case-app");
    assert_eq!(me.employee_issuer, ISSUER);
    assert_eq!(me.employee_sub, EMPLOYEE);
    assert_eq!(me.employee_display_name, "j.jansen");
    assert!(me.token_id.starts_with("cert:"), "{}", me.token_id);

    // Allowed for customer service: the write is the employee's, through the app.
    let written = app
        .put_record(on_behalf(
            Some(&employee),
            None,
            pb::PutRecordRequest {
                context: ctx("contract", "", ""),
                subject_id: "REL-0300".into(),
                fields: vec![text("email", "contact", "a@example.nl")],
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!written.record_id.is_empty());

    // A role the service may not act for: the employee is a nuisance officer, the app is not
    // allowed to act as one.
    let nuisance = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-0301",
        vec![text(
            "complaint",
            "nuisance-evidence",
            "loud music at night",
        )],
    )
    .await;
    let denied = app
        .get_record(on_behalf(
            Some(&employee),
            None,
            get_request(&nuisance, nuisance_ctx()),
        ))
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // Both on the trail: the employee acting, the service carrying the call.
    let entries = audit_entries(&server);
    let by_app: Vec<&Value> = entries
        .iter()
        .filter(|e| e["service"] == "case-app")
        .collect();
    assert!(by_app.len() >= 2, "{entries:?}");
    for e in &by_app {
        assert_eq!(e["principal"], EMPLOYEE);
        assert_eq!(e["sub"], EMPLOYEE);
        assert_eq!(e["issuer"], ISSUER);
        assert_eq!(e["display_name"], "j.jansen");
    }
    assert!(
        by_app
            .iter()
            .any(|e| e["record"] == nuisance.as_str() && e["decision"] == "deny"),
        "{by_app:?}"
    );
    assert!(
        by_app.iter().any(|e| e["decision"] == "allow"),
        "{by_app:?}"
    );
    // No token anywhere on the trail.
    let trail = serde_json::to_string(&entries).unwrap();
    assert!(!trail.contains(&employee));
    // The configuration that granted the roles is on the trail too, from the start.
    let config = entries
        .iter()
        .find(|e| e["action"] == "identity-config")
        .unwrap();
    let summary = config["reason"].as_str().unwrap();
    assert!(
        summary.contains("service `case-app` (dns:case-app.corp.example): may act for customer-service; own roles none"),
        "{summary}"
    );
    assert!(
        summary.contains("`kluis-nuisance` → nuisance-officer"),
        "{summary}"
    );
    // Once per change: the same configuration again (a restart) adds no entry, another does.
    let recorded = |server: &TestServer| {
        audit_entries(server)
            .iter()
            .filter(|e| e["action"] == "identity-config")
            .count()
    };
    server.vault.record_identity_config(summary).unwrap();
    assert_eq!(recorded(&server), 1);
    let changed = summary.replace("may act for customer-service", "may act for analyst");
    server.vault.record_identity_config(&changed).unwrap();
    assert_eq!(recorded(&server), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_without_employee_acts_as_itself_and_is_audited_as_such() {
    let k = keys();
    let (server, _idp) = start("optional", &[&k.rsa]).await;

    // The batch job, known by a URI name, has a role of its own.
    let mut batch = client(&server, Some(&pki().batch)).await;
    let me = who(&mut batch, None, None).await.unwrap();
    assert_eq!(me.principal_id, "batch");
    assert_eq!(me.roles, vec!["analyst"]);
    assert_eq!(me.service_id, "batch");
    assert!(me.employee_sub.is_empty());

    // The case app has none: alone it may do nothing, and the refusal is on the trail.
    let mut app = client(&server, Some(&pki().app)).await;
    let me = who(&mut app, None, None).await.unwrap();
    assert_eq!(me.principal_id, "case-app");
    assert!(me.roles.is_empty());
    let id = put(
        &server,
        Role::CustomerService,
        ctx("contract", "", ""),
        "REL-0310",
        vec![text("email", "contact", "b@example.nl")],
    )
    .await;
    let denied = app
        .get_record(on_behalf(
            None,
            None,
            get_request(&id, ctx("contract", "", "")),
        ))
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let entries = audit_entries(&server);
    let entry = entries
        .iter()
        .find(|e| e["principal"] == "case-app" && e["record"] == id.as_str())
        .unwrap();
    assert_eq!(entry["service"], "case-app");
    assert_eq!(entry["decision"], "deny");
    assert!(entry.get("sub").is_none(), "{entry}");

    // A certificate naming two services identifies neither.
    let mut both = client(&server, Some(&pki().both)).await;
    let ambiguous = who(&mut both, None, None).await.unwrap_err();
    assert_eq!(ambiguous.code(), Code::Unauthenticated, "{ambiguous:?}");
    assert!(
        ambiguous.message().contains("two services"),
        "{ambiguous:?}"
    );

    // A certificate and an `authorization` header together are refused: one identity per call.
    let both = who(&mut app, None, Some(server.token(Role::Analyst)))
        .await
        .unwrap_err();
    assert_eq!(both.code(), Code::Unauthenticated, "{both:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kluis_service_token_acts_for_employee() {
    let k = keys();
    let (server, _idp) = start("optional", &[&k.rsa]).await;
    let service_token = server
        .vault
        .bootstrap_token(&TokenSpec {
            principal: PrincipalId::parse("p", "token-app").unwrap(),
            roles: vec![Role::Analyst],
            ttl_secs: 3600,
            scope_subject: None,
        })
        .unwrap()
        .token
        .expose_secret()
        .to_owned();
    let mut c = client(&server, None).await;
    for alg in [Algorithm::RS256, Algorithm::PS256] {
        let employee = sign(&k.rsa, alg, &claims());
        let me = who(&mut c, Some(&employee), Some(&service_token))
            .await
            .unwrap();
        assert_eq!(me.principal_id, EMPLOYEE, "{alg:?}");
        assert_eq!(me.roles, vec!["nuisance-officer", "customer-service"]);
        assert_eq!(me.service_id, "token-app");
        assert!(me.token_id.starts_with("tok_"));
    }
    // Alone, the service token acts with its own roles, as the service.
    let me = who(&mut c, None, Some(&service_token)).await.unwrap();
    assert_eq!(me.principal_id, "token-app");
    assert_eq!(me.roles, vec!["analyst"]);
    assert_eq!(me.service_id, "token-app");
    // A kluis token of a principal that is no `[[service]]` may not act for anyone.
    let employee = token(&k.rsa);
    let refused = who(&mut c, Some(&employee), Some(server.token(Role::Analyst)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("[[service]]"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn employee_token_is_a_bearer_token_for_one_person() {
    let k = keys();
    let (server, _idp) = start("optional", &[&k.rsa]).await;
    let mut c = client(&server, None).await;
    let me = who(&mut c, None, Some(&token(&k.rsa))).await.unwrap();
    assert_eq!(me.principal_id, EMPLOYEE);
    assert_eq!(me.roles, vec!["nuisance-officer", "customer-service"]);
    assert!(me.service_id.is_empty());
    assert_eq!(me.employee_display_name, "j.jansen");
    assert_eq!(me.token_id, "jwt");
    // A kluis token still works beside it, without a certificate (`client_auth = "optional"`).
    let me = who(&mut c, None, Some(server.token(Role::Analyst)))
        .await
        .unwrap();
    assert_eq!(me.roles, vec!["analyst"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_token_without_a_service_is_unauthenticated() {
    let k = keys();
    let (server, _idp) = start("optional", &[&k.rsa]).await;
    let mut c = client(&server, None).await;
    let employee = token(&k.rsa);
    // No service at all.
    let alone = who(&mut c, Some(&employee), None).await.unwrap_err();
    assert_eq!(alone.code(), Code::Unauthenticated, "{alone:?}");
    assert!(alone.message().contains("x-kluis-user"), "{alone:?}");
    // An employee's token as the "service".
    let other = token_with(&k.rsa, |c| c["sub"] = json!("someone-else"));
    let not_a_service = who(&mut c, Some(&employee), Some(&other))
        .await
        .unwrap_err();
    assert_eq!(
        not_a_service.code(),
        Code::Unauthenticated,
        "{not_a_service:?}"
    );
    // A certificate from the right CA that names no service is no service either.
    let mut stranger = client(&server, Some(&pki().server)).await;
    let unnamed = who(&mut stranger, Some(&employee), None).await.unwrap_err();
    assert_eq!(unnamed.code(), Code::Unauthenticated, "{unnamed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_employee_tokens_are_unauthenticated() {
    let k = keys();
    let (server, _idp) = start("optional", &[&k.rsa, &k.ec]).await;
    let mut app = client(&server, Some(&pki().app)).await;
    let now = now_unix();
    let valid = token(&k.rsa);
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    // Tampered: the payload gets a role claim of the attacker's choosing, the signature stays.
    let mut payload: Value = serde_json::from_slice(&B64.decode(&parts[1]).unwrap()).unwrap();
    payload["realm_access"]["roles"] = json!(["kluis-nuisance", "kluis-cs", "kluis-admin"]);
    payload["sub"] = json!("the-attacker");
    parts[1] = B64.encode(payload.to_string());
    let tampered = parts.join(".");
    // Unsigned.
    let none_header = B64.encode(json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).to_string());
    let unsigned = format!("{none_header}.{}.", B64.encode(claims().to_string()));
    // HS256 with the provider's public key as the secret.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let hs256 = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_secret(k.rsa.public_pem.as_bytes()),
    )
    .unwrap();
    // HS256 with the JWK's modulus as the secret.
    let hs256_n = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_secret(k.rsa.jwk["n"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    let mut no_kid = Header::new(Algorithm::RS256);
    no_kid.kid = None;
    let no_kid = jsonwebtoken::encode(&no_kid, &claims(), &k.rsa.encoding).unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            token_with(&k.rsa, |c| c["exp"] = json!(now - 120)),
        ),
        (
            "not yet valid",
            token_with(&k.rsa, |c| c["nbf"] = json!(now + 300)),
        ),
        (
            "issued in the future",
            token_with(&k.ec, |c| c["iat"] = json!(now + 300)),
        ),
        (
            "wrong issuer",
            token_with(&k.rsa, |c| c["iss"] = json!("https://evil.example/")),
        ),
        (
            "issuer differs in a slash",
            token_with(&k.rsa, |c| c["iss"] = json!(format!("{ISSUER}/"))),
        ),
        (
            "wrong audience",
            token_with(&k.rsa, |c| c["aud"] = json!(["account"])),
        ),
        (
            "no audience",
            token_with(&k.rsa, |c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
        ("unsigned (alg none)", unsigned),
        ("HS256 with the public key", hs256),
        ("HS256 with the modulus", hs256_n),
        ("unknown kid", sign(&k.rotated, Algorithm::RS256, &claims())),
        ("no kid", no_kid),
        ("tampered", tampered),
        ("ES256 key with RS256 alg", {
            let mut h = Header::new(Algorithm::RS256);
            h.kid = Some("ec-1".into());
            jsonwebtoken::encode(&h, &claims(), &k.rsa.encoding).unwrap()
        }),
        ("not a token", "a.b.c".into()),
    ];
    for (what, bad) in &cases {
        let refused = who(&mut app, Some(bad), None).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{what}: {refused:?}");
        assert!(
            refused.message().contains("x-kluis-user"),
            "{what}: {refused:?}"
        );
        // The message names what is wrong, never a value from the token.
        for leaked in [
            bad.as_str(),
            EMPLOYEE,
            "the-attacker",
            "j.jansen",
            "kluis-nuisance",
        ] {
            assert!(!refused.message().contains(leaked), "{what}: {refused:?}");
        }
        // The same token as the bearer of one person is refused alike.
        let mut plain = client(&server, None).await;
        let refused = who(&mut plain, None, Some(bad)).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{what}: {refused:?}");
    }
    // Within the 60 s leeway: accepted.
    let skewed = token_with(&k.rsa, |c| {
        c["exp"] = json!(now - 20);
        c["nbf"] = json!(now + 20);
        c["iat"] = json!(now + 20);
    });
    assert!(who(&mut app, Some(&skewed), None).await.is_ok());
    // Nothing refused reached the trail as an allowed call.
    assert!(
        audit_entries(&server)
            .iter()
            .all(|e| e["sub"] != "the-attacker")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_key_rotation_is_picked_up_by_one_refresh() {
    let k = keys();
    let (server, idp) = start("optional", &[&k.rsa]).await;
    assert_eq!(idp.hits(), 1, "the keys are fetched at start");
    let mut app = client(&server, Some(&pki().app)).await;
    assert!(who(&mut app, Some(&token(&k.rsa)), None).await.is_ok());
    assert_eq!(idp.hits(), 1, "a known kid needs no fetch");

    // The provider rotates: a new key, published beside the old one.
    idp.serve(jwks(&[&k.rsa, &k.rotated]));
    let me = who(&mut app, Some(&token(&k.rotated)), None).await.unwrap();
    assert_eq!(me.principal_id, EMPLOYEE);
    assert_eq!(idp.hits(), 2, "one refresh for the new kid");
    assert!(who(&mut app, Some(&token(&k.rsa)), None).await.is_ok());

    // Another unknown kid within 30 s: refused without asking the provider again.
    let unknown = sign(&k.ec, Algorithm::ES256, &claims());
    let refused = who(&mut app, Some(&unknown), None).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(idp.hits(), 2, "at most one refresh per 30 s");
    // The keys held still verify.
    assert!(who(&mut app, Some(&token(&k.rotated)), None).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificate_refuses_callers_without_one() {
    let k = keys();
    let (server, _idp) = start("required", &[&k.rsa]).await;
    let analyst = server.token(Role::Analyst).to_owned();
    let refused = |r: Result<pb::WhoAmIResponse, tonic::Status>, what: &str| {
        let e = r.unwrap_err();
        // The handshake fails: the client sees a transport error (which one depends on when it
        // notices), never a status from kluis.
        assert!(
            matches!(
                e.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ),
            "{what}: {e:?}"
        );
    };
    // No client certificate, even with a valid kluis token.
    let mut none = client(&server, None).await;
    refused(who(&mut none, None, Some(&analyst)).await, "no certificate");
    // A certificate from another CA, with the right name.
    let mut stranger = client(&server, Some(&pki().stranger)).await;
    refused(who(&mut stranger, None, None).await, "another CA");
    // An expired certificate from the right CA.
    let mut expired = client(&server, Some(&pki().expired_app)).await;
    refused(who(&mut expired, None, None).await, "expired certificate");
    // A certificate not valid yet.
    let mut future = client(&server, Some(&pki().future_app)).await;
    refused(
        who(&mut future, None, None).await,
        "not-yet-valid certificate",
    );
    // The right certificate: in.
    let mut app = client(&server, Some(&pki().app)).await;
    assert_eq!(
        who(&mut app, None, None).await.unwrap().principal_id,
        "case-app"
    );
}

#[test]
fn inconsistent_identity_configuration_is_refused_at_start() {
    let text = r#"
data_dir = "/var/lib/kluis"
[tls]
cert = "server.pem"
key = "server.key"
client_auth = "sometimes"

[[service]]
principal = "case-app"
dns = ["case-app.corp.example"]
may_act_for = ["customer-service", "janitor"]

[[service]]
principal = "keys-app"
may_act_for = ["security-officer", "nuisance-officer"]

[[oidc]]
issuer = "https://login.microsoftonline.com/tenant/v2.0"
audience = "api://kluis"
jwks_url = "http://login.microsoftonline.com/tenant/discovery/v2.0/keys"
roles_claim = "roles"
[oidc.role_map]
"Kluis.Security" = "security-officer"
"Kluis.CustomerService" = "customer-service"
"Kluis.Contractor" = "contractor"
"#;
    let raw: RawConfig = toml::from_str(text).unwrap();
    let err = raw.validate(false).unwrap_err().to_string();
    for key in [
        "`tls.client_auth`",
        "`service[0].may_act_for[1]`",
        "`service[1].may_act_for`",
        "`oidc[0].jwks_url`",
        "`oidc[0].role_map`",
        "`oidc[0].role_map.\"Kluis.Contractor\"[0]`",
        "`service`: a `[[service]]` names certificate names",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
    // Unknown keys are refused too.
    let typo = "[[oidc]]\nissuer = \"x\"\naudience = \"y\"\nroles_claims = \"roles\"\n";
    assert!(toml::from_str::<RawConfig>(typo).is_err());
}

/// The `kluis` binary at trace level with a provider (keys from a file) and a service with a
/// kluis token: valid and refused provider tokens, as bearer and in `x-kluis-user`; then no
/// token, claim value or key is in the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_provider_tokens_claim_values_or_keys() {
    use std::{
        process::{Command, Stdio},
        time::{Duration, Instant},
    };

    use kluis::pb::admin_client::AdminClient;

    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let k = keys();
    let tmp = crate::common::private_tempdir();
    let dir = tmp.path().join("data");
    let key = tmp.path().join("root.key");
    let init = Command::new(env!("CARGO_BIN_EXE_kluis"))
        .args(["init", "--json", "--data-dir"])
        .arg(&dir)
        .arg("--key-file")
        .arg(&key)
        .output()
        .unwrap();
    assert!(init.status.success());
    let init: Value = serde_json::from_slice(&init.stdout).unwrap();
    let so = init["token"].as_str().unwrap().to_owned();
    let jwks_file = write(tmp.path(), "jwks.json", &jwks(&[&k.rsa, &k.ec]));
    let config = write(
        tmp.path(),
        "kluis.toml",
        &format!(
            r#"
[[service]]
principal = "token-app"
may_act_for = ["customer-service"]

[[oidc]]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_file = "{jwks_file}"
roles_claim = "realm_access.roles"
display_claim = "preferred_username"
[oidc.role_map]
"kluis-nuisance" = "nuisance-officer"
"kluis-cs" = "customer-service"
"#
        ),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log_path = tmp.path().join("server.log");
    let server = Child(
        Command::new(env!("CARGO_BIN_EXE_kluis"))
            .args(["serve", "--config", &config, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&dir)
            .arg("--key-file")
            .arg(&key)
            .env("KLUIS_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let channel = loop {
        match Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("kluis did not come up: {e}"),
        }
    };
    let service = AdminClient::new(channel.clone())
        .issue_token(req(
            &so,
            pb::IssueTokenRequest {
                principal_id: "token-app".into(),
                roles: vec!["analyst".into()],
                ttl_seconds: 600,
                scope_subject_id: String::new(),
                justification: "the case app".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut c = VaultClient::new(channel);
    let valid = token(&k.ec);
    let me = who(&mut c, Some(&valid), Some(&service)).await.unwrap();
    assert_eq!(me.roles, vec!["customer-service"]);
    let bearer = token(&k.rsa);
    assert!(who(&mut c, None, Some(&bearer)).await.is_ok());
    let expired = token_with(&k.rsa, |c| c["exp"] = json!(now_unix() - 3600));
    let wrong_audience = token_with(&k.ec, |c| c["aud"] = json!("other"));
    let unknown = sign(&k.rotated, Algorithm::RS256, &claims());
    for bad in [&expired, &wrong_audience, &unknown] {
        assert!(who(&mut c, Some(bad), Some(&service)).await.is_err());
        assert!(who(&mut c, None, Some(bad)).await.is_err());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(server);

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("TRACE"), "trace-level lines are there");
    assert!(
        log.contains("refreshing the provider's keys") || log.contains("refreshed the provider"),
        "the refresh for the unknown kid is logged:\n{log}"
    );
    for token in [
        &valid,
        &bearer,
        &expired,
        &wrong_audience,
        &unknown,
        &service,
    ] {
        // Any of the token's three parts would do: the signature is the one that must not leak.
        for part in token.split('.') {
            assert!(!log.contains(part), "a token is in the logs");
        }
    }
    for claim in [EMPLOYEE, "j.jansen", "kluis-nuisance", "kluis-cs"] {
        assert!(!log.contains(claim), "claim value `{claim}` is in the logs");
    }
    for jwk in [&k.rsa.jwk, &k.ec.jwk] {
        for part in ["n", "x", "y"] {
            if let Some(v) = jwk[part].as_str() {
                assert!(!log.contains(v), "a provider key is in the logs");
            }
        }
    }
}
