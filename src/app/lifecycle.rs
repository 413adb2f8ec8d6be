//! The process's end: which signals stop it (and how), and the drain watcher that exits as soon
//! as no request is left once shutdown began.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::{ExecutionPhase, Server, ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

use crate::proxy::frontend::LAST_CALL;
use crate::state::Shared;

/// SIGTERM and SIGINT stop gracefully; SIGQUIT hands the listeners to a new process
/// (`switchyard --upgrade`). A graceful stop first marks the instance not ready (`/ready`
/// answers 503) and keeps serving for `server.shutdown_delay`, so that a load balancer
/// polling `/ready` stops sending before the listeners close.
pub struct Signals(pub Arc<Shared>);

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            log::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM: finishing in-flight requests, then exiting"),
            _ = int.recv() => log::info!("SIGINT: finishing in-flight requests, then exiting"),
            _ = quit.recv() => {
                log::info!("SIGQUIT: handing listeners over for a graceful upgrade");
                return ShutdownSignal::GracefulUpgrade;
            }
        }
        self.0.begin_shutdown();
        let delay = self.0.runtime().config.server.shutdown_delay;
        if !delay.is_zero() {
            log::info!("not ready; closing the listeners in {delay:?}");
            tokio::time::sleep(delay).await;
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// Once shutdown starts (listeners closed), exits as soon as no request is in flight rather than
/// always sleeping the whole grace period. On a graceful upgrade that is after Pingora's close
/// timeout, not when the sockets have been sent: until then this process still accepts and
/// reads requests on its keep-alive connections, and exiting would reset them.
pub fn spawn_drain_watcher(server: &Server, shared: Arc<Shared>, grace: Duration) {
    let mut phases = server.watch_execution_phase();
    std::thread::spawn(move || loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::GracefulTerminate) | Ok(ExecutionPhase::ShutdownStarted) => {
                shared.begin_shutdown();
                let deadline = Instant::now() + grace;
                // Connections waiting for a request get `LAST_CALL` to receive one; a request
                // that arrives then must not meet an exiting process.
                std::thread::sleep((LAST_CALL + Duration::from_millis(50)).min(grace));
                let mut idle_polls = 0;
                while Instant::now() < deadline {
                    idle_polls = if shared.unfinished_requests() == 0 {
                        idle_polls + 1
                    } else {
                        0
                    };
                    if idle_polls >= 3 {
                        log::info!("all requests finished; exiting");
                        std::process::exit(0);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                log::warn!(
                    "grace period over with {} requests still in flight; exiting",
                    shared.unfinished_requests()
                );
                std::process::exit(0);
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    });
}
