//! The load benchmark: kluis against the gRPC floor, in one run, on one machine.
//!
//! Starts, in this process and on one server runtime, a kluis server (SQLite store in a temporary
//! directory, the default policies, durable writes) and a bare tonic echo service answering with
//! a message as large as kluis's `GetRecord` answer. Loads subjects (each a contact record and a
//! nuisance record of five fields in three categories), then drives `GetRecord`, `PutRecord` and
//! the echo from the same load generator (its own runtime) with 1 and 64 concurrent clients over
//! HTTP/2, for a fixed time each, interleaved A B A B so that drift of the shared machine hits all
//! of them. Prints requests per second, p50/p99/p999 latency and the ratios to the echo.
//!
//! ```text
//! cargo bench --bench load                                      # 100,000 subjects
//! cargo bench --bench load -- --subjects 10000 --seconds 3 --json load.json
//! ```
//!
//! Where PostgreSQL server binaries are found, a throwaway cluster with pgcrypto takes the same
//! reads and writes from the same client counts (see `load/pg.rs`), in the same rounds. After the
//! rounds: policy decisions per second (fresh and memoised), and a rewrap of every nuisance
//! subject key while 64 clients keep reading (rewrap rate, GetRecord p99 during it against p99
//! before it), and a 256 MiB evidence file up and down against AES-256-GCM in process and the
//! same bytes unencrypted through a bare stream service. `--subjects 1000000` is the 1M-subject
//! run; `--no-pg` skips PostgreSQL; `--evidence-mib N` sizes the file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    missing_docs,
    reason = "a benchmark binary: panics on setup failure, prints its figures"
)]

#[path = "shared/evidence.rs"]
mod evidence_io;
#[path = "load/pg.rs"]
mod pg;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use kluis::{
    crypto::Algorithm,
    domain::{AccessContext, Category, FieldName, Limits, PrincipalId, Purpose, Role, SubjectId},
    keys::{Keyring, RootSecret},
    pb::{
        self,
        bench::{
            EchoMessage,
            echo_client::EchoClient,
            echo_server::{Echo, EchoServer},
            stream_server::StreamServer,
        },
        vault_client::VaultClient,
    },
    policy::{Action, Engine, FieldResource},
    store::SqliteStore,
    vault::{NewField, RetentionTable, Value, Vault, tokens::TokenSpec},
};
use prost::Message;
use rand::Rng;
use serde_json::json;
use tonic::{
    Request, Response, Status,
    transport::{Channel, Endpoint, Server},
};
use zeroize::Zeroizing;

struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        Ok(Response::new(request.into_inner()))
    }
}

struct Options {
    subjects: usize,
    seconds: u64,
    json: Option<String>,
    pg: bool,
    /// Size of the evidence file, MiB.
    evidence_mib: u64,
    /// Drive only the call of this name (and the echo), for profiling.
    only: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        subjects: 100_000,
        seconds: 5,
        json: None,
        pg: true,
        evidence_mib: 256,
        only: None,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--subjects" => {
                o.subjects = args[i + 1].parse().expect("--subjects N");
                i += 1;
            }
            "--seconds" => {
                o.seconds = args[i + 1].parse().expect("--seconds N");
                i += 1;
            }
            "--json" => {
                o.json = Some(args[i + 1].clone());
                i += 1;
            }
            "--no-pg" => o.pg = false,
            "--evidence-mib" => {
                o.evidence_mib = args[i + 1].parse().expect("--evidence-mib N");
                i += 1;
            }
            "--only" => {
                o.only = Some(args[i + 1].clone());
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    o
}

fn text(name: &str, category: Category, value: &str) -> NewField {
    NewField {
        name: FieldName::parse("f", name).unwrap(),
        category,
        value: Value::Text(Zeroizing::new(value.into())),
    }
}

