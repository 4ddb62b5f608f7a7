//! The gRPC edge: tonic services for `kluis.v1.Vault` and `kluis.v1.Admin`, the caller's
//! credentials (bearer token, `x-kluis-user`, client certificate) handed to `identity`, proto ⇄
//! domain conversion and the one mapping from `VaultError` to `Status`.
//!
//! Invariant: the only module that sees proto types; it converts them by hand.
//! Invariant: never formats a request, metadata map or token with `{:?}`.
//! Invariant: each call runs its core work on one of the node's call threads
//! (`CallPlace::run`, no more of them than places), under a place (`vault::places`: its
//! credential's share, and one of all) it holds until that work ends (`take_place`); a read's
//! work after its audit entry (`run_then`: opening the values) runs on the thread that commits
//! the entry, a call thread or the trail's relay thread (`Audit::append_then`). The one
//! exception: a read or write (`run_then`) that arrives while nothing else is under way on the
//! node (`CallPlaces::arrive`), on a store of local files, with a kluis token or a client
//! certificate, on a runtime with another worker, runs on the runtime's thread that took it
//! (`CallPlace::run_here`), under its place all the same; when it leads a commit there, what
//! the calls in that batch do after their entries (they arrived while it ran) runs there too.

pub mod admin;
pub mod codec;
pub mod convert;
pub(crate) mod judge;
pub mod operator;
pub mod status;
pub mod stream;
pub mod vault;

use std::sync::Arc;

use tokio::sync::oneshot;
use tonic::{Request, Status, metadata::MetadataMap};

use crate::{
    identity::{Credentials, Identity, PeerCertificate, USER_METADATA},
    vault::{Vault, VaultError, tokens::BearerToken},
};

pub use admin::AdminApi;
pub use operator::OperatorApi;
pub use vault::VaultApi;

/// Takes the bearer token from `authorization: Bearer <token>` metadata.
pub fn bearer_token(metadata: &MetadataMap) -> Result<BearerToken, Status> {
    let missing = || {
        crate::metrics::auth_failure("missing-credentials");
        Status::unauthenticated(
            "missing credentials: send `authorization: Bearer <token>` metadata",
        )
    };
    let value = metadata.get("authorization").ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(missing)?
        .trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(missing());
    }
    Ok(BearerToken::new(token.to_owned()))
}

/// Longest token taken from metadata, in bytes: a kluis token is 70, an identity provider's
/// access token with many groups a few KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What the caller presented: `authorization`, `x-kluis-user` and the client certificate the TLS
/// layer verified. Judged by `Identity::authenticate` on the blocking thread.
pub fn credentials<T>(request: &Request<T>) -> Result<Credentials, Status> {
    let metadata = request.metadata();
    let bearer = if metadata.contains_key("authorization") {
        Some(bearer_token(metadata)?)
    } else {
        None
    };
    let user = match metadata.get(USER_METADATA) {
        None => None,
        Some(value) => {
            let bad = || {
                Status::unauthenticated(format!(
                    "`{USER_METADATA}`: send the employee's OpenID Connect access token as it is \
                     (at most {MAX_TOKEN_BYTES} bytes)"
                ))
            };
            let value = value.to_str().map_err(|_| bad())?.trim();
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .unwrap_or(value)
                .trim();
            if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
                return Err(bad());
            }
            Some(BearerToken::new(token.to_owned()))
        }
    };
    let peer =
        match request.peer_certs() {
            None => None,
            Some(chain) => match chain.first() {
                None => None,
                Some(leaf) => Some(PeerCertificate::parse(leaf).ok_or_else(|| {
                    Status::unauthenticated("the client certificate cannot be read")
                })?),
            },
        };
    Ok(Credentials {
        bearer,
        user,
        peer,
        authenticated: request
            .extensions()
            .get::<crate::identity::CallMark>()
            .cloned()
            .unwrap_or_default(),
    })
}

/// How long a unary call may take.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What every handler runs against: the vault, and the identity that judges its callers.
#[derive(Clone, Debug)]
pub(crate) struct Backend {
    /// The vault.
    pub(crate) vault: Arc<Vault>,
    /// Services and identity providers.
    pub(crate) identity: Arc<Identity>,
}

/// Runs `f` with the authenticated principal on a blocking thread and maps its error.
pub(crate) async fn run<Req, T, F>(
    backend: &Backend,
    request: Request<Req>,
    f: F,
) -> Result<T, Status>
where
    Req: Send + 'static,
    T: Send + 'static,
    F: FnOnce(&Vault, &crate::domain::Principal, Req) -> Result<T, VaultError> + Send + 'static,
{
    let creds = credentials(&request)?;
    let message = request.into_inner();
    let vault = Arc::clone(&backend.vault);
    let identity = Arc::clone(&backend.identity);
    let key = caller_key(&creds);
    let task = async move {
        let place = take_place(&vault, key).await?;
        Ok::<_, Status>(
            place
                .run(move || {
                    identity
                        .authenticate(&vault, &creds)
                        .and_then(|principal| f(&vault, &principal, message))
                        .map_err(|e| vault.after_failure(e))
                })
                .await,
        )
    };
    tokio::time::timeout(REQUEST_TIMEOUT, task)
        .await
        .map_err(|_| Status::deadline_exceeded("the request took longer than 60 s"))??
        .map_err(|e| {
            tracing::error!(error = %e, "request task failed");
            Status::internal("internal error")
        })?
        .map_err(status::to_status)
}

