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
//! Run as a test (`cargo test --bench load`, `--all-targets`: cargo passes no `--bench`), it is a
//! smoke run of every part: 2,000 subjects, 1 s per case, no PostgreSQL, an 8 MiB evidence file,
//! unless options say otherwise.
//!
//! Where PostgreSQL server binaries are found, a throwaway cluster with pgcrypto takes the same
//! reads and writes from the same client counts (see `load/pg.rs`), in the same rounds. After the
//! rounds: policy decisions per second (fresh and memoised), and a rewrap of every nuisance
//! subject key while 64 clients keep reading (rewrap rate, GetRecord p99 during it against p99
//! before it), and a 256 MiB evidence file up and down against AES-256-GCM in process and the
//! same bytes unencrypted through a bare stream service. `--subjects 1000000` is the 1M-subject
//! run; `--no-pg` skips PostgreSQL; `--evidence-mib N` sizes the file.
//!
//! ```text
//! cargo bench --bench load -- --store postgres                  # kluis on PostgreSQL
//! cargo bench --bench load -- --store postgres --nodes 2        # and two nodes against one
//! ```
//!
//! `--store postgres` runs kluis on a database of its own on the same throwaway cluster as the
//! pgcrypto baseline (which then starts first; without PostgreSQL binaries the run fails), opened
//! as `kluis serve --store URL` opens it. The baseline is then only the fast variant (key
//! stretching off), and the comparison reports kluis's reads and writes against it at the same
//! client counts, in the same rounds: the aim is reads at 64 clients ≥ 1.0×, writes ≥ 0.5×.
//! `--store sqlite` is the default and the run described above.
//!
//! `--nodes N` (with `--store postgres`) starts N kluis nodes on the one database, each on its
//! own listener and following the others' changes as `kluis serve` does, and adds four cases at
//! 64 clients: `GetRecord` and `PutRecord` spread over the N nodes (one connection each, client
//! `c` on node `c % N`) and the same calls on node A alone over N connections, so that both
//! sides have as many HTTP/2 connections and differ only in the nodes. Reported: the N-node rate
//! over the one-node rate, and where the CPU goes on each side.
//!
//! On PostgreSQL every node reads every record once before the rounds: a node forgets the
//! subject keys it holds when it first polls the store for other nodes' changes (as `serve`
//! starts), while the SQLite node holds all of them from loading; so all runs start alike.
//!
//! Every case also says where the CPU went (see `load/cpu.rs`): cores busy on average in kluis
//! (this process but the load generator), the load generator, PostgreSQL's processes, pgbench and
//! the whole machine, and kluis's and PostgreSQL's CPU per request. A case where the busy cores
//! add up to all the machine's cores is bound by CPU, not by a lock or a wait.
//!
//! `FindRecords` searches the name of a nuisance record, searchable under the width the key
//! report's planner gives the number of subjects (at most 2 other values per tag: 16 bits for
//! 100,000, 19 for a million), as an operator following the README sets it; after the table, its
//! p50 at one client is given against `GetRecord`'s (aim: ≤ 2×). `--tag-bits N` sets another
//! width (16 among a million makes about 15 other candidates; 8 among 20,000 about 80: the cost
//! per candidate).
//! `--only GetRecord,FindRecords` drives only the calls named (and the echo) and skips the parts
//! after the rounds: the 1M-record search figure without the 1M rewrap.
//!
//! `--pg-statements` (with `--store postgres`) has the cluster count statements
//! (`pg_stat_statements`) and prints, for the first round of each kluis case at each client
//! count, what kluis ran on PostgreSQL: calls per request, mean execution time, and how often
//! each statement was planned and for how long.
//!
//! `--json F` writes every figure: per case rate, latencies and CPU (`results`), the ratios to
//! PostgreSQL (`versus_postgresql`), the node comparison (`nodes_comparison`), and the store and
//! node count of the run. It is written once after the rounds (`"complete": false`) and again
//! at the end, so that a failure in the rewrap or evidence part keeps the rounds' figures.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs,
    reason = "a benchmark binary: panics on setup failure, prints its figures"
)]

