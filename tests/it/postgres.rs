//! kluis on PostgreSQL: the store conformance suite on a real cluster, migrations raced by
//! nodes starting at once, and a lost database answering `Unavailable`.

use kluis::store::{AuditRow, HashAt, PgStore, StoreError, prelude::*};

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

/// Makes a CA and a certificate for `localhost` signed by it, with the `openssl` tool: (CA
/// certificate, server certificate, server key).
fn make_certs(dir: &std::path::Path, name: &str) -> [std::path::PathBuf; 3] {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("the `openssl` tool (Debian package openssl) makes the test certificates");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |p: &std::path::PathBuf| p.to_str().unwrap().to_owned();
    let (ca_key, ca, key, csr, cert, ext) = (
        p("ca.key"),
        p("ca.pem"),
        p("server.key"),
        p("server.csr"),
        p("server.pem"),
        p("ext.cnf"),
    );
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &s(&ca_key),
        "-out",
        &s(&ca),
        "-days",
        "2",
        "-subj",
        &format!("/CN=kluis test CA {name}"),
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(&ext, "subjectAltName=DNS:localhost\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca),
        "-CAkey",
        &s(&ca_key),
        "-CAcreateserial",
        "-out",
        &s(&cert),
        "-days",
        "2",
        "-extfile",
        &s(&ext),
    ]);
    [ca, cert, key]
}

#[test]
fn tls_to_the_database_is_verified_and_never_falls_back_to_plaintext() {
    let Some(cluster) = pg::private_cluster("tls") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let [ca, cert, key] = make_certs(tmp.path(), "right");
    let [other_ca, _, _] = make_certs(tmp.path(), "other");
    // A port nothing listens on now: one the system hands out for the asking (a port derived
    // from the process id could be another test's ephemeral port, and the server fail to
    // start).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    cluster.listen_tcp(port, Some((&cert, &key)));
    let url = |ca: &std::path::Path| {
        format!(
            "postgresql://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
            ca.display()
        )
    };
    // The right CA: connects, over TLS.
    let store = PgStore::connect(&url(&ca)).unwrap();
    store.set_meta("k", b"v").unwrap();
    // Its pooled connection stays open: the server says it is encrypted.
    let mut check = postgres::Client::connect(
        &format!(
            "host={} port={port} user=postgres dbname=postgres",
            "127.0.0.1"
        ),
        postgres::NoTls,
    )
    .unwrap();
    let tls_sessions: i64 = check
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid
             WHERE s.ssl AND a.application_name = 'kluis'",
            &[],
        )
        .unwrap()
        .get(0);
    let plain_sessions: i64 = check
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid
             WHERE NOT s.ssl AND a.application_name = 'kluis'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(tls_sessions >= 1, "no TLS session of kluis");
    assert_eq!(plain_sessions, 0, "a plaintext session of kluis");
    drop(store);
    // Another CA: refused, with the reason; nothing is tried in plaintext.
    match PgStore::connect(&url(&other_ca)) {
        Err(StoreError::Unavailable(m)) => assert!(m.to_lowercase().contains("certificate"), "{m}"),
        other => panic!("a server with a certificate from another CA was accepted: {other:?}"),
    }
    // A server that does not speak TLS: refused, not used in plaintext.
    cluster.listen_tcp(port, None);
    match PgStore::connect(&url(&ca)) {
        Err(StoreError::Unavailable(m)) => assert!(
            m.contains("TLS") || m.contains("SSL") || m.contains("ssl"),
            "{m}"
        ),
        other => panic!("verify-full fell back to plaintext: {other:?}"),
    }
}

/// `FindRecords` reads its candidates with one index lookup per probe, whatever the planner
/// knows of the tags: nothing yet (a new database), statistics from when the table was empty (a
/// bulk load before autovacuum's analyze), or current ones. A plan that walks every tag of the
/// field and filters by the probes costs milliseconds per call.
#[test]
fn a_find_looks_up_each_probe_whatever_the_statistics() {
    let Some(cluster) = pg::cluster() else { return };
    // Never analysed, then analysed.
    let (store, mut db) = tagged_records(&cluster.database(), false);
    check_find(&store, &mut db, "never analysed");
    db.batch_execute("ANALYZE search_tags; ANALYZE records; ANALYZE fields;")
        .unwrap();
    check_find(&store, &mut db, "analysed");
    // Analysed while empty.
    let (store, mut db) = tagged_records(&cluster.database(), true);
    check_find(&store, &mut db, "analysed while empty");
}

