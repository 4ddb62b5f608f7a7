//! `kluis.v1.Operator`: custody of the root key on one node. While the node is sealed, a
//! `Gate` takes shares (or a passphrase, a key, a new try of the HSM) until it can open the
//! vault; while it is unsealed, a security officer can seal it again and custodians can replace
//! the set of shares.
//!
//! Invariant: a share, passphrase or key is never logged, echoed or kept beyond the gate's
//! list of valid shares of the set in force, which a restart forgets.
//! Invariant: calls that need no token are rate-limited (`ATTEMPTS_PER_MINUTE`).

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tonic::{Request, Response, Status};

use super::{Backend, run, status};
use crate::{
    config::OpenError,
    identity::Identity,
    keys::{KeyError, RootSecret, StoreSeal},
    pb::{self, operator_server::Operator as OperatorRpc},
    seal::{
        SealError,
        pkcs11::{Hsm, HsmConfig},
        shares::Share,
    },
    vault::{Vault, VaultError},
};

/// Calls without a token (unseal, replacing shares) a node takes per minute.
pub const ATTEMPTS_PER_MINUTE: usize = 20;

/// How many refusals a gate remembers for the trail.
const REFUSALS_KEPT: usize = 32;

/// Opens the vault with a root secret.
pub type Opener = Box<dyn Fn(&RootSecret) -> Result<Vault, OpenError> + Send + Sync>;

/// Where a node gets its vault from: the store's seal (read without any key), the opening of
/// the vault with a root secret, and the HSM of `[seal]`.
pub struct NodeSource {
    /// What seals the store's root key.
    pub seal: Box<dyn Fn() -> Result<StoreSeal, OpenError> + Send + Sync>,
    /// Opens the vault with a root secret (checked against the store's key check value).
    pub open: Opener,
    /// The configured HSM, if any.
    pub hsm: Option<HsmConfig>,
    /// The PIN file as it was when the HSM last refused its PIN: a new try with the same file
    /// only brings the token's lock-out nearer, so it waits for the file to change.
    pub pin_refused: Mutex<Option<PinStamp>>,
}

/// A PIN file's modification time and length.
pub type PinStamp = (Option<std::time::SystemTime>, u64);

/// The stamp of the PIN file at `path` now.
pub fn pin_stamp(path: &std::path::Path) -> PinStamp {
    std::fs::metadata(path).map_or((None, 0), |m| (m.modified().ok(), m.len()))
}

impl std::fmt::Debug for NodeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSource")
            .field("hsm", &self.hsm)
            .finish_non_exhaustive()
    }
}

/// Refused attempts per caller (by address: IPv4 as it is, IPv6 by its /64, as the caps on
/// connections count them, so that a host does not get a fresh allowance from each of the
/// addresses of its /64) in the last minute: a caller with `ATTEMPTS_PER_MINUTE` of them is
/// refused until the oldest is a minute old. An attempt is counted before it is judged
/// (`Attempts::reserve`), so that calls at once get no more between them, and taken back when
/// it was not refused: valid shares are never charged, and a share that checks out is taken
/// even from a caller at the limit (`Gate::unseal`), so a stranger's guessing from the
/// custodians' address does not lock them out.
#[derive(Debug, Default)]
pub struct Attempts(Mutex<HashMap<Option<IpAddr>, VecDeque<Instant>>>);

/// At most this many callers are tracked; beyond it, the one refused longest ago is forgotten
/// to make room (a caller is never turned away because others are being refused).
const TRACKED_CALLERS: usize = 4096;

/// An attempt counted against its caller ahead of its judgement: `refund` takes it back when
/// the attempt was not refused; dropped, it stays counted.
#[must_use = "an attempt that was not refused is refunded"]
struct Reserved<'a> {
    attempts: &'a Attempts,
    peer: Option<IpAddr>,
    at: Instant,
}

impl Reserved<'_> {
    /// Takes the attempt back: it was not refused.
    fn refund(self) {
        let mut map = self.attempts.lock();
        if let Some(window) = map.get_mut(&self.peer.map(crate::server::address_key))
            && let Some(i) = window.iter().rposition(|t| *t == self.at)
        {
            window.remove(i);
        }
    }
}

