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

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
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

criterion_group!(benches, decide);
criterion_main!(benches);
