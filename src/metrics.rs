//! What kluis counts for Prometheus (`[metrics] listen`), in the OpenMetrics text format by the
//! `prometheus-client` crate, on an HTTP listener of its own (`serve`).
//!
//! One set per process (`get`), so that counts carry over when a node is sealed and unsealed.
//!
//! Invariant: no label carries a subject, record, principal, token, share or value: labels are
//! services, methods, status codes, actions, effects, purposes, job and sweep names and reasons,
//! all from closed sets, as `&'static str` (counting allocates nothing on the request path).

use std::{sync::OnceLock, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// A gRPC call: `kluis.v1.Vault`, `GetRecord`, `OK`.
#[derive(Clone, Debug, Eq, Hash, PartialEq, EncodeLabelSet)]
pub struct CallLabels {
    /// The gRPC service, e.g. `kluis.v1.Vault`.
    pub service: &'static str,
    /// The method, e.g. `GetRecord`.
    pub method: &'static str,
    /// The status code, e.g. `OK`, `PERMISSION_DENIED`.
    pub code: &'static str,
}

/// A gRPC method, for latency.
#[derive(Clone, Debug, Eq, Hash, PartialEq, EncodeLabelSet)]
pub struct MethodLabels {
    /// The gRPC service.
    pub service: &'static str,
    /// The method.
    pub method: &'static str,
}

/// A policy decision.
#[derive(Clone, Debug, Eq, Hash, PartialEq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The Cedar action, e.g. `read`, `manage-keys`.
    pub action: &'static str,
    /// `allow` or `deny`.
    pub effect: &'static str,
    /// `fresh` (evaluated) or `memoised` (reused, see `policy::memo`).
    pub evaluation: &'static str,
}

/// One label, named by the metric's help.
#[derive(Clone, Debug, Eq, Hash, PartialEq, EncodeLabelSet)]
pub struct OperationLabels {
    /// A key operation: `rotate`, `rewrap-batch`, `rekey-subject`, `destroy`, `root-change`, …
    pub operation: &'static str,
}

/// A key job of one purpose.
#[derive(Clone, Debug, Eq, Hash, PartialEq, EncodeLabelSet)]
pub struct JobLabels {
    /// `rewrap` or `rekey`.
    pub job: &'static str,
    /// The purpose.
    pub purpose: &'static str,
}

/// A periodic sweep and how it ended.
#[derive(Clone, Debug, Eq, Hash, PartialEq, EncodeLabelSet)]
pub struct SweepLabels {
    /// `key-sweep`, `retention-sweep`.
    pub sweep: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// Why an audit batch was not committed.
#[derive(Clone, Debug, Eq, Hash, PartialEq, EncodeLabelSet)]
pub struct AuditFailureLabels {
    /// `unavailable`: the trail could not be written (the store down or busy, a write
    /// refused; calls fail `UNAVAILABLE`); `broken`: the stored trail is not the one to chain
    /// onto (its last entry edited, deleted or lost; calls fail `DATA_LOSS`).
    pub kind: &'static str,
}

/// Why an authentication failed.
#[derive(Clone, Debug, Eq, Hash, PartialEq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A closed set: `missing-credentials`, `unknown-token`, `expired-token`, `revoked-token`,
    /// `altered-token-row`, `pending-approval`, `provider-token`, `certificate`, `on-behalf`.
    pub reason: &'static str,
}

/// A cache lookup.
#[derive(Clone, Debug, Eq, Hash, PartialEq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `hit` or `miss`.
    pub result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 13 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