impl Attempts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Option<IpAddr>, VecDeque<Instant>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn window(
        map: &mut HashMap<Option<IpAddr>, VecDeque<Instant>>,
        peer: Option<IpAddr>,
        now: Instant,
    ) -> &mut VecDeque<Instant> {
        if map.len() >= TRACKED_CALLERS && !map.contains_key(&peer) {
            map.retain(|_, w| {
                w.back()
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
            });
            if map.len() >= TRACKED_CALLERS {
                let longest_ago = map
                    .iter()
                    .min_by_key(|(_, w)| w.back().copied())
                    .map(|(k, _)| *k);
                if let Some(k) = longest_ago {
                    map.remove(&k);
                }
            }
        }
        let window = map.entry(peer).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            window.pop_front();
        }
        window
    }

    /// Counts an attempt of `peer` ahead of its judgement, or refuses a caller who has
    /// `ATTEMPTS_PER_MINUTE` counted in the last minute.
    fn reserve(&self, peer: Option<IpAddr>) -> Result<Reserved<'_>, Status> {
        let mut map = self.lock();
        let now = Instant::now();
        let window = Self::window(&mut map, peer.map(crate::server::address_key), now);
        if window.len() >= ATTEMPTS_PER_MINUTE {
            let wait = window.front().map_or(60, |t| {
                60u64.saturating_sub(now.duration_since(*t).as_secs())
            });
            return Err(Status::resource_exhausted(format!(
                "{ATTEMPTS_PER_MINUTE} refused attempts from you in a minute; wait {wait} s"
            )));
        }
        window.push_back(now);
        Ok(Reserved {
            attempts: self,
            peer,
            at: now,
        })
    }
}

/// Whether `status` refuses what the caller gave (it counts against the caller).
fn is_refusal(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
    )
}

/// What a sealed node holds between the custodians' calls.
#[derive(Default)]
struct Pending {
    /// Valid, distinct shares of the set in force.
    given: Vec<Share>,
    /// What was refused, for the trail once unsealed (never a share's value).
    refused: VecDeque<String>,
    /// Refusals beyond `REFUSALS_KEPT`, counted.
    dropped: usize,
}

impl Pending {
    fn refuse(&mut self, what: String) {
        if self.refused.len() == REFUSALS_KEPT {
            self.refused.pop_front();
            self.dropped += 1;
        }
        self.refused.push_back(what);
    }
}

/// The sealed state of a node: takes unseal calls until the vault opens, then hands it over.
pub struct Gate {
    source: Arc<NodeSource>,
    pending: Mutex<Pending>,
    attempts: Arc<Attempts>,
    /// The vault once opened, for the server to take.
    opened: Mutex<Option<Vault>>,
    /// Told when `opened` is set.
    pub(crate) unsealed: tokio::sync::Notify,
    /// Why the node is sealed (an HSM's refusal at start, a security officer's seal).
    why: String,
    /// A security officer sealed it: an HSM store does not unseal itself again on anyone's
    /// word, only by a restart of the service.
    by_officer: bool,
    /// Places, and threads, for the questions being answered (status, unseal): a flood of
    /// them, which anyone may send, waits for one instead of taking a thread each.
    at_once: crate::vault::places::CallPlaces,
}

/// Questions a sealed node answers at once; the others wait their turn.
const SEALED_AT_ONCE: usize = 4;

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

impl Gate {
    /// A sealed node's gate; `why` is told to whoever asks for the status; `by_officer` when a
    /// security officer sealed it.
    pub fn new(
        source: Arc<NodeSource>,
        attempts: Arc<Attempts>,
        why: String,
        by_officer: bool,
    ) -> Self {
        Self {
            source,
            pending: Mutex::new(Pending {
                given: Vec::with_capacity(usize::from(crate::seal::shares::MAX_SHARES)),
                ..Pending::default()
            }),
            attempts,
            opened: Mutex::new(None),
            unsealed: tokio::sync::Notify::new(),
            why,
            by_officer,
            at_once: crate::vault::places::CallPlaces::new(SEALED_AT_ONCE, SEALED_AT_ONCE),
        }
    }

