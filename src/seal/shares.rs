//! The root key as N Shamir shares of which any K open the store (GF(256), the `blahaj`
//! crate's arithmetic).
//!
//! A share is one line of text:
//!
//! ```text
//! kluis-share-v1:<set>:<number>:<total>:<threshold>:<value>:<checksum>
//! ```
//!
//! `set` names the split (16 hex digits, new for every split), `number` is 1..=`total`, `value`
//! is the share's 32 bytes in hex, and `checksum` the first 4 bytes of SHA-256 over everything
//! before it, so a typing error is caught and named before the share is used. The store keeps,
//! per share, a digest (SHA-256 over set, number, parameters and value), never the value: a
//! well-formed share that is not one of this store's is named too. A digest of 256 random-looking
//! bits gives nothing towards the share, and K-1 shares give nothing towards the root key.

use std::{fmt, path::Path};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use super::SealError;
use crate::crypto::RootKey;

/// The prefix of every share line, with the format version.
const PREFIX: &str = "kluis-share-v1";
/// At most this many shares in a split.
pub const MAX_SHARES: u8 = 16;

/// One share of the root key. Wiped on drop; `Debug` names it without its value.
#[derive(Clone)]
pub struct Share {
    set: [u8; 8],
    number: u8,
    total: u8,
    threshold: u8,
    value: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Share({}, <redacted>)", self.describe())
    }
}

impl Share {
    /// The split this share belongs to, as 16 hex digits.
    pub fn set(&self) -> String {
        hex::encode(self.set)
    }

    /// The share's number, 1..=`total`.
    pub fn number(&self) -> u8 {
        self.number
    }

    /// How many shares the split made.
    pub fn total(&self) -> u8 {
        self.total
    }

    /// How many shares open the store.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// `share 2 of 5 (set 0123…, any 3 open)`: names the share, never its value.
    pub fn describe(&self) -> String {
        format!(
            "share {} of {} (set {}, any {} open)",
            self.number,
            self.total,
            self.set(),
            self.threshold
        )
    }

    /// The share as its line of text (secret: it is the share).
    pub fn to_text(&self) -> Zeroizing<String> {
        let value = Zeroizing::new(hex::encode(self.value.as_slice()));
        let mut body = Zeroizing::new(format!(
            "{PREFIX}:{}:{}:{}:{}:{}",
            self.set(),
            self.number,
            self.total,
            self.threshold,
            value.as_str()
        ));
        let sum = checksum(&body);
        body.push(':');
        body.push_str(&sum);
        body
    }

