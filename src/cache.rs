//! The decision cache: the whole outcome of authenticating and authorizing one token on
//! one route (the grant with its headers, or the 403 denial), kept for
//! min(`cache.ttl_s`, token `exp` − now) with a per-entry expiry.
//!
//! Keys are SHA-256 digests of route index and token: the token itself is never stored,
//! logged or compared. Only decisions about a *verified* token are cached (401s are not:
//! an attacker with garbage tokens must not be able to fill the cache). One cache belongs
//! to one loaded config: a reload builds a new cache, so a decision made under the old
//! config can never answer under the new one.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::sync::Cache;
use moka::Expiry;
use sha2::{Digest, Sha256};

use crate::admin::metrics;
use crate::auth::AuthError;
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
    pub fn key(route_index: usize, token: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((route_index as u64).to_be_bytes());
        h.update(token.as_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::DenyReason;

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