    /// Runs `f` on one of the gate's threads once one of its places for questions is free.
    async fn answer<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Gate) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let place = self
            .at_once
            .take(super::NO_CREDENTIAL)
            .await
            .map_err(|_| Status::unavailable("the node is stopping"))?;
        let gate = Arc::clone(self);
        place
            .run(move || f(&gate))
            .await
            .map_err(|_| Status::internal("internal error"))?
    }

    /// The vault the custodians opened, once.
    pub fn take_opened(&self) -> Option<Vault> {
        self.opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn seal(&self) -> Result<StoreSeal, Status> {
        (self.source.seal)().map_err(|e| Status::unavailable(format!("sealed, and {e}")))
    }

    fn status(&self, seal: &StoreSeal, pending: &Pending, message: String) -> pb::SealStatus {
        let (threshold, total) = share_counts(seal);
        pb::SealStatus {
            sealed: true,
            seal: seal.kind().into(),
            description: seal.describe(),
            threshold,
            total,
            progress: u32::try_from(pending.given.len()).unwrap_or(u32::MAX),
            given: pending
                .given
                .iter()
                .map(|s| u32::from(s.number()))
                .collect(),
            message,
        }
    }

    /// What to do to unseal a store sealed by `seal`.
    fn how_to_unseal(seal: &StoreSeal) -> &'static str {
        match seal {
            StoreSeal::Shares(_) => {
                "custodians give their shares: `kluis operator unseal --share-file FILE`"
            }
            StoreSeal::Pkcs11(_) => {
                "correct the HSM (`[seal]`, the token, the PIN file) and try again: `kluis operator unseal --hsm`"
            }
            StoreSeal::Passphrase => {
                "give the passphrase: `kluis operator unseal --passphrase-file FILE` (or at the prompt)"
            }
            StoreSeal::KeyFile => "give the key file: `kluis operator unseal --key-file FILE`",
        }
    }

    fn current_status(&self) -> Result<pb::SealStatus, Status> {
        let seal = self.seal()?;
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let message = format!("sealed ({}); {}", self.why, Self::how_to_unseal(&seal));
        Ok(self.status(&seal, &pending, message))
    }

    fn unseal(
        &self,
        req: pb::UnsealRequest,
        peer: Option<IpAddr>,
    ) -> Result<pb::SealStatus, Status> {
        let reserved = match self.attempts.reserve(peer) {
            Ok(reserved) => Some(reserved),
            // A share that checks out is not a guess: it is taken from a caller at the limit
            // too (someone guessing from the custodian's address does not lock them out).
            Err(_) if self.share_checks_out(&req) => None,
            Err(status) => return Err(status),
        };
        let result = self.try_unseal(req);
        // Only refusals count against the caller: a custodian's valid share never does.
        if let Some(reserved) = reserved
            && !result.as_ref().is_err_and(is_refusal)
        {
            reserved.refund();
        }
        result
    }

    /// Whether `req` gives a share of the set in force that checks out (its checksum, and the
    /// share recorded for its number, compared in constant time).
    fn share_checks_out(&self, req: &pb::UnsealRequest) -> bool {
        let (Ok(StoreSeal::Shares(meta)), Some(pb::unseal_request::Secret::Share(text))) =
            (self.seal(), &req.secret)
        else {
            return false;
        };
        Share::parse("the share given", text).is_ok_and(|share| meta.check(&share).is_ok())
    }

    fn try_unseal(&self, req: pb::UnsealRequest) -> Result<pb::SealStatus, Status> {
        let seal = self.seal()?;
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self
            .opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
        {
            return Err(Status::failed_precondition(
                "this node is unsealed already (it is starting to serve)",
            ));
        }
        // Shares of a set that is no longer in force (replaced meanwhile) count no more.
        if let StoreSeal::Shares(meta) = &seal {
            pending.given.retain(|s| s.set() == meta.set);
        }
        let wrong_kind = |given: &str| {
            Status::failed_precondition(format!(
                "this store is sealed by {}, not by a {given}; {}",
                seal.describe(),
                Self::how_to_unseal(&seal)
            ))
        };
        let secret = match req.secret {
            None if req.reset => {
                return Err(Status::invalid_argument(
                    "`reset`: give your share with it (`kluis operator unseal --reset \
                     --share-file FILE`): the shares given are forgotten and yours counts",
                ));
            }
            None => {
                return Err(Status::invalid_argument(format!(
                    "`secret`: nothing given; {}",
                    Self::how_to_unseal(&seal)
                )));
            }
            Some(pb::unseal_request::Secret::Share(text)) => {
                let text = zeroize::Zeroizing::new(text);
                let StoreSeal::Shares(meta) = &seal else {
                    return Err(wrong_kind("share"));
                };
                let share = match Share::parse("the share given", &text)
                    .and_then(|s| meta.check(&s).map(|()| s))
                {
                    Ok(s) => s,
                    Err(e) => {
                        let message = e.to_string();
                        tracing::warn!(problem = %message, "unseal: a share was refused");
                        pending.refuse(message.clone());
                        return Err(Status::invalid_argument(format!(
                            "{message}; nothing of it was kept"
                        )));
                    }
                };
                // Only a custodian with a valid share may start over.
                if req.reset {
                    pending.given.clear();
                }
                if pending.given.iter().any(|g| g.number() == share.number()) {
                    let message = format!(
                        "{} was given already; {} of {} given",
                        share.describe(),
                        pending.given.len(),
                        meta.threshold
                    );
                    return Ok(self.status(&seal, &pending, message));
                }
                pending.given.push(share);
                let have = pending.given.len();
                let need = usize::from(meta.threshold);
                if have < need {
                    let message = format!(
                        "{have} of {need} shares given; {} more to unseal",
                        need - have
                    );
                    return Ok(self.status(&seal, &pending, message));
                }
                RootSecret::Shares(pending.given.clone())
            }
            Some(pb::unseal_request::Secret::Passphrase(p)) => {
                let p = zeroize::Zeroizing::new(p);
                if seal != StoreSeal::Passphrase {
                    return Err(wrong_kind("passphrase"));
                }
                RootSecret::Passphrase(zeroize::Zeroizing::new(p.to_string()))
            }
            Some(pb::unseal_request::Secret::Key(k)) => {
                let k = zeroize::Zeroizing::new(k);
                if seal != StoreSeal::KeyFile {
                    return Err(wrong_kind("key file"));
                }
                RootSecret::KeyFile(
                    crate::crypto::RootKey::from_slice(&k)
                        .ok_or_else(|| Status::invalid_argument("`key`: expected 32 bytes"))?,
                )
            }
            Some(pb::unseal_request::Secret::Hsm(_)) => self.hsm_secret(&seal)?,
        };
        let how = match &secret {
            RootSecret::Shares(given) => {
                let mut numbers: Vec<u8> = given.iter().map(Share::number).collect();
                numbers.sort_unstable();
                format!(
                    "unsealed by shares {} of {}",
                    numbers
                        .iter()
                        .map(u8::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    seal.describe()
                )
            }
            RootSecret::Hsm(_) => format!("unsealed by {}", seal.describe()),
            RootSecret::Passphrase(_) | RootSecret::KeyFile(_) => {
                format!("unsealed by its {}", seal.describe())
            }
        };
        match (self.source.open)(&secret) {
            Ok(vault) => {
                let mut summary = how;
                if !pending.refused.is_empty() {
                    summary.push_str(&format!(
                        "; refused while sealed: {}",
                        pending
                            .refused
                            .iter()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                }
                if pending.dropped > 0 {
                    summary.push_str(&format!(" (and {} earlier refusals)", pending.dropped));
                }
                vault.record_unseal(&summary).map_err(status::to_status)?;
                pending.given.clear();
                pending.refused.clear();
                pending.dropped = 0;
                tracing::info!("unsealed");
                *self
                    .opened
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(vault);
                self.unsealed.notify_one();
                Ok(pb::SealStatus {
                    sealed: false,
                    seal: seal.kind().into(),
                    description: seal.describe(),
                    message: "unsealed: the node serves in a moment".into(),
                    ..Default::default()
                })
            }
            Err(OpenError::Key(KeyError::WrongRootKey)) => {
                pending.given.clear();
                tracing::warn!("unseal refused: the secret does not give the root key");
                pending.refuse("a secret that does not open the store".into());
                Err(Status::invalid_argument(
                    "this does not open the store: wrong passphrase, key or shares; the shares \
                     given were forgotten",
                ))
            }
            Err(OpenError::Key(KeyError::Seal(e))) => {
                if let (SealError::HsmPin(_), Some(config)) = (&e, &self.source.hsm) {
                    *self
                        .source
                        .pin_refused
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(pin_stamp(&config.pin_file));
                }
                pending.refuse(e.to_string());
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(e) => {
                // Not about the secret (the store, the trail, a rollback): the shares stay,
                // and the details go to the log, not to a caller without a token.
                tracing::error!(error = %e, "unseal: the store did not open");
                Err(Status::unavailable(
                    "still sealed: the store did not open (see the server log); the shares \
                     given are kept, try again",
                ))
            }
        }
    }

    /// The HSM as the secret of a new try, when one may be made: not after a security officer
    /// sealed the node, and not with the PIN file the HSM last refused.
    fn hsm_secret(&self, seal: &StoreSeal) -> Result<RootSecret, Status> {
        if !matches!(seal, StoreSeal::Pkcs11(_)) {
            return Err(Status::failed_precondition(format!(
                "this store is sealed by {}, not by an HSM; {}",
                seal.describe(),
                Self::how_to_unseal(seal)
            )));
        }
        if self.by_officer {
            return Err(Status::failed_precondition(
                "a security officer sealed this node; a store sealed by an HSM unseals again \
                 only when the service is restarted by someone with access to the host",
            ));
        }
        let config = self.source.hsm.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this store is sealed by an HSM and this node has none configured: set \
                 `[seal] type = \"pkcs11\"` and restart",
            )
        })?;
        let refused = *self
            .source
            .pin_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if refused.is_some_and(|stamp| stamp == pin_stamp(&config.pin_file)) {
            return Err(Status::failed_precondition(format!(
                "the HSM refused the PIN in `{}` and the file has not changed since; correct it \
                 first (each wrong try brings the token's lock-out nearer)",
                config.pin_file.display()
            )));
        }
        match Hsm::open(config) {
            Ok(h) => Ok(RootSecret::Hsm(Arc::new(h))),
            Err(e) => {
                if matches!(e, SealError::HsmPin(_)) {
                    *self
                        .source
                        .pin_refused
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(pin_stamp(&config.pin_file));
                }
                Err(Status::failed_precondition(e.to_string()))
            }
        }
    }
}