fn nuisance_fields(i: usize) -> Vec<NewField> {
    vec![
        text("name", Category::Identity, &format!("Bewoner {i}")),
        text("phone", Category::Contact, "06-12345678"),
        text(
            "address",
            Category::Contact,
            "Kastanjelaan 12, 3512 AB Utrecht",
        ),
        text(
            "statement",
            Category::NuisanceEvidence,
            "Geluidsoverlast na 23:00 uur, drie keer deze week, buren op 14 en 16 klagen.",
        ),
        text(
            "incident",
            Category::NuisanceEvidence,
            "Melding 2026-11-02 22:40, politie ter plaatse.",
        ),
    ]
}

fn pb_fields(i: usize) -> Vec<pb::FieldValue> {
    nuisance_fields(i)
        .into_iter()
        .map(|f| pb::FieldValue {
            name: f.name.as_str().into(),
            category: f.category.as_str().into(),
            value: Some(pb::field_value::Value::Text(match f.value {
                Value::Text(t) => t.as_str().into(),
                Value::Binary(_) => String::new(),
            })),
        })
        .collect()
}

fn context() -> pb::AccessContext {
    pb::AccessContext {
        purpose: "nuisance".into(),
        case_ref: "N-2026-0042".into(),
        justification: "load benchmark".into(),
        channel: "app".into(),
        break_glass: false,
    }
}

fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[derive(Clone, Copy, Debug, Eq, Ord, PartialEq, PartialOrd)]
enum Target {
    Echo,
    Get,
    Put,
    PgRead(pg::Variant),
    PgWrite(pg::Variant),
}

impl Target {
    fn name(self) -> String {
        match self {
            Target::Echo => "echo".into(),
            Target::Get => "GetRecord".into(),
            Target::Put => "PutRecord".into(),
            Target::PgRead(v) => format!("{} read", v.name()),
            Target::PgWrite(v) => format!("{} write", v.name()),
        }
    }
}

/// The five field values of a nuisance record, for the PostgreSQL baseline.
fn pg_values() -> [String; 5] {
    let v: Vec<String> = nuisance_fields(0)
        .into_iter()
        .map(|f| match f.value {
            Value::Text(t) => t.as_str().to_owned(),
            Value::Binary(_) => String::new(),
        })
        .collect();
    let mut v: [String; 5] = v.try_into().unwrap();
    v[0] = "Bewoner ".into();
    v
}

struct Env {
    vault: Channel,
    echo: Channel,
    token: String,
    records: Arc<Vec<String>>,
    payload: usize,
}

/// Runs `clients` concurrent clients against `target` for `secs`; returns the latencies (µs).
async fn drive(env: &Env, target: Target, clients: usize, secs: f64) -> (usize, Vec<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let out = drive_until(env, target, clients, stop).await;
    timer.await.unwrap();
    out
}

