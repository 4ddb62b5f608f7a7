//! The kluis nodes under load and the store they share: one node on SQLite in the temporary
//! directory (the default), or one or more nodes on one PostgreSQL database, each opened as
//! `kluis serve --store URL` opens it (configuration, store, unsealed keyring, policies). Every
//! node has the load benchmark's settings: no request rate limit, room in the key cache for
//! every subject key.

use std::{path::Path, sync::Arc};

use kluis::{
    config::{RawConfig, RawLimits},
    crypto::Algorithm,
    domain::Limits,
    keys::{Keyring, RootSecret},
    policy::Engine,
    search::{RawSearch, SearchConfig},
    store::SqliteStore,
    vault::{RetentionTable, Vault},
};

/// The field `FindRecords` searches: the name on every nuisance record, unique per subject, under
/// the tag width the load run is given (or plans).
pub const SEARCHED: &str = "name";

fn search(tag_bits: u8) -> SearchConfig {
    SearchConfig::default().with(kluis::domain::Purpose::Nuisance, &[SEARCHED], tag_bits)
}

/// Unwrapped subject keys a node keeps: all of them, at the sizes this benchmark runs.
const KEY_CACHE: usize = 1_000_000;

/// Where kluis keeps its data.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum StoreKind {
    /// A SQLite file in the temporary directory.
    Sqlite,
    /// A database on the benchmark's throwaway PostgreSQL cluster.
    Postgres,
}

impl StoreKind {
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// One node on a new SQLite store in `dir`, initialised with `secret`, keeping `read_cache_mib`
/// of records read between reads.
pub fn sqlite(dir: &Path, secret: &RootSecret, tag_bits: u8, read_cache_mib: usize) -> Arc<Vault> {
    let store = Arc::new(
        SqliteStore::open_with_cache(&dir.join("kluis.db"), read_cache_mib * 1024 * 1024).unwrap(),
    );
    Keyring::initialize(store.as_ref(), secret, Algorithm::Aes256Gcm).unwrap();
    let limits = Limits {
        requests_per_second: 0,
        ..Limits::default()
    };
    Arc::new(
        Vault::new(
            store.clone(),
            Keyring::unseal(store.clone(), secret, Algorithm::Aes256Gcm, KEY_CACHE).unwrap(),
            Engine::default_policies().unwrap(),
            RetentionTable::default(),
            limits,
        )
        .unwrap()
        .with_search(search(tag_bits)),
    )
}

/// `nodes` nodes on the empty PostgreSQL database `url`, which the first initialises with
/// `secret`; each node has a data directory of its own under `dir`.
pub fn postgres(
    url: &str,
    dir: &Path,
    secret: &RootSecret,
    nodes: usize,
    tag_bits: u8,
) -> Vec<Arc<Vault>> {
    let config = |data_dir: &Path| {
        RawConfig {
            data_dir: Some(data_dir.to_owned()),
            store: Some(url.to_owned()),
            key_cache_size: Some(KEY_CACHE),
            search: Some(std::collections::BTreeMap::from([(
                "nuisance".to_owned(),
                RawSearch {
                    fields: vec![SEARCHED.to_owned()],
                    tag_bits: Some(tag_bits),
                    types: None,
                },
            )])),
            limits: Some(RawLimits {
                requests_per_second: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        }
        .validate(false)
        .unwrap()
    };
    (0..nodes)
        .map(|n| {
            let data_dir = dir.join(format!("node-{n}"));
            kluis::config::create_private_dir(&data_dir).unwrap();
            let config = config(&data_dir);
            if n == 0 {
                let store = kluis::config::open_configured_store(
                    &data_dir,
                    config.store.as_ref(),
                    config.read_cache_mib,
                )
                .unwrap();
                Keyring::initialize(store.as_ref(), secret, Algorithm::Aes256Gcm).unwrap();
            }
            Arc::new(kluis::config::open_vault(&config, secret).unwrap())
        })
        .collect()
}
