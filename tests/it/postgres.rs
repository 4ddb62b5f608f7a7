//! kluis on PostgreSQL: the store conformance suite on a real cluster, migrations raced by
//! nodes starting at once, and a lost database answering `Unavailable`.

use kluis::store::{PgStore, StoreError, prelude::*};

use crate::pg;

#[test]
fn postgres_passes_the_conformance_suite() {
    let Some(cluster) = pg::cluster() else { return };
    let store = PgStore::connect(&cluster.database()).unwrap();
    kluis::store::conformance::run_all(&store);
}

#[test]
fn nodes_starting_at_once_migrate_once() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let stores: Vec<PgStore> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| PgStore::connect(&url).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Every node sees one schema and the others' writes.
    stores[0].set_meta("k", b"v").unwrap();
    for s in &stores {
        assert_eq!(s.meta("k").unwrap().unwrap(), b"v");
    }
    // Initialising twice at once: exactly one wins.
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = stores
            .iter()
            .map(|st| s.spawn(move || st.initialize(&[("root", vec![1])], &[])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // `k` was set before, so every one of them finds the store initialised.
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Err(StoreError::AlreadyInitialized))),
        "{outcomes:?}"
    );
}

#[test]
fn a_database_that_is_down_answers_unavailable_and_comes_back() {
    let Some(cluster) = pg::private_cluster("restart") else {
        return;
    };
    let store = PgStore::connect(&cluster.database()).unwrap();
    store.set_meta("k", b"v").unwrap();
    cluster.stop();
    match store.meta("k") {
        Err(StoreError::Unavailable(m)) => assert!(!m.is_empty()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    match store.set_meta("k", b"w") {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    cluster.start();
    // Reconnects by itself; the failed write left nothing.
    assert_eq!(store.meta("k").unwrap().unwrap(), b"v");
    store.set_meta("k", b"w").unwrap();
    assert_eq!(store.meta("k").unwrap().unwrap(), b"w");
}
