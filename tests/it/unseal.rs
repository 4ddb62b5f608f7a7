//! The root key: a wrong passphrase is refused at start-up with a clear error, the right one
//! opens the store after a restart and all data reads back.

use kluis::{
    config::OpenError,
    crypto::Algorithm,
    domain::Role,
    keys::{KeyError, RootSecret},
};
use zeroize::Zeroizing;

use crate::common::*;

fn passphrase(p: &str) -> RootSecret {
    RootSecret::Passphrase(Zeroizing::new(p.to_owned()))
}

#[tokio::test]
async fn wrong_passphrase_is_refused_and_right_one_reads_everything_back() {
    let tmp = crate::common::private_tempdir();
    let dir = tmp.path();
    init_store(
        dir,
        &passphrase("correct horse battery staple"),
        Algorithm::XChaCha20Poly1305,
    );

    let mut server = TestServer::open(dir, &passphrase("correct horse battery staple"))
        .await
        .unwrap();
    server.issue_role_tokens();
    let id = put(
        &server,
        Role::AdaptationAdvisor,
        ctx("home-adaptation", "WA-1", "stairlift"),
        "REL-0700",
        vec![
            text("diagnosis", "medical", "needs a stairlift"),
            text("phone", "contact", "06-12121212"),
        ],
    )
    .await;
    let token = server.token(Role::AdaptationAdvisor).to_owned();
    server.stop().await;

    let err = TestServer::open(dir, &passphrase("correct horse battery stapl"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, OpenError::Key(KeyError::WrongRootKey)),
        "{err}"
    );
    assert!(err.to_string().contains("wrong passphrase"), "{err}");

    let key_file = RootSecret::create_key_file(&dir.join("other.key")).unwrap();
    let err = TestServer::open(dir, &key_file).await.err().unwrap();
    assert!(
        err.to_string().contains("initialised with a passphrase"),
        "{err}"
    );

    let server = TestServer::open(dir, &passphrase("correct horse battery staple"))
        .await
        .unwrap();
    let resp = get(
        &server,
        &token,
        ctx("home-adaptation", "WA-1", "follow-up"),
        &id,
    )
    .await
    .unwrap();
    assert_eq!(
        text_of(field(&resp, "diagnosis").unwrap()),
        "needs a stairlift"
    );
    assert_eq!(text_of(field(&resp, "phone").unwrap()), "06-12121212");
    server.stop().await;
}

#[tokio::test]
async fn key_file_store_survives_restart() {
    let tmp = crate::common::private_tempdir();
    let dir = tmp.path();
    let key_path = dir.join("root.key");
    init_store(
        dir,
        &RootSecret::create_key_file(&key_path).unwrap(),
        Algorithm::Aes256Gcm,
    );
    let mut server = TestServer::open(dir, &RootSecret::read_key_file(&key_path).unwrap())
        .await
        .unwrap();
    server.issue_role_tokens();
    let id = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-0701",
        vec![text("phone", "contact", "06-3")],
    )
    .await;
    let token = server.token(Role::NuisanceOfficer).to_owned();
    server.stop().await;
    let server = TestServer::open(dir, &RootSecret::read_key_file(&key_path).unwrap())
        .await
        .unwrap();
    let resp = get(&server, &token, nuisance_ctx(), &id).await.unwrap();
    assert_eq!(text_of(&resp.fields[0]), "06-3");
    server.stop().await;
}