/// Every metric kluis keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// gRPC calls by service, method and status code.
    pub calls: Family<CallLabels, Counter>,
    /// gRPC call latency by service and method, in seconds (to the end of the response).
    pub call_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// Audit entries committed.
    pub audit_appends: Counter,
    /// Audit batches that failed to commit, by kind.
    pub audit_failures: Family<AuditFailureLabels, Counter>,
    /// Entries per committed batch.
    pub audit_batch: Histogram,
    /// Seconds a batch took to commit.
    pub audit_append_seconds: Histogram,
    /// 1 while the audit trail can be written.
    pub audit_writable: Gauge,
    /// Policy decisions by action, effect and whether evaluated or reused.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Key operations by kind.
    pub key_operations: Family<OperationLabels, Counter>,
    /// Per key job: subject keys (rewrap) or subjects (rekey) done in its current run.
    pub key_job_done: Family<JobLabels, Gauge>,
    /// Per key job: what its current run found to do in all.
    pub key_job_total: Family<JobLabels, Gauge>,
    /// Per key job: Unix time of its last progress.
    pub key_job_progress_time: Family<JobLabels, Gauge>,
    /// Sweeps by name and outcome.
    pub sweeps: Family<SweepLabels, Counter>,
    /// Subject keys held unwrapped in memory.
    pub key_cache_entries: Gauge,
    /// Subject key lookups by result.
    pub key_cache_lookups: Family<ResultLabels, Counter>,
    /// 1 while the node is sealed.
    pub sealed: Gauge,
    /// Legal holds in force.
    pub holds_open: Gauge,
    /// Subject requests not yet answered.
    pub requests_open: Gauge,
    /// Subject requests past their deadline.
    pub requests_overdue: Gauge,
    /// Tokens that expire within 14 days (not revoked).
    pub tokens_expiring: Gauge,
    /// Authentication failures by reason.
    pub auth_failures: Family<ReasonLabels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("kluis");
        let m = Self {
            registry: Registry::default(),
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            audit_appends: Counter::default(),
            audit_failures: Family::default(),
            audit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            audit_append_seconds: latency_histogram(),
            audit_writable: Gauge::default(),
            decisions: Family::default(),
            key_operations: Family::default(),
            key_job_done: Family::default(),
            key_job_total: Family::default(),
            key_job_progress_time: Family::default(),
            sweeps: Family::default(),
            key_cache_entries: Gauge::default(),
            key_cache_lookups: Family::default(),
            sealed: Gauge::default(),
            holds_open: Gauge::default(),
            requests_open: Gauge::default(),
            requests_overdue: Gauge::default(),
            tokens_expiring: Gauge::default(),
            auth_failures: Family::default(),
        };
        registry.register(
            "grpc_calls",
            "gRPC calls by service, method and status code",
            m.calls.clone(),
        );
        registry.register(
            "grpc_call_duration_seconds",
            "gRPC call latency by service and method",
            m.call_seconds.clone(),
        );
        registry.register(
            "audit_appends",
            "Audit entries committed",
            m.audit_appends.clone(),
        );
        // Both kinds from the start, at zero: a series that first appears at 1 shows no
        // `increase()`, and the alert on the first failure after a start would not fire.
        for kind in ["unavailable", "broken"] {
            drop(m.audit_failures.get_or_create(&AuditFailureLabels { kind }));
        }
        registry.register(
            "audit_append_failures",
            "Audit batches that failed to commit, by kind: unavailable (the trail cannot be \
             written) or broken (its last entry is not the one to chain onto); every call that \
             needs an entry fails meanwhile",
            m.audit_failures.clone(),
        );
        registry.register(
            "audit_batch_entries",
            "Entries per committed audit batch",
            m.audit_batch.clone(),
        );
        registry.register(
            "audit_append_duration_seconds",
            "Seconds an audit batch took to commit",
            m.audit_append_seconds.clone(),
        );
        registry.register(
            "audit_writable",
            "1 while the audit trail can be written",
            m.audit_writable.clone(),
        );
        registry.register(
            "policy_decisions",
            "Policy decisions by action, effect and evaluation (fresh or memoised)",
            m.decisions.clone(),
        );
        registry.register(
            "key_operations",
            "Key operations by kind",
            m.key_operations.clone(),
        );
        registry.register(
            "key_job_done",
            "Per key job (rewrap, rekey) and purpose: done in its current run",
            m.key_job_done.clone(),
        );
        registry.register(
            "key_job_total",
            "Per key job and purpose: what its current run found to do",
            m.key_job_total.clone(),
        );
        registry.register(
            "key_job_last_progress_timestamp_seconds",
            "Per key job and purpose: Unix time of its last progress",
            m.key_job_progress_time.clone(),
        );
        registry.register(
            "sweeps",
            "Key and retention sweeps by outcome",
            m.sweeps.clone(),
        );
        registry.register(
            "key_cache_entries",
            "Subject keys held unwrapped in memory",
            m.key_cache_entries.clone(),
        );
        registry.register(
            "key_cache_lookups",
            "Subject key lookups by result (hit, miss)",
            m.key_cache_lookups.clone(),
        );
        registry.register("sealed", "1 while this node is sealed", m.sealed.clone());
        registry.register(
            "legal_holds_open",
            "Legal holds in force",
            m.holds_open.clone(),
        );
        registry.register(
            "subject_requests_open",
            "Subject requests not yet answered",
            m.requests_open.clone(),
        );
        registry.register(
            "subject_requests_overdue",
            "Subject requests past their deadline",
            m.requests_overdue.clone(),
        );
        registry.register(
            "tokens_expiring_soon",
            "Tokens (not revoked) that expire within 14 days",
            m.tokens_expiring.clone(),
        );
        registry.register(
            "authentication_failures",
            "Authentication failures by reason",
            m.auth_failures.clone(),
        );
        Self { registry, ..m }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// Counts a policy decision.
pub fn decision(action: &'static str, allow: bool, memoised: bool) {
    get()
        .decisions
        .get_or_create(&DecisionLabels {
            action,
            effect: if allow { "allow" } else { "deny" },
            evaluation: if memoised { "memoised" } else { "fresh" },
        })
        .inc();
}

/// Counts a key operation.
pub fn key_operation(operation: &'static str) {
    get()
        .key_operations
        .get_or_create(&OperationLabels { operation })
        .inc();
}