    /// Parses a share from text: the one line that starts with `kluis-share-v1:` (blank lines
    /// and `#` comments around it are allowed). `what` names its source in errors (a file name,
    /// `the share typed`).
    pub fn parse(what: &str, text: &str) -> Result<Self, SealError> {
        let bad = |problem: &str| SealError::Share(format!("{what}: {problem}"));
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let Some(line) = lines.next() else {
            return Err(bad(
                "holds no share (expected a line starting with `kluis-share-v1:`)",
            ));
        };
        if lines.next().is_some() {
            return Err(bad("holds more than one line; give one share per file"));
        }
        let parts: Vec<&str> = line.split(':').collect();
        if parts.first() != Some(&PREFIX) {
            return Err(bad(
                "is not a kluis share (expected a line starting with `kluis-share-v1:`)",
            ));
        }
        let [_, set, number, total, threshold, value, sum] = parts.as_slice() else {
            return Err(bad("has the wrong number of parts; expected \
                 kluis-share-v1:SET:NUMBER:TOTAL:THRESHOLD:VALUE:CHECKSUM"));
        };
        // Hex may be typed in either case: the checksum is over the lower-case form.
        let body = line
            .get(..line.len() - sum.len() - 1)
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !bool::from(
            checksum(&body)
                .as_bytes()
                .ct_eq(sum.to_ascii_lowercase().as_bytes()),
        ) {
            return Err(bad(
                "its checksum does not match: a character was mistyped or the file is damaged",
            ));
        }
        let mut set_bytes = [0u8; 8];
        hex::decode_to_slice(set.to_ascii_lowercase(), &mut set_bytes)
            .map_err(|_| bad("its set is not 16 hexadecimal digits"))?;
        let parse_u8 = |s: &str, name: &str| {
            s.parse::<u8>().map_err(|_| {
                bad(&format!(
                    "its {name} is not a number from 1 to {MAX_SHARES}"
                ))
            })
        };
        let number = parse_u8(number, "number")?;
        let total = parse_u8(total, "total")?;
        let threshold = parse_u8(threshold, "threshold")?;
        check_parameters(threshold, total).map_err(|e| bad(&e.to_string()))?;
        if number == 0 || number > total {
            return Err(bad(&format!(
                "its number {number} is not from 1 to {total}"
            )));
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(value, bytes.as_mut_slice())
            .map_err(|_| bad("its value is not 64 hexadecimal digits"))?;
        Ok(Share {
            set: set_bytes,
            number,
            total,
            threshold,
            value: bytes,
        })
    }

    /// Reads a share from a file, which must not be readable by group or others.
    pub fn read_file(path: &Path) -> Result<Self, SealError> {
        let what = format!("share file `{}`", path.display());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path)
                .map_err(|e| SealError::Share(format!("{what}: cannot read it: {e}")))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(SealError::Share(format!(
                    "{what} is open to other users; `chmod 600` it (and check who read it)"
                )));
            }
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| SealError::Share(format!("{what}: cannot read it: {e}")))?,
        );
        Self::parse(&what, &text)
    }

    /// Writes the share to a new file with mode 0600, with a comment saying what it is; refuses
    /// to overwrite an existing file.
    pub fn write_file(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path)?;
        let mut text = Zeroizing::new(format!(
            "# kluis root key {}.\n# Keep it secret and apart from the other shares; \
             give it only to `kluis operator unseal`.\n",
            self.describe()
        ));
        text.push_str(&self.to_text());
        text.push('\n');
        file.write_all(text.as_bytes())?;
        file.sync_all()
    }

    /// The digest the store keeps of this share: SHA-256 over its set, number, parameters and
    /// value.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"kluis.v1.share-digest");
        h.update(self.set);
        h.update([self.number, self.total, self.threshold]);
        h.update(self.value.as_slice());
        h.finalize().into()
    }

    fn to_blahaj(&self) -> Result<blahaj::Share, SealError> {
        let mut bytes = Zeroizing::new(Vec::with_capacity(33));
        bytes.push(self.number);
        bytes.extend_from_slice(self.value.as_slice());
        blahaj::Share::try_from(bytes.as_slice())
            .map_err(|e| SealError::Share(format!("{}: {e}", self.describe())))
    }
}

/// Writes a whole set of shares into `dir` (created with mode 0700 when missing), one file per
/// share, `kluis-share-<set>-<n>-of-<total>.txt` with mode 0600; refuses to overwrite a file.
/// On a failure the files written so far are removed again: a set is written whole or not at
/// all. Returns the files in share order.
pub fn write_set(dir: &Path, shares: &[Share]) -> Result<Vec<std::path::PathBuf>, String> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    let mut written = Vec::with_capacity(shares.len());
    for share in shares {
        let path = dir.join(format!(
            "kluis-share-{}-{}-of-{}.txt",
            share.set(),
            share.number,
            share.total
        ));
        if let Err(e) = share.write_file(&path) {
            for done in &written {
                let _ = std::fs::remove_file(done);
            }
            return Err(format!("cannot write `{}`: {e}", path.display()));
        }
        written.push(path);
    }
    Ok(written)
}

/// The first 4 bytes of SHA-256 over `body`, hex.
fn checksum(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    hex::encode(digest.get(..4).unwrap_or_default())
}

/// Refuses a split that would not be one: 2 ≤ threshold ≤ total ≤ `MAX_SHARES`.
pub fn check_parameters(threshold: u8, total: u8) -> Result<(), SealError> {
    if !(2..=MAX_SHARES).contains(&total) {
        return Err(SealError::Parameters(format!(
            "--shares must be from 2 to {MAX_SHARES} (got {total})"
        )));
    }
    if threshold < 2 || threshold > total {
        return Err(SealError::Parameters(format!(
            "--threshold must be from 2 to --shares ({total}) (got {threshold}): one share alone \
             must not open the store"
        )));
    }
    Ok(())
}

/// Splits `root` into `total` shares of which any `threshold` give it back, under a new set id.
pub fn split(root: &RootKey, threshold: u8, total: u8) -> Result<Vec<Share>, SealError> {
    check_parameters(threshold, total)?;
    let set: [u8; 8] = rand::random();
    let dealer = blahaj::Sharks(threshold).dealer(root.expose_secret());
    let mut shares = Vec::with_capacity(usize::from(total));
    for share in dealer.take(usize::from(total)) {
        let mut bytes = Zeroizing::new(Vec::<u8>::from(&share));
        let (&number, value) = bytes
            .split_first()
            .ok_or_else(|| SealError::Share("the split made an empty share".into()))?;
        let mut fixed = Zeroizing::new([0u8; 32]);
        if value.len() != 32 {
            return Err(SealError::Share(
                "the split made a share of the wrong size".into(),
            ));
        }
        fixed.copy_from_slice(value);
        bytes.zeroize();
        shares.push(Share {
            set,
            number,
            total,
            threshold,
            value: fixed,
        });
    }
    if shares.iter().map(|s| s.number).ne(1..=total) {
        return Err(SealError::Share(
            "the split did not number its shares 1 to N".into(),
        ));
    }
    Ok(shares)
}

