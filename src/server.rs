//! Assembles the gRPC server: the `Vault` and `Admin` services, `grpc.health.v1`, server
//! reflection, TLS (rustls) when configured, with client certificates verified against
//! `[tls] client_ca` when set, message size limits and timeouts.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;

use tonic::transport::Server;

use crate::{
    api::{AdminApi, OperatorApi, VaultApi},
    config::Config,
    identity::Identity,
    pb::{admin_server::AdminServer, operator_server::OperatorServer, vault_server::VaultServer},
    vault::Vault,
};

mod accept;
pub(crate) use accept::address_key;
mod gather;
mod killable;
mod metered;
mod node;

pub use accept::ConnectionLimits;

pub use crate::api::operator::NodeSource;
pub use node::serve_node;

/// Largest gRPC message accepted, in bytes. Above the field limits, so that the field limits
/// give the more precise error.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Errors while starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS configuration failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(String),
}

/// PEM-encoded certificate chain and private key for TLS.
#[derive(Clone)]
pub struct TlsPem {
    /// Certificate chain.
    pub cert: Vec<u8>,
    /// Private key.
    pub key: zeroize::Zeroizing<Vec<u8>>,
    /// CA certificates that sign client certificates; the server asks for one when set.
    pub client_ca: Option<Vec<u8>>,
    /// Connections without a client certificate are accepted.
    pub client_auth_optional: bool,
}

impl TlsPem {
    /// Reads the TLS files `cfg` names, or `None` when TLS is not configured.
    pub fn read(cfg: &Config) -> Result<Option<Self>, String> {
        let Some((cert, key)) = &cfg.tls else {
            return Ok(None);
        };
        let read = |what: &str, key: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| format!("cannot read {what} `{}` (`{key}`): {e}", path.display()))
        };
        let client_ca = match &cfg.client_ca {
            Some(path) => Some(read("client CA", "tls.client_ca", path)?),
            None => None,
        };
        Ok(Some(Self {
            cert: read("TLS certificate", "tls.cert", cert)?,
            key: zeroize::Zeroizing::new(read("TLS key", "tls.key", key)?),
            client_ca,
            client_auth_optional: cfg.client_auth_optional,
        }))
    }
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsPem(<redacted>)")
    }
}

/// How to serve, beyond the vault and the listener.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// TLS certificate and key; plain HTTP/2 when `None`.
    pub tls: Option<TlsPem>,
    /// How often scheduled key destructions that are due are carried out.
    pub key_sweep_interval: Duration,
    /// How often records past their retention are destroyed.
    pub retention_sweep_interval: Duration,
    /// Services and identity providers; none: kluis tokens only.
    pub identity: Arc<Identity>,
    /// Reload the policy set on SIGHUP (the binary; not a test or benchmark in-process).
    pub reload_on_hangup: bool,
    /// The connection caps and the time a connection gets to start (`[limits]`).
    pub connections: ConnectionLimits,
    /// The idle limit of server streams and the caps on exports (`[limits]`).
    pub streams: crate::api::stream::StreamLimits,
}

/// Why serving a vault ended.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum ServeEnd {
    /// The shutdown future completed.
    Shutdown,
    /// A security officer sealed the node (`Operator/Seal`): the caller drops the vault and
    /// serves sealed.
    Sealed,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            tls: None,
            key_sweep_interval: Duration::from_secs(60),
            retention_sweep_interval: Duration::from_secs(3600),
            identity: Arc::new(Identity::none()),
            reload_on_hangup: false,
            connections: ConnectionLimits::default(),
            streams: crate::api::stream::StreamLimits::default(),
        }
    }
}

