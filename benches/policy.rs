//! Policy decisions: one GetRecord's worth of fields decided by the default policy set, against
//! a one-line permit-all policy over the same schema as the baseline (the cost of Cedar itself:
//! entities, request validation, evaluation).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs,
    reason = "benchmark code; criterion macros generate undocumented functions"
)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use kluis::{
    domain::{AccessContext, Category, Principal, PrincipalId, Purpose, Role},
    policy::{Action, DEFAULT_SCHEMA, Engine, FieldResource},
};

fn decide(c: &mut Criterion) {
    let default = Engine::default_policies().unwrap();
    let baseline = Engine::from_sources(
        DEFAULT_SCHEMA,
        r#"@id("all") permit(principal, action, resource);"#,
    )
    .unwrap();
    let principal = Principal {
        id: PrincipalId::parse("p", "emp-1").unwrap(),
        roles: vec![Role::NuisanceOfficer],
        scope_subject: None,
        token_id: "tok_bench".into(),
        expires_at: i64::MAX,
    };
    let ctx = AccessContext::parse("c", "nuisance", "N-1", "bench", "app", false).unwrap();
    let mut group = c.benchmark_group("policy");
    for n in [1usize, 10] {
        let fields: Vec<FieldResource> = (0..n)
            .map(|i| FieldResource {
                record: "rec_bench".into(),
                name: format!("f{i}"),
                category: Category::ALL[i % Category::ALL.len()],
                purpose: Purpose::Nuisance,
                subject: "REL-0001".into(),
                flags: Default::default(),
            })
            .collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new("baseline-permit-all", n),
            &fields,
            |b, f| {
                b.iter(|| {
                    baseline
                        .decide_fields(&principal, Action::Read, &ctx, f)
                        .unwrap()
                });
            },
        );
        group.bench_with_input(BenchmarkId::new("default-policies", n), &fields, |b, f| {
            b.iter(|| {
                default
                    .decide_fields(&principal, Action::Read, &ctx, f)
                    .unwrap()
            });
        });
    }
    group.finish();
}

/// Latency percentiles of a realistic decision: a 10-field GetRecord for each of the roles, with
/// the default policy set. Printed before the criterion runs (criterion reports means).
fn latency_percentiles() {
    let engine = Engine::default_policies().unwrap();
    let ctx = AccessContext::parse("c", "nuisance", "N-1", "bench", "app", false).unwrap();
    let fields: Vec<FieldResource> = (0..10)
        .map(|i| FieldResource {
            record: "rec_bench".into(),
            name: format!("f{i}"),
            category: Category::ALL[i % Category::ALL.len()],
            purpose: Purpose::Nuisance,
            subject: "REL-0001".into(),
            flags: Default::default(),
        })
        .collect();
    let mut samples = Vec::new();
    for &role in Role::ALL {
        let principal = Principal {
            id: PrincipalId::parse("p", "emp-1").unwrap(),
            roles: vec![role],
            scope_subject: Some(kluis::domain::SubjectId::parse("s", "REL-0001").unwrap()),
            token_id: "tok_bench".into(),
            expires_at: i64::MAX,
        };
        for _ in 0..300 {
            let start = std::time::Instant::now();
            std::hint::black_box(
                engine
                    .decide_fields(&principal, Action::Read, &ctx, &fields)
                    .unwrap(),
            );
            samples.push(start.elapsed());
        }
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "policy: 10-field decision over {} roles, {} samples: p50 {:?}, p99 {:?}",
        Role::ALL.len(),
        samples.len(),
        at(0.50),
        at(0.99)
    );
}

criterion_group!(benches, decide);

fn main() {
    latency_percentiles();
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
