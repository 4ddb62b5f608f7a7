//! Rewrap rate: how many subject keys per second a rewrap moves to a new purpose key version
//! (unwrap under the old version, wrap under the new, conditional UPDATE, in batches of one
//! transaction each), next to a plain SQL UPDATE of the same rows in the same batches measured
//! in the same run.
//!
//! ```text
//! cargo bench --bench rewrap                          # 1,000,000 subject keys
//! KLUIS_BENCH_KEYS=100000 cargo bench --bench rewrap  # fewer
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::disallowed_methods,
    reason = "a benchmark binary: panics on setup failure, prints its figures, reads its size from the environment"
)]

use std::{sync::Arc, time::Instant};

use kluis::{
    crypto::Algorithm,
    domain::{Purpose, SubjectId},
    keys::{Keyring, RootSecret},
    store::{SqliteStore, prelude::*},
};
use rusqlite::params;

const BATCH: usize = 5000;

fn main() {
    // `cargo bench` passes `--bench`; any other argument (a filter) is ignored.
    let n: usize = std::env::var("KLUIS_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kluis.db");
    let store = Arc::new(SqliteStore::open(&db).unwrap());
    let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
    Keyring::initialize(store.as_ref(), &secret, Algorithm::Aes256Gcm).unwrap();
    let keyring = Keyring::unseal(store.clone(), &secret, Algorithm::Aes256Gcm, 0).unwrap();
    let purpose = Purpose::Contract;

    let setup = Instant::now();
    let mut conn = rusqlite::Connection::open(&db).unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(50_000) {
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO subject_keys (subject, purpose, generation, purpose_version, wrapped, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .unwrap();
            for &i in chunk {
                let subject = SubjectId::parse("s", &format!("REL-{i:08}")).unwrap();
                let (row, _) = keyring.new_subject_key(&subject, purpose, 1).unwrap();
                insert
                    .execute(params![
                        row.subject,
                        row.purpose,
                        row.generation,
                        row.purpose_version,
                        row.wrapped,
                        row.created_at
                    ])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    println!(
        "setup: {n} subject keys wrapped under {purpose} v1 in {:.1?}",
        setup.elapsed()
    );

    // Baseline: the same rows, the same batches, a plain UPDATE without any cryptography.
    let subjects: Vec<String> = (0..n).map(|i| format!("REL-{i:08}")).collect();
    let start = Instant::now();
    for chunk in subjects.chunks(BATCH) {
        let tx = conn.transaction().unwrap();
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE subject_keys SET wrapped = wrapped, purpose_version = purpose_version
                     WHERE subject = ?1 AND purpose = ?2 AND generation = 1",
                )
                .unwrap();
            for s in chunk {
                update.execute(params![s, purpose.as_str()]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let baseline = start.elapsed();

    keyring.rotate(purpose, None).unwrap();
    let start = Instant::now();
    let mut moved = 0usize;
    loop {
        let (done, found) = keyring.rewrap_batch(purpose, BATCH).unwrap();
        moved += done;
        if found == 0 {
            break;
        }
    }
    let rewrap = start.elapsed();
    assert_eq!(moved, n);
    let remaining: u64 = store
        .subject_key_counts(purpose.as_str())
        .unwrap()
        .iter()
        .filter(|(v, _)| *v == 1)
        .map(|(_, c)| c)
        .sum();
    assert_eq!(remaining, 0);

    let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64();
    println!(
        "plain SQL update : {:>10.0} rows/s ({baseline:.2?})",
        rate(baseline)
    );
    println!(
        "rewrap           : {:>10.0} keys/s ({rewrap:.2?})",
        rate(rewrap)
    );
    println!(
        "ratio rewrap / plain update: {:.2}",
        rate(rewrap) / rate(baseline)
    );
}