/// Serves `vault` on `listener` until `shutdown` completes or a security officer seals the
/// node. Also resumes interrupted key jobs (rewrap, rekey) and destroys scheduled key versions
/// when they are due. Returns after every task it started has stopped, so that a caller who
/// drops the vault then has closed the store and the audit trail.
pub async fn serve(
    vault: Arc<Vault>,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<ServeEnd, ServeError> {
    let tls = tls_acceptor(options.tls)?;
    let identity = options.identity;
    let streams = Arc::new(crate::api::stream::Streams::new(options.streams));
    let seal = Arc::new(tokio::sync::Notify::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_rx_health = stop_rx.clone();
    let stop_rx_follow = stop_rx.clone();
    let stop_rx_admin = stop_rx.clone();
    let stop_rx_hangup = stop_rx.clone();
    let stop_rx_count = stop_rx.clone();
    let (reflection, reflection_alpha) = reflection()?;
    let mut builder = server_builder();
    // The tasks beside the server: stopped and waited for before `serve` returns, so that a
    // caller who then drops the vault closes the store and the audit trail for good.
    let mut background = Vec::new();
    {
        let vault = Arc::clone(&vault);
        // No upload can be running yet: what a crash left unfinished goes.
        tokio::task::spawn_blocking(move || vault.discard_unfinished_evidence())
            .await
            .map_err(|e| ServeError::Transport(e.to_string()))?
            .map_err(|e| ServeError::Transport(format!("discarding unfinished uploads: {e}")))?;
    }
    if !identity.is_empty() {
        let vault = Arc::clone(&vault);
        let summary = identity.summary();
        // Roles from the organisation's identity come from the configuration: each change of it
        // is on the trail before the first call.
        tokio::task::spawn_blocking(move || vault.record_identity_config(&summary))
            .await
            .map_err(|e| ServeError::Transport(e.to_string()))?
            .map_err(|e| {
                ServeError::Transport(format!("recording the identity configuration: {e}"))
            })?;
    }
    {
        let vault = Arc::clone(&vault);
        background.push(tokio::task::spawn_blocking(move || {
            let _working = vault.call_places().working();
            if let Err(e) = vault.resume_key_jobs() {
                tracing::error!(error = %e, "resuming key jobs failed; run `kluis admin keys rewrap` / `rekey`");
            }
        }));
    }
    background.push(periodic(
        &vault,
        options.key_sweep_interval,
        stop_rx.clone(),
        "destroying due key versions",
        "key-sweep",
        // One node of a shared store at a time; another takes over when it stops.
        |v, ttl| {
            v.as_only_node("key-sweep", ttl, |v| v.destroy_due_keys(None))
                .map(drop)
        },
    ));
    background.push(periodic(
        &vault,
        options.retention_sweep_interval,
        stop_rx.clone(),
        "the retention sweep",
        "retention-sweep",
        |v, ttl| {
            v.as_only_node("retention-sweep", ttl, |v| v.sweep_retention(None, false))
                .map(drop)
        },
    ));
    background.push(periodic(
        &vault,
        KEY_JOB_CHECK,
        stop_rx,
        "resuming key jobs another node left",
        "key-job-resume",
        |v, _| {
            // Only a shared store has other nodes whose jobs could be left unfinished.
            if v.store_is_shared()? {
                v.resume_key_jobs()?;
            }
            Ok(())
        },
    ));
    background.push(follow_store(&vault, stop_rx_follow));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<VaultServer<VaultApi>>().await;
    health.set_serving::<AdminServer<AdminApi>>().await;
    background.push(count_state(&vault, stop_rx_count));
    background.push(watch_health(&vault, health, stop_rx_health));
    if options.reload_on_hangup {
        background.push(reload_on_hangup(&vault, stop_rx_hangup));
    }
    let mut sealed = false;
    let mut drain = stop_tx.subscribe();
    let stopping = Arc::clone(&vault);
    let shutdown = async {
        tokio::select! {
            () = shutdown => {}
            () = seal.notified() => sealed = true,
        }
        let _ = stop_tx.send(true);
        stopping.stop_jobs();
    };
    // Connections get `DRAIN` to finish after the shutdown or the seal; then they are cut, so
    // no client holding a stream open keeps this vault alive.
    let (kill, switch) = tokio::sync::watch::channel(false);
    let operator = OperatorServer::new(OperatorApi::unsealed(
        Arc::clone(&vault),
        Arc::clone(&identity),
        Arc::clone(&seal),
    ));
    let router = builder
        .add_service(health_service)
        .add_service(operator)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(
            VaultServer::new(
                VaultApi::with_identity(Arc::clone(&vault), Arc::clone(&identity))
                    .with_streams(Arc::clone(&streams)),
            )
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AdminServer::new(
                AdminApi::with_identity(vault, identity)
                    .with_stop(stop_rx_admin)
                    .with_streams(streams),
            )
            .max_decoding_message_size(1024 * 1024),
        );
    let served = serve_on(router, listener, options.connections, tls, switch, shutdown);
    let served = drained(served, &mut drain, kill)
        .await
        .map_err(|e| ServeError::Transport(e.to_string()));
    let _ = stop_tx.send(true);
    stopping.stop_jobs();
    for task in background {
        let _ = task.await;
    }
    served?;
    Ok(if sealed {
        ServeEnd::Sealed
    } else {
        ServeEnd::Shutdown
    })
}

/// Runs `server` until it ends; once `stop` turns true, it gets `killable::DRAIN` more before
/// `kill` cuts its connections (it then ends as soon as their tasks see it).
async fn drained<E>(
    server: impl Future<Output = Result<(), E>>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    kill: tokio::sync::watch::Sender<bool>,
) -> Result<(), E> {
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r,
        () = async {
            let _ = stop.wait_for(|s| *s).await;
            tokio::time::sleep(killable::DRAIN).await;
        } => {
            tracing::warn!("connections still open after the drain are cut");
            let _ = kill.send(true);
            server.await
        }
    }
}

/// Reloads the policy set on SIGHUP until `stop` changes; an invalid set is logged and the old
/// one stays in force.
fn reload_on_hangup(
    vault: &Arc<Vault>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let vault = Arc::clone(vault);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hangups) = signal(SignalKind::hangup()) else {
                return;
            };
            loop {
                tokio::select! {
                    got = hangups.recv() => if got.is_none() { return },
                    _ = stop.changed() => return,
                }
                let v = Arc::clone(&vault);
                match tokio::task::spawn_blocking(move || v.reload_policies(None)).await {
                    Ok(Ok(r)) => eprintln!(
                        "policies reloaded: sha256:{} ({} policies)",
                        r.digest, r.policies
                    ),
                    Ok(Err(e)) => eprintln!("error: {}", crate::escape::controls(&e.to_string())),
                    Err(_) => {}
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = stop.changed().await;
            drop(vault);
        }
    })
}

