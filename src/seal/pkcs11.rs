//! The root key sealed by an HSM through PKCS#11: encrypted with AES-256-GCM (96-bit IV, 128-bit
//! tag) by a non-extractable AES key that never leaves the token, the store id bound as
//! associated data. The server unseals itself at start without a person.
//!
//! Invariant: one PKCS#11 context per process (`C_Initialize` once, per module); a session is
//! opened for each operation and closed after it, never shared between threads.
//! Invariant: every HSM failure is a `SealError::Hsm` saying what to check; none panics, and
//! none carries the PIN or key bytes.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
};

use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Pkcs11},
    error::{Error as CkError, RvError},
    mechanism::{Mechanism, aead::GcmParams},
    object::{Attribute, KeyType, ObjectClass, ObjectHandle},
    session::{Session, UserType},
    slot::Slot,
    types::AuthPin,
};
use zeroize::Zeroizing;

use super::SealError;
use crate::crypto::RootKey;

/// Where the HSM is and how to reach the key (`[seal]` in the configuration).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct HsmConfig {
    /// The PKCS#11 module (a shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The label of the token that holds the key.
    pub token_label: String,
    /// The label of the AES key.
    pub key_label: String,
    /// A file holding the user PIN (mode 0600).
    pub pin_file: PathBuf,
}

/// A configured HSM: its module loaded once for the process, its PIN read.
pub struct Hsm {
    context: Arc<Pkcs11>,
    config: HsmConfig,
    pin: Zeroizing<String>,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("module", &self.config.module)
            .field("token_label", &self.config.token_label)
            .field("key_label", &self.config.key_label)
            .finish_non_exhaustive()
    }
}

/// The sealed root key as the store keeps it.
#[derive(Clone, Debug, Eq, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct SealedRoot {
    /// The token's label when it was sealed.
    pub token_label: String,
    /// The key's label.
    pub key_label: String,
    /// The GCM IV, hex.
    pub iv: String,
    /// Ciphertext and tag, hex.
    pub sealed: String,
}

/// A loaded module: its path and its context.
type Loaded = (PathBuf, Arc<Pkcs11>);

/// The process's one context, with the module it was made for.
static CONTEXT: OnceLock<Mutex<Option<Loaded>>> = OnceLock::new();

fn context(module: &Path) -> Result<Arc<Pkcs11>, SealError> {
    let slot = CONTEXT.get_or_init(|| Mutex::new(None));
    let mut held = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((path, ctx)) = held.as_ref() {
        if path == module {
            return Ok(Arc::clone(ctx));
        }
        return Err(SealError::Hsm(format!(
            "this process already uses the PKCS#11 module `{}`; one module per process",
            path.display()
        )));
    }
    if !module.exists() {
        return Err(SealError::Hsm(format!(
            "PKCS#11 module `{}` not found: install it (for SoftHSM2 the Debian package \
             `softhsm2`) or correct `[seal] module`",
            module.display()
        )));
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        SealError::Hsm(format!(
            "cannot load PKCS#11 module `{}`: {e}",
            module.display()
        ))
    })?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| SealError::Hsm(format!("the module did not initialise: {}", explain(&e))))?;
    let ctx = Arc::new(ctx);
    *held = Some((module.to_owned(), Arc::clone(&ctx)));
    Ok(ctx)
}

/// A PKCS#11 error as an operator reads it: what to check, with the PKCS#11 code.
fn explain(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect, _) => {
            "the token refused the PIN (CKR_PIN_INCORRECT): check `[seal] pin_file`".into()
        }
        CkError::Pkcs11(RvError::PinLocked, _) => {
            "the token's PIN is locked after too many wrong attempts (CKR_PIN_LOCKED): the \
             token's security officer must unlock it"
                .into()
        }
        CkError::Pkcs11(RvError::TokenNotPresent | RvError::DeviceRemoved, _) => {
            "the token is not present (removed or not connected)".into()
        }
        CkError::Pkcs11(RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange, _) => {
            "the HSM key does not open this store's root key (another key under that label, or \
             the sealed root key was altered)"
                .into()
        }
        CkError::Pkcs11(rv, function) => format!("{function} failed: {rv:?}"),
        other => other.to_string(),
    }
}

