//! Append admission on one append connection ([`crate::append_server`]): which batches the
//! node takes in, and in what order their answers leave. A plain state machine: no I/O, no
//! clock; the server feeds it (`handle_*`) and drains it (`poll_*`).
//!
//! Invariants (unit-tested below, with random schedules):
//! - Every admitted batch is answered exactly once, with the outcome the store gave it
//!   ([`Admission::handle_done`]): nothing is answered before the store has finished with it,
//!   so an `Ack` leaves only after the append's fsync.
//! - A stream's answers leave in the order its batches arrived (the writer matches an answer
//!   to the oldest batch it has in flight); streams do not wait for each other.
//! - What is admitted and not yet done is bounded, in batches and in payload bytes
//!   ([`Admission::wants_more`]); beyond that the server admits nothing more from the
//!   connection (it reads a bounded amount ahead, then stops reading, and TCP holds the writer
//!   back; writers stay below the limits, see `crate::append_server`).

use std::collections::{BTreeMap, HashMap, VecDeque};

/// How much one connection may have admitted and not yet done.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub batches: usize,
    pub bytes: usize,
}

/// One admitted batch: give it back with its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub stream: u64,
    seq: u64,
    bytes: usize,
}

#[derive(Clone, Debug, Default)]
struct Order<T> {
    /// Batches admitted on this stream.
    admitted: u64,
    /// Batches answered (taken by `poll_answer`).
    answered: u64,
    /// Outcomes of done batches not yet answered, by their place in the stream.
    done: BTreeMap<u64, T>,
}

#[derive(Clone, Debug)]
pub struct Admission<T> {
    limits: Limits,
    batches: usize,
    bytes: usize,
    streams: HashMap<u64, Order<T>>,
    /// Streams whose next answer is done (each listed once).
    ready: VecDeque<u64>,
}

impl<T> Admission<T> {
    pub fn new(limits: Limits) -> Admission<T> {
        Admission {
            limits,
            batches: 0,
            bytes: 0,
            streams: HashMap::new(),
            ready: VecDeque::new(),
        }
    }

    /// Whether the server may read (and admit) another batch.
    pub fn wants_more(&self) -> bool {
        self.batches < self.limits.batches && self.bytes < self.limits.bytes
    }

    /// Admitted batches not yet answered.
    pub fn in_flight(&self) -> usize {
        self.streams
            .values()
            .map(|order| (order.admitted - order.answered) as usize)
            .sum()
    }

    /// A batch of `bytes` arrived on `stream`: it is admitted (the server hands it to the
    /// store, and gives the ticket back with the outcome).
    pub fn handle_batch(&mut self, stream: u64, bytes: usize) -> Ticket {
        let order = self.streams.entry(stream).or_insert_with(|| Order {
            admitted: 0,
            answered: 0,
            done: BTreeMap::new(),
        });
        let seq = order.admitted;
        order.admitted += 1;
        self.batches += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        Ticket { stream, seq, bytes }
    }

    /// The store finished with a batch (hardened it, or refused it).
    pub fn handle_done(&mut self, ticket: Ticket, outcome: T) {
        let Some(order) = self.streams.get_mut(&ticket.stream) else {
            return; // not a ticket of this machine's
        };
        let pending = ticket.seq >= order.answered && ticket.seq < order.admitted;
        if !pending || order.done.contains_key(&ticket.seq) {
            return; // given back already, or forged
        }
        self.batches = self.batches.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(ticket.bytes);
        order.done.insert(ticket.seq, outcome);
        if ticket.seq == order.answered {
            self.ready.push_back(ticket.stream);
        }
    }

