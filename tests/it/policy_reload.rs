//! Hot reload of the policy set: a valid set takes effect without a restart, an invalid one is
//! refused with Cedar's errors and the old set stays in force; each reload is audited.

use kluis::{domain::Role, pb, policy::DEFAULT_POLICIES};
use tonic::Code;

use crate::common::*;

/// A server deciding by a policy file of its own (the default policies to begin with), with a
/// contact record customer service may read under them.
struct Reloadable {
    _tmp: tempfile::TempDir,
    file: std::path::PathBuf,
    server: TestServer,
    id: String,
}

impl Reloadable {
    async fn start(subject: &str) -> Self {
        let tmp = crate::common::private_tempdir();
        let file = tmp.path().join("policies.cedar");
        std::fs::write(&file, DEFAULT_POLICIES).unwrap();
        let server = TestServer::start_with_policies(vec![file.clone()]).await;
        let id = put(
            &server,
            Role::CustomerService,
            ctx("contract", "", ""),
            subject,
            vec![text("email", "contact", "p@example.nl")],
        )
        .await;
        Self {
            _tmp: tmp,
            file,
            server,
            id,
        }
    }

    async fn read(&self) -> Result<pb::GetRecordResponse, tonic::Status> {
        get(
            &self.server,
            self.server.token(Role::CustomerService),
            ctx("contract", "", ""),
            &self.id,
        )
        .await
    }

    fn reload(&self) -> tonic::Request<pb::ReloadPoliciesRequest> {
        req(
            self.server.token(Role::SecurityOfficer),
            pb::ReloadPoliciesRequest {},
        )
    }
}

#[tokio::test]
async fn reload_applies_a_valid_set_and_keeps_the_old_one_on_errors() {
    let case = Reloadable::start("REL-P1").await;
    let (file, server) = (&case.file, &case.server);
    let read = || case.read();
    read().await.unwrap();
    let mut admin = server.admin().await;
    let reload = || case.reload();

    // Unchanged set: reloads, nothing changes.
    let same = admin.reload_policies(reload()).await.unwrap().into_inner();
    assert!(!same.changed);

    // An invalid set is refused with the Cedar error; the old set keeps deciding.
    std::fs::write(file, format!("{DEFAULT_POLICIES}\n@id(\"broken\") permit(principal, action, resource) when {{ resource.colour == 1 }};")).unwrap();
    let status = admin.reload_policies(reload()).await.err().unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("colour"), "{}", status.message());
    read().await.unwrap();

    // A valid stricter set takes effect at once, without a restart.
    forbid_contract_reads(file);
    let changed = admin.reload_policies(reload()).await.unwrap().into_inner();
    assert!(changed.changed);
    assert_eq!(changed.digest.len(), 64);
    let status = read().await.err().unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("no-contract-reads-by-customer-service"),
        "{}",
        status.message()
    );

    // Only the security and privacy officers reload; every reload is on the trail.
    let status = admin
        .reload_policies(req(
            server.token(Role::NuisanceOfficer),
            pb::ReloadPoliciesRequest {},
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    let entries = audit_entries(server);
    let change = entries
        .iter()
        .find(|e| e["action"] == "policy-change" && e["principal"] == "test-security-officer")
        .unwrap();
    assert_eq!(change["target"], format!("sha256:{}", changed.digest));
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "policy-reload" && e["decision"] == "deny")
    );
    case.server.stop().await;
}

/// A reload the store refuses (here a trigger added to the database file by hand, which makes
/// kluis refuse every write outside the trail) leaves the old set in force, and the trail says
/// so: the entry that announced the change is followed by one saying it was not carried out.
#[tokio::test]
async fn a_reload_the_store_refuses_is_on_the_trail_as_not_carried_out() {
    let case = Reloadable::start("REL-P2").await;
    let (file, server) = (&case.file, &case.server);
    let read = || case.read();
    let mut admin = server.admin().await;
    let reload = || case.reload();
    let file_db = rusqlite::Connection::open(server.db_path()).unwrap();
    file_db
        .execute_batch("CREATE TRIGGER keep_meta BEFORE UPDATE ON meta BEGIN SELECT 1; END;")
        .unwrap();

    forbid_contract_reads(file);
    let status = admin.reload_policies(reload()).await.err().unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    let entries = audit_entries(server);
    read().await.expect("the old set stays in force");
    assert_eq!(
        last_decisions(&entries, 2),
        [("policy-change", "allow"), ("policy-change", "deny")]
    );
    let refused = &entries[entries.len() - 1];
    assert_eq!(refused["principal"], "test-security-officer");
    assert_eq!(refused["target"], entries[entries.len() - 2]["target"]);
    let reason = refused["reason"].as_str().unwrap();
    assert!(reason.starts_with("not carried out: "), "{reason}");
    assert!(reason.ends_with("the old set stays in force"), "{reason}");

    // The trigger gone, the same reload goes through.
    file_db.execute_batch("DROP TRIGGER keep_meta").unwrap();
    let changed = admin.reload_policies(reload()).await.unwrap().into_inner();
    assert!(changed.changed);
    assert_eq!(read().await.err().unwrap().code(), Code::PermissionDenied);
    case.server.stop().await;
}