/// How the Operator service serves: a sealed node's gate, or an unsealed node's vault.
enum Mode {
    Sealed(Arc<Gate>),
    Unsealed {
        backend: Backend,
        seal: Arc<tokio::sync::Notify>,
    },
}

/// The `kluis.v1.Operator` service.
pub struct OperatorApi {
    mode: Mode,
    attempts: Arc<Attempts>,
}

impl OperatorApi {
    /// For a sealed node.
    pub fn sealed(gate: Arc<Gate>) -> Self {
        let attempts = Arc::clone(&gate.attempts);
        Self {
            mode: Mode::Sealed(gate),
            attempts,
        }
    }

    /// For an unsealed node: `seal` is told when a security officer seals it.
    pub fn unsealed(
        vault: Arc<Vault>,
        identity: Arc<Identity>,
        seal: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            mode: Mode::Unsealed {
                backend: Backend { vault, identity },
                seal,
            },
            attempts: Arc::default(),
        }
    }
}

/// For a store on shares: how many open it and how many were made; (0, 0) otherwise.
fn share_counts(seal: &StoreSeal) -> (u32, u32) {
    match seal {
        StoreSeal::Shares(m) => (u32::from(m.threshold), u32::from(m.total)),
        _ => (0, 0),
    }
}

/// The status of an unsealed node: what seals its store.
pub(crate) async fn unsealed_status(vault: Arc<Vault>) -> Result<pb::SealStatus, Status> {
    // Anyone may ask, without a credential: the question waits in the line of the calls that
    // carry none for a place among the calls running, instead of taking a thread of its own.
    let place = super::take_place(&vault, super::NO_CREDENTIAL).await?;
    let (seal, _) = place
        .run(move || vault.seal_info())
        .await
        .map_err(|_| Status::internal("internal error"))?
        .map_err(status::to_status)?;
    let (threshold, total) = share_counts(&seal);
    Ok(pb::SealStatus {
        sealed: false,
        seal: seal.kind().into(),
        description: seal.describe(),
        threshold,
        total,
        message: "unsealed".into(),
        ..Default::default()
    })
}