/// The decoys' walk of a find (`tagged_from`) answers from its tag on, wrapping round, reads
/// the lookup index from the tag in a custom and in a generic plan, no further than it answers,
/// and is planned once: its range on the tag made every custom plan look cheaper than the
/// generic one, so PostgreSQL planned it again at every find.
#[test]
fn a_find_s_decoy_walk_reads_the_index_and_is_planned_once() {
    let Some(cluster) = pg::cluster() else { return };
    for analysed in [false, true] {
        let (store, mut db) = tagged_records(&cluster.database(), false);
        if analysed {
            db.batch_execute("ANALYZE search_tags; ANALYZE records; ANALYZE fields;")
                .unwrap();
        }
        let when = if analysed {
            "analysed"
        } else {
            "never analysed"
        };
        let from = |tag| kluis::store::TagRow {
            version: 1,
            bits: 12,
            tag,
        };
        // Tags 4094 and 4095 (records 4094, 4095), then from the smallest: 0 (4096), 1 (1 and 4097).
        assert_eq!(
            store
                .tagged_from("nuisance", "name", &from(4094), 4)
                .unwrap(),
            vec!["rec-4094", "rec-4095", "rec-4096", "rec-1"],
            "{when}"
        );
        let sql = kluis::store::postgres::tagged_from_statement(16);
        let params: [&(dyn postgres::types::ToSql + Sync); 5] =
            [&"nuisance", &"name", &1i64, &12i64, &2000i64];
        for plan_mode in ["custom", "generic"] {
            db.batch_execute(&format!("SET plan_cache_mode = force_{plan_mode}_plan"))
                .unwrap();
            let plan = explain(&mut db, &sql, &params);
            let text = plan.join("\n");
            let scans: Vec<&String> = plan
                .iter()
                .filter(|l| l.contains("Scan") && l.contains(" on search_tags"))
                .collect();
            assert_eq!(scans.len(), 2, "{when}, {plan_mode}: two walks:\n{text}");
            for scan in scans {
                assert!(
                    scan.contains("Index"),
                    "{when}, {plan_mode}: not an index scan:\n{text}"
                );
                // No walk reads more tags than the 16 it may answer.
                let rows: f64 = scan[scan.find("rows=").unwrap() + 5..]
                    .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(
                    rows <= 16.0,
                    "{when}, {plan_mode}: {rows} tags read:\n{text}"
                );
            }
        }
        assert_planned_once(&mut db, &sql, &params, when);
    }
}

