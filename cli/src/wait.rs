//! `--wait`: processes started in any order. A command that needs nodes which do not answer yet
//! (they are still starting, preparing their hot logs) tries again until they do, for up to
//! `--wait`, saying on stderr how many answer, instead of failing at once.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long commands wait for their nodes by default.
pub const WAIT_DEFAULT: &str = "60s";
/// Time between attempts, and between two progress lines.
const RETRY_EVERY: Duration = Duration::from_millis(500);
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Runs `attempt` until it succeeds, fails with an error `waitable` does not accept, or `wait`
/// has passed (then the last error is returned).
pub async fn retry<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    wait: Duration,
    waitable: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> F,
) -> Result<T, E> {
    let started = Instant::now();
    let mut reported: Option<Instant> = None;
    loop {
        match attempt().await {
            Ok(value) => {
                if reported.is_some() {
                    eprintln!(
                        "sixfold: {what}: the nodes answer (after {:.1} s)",
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(value);
            }
            Err(error) if waitable(&error) && started.elapsed() + RETRY_EVERY < wait => {
                if reported.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
                    reported = Some(Instant::now());
                    eprintln!(
                        "sixfold: {what}: waiting for nodes ({:.0} of {:.0} s): {error}",
                        started.elapsed().as_secs_f64(),
                        wait.as_secs_f64()
                    );
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Err(error) => return Err(error),
        }
    }
}