#[path = "load/cpu.rs"]
mod cpu;
#[path = "shared/evidence.rs"]
mod evidence_io;
#[path = "load/pg.rs"]
mod pg;
#[path = "load/store.rs"]
mod store;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use kluis::{
    domain::{AccessContext, Category, FieldName, PrincipalId, Purpose, Role, SubjectId},
    keys::RootSecret,
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
    vault::{NewField, Value, Vault, tokens::TokenSpec},
};
use prost::Message;
use rand::Rng;
use serde_json::json;
use tonic::{
    Request, Response, Status,
    transport::{Channel, Endpoint, Server},
};
use zeroize::Zeroizing;

use crate::store::StoreKind;

/// The allocator of the `kluis` binary, as the server runs in this process.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Drive only the calls of these names, comma-separated (and the echo), for profiling.
    only: Option<String>,
    /// Where kluis keeps its data.
    store: StoreKind,
    /// kluis nodes on the one store (PostgreSQL only).
    nodes: usize,
    /// Width of the searched field's tags (`None`: planned for the number of subjects).
    tag_bits: Option<u8>,
    /// Count the statements kluis runs on PostgreSQL (`pg_stat_statements`) and print them.
    pg_statements: bool,
    /// MiB of records read that a SQLite store keeps between reads (`read_cache_mib`).
    read_cache_mib: usize,
}

fn options() -> Options {
    let mut o = Options {
        subjects: 100_000,
        seconds: 5,
        json: None,
        pg: true,
        evidence_mib: 256,
        only: None,
        store: StoreKind::Sqlite,
        nodes: 1,
        tag_bits: None,
        pg_statements: false,
        read_cache_mib: kluis::store::sqlite::DEFAULT_READ_CACHE_MIB,
    };
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("run as a test (no --bench): a smoke run, not a measurement");
        o.subjects = 2_000;
        o.seconds = 1;
        o.pg = false;
        o.evidence_mib = 8;
    }
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
            "--pg-statements" => o.pg_statements = true,
            "--evidence-mib" => {
                o.evidence_mib = args[i + 1].parse().expect("--evidence-mib N");
                i += 1;
            }
            "--only" => {
                o.only = Some(args[i + 1].clone());
                i += 1;
            }
            "--store" => {
                o.store = match args[i + 1].as_str() {
                    "sqlite" => StoreKind::Sqlite,
                    "postgres" => StoreKind::Postgres,
                    other => panic!("--store sqlite|postgres, not `{other}`"),
                };
                i += 1;
            }
            "--tag-bits" => {
                o.tag_bits = Some(args[i + 1].parse().expect("--tag-bits N"));
                i += 1;
            }
            "--nodes" => {
                o.nodes = args[i + 1].parse().expect("--nodes N");
                i += 1;
            }
            "--read-cache-mib" => {
                o.read_cache_mib = args[i + 1].parse().expect("--read-cache-mib N");
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    assert!(o.nodes >= 1, "--nodes is at least 1");
    assert!(
        o.nodes == 1 || o.store == StoreKind::Postgres,
        "--nodes needs --store postgres: nodes share a PostgreSQL store"
    );
    assert!(
        o.pg || o.store == StoreKind::Sqlite,
        "--store postgres runs on the PostgreSQL cluster that --no-pg leaves out"
    );
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
            masked: false,
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
    Get(Via),
    /// `FindRecords` of one subject's name among all nuisance records (node A).
    Find,
    Put(Via),
    PgRead(pg::Variant),
    PgWrite(pg::Variant),
}

/// Which kluis servers a call's clients go to: `connections` HTTP/2 connections spread over
/// `nodes` nodes (starting with node A); client `c` takes connection `c % connections`.
#[derive(Clone, Copy, Debug, Eq, Ord, PartialEq, PartialOrd)]
struct Via {
    nodes: usize,
    connections: usize,
}

/// Node A over one connection: the calls compared with the echo and with PostgreSQL.
const NODE_A: Via = Via {
    nodes: 1,
    connections: 1,
};

impl Via {
    fn suffix(self) -> String {
        if self == NODE_A {
            String::new()
        } else if self.nodes == 1 {
            format!(", 1 node, {} conns", self.connections)
        } else {
            format!(", {} nodes", self.nodes)
        }
    }
}

impl Target {
    fn name(self) -> String {
        match self {
            Target::Echo => "echo".into(),
            Target::Get(via) => format!("GetRecord{}", via.suffix()),
            Target::Find => "FindRecords".into(),
            Target::Put(via) => format!("PutRecord{}", via.suffix()),
            Target::PgRead(v) => format!("{} read", v.name()),
            Target::PgWrite(v) => format!("{} write", v.name()),
        }
    }