/// The statements that read records by their ids (with their facts, for reads that arrive
/// together; with their fields; with one field's value) and subjects' facts by the subjects
/// read every table through an index, for
/// one id and for many, in a custom and in a generic plan, with and without statistics (a scan
/// of every record per statement is what a join with the array was planned as), and are
/// planned once: with `= ANY($1)` PostgreSQL planned a find's read of its candidates again at
/// every call (119 µs of planning for 93 µs of execution).
#[test]
fn reads_by_id_look_up_each_record_whatever_the_plan() {
    let Some(cluster) = pg::cluster() else { return };
    let statements: [(&str, &str, bool); 4] = [
        (
            "RECORDS_WITH_FACTS",
            &kluis::store::postgres::RECORDS_WITH_FACTS,
            false,
        ),
        (
            "SUBJECTS_FACTS",
            &kluis::store::postgres::SUBJECTS_FACTS,
            false,
        ),
        ("RECORDS", &kluis::store::postgres::RECORDS, false),
        (
            "RECORDS_WITH_FIELD",
            &kluis::store::postgres::RECORDS_WITH_FIELD,
            true,
        ),
    ];
    for analyse_empty in [false, true] {
        let (store, mut db) = tagged_records(&cluster.database(), analyse_empty);
        for when in ["custom", "generic"] {
            db.batch_execute(&format!("SET plan_cache_mode = force_{when}_plan"))
                .unwrap();
            for (name, sql, takes_field) in statements {
                for ids in [
                    vec!["rec-7"],
                    vec!["rec-7", "rec-none", "rec-4000", "rec-7"],
                ] {
                    let params: Vec<&(dyn postgres::types::ToSql + Sync)> = if takes_field {
                        vec![&ids, &"name"]
                    } else {
                        vec![&ids]
                    };
                    let plan = explain(&mut db, sql, &params);
                    let text = plan.join("\n");
                    let when = format!(
                        "{name}, {when} plan, {} ids, analysed empty: {analyse_empty}",
                        ids.len()
                    );
                    assert!(
                        plan.iter()
                            .any(|l| l.contains("Index") && l.contains(" on records")),
                        "{when}: no index lookup of records:\n{text}"
                    );
                    assert!(!text.contains("Seq Scan"), "{when}: a scan:\n{text}");
                }
            }
            // And the store's answers: each id's record with its field, in the order asked.
            let read: Vec<_> = ["rec-7", "rec-none", "rec-4000"]
                .iter()
                .map(|id| {
                    store
                        .record_with_facts(id)
                        .unwrap()
                        .map(|read| (read.record.id.clone(), read.fields.len()))
                })
                .collect();
            assert_eq!(
                read,
                [
                    Some(("rec-7".to_owned(), 1)),
                    None,
                    Some(("rec-4000".to_owned(), 1))
                ]
            );
            let asked = ["rec-7", "rec-none", "rec-4000", "rec-7"];
            let read: Vec<_> = store
                .records(&asked)
                .unwrap()
                .into_iter()
                .map(|(r, f)| (r.id, f.len()))
                .collect();
            let each = |id: &str| (id.to_owned(), 1);
            assert_eq!(read, [each("rec-7"), each("rec-4000"), each("rec-7")]);
            let read: Vec<_> = store
                .records_with_field(&asked, "name")
                .unwrap()
                .into_iter()
                .map(|(r, metas, value)| (r.id, metas.len(), value.map(|v| v.name)))
                .collect();
            let each = |id: &str| (id.to_owned(), 1, Some("name".to_owned()));
            assert_eq!(read, [each("rec-7"), each("rec-4000"), each("rec-7")]);
        }
        // Planned once, for a few ids.
        let ids = vec!["rec-7", "rec-8", "rec-9"];
        for (name, sql, takes_field) in statements {
            let params: Vec<&(dyn postgres::types::ToSql + Sync)> = if takes_field {
                vec![&ids, &"name"]
            } else {
                vec![&ids]
            };
            assert_planned_once(&mut db, sql, &params, name);
        }
    }
}

/// The lines of the plan PostgreSQL ran `sql` by, with the rows each step read.
fn explain(
    db: &mut postgres::Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Vec<String> {
    db.query(
        &format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}"),
        params,
    )
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// Runs `sql` twelve times as one prepared statement and fails unless PostgreSQL planned it
/// once: a generic plan after the first five calls, as for any statement where planning costs
/// more than running it. Forgets the connection's prepared statements afterwards.
fn assert_planned_once(
    db: &mut postgres::Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
    what: &str,
) {
    db.batch_execute("SET plan_cache_mode = auto").unwrap();
    let statement = db.prepare(sql).unwrap();
    for _ in 0..12 {
        db.query(&statement, params).unwrap();
    }
    let plans = db
        .query_one(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
            &[&sql],
        )
        .unwrap();
    let (generic, custom): (i64, i64) = (plans.get(0), plans.get(1));
    assert!(
        custom <= 5 && generic >= 7,
        "{what}: planned again at calls: {generic} generic, {custom} custom plans"
    );
    db.batch_execute("DEALLOCATE ALL").unwrap();
}

/// A row edited by hand fails the read of its record, and only that one: reads of other records
/// that share its statement (reads that arrive together are answered by one) are answered.
#[test]
fn an_edited_row_fails_its_own_read_and_not_those_beside_it() {
    let Some(cluster) = pg::cluster() else { return };
    let (store, mut db) = tagged_records(&cluster.database(), false);
    db.batch_execute("UPDATE fields SET category = 'gossip' WHERE record_id = 'rec-9'")
        .unwrap();
    let edited = store.record_with_facts("rec-9").unwrap_err();
    assert!(matches!(edited, StoreError::Corrupt(_)), "{edited}");
    let failed_beside = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (store, failed_beside) = (&store, &failed_beside);
            s.spawn(move || {
                for i in 0..100 {
                    let id = if (t + i) % 3 == 0 { "rec-9" } else { "rec-7" };
                    match (id, store.record_with_facts(id)) {
                        ("rec-9", Err(StoreError::Corrupt(_))) => {}
                        ("rec-7", Ok(Some(read))) => {
                            assert_eq!((read.record.id.as_str(), read.fields.len()), ("rec-7", 1));
                        }
                        (_, other) => {
                            failed_beside.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            assert!(id == "rec-7", "{id}: {other:?}");
                        }
                    }
                }
            });
        }
    });
    assert_eq!(
        failed_beside.into_inner(),
        0,
        "reads of rec-7 failed beside the edited row"
    );
}

