//! Hedged reads: when a page read asks a second segment, and which segments it asks last.
//!
//! A read asks the best segment first (caught up, up, same AZ, fastest: see `io`). If no answer
//! came within the hedge delay, it asks the next candidate too and takes whichever answers first;
//! if neither answers within twice the delay, the next one, and so on, the wait doubling each
//! time (two slow nodes, such as both of the writer's AZ, cost two delays, not a timeout; the
//! doubling bounds the extra load when every node is slow). A failed attempt hands over to the
//! next at once. So one slow node (stalled, swapping, a long pause) costs a read about one hedge
//! delay, not the attempt's timeout.
//!
//! The delay follows the reads this volume has seen, as TCP's retransmission timer follows round
//! trips (RFC 6298): the smoothed latency plus four times its mean deviation, clamped to
//! [`HEDGE_MIN`]..[`HEDGE_MAX`]. Only answered reads are samples, so a stalled node does not
//! teach the volume to wait for it. Before the first sample the delay is [`HEDGE_INITIAL`].
//!
//! A node whose attempt was overtaken (a node asked after it answered first) or failed is asked
//! last for [`SLOW_PENALTY`]: reads route around it at once instead of paying the hedge delay on
//! every read.
//!
//! Pure: no clock inside (callers pass durations and instants), no I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Never hedge sooner: below this a second request mostly doubles the load for nothing, and a
/// healthy node's scheduling hiccup (common with more processes than cores) would get it asked
/// last for a while.
pub const HEDGE_MIN: Duration = Duration::from_millis(2);
/// Never wait longer than this before asking a second segment.
pub const HEDGE_MAX: Duration = Duration::from_millis(100);
/// The delay before the volume has timed any read.
pub const HEDGE_INITIAL: Duration = Duration::from_millis(10);
/// How long a node that was slow or failed is asked last.
pub const SLOW_PENALTY: Duration = Duration::from_secs(1);

/// The volume's read latency estimate and the nodes reads should avoid for now.
#[derive(Debug, Default)]
pub struct ReadRouting {
    /// Smoothed latency and mean deviation, in microseconds (None before the first sample).
    smoothed_us: Option<u64>,
    deviation_us: u64,
    /// Node address -> until when it is asked last.
    slow_until: HashMap<String, Instant>,
}

impl ReadRouting {
    /// An answered read took `latency`.
    pub fn observe(&mut self, latency: Duration) {
        let sample = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        match self.smoothed_us {
            None => {
                self.smoothed_us = Some(sample);
                self.deviation_us = sample / 2;
            }
            Some(smoothed) => {
                // RFC 6298 with alpha 1/8, beta 1/4.
                let error = smoothed.abs_diff(sample);
                self.deviation_us =
                    (self.deviation_us.saturating_mul(3) / 4).saturating_add(error / 4);
                self.smoothed_us =
                    Some((smoothed.saturating_mul(7) / 8).saturating_add(sample / 8));
            }
        }
    }

    /// How long to wait for the first segment before asking the next one too.
    pub fn hedge_after(&self) -> Duration {
        match self.smoothed_us {
            None => HEDGE_INITIAL,
            Some(smoothed) => {
                let us = smoothed.saturating_add(self.deviation_us.saturating_mul(4));
                Duration::from_micros(us).clamp(HEDGE_MIN, HEDGE_MAX)
            }
        }
    }

    /// How long to wait, with `outstanding` segments asked and none answered, before asking
    /// one more: the hedge delay, doubled for each segment asked beyond the first.
    pub fn next_hedge_after(&self, outstanding: usize) -> Duration {
        let doublings = u32::try_from(outstanding.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(16);
        self.hedge_after().saturating_mul(1 << doublings)
    }

    /// The node at `addr` was overtaken by a hedge or failed at `now`: ask it last for a while.
    pub fn mark_slow(&mut self, addr: &str, now: Instant) {
        self.slow_until.retain(|_, until| *until > now);
        self.slow_until.insert(addr.to_owned(), now + SLOW_PENALTY);
    }

    /// True while the node at `addr` is to be asked last.
    pub fn is_slow(&self, addr: &str, now: Instant) -> bool {
        self.slow_until.get(addr).is_some_and(|until| *until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_starts_at_the_initial_value_and_follows_the_reads() {
        let mut routing = ReadRouting::default();
        assert_eq!(routing.hedge_after(), HEDGE_INITIAL);
        for _ in 0..100 {
            routing.observe(Duration::from_micros(300));
        }
        // Steady 300 us reads: the deviation decays, the delay settles near the minimum.
        assert_eq!(routing.hedge_after(), HEDGE_MIN);
        // Jittery reads widen it.
        for i in 0..100 {
            routing.observe(Duration::from_micros(if i % 2 == 0 { 300 } else { 5_000 }));
        }
        let jittery = routing.hedge_after();
        assert!(jittery > Duration::from_millis(5), "{jittery:?}");
        assert!(jittery <= HEDGE_MAX);
    }

    #[test]
    fn each_further_hedge_waits_twice_as_long() {
        let routing = ReadRouting::default();
        assert_eq!(routing.next_hedge_after(0), HEDGE_INITIAL);
        assert_eq!(routing.next_hedge_after(1), HEDGE_INITIAL);
        assert_eq!(routing.next_hedge_after(2), HEDGE_INITIAL * 2);
        assert_eq!(routing.next_hedge_after(3), HEDGE_INITIAL * 4);
        assert_eq!(
            routing.next_hedge_after(usize::MAX),
            HEDGE_INITIAL * (1 << 16)
        );
    }

    #[test]
    fn the_delay_is_clamped() {
        let mut routing = ReadRouting::default();
        routing.observe(Duration::from_secs(30));
        assert_eq!(routing.hedge_after(), HEDGE_MAX);
        routing.observe(Duration::MAX);
        assert_eq!(routing.hedge_after(), HEDGE_MAX);
        let mut fast = ReadRouting::default();
        fast.observe(Duration::ZERO);
        assert_eq!(fast.hedge_after(), HEDGE_MIN);
    }

    #[test]
    fn a_slow_node_is_asked_last_for_the_penalty_then_forgiven() {
        let mut routing = ReadRouting::default();
        let now = Instant::now();
        assert!(!routing.is_slow("a", now));
        routing.mark_slow("a", now);
        assert!(routing.is_slow("a", now + SLOW_PENALTY / 2));
        assert!(!routing.is_slow("b", now));
        assert!(!routing.is_slow("a", now + SLOW_PENALTY));
        // Expired marks are dropped when another is made: the map stays as small as the nodes.
        routing.mark_slow("b", now + SLOW_PENALTY * 2);
        assert_eq!(routing.slow_until.len(), 1);
    }
}