    /// Whether the case runs with `clients` clients: the node comparison only at 64, where
    /// clients are spread over nodes (at one client every case would use node A alone).
    fn runs_with(self, clients: usize) -> bool {
        match self {
            Target::Get(via) | Target::Put(via) if via != NODE_A => clients > 1,
            _ => true,
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
    /// Node A, over the connection the calls compared with the echo and PostgreSQL use.
    vault: Channel,
    /// With several nodes: as many more connections to node A as there are nodes …
    node_a: Vec<Channel>,
    /// … and one more connection to each node.
    nodes: Vec<Channel>,
    echo: Channel,
    token: String,
    records: Arc<Vec<String>>,
    payload: usize,
}

impl Env {
    fn channels(&self, via: Via) -> &[Channel] {
        if via == NODE_A {
            std::slice::from_ref(&self.vault)
        } else if via.nodes == 1 {
            &self.node_a
        } else {
            &self.nodes
        }
    }
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
    let via = match target {
        Target::Get(via) | Target::Put(via) => via,
        _ => NODE_A,
    };
    // The subjects a case writes: as in the one-node case, new in the first round and
    // written again in the second, and not those of another case.
    let prefix = if via == NODE_A {
        "REL-P".to_owned()
    } else {
        format!("REL-P{}n{}c-", via.nodes, via.connections)
    };
    for c in 0..clients {
        let stop = Arc::clone(&stop);
        let channels = env.channels(via);
        let prefix = prefix.clone();
        let (vault, echo, token, records, payload) = (
            channels[c % channels.len()].clone(),
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
                    Target::Get(_) => {
                        let id = records[rand::thread_rng().gen_range(0..records.len())].clone();
                        read(&mut v, &token, id).await;
                    }
                    Target::Find => {
                        let n = rand::thread_rng().gen_range(0..records.len());
                        let found = v
                            .find_records(authed(
                                &token,
                                pb::FindRecordsRequest {
                                    context: Some(context()),
                                    field: store::SEARCHED.into(),
                                    value: format!("bewoner {n}"),
                                    limit: 0,
                                },
                            ))
                            .await
                            .unwrap();
                        assert!(!found.get_ref().records.is_empty(), "no hit for {n}");
                    }
                    Target::Put(_) => {
                        v.put_record(authed(
                            &token,
                            pb::PutRecordRequest {
                                context: Some(context()),
                                subject_id: format!("{prefix}{c}-{i}"),
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

/// A `GetRecord` of the whole record `id`.
/// One client, a data subject's own token (of `REL-0000000`), searching names interleaved: one
/// that only another subject's record carries (a candidate the caller may not read) and one
/// that no record carries. Decoys make both read and decide the same number of records; without
/// them the first cost a record, its subject's facts and a decision more.
async fn search_timing(channel: Channel, token: &str, subjects: usize) -> serde_json::Value {
    const ROUNDS: usize = 1500;
    let mut v = VaultClient::new(channel);
    let (mut others, mut nobody) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
    for i in 0..ROUNDS {
        let other = format!("bewoner {}", 1 + i % (subjects - 1));
        for (value, into) in [(other, &mut others), (format!("niemand {i}"), &mut nobody)] {
            let t = Instant::now();
            let found = v
                .find_records(authed(
                    token,
                    pb::FindRecordsRequest {
                        context: Some(context()),
                        field: store::SEARCHED.into(),
                        value,
                        limit: 0,
                    },
                ))
                .await;
            into.push(t.elapsed());
            assert!(
                found.map_or(true, |f| f.get_ref().records.is_empty()),
                "a data subject found another's record"
            );
        }
    }
    let p50 = |d: &mut Vec<Duration>| {
        d.sort();
        u64::try_from(d[d.len() / 2].as_micros()).unwrap_or(u64::MAX)
    };
    let (others, nobody) = (p50(&mut others), p50(&mut nobody));
    let ratio = others as f64 / nobody.max(1) as f64;
    println!(
        "\nFindRecords by a data subject, one client, p50 of {ROUNDS} each, interleaved: a name only \
         another subject's record carries {others} µs, a name no record carries {nobody} µs: \
         {ratio:.2}× (decoys make them read and decide as many records)"
    );
    json!({"others_p50_us": others, "nobody_p50_us": nobody, "ratio": ratio})
}

async fn read(v: &mut VaultClient<Channel>, token: &str, id: String) {
    let r = v
        .get_record(authed(
            token,
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

/// Reads every record once over `channel`, from 64 clients.
async fn read_all(env: &Env, channel: &Channel) {
    let mut tasks = Vec::new();
    for c in 0..64 {
        let (records, token) = (Arc::clone(&env.records), env.token.clone());
        let mut v = VaultClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            for id in records.iter().skip(c).step_by(64) {
                read(&mut v, &token, id.clone()).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // kluis's errors (an `internal error` answer logs its cause) on stderr; more with RUST_LOG.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let o = options();
    // The searched names: one per subject, tagged at the width given or the one planned.
    let tag_bits = o.tag_bits.unwrap_or_else(|| {
        kluis::search::planned_tag_bits(o.subjects as u64, kluis::search::DEFAULT_PLAN_CANDIDATES)
    });
    println!(
        "search: {tag_bits}-bit tags{}, about {:.1} other values per tag",
        if o.tag_bits.is_some() {
            ""
        } else {
            " (planned)"
        },
        kluis::search::candidates_per_search(o.subjects as u64, tag_bits)
    );
    let dir = tempfile::tempdir().unwrap();
    let secret = RootSecret::create_key_file(&dir.path().join("root.key")).unwrap();
    // On PostgreSQL, kluis's database is on the baseline's cluster, which therefore starts first.
    let mut pg = None;
    let (vaults, variants) = match o.store {
        StoreKind::Sqlite => (
            vec![store::sqlite(
                dir.path(),
                &secret,
                tag_bits,
                o.read_cache_mib,
            )],
            vec![pg::Variant::Stretched, pg::Variant::Fast],
        ),
        StoreKind::Postgres => {
            let variants = vec![pg::Variant::Fast];
            let cluster = start_pg(o.subjects, &variants, o.pg_statements)
                .unwrap_or_else(|why| panic!("--store postgres needs PostgreSQL: {why}"));
            let url = cluster.database("kluis").unwrap();
            let vaults = store::postgres(&url, dir.path(), &secret, o.nodes, tag_bits);
            println!(
                "kluis on PostgreSQL: {} node(s) on database `kluis` of the same cluster",
                vaults.len()
            );
            pg = Some(cluster);
            (vaults, variants)
        }
    };
    let vault = Arc::clone(&vaults[0]);
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

    // Load: a contact record and a nuisance record per subject, from 16 threads (on SQLite
    // their writes share group commits; on PostgreSQL each is a transaction of its own), on
    // node A.
    let t = Instant::now();
    let threads = 16;
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
    // Statistics of what was loaded, as the baseline's tables get them (autovacuum would take
    // up to a minute to analyse them, longer than a run).
    if let (StoreKind::Postgres, Some(cluster)) = (o.store, pg.as_ref()) {
        cluster
            .analyze("kluis")
            .unwrap_or_else(|why| panic!("analysing kluis's database: {why}"));
    }

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
    let (vault_addrs, echo_addr, stream_addr) = server_rt.block_on(async {
        let el = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (ea, sa) = (el.local_addr().unwrap(), sl.local_addr().unwrap());
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
        let mut vas = Vec::new();
        for v in &vaults {
            let vl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            vas.push(vl.local_addr().unwrap());
            let v = Arc::clone(v);
            tokio::spawn(async move {
                kluis::server::serve(v, vl, Default::default(), std::future::pending())
                    .await
                    .unwrap();
            });
        }
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
        (vas, ea, sa)
    });
    let vault_addr = vault_addrs[0];

    if o.store == StoreKind::Sqlite {
        pg = if o.pg {
            start_pg(o.subjects, &variants, o.pg_statements)
                .map_err(|why| println!("PostgreSQL baseline skipped: {why}"))
                .ok()
        } else {
            println!("PostgreSQL baseline skipped: --no-pg");
            None
        };
    }
    let postmaster = pg.as_ref().map(pg::Pg::postmaster);
    let mut targets = vec![
        Target::Echo,
        Target::Get(NODE_A),
        Target::Put(NODE_A),
        Target::Find,
    ];
    let (one_node, spread) = (
        Via {
            nodes: 1,
            connections: o.nodes,
        },
        Via {
            nodes: o.nodes,
            connections: o.nodes,
        },
    );
    if o.nodes > 1 {
        targets.extend([
            Target::Get(one_node),
            Target::Get(spread),
            Target::Put(one_node),
            Target::Put(spread),
        ]);
    }
    if pg.is_some() {
        for &v in &variants {
            targets.push(Target::PgRead(v));
            targets.push(Target::PgWrite(v));
        }
    }

    if let Some(only) = &o.only {
        targets.retain(|t| *t == Target::Echo || only.split(',').any(|n| t.name() == n));
    }

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(cpu::LOAD_THREADS)
        .enable_all()
        .build()
        .unwrap();
    let mut results: BTreeMap<(usize, Target), Vec<u32>> = BTreeMap::new();
    let mut counts: BTreeMap<(usize, Target), (usize, f64)> = BTreeMap::new();
    let mut cpu_of: BTreeMap<(usize, Target), cpu::Split> = BTreeMap::new();
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
        let (mut node_a, mut nodes) = (Vec::new(), Vec::new());
        if vault_addrs.len() > 1 {
            for &addr in &vault_addrs {
                node_a.push(connect(vault_addr).await);
                nodes.push(connect(addr).await);
            }
        }
        Env {
            vault: connect(vault_addr).await,
            node_a,
            nodes,
            echo: connect(echo_addr).await,
            token: token.clone(),
            records: Arc::clone(&records),
            payload,
        }
    });
    client_rt.block_on(async {
        // Warm up every path; the other nodes take in the subject keys node A holds.
        for &target in &targets {
            if matches!(
                target,
                Target::Echo | Target::Get(_) | Target::Put(_) | Target::Find
            ) {
                drive(&env, target, 8, 0.5).await;
            }
        }
        // A node on PostgreSQL forgets the subject keys it holds when it first polls the store
        // for other nodes' changes, as `serve` starts; the SQLite node keeps those of loading.
        // Every PostgreSQL node reads every record once, so that all start as that one does.
        if o.store == StoreKind::Postgres {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let channels = if env.nodes.is_empty() {
                std::slice::from_ref(&env.vault)
            } else {
                &env.nodes[..]
            };
            for (n, channel) in channels.iter().enumerate() {
                let t = Instant::now();
                read_all(&env, channel).await;
                println!(
                    "node {} read every record once in {:.0} s",
                    char::from(b'A' + u8::try_from(n).unwrap_or(25)),
                    t.elapsed().as_secs_f64()
                );
            }
        }
        for clients in [1, 64] {
            // A B A B: each gets half its time in each of two rounds.
            for round in 0..2 {
                for &target in targets.iter().filter(|t| t.runs_with(clients)) {
                    // `--pg-statements`: what kluis ran on PostgreSQL in the first round of
                    // each of its cases, at each client count.
                    let count_statements = o.pg_statements
                        && o.store == StoreKind::Postgres
                        && round == 0
                        && matches!(target, Target::Get(_) | Target::Put(_) | Target::Find);
                    if count_statements && let Some(pg) = pg.as_ref() {
                        tokio::task::block_in_place(|| pg.reset_statements("kluis")).unwrap();
                    }
                    let before = cpu::sample(postmaster);
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
                    if let (Some(before), Some(after)) = (before, cpu::sample(postmaster)) {
                        cpu_of
                            .entry((clients, target))
                            .or_default()
                            .add(&cpu::Split::between(&before, &after));
                    }
                    if count_statements && let Some(pg) = pg.as_ref() {
                        let table =
                            tokio::task::block_in_place(|| pg.statements("kluis", n)).unwrap();
                        println!(
                            "\nstatements of {} at {clients} clients ({n} requests):\n{table}",
                            target.name()
                        );
                    }
                    let c = counts.entry((clients, target)).or_default();
                    c.0 += n;
                    c.1 += secs;
                    results.entry((clients, target)).or_default().extend(lat);
                }
            }
        }
    });
    // The baseline's cluster goes; kluis's own store stays for what follows.
    if o.store == StoreKind::Sqlite {
        drop(pg.take());
    }

    let mut rows = Vec::new();
    let name_width = targets
        .iter()
        .map(|t| t.name().chars().count())
        .max()
        .unwrap_or(0)
        .max(22);
    println!(
        "\nload, {} subjects, {payload}-byte answers, {} s per case (2 cores shared), store {}{}",
        o.subjects,
        o.seconds,
        o.store.name(),
        if o.nodes > 1 {
            format!(", {} nodes", o.nodes)
        } else {
            String::new()
        }
    );
    println!(
        "{:>8} {:<name_width$} {:>10} {:>8} {:>8} {:>8} {:>10}",
        "clients", "call", "req/s", "p50 µs", "p99 µs", "p999 µs", "× echo"
    );
    let mut rps_of: BTreeMap<(usize, Target), f64> = BTreeMap::new();
    let mut p50_of: BTreeMap<(usize, Target), u32> = BTreeMap::new();
    let mut get_p99_64 = 0;
    for clients in [1, 64] {
        let rate = |t: Target| {
            counts
                .get(&(clients, t))
                .map_or(0.0, |(n, s)| *n as f64 / s)
        };
        let echo_rps = rate(Target::Echo);
        for &target in targets.iter().filter(|t| t.runs_with(clients)) {
            let mut lat = results.remove(&(clients, target)).unwrap_or_default();
            lat.sort_unstable();
            let rps = rate(target);
            rps_of.insert((clients, target), rps);
            let (p50, p99, p999) = (
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                percentile(&lat, 0.999),
            );
            p50_of.insert((clients, target), p50);
            if clients == 64 && target == Target::Get(NODE_A) {
                get_p99_64 = p99;
            }
            println!(
                "{clients:>8} {:<name_width$} {rps:>10.0} {p50:>8} {p99:>8} {p999:>8} {:>10.2}",
                target.name(),
                rps / echo_rps
            );
            let n = counts.get(&(clients, target)).map_or(0, |c| c.0);
            rows.push(json!({
                "clients": clients, "call": target.name(), "requests_per_second": rps,
                "p50_us": p50, "p99_us": p99, "p999_us": p999, "ratio_to_echo": rps / echo_rps,
                "cpu": cpu_of.get(&(clients, target)).map(|s| s.json(n)),
            }));
        }
    }
    print_cpu(&targets, &counts, &cpu_of, name_width);
    let find_vs_get = match (
        p50_of.get(&(1, Target::Find)),
        p50_of.get(&(1, Target::Get(NODE_A))),
    ) {
        (Some(&find), Some(&get)) if get > 0 => {
            let ratio = f64::from(find) / f64::from(get);
            println!(
                "\nFindRecords among {} records, p50 at one client: {find} µs against GetRecord's \
                 {get} µs: {ratio:.2}× (aim ≤ 2×)",
                records.len()
            );
            Some(ratio)
        }
        _ => None,
    };

    // Whether a search's time tells that records the caller may not read carry the value's tag.
    let search_timing = if targets.contains(&Target::Find) && o.subjects > 1 {
        let own = vault
            .bootstrap_token(&TokenSpec {
                principal: PrincipalId::parse("p", "bench-subject").unwrap(),
                roles: vec![Role::Subject],
                ttl_secs: 86_400,
                scope_subject: Some(SubjectId::parse("s", "REL-0000000").unwrap()),
            })
            .unwrap();
        let own = own.token.expose_secret().to_owned();
        client_rt.block_on(search_timing(env.vault.clone(), &own, o.subjects))
    } else {
        serde_json::Value::Null
    };

    // The aim for a lone read: the echo's p50, plus one fsync of the disk the data directory is
    // on (every read waits for its audit entry to be durable), plus 60 µs.
    let get_p50_aim = match (
        p50_of.get(&(1, Target::Get(NODE_A))),
        p50_of.get(&(1, Target::Echo)),
    ) {
        (Some(&get), Some(&echo)) => {
            let fsync = fsync_p50(dir.path());
            let bound = echo + fsync + 60;
            let met = get <= bound;
            println!(
                "\nGetRecord p50 at one client: {get} µs; echo {echo} µs + one fsync of the data \
                 directory's disk {fsync} µs (p50 of 200, measured now) + 60 µs = {bound} µs: {}",
                if met { "met" } else { "missed" }
            );
            json!({"get_p50_us": get, "echo_p50_us": echo, "fsync_p50_us": fsync,
                   "bound_us": bound, "met": met})
        }
        _ => serde_json::Value::Null,
    };

    let mut versus_pg = Vec::new();
    if o.only.is_none() && targets.iter().any(|t| matches!(t, Target::PgRead(_))) {
        match o.store {
            StoreKind::Sqlite => println!(
                "\nkluis against PostgreSQL + pgcrypto (same client count, durable writes):"
            ),
            StoreKind::Postgres => println!(
                "\nkluis on PostgreSQL against PostgreSQL + pgcrypto on the same cluster (same \
                 client count, durable writes; aim: reads at 64 clients ≥ 1.0×, writes ≥ 0.5×):"
            ),
        }
        for clients in [1, 64] {
            for &v in &variants {
                let read =
                    rps_of[&(clients, Target::Get(NODE_A))] / rps_of[&(clients, Target::PgRead(v))];
                let write = rps_of[&(clients, Target::Put(NODE_A))]
                    / rps_of[&(clients, Target::PgWrite(v))];
                println!(
                    "{clients:>8} clients, {:<14} reads {read:>6.2}×   writes {write:>6.2}×",
                    v.name()
                );
                versus_pg.push(json!({
                    "clients": clients, "baseline": v.name(), "store": o.store.name(),
                    "read_ratio": read, "write_ratio": write,
                }));
            }
        }
    }

    let nodes_comparison = if o.only.is_none() && o.nodes > 1 {
        compare_nodes(o.nodes, [one_node, spread], &rps_of, &counts, &cpu_of)
    } else {
        serde_json::Value::Null
    };

    let mut doc = json!({
        "benchmark": "kluis load",
        "store": o.store.name(),
        "nodes": o.nodes,
        "subjects": o.subjects,
        "seconds_per_case": o.seconds,
        "answer_bytes": payload,
        "results": rows,
        "versus_postgresql": versus_pg,
        "find_p50_over_get_p50": find_vs_get,
        "search_timing": search_timing,
        "get_p50_aim": get_p50_aim,
        "find_tag_bits": tag_bits,
        "nodes_comparison": nodes_comparison,
        "complete": false,
    });
    // The rounds' figures are written at once, so that a failure in what follows keeps them.
    let write = |doc: &serde_json::Value| {
        if let Some(path) = &o.json {
            std::fs::write(path, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
        }
    };
    write(&doc);

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

    doc["policy"] = policy;
    doc["rewrap"] = rewrap;
    doc["evidence"] = evidence;
    doc["complete"] = json!(true);
    write(&doc);
    if let Some(path) = &o.json {
        println!("\nwritten to {path}");
    }
    // Servers first, then the nodes' stores, then the cluster under them.
    drop(server_rt);
    drop((vault, vaults));
    drop(pg);
}

/// Starts the PostgreSQL cluster with the baseline's tables for `variants`.
fn start_pg(subjects: usize, variants: &[pg::Variant], statements: bool) -> Result<pg::Pg, String> {
    let rows = subjects.min(20_000);
    let t = Instant::now();
    let pg = pg::Pg::start(rows, &pg_values(), variants, statements)?;
    println!(
        "PostgreSQL baseline: {}, {rows} records per variant loaded in {:.0} s",
        pg.version,
        t.elapsed().as_secs_f64()
    );
    Ok(pg)
}

/// Prints where the CPU went in each case: cores busy on average, and CPU per request.
fn print_cpu(
    targets: &[Target],
    counts: &BTreeMap<(usize, Target), (usize, f64)>,
    cpu_of: &BTreeMap<(usize, Target), cpu::Split>,
    name_width: usize,
) {
    if cpu_of.is_empty() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nwhere the CPU goes: cores busy on average (machine: all users of its {cores} cores; \
         steal: of that, cores its host gave to others), and CPU µs per request"
    );
    println!(
        "{:>8} {:<name_width$} {:>6} {:>6} {:>6} {:>7} {:>7} {:>6} | {:>8} {:>8} {:>8}",
        "clients",
        "call",
        "kluis",
        "load",
        "pg",
        "pgbench",
        "machine",
        "steal",
        "kluis µs",
        "pg µs",
        "pgb. µs"
    );
    for clients in [1, 64] {
        for &target in targets.iter().filter(|t| t.runs_with(clients)) {
            let (Some(s), Some(&(n, _))) = (
                cpu_of.get(&(clients, target)),
                counts.get(&(clients, target)),
            ) else {
                continue;
            };
            let per = |cpu: f64| cpu * 1e6 / n.max(1) as f64;
            println!(
                "{clients:>8} {:<name_width$} {:>6.2} {:>6.2} {:>6.2} {:>7.2} {:>7.2} {:>6.2} | \
                 {:>8.0} {:>8.0} {:>8.0}",
                target.name(),
                s.cores(s.kluis),
                s.cores(s.load),
                s.cores(s.postgres),
                s.cores(s.pgbench),
                s.cores(s.machine),
                s.cores(s.steal),
                per(s.kluis),
                per(s.postgres),
                per(s.pgbench),
            );
        }
    }
}

/// Prints and returns `nodes` nodes against one: the calls spread over the nodes (`vias[1]`)
/// against the same calls on node A over as many connections (`vias[0]`), at 64 clients.
fn compare_nodes(
    nodes: usize,
    vias: [Via; 2],
    rps_of: &BTreeMap<(usize, Target), f64>,
    counts: &BTreeMap<(usize, Target), (usize, f64)>,
    cpu_of: &BTreeMap<(usize, Target), cpu::Split>,
) -> serde_json::Value {
    let clients = 64;
    let [one, spread] = vias;
    println!(
        "\n{nodes} nodes against one, on one PostgreSQL store, {clients} clients ({nodes} \
         connections on each side; client c on node c % {nodes}):"
    );
    let mut out = serde_json::Map::new();
    for (call, of) in [
        ("reads", Target::Get as fn(Via) -> Target),
        ("writes", Target::Put),
    ] {
        let rate = |via: Via| rps_of.get(&(clients, of(via))).copied().unwrap_or(0.0);
        let ratio = rate(spread) / rate(one);
        let to_one_connection = rate(spread) / rate(NODE_A);
        println!(
            "  {call:<6} {ratio:>5.2}×  ({:.0} against {:.0} req/s; {to_one_connection:.2}× node A \
             over one connection, {:.0} req/s)",
            rate(spread),
            rate(one),
            rate(NODE_A)
        );
        let side = |via: Via| {
            let n = counts.get(&(clients, of(via))).map_or(0, |c| c.0);
            cpu_of.get(&(clients, of(via))).copied().map(|s| (s, n))
        };
        if let (Some((a, na)), Some((b, nb))) = (side(one), side(spread)) {
            let per = |cpu: f64, n: usize| cpu * 1e6 / n.max(1) as f64;
            let ours = |s: &cpu::Split| s.cores(s.kluis + s.load + s.postgres + s.pgbench);
            println!(
                "         CPU µs per call, 1 → {nodes} nodes: kluis {:.0} → {:.0}, PostgreSQL \
                 {:.0} → {:.0}, load generator {:.0} → {:.0}; cores busy: these {:.2} → {:.2}, \
                 machine {:.2} → {:.2}",
                per(a.kluis, na),
                per(b.kluis, nb),
                per(a.postgres, na),
                per(b.postgres, nb),
                per(a.load, na),
                per(b.load, nb),
                ours(&a),
                ours(&b),
                a.cores(a.machine),
                b.cores(b.machine),
            );
        }
        out.insert(
            call.into(),
            json!({
                "clients": clients,
                "ratio": ratio,
                "ratio_to_one_connection": to_one_connection,
                "one_node_requests_per_second": rate(one),
                "nodes_requests_per_second": rate(spread),
                "one_node_one_connection_requests_per_second": rate(NODE_A),
                "one_node_cpu": side(one).map(|(s, n)| s.json(n)),
                "nodes_cpu": side(spread).map(|(s, n)| s.json(n)),
            }),
        );
    }
    out.insert("nodes".into(), json!(nodes));
    serde_json::Value::Object(out)
}

/// The p50 of appending 4 KiB to a file in `dir` and `fdatasync`ing it, 200 times: what one
/// durable commit costs on the disk the data directory is on, in µs.
fn fsync_p50(dir: &std::path::Path) -> u32 {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let block = [0x5a_u8; 4096];
    let mut lat = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    lat.sort_unstable();
    percentile(&lat, 0.5)
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
    let (_, mut lat) = drive_until(env, Target::Get(NODE_A), 64, stop).await;
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