impl Hsm {
    /// Loads the module (once per process), reads the PIN file (which must not be readable by
    /// group or others) and checks that the token is there.
    pub fn open(config: &HsmConfig) -> Result<Self, SealError> {
        let pin = read_pin(&config.pin_file)?;
        let context = context(&config.module)?;
        let hsm = Self {
            context,
            config: config.clone(),
            pin,
        };
        hsm.slot()?;
        Ok(hsm)
    }

    /// The configuration this HSM was opened with.
    pub fn config(&self) -> &HsmConfig {
        &self.config
    }

    fn slot(&self) -> Result<Slot, SealError> {
        let slots = self
            .context
            .get_slots_with_token()
            .map_err(|e| SealError::Hsm(format!("cannot list the tokens: {}", explain(&e))))?;
        for slot in slots {
            let info = self.context.get_token_info(slot).map_err(|e| {
                SealError::Hsm(format!("cannot read a token's label: {}", explain(&e)))
            })?;
            if info.label().trim_end() == self.config.token_label {
                return Ok(slot);
            }
        }
        Err(SealError::Hsm(format!(
            "no token labelled `{}` in module `{}`: initialise it (SoftHSM2: `softhsm2-util \
             --init-token --free --label {}`) or correct `[seal] token_label`",
            self.config.token_label,
            self.config.module.display(),
            self.config.token_label
        )))
    }

