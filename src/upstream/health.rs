//! Active health checks: probe each backend on an interval (HTTP GET or TCP connect) and take
//! it out or put it back after the configured run of consecutive results. Checks of a TLS
//! upstream go over TLS with its settings.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Pool;
use tokio_rustls::TlsConnector;

use crate::config::{CheckKind, HealthCheck, UpstreamTls};

/// Where the checks get their pools: the running config's, and a signal for each new version.
/// (The running config lives above this module, in `state`.)
pub trait PoolSource: Send + Sync + 'static {
    /// The pools of the running config.
    fn pools(&self) -> Vec<Arc<Pool>>;
    /// Changes with every new config version.
    fn versions(&self) -> watch::Receiver<u64>;
    /// How many check loops run now, for `/stats`.
    fn checks_running(&self, n: usize);
}

/// Runs the active health checks of the running config, restarting them on every reload,
/// until shutdown.
pub struct HealthChecks<S>(pub Arc<S>);

#[async_trait]
impl<S: PoolSource> BackgroundService for HealthChecks<S> {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut versions = self.0.versions();
        loop {
            versions.borrow_and_update();
            // Dropping the set stops the previous config's checks.
            let tasks = spawn_all(self.0.pools().iter());
            self.0.checks_running(tasks.len());
            tokio::select! {
                _ = shutdown.changed() => return,
                changed = versions.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// Starts one check loop per backend of every pool that has checks configured.
/// Dropping the returned set stops them all.
pub fn spawn_all<'a>(pools: impl IntoIterator<Item = &'a Arc<Pool>>) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for pool in pools {
        if pool.health_check.is_none() {
            // A check of the previous config may have marked a backend down after this
            // pool was built; without checks nothing would bring it back.
            for backend in &pool.backends {
                backend.reset_health();
            }
            pool.rebuild();
            continue;
        }
        // Health may have changed while the previous config's checks were stopping.
        pool.rebuild();
        for index in 0..pool.backends.len() {
            tasks.spawn(check_loop(Arc::clone(pool), index));
        }
    }
    tasks
}

/// Checks one backend forever, starting at once.
async fn check_loop(pool: Arc<Pool>, index: usize) {
    let Some(check) = pool.health_check.clone() else {
        return;
    };
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let backend = &pool.backends[index];
        if backend.admin_state() == super::capacity::AdminState::Maint {
            // In maintenance: not checked until the operator sets it ready.
            continue;
        }
        let tls = pool.tls.as_ref().map(|t| (&t.conf, &t.checks));
        let result = probe(backend.addr, &backend.host, &check, tls).await;
        record(&pool, index, &check, result);
    }
}

/// Applies one check result to the backend's consecutive counters and health.
fn record(pool: &Pool, index: usize, check: &HealthCheck, result: Result<(), ProbeError>) {
    let backend = &pool.backends[index];
    if backend.admin_state() == super::capacity::AdminState::Maint {
        // Put in maintenance while this probe ran: its result does not count.
        return;
    }
    match result {
        Ok(()) => {
            backend.check_failures.store(0, Ordering::Relaxed);
            let ok = backend.check_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if !backend.is_healthy()
                && ok >= check.healthy_threshold
                && pool.set_healthy(index, true)
            {
                log::info!(
                    "upstream {} backend {} is healthy again after {ok} successful checks",
                    pool.name,
                    backend.name
                );
            }
        }
        Err(reason) => {
            backend.check_successes.store(0, Ordering::Relaxed);
            let failed = backend.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if backend.is_healthy()
                && failed >= check.unhealthy_threshold
                && pool.set_healthy(index, false)
            {
                log::info!(
                    "upstream {} backend {} is down after {failed} failed checks (last: {reason})",
                    pool.name,
                    backend.name
                );
            }
        }
    }
}

/// Why a probe failed, as the log line says it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("send: {0}")]
    Send(String),
    #[error("read: {0}")]
    Read(String),
    #[error("status line too long")]
    LongStatusLine,
    #[error("connection closed before a status line")]
    Closed,
    #[error("bad status line `{0}`")]
    BadStatusLine(String),
    #[error("status {0}")]
    Status(u16),
}

/// The TLS settings and connector of a TLS upstream's checks.
pub type CheckTls<'a> = (&'a UpstreamTls, &'a TlsConnector);

/// One probe within the check's timeout (over TLS for a TLS upstream, as requests go).
pub async fn probe(
    addr: SocketAddr,
    host: &str,
    check: &HealthCheck,
    tls: Option<CheckTls<'_>>,
) -> Result<(), ProbeError> {
    match tokio::time::timeout(check.timeout, probe_inner(addr, host, &check.kind, tls)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(check.timeout)),
    }
}

async fn probe_inner(
    addr: SocketAddr,
    host: &str,
    kind: &CheckKind,
    tls: Option<CheckTls<'_>>,
) -> Result<(), ProbeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::Connect(e.to_string()))?;
    let (path, expect) = match kind {
        CheckKind::Tcp => return Ok(()),
        CheckKind::Http {
            path,
            expect_status,
        } => (path, *expect_status),
    };
    match tls {
        None => exchange(stream, host, path, expect).await,
        Some((conf, connector)) => {
            let name = super::check_tls::server_name(conf, host, addr);
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(|e| ProbeError::Tls(e.to_string()))?;
            exchange(stream, host, path, expect).await
        }
    }
}

/// Sends the check's GET and judges the status.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    path: &str,
    expect: Option<u16>,
) -> Result<(), ProbeError> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: switchyard-health-check\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| ProbeError::Send(e.to_string()))?;
    let status = read_status(&mut stream).await?;
    let healthy = match expect {
        Some(code) => status == code,
        None => (200..400).contains(&status),
    };
    if healthy {
        Ok(())
    } else {
        Err(ProbeError::Status(status))
    }
}

/// Reads just enough of the response to parse the status line.
async fn read_status<S: AsyncRead + Unpin>(stream: &mut S) -> Result<u16, ProbeError> {
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            return parse_status_line(&buf[..end]);
        }
        if buf.len() > 4096 {
            return Err(ProbeError::LongStatusLine);
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ProbeError::Read(e.to_string()))?;
        if n == 0 {
            return Err(ProbeError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_status_line(line: &[u8]) -> Result<u16, ProbeError> {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| ProbeError::BadStatusLine(line.trim().to_string())),
        _ => Err(ProbeError::BadStatusLine(line.trim().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r"), Ok(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable"),
            Ok(503)
        );
        assert!(parse_status_line(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc").is_err());
        assert!(parse_status_line(b"HTTP/1.1 999 Nope").is_err());
        assert!(parse_status_line(b"").is_err());
    }
}
