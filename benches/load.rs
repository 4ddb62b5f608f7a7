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
//! Not yet here (see the README): the PostgreSQL + pgcrypto baseline and the 1M-record run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    missing_docs,
    reason = "a benchmark binary: panics on setup failure, prints its figures"
)]

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use kluis::{
    crypto::Algorithm,
    domain::{AccessContext, Category, FieldName, Limits, PrincipalId, Role, SubjectId},
    keys::{Keyring, RootSecret},
    pb::{
        self,
        bench::{
            EchoMessage,
            echo_client::EchoClient,
            echo_server::{Echo, EchoServer},
        },
        vault_client::VaultClient,
    },
    policy::Engine,
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
}

fn options() -> Options {
    let mut o = Options {
        subjects: 100_000,
        seconds: 5,
        json: None,
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
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Echo => "echo",
            Target::Get => "GetRecord",
            Target::Put => "PutRecord",
        }
    }
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
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
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
            while Instant::now() < deadline {
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
                    let contract =
                        AccessContext::parse("c", "customer-service", "", "", "app", false)
                            .unwrap();
                    let nuisance =
                        AccessContext::parse("c", "nuisance", "N-2026-0042", "load", "app", false)
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
    let (vault_addr, echo_addr) = server_rt.block_on(async {
        let vl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let el = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (va, ea) = (vl.local_addr().unwrap(), el.local_addr().unwrap());
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
        (va, ea)
    });

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut results: BTreeMap<(usize, Target), Vec<u32>> = BTreeMap::new();
    let mut counts: BTreeMap<(usize, Target), usize> = BTreeMap::new();
    let seconds = o.seconds as f64;
    client_rt.block_on(async {
        let connect = |addr: std::net::SocketAddr| async move {
            Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .unwrap()
        };
        let env = Env {
            vault: connect(vault_addr).await,
            echo: connect(echo_addr).await,
            token,
            records: Arc::new(records),
            payload,
        };
        // Warm up every path.
        for target in [Target::Echo, Target::Get, Target::Put] {
            drive(&env, target, 8, 0.5).await;
        }
        for clients in [1, 64] {
            // A B A B: each gets half its time in each of two rounds.
            for _round in 0..2 {
                for target in [Target::Echo, Target::Get, Target::Put] {
                    let (n, lat) = drive(&env, target, clients, seconds / 2.0).await;
                    *counts.entry((clients, target)).or_default() += n;
                    results.entry((clients, target)).or_default().extend(lat);
                }
            }
        }
    });

    let mut rows = Vec::new();
    println!(
        "\nload, {} subjects, {payload}-byte answers, {} s per case (2 cores shared)",
        o.subjects, o.seconds
    );
    println!(
        "{:>8} {:<10} {:>10} {:>8} {:>8} {:>8} {:>10}",
        "clients", "call", "req/s", "p50 µs", "p99 µs", "p999 µs", "× echo"
    );
    for clients in [1, 64] {
        let echo_rps = counts[&(clients, Target::Echo)] as f64 / seconds;
        for target in [Target::Echo, Target::Get, Target::Put] {
            let mut lat = results.remove(&(clients, target)).unwrap_or_default();
            lat.sort_unstable();
            let rps = counts[&(clients, target)] as f64 / seconds;
            let (p50, p99, p999) = (
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                percentile(&lat, 0.999),
            );
            println!(
                "{clients:>8} {:<10} {rps:>10.0} {p50:>8} {p99:>8} {p999:>8} {:>10.2}",
                target.name(),
                rps / echo_rps
            );
            rows.push(json!({
                "clients": clients, "call": target.name(), "requests_per_second": rps,
                "p50_us": p50, "p99_us": p99, "p999_us": p999, "ratio_to_echo": rps / echo_rps,
            }));
        }
    }
    if let Some(path) = o.json {
        let doc = json!({
            "benchmark": "kluis load",
            "subjects": o.subjects,
            "seconds_per_case": o.seconds,
            "answer_bytes": payload,
            "results": rows,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        println!("\nwritten to {path}");
    }
    drop(server_rt);
}