fn parse_shares(field: &str, texts: &[String]) -> Result<Vec<Share>, VaultError> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            Share::parse(&format!("{field}[{i}]"), text)
                .map_err(|e| crate::domain::InputError::new(field, e.to_string()).into())
        })
        .collect()
}

#[tonic::async_trait]
impl OperatorRpc for OperatorApi {
    async fn unseal(
        &self,
        request: Request<pb::UnsealRequest>,
    ) -> Result<Response<pb::SealStatus>, Status> {
        match &self.mode {
            Mode::Sealed(gate) => {
                let peer = request.remote_addr().map(|a| a.ip());
                let req = request.into_inner();
                gate.answer(move |gate| gate.unseal(req, peer))
                    .await
                    .map(Response::new)
            }
            Mode::Unsealed { .. } => Err(Status::failed_precondition(
                "this node is not sealed; nothing to unseal",
            )),
        }
    }

    async fn status(
        &self,
        _request: Request<pb::SealStatusRequest>,
    ) -> Result<Response<pb::SealStatus>, Status> {
        match &self.mode {
            Mode::Sealed(gate) => gate.answer(Gate::current_status).await.map(Response::new),
            Mode::Unsealed { backend, .. } => unsealed_status(Arc::clone(&backend.vault))
                .await
                .map(Response::new),
        }
    }

