//! The one place the writer tells a node's refusals apart. Nodes answer a request they refuse
//! with FAILED_PRECONDITION and a message that names the reason; everything else is an error of
//! the link (a node down, a timeout), retried with back-off.

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

/// Classifies a refusal by its gRPC status.
pub fn classify(status: &tonic::Status) -> Refusal {
    classify_parts(status.code(), status.message())
}

/// [`classify`] on a status already turned into its code and message.
pub fn classify_parts(code: tonic::Code, message: &str) -> Refusal {
    if code != tonic::Code::FailedPrecondition {
        return Refusal::Other;
    }
    if message.contains("stale membership") {
        Refusal::StaleMembership
    } else if message.contains("fenced") {
        Refusal::Fenced
    } else {
        Refusal::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_by_code_and_reason() {
        let refused = |m: &str| classify(&tonic::Status::failed_precondition(m));
        assert_eq!(
            refused("volume v: fenced: request epoch 1 is older"),
            Refusal::Fenced
        );
        assert_eq!(
            refused("segment v/PG 0: stale membership: the request's membership epoch 1"),
            Refusal::StaleMembership
        );
        assert_eq!(refused("segment behind"), Refusal::Other);
        assert_eq!(
            classify(&tonic::Status::unavailable("fenced")),
            Refusal::Other
        );
    }
}
