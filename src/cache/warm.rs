//! Cache warming: the URLs of each route's `cache.warm` list are fetched through Switchyard's
//! own listener (so they are routed, fetched, compressed and stored exactly as a client's
//! request would be), in list order with bounded concurrency, at start, after a reload, when
//! they are no longer stored (a purge, an eviction), when 90% of their freshness has passed, and
//! at least every `every`. A warm request carries a per-process token in [`WARM_HEADER`] that
//! makes the cache revalidate a fresh entry instead of answering from it; the header never
//! reaches an origin. A fetch that fails stores nothing, so it never evicts a stored response.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::key::primary_of as primary;
use super::storage::TieredStorage;
use crate::config::Warm;

/// The request field that marks a warm fetch (with the process's token as its value).
pub const WARM_HEADER: &str = "switchyard-warm";

/// How often the lists are checked for URLs due.
const TICK: Duration = Duration::from_secs(1);

/// How long one warm fetch may take, from connect to the end of the body.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed fetch is tried again after 1 s, then 2 s, 4 s… up to this long (or `every`, when
/// shorter). The first fetches at start may run before the listener accepts.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Where the warmer gets its lists: the running config's routes, its listener, and a signal for
/// each new config version. (The running config lives above this module, in `state`.)
pub trait WarmSource: Send + Sync + 'static {
    /// Every route's warm list, by route label.
    fn warm_lists(&self) -> Vec<(String, Warm)>;
    /// An address of the proxy's own plain-HTTP listener.
    fn listener(&self) -> Option<SocketAddr>;
    /// Changes with every new config version.
    fn versions(&self) -> watch::Receiver<u64>;
}

/// What the warmer knows of one URL, for `/stats`.
#[derive(Debug, Clone, Default)]
struct UrlState {
    route: String,
    url: String,
    last_fetch: Option<SystemTime>,
    last_status: Option<u16>,
    last_error: Option<String>,
    next: Option<Instant>,
    fetches: u64,
    failures: u64,
    /// Failures since the last success.
    failing: u32,
}

/// The warm lists' state and counters, shared with `/stats` and `/metrics`.
#[derive(Debug)]
pub struct WarmStatus {
    /// The token a warm request carries; random per process.
    token: String,
    urls: Mutex<BTreeMap<String, UrlState>>,
    pub fetches: AtomicU64,
    pub failures: AtomicU64,
}

impl Default for WarmStatus {
    fn default() -> WarmStatus {
        WarmStatus {
            token: format!("{:032x}", rand::random::<u128>()),
            urls: Mutex::new(BTreeMap::new()),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }
}

impl WarmStatus {
    /// Whether a request's [`WARM_HEADER`] value is this process's token.
    pub fn is_warm_request(&self, value: &[u8]) -> bool {
        crate::digest::constant_time_eq(value, self.token.as_bytes())
    }

    fn urls(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, UrlState>> {
        self.urls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `warm` part of `/stats`: one entry per URL in the lists.
    pub fn stats(&self) -> Value {
        let now = Instant::now();
        let urls: Vec<Value> = self
            .urls()
            .iter()
            .map(|(key, s)| {
                json!({
                    "route": s.route,
                    "url": s.url,
                    "key": key,
                    "last_fetch": s.last_fetch.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                    "last_status": s.last_status,
                    "last_error": s.last_error,
                    "next_in_seconds": s.next.map(|n| n.saturating_duration_since(now).as_secs()),
                    "fetches": s.fetches,
                    "failures": s.failures,
                })
            })
            .collect();
        json!({
            "fetches": self.fetches.load(Ordering::Relaxed),
            "failures": self.failures.load(Ordering::Relaxed),
            "urls": urls,
        })
    }
}

/// One URL to warm, with what a fetch needs.
#[derive(Debug, Clone)]
struct Target {
    key: String,
    url: String,
    host: String,
    accept_encoding: String,
    every: Duration,
}

/// The background service that keeps the warm lists stored.
pub struct Warmer<S> {
    pub source: Arc<S>,
    pub storage: &'static TieredStorage,
    pub status: Arc<WarmStatus>,
}

#[async_trait]
impl<S: WarmSource> BackgroundService for Warmer<S> {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut versions = self.source.versions();
        loop {
            versions.borrow_and_update();
            let lists = self.source.warm_lists();
            self.reset(&lists);
            loop {
                self.round(&lists).await;
                tokio::select! {
                    _ = shutdown.changed() => return,
                    changed = versions.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                    () = tokio::time::sleep(TICK) => {}
                }
            }
        }
    }
}

impl<S: WarmSource> Warmer<S> {
    /// Keeps the state of URLs still listed (a new config version fetches them all again) and
    /// forgets the others.
    fn reset(&self, lists: &[(String, Warm)]) {
        let mut urls = self.status.urls();
        let mut kept = BTreeMap::new();
        for (route, warm) in lists {
            for url in &warm.urls {
                let key = primary(&warm.host, url);
                let mut state = urls.remove(&key).unwrap_or_default();
                state.route = route.clone();
                state.url = url.clone();
                state.next = None;
                kept.insert(key, state);
            }
        }
        *urls = kept;
    }