/// Server reflection in both versions: older grpcurl and IDE clients ask `v1alpha`.
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ServeError,
> {
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection_builder()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    Ok((v1, v1alpha))
}

/// The layers around every service.
type Layers = tower_layer::Stack<metered::MeteredLayer, tower_layer::Identity>;

/// The transport, sealed or not: limits, keepalive, and every call counted (`metrics`). TLS is
/// done by the accept loop (`accept`), which bounds the handshake.
fn server_builder() -> Server<Layers> {
    // No server-wide timeout: it would cut off a long evidence upload. Unary calls time out in
    // `api::run`, streams when the client goes quiet (`api::stream`).
    Server::builder()
        .concurrency_limit_per_connection(256)
        .max_concurrent_streams(Some(256))
        // Small frames (window updates, short responses) must not wait for Nagle's algorithm.
        .tcp_nodelay(true)
        // HTTP/2's default 64 KiB window would allow one evidence segment per round trip.
        .initial_stream_window_size(Some(1024 * 1024))
        .initial_connection_window_size(Some(4 * 1024 * 1024))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(metered::MeteredLayer)
}

/// The future of a server: `router` on the connections of `listener` (TLS when `tls`), cut when
/// `switch` is thrown, until `shutdown` completes.
fn serve_on<'a>(
    router: tonic::transport::server::Router<Layers>,
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    switch: tokio::sync::watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'a,
) -> std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send + 'a>> {
    let switch = Some(switch);
    match tls {
        None => Box::pin(router.serve_with_incoming_shutdown(
            accept::incoming(listener, limits, switch, accept::Plain),
            shutdown,
        )),
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
            accept::incoming(listener, limits, switch, accept::Tls(tls)),
            shutdown,
        )),
    }
}