/// Records a key job's progress.
pub fn key_job(job: &'static str, purpose: &'static str, done: u64, total: u64) {
    let labels = JobLabels { job, purpose };
    let m = get();
    m.key_job_done
        .get_or_create(&labels)
        .set(i64::try_from(done).unwrap_or(i64::MAX));
    m.key_job_total
        .get_or_create(&labels)
        .set(i64::try_from(total).unwrap_or(i64::MAX));
    m.key_job_progress_time
        .get_or_create(&labels)
        .set(crate::domain::now_unix());
}

/// Counts a sweep run.
pub fn sweep(sweep: &'static str, ok: bool) {
    get()
        .sweeps
        .get_or_create(&SweepLabels {
            sweep,
            outcome: if ok { "ok" } else { "error" },
        })
        .inc();
}

/// Counts an authentication failure.
pub fn auth_failure(reason: &'static str) {
    get()
        .auth_failures
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// Counts a subject key lookup.
pub fn key_cache_lookup(hit: bool) {
    get()
        .key_cache_lookups
        .get_or_create(&ResultLabels {
            result: if hit { "hit" } else { "miss" },
        })
        .inc();
}

/// Records a committed audit batch.
pub fn audit_committed(entries: usize, took: Duration) {
    let m = get();
    m.audit_appends.inc_by(entries as u64);
    m.audit_batch.observe(entries as f64);
    m.audit_append_seconds.observe(took.as_secs_f64());
    m.audit_writable.set(1);
}

/// Records a failed audit batch: `broken` when the stored trail is not the one to chain onto,
/// otherwise it could not be written.
pub fn audit_failed(broken: bool) {
    let m = get();
    m.audit_failures
        .get_or_create(&AuditFailureLabels {
            kind: if broken { "broken" } else { "unavailable" },
        })
        .inc();
    m.audit_writable.set(0);
}

/// Records a finished gRPC call.
pub fn call(path: &str, code: &'static str, took: Duration) {
    let (service, method) = split_path(path);
    let m = get();
    m.calls
        .get_or_create(&CallLabels {
            service,
            method,
            code,
        })
        .inc();
    m.call_seconds
        .get_or_create(&MethodLabels { service, method })
        .observe(took.as_secs_f64());
}

/// Every method kluis serves, as `(service, method)`: its own from the descriptor set it is
/// built with, and those of health and reflection.
fn methods() -> &'static std::collections::HashSet<(String, String)> {
    static METHODS: OnceLock<std::collections::HashSet<(String, String)>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let mut set: std::collections::HashSet<(String, String)> = [
            ("grpc.health.v1.Health", "Check"),
            ("grpc.health.v1.Health", "Watch"),
            (
                "grpc.reflection.v1.ServerReflection",
                "ServerReflectionInfo",
            ),
            (
                "grpc.reflection.v1alpha.ServerReflection",
                "ServerReflectionInfo",
            ),
        ]
        .into_iter()
        .map(|(s, m)| (s.to_owned(), m.to_owned()))
        .collect();
        if let Ok(fds) = <prost_types::FileDescriptorSet as prost::Message>::decode(
            crate::pb::FILE_DESCRIPTOR_SET,
        ) {
            for file in fds.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let name = format!("{package}.{}", service.name.unwrap_or_default());
                    for method in service.method {
                        set.insert((name.clone(), method.name.unwrap_or_default()));
                    }
                }
            }
        }
        set
    })
}

/// `/kluis.v1.Vault/GetRecord` → (`kluis.v1.Vault`, `GetRecord`); a path that is not one of the
/// methods kluis serves counts as (`other`, `other`), so a caller cannot make labels up.
fn split_path(path: &str) -> (&'static str, &'static str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    match methods().get(&(service.to_owned(), method.to_owned())) {
        Some((s, m)) => (s.as_str(), m.as_str()),
        None => ("other", "other"),
    }
}

/// The name of a gRPC status code as the protocol spells it.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_kluis_services_do_not_make_labels() {
        assert_eq!(
            split_path("/kluis.v1.Vault/GetRecord"),
            ("kluis.v1.Vault", "GetRecord")
        );
        assert_eq!(split_path("/kluis.v1.Vault/REL0001"), ("other", "other"));
        assert_eq!(
            split_path("/kluis.v1.Operator/Unseal"),
            ("kluis.v1.Operator", "Unseal")
        );
        assert_eq!(
            split_path("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        assert_eq!(split_path("/evil/REL-0001"), ("other", "other"));
        assert_eq!(split_path(""), ("other", "other"));
    }

    #[test]
    fn the_exposition_names_every_family() {
        call("/kluis.v1.Vault/WhoAmI", "OK", Duration::from_millis(1));
        let text = get().encode();
        for name in [
            "kluis_grpc_calls_total",
            "kluis_grpc_call_duration_seconds_bucket",
            "kluis_sealed",
            "kluis_audit_writable",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
