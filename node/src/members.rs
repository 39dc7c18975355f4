//! What a segment does with the memberships requests carry: pure rules, applied by the
//! appender (the one thread that changes durable state) and the service.
//!
//! - A request whose membership is older than the segment's is refused (a writer or peer on an
//!   old member list must not count or serve as if it were current); the writer re-reads the
//!   PG's membership and goes on ([`StoreError::StaleMembership`]).
//! - One of the same epoch with other members is refused too (a rival step that lost).
//! - A newer one is served: the segment missed a step (it was away); the PG's driver catches
//!   it up (it pushes the established membership to the nodes that lag, every pass).
//! - A segment adopts a membership durably from a repair driver ([`adopt_change`]: one step
//!   from its base, [`Membership::decide_adopt`]; a catch-up with an established membership;
//!   or a supersede of a rival proved lost, [`Membership::decide_supersede`]), or from a
//!   writer when newer ([`adopt_from_writer`]: its OpenSegment, SegmentState seal and
//!   Appends): a writer's membership comes from the volume metadata, which records only
//!   established steps.
//! - Collision recovery ([`sixfold_proto::collision`]): a segment promises a driver's round
//!   ([`promise`]) and then takes no fast-round step or supersede for that epoch; it takes a
//!   round's accept ([`ChangeMode::Accept`]) unless it promised a later round. Its state
//!   ([`HeldMembership`]: membership, base, the round it accepted it in, its promise) is
//!   hardened whole in each membership frame before it is answered; replay keeps the last.

use sixfold_proto::collision::{self, Ballot, Held, Promise};
use sixfold_proto::membership::{Membership, MembershipError};
use sixfold_proto::wire;
use sixfold_proto::MembershipEpoch;

use crate::error::StoreError;
use crate::index::SegmentKey;

/// A segment's durable membership state: what membership frames and the checkpoint hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldMembership {
    pub current: Membership,
    /// The membership `current` was a step from (None: a writer's, from the metadata).
    pub base: Option<Membership>,
    /// The collision-recovery round `current` was accepted in ([`Ballot::FAST`]: a step).
    pub accepted: Ballot,
    /// The highest collision-recovery round promised ([`sixfold_proto::collision`]).
    pub promise: Option<Promise>,
}

impl HeldMembership {
    /// A membership a writer brought (from the volume metadata: established). It names no
    /// promise; the segment keeps the one it holds ([`crate::index::SegmentSlot::keep_membership`]).
    pub fn from_writer(current: Membership) -> HeldMembership {
        HeldMembership {
            current,
            base: None,
            accepted: Ballot::LEARNED,
            promise: None,
        }
    }

    pub fn to_wire(&self) -> wire::MembershipStep {
        let promise = self.promise.filter(|p| p.ballot != Ballot::FAST);
        wire::MembershipStep {
            base: self.base.as_ref().map(Membership::to_wire),
            current: Some(self.current.to_wire()),
            // Without a base, an absent ballot reads back as learned (frames from before
            // collision recovery): a fast-round acceptance (a catch-up that named its own base)
            // is written out, or a restart would turn it into a learned one.
            accepted: match (self.base.is_none(), self.accepted) {
                (true, Ballot::FAST) => Some(sixfold_proto::wire::Ballot::default()),
                (_, accepted) => accepted.to_wire(),
            },
            promised_epoch: promise.map_or(0, |p| p.epoch.0),
            promised: promise.and_then(|p| p.ballot.to_wire()),
        }
    }

    /// The state from its wire form (a frame, the checkpoint), checked.
    pub fn from_wire(step: &wire::MembershipStep) -> Result<HeldMembership, MembershipError> {
        let current =
            Membership::from_wire(step.current.as_ref().ok_or(MembershipError::NotAStep)?)?;
        let base = step.base.as_ref().map(Membership::from_wire).transpose()?;
        // A promise of the fast round is no promise (to_wire never writes one; none is made).
        let promise = (step.promised_epoch != 0)
            .then(|| Promise {
                epoch: MembershipEpoch(step.promised_epoch),
                ballot: Ballot::from_wire(step.promised.as_ref()),
            })
            .filter(|p| p.ballot != Ballot::FAST);
        Ok(HeldMembership {
            current,
            base,
            // Frames written before collision recovery existed carry none: a step, or (no
            // base) a writer's.
            accepted: match (&step.accepted, &step.base) {
                (None, None) => Ballot::LEARNED,
                (accepted, _) => Ballot::from_wire(accepted.as_ref()),
            },
            promise,
        })
    }
}

/// Whether a request carrying `request` may be served by a segment holding `held`.
pub fn check(
    key: &SegmentKey,
    held: Option<&Membership>,
    request: Option<&Membership>,
) -> Result<(), StoreError> {
    let (Some(held), Some(request)) = (held, request) else {
        return Ok(());
    };
    if request.epoch < held.epoch {
        return Err(StoreError::StaleMembership {
            volume: key.volume.clone(),
            pg: key.pg.0,
            request: request.epoch.0,
            held: held.epoch.0,
        });
    }
    if request.epoch == held.epoch && request != held {
        return Err(StoreError::Conflict(format!(
            "segment {key}: {} is held here with other members ({held}); the request's \
             ({request}) is a rival step that lost",
            held.epoch
        )));
    }
    Ok(())
}