/// The TLS acceptor for `tls`: rustls with ring, HTTP/2 by ALPN, and client certificates
/// verified against `client_ca` when set (required unless `client_auth_optional`).
fn tls_acceptor(tls: Option<TlsPem>) -> Result<Option<tokio_rustls::TlsAcceptor>, ServeError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let Some(tls) = tls else {
        return Ok(None);
    };
    let bad = |what: &str, e: &dyn std::fmt::Display| ServeError::Tls(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_slice_iter(ca)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("client CA", &e))?;
            roots.add_parsable_certificates(certs);
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if tls.client_auth_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            }
            .build()
            .map_err(|e| bad("client CA", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let certs = CertificateDer::pem_slice_iter(&tls.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key.as_slice()).map_err(|e| bad("key", &e))?;
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("certificate and key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// Raises the soft limit on open files (`RLIMIT_NOFILE`) to the hard limit, so that the
/// connection caps, not the descriptor limit, decide who is refused. Returns the limit now in
/// force.
pub fn raise_fd_limit() -> Result<u64, String> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| format!("cannot read RLIMIT_NOFILE: {e}"))?;
    if soft >= hard {
        return Ok(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Ok(hard),
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "cannot raise the open file limit");
            Ok(soft)
        }
    }
}

/// Hardens the process that holds the keys: no core dumps (`RLIMIT_CORE` 0), not dumpable (no
/// ptrace attach, no `/proc/<pid>/mem`, by other processes of the same user), and with
/// `lock_memory` all pages locked in RAM. Linux only; elsewhere a no-op apart from the lock,
/// which is refused.
pub fn harden_process(lock_memory: bool) -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::{
            mman::{MlockAllFlags, mlockall},
            prctl::set_dumpable,
            resource::{Resource, setrlimit},
        };
        setrlimit(Resource::RLIMIT_CORE, 0, 0)
            .map_err(|e| format!("cannot switch core dumps off: {e}"))?;
        set_dumpable(false).map_err(|e| format!("cannot make the process undumpable: {e}"))?;
        if lock_memory {
            mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE).map_err(|e| {
                format!(
                    "cannot lock memory ({e}); raise the memlock limit (`ulimit -l unlimited`, \
                     systemd LimitMEMLOCK=infinity) or start without --lock-memory"
                )
            })?;
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        if lock_memory {
            return Err("--lock-memory is supported on Linux only".into());
        }
        Ok(())
    }
}

/// The accepted connections of `listener` (plain HTTP/2) within the default `ConnectionLimits`,
/// with Nagle's algorithm off: for a server of one's own (the benchmarks).
pub fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<
    Item = std::io::Result<
        impl tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    >,
> {
    accept::incoming(listener, ConnectionLimits::default(), None, accept::Plain)
}

/// How often health is brought up to date with the audit trail.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps `grpc.health.v1` honest: `NOT_SERVING` (for the server and each service) while the
/// audit trail cannot be written, since every data call then fails; while it is down, the trail
/// is tried again every `HEALTH_INTERVAL`, and health says `SERVING` again by itself once it
/// takes an entry.
fn watch_health(
    vault: &Arc<Vault>,
    health: tonic_health::server::HealthReporter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    use tonic_health::ServingStatus;
    let vault = Arc::clone(vault);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        let mut serving = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            let v = Arc::clone(&vault);
            let ok = tokio::task::spawn_blocking(move || v.is_serving())
                .await
                .unwrap_or(false);
            if ok == serving {
                continue;
            }
            serving = ok;
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            if ok {
                health.set_serving::<VaultServer<VaultApi>>().await;
                health.set_serving::<AdminServer<AdminApi>>().await;
            } else {
                health.set_not_serving::<VaultServer<VaultApi>>().await;
                health.set_not_serving::<AdminServer<AdminApi>>().await;
            }
        }
    })
}

