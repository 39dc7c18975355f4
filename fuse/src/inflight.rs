//! A bound on FUSE requests in flight, and the means to wait for all of them at unmount.
//!
//! Every request handed to the runtime holds one permit until it replied. When every permit is
//! taken, the session thread that received the next request waits (back-pressure on the kernel),
//! so buffered write data is bounded by `REQUESTS_IN_FLIGHT_MAX * max_write`. At unmount,
//! [`InFlight::drain`] takes all permits: it returns once every request finished, so the final
//! flush covers every write the kernel handed us.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Most requests served at once. With a `max_write` of 1 MiB this bounds buffered write data to
/// 256 MiB; in practice the kernel's own limits (max_background, one request per blocked
/// thread) keep far fewer in flight.
pub const REQUESTS_IN_FLIGHT_MAX: u32 = 256;

/// How often `drain` reports requests that are still running (a flush waiting for quorum).
const DRAIN_REPORT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct InFlight {
    permits: Arc<Semaphore>,
}

impl InFlight {
    pub(crate) fn new() -> Self {
        InFlight {
            permits: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX as usize)),
        }
    }

    /// A permit for one request; waits (blocking the calling session thread, never a runtime
    /// thread) while the bound is reached. `None` once the filesystem is shutting down.
    pub(crate) fn acquire(&self, runtime: &Handle) -> Option<OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(TryAcquireError::Closed) => None,
            Err(TryAcquireError::NoPermits) => {
                tracing::debug!(
                    "{REQUESTS_IN_FLIGHT_MAX} requests in flight; waiting for one to finish"
                );
                runtime.block_on(self.permits.clone().acquire_owned()).ok()
            }
        }
    }

    /// Waits until no request is in flight, then refuses new ones.
    pub(crate) async fn drain(&self) {
        let all = self.permits.acquire_many(REQUESTS_IN_FLIGHT_MAX);
        tokio::pin!(all);
        loop {
            match tokio::time::timeout(DRAIN_REPORT_INTERVAL, &mut all).await {
                Ok(Ok(permits)) => {
                    permits.forget();
                    break;
                }
                Ok(Err(_closed)) => break,
                Err(_elapsed) => tracing::warn!(
                    "unmount still waits for requests in flight (a flush waiting for write quorum?)"
                ),
            }
        }
        self.permits.close();
    }
}
