//! Policy decisions: one GetRecord's worth of fields decided by the default policy set, against
//! a one-line permit-all policy over the same schema as the baseline (the cost of Cedar itself:
//! entities, request validation, evaluation). Decisions are memoised per engine (see
//! `policy::memo`): `default-policies` measures a memoised decision, `default-policies-fresh` one
//! for a principal the engine has never seen, and `default-policies-fresh-whole-set` the same
//! with every policy evaluated (no slices per action and role), in the same run.

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
    let whole_set = Engine::default_policies().unwrap().without_slices();
    let baseline = Engine::from_sources(
        DEFAULT_SCHEMA,
        r#"@id("all") permit(principal, action, resource);"#,
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
        "bench",
        "app",
        false,
        &Default::default(),
    )
    .unwrap();
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
        // A principal the engine has not seen in every iteration: nothing is memoised. With
        // the slices per action and role, and with the whole set evaluated.
        let mut k = 0u64;
        for (name, engine) in [
            ("default-policies-fresh", &default),
            ("default-policies-fresh-whole-set", &whole_set),
        ] {
            group.bench_with_input(BenchmarkId::new(name, n), &fields, |b, f| {
                b.iter(|| {
                    k += 1;
                    let p = Principal::new(
                        PrincipalId::parse("p", &format!("emp-f{k}")).unwrap(),
                        principal.roles.clone(),
                        None,
                        "tok_bench",
                        i64::MAX,
                    )
                    .unwrap();
                    engine.decide_fields(&p, Action::Read, &ctx, f).unwrap()
                });
            });
        }
    }
    group.finish();
}

/// Latency percentiles of a realistic decision: a 10-field GetRecord for each of the roles, with
/// the default policy set. Printed before the criterion runs (criterion reports means).
fn latency_percentiles() {
    let engine = Engine::default_policies().unwrap();
    let ctx = AccessContext::parse(
        "c",
        "nuisance",
        "N-1",
        "bench",
        "app",
        false,
        &Default::default(),
    )
    .unwrap();
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
    // Fresh: every sample has a principal the engine has not seen, so nothing is memoised.
    // Memoised: the same principals again, as a case worker's next screen would be.
    for fresh in [true, false] {
        let mut samples = Vec::new();
        let mut n = 0u64;
        for _ in 0..300 {
            for &role in Role::ALL {
                n += 1;
                let id = if fresh {
                    format!("emp-{n}")
                } else {
                    format!("emp-{}", role.as_str())
                };
                let principal = Principal::new(
                    PrincipalId::parse("p", &id).unwrap(),
                    vec![role],
                    Some(kluis::domain::SubjectId::parse("s", "REL-0001").unwrap()),
                    "tok_bench",
                    i64::MAX,
                )
                .unwrap();
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
            "policy, {}: 10-field request over {} roles, {} samples: p50 {:?}, p99 {:?} (per field {:?}, {:?})",
            if fresh { "fresh" } else { "memoised" },
            Role::ALL.len(),
            samples.len(),
            at(0.50),
            at(0.99),
            at(0.50) / 10,
            at(0.99) / 10,
        );
    }
}

criterion_group!(benches, decide);

fn main() {
    latency_percentiles();
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