/// Where a call run with [`run_then`] hands its answer on: once, from whichever thread has it
/// (the thread that committed the call's entry, or the call thread when the work failed first).
pub(crate) struct Reply<T>(Arc<std::sync::Mutex<Option<oneshot::Sender<Answer<T>>>>>);

/// What a call run with [`run_then`] answers.
enum Answer<T> {
    /// The work's answer.
    Done(Result<T, VaultError>),
    /// The work panicked before it answered.
    Panicked,
}

impl<T> Drop for Reply<T> {
    /// A reply dropped unanswered in a panic (the work after a committed entry, which the
    /// committing thread runs) answers that the work failed, not that the entry was not
    /// committed.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.answer(Answer::Panicked);
        }
    }
}

impl<T> Reply<T> {
    /// Answers the call, unless it was answered already (or its task is gone).
    pub(crate) fn send(self, answer: Result<T, VaultError>) {
        self.answer(Answer::Done(answer));
    }

    fn answer(&self, answer: Answer<T>) {
        let sender = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            // The caller may have gone (its call timed out): nobody to tell.
            let _ = sender.send(answer);
        }
    }
}

/// `run` for a call whose answer comes once an audit entry it queues is committed (a read,
/// `Vault::get_record_then`): `f` runs on a call thread, queues the entry and hands `reply` on
/// to whatever answers once the entry is committed; that thread goes on to other work meanwhile
/// instead of sleeping until the commit. A call that arrives with nothing else under way on
/// the node runs on the runtime's thread that took it instead (`CallPlace::run_here`, under
/// the conditions in the module's invariant): at low load each hand-off wakes a resting
/// thread. The request's task waits for the answer alone, so it is woken once per call: the end of `f`'s work tells it nothing (an error or a panic in `f`
/// before it answered is the answer).
pub(crate) async fn run_then<Req, T, F>(
    backend: &Backend,
    request: Request<Req>,
    f: F,
) -> Result<T, Status>
where
    Req: Send + 'static,
    T: Send + 'static,
    F: FnOnce(&Arc<Vault>, &crate::domain::Principal, Req, Reply<T>) -> Result<(), VaultError>
        + Send
        + 'static,
{
    let creds = credentials(&request)?;
    let message = request.into_inner();
    let vault = Arc::clone(&backend.vault);
    let identity = Arc::clone(&backend.identity);
    let key = caller_key(&creds);
    let (sender, answer) = oneshot::channel();
    let reply = Reply(Arc::new(std::sync::Mutex::new(Some(sender))));
    let arrival = vault.call_places().arrive();
    // Only where another runtime worker serves what comes meanwhile, and for a credential
    // judged without the network (a provider's token may have its keys fetched).
    let alone = arrival.alone() && spare_worker() && !creds.may_fetch_keys();
    let task = async move {
        let place = take_place(&vault, key).await?;
        let work = move || {
            let unanswered = Reply(Arc::clone(&reply.0));
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                identity
                    .authenticate(&vault, &creds)
                    .and_then(|principal| f(&vault, &principal, message, reply))
                    .map_err(|e| vault.after_failure(e))
            }));
            match done {
                Ok(Ok(())) => {}
                // Before `f` handed its reply on, or after (then the answer stands).
                Ok(Err(e)) => unanswered.send(Err(e)),
                Err(_) => unanswered.answer(Answer::Panicked),
            }
        };
        // Alone on the node, the call runs here: a hand-off to a resting call thread and
        // back costs more than a read's work.
        if alone {
            place.run_here(work);
        } else {
            place.run_detached(work);
        }
        let answered = answer.await;
        drop(arrival);
        match answered {
            Ok(Answer::Done(answered)) => Ok(answered),
            Ok(Answer::Panicked) => {
                tracing::error!("request task failed: the call's work panicked");
                Err(Status::internal("internal error"))
            }
            // Dropped unanswered: the trail closed, or its commit failed to run the answer.
            Err(_) => Ok(Err(VaultError::Unavailable(
                "the call's audit entry was not committed".into(),
            ))),
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, task)
        .await
        .map_err(|_| Status::deadline_exceeded("the request took longer than 60 s"))??
        .map_err(status::to_status)
}

/// Whether the runtime this runs on has a worker besides the one blocked by a call that runs
/// where it arrived (`CallPlace::run_here`): with one, nothing else would be served meanwhile.
fn spare_worker() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|h| {
        h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            && h.metrics().num_workers() >= 2
    })
}