    /// The next answer to send, if one is due: `(stream, outcome)`.
    pub fn poll_answer(&mut self) -> Option<(u64, T)> {
        // Each stream is listed once, and only while its next answer is done; skipping entries
        // that are not keeps a slip from hiding the other streams' answers.
        let (stream, order, outcome) = loop {
            let stream = self.ready.pop_front()?;
            let Some(order) = self.streams.get_mut(&stream) else {
                continue;
            };
            if let Some(outcome) = order.done.remove(&order.answered) {
                break (stream, order, outcome);
            }
        };
        order.answered += 1;
        if order.done.contains_key(&order.answered) {
            self.ready.push_back(stream);
        } else if order.answered == order.admitted {
            self.streams.remove(&stream); // nothing pending: forget the stream
        }
        Some((stream, outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const LIMITS: Limits = Limits {
        batches: 4,
        bytes: 1000,
    };

    #[test]
    fn answers_leave_in_arrival_order_per_stream_and_only_when_done() {
        let mut admission = Admission::new(LIMITS);
        let a1 = admission.handle_batch(1, 10);
        let a2 = admission.handle_batch(1, 10);
        let b1 = admission.handle_batch(2, 10);
        assert_eq!(admission.poll_answer(), None, "nothing is done");
        admission.handle_done(a2, "a2");
        assert_eq!(admission.poll_answer(), None, "a2 waits for a1");
        admission.handle_done(b1, "b1");
        assert_eq!(
            admission.poll_answer(),
            Some((2, "b1")),
            "stream 2 does not wait"
        );
        admission.handle_done(a1, "a1");
        assert_eq!(admission.poll_answer(), Some((1, "a1")));
        assert_eq!(admission.poll_answer(), Some((1, "a2")));
        assert_eq!(admission.poll_answer(), None);
        assert!(
            admission.streams.is_empty(),
            "answered streams are forgotten"
        );
    }

    #[test]
    fn admission_stops_at_its_limits_and_resumes_as_batches_finish() {
        let mut admission = Admission::new(LIMITS);
        let tickets: Vec<_> = (0..4).map(|i| admission.handle_batch(i, 1)).collect();
        assert!(!admission.wants_more(), "4 batches");
        admission.handle_done(tickets[0], ());
        assert!(admission.wants_more());
        let big = admission.handle_batch(9, 1000);
        assert!(!admission.wants_more(), "1000 bytes");
        admission.handle_done(big, ());
        assert!(admission.wants_more());
        // A ticket given back twice, or a forged one, changes nothing: not the bound, not the
        // answers.
        let before = (admission.batches, admission.bytes);
        admission.handle_done(tickets[0], ());
        assert_eq!((admission.batches, admission.bytes), before);
        admission.handle_done(
            Ticket {
                stream: 77,
                seq: 5,
                bytes: 1,
            },
            (),
        );
        assert_eq!((admission.batches, admission.bytes), before);
        assert_eq!(admission.poll_answer(), Some((0, ())));
        assert_eq!(admission.poll_answer(), Some((9, ())));
        assert_eq!(admission.poll_answer(), None);
    }

    /// Random arrivals and completions over a few streams: every batch is answered once, after
    /// it is done, in its stream's arrival order; the bound holds throughout.
    #[test]
    fn random_schedules_keep_every_invariant() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut admission = Admission::new(LIMITS);
            let mut pending: Vec<(Ticket, u64)> = Vec::new();
            let mut sent_per_stream: HashMap<u64, u64> = HashMap::new();
            let mut done = std::collections::HashSet::new();
            let mut answered_per_stream: HashMap<u64, u64> = HashMap::new();
            let mut answers = 0;
            for _ in 0..500 {
                match rng.random_range(0..3) {
                    0 if admission.wants_more() => {
                        let stream = rng.random_range(0..3);
                        let ticket = admission.handle_batch(stream, rng.random_range(0..400));
                        let seq = sent_per_stream.entry(stream).or_default();
                        pending.push((ticket, *seq));
                        *seq += 1;
                    }
                    1 if !pending.is_empty() => {
                        let (ticket, seq) = pending.swap_remove(rng.random_range(0..pending.len()));
                        done.insert((ticket.stream, seq));
                        admission.handle_done(ticket, (ticket.stream, seq));
                    }
                    _ => {
                        while let Some((stream, (s, seq))) = admission.poll_answer() {
                            assert_eq!(stream, s, "seed {seed}");
                            assert!(
                                done.contains(&(s, seq)),
                                "seed {seed}: answered before done"
                            );
                            let next = answered_per_stream.entry(s).or_default();
                            assert_eq!(seq, *next, "seed {seed}: out of order");
                            *next += 1;
                            answers += 1;
                        }
                    }
                }
                assert!(admission.batches <= LIMITS.batches, "seed {seed}");
                assert!(admission.bytes < LIMITS.bytes + 400, "seed {seed}");
            }
            for (ticket, seq) in pending.drain(..) {
                admission.handle_done(ticket, (ticket.stream, seq));
            }
            while admission.poll_answer().is_some() {
                answers += 1;
            }
            let admitted: u64 = sent_per_stream.values().sum();
            assert_eq!(answers, admitted, "seed {seed}: every batch answered once");
            assert_eq!(admission.in_flight(), 0);
        }
    }
}