/// How often the state the operations metrics show (holds, requests, tokens) is counted.
const COUNT_INTERVAL: Duration = Duration::from_secs(30);

/// Keeps the metrics of the store's state current: at start, then every `COUNT_INTERVAL`.
fn count_state(
    vault: &Arc<Vault>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let vault = Arc::clone(vault);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(COUNT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            let v = Arc::clone(&vault);
            if let Ok(Ok(counts)) = tokio::task::spawn_blocking(move || {
                let _working = v.call_places().working();
                v.state_counts()
            })
            .await
            {
                let m = crate::metrics::get();
                let set = |g: &prometheus_client::metrics::gauge::Gauge, n: u64| {
                    g.set(i64::try_from(n).unwrap_or(i64::MAX));
                };
                set(&m.holds_open, counts.holds_open);
                set(&m.requests_open, counts.requests_open);
                set(&m.requests_overdue, counts.requests_overdue);
                set(&m.tokens_expiring, counts.tokens_expiring);
            }
        }
    })
}

/// Serves `/metrics` (the OpenMetrics text format) on `listener` until `shutdown` completes:
/// plain HTTP/1, nothing else on it. Bind it to an address only the monitoring can reach.
pub async fn serve_metrics(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    use axum::{Router, http::header, response::IntoResponse, routing::get};
    async fn metrics() -> impl IntoResponse {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            crate::metrics::get().encode(),
        )
    }
    let app = Router::new().route("/metrics", get(metrics));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| ServeError::Transport(format!("metrics: {e}")))
}

/// How often a node looks for key jobs a node of a shared store left unfinished (it died).
const KEY_JOB_CHECK: Duration = Duration::from_secs(30);

/// Takes in what other nodes of a shared store changed, every `nodes::FOLLOW_INTERVAL`.
fn follow_store(
    vault: &Arc<Vault>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let vault = Arc::clone(vault);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::vault::nodes::FOLLOW_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            let v = Arc::clone(&vault);
            match tokio::task::spawn_blocking(move || {
                let _working = v.call_places().working();
                v.follow_store()
            })
            .await
            {
                Ok(Ok(_)) => failing = false,
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot read the changes other nodes made; retrying");
                }
                _ => {}
            }
        }
    })
}

/// Runs `job` on a blocking thread every `period` until `stop` changes.
fn periodic(
    vault: &Arc<Vault>,
    period: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    what: &'static str,
    sweep: &'static str,
    job: fn(&Vault, i64) -> Result<(), crate::vault::VaultError>,
) -> tokio::task::JoinHandle<()> {
    let vault = Arc::clone(vault);
    let period = period.max(Duration::from_secs(1));
    // A lease that outlives two missed runs: a live node keeps it, a dead one loses it.
    let ttl =
        i64::try_from(period.as_secs().saturating_mul(2).saturating_add(60)).unwrap_or(i64::MAX);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let v = Arc::clone(&vault);
                    match tokio::task::spawn_blocking(move || {
                        let _working = v.call_places().working();
                        job(&v, ttl)
                    })
                    .await
                    {
                        Ok(Err(e)) => {
                            crate::metrics::sweep(sweep, false);
                            tracing::error!(error = %e, "{what} failed");
                        }
                        Ok(Ok(())) => crate::metrics::sweep(sweep, true),
                        Err(_) => crate::metrics::sweep(sweep, false),
                    }
                }
                _ = stop.changed() => break,
            }
        }
    })
}