/// Combines shares of one set into the root key: at least its threshold of distinct shares.
/// Every share beyond the threshold is checked to lie on the same polynomial, so a set given
/// whole is known to be whole.
pub fn combine(shares: &[Share]) -> Result<RootKey, SealError> {
    let Some(first) = shares.first() else {
        return Err(SealError::Quorum("no shares given".into()));
    };
    for s in shares {
        if s.set != first.set || s.total != first.total || s.threshold != first.threshold {
            return Err(SealError::Quorum(format!(
                "{} and {} are of different splits; give shares of one set",
                first.describe(),
                s.describe()
            )));
        }
    }
    let mut distinct: Vec<&Share> = Vec::with_capacity(shares.len());
    for s in shares {
        if !distinct.iter().any(|d| d.number == s.number) {
            distinct.push(s);
        }
    }
    let k = usize::from(first.threshold);
    if distinct.len() < k {
        return Err(SealError::Quorum(format!(
            "{} of {} shares given; any {} open the store",
            distinct.len(),
            first.total,
            first.threshold
        )));
    }
    let recover = |set: &[&Share]| -> Result<Zeroizing<Vec<u8>>, SealError> {
        let parts = set
            .iter()
            .map(|s| s.to_blahaj())
            .collect::<Result<Vec<_>, _>>()?;
        blahaj::Sharks(first.threshold)
            .recover(parts.iter())
            .map(Zeroizing::new)
            .map_err(|e| SealError::Quorum(e.into()))
    };
    let (quorum, extras) = distinct.split_at(k);
    let secret = recover(quorum)?;
    // Each further share must give the same secret with k-1 of the first ones.
    for extra in extras {
        let mut probe: Vec<&Share> = quorum.iter().take(k - 1).copied().collect();
        probe.push(extra);
        let again = recover(&probe)?;
        if !bool::from(again.as_slice().ct_eq(secret.as_slice())) {
            return Err(SealError::Share(format!(
                "{} does not belong with the others of its set: it was altered",
                extra.describe()
            )));
        }
    }
    RootKey::from_slice(&secret)
        .ok_or_else(|| SealError::Quorum("the shares do not give a 256-bit key".into()))
}

/// What a store records of its shares: the set, the parameters, and a digest per share.
#[derive(Clone, Debug, Eq, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct ShareSetMeta {
    /// The set id, 16 hex digits.
    pub set: String,
    /// Shares that open the store.
    pub threshold: u8,
    /// Shares made.
    pub total: u8,
    /// Per share, in number order, the hex SHA-256 digest (`Share::digest`).
    pub digests: Vec<String>,
}

impl ShareSetMeta {
    /// The record of a whole set (every share 1..=total, as `split` made it).
    pub fn of(shares: &[Share]) -> Result<Self, SealError> {
        let Some(first) = shares.first() else {
            return Err(SealError::Quorum("no shares given".into()));
        };
        let numbers: Vec<u8> = shares.iter().map(|s| s.number).collect();
        if numbers.iter().copied().ne(1..=first.total)
            || shares
                .iter()
                .any(|s| s.set != first.set || s.threshold != first.threshold)
        {
            return Err(SealError::Quorum(format!(
                "a new set of shares must be given whole: all {} shares of one set, in order",
                first.total
            )));
        }
        Ok(Self {
            set: first.set(),
            threshold: first.threshold,
            total: first.total,
            digests: shares.iter().map(|s| hex::encode(s.digest())).collect(),
        })
    }

    /// Checks that `share` is one of this set's, as recorded; names it when not.
    pub fn check(&self, share: &Share) -> Result<(), SealError> {
        if share.set() != self.set {
            return Err(SealError::Share(format!(
                "{} is not of this store's shares (set {}, any {} of {} open it)",
                share.describe(),
                self.set,
                self.threshold,
                self.total
            )));
        }
        if share.total != self.total || share.threshold != self.threshold {
            return Err(SealError::Share(format!(
                "{} claims other parameters than this store's set ({} of {})",
                share.describe(),
                self.threshold,
                self.total
            )));
        }
        let recorded = self
            .digests
            .get(usize::from(share.number).wrapping_sub(1))
            .and_then(|d| hex::decode(d).ok())
            .unwrap_or_default();
        if recorded.len() != 32 || !bool::from(share.digest().ct_eq(&recorded)) {
            return Err(SealError::Share(format!(
                "{} is not the share this store recorded under that number: it was altered or \
                 mistyped with its checksum recomputed",
                share.describe()
            )));
        }
        Ok(())
    }