/// A place among the calls running on blocking threads (`Limits::max_calls_running`), waited
/// for in turn: a flood of calls queues here, cheaply, instead of holding a thread and its
/// memory each. Moved into the blocking closure, so that it is held while the work runs even
/// when the client goes away.
pub(crate) async fn take_place(
    vault: &Vault,
    key: crate::vault::places::CallerKey,
) -> Result<crate::vault::places::CallPlace, Status> {
    vault
        .call_places()
        .take(key)
        .await
        .map_err(|_| Status::unavailable("the node is stopping"))
}

/// What calls that carry no credential count under among the places: they share one line.
pub(crate) const NO_CREDENTIAL: crate::vault::places::CallerKey = [0; 32];

/// Who a call counts under among the places (`vault::places`), before it is judged: a digest
/// of the employee's token, else of the bearer token, else of the client certificate; calls
/// with none share one key.
pub(crate) fn caller_key(creds: &Credentials) -> crate::vault::places::CallerKey {
    use sha2::{Digest, Sha256};
    let (kind, secret): (&[u8], &[u8]) = match (&creds.user, &creds.bearer, &creds.peer) {
        (Some(user), _, _) => (b"user", user.expose_secret().as_bytes()),
        (None, Some(bearer), _) => (b"bearer", bearer.expose_secret().as_bytes()),
        (None, None, Some(peer)) => (b"cert", peer.id.as_bytes()),
        (None, None, None) => return NO_CREDENTIAL,
    };
    Sha256::new()
        .chain_update(kind)
        .chain_update([0])
        .chain_update(secret)
        .finalize()
        .into()
}

/// `run` for a long call (an export, a backup, a watch of the trail): once the caller is
/// authenticated, it takes a place under the caps on `kind` (`stream::Streams::admit`) before
/// `f` does any work, and hands the place back with `f`'s result, to be held while the stream is
/// produced.
pub(crate) async fn run_long<Req, T, F>(
    backend: &Backend,
    streams: &Arc<stream::Streams>,
    kind: stream::Long,
    request: Request<Req>,
    f: F,
) -> Result<(T, stream::Permit), Status>
where
    Req: Send + 'static,
    T: Send + 'static,
    F: FnOnce(&Vault, &crate::domain::Principal, Req) -> Result<T, VaultError> + Send + 'static,
{
    let creds = credentials(&request)?;
    let message = request.into_inner();
    let vault = Arc::clone(&backend.vault);
    let identity = Arc::clone(&backend.identity);
    let streams = Arc::clone(streams);
    let key = caller_key(&creds);
    let task = async move {
        let place = take_place(&vault, key).await?;
        Ok::<_, Status>(
            place
                .run(move || {
                    let principal = identity
                        .authenticate(&vault, &creds)
                        .map_err(|e| status::to_status(vault.after_failure(e)))?;
                    // A watch counts under its caller's officer role too (`admit_as`).
                    let group = (kind == stream::Long::Watch)
                        .then(|| {
                            use crate::domain::Role;
                            let officer = |r: &&Role| {
                                matches!(r, Role::PrivacyOfficer | Role::SecurityOfficer)
                            };
                            principal.roles.iter().find(officer).map(|r| r.as_str())
                        })
                        .flatten();
                    let permit = streams.admit_as(kind, &principal.id, group)?;
                    let done = f(&vault, &principal, message)
                        .map_err(|e| status::to_status(vault.after_failure(e)))?;
                    Ok((done, permit))
                })
                .await,
        )
    };
    tokio::time::timeout(REQUEST_TIMEOUT, task)
        .await
        .map_err(|_| Status::deadline_exceeded("the request took longer than 60 s"))??
        .map_err(|e| {
            tracing::error!(error = %e, "request task failed");
            Status::internal("internal error")
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> (Reply<u8>, oneshot::Receiver<Answer<u8>>) {
        let (sender, answer) = oneshot::channel();
        (Reply(Arc::new(std::sync::Mutex::new(Some(sender)))), answer)
    }

    /// A reply dropped in a panic answers `Panicked` (the call fails as an internal error);
    /// the twin: one dropped without a panic answers nothing (the call is unavailable: its
    /// entry was not committed), and the first answer of two is the one that stands.
    #[test]
    fn a_reply_dropped_in_a_panic_says_so_and_only_the_first_answer_stands() {
        let (r, mut answer) = reply();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = r;
            panic!("the work after the entry failed");
        }));
        assert!(unwound.is_err());
        assert!(matches!(answer.try_recv(), Ok(Answer::Panicked)));

        let (r, mut answer) = reply();
        drop(r);
        assert!(answer.try_recv().is_err());

        let (r, mut answer) = reply();
        let second = Reply(Arc::clone(&r.0));
        r.send(Ok(7));
        second.send(Ok(8));
        assert!(matches!(answer.try_recv(), Ok(Answer::Done(Ok(7)))));
    }
}