    async fn seal(
        &self,
        request: Request<pb::SealRequest>,
    ) -> Result<Response<pb::SealStatus>, Status> {
        match &self.mode {
            Mode::Sealed(_) => Err(Status::failed_precondition("this node is sealed already")),
            Mode::Unsealed { backend, seal } => {
                let kind = run(backend, request, |vault, principal, req| {
                    vault.allow_seal(principal, &req.justification)?;
                    Ok(vault.seal_info()?.0)
                })
                .await?;
                seal.notify_one();
                tracing::warn!("sealed by a security officer");
                let (threshold, total) = share_counts(&kind);
                Ok(Response::new(pb::SealStatus {
                    sealed: true,
                    seal: kind.kind().into(),
                    description: kind.describe(),
                    threshold,
                    total,
                    message: format!(
                        "sealing: the node stops serving and wipes its keys; {}",
                        Gate::how_to_unseal(&kind)
                    ),
                    ..Default::default()
                }))
            }
        }
    }

    async fn replace_shares(
        &self,
        request: Request<pb::ReplaceSharesRequest>,
    ) -> Result<Response<pb::ReplaceSharesResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let reserved = self.attempts.reserve(peer)?;
        let Mode::Unsealed { backend, .. } = &self.mode else {
            reserved.refund();
            return Err(Status::failed_precondition(
                "this node is sealed; unseal it first (`kluis operator unseal`)",
            ));
        };
        let vault = Arc::clone(&backend.vault);
        let req = request.into_inner();
        // The shares are the credential, judged on the call thread: the call waits in the
        // line of the calls that carry none, as `Status` does, not on a thread of its own.
        let place = match super::take_place(&vault, super::NO_CREDENTIAL).await {
            Ok(place) => place,
            Err(status) => {
                reserved.refund();
                return Err(status);
            }
        };
        // The old shares are the credential: only their refusal counts against the caller, not
        // a new set given wrong after they checked out.
        let answer = place
            .run(move || {
                let refused = |e: VaultError| (e, true);
                let old = parse_shares("old_shares", &req.old_shares).map_err(refused)?;
                vault.check_recorded_shares(&old).map_err(refused)?;
                let other = |e: VaultError| (e, false);
                let new = parse_shares("new_shares", &req.new_shares).map_err(other)?;
                vault.replace_shares(&old, &new).map_err(other)?;
                let first = new.first();
                Ok::<_, (VaultError, bool)>(pb::ReplaceSharesResponse {
                    old_set: old.first().map(Share::set).unwrap_or_default(),
                    new_set: first.map(Share::set).unwrap_or_default(),
                    threshold: first.map_or(0, |s| u32::from(s.threshold())),
                    total: first.map_or(0, |s| u32::from(s.total())),
                })
            })
            .await
            .map_err(|_| (Status::internal("internal error"), false))
            .and_then(|done| done.map_err(|(e, refused)| (status::to_status(e), refused)));
        if !answer.as_ref().is_err_and(|(status, refused)| {
            *refused && status.code() == tonic::Code::InvalidArgument
        }) {
            reserved.refund();
        }
        answer.map(Response::new).map_err(|(status, _)| status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn refused_attempts_count_per_ipv4_address_and_per_ipv6_64() {
        let attempts = Attempts::default();
        // A host guessing from a new address of its /64 each time.
        for n in 0..ATTEMPTS_PER_MINUTE {
            let from = ip(&format!("2001:db8:1:2::{n:x}"));
            drop(attempts.reserve(from).unwrap());
        }
        let refused = attempts.reserve(ip("2001:db8:1:2:ffff::1")).err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("refused attempts from you"));
        // Another /64, and an IPv4 caller, have allowances of their own.
        attempts.reserve(ip("2001:db8:1:3::1")).unwrap().refund();
        for _ in 0..ATTEMPTS_PER_MINUTE {
            drop(attempts.reserve(ip("::ffff:192.0.2.7")).unwrap());
        }
        // An IPv4 address spelt as IPv4-mapped IPv6 is the same caller.
        assert!(attempts.reserve(ip("192.0.2.7")).is_err());
        assert!(attempts.reserve(ip("192.0.2.8")).is_ok());
    }