/// A store on `url` holding 5,000 records with a tag each (tags 0–4095, so 904 of them twice),
/// autovacuum off; `analyse_empty` analyses the tables before they are filled.
fn tagged_records(url: &str, analyse_empty: bool) -> (PgStore, postgres::Client) {
    let store = PgStore::connect(url).unwrap();
    let mut db = postgres::Client::connect(url, postgres::NoTls).unwrap();
    db.batch_execute(
        "ALTER TABLE search_tags SET (autovacuum_enabled = false);
         ALTER TABLE records SET (autovacuum_enabled = false);
         ALTER TABLE fields SET (autovacuum_enabled = false);",
    )
    .unwrap();
    if analyse_empty {
        db.batch_execute("ANALYZE search_tags; ANALYZE records; ANALYZE fields;")
            .unwrap();
    }
    db.batch_execute(
        "INSERT INTO records (id, subject, purpose, labels, created_at, updated_at, mac, fields_mac)
             SELECT 'rec-' || i, 'REL-' || i, 'nuisance', '{}', 0, 0, '\\x00', '\\x00'
             FROM generate_series(1, 5000) AS i;
         INSERT INTO fields (record_id, name, category, kind, key_gen, sealed, mac, version)
             SELECT 'rec-' || i, 'name', 'identity', 'text', 1, '\\x00', '\\x00', 'v'
             FROM generate_series(1, 5000) AS i;
         INSERT INTO search_tags (record_id, field, purpose, version, bits, tag)
             SELECT 'rec-' || i, 'name', 'nuisance', 1, 12, i % 4096
             FROM generate_series(1, 5000) AS i;",
    )
    .unwrap();
    (store, db)
}

/// Finds tags 7 and 4000 in `store` and checks the answers, the plan and that it is planned once.
fn check_find(store: &PgStore, db: &mut postgres::Client, when: &str) {
    let probes = [
        kluis::store::TagRow {
            version: 1,
            bits: 12,
            tag: 7,
        },
        kluis::store::TagRow {
            version: 1,
            bits: 12,
            tag: 4000,
        },
    ];
    // The right records: tags 7 (records 7 and 4103) and 4000 (record 4000), in id order.
    assert_eq!(
        store.find_tagged("nuisance", "name", &probes, 10).unwrap(),
        vec!["rec-4000", "rec-4103", "rec-7"]
    );
    assert_eq!(
        store.find_tagged("nuisance", "name", &probes, 1).unwrap(),
        vec!["rec-4000"]
    );
    // And how, in a custom and in a generic plan: every scan of `search_tags` looks the probe
    // up on all five columns of its index, and reads no more tags than it finds.
    let (versions, bits, tags) = (vec![1i64, 1], vec![12i64, 12], vec![7i64, 4000]);
    let params: [&(dyn postgres::types::ToSql + Sync); 6] =
        [&"nuisance", &"name", &versions, &bits, &tags, &10i64];
    for plan_mode in ["custom", "generic"] {
        db.batch_execute(&format!("SET plan_cache_mode = force_{plan_mode}_plan"))
            .unwrap();
        check_find_plan(db, &params, &format!("{when}, {plan_mode} plan"));
    }
    assert_planned_once(db, kluis::store::postgres::FIND_TAGGED, &params, when);
}