    /// A new session on the token, logged in as its user. Dropping it closes it.
    fn session(&self) -> Result<Session, SealError> {
        let session = self
            .context
            .open_rw_session(self.slot()?)
            .map_err(|e| SealError::Hsm(format!("cannot open a session: {}", explain(&e))))?;
        let pin = AuthPin::from(self.pin.as_str().to_owned());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(
                e @ CkError::Pkcs11(
                    RvError::PinIncorrect | RvError::PinLocked | RvError::PinInvalid,
                    _,
                ),
            ) => Err(SealError::HsmPin(explain(&e))),
            Err(e) => Err(SealError::Hsm(explain(&e))),
        }
    }

    fn find_key(&self, session: &Session) -> Result<Option<ObjectHandle>, SealError> {
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Label(self.config.key_label.as_bytes().to_vec()),
            ])
            .map_err(|e| SealError::Hsm(format!("cannot look up the key: {}", explain(&e))))?;
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            _ => Err(SealError::Hsm(format!(
                "{} AES keys are labelled `{}` on token `{}`; the label must name one",
                found.len(),
                self.config.key_label,
                self.config.token_label
            ))),
        }
    }

    /// Makes sure the token holds the AES key: creates it (AES-256, on the token, sensitive,
    /// never extractable) when no key has the label. True when it was created now.
    pub fn ensure_key(&self) -> Result<bool, SealError> {
        let session = self.session()?;
        if let Some(key) = self.find_key(&session)? {
            self.check_unexportable(&session, key)?;
            return Ok(false);
        }
        session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Label(self.config.key_label.as_bytes().to_vec()),
                ],
            )
            .map_err(|e| SealError::Hsm(format!("cannot create the key: {}", explain(&e))))?;
        Ok(true)
    }

    /// Refuses a key that could leave the token: one made extractable or not sensitive (by
    /// someone with the PIN, before kluis first used the label) would let a copy of it open every
    /// backup elsewhere.
    fn check_unexportable(&self, session: &Session, key: ObjectHandle) -> Result<(), SealError> {
        use cryptoki::object::AttributeType;
        let attributes = session
            .get_attributes(key, &[AttributeType::Extractable, AttributeType::Sensitive])
            .map_err(|e| {
                SealError::Hsm(format!("cannot read the key's attributes: {}", explain(&e)))
            })?;
        let mut extractable = true;
        let mut sensitive = false;
        for a in attributes {
            match a {
                Attribute::Extractable(v) => extractable = v,
                Attribute::Sensitive(v) => sensitive = v,
                _ => {}
            }
        }
        if extractable || !sensitive {
            return Err(SealError::Hsm(format!(
                "the AES key labelled `{}` on token `{}` can leave the token (extractable or not \
                 sensitive); kluis seals only under a key that cannot: remove it, or give \
                 `[seal] key_label` a new label for kluis to create",
                self.config.key_label, self.config.token_label
            )));
        }
        Ok(())
    }

    fn key(&self, session: &Session) -> Result<ObjectHandle, SealError> {
        self.find_key(session)?.ok_or_else(|| {
            SealError::Hsm(format!(
                "no AES key labelled `{}` on token `{}`",
                self.config.key_label, self.config.token_label
            ))
        })
    }

    /// Encrypts `root` under the HSM key with `aad` bound.
    pub fn seal_root(&self, root: &RootKey, aad: &[u8]) -> Result<SealedRoot, SealError> {
        let session = self.session()?;
        let key = self.key(&session)?;
        let mut iv: [u8; 12] = rand::random();
        let params = GcmParams::new(&mut iv, aad, 128.into())
            .map_err(|e| SealError::Hsm(format!("GCM parameters: {e}")))?;
        let sealed = session
            .encrypt(&Mechanism::AesGcm(params), key, root.expose_secret())
            .map_err(|e| SealError::Hsm(format!("cannot seal the root key: {}", explain(&e))))?;
        Ok(SealedRoot {
            token_label: self.config.token_label.clone(),
            key_label: self.config.key_label.clone(),
            iv: hex::encode(iv),
            sealed: hex::encode(sealed),
        })
    }

    /// Decrypts a sealed root key with `aad`; any change to the ciphertext, the IV, the store
    /// id or the key is refused by the tag.
    pub fn open_root(&self, sealed: &SealedRoot, aad: &[u8]) -> Result<RootKey, SealError> {
        if sealed.token_label != self.config.token_label
            || sealed.key_label != self.config.key_label
        {
            return Err(SealError::Hsm(format!(
                "this store's root key is sealed by key `{}` on token `{}`; the configuration \
                 names key `{}` on token `{}`",
                sealed.key_label,
                sealed.token_label,
                self.config.key_label,
                self.config.token_label
            )));
        }
        let corrupt = || SealError::Hsm("the sealed root key in the store is malformed".into());
        let mut iv: [u8; 12] = hex::decode(&sealed.iv)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(corrupt)?;
        let data = hex::decode(&sealed.sealed).map_err(|_| corrupt())?;
        let session = self.session()?;
        let key = self.key(&session)?;
        let params = GcmParams::new(&mut iv, aad, 128.into())
            .map_err(|e| SealError::Hsm(format!("GCM parameters: {e}")))?;
        let plain = Zeroizing::new(
            session
                .decrypt(&Mechanism::AesGcm(params), key, &data)
                .map_err(|e| match e {
                    // SoftHSM and others report a failed tag as a generic failure.
                    CkError::Pkcs11(
                        RvError::EncryptedDataInvalid
                        | RvError::EncryptedDataLenRange
                        | RvError::FunctionFailed
                        | RvError::GeneralError,
                        _,
                    ) => SealError::Hsm(
                        "the HSM key does not open this store's root key (another key under \
                             that label, another store's sealed key, or the sealed key was \
                             altered)"
                            .into(),
                    ),
                    other => {
                        SealError::Hsm(format!("cannot open the root key: {}", explain(&other)))
                    }
                })?,
        );
        RootKey::from_slice(&plain)
            .ok_or_else(|| SealError::Hsm("the HSM gave a root key of the wrong size".into()))
    }
}

fn read_pin(path: &Path) -> Result<Zeroizing<String>, SealError> {
    let what = format!("PIN file `{}`", path.display());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| SealError::Hsm(format!("cannot read the {what}: {e}")))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(SealError::Hsm(format!(
                "the {what} is open to other users; `chmod 600` it"
            )));
        }
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| SealError::Hsm(format!("cannot read the {what}: {e}")))?,
    );
    let pin = text.trim_end_matches(['\n', '\r']);
    if pin.is_empty() {
        return Err(SealError::Hsm(format!("the {what} is empty")));
    }
    Ok(Zeroizing::new(pin.to_owned()))
}