    /// `3 of 5 (set 0123…)`.
    pub fn describe(&self) -> String {
        format!("{} of {} (set {})", self.threshold, self.total, self.set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> RootKey {
        RootKey::from_bytes(&[0x5a; 32])
    }

    #[test]
    fn any_threshold_of_the_shares_give_the_key_back_and_fewer_do_not() {
        let shares = split(&root(), 3, 5).unwrap();
        assert_eq!(shares.len(), 5);
        for picks in [[0, 1, 2], [0, 2, 4], [4, 3, 1]] {
            let some: Vec<Share> = picks.iter().map(|&i| shares[i].clone()).collect();
            assert_eq!(combine(&some).unwrap().expose_secret(), &[0x5a; 32]);
        }
        let err = combine(&shares[..2]).unwrap_err().to_string();
        assert!(err.contains("2 of 5 shares given; any 3"), "{err}");
        // The same share twice counts once.
        let twice = vec![shares[0].clone(), shares[0].clone(), shares[1].clone()];
        assert!(combine(&twice).is_err());
        assert_eq!(combine(&shares).unwrap().expose_secret(), &[0x5a; 32]);
    }

    #[test]
    fn a_share_survives_its_text_and_a_mistyped_one_is_named() {
        let shares = split(&root(), 2, 3).unwrap();
        let text = shares[1].to_text();
        let back = Share::parse("share", &text).unwrap();
        assert_eq!(back.digest(), shares[1].digest());
        assert_eq!(back.number(), 2);
        // One hex digit of the value changed: the checksum catches it.
        let mut typo = text.to_string();
        let at = typo.len() - 20;
        let c = typo.as_bytes()[at];
        let swapped = if c == b'0' { '1' } else { '0' };
        typo.replace_range(at..=at, &swapped.to_string());
        let err = Share::parse("share file `s2`", &typo)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("share file `s2`") && err.contains("checksum"),
            "{err}"
        );
        assert!(
            !err.contains(&typo[30..60]),
            "the value is not echoed: {err}"
        );
        // Its twin, untouched, parses.
        assert!(Share::parse("share", &text).is_ok());
    }

    #[test]
    fn a_share_altered_with_its_checksum_recomputed_is_refused_by_the_record() {
        let shares = split(&root(), 2, 3).unwrap();
        let meta = ShareSetMeta::of(&shares).unwrap();
        for s in &shares {
            meta.check(s).unwrap();
        }
        let mut altered = shares[0].clone();
        altered.value[0] ^= 1;
        let reparsed = Share::parse("x", &altered.to_text()).unwrap();
        let err = meta.check(&reparsed).unwrap_err().to_string();
        assert!(err.contains("share 1 of 3"), "{err}");
        // A share of another split of the same key is not of this store's set.
        let other = split(&root(), 2, 3).unwrap();
        let err = meta.check(&other[0]).unwrap_err().to_string();
        assert!(err.contains("not of this store's shares"), "{err}");
        // An altered share in a whole set is caught when the set is combined.
        let mut set = shares.clone();
        set[2].value[5] ^= 0x40;
        assert!(combine(&set).is_err());
        assert!(combine(&shares).is_ok());
    }

    #[test]
    fn parameters_out_of_range_are_refused_by_flag() {
        assert!(
            split(&root(), 1, 3)
                .unwrap_err()
                .to_string()
                .contains("--threshold")
        );
        assert!(
            split(&root(), 4, 3)
                .unwrap_err()
                .to_string()
                .contains("--threshold")
        );
        assert!(
            split(&root(), 2, 17)
                .unwrap_err()
                .to_string()
                .contains("--shares")
        );
        assert!(
            split(&root(), 2, 1)
                .unwrap_err()
                .to_string()
                .contains("--shares")
        );
    }

    #[test]
    fn debug_shows_no_value() {
        let shares = split(&root(), 2, 2).unwrap();
        let shown = format!("{:?}", shares[0]);
        let value = hex::encode(shares[0].value.as_slice());
        assert!(!shown.contains(&value[..16]), "{shown}");
        assert!(shown.contains("share 1 of 2"));
    }
}
