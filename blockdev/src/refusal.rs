//! The one place the writer tells a node's refusals apart. A node answers a request it refuses
//! with a gRPC status whose details carry a [`RefusalDetail`] (its reason as a code); the writer
//! decides by that code, never by the message, which is for people. Everything else (no
//! detail: a link error, a timeout, a proxy) is an error of the link, retried with back-off.

use prost::Message as _;
use sixfold_proto::wire::{RefusalDetail, RefusalReason};

/// Why a node refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A newer writer opened the volume: this writer may never write again.
    Fenced,
    /// The PG's membership changed: read it again and follow it.
    StaleMembership,
    /// Anything else (a link error, a segment behind, a full disk...).
    Other,
}

/// Classifies a refusal by the reason in its status's details.
pub fn classify(status: &tonic::Status) -> Refusal {
    let reason = RefusalDetail::decode(status.details())
        .ok()
        .and_then(|detail| RefusalReason::try_from(detail.reason).ok());
    match reason {
        Some(RefusalReason::RefusalFenced) => Refusal::Fenced,
        Some(RefusalReason::RefusalStaleMembership) => Refusal::StaleMembership,
        _ => Refusal::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(reason: RefusalReason, message: &str) -> tonic::Status {
        let detail = RefusalDetail {
            reason: reason as i32,
        };
        tonic::Status::with_details(
            tonic::Code::FailedPrecondition,
            message,
            detail.encode_to_vec().into(),
        )
    }

    #[test]
    fn refusals_by_their_structured_reason_never_by_text() {
        assert_eq!(
            classify(&refused(RefusalReason::RefusalFenced, "epoch 1 is older")),
            Refusal::Fenced
        );
        assert_eq!(
            classify(&refused(RefusalReason::RefusalStaleMembership, "")),
            Refusal::StaleMembership
        );
        assert_eq!(
            classify(&refused(RefusalReason::RefusalBehind, "fenced")),
            Refusal::Other
        );
        // A message that says "fenced" without the detail (a proxy, a link error) is not one.
        assert_eq!(
            classify(&tonic::Status::failed_precondition("volume v: fenced")),
            Refusal::Other
        );
        assert_eq!(
            classify(&tonic::Status::with_details(
                tonic::Code::FailedPrecondition,
                "garbage detail",
                vec![0xff, 0xff, 0xff].into()
            )),
            Refusal::Other
        );
    }
}