    /// Fetches every URL that is due, in list order, at most `concurrency` of a list at once.
    async fn round(&self, lists: &[(String, Warm)]) {
        let Some(listener) = self.source.listener() else {
            return;
        };
        for (_, warm) in lists {
            let due: Vec<Target> = warm
                .urls
                .iter()
                .map(|url| Target {
                    key: primary(&warm.host, url),
                    url: url.clone(),
                    host: warm.host.clone(),
                    accept_encoding: warm.accept_encoding.clone(),
                    every: warm.every,
                })
                .filter(|t| self.is_due(t))
                .collect();
            let mut running = JoinSet::new();
            for target in due {
                while running.len() >= warm.concurrency {
                    if let Some(Ok((target, result))) = running.join_next().await {
                        self.record(&target, result);
                    }
                }
                let token = self.status.token.clone();
                running.spawn(async move {
                    let result = fetch(listener, &target, &token).await;
                    (target, result)
                });
            }
            while let Some(joined) = running.join_next().await {
                if let Ok((target, result)) = joined {
                    self.record(&target, result);
                }
            }
        }
    }

    /// Due when never fetched in this version, no longer stored, past 90% of its freshness,
    /// or `every` after the last fetch.
    fn is_due(&self, target: &Target) -> bool {
        let now = Instant::now();
        let next = self.status.urls().get(&target.key).and_then(|s| s.next);
        let Some(next) = next else {
            return true;
        };
        if now >= next {
            return true;
        }
        let variants = self.storage.memory.variants(&target.key);
        let Some(entry) = variants.first() else {
            // Purged or evicted since: fetch again (a failed fetch waits for `next`).
            return self
                .status
                .urls()
                .get(&target.key)
                .is_some_and(|s| s.last_error.is_none());
        };
        let meta = &entry.meta;
        let lifetime = meta
            .fresh_until()
            .duration_since(meta.updated())
            .unwrap_or_default();
        let refresh_at = meta.updated() + lifetime.mul_f64(0.9);
        !lifetime.is_zero() && SystemTime::now() >= refresh_at
    }

    fn record(&self, target: &Target, result: Result<u16, String>) {
        self.status.fetches.fetch_add(1, Ordering::Relaxed);
        let mut urls = self.status.urls();
        let state = urls.entry(target.key.clone()).or_default();
        state.fetches += 1;
        state.last_fetch = Some(SystemTime::now());
        let ok = matches!(result, Ok(status) if status < 400);
        match result {
            Ok(status) => {
                state.last_status = Some(status);
                state.last_error = None;
            }
            Err(e) => {
                state.last_status = None;
                state.last_error = Some(e);
            }
        }
        state.failing = if ok { 0 } else { state.failing + 1 };
        let retry = Duration::from_secs(1 << state.failing.saturating_sub(1).min(4));
        state.next = Some(
            Instant::now()
                + if ok {
                    target.every
                } else {
                    retry.min(RETRY_AFTER).min(target.every)
                },
        );
        if !ok {
            state.failures += 1;
            self.status.failures.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "warming {} (host {}) failed: {}",
                target.url,
                target.host,
                state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| format!("status {}", state.last_status.unwrap_or(0)))
            );
        }
    }
}

/// One warm request over a new connection to `listener`; the whole answer is read, so the
/// response is stored as it would be for a client. Returns the status.
async fn fetch(listener: SocketAddr, target: &Target, token: &str) -> Result<u16, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(listener)
            .await
            .map_err(|e| format!("connect to {listener}: {e}"))?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: switchyard-warm\r\nAccept-Encoding: {}\r\n{WARM_HEADER}: {token}\r\nConnection: close\r\n\r\n",
            target.url, target.host, target.accept_encoding
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        status_of(&answer)
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no complete answer within {FETCH_TIMEOUT:?}"))?
}

/// The status code of an HTTP/1.1 answer.
fn status_of(answer: &[u8]) -> Result<u16, String> {
    let line_end = answer
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no status line")?;
    let line = String::from_utf8_lossy(&answer[..line_end]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line `{}`", line.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\nx: y\r\n\r\nbody"), Ok(200));
        assert_eq!(status_of(b"HTTP/1.1 503 Busy\r\n\r\n"), Ok(503));
        assert!(status_of(b"").is_err());
        assert!(status_of(b"garbage\n").is_err());
    }

    #[test]
    fn the_token_is_random_and_compared_whole() {
        let a = WarmStatus::default();
        let b = WarmStatus::default();
        assert_ne!(a.token, b.token);
        assert!(a.is_warm_request(a.token.as_bytes()));
        assert!(!a.is_warm_request(b.token.as_bytes()));
        assert!(!a.is_warm_request(&a.token.as_bytes()[..31]));
    }
}
