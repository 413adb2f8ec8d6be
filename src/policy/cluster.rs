//! Cluster rate limits: one GCRA budget per route and key, kept in Redis and shared by every
//! instance. A check is one `EVALSHA` of [`GCRA`] (loaded once per connection, sent again with
//! `EVAL` when the server answers `NOSCRIPT`). When Redis is slow (past
//! `rate_limits.redis.timeout`), down or not connected yet, the instance's own limiter answers
//! instead (fail open to the local budget); each such check is counted in [`STATS`] and
//! logged at most once per 10 s.
//!
//! Keys: `<key_prefix><route label>:<key hash>` holds the theoretical arrival time in
//! microseconds of Redis's own clock, so instances need no synchronised clocks; it expires when
//! the budget is full again (the GCRA horizon, at most `burst` periods).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;

use super::rate::{Limiter, Wait};
use crate::config::ClusterRedis;

/// GCRA in one step. KEYS: the counter. ARGV: the period (µs between two requests at the
/// steady rate, may be fractional), the burst. Returns 0 when the request is admitted (and
/// counted), else the wait in µs until it would be.
pub const GCRA: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allowed_at = tat - period * (burst - 1)
if now < allowed_at then
  return math.max(1, math.ceil(allowed_at - now))
end
local next = tat + period
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.max(1, math.ceil((next - now) / 1000)))
return 0
";

/// Process-wide counters of cluster checks, for `/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Checks Redis answered.
    pub checks: AtomicU64,
    /// Checks the local limiter answered because Redis did not.
    pub fallbacks: AtomicU64,
    /// Whether a connection to Redis is up.
    pub connected: AtomicBool,
}

pub static STATS: ClusterStats = ClusterStats {
    checks: AtomicU64::new(0),
    fallbacks: AtomicU64::new(0),
    connected: AtomicBool::new(false),
};

/// Why Redis did not answer a check.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("not connected to {0}")]
    NotConnected(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// A connection and the SHA1 of [`GCRA`] as loaded on its server.
struct Connection {
    conn: ConnectionManager,
    sha: String,
}

/// The Redis side of every cluster-scoped limit of one config version (carried over by a
/// reload that keeps `rate_limits.redis`).
pub struct ClusterLimiter {
    conf: ClusterRedis,
    client: redis::Client,
    connection: ArcSwapOption<Connection>,
    connecting: AtomicBool,
    started: Instant,
    /// Milliseconds after `started` of the last connection attempt.
    last_attempt: AtomicU64,
    /// Milliseconds after `started` of the last failure logged (0: none yet).
    last_log: AtomicU64,
}

impl std::fmt::Debug for ClusterLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLimiter")
            .field("key_prefix", &self.conf.key_prefix)
            .finish()
    }
}

/// How often a lost or never made connection is tried again.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

impl ClusterLimiter {
    /// Prepares the limiter; the first check starts connecting. `None` for a URL the client
    /// refuses (validated at load, so not expected).
    pub fn new(conf: &ClusterRedis) -> Option<ClusterLimiter> {
        let client = redis::Client::open(conf.url.as_str()).ok()?;
        Some(ClusterLimiter {
            conf: conf.clone(),
            client,
            connection: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            started: Instant::now(),
            last_attempt: AtomicU64::new(0),
            last_log: AtomicU64::new(0),
        })
    }

    pub fn conf(&self) -> &ClusterRedis {
        &self.conf
    }

    /// Takes one request from `key`'s shared budget on the route labelled `route`; the local
    /// limiter answers when Redis does not.
    pub async fn check(
        self: &Arc<Self>,
        local: &Limiter,
        route: &str,
        key: u64,
    ) -> Result<(), Wait> {
        let result = self.remote(local, route, key).await;
        let up = result.is_ok();
        if STATS.connected.load(Ordering::Relaxed) != up {
            STATS.connected.store(up, Ordering::Relaxed);
        }
        match result {
            Ok(verdict) => {
                STATS.checks.fetch_add(1, Ordering::Relaxed);
                verdict
            }
            Err(e) => {
                STATS.fallbacks.fetch_add(1, Ordering::Relaxed);
                self.log(&e);
                local.check(key)
            }
        }
    }

    async fn remote(
        self: &Arc<Self>,
        local: &Limiter,
        route: &str,
        key: u64,
    ) -> Result<Result<(), Wait>, ClusterError> {
        let Some(connection) = self.connection.load_full() else {
            self.connect_soon();
            return Err(ClusterError::NotConnected(self.url_redacted()));
        };
        let limit = local.limit();
        let counter = format!("{}{route}:{key:016x}", self.conf.key_prefix);
        let period = limit.period().as_nanos() as f64 / 1000.0;
        let mut conn = connection.conn.clone();
        let run = async {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&connection.sha)
                .arg(1)
                .arg(&counter)
                .arg(period)
                .arg(limit.burst);
            match cmd.query_async::<i64>(&mut conn).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    // The server restarted or flushed its scripts: EVAL loads it again.
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(GCRA)
                        .arg(1)
                        .arg(&counter)
                        .arg(period)
                        .arg(limit.burst);
                    cmd.query_async::<i64>(&mut conn).await
                }
                other => other,
            }
        };
        let wait = tokio::time::timeout(self.conf.timeout, run)
            .await
            .map_err(|_| ClusterError::Timeout(self.conf.timeout))??;
        Ok(match u64::try_from(wait) {
            Ok(0) | Err(_) => Ok(()),
            Ok(us) => Err(Wait(Duration::from_micros(us))),
        })
    }

    /// Starts connecting in the background, unless a connection is being made or was tried
    /// less than [`RECONNECT_EVERY`] ago.
    fn connect_soon(self: &Arc<Self>) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_attempt.load(Ordering::Relaxed);
        if (last != 0 && now.saturating_sub(last) < RECONNECT_EVERY.as_millis() as u64)
            || self.connecting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.last_attempt.store(now.max(1), Ordering::Relaxed);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.connecting.store(false, Ordering::Release);
            return;
        };
        let this = Arc::clone(self);
        runtime.spawn(async move {
            match this.connect().await {
                Ok(connection) => {
                    this.connection.store(Some(Arc::new(connection)));
                    STATS.connected.store(true, Ordering::Relaxed);
                    log::info!("cluster rate limits connected to {}", this.url_redacted());
                }
                Err(e) => this.log(&e),
            }
            this.connecting.store(false, Ordering::Release);
        });
    }

    async fn connect(&self) -> Result<Connection, ClusterError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.conf.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(self.conf.timeout))
            .set_number_of_retries(1);
        let deadline = Duration::from_secs(2);
        let mut conn = tokio::time::timeout(
            deadline,
            self.client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| ClusterError::Timeout(deadline))??;
        let sha = tokio::time::timeout(
            deadline,
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(GCRA)
                .query_async::<String>(&mut conn),
        )
        .await
        .map_err(|_| ClusterError::Timeout(deadline))??;
        Ok(Connection { conn, sha })
    }

    fn log(&self, e: &ClusterError) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_log.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 10_000)
            && self
                .last_log
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!(
                "cluster rate limits: {e}; the local limiters answer (further failures for 10 s are only counted)"
            );
        }
    }

    fn url_redacted(&self) -> String {
        let url = &self.conf.url;
        match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &url[..scheme], &url[at + 1..])
            }
            _ => url.clone(),
        }
    }
}