/// The plan of `FIND_TAGGED` for tags 7 and 4000, checked as `check_find` says.
fn check_find_plan(
    db: &mut postgres::Client,
    params: &[&(dyn postgres::types::ToSql + Sync)],
    when: &str,
) {
    let plan = explain(db, kluis::store::postgres::FIND_TAGGED, params);
    let text = plan.join("\n");
    let scans: Vec<usize> = plan
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("Scan") && l.contains(" on search_tags"))
        .map(|(i, _)| i)
        .collect();
    assert!(!scans.is_empty(), "{when}: no scan of search_tags:\n{text}");
    for at in scans {
        assert!(
            plan[at].contains("Index"),
            "{when}: not an index scan:\n{text}"
        );
        // Its condition is on the next lines, before the next node.
        let cond = plan[at + 1..]
            .iter()
            .take_while(|l| !l.contains("->"))
            .find(|l| l.contains("Index Cond"))
            .unwrap_or_else(|| panic!("{when}: no index condition:\n{text}"));
        for column in ["purpose", "field", "version", "bits", "tag"] {
            assert!(
                cond.contains(column),
                "{when}: `{column}` not looked up:\n{text}"
            );
        }
        // `(actual rows=R loops=L)`: R rows per loop on average.
        let number = |key: &str| -> f64 {
            let rest = &plan[at][plan[at].find(key).unwrap() + key.len()..];
            rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        // R is rounded, so the product may show up to half a row per loop more than read.
        let (rows, loops) = (number("rows="), number("loops="));
        assert!(
            rows * loops <= 3.0 + 0.5 * loops,
            "{when}: {rows} × {loops} tags read for 3 found:\n{text}"
        );
    }
}

#[test]
fn the_trail_is_found_by_subject_past_thousands_of_entries() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let store = PgStore::connect(&url).unwrap();
    // Lookups agree with a scan of the trail, paged as an export reads it; the index the
    // database computes from the entries has nothing to report.
    kluis::store::conformance::trail_by_subject(&store);
    // Rows numbered below the first entry, inserted by hand, are counted for `audit verify`.
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    db.execute(
        "INSERT INTO audit (seq, entry, prev_hash, hash, mac) \
         SELECT s, entry, prev_hash, hash, mac FROM audit, (VALUES (-5::BIGINT), (0)) v(s) \
         WHERE seq = 3",
        &[],
    )
    .unwrap();
    assert_eq!(store.audit_rows_below_one().unwrap(), (2, 0));
}

