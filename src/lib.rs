//! kluis: a gRPC vault for special-category personal data.
//!
//! Every field is encrypted under a per-(subject, purpose) data key, wrapped under a versioned
//! purpose key, wrapped under a root key that is never stored. Nothing is decrypted before the
//! Cedar policy allowed it for the caller's role and declared purpose, and the decision is in the
//! tamper-evident audit trail.
//!
//! Crate map (see ARCHITECTURE.md):
//! - `domain`: purposes, categories, roles and validated input types;
//! - `crypto`: key types, the AEAD envelope, the KDF;
//! - `keys`: the key hierarchy and its cache;
//! - `policy`: the Cedar engine, schema and default policies;
//! - `audit`: the hash-chained, MAC'd trail;
//! - `store`: the storage trait and the SQLite store;
//! - `vault`: the domain core (records, request path, credentials);
//! - `identity`: services by client certificate, staff by OpenID Connect token, on behalf of;
//! - `api`: the gRPC services; `server`: assembling and serving them;
//! - `config`: configuration and start-up.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod escape;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod keys;
pub mod metrics;
pub mod policy;
pub mod seal;
pub mod search;
pub mod server;
pub mod store;
pub mod vault;
mod wait;

/// Code generated from `proto/kluis/v1/*.proto`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::allow_attributes_without_reason,
    reason = "generated code"
)]
pub mod pb {
    tonic::include_proto!("kluis.v1");
    // The clients, built apart from the servers (see `build.rs`).
    include!(concat!(env!("OUT_DIR"), "/clients/kluis.v1.rs"));

    /// The encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/kluis_descriptor.bin"));

    /// The bare echo service `benches/load.rs` uses as the gRPC floor; kluis does not serve it.
    pub mod bench {
        tonic::include_proto!("kluis.bench.v1");
    }
}
