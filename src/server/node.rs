//! A node's life between sealed and unsealed: sealed it serves `Operator`, health
//! (`NOT_SERVING`) and reflection, and answers every `Vault` and `Admin` call with
//! `UNAVAILABLE`; once custodians unseal it, it serves the vault until it is shut down or a
//! security officer seals it again, which drops the vault (its keys wiped) and seals the node.
//!
//! Invariant: no vault (and so no key) exists while the node is sealed; the vault of the
//! unsealed phase is dropped before the node serves sealed again.

use std::{
    convert::Infallible,
    future::Future,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{
    Status,
    body::Body,
    codegen::{BoxFuture, Service, http},
    server::NamedService,
};

use super::{
    ServeEnd, ServeError, ServeOptions, reflection, serve, serve_on, server_builder, tls_acceptor,
};
use crate::{
    api::operator::{Attempts, Gate, NodeSource, OperatorApi},
    pb::operator_server::OperatorServer,
    vault::Vault,
};

/// Serves one node from `source` on `listener` until `shutdown` completes: unsealed from the
/// start with `first` when the root key could be had without a person (key file, passphrase,
/// HSM), sealed otherwise, with `why` telling operators the reason.
pub async fn serve_node(
    source: Arc<NodeSource>,
    first: Result<Vault, String>,
    listener: std::net::TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let attempts = Arc::new(Attempts::default());
    let mut next = first;
    let mut by_officer = false;
    loop {
        let phase_listener = listener
            .try_clone()
            .and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            })
            .map_err(|e| ServeError::Transport(format!("listener: {e}")))?;
        let mut stop = stop_rx.clone();
        crate::metrics::get().sealed.set(i64::from(next.is_err()));
        match next {
            Ok(vault) => {
                let end = serve(
                    Arc::new(vault),
                    phase_listener,
                    options.clone(),
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                )
                .await?;
                if end == ServeEnd::Shutdown {
                    return Ok(());
                }
                // The vault is gone with the phase: every task that held it has stopped.
                next = Err("sealed by a security officer".into());
                by_officer = true;
            }
            Err(why) => {
                tracing::warn!(reason = %why, "kluis is sealed");
                let gate = Arc::new(Gate::new(
                    Arc::clone(&source),
                    Arc::clone(&attempts),
                    why,
                    by_officer,
                ));
                serve_sealed(Arc::clone(&gate), phase_listener, &options, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await?;
                match gate.take_opened() {
                    Some(vault) => {
                        next = Ok(vault);
                        by_officer = false;
                    }
                    None => return Ok(()),
                }
            }
        }
    }
}

/// Serves a sealed node until `shutdown` completes or custodians unseal it (the vault is then
/// in the gate).
async fn serve_sealed(
    gate: Arc<Gate>,
    listener: tokio::net::TcpListener,
    options: &ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    use tonic_health::ServingStatus;
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in ["", VAULT, ADMIN] {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let (reflection, reflection_alpha) = reflection()?;
    let opened = Arc::clone(&gate);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            () = opened.unsealed.notified() => {}
        }
        let _ = stop_tx.send(true);
    };
    let (kill, switch) = tokio::sync::watch::channel(false);
    let operator = OperatorServer::new(OperatorApi::sealed(gate));
    let tls = tls_acceptor(options.tls.clone())?;
    let router = server_builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(operator.clone())
        .add_service(Sealed::<VaultName>::default())
        .add_service(SealedAdmin(operator));
    let served = serve_on(router, listener, options.connections, tls, switch, shutdown);
    super::drained(served, &mut stop_rx, kill)
        .await
        .map_err(|e| ServeError::Transport(e.to_string()))
}

const VAULT: &str = "kluis.v1.Vault";
const ADMIN: &str = "kluis.v1.Admin";

/// Names a service `Sealed` stands in for.
pub trait ServiceName: Send + Sync + 'static {
    /// The gRPC service name.
    const NAME: &'static str;
}

/// `kluis.v1.Vault`.
#[derive(Clone, Copy, Debug, Default)]
pub struct VaultName;
impl ServiceName for VaultName {
    const NAME: &'static str = VAULT;
}

/// A sealed node's `kluis.v1.Admin`: `Unseal` and `SealStatus` go to the gate (as
/// `kluis.v1.Operator/Unseal` and `/Status`), every other call is `UNAVAILABLE`.
#[derive(Clone)]
struct SealedAdmin(OperatorServer<OperatorApi>);

impl NamedService for SealedAdmin {
    const NAME: &'static str = ADMIN;
}

impl Service<http::Request<Body>> for SealedAdmin {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let to = match req.uri().path() {
            "/kluis.v1.Admin/Unseal" => Some("/kluis.v1.Operator/Unseal"),
            "/kluis.v1.Admin/SealStatus" => Some("/kluis.v1.Operator/Status"),
            _ => None,
        };
        match to.and_then(|path| http::Uri::builder().path_and_query(path).build().ok()) {
            Some(uri) => {
                *req.uri_mut() = uri;
                let mut operator = self.0.clone();
                Box::pin(async move { operator.call(req).await })
            }
            None => Sealed::<VaultName>::unavailable(),
        }
    }
}

/// Answers every call of the service `N` with `UNAVAILABLE`, saying the node is sealed.
#[derive(Debug, Default)]
pub struct Sealed<N>(std::marker::PhantomData<N>);

impl<N> Clone for Sealed<N> {
    fn clone(&self) -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<N> Sealed<N> {
    fn unavailable() -> BoxFuture<http::Response<Body>, Infallible> {
        Box::pin(async {
            Ok(Status::unavailable(
                "kluis is sealed: no key is in memory until custodians unseal it (`kluis \
                 operator status` shows how far they are)",
            )
            .into_http())
        })
    }
}

impl<N: ServiceName> NamedService for Sealed<N> {
    const NAME: &'static str = N::NAME;
}

impl<N: ServiceName> Service<http::Request<Body>> for Sealed<N> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<Body>) -> Self::Future {
        Self::unavailable()
    }
}
