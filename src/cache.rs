//! The decision cache: the whole outcome of authenticating and authorizing one token on
//! one route (the grant with its headers, or the 403 denial), kept for
//! min(`cache.ttl_s`, token `exp` − now) with a per-entry expiry.
//!
//! Keys are SHA-256 digests of route index and token: the token itself is never stored,
//! logged or compared. Only decisions about a *verified* token go into the decision
//! cache. Tokens that fail verification for good (bad signature, expired, wrong issuer
//! or audience...) go into the separate, smaller [`NegativeCache`] for a short time, so
//! the same bad token sent again costs a lookup instead of an RSA verification, and a
//! flood of distinct bad tokens can only evict other bad tokens, never a valid decision.
//! One cache of each kind belongs to one loaded config: a reload builds new ones, so a
//! decision made under the old config can never answer under the new one.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::sync::Cache;
use moka::Expiry;
use sha2::{Digest, Sha256};

use crate::admin::metrics;
use crate::auth::{AuthError, DenyReason};
use crate::policy::rbac::{Caller, Grant};

/// A cached decision.
pub type Decision = Result<Arc<Grant>, AuthError>;

/// A decision with the caller it was made for (kept with denials for the audit log).
#[derive(Clone)]
pub struct Entry {
    pub decision: Decision,
    pub caller: Option<Arc<Caller>>,
    ttl: Duration,
}

struct PerEntry;

impl Expiry<[u8; 32], Entry> for PerEntry {
    fn expire_after_create(&self, _k: &[u8; 32], v: &Entry, _now: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

pub struct DecisionCache {
    cache: Cache<[u8; 32], Entry>,
    ttl_s: u64,
}

impl DecisionCache {
    pub fn new(max_entries: u64, ttl_s: u64) -> Self {
        DecisionCache {
            cache: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntry)
                .build(),
            ttl_s,
        }
    }

    /// The cache key of a token on a route.
    pub fn key(route_index: usize, token: impl AsRef<[u8]>) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((route_index as u64).to_be_bytes());
        h.update(token.as_ref());
        h.finalize().into()
    }

    /// A live decision, counting the hit or miss.
    pub fn get(&self, key: &[u8; 32]) -> Option<Entry> {
        match self.cache.get(key) {
            Some(e) => {
                metrics::DECISION_CACHE_HITS.inc();
                Some(e)
            }
            None => {
                metrics::DECISION_CACHE_MISSES.inc();
                None
            }
        }
    }

    /// Keeps a decision about a token that expires at `exp` (Unix seconds); nothing is
    /// kept for a token that has already expired.
    pub fn insert(&self, key: [u8; 32], decision: Decision, caller: Option<Arc<Caller>>, exp: u64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let left = exp.saturating_sub(now).min(self.ttl_s);
        if left == 0 {
            return;
        }
        self.cache.insert(
            key,
            Entry {
                decision,
                caller,
                ttl: Duration::from_secs(left),
            },
        );
        metrics::DECISION_CACHE_ENTRIES.set(self.cache.entry_count() as i64);
    }

    /// Live entries (expired ones are purged first); the gauge is set from this at each
    /// scrape.
    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

/// How long a verification failure is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// How many verification failures are remembered at most.
pub const NEGATIVE_ENTRIES: u64 = 10_000;

/// Recent verification failures, by the same key as the decision cache.
pub struct NegativeCache {
    cache: Cache<[u8; 32], AuthError>,
}

impl NegativeCache {
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        NegativeCache {
            cache: Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// A remembered failure for this key.
    pub fn get(&self, key: &[u8; 32]) -> Option<AuthError> {
        self.cache.get(key)
    }

    /// Remembers `e` when it is final for this exact token: a bad signature, a malformed
    /// or expired token, a wrong issuer or audience, a disallowed algorithm, an inactive
    /// introspected token. Never a failure that can pass on a retry: an unknown key (the
    /// issuer may have rotated), not yet valid, or an unreachable issuer.
    pub fn remember(&self, key: [u8; 32], e: &AuthError) {
        if Self::is_final(e.reason) {
            self.cache.insert(key, e.clone());
        }
    }

    pub fn is_final(reason: DenyReason) -> bool {
        matches!(
            reason,
            DenyReason::MalformedToken
                | DenyReason::BadSignature
                | DenyReason::Expired
                | DenyReason::WrongIssuer
                | DenyReason::WrongAudience
                | DenyReason::DisallowedAlgorithm
                | DenyReason::IntrospectionInactive
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_cache_keeps_only_final_failures() {
        let c = NegativeCache::new(100, Duration::from_secs(30));
        for (i, r) in DenyReason::ALL.iter().enumerate() {
            c.remember(DecisionCache::key(i, "t"), &AuthError::new(*r, "x"));
        }
        let kept: Vec<&str> = DenyReason::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| c.get(&DecisionCache::key(*i, "t")).is_some())
            .map(|(_, r)| r.as_str())
            .collect();
        assert_eq!(
            kept,
            [
                "malformed_token",
                "bad_signature",
                "expired",
                "wrong_issuer",
                "wrong_audience",
                "disallowed_algorithm",
                "introspection_inactive"
            ]
        );
    }

    #[test]
    fn a_flood_of_bad_tokens_cannot_evict_a_decision() {
        let decisions = DecisionCache::new(100, 300);
        let bad = NegativeCache::new(10, Duration::from_secs(30));
        let ok: Decision = Err(AuthError::new(DenyReason::InsufficientRole, "x"));
        decisions.insert(DecisionCache::key(0, "good"), ok, None, now() + 60);
        for i in 0..1000 {
            bad.remember(
                DecisionCache::key(0, format!("bad{i}")),
                &AuthError::new(DenyReason::BadSignature, "x"),
            );
        }
        bad.cache.run_pending_tasks();
        assert!(bad.cache.entry_count() <= 10);
        assert!(decisions.get(&DecisionCache::key(0, "good")).is_some());
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn key_depends_on_route_and_token() {
        assert_ne!(DecisionCache::key(0, "a"), DecisionCache::key(1, "a"));
        assert_ne!(DecisionCache::key(0, "a"), DecisionCache::key(0, "b"));
        assert_eq!(DecisionCache::key(3, "t"), DecisionCache::key(3, "t"));
    }

    #[test]
    fn expired_token_is_not_kept_and_live_one_is() {
        let c = DecisionCache::new(100, 300);
        let deny: Decision = Err(AuthError::new(DenyReason::InsufficientRole, "x"));
        c.insert(DecisionCache::key(0, "old"), deny.clone(), None, now() - 1);
        assert!(c.get(&DecisionCache::key(0, "old")).is_none());
        c.insert(DecisionCache::key(0, "new"), deny, None, now() + 60);
        assert!(c.get(&DecisionCache::key(0, "new")).is_some());
    }

    #[test]
    fn entry_lives_no_longer_than_the_token() {
        let c = DecisionCache::new(100, 300);
        let deny: Decision = Err(AuthError::new(DenyReason::InsufficientRole, "x"));
        c.insert(DecisionCache::key(0, "t"), deny, None, now() + 1);
        std::thread::sleep(Duration::from_millis(2100));
        assert!(c.get(&DecisionCache::key(0, "t")).is_none());
    }
}