/// A chain as the trail builds it (each row's `prev_hash` the hash of the row before), of `n`
/// rows on the tail it is offered; every tail it was offered is kept in `offered`.
fn chain_of<'a>(
    node: usize,
    n: usize,
    offered: &'a mut Vec<Option<AuditRow>>,
) -> impl FnMut(Option<&AuditRow>, &mut HashAt<'_>) -> Result<Vec<AuditRow>, StoreError> + 'a {
    use sha2::Digest;
    move |tail, _| {
        offered.push(tail.cloned());
        let (mut seq, mut prev) = tail.map_or((0, vec![0; 32]), |t| (t.seq, t.hash.clone()));
        Ok((0..n)
            .map(|i| {
                seq += 1;
                let entry = format!("{{\"seq\":{seq},\"node\":{node},\"i\":{i}}}").into_bytes();
                let hash = sha2::Sha256::new()
                    .chain_update(seq.to_be_bytes())
                    .chain_update(&prev)
                    .chain_update(&entry)
                    .finalize()
                    .to_vec();
                AuditRow {
                    seq,
                    entry,
                    prev_hash: std::mem::replace(&mut prev, hash.clone()),
                    hash,
                    mac: vec![7; 32],
                }
            })
            .collect())
    }
}

/// Every row of the trail, in order.
fn whole_trail(store: &PgStore) -> Vec<AuditRow> {
    store.audit_entries(1, 1_000_000).unwrap()
}

#[test]
fn appenders_on_their_own_tails_keep_one_chain_across_nodes() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let nodes: Vec<PgStore> = (0..3).map(|_| PgStore::connect(&url).unwrap()).collect();
    // Three nodes append at once, each mostly on the tail it appended last, which another
    // node's rows keep overtaking: every batch lands whole, on the tail as stored.
    let appended: Vec<Vec<AuditRow>> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(node, store)| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for k in 0..150 {
                        let mut offered = Vec::new();
                        let rows = store
                            .append_chained(&mut chain_of(node, 1 + k % 3, &mut offered))
                            .unwrap();
                        assert_eq!(rows.len(), 1 + k % 3);
                        mine.extend(rows);
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let trail = whole_trail(&nodes[0]);
    assert_eq!(trail.len(), appended.iter().map(Vec::len).sum::<usize>());
    for (i, row) in trail.iter().enumerate() {
        assert_eq!(row.seq, i as u64 + 1);
        let prev = trail
            .get(i.wrapping_sub(1))
            .map_or(vec![0; 32], |p| p.hash.clone());
        assert_eq!(
            row.prev_hash, prev,
            "entry {} is not chained on the one before",
            row.seq
        );
    }
    // What each node was told it appended is what is stored in those places.
    for row in appended.iter().flatten() {
        assert_eq!(&trail[row.seq as usize - 1], row);
    }
}

#[test]
fn an_appender_takes_the_stored_tail_when_its_own_is_no_longer_it() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let store = PgStore::connect(&url).unwrap();
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let append = |n: usize| {
        let mut offered = Vec::new();
        let rows = store
            .append_chained(&mut chain_of(0, n, &mut offered))
            .unwrap();
        (rows, offered.pop().unwrap())
    };
    let (first, offered) = append(2);
    assert_eq!(offered, None);
    // Nothing changed: the next batch goes on the tail this store appended.
    let (second, offered) = append(1);
    assert_eq!(offered.as_ref(), first.last());
    assert_eq!(second[0].seq, 3);

    // Twin: the tail's hash edited by hand. The store offers the row as stored, which the
    // trail's chain (`audit::commit_batch`) refuses as not the entry committed in its place.
    db.execute("UPDATE audit SET hash = '\\x00' WHERE seq = 3", &[])
        .unwrap();
    let (_, offered) = append(1);
    assert_eq!(offered.unwrap().hash, vec![0u8]);

    // Twin: the tail deleted by hand (the trail cut back): the row before it is offered, on
    // which the trail's chain refuses to go on.
    db.execute("DELETE FROM audit WHERE seq = 4", &[]).unwrap();
    let (rows, offered) = append(1);
    assert_eq!(offered.unwrap().seq, 3);
    assert_eq!(rows[0].seq, 4);

    // Twin: another node appended beside this one: its row is offered, not this store's tail.
    let beside = AuditRow {
        seq: 5,
        entry: b"{\"seq\":5}".to_vec(),
        prev_hash: rows[0].hash.clone(),
        hash: vec![5; 32],
        mac: vec![5; 32],
    };
    store.append_audit(std::slice::from_ref(&beside)).unwrap();
    let (rows, offered) = append(1);
    assert_eq!(offered, Some(beside));
    assert_eq!(rows[0].seq, 6);

    // Twin: the tail's MAC alone edited by hand: the statement on the tail compares its
    // place and hash, so the store's own tail is offered; `audit verify` finds the MAC.
    db.execute("UPDATE audit SET mac = '\\x00' WHERE seq = 6", &[])
        .unwrap();
    let (_, offered) = append(1);
    assert_eq!(offered.as_ref(), Some(&rows[0]));
    assert_eq!(whole_trail(&store).len(), 7);
}

#[test]
fn an_append_that_meets_a_number_taken_beside_it_goes_on_the_stored_tail() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let store = PgStore::connect(&url).unwrap();
    let mut offered = Vec::new();
    let first = store
        .append_chained(&mut chain_of(0, 1, &mut offered))
        .unwrap();
    // Another node's appender inserts entry 2 and has not committed yet.
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut other = db.transaction().unwrap();
    let mut beside = chain_of(1, 1, &mut Vec::new())(first.last(), &mut |_| Ok(None)).unwrap();
    let beside = beside.remove(0);
    other
        .execute(
            "INSERT INTO audit (seq, entry, prev_hash, hash, mac) VALUES ($1, $2, $3, $4, $5)",
            &[
                &(beside.seq as i64),
                &beside.entry,
                &beside.prev_hash,
                &beside.hash,
                &beside.mac,
            ],
        )
        .unwrap();
    let (rows, offered) = std::thread::scope(|s| {
        let append = s.spawn(|| {
            let mut offered = Vec::new();
            let rows = store
                .append_chained(&mut chain_of(0, 2, &mut offered))
                .unwrap();
            (rows, offered)
        });
        // The append on its own tail waits on the number the other took, then fails whole.
        std::thread::sleep(std::time::Duration::from_millis(300));
        other.commit().unwrap();
        append.join().unwrap()
    });
    assert_eq!(
        offered,
        vec![first.last().cloned(), Some(beside.clone())],
        "first its own tail, then the tail as stored"
    );
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
    let trail = whole_trail(&store);
    assert_eq!(trail.len(), 4);
    assert_eq!(trail[1], beside);
    assert_eq!(trail[2].prev_hash, beside.hash);
}

