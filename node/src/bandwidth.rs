//! The bound on the bandwidth a node spends catching segments up (`--repair-bandwidth`):
//! records fetched by gap-fill and pages copied by hydration, which is how a replacement copies
//! a PG and how a node back from an absence catches up. Foreground I/O (Appends, reads) is never
//! held back; repairs are, so that applications keep their commit rate while a node is replaced
//! (the most requested fix of Longhorn's users).
//!
//! A token bucket: `rate` bytes per second, up to one second's worth saved up. A batch is taken
//! whole even when larger than what is saved (the bucket goes into debt), and later batches wait
//! the debt off, so the long-run rate never exceeds `rate` and no batch is ever split. Pure:
//! [`TokenBucket::take`] says how long to wait; [`RepairBandwidth::spend`] sleeps that long.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default of `--repair-bandwidth`, bytes per second per node.
pub const REPAIR_BANDWIDTH_DEFAULT: u64 = 256 << 20;

/// A token bucket of `rate` bytes per second (0: unbounded).
#[derive(Debug)]
pub struct TokenBucket {
    rate: u64,
    /// Bytes that may go without waiting; negative: debt.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: rate as f64,
            last: now,
        }
    }

    /// Takes `bytes` at `now`; returns how long the taker waits before using them.
    pub fn take(&mut self, now: Instant, bytes: u64) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let rate = self.rate as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            // Finite and positive here; a debt too large to express waits a day at most.
            Duration::try_from_secs_f64(-self.tokens / rate).unwrap_or(Duration::from_secs(86_400))
        }
    }
}

/// The node's repair bandwidth: one bucket shared by every gap-fill and hydration.
#[derive(Debug)]
pub struct RepairBandwidth {
    bucket: Mutex<TokenBucket>,
    /// Bytes spent so far (for status and metrics).
    spent: AtomicU64,
}

impl RepairBandwidth {
    pub fn new(rate: u64) -> RepairBandwidth {
        RepairBandwidth {
            bucket: Mutex::new(TokenBucket::new(rate, Instant::now())),
            spent: AtomicU64::new(0),
        }
    }

    /// Spends `bytes`, waiting first as long as the bound requires.
    pub async fn spend(&self, bytes: u64) {
        self.spent.fetch_add(bytes, Ordering::Relaxed);
        let wait = crate::lock(&self.bucket).take(Instant::now(), bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    pub fn spent(&self) -> u64 {
        self.spent.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_long_run_rate_never_exceeds_the_bound() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10 * MIB, start);
        // A second's worth goes at once; then every MiB waits its tenth of a second.
        assert_eq!(bucket.take(start, 10 * MIB), Duration::ZERO);
        let mut now = start;
        for _ in 0..50 {
            now += bucket.take(now, MIB);
        }
        let elapsed = now.duration_since(start).as_secs_f64();
        assert!(
            (4.9..=5.1).contains(&elapsed),
            "50 MiB more at 10 MiB/s take 5 s: {elapsed}"
        );
    }

    #[test]
    fn a_batch_larger_than_the_bucket_goes_whole_and_the_next_waits_its_debt() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(MIB, start);
        assert_eq!(bucket.take(start, 3 * MIB), Duration::from_secs(2));
        // Two seconds later the debt is paid; the next MiB waits a second.
        let later = start + Duration::from_secs(2);
        let wait = bucket.take(later, MIB);
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn idle_time_saves_up_at_most_one_second() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(MIB, start);
        let idle = start + Duration::from_secs(60);
        assert_eq!(bucket.take(idle, MIB), Duration::ZERO);
        assert!(
            bucket.take(idle, MIB) > Duration::ZERO,
            "no minute of burst"
        );
        assert_eq!(
            TokenBucket::new(0, start).take(idle, u64::MAX),
            Duration::ZERO
        );
    }
}
