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
//!
//! In front of the decision cache sits a small table per proxy thread ([`Front`]): four
//! slots per set, each holding the whole key, the entry and its expiry instant, so a
//! repeat caller costs one short lock that no other thread takes and one or two cache
//! lines, instead of moka's hash-table walk and its access bookkeeping (with a thousand
//! callers that walk waits on memory; see docs/ARCHITECTURE.md, "1 000 tokens"). It only
//! ever holds entries that moka held, never past their expiry, and belongs to the same
//! `DecisionCache`, so a reload drops it too.

use std::cell::Cell;
use std::sync::{Arc, Mutex};
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
    /// When the entry stops answering (insert + `ttl`), for the front table.
    expires: Instant,
}

struct PerEntry;

impl Expiry<[u8; 32], Entry> for PerEntry {
    fn expire_after_create(&self, _k: &[u8; 32], v: &Entry, _now: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

pub struct DecisionCache {
    cache: Cache<[u8; 32], Entry>,
    front: Front,
    ttl_s: u64,
}

impl DecisionCache {
    /// A cache of at most `max_entries` decisions, each kept at most `ttl_s`, with one
    /// front table for each of `threads` proxy threads.
    pub fn new(max_entries: u64, ttl_s: u64, threads: usize) -> Self {
        DecisionCache {
            cache: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntry)
                .build(),
            front: Front::new(max_entries, threads),
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
        let now = Instant::now();
        let found = self.front.get(key, now).or_else(|| {
            let e = self.cache.get(key)?;
            self.front.put(*key, &e, now);
            Some(e)
        });
        match found {
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
        let at = Instant::now();
        let ttl = Duration::from_secs(left);
        let entry = Entry {
            decision,
            caller,
            ttl,
            expires: at + ttl,
        };
        self.front.put(key, &entry, at);
        self.cache.insert(key, entry);
        metrics::DECISION_CACHE_ENTRIES.set(self.cache.entry_count() as i64);
    }

    /// Live entries (expired ones are purged first); the gauge is set from this at each
    /// scrape.
    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

/// Slots per set of a front table.
const WAYS: usize = 4;
/// Most slots in one front table (per proxy thread): 4096 × ~100 bytes.
const FRONT_SLOTS_MAX: usize = 4096;

/// The decision cache's per-thread front: `tables[t]` belongs to proxy thread `t` (see
/// [`bind_worker`]), so its lock is uncontended; every other thread that decides
/// (`explain`, tests) shares the last table, which is slower but still correct. A table's
/// slots are allocated on its first insert, so tables no thread uses cost 128 bytes.
struct Front {
    tables: Box<[Table]>,
    /// Slots per table, a power of two and a multiple of [`WAYS`].
    slots: usize,
}

/// One thread's table, on cache lines of its own.
#[repr(align(128))]
struct Table(Mutex<Ways>);

struct Ways {
    /// Empty until the first insert, then `Front::slots` long.
    slots: Box<[Option<Slot>]>,
    /// Which way of a full set the next new key replaces.
    victim: usize,
}

struct Slot {
    key: [u8; 32],
    entry: Entry,
}

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Makes the calling thread use front table `i` of every decision cache (modulo the
/// number of proxy threads the cache was built for). Each proxy thread calls this with
/// its own number when it starts.
pub fn bind_worker(i: usize) {
    WORKER.with(|w| w.set(Some(i)));
}

impl Front {
    /// One table per proxy thread plus one for every other thread, each of `max_entries`
    /// slots rounded up to a power of two, at least one set and at most
    /// [`FRONT_SLOTS_MAX`]; no tables when the cache keeps nothing.
    fn new(max_entries: u64, threads: usize) -> Front {
        let slots = usize::try_from(max_entries)
            .unwrap_or(usize::MAX)
            .min(FRONT_SLOTS_MAX)
            .next_power_of_two()
            .max(WAYS);
        let tables = if max_entries == 0 {
            0
        } else {
            threads.max(1) + 1
        };
        Front {
            tables: (0..tables)
                .map(|_| {
                    Table(Mutex::new(Ways {
                        slots: Box::default(),
                        victim: 0,
                    }))
                })
                .collect(),
            slots,
        }
    }

    /// This thread's table, locked, and where `key`'s set starts in it.
    fn table(&self, key: &[u8; 32]) -> Option<(std::sync::MutexGuard<'_, Ways>, usize)> {
        let shared = self.tables.len().checked_sub(1)?;
        // `shared` is the number of proxy threads, at least 1.
        let i = WORKER.with(Cell::get).map_or(shared, |i| i % shared);
        // The key is a SHA-256 digest: any 8 of its bytes are evenly spread.
        let h = u64::from_le_bytes(key[..8].try_into().expect("8 bytes")) as usize;
        let set = h & (self.slots / WAYS - 1);
        let ways = self.tables[i].0.lock().unwrap_or_else(|e| e.into_inner());
        Some((ways, set * WAYS))
    }

    fn get(&self, key: &[u8; 32], now: Instant) -> Option<Entry> {
        let (mut ways, base) = self.table(key)?;
        for slot in ways.slots.get_mut(base..base + WAYS)? {
            if slot.as_ref().is_some_and(|s| s.key == *key) {
                return match slot {
                    Some(s) if s.entry.expires > now => Some(s.entry.clone()),
                    _ => {
                        *slot = None;
                        None
                    }
                };
            }
        }
        None
    }

    /// Keeps `entry` under `key`: in its own slot if it has one, else in a free or
    /// expired one, else in place of one of the set's ways, in turn.
    fn put(&self, key: [u8; 32], entry: &Entry, now: Instant) {
        if entry.expires <= now {
            return;
        }
        let Some((mut ways, base)) = self.table(&key) else {
            return;
        };
        if ways.slots.is_empty() {
            ways.slots = (0..self.slots).map(|_| None).collect();
        }
        let set = &ways.slots[base..base + WAYS];
        let way = set
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.key == key))
            .or_else(|| {
                set.iter()
                    .position(|s| s.as_ref().is_none_or(|s| s.entry.expires <= now))
            })
            .unwrap_or_else(|| {
                ways.victim = (ways.victim + 1) % WAYS;
                ways.victim
            });
        ways.slots[base + way] = Some(Slot {
            key,
            entry: entry.clone(),
        });
    }

    /// Tables with their slots allocated.
    #[cfg(test)]
    fn allocated(&self) -> usize {
        self.tables
            .iter()
            .filter(|t| !t.0.lock().unwrap().slots.is_empty())
            .count()
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
        let decisions = DecisionCache::new(100, 300, 1);
        let bad = NegativeCache::new(10, Duration::from_secs(30));
        let ok = denied();
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

    fn denied() -> Decision {
        Err(AuthError::new(DenyReason::InsufficientRole, "x"))
    }

    fn deny_entry(expires: Instant) -> Entry {
        Entry {
            decision: denied(),
            caller: None,
            ttl: Duration::from_secs(60),
            expires,
        }
    }

    /// Keys that fall into one set of the front (same first 8 bytes), differing after.
    fn same_set(n: u8) -> [u8; 32] {
        let mut k = [7u8; 32];
        k[31] = n;
        k
    }

    #[test]
    fn front_answers_a_repeat_without_asking_moka() {
        let c = DecisionCache::new(100, 300, 1);
        let k = DecisionCache::key(0, "t");
        let ok = denied();
        c.insert(k, ok, None, now() + 60);
        // Gone from moka, still in the front: the front answered.
        c.cache.invalidate(&k);
        assert!(c.cache.get(&k).is_none());
        assert!(c.get(&k).is_some());
        // A moka hit fills the front too.
        let k2 = DecisionCache::key(0, "u");
        c.cache
            .insert(k2, deny_entry(Instant::now() + Duration::from_secs(60)));
        assert!(c.get(&k2).is_some());
        c.cache.invalidate(&k2);
        assert!(c.get(&k2).is_some());
    }

    #[test]
    fn front_compares_the_whole_key() {
        let f = Front::new(100, 1);
        let t = Instant::now();
        f.put(same_set(1), &deny_entry(t + Duration::from_secs(60)), t);
        assert!(f.get(&same_set(1), t).is_some());
        // Same set, same first bytes, another token: never the first one's decision.
        assert!(f.get(&same_set(2), t).is_none());
        let mut k = same_set(1);
        k[0] ^= 1;
        assert!(f.get(&k, t).is_none());
    }

    #[test]
    fn front_never_answers_past_expiry() {
        let f = Front::new(100, 1);
        let t = Instant::now();
        let e = deny_entry(t + Duration::from_secs(5));
        f.put(same_set(1), &e, t);
        assert!(f.get(&same_set(1), t + Duration::from_secs(4)).is_some());
        assert!(f.get(&same_set(1), t + Duration::from_secs(5)).is_none());
        // Not kept at all when already expired.
        f.put(same_set(2), &e, t + Duration::from_secs(6));
        assert!(f.get(&same_set(2), t).is_none());
    }

    #[test]
    fn a_full_set_replaces_in_turn_and_keeps_the_rest() {
        let f = Front::new(100, 1);
        let t = Instant::now();
        let e = deny_entry(t + Duration::from_secs(60));
        for n in 0..WAYS as u8 {
            f.put(same_set(n), &e, t);
        }
        for n in 0..WAYS as u8 {
            assert!(f.get(&same_set(n), t).is_some(), "way {n}");
        }
        // A fifth key takes one way; three of the first four stay.
        f.put(same_set(9), &e, t);
        assert!(f.get(&same_set(9), t).is_some());
        let kept = (0..WAYS as u8)
            .filter(|n| f.get(&same_set(*n), t).is_some())
            .count();
        assert_eq!(kept, WAYS - 1);
        // Putting a key again reuses its slot rather than taking another.
        f.put(same_set(9), &e, t);
        let kept = (0..WAYS as u8)
            .filter(|n| f.get(&same_set(*n), t).is_some())
            .count();
        assert_eq!(kept, WAYS - 1);
    }

    #[test]
    fn each_proxy_thread_has_its_own_front() {
        let c = Arc::new(DecisionCache::new(100, 300, 2));
        let k = DecisionCache::key(0, "t");
        let deny = denied();
        let on = |i: usize, f: Box<dyn FnOnce(&DecisionCache) + Send>| {
            let c = c.clone();
            std::thread::spawn(move || {
                bind_worker(i);
                f(&c)
            })
            .join()
            .unwrap()
        };
        on(0, Box::new(move |c| c.insert(k, deny, None, now() + 60)));
        c.cache.invalidate(&k);
        // Thread 1's table never saw the key; thread 0's still has it.
        on(1, Box::new(move |c| assert!(c.get(&k).is_none())));
        on(0, Box::new(move |c| assert!(c.get(&k).is_some())));
        // Table numbers wrap: proxy thread 2 of 2 uses table 0.
        on(2, Box::new(move |c| assert!(c.get(&k).is_some())));
        // A thread that is no proxy thread uses the shared table, not thread 0's.
        let c2 = c.clone();
        std::thread::spawn(move || assert!(c2.get(&k).is_none()))
            .join()
            .unwrap();
    }

    #[test]
    fn a_cache_of_no_entries_keeps_nothing() {
        let c = DecisionCache::new(0, 300, 2);
        let k = DecisionCache::key(0, "t");
        let deny = denied();
        c.insert(k, deny, None, now() + 60);
        c.cache.run_pending_tasks();
        assert!(c.get(&k).is_none());
    }

    #[test]
    fn front_size_follows_max_entries() {
        assert_eq!(Front::new(1, 1).slots, WAYS);
        assert_eq!(Front::new(1000, 3).slots, 1024);
        assert_eq!(Front::new(u64::MAX, 1).slots, FRONT_SLOTS_MAX);
        // One table per proxy thread and one for every other thread.
        assert_eq!(Front::new(1000, 3).tables.len(), 4);
        assert_eq!(Front::new(1000, 0).tables.len(), 2);
        assert!(Front::new(0, 4).tables.is_empty());
    }

    #[test]
    fn a_table_takes_memory_only_once_used() {
        let f = Front::new(100_000, 8);
        assert_eq!(f.allocated(), 0);
        let t = Instant::now();
        assert!(f.get(&same_set(1), t).is_none());
        assert_eq!(f.allocated(), 0);
        // This (unbound) test thread uses the shared table only.
        f.put(same_set(1), &deny_entry(t + Duration::from_secs(60)), t);
        assert_eq!(f.allocated(), 1);
        assert_eq!(f.tables[8].0.lock().unwrap().slots.len(), FRONT_SLOTS_MAX);
    }

    /// How many slots of the table this thread uses hold `key`.
    fn copies(f: &Front, key: &[u8; 32]) -> usize {
        let (ways, _) = f.table(key).unwrap();
        ways.slots
            .iter()
            .filter(|s| s.as_ref().is_some_and(|s| s.key == *key))
            .count()
    }

    #[test]
    fn an_expired_way_is_freed_and_reused_before_a_live_one() {
        let f = Front::new(100, 1);
        let t = Instant::now();
        let live = deny_entry(t + Duration::from_secs(60));
        let short = deny_entry(t + Duration::from_secs(5));
        for n in 0..3 {
            f.put(same_set(n), &live, t);
        }
        f.put(same_set(3), &short, t);
        let later = t + Duration::from_secs(6);
        // A new key takes the expired way; the three live ones stay.
        f.put(same_set(9), &live, later);
        for n in [0, 1, 2, 9] {
            assert!(f.get(&same_set(n), later).is_some(), "key {n}");
        }
        assert_eq!(copies(&f, &same_set(3)), 0);

        // An expired hit empties its way; a key put again keeps its own way and is never
        // stored twice, even with an earlier way free.
        let g = Front::new(100, 1);
        g.put(same_set(0), &short, t);
        g.put(same_set(1), &live, t);
        assert!(g.get(&same_set(0), later).is_none());
        assert_eq!(copies(&g, &same_set(0)), 0);
        g.put(same_set(1), &live, later);
        assert_eq!(copies(&g, &same_set(1)), 1);
    }

    #[test]
    fn key_depends_on_route_and_token() {
        assert_ne!(DecisionCache::key(0, "a"), DecisionCache::key(1, "a"));
        assert_ne!(DecisionCache::key(0, "a"), DecisionCache::key(0, "b"));
        assert_eq!(DecisionCache::key(3, "t"), DecisionCache::key(3, "t"));
    }

    #[test]
    fn expired_token_is_not_kept_and_live_one_is() {
        let c = DecisionCache::new(100, 300, 1);
        let deny = denied();
        c.insert(DecisionCache::key(0, "old"), deny.clone(), None, now() - 1);
        assert!(c.get(&DecisionCache::key(0, "old")).is_none());
        c.insert(DecisionCache::key(0, "new"), deny, None, now() + 60);
        assert!(c.get(&DecisionCache::key(0, "new")).is_some());
    }

    #[test]
    fn entry_lives_no_longer_than_the_token() {
        let c = DecisionCache::new(100, 300, 1);
        let deny = denied();
        c.insert(DecisionCache::key(0, "t"), deny, None, now() + 1);
        std::thread::sleep(Duration::from_millis(2100));
        assert!(c.get(&DecisionCache::key(0, "t")).is_none());
    }
}
