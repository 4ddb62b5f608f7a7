//! Credentials over the Admin service: only the security officer issues and revokes, tokens are
//! shown once and stored as hashes, revoked tokens stop working at once, and all of it is audited.

use kluis::{domain::Role, pb};
use tonic::Code;

use crate::common::*;

#[tokio::test]
async fn security_officer_issues_a_token_that_works_and_revokes_it() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let issued = admin
        .issue_token(req(
            server.token(Role::SecurityOfficer),
            pb::IssueTokenRequest {
                principal_id: "emp-4711".into(),
                roles: vec!["nuisance-officer".into()],
                ttl_seconds: 3600,
                scope_subject_id: String::new(),
                justification: "new colleague".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(issued.token.starts_with("kluis_"));
    assert_eq!(issued.token.len(), "kluis_".len() + 64);
    assert!(issued.pending_approval);

    // A token that reads personal data works only once a privacy officer approved it.
    let mut client = server.client().await;
    let status = client
        .who_am_i(req(&issued.token, pb::WhoAmIRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("approve"), "{}", status.message());
    approve(&server, &issued.token_id).await;
    let me = client
        .who_am_i(req(&issued.token, pb::WhoAmIRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.principal_id, "emp-4711");
    assert_eq!(me.roles, ["nuisance-officer"]);
    assert_eq!(me.token_id, issued.token_id);

    let listed = admin
        .list_tokens(req(
            server.token(Role::SecurityOfficer),
            pb::ListTokensRequest {
                include_inactive: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed
            .tokens
            .iter()
            .any(|t| t.token_id == issued.token_id && t.state == "active")
    );
    let encoded = prost::Message::encode_to_vec(&listed);
    assert!(
        !encoded
            .windows(issued.token.len())
            .any(|w| w == issued.token.as_bytes()),
        "a listing shows a token"
    );

    admin
        .revoke_token(req(
            server.token(Role::SecurityOfficer),
            pb::RevokeTokenRequest {
                token_id: issued.token_id.clone(),
                justification: "left the company".into(),
            },
        ))
        .await
        .unwrap();
    let status = client
        .who_am_i(req(&issued.token, pb::WhoAmIRequest {}))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);

    // The token itself is nowhere in the store; issue and revoke are audited.
    let db = store_file_bytes(&server.db_path());
    assert!(
        !db.windows(issued.token.len())
            .any(|w| w == issued.token.as_bytes())
    );
    let entries = audit_entries(&server);
    let issue = entries
        .iter()
        .find(|e| e["action"] == "token-issue" && e["target"] == issued.token_id.as_str())
        .unwrap();
    assert_eq!(issue["principal"], "test-security-officer");
    assert_eq!(issue["justification"], "new colleague");
    assert_eq!(issue["roles"][0], "security-officer");
    assert_eq!(
        issue["policies"][0],
        "security-officer-manages-tokens-and-keys"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "token-revoke" && e["target"] == issued.token_id.as_str())
    );
    let all = serde_json::to_string(&entries).unwrap();
    assert!(!all.contains(&issued.token));
    server.stop().await;
}

#[tokio::test]
async fn only_the_security_officer_manages_tokens() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    for role in [
        Role::NuisanceOfficer,
        Role::PrivacyOfficer,
        Role::CustomerService,
    ] {
        let status = admin
            .issue_token(req(
                server.token(role),
                pb::IssueTokenRequest {
                    principal_id: "emp-1".into(),
                    roles: vec!["security-officer".into()],
                    ..Default::default()
                },
            ))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::PermissionDenied, "{role}");
    }
    let entries = audit_entries(&server);
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["action"] == "token-issue" && e["decision"] == "deny")
            .count(),
        3
    );
    server.stop().await;
}

#[tokio::test]
async fn issue_requests_are_validated() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let so = server.token(Role::SecurityOfficer);
    let cases = [
        (
            pb::IssueTokenRequest {
                principal_id: "".into(),
                roles: vec!["analyst".into()],
                ..Default::default()
            },
            "principal_id",
        ),
        (
            pb::IssueTokenRequest {
                principal_id: "e".into(),
                roles: vec![],
                ..Default::default()
            },
            "roles",
        ),
        (
            pb::IssueTokenRequest {
                principal_id: "e".into(),
                roles: vec!["janitor".into()],
                ..Default::default()
            },
            "roles[0]",
        ),
        (
            pb::IssueTokenRequest {
                principal_id: "e".into(),
                roles: vec!["contractor".into()],
                ..Default::default()
            },
            "scope_subject_id",
        ),
        (
            pb::IssueTokenRequest {
                principal_id: "e".into(),
                roles: vec!["analyst".into()],
                ttl_seconds: 10_000 * 86_400,
                ..Default::default()
            },
            "ttl_seconds",
        ),
    ];
    for (request, field) in cases {
        let status = admin.issue_token(req(so, request)).await.err().unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field), "{}", status.message());
    }
    // Separation of duties: no combining security-officer with data roles, no self-issued tokens.
    let status = admin
        .issue_token(req(
            so,
            pb::IssueTokenRequest {
                principal_id: "emp-9".into(),
                roles: vec!["security-officer".into(), "nuisance-officer".into()],
                ..Default::default()
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("separation of duties"),
        "{}",
        status.message()
    );
    let status = admin
        .issue_token(req(
            so,
            pb::IssueTokenRequest {
                principal_id: "test-security-officer".into(),
                roles: vec!["nuisance-officer".into()],
                ..Default::default()
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("issuer"), "{}", status.message());
    let status = admin
        .revoke_token(req(
            so,
            pb::RevokeTokenRequest {
                token_id: "tok_nope".into(),
                justification: String::new(),
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}
