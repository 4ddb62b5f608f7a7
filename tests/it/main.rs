//! Black-box tests of kluis: a real server on 127.0.0.1, real gRPC, a real SQLite store.
//!
//! Modules: `api` (the request path end to end), `storage` (what lies on disk, tampering),
//! `unseal` (root key and restarts), `guard` (bad input), `admin` (credentials), `policy_table`
//! (the default policy over every role × purpose × category), `cli` (the `kluis` binary),
//! `enforcement` (the hostile-request table: what an attacker tries, class by class), `identity`
//! (client certificates, provider tokens, acting on behalf of an employee), `dos` (clients that
//! stop reading, idle connections, past every cap).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation must panic"
)]

mod admin;
mod api;
mod attack;
mod audit;
mod backup;
mod cli;
mod common;
mod concurrency;
mod crash;
mod deploy;
mod disclosures;
mod dos;
mod enforcement;
mod evidence;
mod freshness;
mod guard;
mod hygiene;
mod identity;
mod lifecycle;
mod masked;
mod metrics;
mod nodes;
mod pg;
mod policy_reload;
mod policy_table;
mod postgres;
mod proto;
mod rejudged;
mod rights;
mod rotation;
mod seal;
mod search;
mod storage;
mod subject_rights;
mod tamper;
mod unseal;
mod watch;