    /// An attempt counts from the moment it is reserved, before it is judged: attempts at once
    /// get no more between them than one after the other. One taken back (not refused) counts
    /// for nothing.
    #[test]
    fn attempts_count_before_they_are_judged_and_valid_ones_are_taken_back() {
        let attempts = Attempts::default();
        let from = ip("198.51.100.1");
        let held: Vec<_> = (0..ATTEMPTS_PER_MINUTE)
            .map(|_| attempts.reserve(from).unwrap())
            .collect();
        assert!(
            attempts.reserve(from).is_err(),
            "judged at once, counted at once"
        );
        for reserved in held {
            reserved.refund();
        }
        for _ in 0..10 * ATTEMPTS_PER_MINUTE {
            attempts.reserve(from).unwrap().refund();
        }
        assert!(attempts.reserve(from).is_ok());
    }

    /// Callers refused by the thousand do not turn a new caller away: when the table is full,
    /// the caller refused longest ago is forgotten; those refused lately stay counted.
    #[test]
    fn a_full_table_of_refused_callers_turns_nobody_away() {
        let attempts = Attempts::default();
        let first = ip("10.0.0.1");
        for _ in 0..ATTEMPTS_PER_MINUTE {
            drop(attempts.reserve(first).unwrap());
        }
        for n in 0..TRACKED_CALLERS as u32 + 100 {
            let filler = Some(IpAddr::from(std::net::Ipv4Addr::from(0x0a01_0000 + n)));
            drop(attempts.reserve(filler).unwrap());
        }
        assert!(attempts.lock().len() <= TRACKED_CALLERS);
        // A new caller is taken; the last filler is still counted.
        attempts.reserve(ip("192.0.2.200")).unwrap().refund();
        let last = Some(IpAddr::from(std::net::Ipv4Addr::from(
            0x0a01_0000 + TRACKED_CALLERS as u32 + 99,
        )));
        let window = attempts.lock().get(&last).map(VecDeque::len);
        assert_eq!(window, Some(1));
    }
}
