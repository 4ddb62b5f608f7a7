//! The cost of auditing: reads through the vault (policy → audit append, durable → unwrap →
//! open) against the same read without the audit append, both from 32 concurrent clients in the
//! same run. Group commit lets concurrent reads share one SQLite commit (`synchronous = FULL`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs,
    reason = "benchmark code; criterion macros generate undocumented functions"
)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kluis::{
    crypto::{self, AadContext, Algorithm},
    domain::{
        AccessContext, Category, FieldName, Limits, Principal, PrincipalId, RecordId, Role,
        SubjectId,
    },
    keys::{Keyring, RootSecret},
    policy::{Action, Engine, FieldResource},
    store::{SqliteStore, prelude::*},
    vault::{NewField, RetentionTable, Value, Vault},
};
use zeroize::Zeroizing;

const CLIENTS: u64 = 32;
const RECORDS: usize = 256;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    vault: Vault,
    engine: Engine,
    keyring: Keyring,
    principal: Principal,
    ctx: AccessContext,
    records: Vec<RecordId>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("kluis.db")).unwrap());
    let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
    Keyring::initialize(store.as_ref(), &secret, Algorithm::Aes256Gcm).unwrap();
    let keyring = Keyring::unseal(store.clone(), &secret, Algorithm::Aes256Gcm, 100_000).unwrap();
    let vault = Vault::new(
        store.clone(),
        Keyring::unseal(store.clone(), &secret, Algorithm::Aes256Gcm, 100_000).unwrap(),
        Engine::default_policies().unwrap(),
        RetentionTable::default(),
        Limits::default(),
    )
    .unwrap();
    let principal = Principal::new(
        PrincipalId::parse("p", "emp-1").unwrap(),
        vec![Role::NuisanceOfficer],
        None,
        "tok_bench",
        i64::MAX,
    )
    .unwrap();
    let ctx = AccessContext::parse(
        "c",
        "nuisance",
        "N-1",
        "benchmark",
        "app",
        false,
        &Default::default(),
    )
    .unwrap();
    let records = (0..RECORDS)
        .map(|i| {
            let subject = SubjectId::parse("s", &format!("REL-{i:05}")).unwrap();
            let fields = vec![
                NewField {
                    name: FieldName::parse("f", "phone").unwrap(),
                    category: Category::Contact,
                    value: Value::Text(Zeroizing::new("06-12345678".into())),
                },
                NewField {
                    name: FieldName::parse("f", "statement").unwrap(),
                    category: Category::NuisanceEvidence,
                    value: Value::Text(Zeroizing::new("x".repeat(512))),
                },
            ];
            vault
                .put_record(&principal, &ctx, &subject, fields, Default::default())
                .unwrap()
                .0
        })
        .collect();
    Fixture {
        _dir: dir,
        store,
        vault,
        engine: Engine::default_policies().unwrap(),
        keyring,
        principal,
        ctx,
        records,
    }
}

/// The read path without the audit append: load, decide, unwrap, open.
fn unaudited_read(f: &Fixture, id: &RecordId) -> usize {
    let (rec, rows) = f.store.record(id.as_str()).unwrap().unwrap();
    let subject = SubjectId::parse("s", &rec.subject).unwrap();
    let resources: Vec<FieldResource> = rows
        .iter()
        .map(|r| FieldResource {
            record: rec.id.clone(),
            name: r.name.clone(),
            category: r.category,
            purpose: f.ctx.purpose,
            subject: rec.subject.clone(),
            flags: Default::default(),
        })
        .collect();
    let decisions = f
        .engine
        .decide_fields(&f.principal, Action::Read, &f.ctx, &resources)
        .unwrap();
    let key = f
        .keyring
        .subject_key_at(&subject, f.ctx.purpose, rows[0].key_gen)
        .unwrap()
        .unwrap();
    let mut n = 0;
    for ((row, res), d) in rows.iter().zip(&resources).zip(&decisions) {
        if d.is_allow() {
            let aad = crypto::aad(&AadContext::Field {
                subject: &rec.subject,
                record: &rec.id,
                field: &row.name,
                category: res.category.as_str(),
                purpose: f.ctx.purpose.as_str(),
                kind: row.kind.as_str(),
                version: &row.version,
            });
            n += crypto::open(&key.fields(), &aad, &row.sealed)
                .unwrap()
                .len();
        }
    }
    n
}

fn audited_read(f: &Fixture, id: &RecordId) -> usize {
    f.vault
        .get_record(&f.principal, &f.ctx, id, &[])
        .unwrap()
        .fields
        .len()
}

/// Runs `iters` reads spread over `CLIENTS` threads and returns the wall time.
fn concurrent(f: &Arc<Fixture>, iters: u64, read: fn(&Fixture, &RecordId) -> usize) -> Duration {
    let per_client = iters.div_ceil(CLIENTS);
    let start = Instant::now();
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let f = Arc::clone(f);
            s.spawn(move || {
                for i in 0..per_client {
                    let id = &f.records[((c * 7919 + i) as usize) % f.records.len()];
                    std::hint::black_box(read(&f, id));
                }
            });
        }
    });
    start.elapsed()
}

fn reads(c: &mut Criterion) {
    let f = Arc::new(fixture());
    let mut group = c.benchmark_group("read-32-clients");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("unaudited", |b| {
        b.iter_custom(|iters| concurrent(&f, iters, unaudited_read))
    });
    group.bench_function("audited", |b| {
        b.iter_custom(|iters| concurrent(&f, iters, audited_read))
    });
    group.finish();
}

criterion_group!(benches, reads);
criterion_main!(benches);
