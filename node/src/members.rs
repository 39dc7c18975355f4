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

use sixfold_proto::membership::{Membership, MembershipError};

use crate::error::StoreError;
use crate::index::SegmentKey;

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
    /// One step from `base` ([`Membership::decide_adopt`]).
    Step,
    /// Not a step: the driver vouches that `proposed` is established (a write quorum of its
    /// base holds it) and brings a segment that lags up to it.
    CatchUp,
    /// A step from `base` that replaces this rival of its epoch, which its driver proved can
    /// never be established ([`Membership::decide_supersede`]).
    Supersede(Membership),
}

/// Whether a segment holding `held` adopts `proposed`, sent by a repair driver with `base`.
/// `Ok(false)`: held already (only the peers and the catch-up target are news).
pub fn adopt_change(
    held: Option<&Membership>,
    base: &Membership,
    proposed: &Membership,
    mode: &ChangeMode,
) -> Result<bool, MembershipError> {
    if held == Some(proposed) {
        return Ok(false);
    }
    match mode {
        // Adopted over an older one, and over a rival of its epoch (a step that lost).
        ChangeMode::CatchUp => Ok(held.is_none_or(|held| proposed.epoch >= held.epoch)),
        ChangeMode::Step => Membership::decide_adopt(held, base, proposed),
        ChangeMode::Supersede(superseded) => {
            Membership::decide_supersede(held, base, proposed, superseded)
        }
    }
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