/// What a repair driver's ChangeMembership is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeMode {
    /// One step from `base` ([`Membership::decide_adopt`]), in the fast round.
    Step,
    /// Not a step: the driver vouches that `proposed` is established (a write quorum of its
    /// base holds it in this round) and brings a segment that lags up to it, in that round.
    CatchUp(Ballot),
    /// A step from `base` that replaces this rival of its epoch, which its driver proved can
    /// never be established ([`Membership::decide_supersede`]), in the fast round.
    Supersede(Membership),
    /// A collision-recovery round's accept ([`collision::decide_accept`]).
    Accept(Ballot),
}

/// The membership state a segment holding `held` moves to when a repair driver sends it
/// `proposed` with `base` (None: nothing changes, it holds `proposed` already), or a refusal.
pub fn adopt_change(
    held: Option<&HeldMembership>,
    base: &Membership,
    proposed: &Membership,
    mode: &ChangeMode,
) -> Result<Option<HeldMembership>, MembershipError> {
    let current = held.map(|h| &h.current);
    let promise = held.and_then(|h| h.promise);
    // A catch-up may name the membership as its own base: store none (it is established,
    // like a writer's), else its driver would wait for a step from itself to itself.
    let stored_base = (base != proposed).then(|| base.clone());
    let next = |accepted: Ballot, promise: Option<Promise>| HeldMembership {
        current: proposed.clone(),
        base: stored_base.clone(),
        accepted,
        promise,
    };
    match mode {
        // Adopted over an older one, and over a rival of its epoch (a step that lost).
        ChangeMode::CatchUp(ballot) => Ok((current != Some(proposed)
            && current.is_none_or(|c| proposed.epoch >= c.epoch))
        .then(|| next(*ballot, promise))),
        ChangeMode::Step => {
            if current == Some(proposed) {
                return Ok(None);
            }
            collision::check_fast(promise, proposed.epoch)?;
            Ok(Membership::decide_adopt(current, base, proposed)?
                .then(|| next(Ballot::FAST, promise)))
        }
        ChangeMode::Supersede(superseded) => {
            if current == Some(proposed) {
                return Ok(None);
            }
            collision::check_fast(promise, proposed.epoch)?;
            // The supersede's proof is about the fast round ("holders only move up"): a
            // membership taken in a classic round (or learned) is never given up by one.
            if held.is_some_and(|h| h.accepted != Ballot::FAST) {
                return Err(MembershipError::NotSuperseded);
            }
            Ok(
                Membership::decide_supersede(current, base, proposed, superseded)?
                    .then(|| next(Ballot::FAST, promise)),
            )
        }
        ChangeMode::Accept(ballot) => {
            let view = Held {
                membership: current,
                accepted: held.map_or(Ballot::FAST, |h| h.accepted),
                promise,
            };
            let round = Promise {
                epoch: proposed.epoch,
                ballot: *ballot,
            };
            Ok(collision::decide_accept(view, base, proposed, *ballot)?
                .then(|| next(*ballot, Promise::highest(promise, Some(round)))))
        }
    }
}

/// The membership state a segment holding `held` moves to when a collision-recovery round
/// `ballot` from `base` asks its promise, and its vote ([`collision::decide_promise`]).
pub fn promise(
    held: Option<&HeldMembership>,
    base: &Membership,
    ballot: Ballot,
) -> Result<(HeldMembership, collision::Vote), MembershipError> {
    let held = held.ok_or(MembershipError::NoMembership)?;
    let view = Held {
        membership: Some(&held.current),
        accepted: held.accepted,
        promise: held.promise,
    };
    let (promise, vote) = collision::decide_promise(view, base, ballot)?;
    Ok((
        HeldMembership {
            promise: Promise::highest(held.promise, Some(promise)),
            ..held.clone()
        },
        vote,
    ))
}

/// Whether a writer's OpenSegment membership is to be adopted: the segment holds none or an
/// older one. (Refusals are [`check`]'s.)
pub fn adopt_from_writer(held: Option<&Membership>, request: &Membership) -> bool {
    held.is_none_or(|held| request.epoch > held.epoch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sixfold_proto::{NodeId, PgId};

    fn key() -> SegmentKey {
        SegmentKey {
            volume: "v".into(),
            pg: PgId(0),
        }
    }

    #[test]
    fn older_and_rival_memberships_are_refused() {
        let base = Membership::new((1..=6).map(NodeId).collect()).expect("valid");
        let begun = base.begin(NodeId(6), NodeId(7)).expect("begin");
        let rival = base.begin(NodeId(6), NodeId(8)).expect("rival");
        assert!(check(&key(), Some(&begun), Some(&begun)).is_ok());
        assert!(
            check(&key(), Some(&base), Some(&begun)).is_ok(),
            "a newer one is served"
        );
        assert!(check(&key(), None, Some(&begun)).is_ok());
        assert!(check(&key(), Some(&begun), None).is_ok(), "not checked");
        assert!(matches!(
            check(&key(), Some(&begun), Some(&base)),
            Err(StoreError::StaleMembership {
                request: 1,
                held: 2,
                ..
            })
        ));
        assert!(matches!(
            check(&key(), Some(&begun), Some(&rival)),
            Err(StoreError::Conflict(_))
        ));
        assert!(adopt_from_writer(None, &base));
        assert!(adopt_from_writer(Some(&base), &begun));
        assert!(!adopt_from_writer(Some(&begun), &begun));
    }
}