#[test]
fn a_batch_the_database_cuts_short_is_stored_whole_or_not_at_all() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let store = PgStore::connect(&url).unwrap();
    let first = store
        .append_chained(&mut chain_of(0, 1, &mut Vec::new()))
        .unwrap();
    // A trigger someone added drops entry 3 of the next batch (2 to 4).
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    db.batch_execute(
        "CREATE FUNCTION drop_three() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN IF NEW.seq = 3 THEN RETURN NULL; END IF; RETURN NEW; END $$;
         CREATE TRIGGER drop_three BEFORE INSERT ON audit
             FOR EACH ROW EXECUTE FUNCTION drop_three();",
    )
    .unwrap();
    let mut offered = Vec::new();
    let e = store
        .append_chained(&mut chain_of(0, 3, &mut offered))
        .unwrap_err();
    assert!(e.to_string().contains("2 audit rows stored of 3"), "{e}");
    // Tried on its own tail, then under the lock on the tail as stored; nothing stored.
    assert_eq!(offered, vec![first.last().cloned(), first.last().cloned()]);
    assert_eq!(whole_trail(&store), first);
    // The twin: without the trigger the same batch is stored whole.
    db.batch_execute("DROP TRIGGER drop_three ON audit")
        .unwrap();
    let rows = store
        .append_chained(&mut chain_of(0, 3, &mut Vec::new()))
        .unwrap();
    assert_eq!(whole_trail(&store).len(), 1 + rows.len());
}

/// A subject's first key that another transaction holds uncommitted (another node storing the
/// same subject's first record): the write waits for it, and finds the subject's key taken when
/// that transaction commits (storing nothing: its record is sealed again under that key), or
/// stores its key and record when it rolls back.
#[test]
fn a_first_key_held_uncommitted_elsewhere_is_waited_for() {
    use std::time::Duration;

    use kluis::{
        domain::{Category, FieldKind, Purpose},
        store::{AnchorRow, FieldRow, SubjectKeyRow},
    };
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.database();
    let store = PgStore::connect(&url).unwrap();
    let version = kluis::store::conformance::nuisance_key_v1();
    store.initialize(&[("root", vec![1])], &[version]).unwrap();
    let write = |subject: &str, record: &str| {
        let key = SubjectKeyRow {
            subject: subject.into(),
            purpose: Purpose::Nuisance,
            generation: 1,
            purpose_version: 1,
            wrapped: vec![9; 40],
            created_at: 11,
        };
        let anchor = AnchorRow {
            subject: subject.into(),
            holds: 0,
            consents: 0,
            digest: vec![0x76; 32],
            mac: vec![0x77; 32],
        };
        let row = kluis::store::conformance::record_row(record, subject);
        let field = FieldRow {
            name: "phone".into(),
            category: Category::Contact,
            kind: FieldKind::Text,
            key_gen: 1,
            sealed: vec![5; 40],
            version: "v1".into(),
            mac: vec![0x22; 32],
            tags: Vec::new(),
        };
        store.insert_record_with_key(&key, &anchor, &row, &[field])
    };
    for commit in [true, false] {
        let subject = format!("rel-held-{commit}");
        let mut holder = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut held = holder.transaction().unwrap();
        held.execute(
            "INSERT INTO subject_keys (subject, purpose, generation, purpose_version, wrapped, \
             created_at) VALUES ($1, 'nuisance', 1, 1, $2, 12)",
            &[&subject, &vec![8u8; 40]],
        )
        .unwrap();
        std::thread::scope(|s| {
            let waiting = s.spawn(|| write(&subject, &format!("rec-{commit}")));
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                !waiting.is_finished(),
                "the write did not wait for the held key"
            );
            if commit {
                held.commit().unwrap();
            } else {
                held.rollback().unwrap();
            }
            let written = waiting.join().unwrap();
            let stored = store.subject_key(&subject, "nuisance").unwrap().unwrap();
            if commit {
                assert!(
                    matches!(&written, Err(StoreError::Exists(what)) if what.contains("subject key")),
                    "{written:?}"
                );
                assert_eq!(stored.created_at, 12, "the key held elsewhere stays");
                assert!(store.record(&format!("rec-{commit}")).unwrap().is_none());
            } else {
                written.unwrap();
                assert_eq!(stored.created_at, 11);
                assert!(store.record(&format!("rec-{commit}")).unwrap().is_some());
            }
        });
    }
}
