//! SIGTERM and SIGINT as a future: how `node` and `mount` learn that they should stop.
//!
//! The handlers are installed by [`Signals::install`] at startup, before any work, so a signal
//! that arrives early is not lost (and does not kill the process with its default action).

use anyhow::Context;
use tokio::runtime::Runtime;
use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    pub fn install(runtime: &Runtime) -> anyhow::Result<Signals> {
        let _context = runtime.enter();
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("install the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("install the SIGINT handler")?,
        })
    }

    /// Completes at the first SIGTERM or SIGINT.
    pub async fn recv(mut self) {
        let name = tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        };
        tracing::info!("received {name}");
    }
}
