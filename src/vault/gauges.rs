//! What the operations metrics count of the store's state: legal holds in force, subject
//! requests open and overdue, tokens that expire soon. Counts only; rows that fail their MAC are
//! not counted (they are logged where they are used).

use super::{Vault, VaultError};
use crate::domain::now_unix;

/// Tokens that expire within this many seconds count as expiring soon: 14 days.
pub const EXPIRING_WITHIN_SECS: i64 = 14 * 86_400;

/// The counts, at one moment.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct StateCounts {
    /// Legal holds in force.
    pub holds_open: u64,
    /// Subject requests not yet answered.
    pub requests_open: u64,
    /// Of those, past their deadline.
    pub requests_overdue: u64,
    /// Tokens not revoked that expire within 14 days (and have not yet).
    pub tokens_expiring: u64,
}

impl Vault {
    /// Counts the state the operations metrics show.
    pub fn state_counts(&self) -> Result<StateCounts, VaultError> {
        let now = now_unix();
        let holds = self.store.holds(None, true)?;
        let requests = self.store.requests()?;
        let tokens = self.store.tokens()?;
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let open: Vec<_> = requests
            .iter()
            .filter(|r| r.completed_at.is_none() && self.rows.is_authentic(*r))
            .collect();
        Ok(StateCounts {
            holds_open: count(holds.iter().filter(|h| self.rows.is_authentic(*h)).count()),
            requests_open: count(open.len()),
            // Past the deadline in force: an extended one when extended.
            requests_overdue: count(open.iter().filter(|r| r.due_in_force() < now).count()),
            tokens_expiring: count(
                tokens
                    .iter()
                    .filter(|t| {
                        t.revoked_at.is_none()
                            && t.expires_at > now
                            && t.expires_at <= now + EXPIRING_WITHIN_SECS
                            && self.rows.is_authentic(*t)
                    })
                    .count(),
            ),
        })
    }
}