/// Runs `clients` concurrent clients against `target` until `stop`; returns the latencies (µs).
async fn drive_until(
    env: &Env,
    target: Target,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (usize, Vec<u32>) {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let stop = Arc::clone(&stop);
        let (vault, echo, token, records, payload) = (
            env.vault.clone(),
            env.echo.clone(),
            env.token.clone(),
            Arc::clone(&env.records),
            env.payload,
        );
        tasks.push(tokio::spawn(async move {
            let mut v = VaultClient::new(vault);
            let mut e = EchoClient::new(echo);
            let mut lat = Vec::new();
            let mut i = c;
            let message = vec![7u8; payload];
            while !stop.load(Ordering::Relaxed) {
                i += clients;
                let t = Instant::now();
                match target {
                    Target::Echo => {
                        e.echo(EchoMessage {
                            payload: message.clone(),
                        })
                        .await
                        .unwrap();
                    }
                    Target::Get => {
                        let id = records[rand::thread_rng().gen_range(0..records.len())].clone();
                        let r = v
                            .get_record(authed(
                                &token,
                                pb::GetRecordRequest {
                                    context: Some(context()),
                                    record_id: id,
                                    fields: vec![],
                                },
                            ))
                            .await
                            .unwrap();
                        assert_eq!(r.get_ref().fields.len(), 5);
                    }
                    Target::Put => {
                        v.put_record(authed(
                            &token,
                            pb::PutRecordRequest {
                                context: Some(context()),
                                subject_id: format!("REL-P{c}-{i}"),
                                fields: pb_fields(i),
                                labels: Default::default(),
                            },
                        ))
                        .await
                        .unwrap();
                    }
                    Target::PgRead(_) | Target::PgWrite(_) => unreachable!("driven by pgbench"),
                }
                lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all.len(), all)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let o = options();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("kluis.db")).unwrap());
    let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
    Keyring::initialize(store.as_ref(), &secret, Algorithm::Aes256Gcm).unwrap();
    let limits = Limits {
        requests_per_second: 0,
        ..Limits::default()
    };
    let vault = Arc::new(
        Vault::new(
            store.clone(),
            Keyring::unseal(store.clone(), &secret, Algorithm::Aes256Gcm, 1_000_000).unwrap(),
            Engine::default_policies().unwrap(),
            RetentionTable::default(),
            limits,
        )
        .unwrap(),
    );
    let issued = vault
        .bootstrap_token(&TokenSpec {
            principal: PrincipalId::parse("p", "bench-nuisance-officer").unwrap(),
            roles: vec![Role::NuisanceOfficer],
            ttl_secs: 86_400,
            scope_subject: None,
        })
        .unwrap();
    let token = issued.token.expose_secret().to_owned();
    let principal = vault
        .authenticate(&kluis::vault::tokens::BearerToken::new(token.clone()))
        .unwrap();

    // Load: a contact record and a nuisance record per subject, from a few threads.
    let t = Instant::now();
    let threads = 4;
    let records: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let (vault, principal) = (Arc::clone(&vault), principal.clone());
                s.spawn(move || {
                    let contract = AccessContext::parse(
                        "c",
                        "customer-service",
                        "",
                        "",
                        "app",
                        false,
                        &Default::default(),
                    )
                    .unwrap();
                    let nuisance = AccessContext::parse(
                        "c",
                        "nuisance",
                        "N-2026-0042",
                        "load",
                        "app",
                        false,
                        &Default::default(),
                    )
                    .unwrap();
                    let mut out = Vec::new();
                    for i in (k..o.subjects).step_by(threads) {
                        let subject = SubjectId::parse("s", &format!("REL-{i:07}")).unwrap();
                        vault
                            .put_record(
                                &principal,
                                &contract,
                                &subject,
                                vec![text("email", Category::Contact, "bewoner@example.nl")],
                                Default::default(),
                            )
                            .ok();
                        let (id, _) = vault
                            .put_record(
                                &principal,
                                &nuisance,
                                &subject,
                                nuisance_fields(i),
                                BTreeMap::new(),
                            )
                            .unwrap();
                        out.push(id.as_str().to_owned());
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    println!(
        "loaded {} subjects ({} records) in {:.0} s",
        o.subjects,
        records.len() * 2,
        t.elapsed().as_secs_f64()
    );

    // The echo answers with as many bytes as a GetRecord answer carries.
    let sample = pb::GetRecordResponse {
        record_id: records[0].clone(),
        subject_id: "REL-0000000".into(),
        purpose: "nuisance".into(),
        fields: pb_fields(0),
        ..Default::default()
    };
    let payload = sample.encoded_len();

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (vault_addr, echo_addr, stream_addr) = server_rt.block_on(async {
        let vl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let el = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (va, ea, sa) = (
            vl.local_addr().unwrap(),
            el.local_addr().unwrap(),
            sl.local_addr().unwrap(),
        );
        tokio::spawn(async move {
            Server::builder()
                .max_concurrent_streams(Some(256))
                .tcp_nodelay(true)
                .initial_stream_window_size(Some(1024 * 1024))
                .initial_connection_window_size(Some(4 * 1024 * 1024))
                .add_service(
                    StreamServer::new(evidence_io::Bare).max_decoding_message_size(4 * 1024 * 1024),
                )
                .serve_with_incoming(kluis::server::incoming(sl))
                .await
                .unwrap();
        });
        let v = Arc::clone(&vault);
        tokio::spawn(async move {
            kluis::server::serve(v, vl, Default::default(), std::future::pending())
                .await
                .unwrap();
        });
        // The same transport settings as kluis's server.
        tokio::spawn(async move {
            Server::builder()
                .concurrency_limit_per_connection(256)
                .max_concurrent_streams(Some(256))
                .tcp_nodelay(true)
                .initial_stream_window_size(Some(1024 * 1024))
                .initial_connection_window_size(Some(4 * 1024 * 1024))
                .add_service(EchoServer::new(EchoService))
                .serve_with_incoming(kluis::server::incoming(el))
                .await
                .unwrap();
        });
        (va, ea, sa)
    });

    let mut pg = if o.pg {
        let rows = o.subjects.min(20_000);
        let t = Instant::now();
        match pg::Pg::start(rows, &pg_values()) {
            Ok(pg) => {
                println!(
                    "PostgreSQL baseline: {}, {rows} records per variant loaded in {:.0} s",
                    pg.version,
                    t.elapsed().as_secs_f64()
                );
                Some(pg)
            }
            Err(why) => {
                println!("PostgreSQL baseline skipped: {why}");
                None
            }
        }
    } else {
        println!("PostgreSQL baseline skipped: --no-pg");
        None
    };
    let mut targets = vec![Target::Echo, Target::Get, Target::Put];
    if pg.is_some() {
        for v in [pg::Variant::Stretched, pg::Variant::Fast] {
            targets.push(Target::PgRead(v));
            targets.push(Target::PgWrite(v));
        }
    }

    if let Some(only) = &o.only {
        targets.retain(|t| *t == Target::Echo || t.name() == *only);
    }

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut results: BTreeMap<(usize, Target), Vec<u32>> = BTreeMap::new();
    let mut counts: BTreeMap<(usize, Target), (usize, f64)> = BTreeMap::new();
    let seconds = o.seconds as f64;
    let records = Arc::new(records);
    let env = client_rt.block_on(async {
        let connect = |addr: std::net::SocketAddr| async move {
            Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .unwrap()
        };
        Env {
            vault: connect(vault_addr).await,
            echo: connect(echo_addr).await,
            token: token.clone(),
            records: Arc::clone(&records),
            payload,
        }
    });
    client_rt.block_on(async {
        // Warm up every path.
        for target in [Target::Echo, Target::Get, Target::Put] {
            drive(&env, target, 8, 0.5).await;
        }
        for clients in [1, 64] {
            // A B A B: each gets half its time in each of two rounds.
            for _round in 0..2 {
                for &target in &targets {
                    let (n, secs, lat) = match (target, pg.as_mut()) {
                        (Target::PgRead(v) | Target::PgWrite(v), Some(pg)) => {
                            let write = matches!(target, Target::PgWrite(_));
                            tokio::task::block_in_place(|| {
                                pg.drive(v, write, clients, seconds / 2.0, &pg_values())
                            })
                            .unwrap()
                        }
                        _ => {
                            let (n, lat) = drive(&env, target, clients, seconds / 2.0).await;
                            (n, seconds / 2.0, lat)
                        }
                    };
                    let c = counts.entry((clients, target)).or_default();
                    c.0 += n;
                    c.1 += secs;
                    results.entry((clients, target)).or_default().extend(lat);
                }
            }
        }
    });
    drop(pg);

    let mut rows = Vec::new();
    println!(
        "\nload, {} subjects, {payload}-byte answers, {} s per case (2 cores shared)",
        o.subjects, o.seconds
    );
    println!(
        "{:>8} {:<22} {:>10} {:>8} {:>8} {:>8} {:>10}",
        "clients", "call", "req/s", "p50 µs", "p99 µs", "p999 µs", "× echo"
    );
    let mut rps_of: BTreeMap<(usize, Target), f64> = BTreeMap::new();
    let mut get_p99_64 = 0;
    for clients in [1, 64] {
        let rate = |t: Target| {
            counts
                .get(&(clients, t))
                .map_or(0.0, |(n, s)| *n as f64 / s)
        };
        let echo_rps = rate(Target::Echo);
        for &target in &targets {
            let mut lat = results.remove(&(clients, target)).unwrap_or_default();
            lat.sort_unstable();
            let rps = rate(target);
            rps_of.insert((clients, target), rps);
            let (p50, p99, p999) = (
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                percentile(&lat, 0.999),
            );
            if clients == 64 && target == Target::Get {
                get_p99_64 = p99;
            }
            println!(
                "{clients:>8} {:<22} {rps:>10.0} {p50:>8} {p99:>8} {p999:>8} {:>10.2}",
                target.name(),
                rps / echo_rps
            );
            rows.push(json!({
                "clients": clients, "call": target.name(), "requests_per_second": rps,
                "p50_us": p50, "p99_us": p99, "p999_us": p999, "ratio_to_echo": rps / echo_rps,
            }));
        }
    }
    let mut versus_pg = Vec::new();
    if o.only.is_none() && targets.len() > 3 {
        println!("\nkluis against PostgreSQL + pgcrypto (same client count, durable writes):");
        for clients in [1, 64] {
            for v in [pg::Variant::Stretched, pg::Variant::Fast] {
                let read = rps_of[&(clients, Target::Get)] / rps_of[&(clients, Target::PgRead(v))];
                let write =
                    rps_of[&(clients, Target::Put)] / rps_of[&(clients, Target::PgWrite(v))];
                println!(
                    "{clients:>8} clients, {:<14} reads {read:>6.2}×   writes {write:>6.2}×",
                    v.name()
                );
                versus_pg.push(json!({
                    "clients": clients, "baseline": v.name(),
                    "read_ratio": read, "write_ratio": write,
                }));
            }
        }
    }

    let (policy, rewrap, evidence) = if o.only.is_none() {
        (
            policy_rates(),
            client_rt.block_on(rewrap_during_reads(&env, &vault, get_p99_64)),
            client_rt.block_on(evidence(
                &vault_addr.to_string(),
                &stream_addr.to_string(),
                &env.token,
                o.evidence_mib * evidence_io::MIB,
            )),
        )
    } else {
        Default::default()
    };
    drop(env);

    if let Some(path) = o.json {
        let doc = json!({
            "benchmark": "kluis load",
            "subjects": o.subjects,
            "seconds_per_case": o.seconds,
            "answer_bytes": payload,
            "results": rows,
            "versus_postgresql": versus_pg,
            "policy": policy,
            "rewrap": rewrap,
            "evidence": evidence,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        println!("\nwritten to {path}");
    }
    drop(server_rt);
}

/// Policy decisions per second and their latency, one field per decision, with the default
/// policies: fresh (a principal the engine has not seen: full Cedar evaluation) and memoised.
fn policy_rates() -> serde_json::Value {
    let engine = Engine::default_policies().unwrap();
    let ctx = AccessContext::parse(
        "c",
        "nuisance",
        "N-2026-0042",
        "load",
        "app",
        false,
        &Default::default(),
    )
    .unwrap();
    let field = [FieldResource {
        record: "rec_bench".into(),
        name: "statement".into(),
        category: Category::NuisanceEvidence,
        purpose: Purpose::Nuisance,
        subject: "REL-0000001".into(),
        flags: Default::default(),
    }];
    let mut out = serde_json::Map::new();
    println!("\npolicy decisions (default policies, one field each, this thread):");
    for fresh in [true, false] {
        let mut lat = Vec::new();
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(2) {
            n += 1;
            let id = if fresh {
                format!("emp-{n}")
            } else {
                "emp-1".to_owned()
            };
            let principal = kluis::domain::Principal::new(
                PrincipalId::parse("p", &id).unwrap(),
                vec![Role::NuisanceOfficer],
                None,
                "tok_bench",
                i64::MAX,
            )
            .unwrap();
            let t = Instant::now();
            let d = engine
                .decide_fields(&principal, Action::Read, &ctx, &field)
                .unwrap();
            lat.push(u32::try_from(t.elapsed().as_nanos()).unwrap_or(u32::MAX));
            assert!(d[0].is_allow());
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        lat.sort_unstable();
        let (p50, p99) = (
            f64::from(percentile(&lat, 0.5)) / 1000.0,
            f64::from(percentile(&lat, 0.99)) / 1000.0,
        );
        let name = if fresh { "fresh" } else { "memoised" };
        println!("{name:>10}: {rate:>10.0} decisions/s, p50 {p50:.1} µs, p99 {p99:.1} µs");
        out.insert(
            name.into(),
            json!({"decisions_per_second": rate, "p50_us": p50, "p99_us": p99}),
        );
    }
    serde_json::Value::Object(out)
}

/// Rotates the nuisance purpose key and rewraps every nuisance subject key while 64 clients
/// keep reading; compares GetRecord p99 during the rewrap with `p99_before`.
async fn rewrap_during_reads(env: &Env, vault: &Arc<Vault>, p99_before: u32) -> serde_json::Value {
    let officer = vault
        .bootstrap_token(&TokenSpec {
            principal: PrincipalId::parse("p", "bench-security-officer").unwrap(),
            roles: vec![Role::SecurityOfficer],
            ttl_secs: 3_600,
            scope_subject: None,
        })
        .unwrap();
    let officer = vault
        .authenticate(&kluis::vault::tokens::BearerToken::new(
            officer.token.expose_secret().to_owned(),
        ))
        .unwrap();
    vault
        .rotate_key(&officer, Purpose::Nuisance, None, "load benchmark")
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let job = {
        let (vault, stop) = (Arc::clone(vault), Arc::clone(&stop));
        std::thread::spawn(move || {
            let t = Instant::now();
            let done = vault.rewrap(Purpose::Nuisance, |_| true).unwrap();
            let took = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            (done.done, took)
        })
    };
    let (_, mut lat) = drive_until(env, Target::Get, 64, stop).await;
    let (keys, took) = job.join().unwrap();
    lat.sort_unstable();
    let p99 = percentile(&lat, 0.99);
    let rate = keys as f64 / took.as_secs_f64();
    println!(
        "\nrewrap while 64 clients read: {keys} subject keys in {:.2} s = {rate:.0} keys/s; \
         GetRecord p99 {p99} µs during it, {p99_before} µs before ({:.2}×)",
        took.as_secs_f64(),
        f64::from(p99) / f64::from(p99_before.max(1))
    );
    json!({
        "subject_keys": keys, "seconds": took.as_secs_f64(), "keys_per_second": rate,
        "get_p99_during_us": p99, "get_p99_before_us": p99_before,
    })
}

/// A file of `size` bytes up and down through kluis, against the same AEAD in process and the
/// same bytes unencrypted through the bare stream service; kluis and the bare service in turn.
async fn evidence(vault: &str, stream: &str, token: &str, size: u64) -> serde_json::Value {
    let (aead, _, _) = evidence_io::crypto_floor(size);
    let mut client = VaultClient::new(evidence_io::connect(vault).await)
        .max_decoding_message_size(16 * 1024 * 1024);
    let block = evidence_io::block();
    let id = evidence_io::upload(&mut client, token, &block, 4 * evidence_io::MIB).await;
    evidence_io::download(&mut client, token, &id).await;
    let t = Instant::now();
    let id = evidence_io::upload(&mut client, token, &block, size).await;
    let up = evidence_io::mb_per_s(size, t.elapsed());
    let t = Instant::now();
    assert_eq!(evidence_io::download(&mut client, token, &id).await, size);
    let down = evidence_io::mb_per_s(size, t.elapsed());
    let (bare_up, bare_down) = evidence_io::bare_floor(stream, &block, size).await;
    println!(
        "\nevidence, {} MiB: upload {up:.0} MB/s, download {down:.0} MB/s; AES-256-GCM in \
         process {aead:.0} MB/s ({:.2}x, {:.2}x); unencrypted over gRPC {bare_up:.0} / \
         {bare_down:.0} MB/s ({:.2}x, {:.2}x)",
        size / evidence_io::MIB,
        up / aead,
        down / aead,
        up / bare_up,
        down / bare_down,
    );
    json!({
        "bytes": size, "upload_mb_per_s": up, "download_mb_per_s": down,
        "aead_mb_per_s": aead, "grpc_upload_mb_per_s": bare_up,
        "grpc_download_mb_per_s": bare_down,
    })
}
