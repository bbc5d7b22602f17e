//! Giving freed heap memory back to the operating system (glibc's malloc).
//!
//! glibc keeps memory that was freed in the middle of its heaps: after 2 000 slow-header
//! connections were closed by `header_read_timeout_ms` the process stayed at 60–80 MiB
//! RSS (from 12 MiB) with almost nothing allocated (heaptrack: 78 MiB peak heap, 0.6 MiB
//! left at exit), and `MALLOC_ARENA_MAX` or `MALLOC_TRIM_THRESHOLD_` change nothing,
//! since the free memory is not at the top of a heap. `malloc_trim(0)` releases every
//! whole free page inside the heaps (`MADV_DONTNEED`); one call took the same process
//! from 72 to 16.5 MiB. Measurements: docs/ARCHITECTURE.md.
//!
//! So the background runtime watches the number of open connections once a second and
//! trims, on a blocking thread, once a wave of connections has closed ([`CLOSED_WAVE`]
//! fewer than the high-water mark since the last trim, and the count no longer falling,
//! so that a wave closing over several seconds is trimmed once it is over; at most every
//! [`MIN_INTERVAL`]) and in any case every [`MAX_INTERVAL`] (decision caches replaced by
//! a reload or emptied by expiry free memory too). With the `mimalloc` feature, or a
//! libc other than glibc, nothing is done.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proxy::Shared;

/// Connections closed since the high-water mark that make a trim due.
pub const CLOSED_WAVE: usize = 256;
/// At least this long between two trims caused by closed connections.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);
/// A trim at least this often.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// How often the connection count is looked at.
const TICK: Duration = Duration::from_secs(1);

/// When to trim, from the open connection counts seen.
#[derive(Debug)]
pub struct TrimPolicy {
    high: usize,
    /// The count seen at the previous look.
    prev: usize,
    last: Instant,
}

impl TrimPolicy {
    pub fn new(now: Instant) -> Self {
        TrimPolicy {
            high: 0,
            prev: 0,
            last: now,
        }
    }

    /// `open` connections now: whether to trim (then the marks start again from here).
    pub fn observe(&mut self, open: usize, now: Instant) -> bool {
        let falling = open < self.prev;
        self.prev = open;
        self.high = self.high.max(open);
        let since = now.saturating_duration_since(self.last);
        let wave = self.high - open >= CLOSED_WAVE && !falling && since >= MIN_INTERVAL;
        if wave || since >= MAX_INTERVAL {
            self.high = open;
            self.last = now;
            return true;
        }
        false
    }
}

/// Returns free heap pages to the OS; `true` when the allocator released some.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
    {
        // SAFETY: malloc_trim has no preconditions; it takes each arena's lock itself.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc"))))]
    {
        false
    }
}

/// Whether [`trim`] does anything in this build.
pub const TRIMS: bool = cfg!(all(
    target_os = "linux",
    target_env = "gnu",
    not(feature = "mimalloc")
));

/// Runs for the life of the process (on the background runtime).
pub async fn trim_loop(shared: Arc<Shared>) {
    if !TRIMS {
        return;
    }
    let mut policy = TrimPolicy::new(Instant::now());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let open = shared.connections.load(Ordering::Relaxed);
        if policy.observe(open, Instant::now()) {
            let started = Instant::now();
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            tracing::debug!(
                open,
                released,
                took_us = started.elapsed().as_micros() as u64,
                "malloc_trim"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wave_of_closed_connections_makes_a_trim_due() {
        let t0 = Instant::now();
        let mut p = TrimPolicy::new(t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Connections opening: nothing to give back.
        assert!(!p.observe(100, at(1)));
        assert!(!p.observe(2000, at(2)));
        // Fewer than a wave closed.
        assert!(!p.observe(2000 - CLOSED_WAVE + 1, at(6)));
        // A wave closing over several seconds: not while the count still falls.
        assert!(!p.observe(1000, at(7)));
        assert!(!p.observe(10, at(8)));
        // Over: due, and the marks restart from the current count.
        assert!(p.observe(10, at(9)));
        assert!(!p.observe(10, at(10)));
        // Another wave soon after waits for MIN_INTERVAL.
        assert!(!p.observe(1000, at(11)));
        assert!(!p.observe(0, at(12)));
        assert!(!p.observe(0, at(13)));
        assert!(p.observe(0, at(9) + MIN_INTERVAL));
    }

    #[test]
    fn a_trim_at_least_every_max_interval() {
        let t0 = Instant::now();
        let mut p = TrimPolicy::new(t0);
        assert!(!p.observe(5, t0 + MAX_INTERVAL - Duration::from_secs(1)));
        assert!(p.observe(5, t0 + MAX_INTERVAL));
        assert!(!p.observe(5, t0 + MAX_INTERVAL + Duration::from_secs(1)));
        assert!(p.observe(5, t0 + MAX_INTERVAL * 2));
    }
}
