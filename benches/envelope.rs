//! Envelope encryption: sealing and opening field values of typical sizes with both algorithms,
//! against the bare AEAD call as the baseline measured in the same run (the envelope's own cost
//! is the header, the associated data and the allocation). And a subject key as a request gets
//! it: from the keyring's cache, and without it (read from the store and unwrapped under its
//! purpose key).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs,
    reason = "benchmark code; criterion macros generate undocumented functions"
)]

use aes_gcm::{
    Aes256Gcm,
    aead::{Aead, KeyInit, Payload},
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;

use kluis::{
    crypto::{self, AadContext, Algorithm},
    domain::{Purpose, SubjectId},
    keys::{Keyring, RootSecret},
    store::SqliteStore,
};

const SIZES: &[usize] = &[32, 1024, 64 * 1024];

fn field_aad() -> Vec<u8> {
    crypto::aad(&AadContext::Field {
        subject: "REL-0001",
        record: "rec_0123456789abcdef0123456789abcdef",
        field: "diagnosis",
        category: "medical",
        purpose: "home-adaptation",
        kind: "text",
        version: "0123456789abcdef0123456789abcdef",
    })
}

fn seal_open(c: &mut Criterion) {
    let key = [7u8; 32];
    let subject_key = kluis::crypto::SubjectKey::from_bytes(&key);
    let aad = field_aad();
    let mut group = c.benchmark_group("envelope");
    for &size in SIZES {
        let plaintext = vec![0x5a; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("baseline-aes-gcm-encrypt", size),
            &plaintext,
            |b, pt| {
                let cipher = Aes256Gcm::new(&key.into());
                let nonce = [1u8; 12];
                b.iter(|| {
                    cipher
                        .encrypt((&nonce).into(), Payload { msg: pt, aad: &aad })
                        .unwrap()
                });
            },
        );
        for alg in [Algorithm::Aes256Gcm, Algorithm::XChaCha20Poly1305] {
            group.bench_with_input(
                BenchmarkId::new(format!("seal-{}", alg.as_str()), size),
                &plaintext,
                |b, pt| {
                    b.iter(|| crypto::seal(&subject_key.fields(), alg, 1, &aad, pt).unwrap());
                },
            );
            let sealed = crypto::seal(&subject_key.fields(), alg, 1, &aad, &plaintext).unwrap();
            group.bench_with_input(
                BenchmarkId::new(format!("open-{}", alg.as_str()), size),
                &sealed,
                |b, s| {
                    b.iter(|| crypto::open(&subject_key.fields(), &aad, s).unwrap());
                },
            );
        }
    }
    group.finish();
}

fn subject_key(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("kluis.db")).unwrap());
    let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
    Keyring::initialize(store.as_ref(), &secret, Algorithm::Aes256Gcm).unwrap();
    let keyring = Keyring::unseal(store, &secret, Algorithm::Aes256Gcm, 1000).unwrap();
    let subject = SubjectId::parse("s", "REL-0001").unwrap();
    let purpose = Purpose::Nuisance;
    let generation = keyring
        .subject_key_or_create(&subject, purpose)
        .unwrap()
        .generation;
    let mut group = c.benchmark_group("subject-key");
    group.bench_function("cached", |b| {
        b.iter(|| {
            keyring
                .subject_key_at(&subject, purpose, generation)
                .unwrap()
                .unwrap()
        });
    });
    group.bench_function("uncached-store-and-unwrap", |b| {
        b.iter(|| {
            keyring.forget(&subject, purpose);
            keyring
                .subject_key_at(&subject, purpose, generation)
                .unwrap()
                .unwrap()
        });
    });
    group.finish();
}

criterion_group!(benches, seal_open, subject_key);
criterion_main!(benches);
