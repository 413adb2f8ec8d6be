//! The shared cache tier on Redis: memory → Redis → origin. Redis is never on the critical
//! path: every operation has a deadline (`cache.redis.timeout`), an error or a timeout is a
//! miss, errors are counted and logged at most once per 10 s, and connections come back by
//! themselves. Purges are published on `<key_prefix>purge` so every instance evicts from
//! memory too.
//!
//! Keys: `<prefix>obj:<primary>#<variance>` holds an entry ([`super::blob`]); a set
//! `<prefix>tag:<tag>` lists the keys of the entries with that tag. Purge by tag reads the set;
//! purge by key or prefix uses `SCAN MATCH` on the readable key (no index to keep in step, and a
//! purge is rare next to lookups and stores). Purges are ordered against fills by a purge
//! generation and tombstones: see [`purge`].

mod purge;

pub use purge::SharedPurge;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::purge::PurgeMatch;
use crate::config::RedisTier as RedisConf;
use crate::digest::hex;
use purge::FILL;

/// Marks a cached response that came from the Redis tier (in `CacheMeta` extensions).
#[derive(Debug, Clone, Copy)]
pub struct FromRedis;

/// Operations counted in `switchyard_cache_redis_errors_total{op}`.
pub const OPS: [&str; 6] = ["connect", "get", "set", "purge", "publish", "decode"];

/// Counters for `/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct RedisStats {
    pub connected: AtomicBool,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub errors: [AtomicU64; 6],
    pub purges_published: AtomicU64,
    pub purges_received: AtomicU64,
    /// Fills refused because a purge came after they started.
    pub fills_refused: AtomicU64,
}

impl RedisStats {
    pub fn errors_total(&self) -> u64 {
        self.errors.iter().map(|e| e.load(Ordering::Relaxed)).sum()
    }
}

/// A purge as published to the other instances.
#[derive(Debug, Serialize, Deserialize)]
struct PurgeMessage {
    from: String,
    kind: String,
    value: String,
    /// The purge generation; absent from instances that predate it.
    #[serde(default)]
    generation: u64,
}

/// The Redis tier of one process.
pub struct RedisTier {
    conf: RedisConf,
    client: redis::Client,
    pool: ArcSwapOption<Vec<ConnectionManager>>,
    next: AtomicUsize,
    /// Identifies this process in published purges.
    instance: String,
    /// The newest purge generation this instance knows of: a fill that starts now is ordered
    /// after every purge up to it.
    known_generation: AtomicU64,
    pub stats: RedisStats,
    /// Milliseconds since `started` of the last error logged.
    last_log: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("key_prefix", &self.conf.key_prefix)
            .finish()
    }
}

/// What went wrong talking to Redis (the operation's name goes in the log line beside it).
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("cache.redis.url: {0}")]
    Url(redis::RedisError),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("{0} closed")]
    Closed(&'static str),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl RedisTier {
    /// Prepares the tier; connections are made by [`RedisTier::run`].
    pub fn new(conf: RedisConf) -> Result<RedisTier, RedisError> {
        let client = redis::Client::open(conf.url.as_str()).map_err(RedisError::Url)?;
        Ok(RedisTier {
            conf,
            client,
            pool: ArcSwapOption::empty(),
            next: AtomicUsize::new(0),
            instance: format!("{:016x}", rand::random::<u64>()),
            known_generation: AtomicU64::new(0),
            stats: RedisStats::default(),
            last_log: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    pub fn max_object_size(&self) -> u64 {
        self.conf.max_object_size
    }

    fn error(&self, op: &str, detail: impl std::fmt::Display) {
        if let Some(i) = OPS.iter().position(|o| *o == op) {
            self.stats.errors[i].fetch_add(1, Ordering::Relaxed);
        }
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_log.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 10_000)
            && self
                .last_log
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!("redis cache tier: {op} failed: {detail} (further errors for 10 s are only counted)");
        }
    }

    fn connection(&self) -> Option<ConnectionManager> {
        let pool = self.pool.load();
        let pool = pool.as_ref()?;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % pool.len();
        Some(pool[i].clone())
    }

    /// Runs `cmd` within the deadline; `None` (counted under `op`) on any failure.
    async fn query<T: redis::FromRedisValue>(&self, op: &str, cmd: &redis::Cmd) -> Option<T> {
        let Some(mut conn) = self.connection() else {
            self.error(op, "not connected");
            return None;
        };
        match tokio::time::timeout(self.conf.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.error(op, e);
                None
            }
            Err(_) => {
                self.error(op, format!("no answer within {:?}", self.conf.timeout));
                None
            }
        }
    }

    fn object_key(&self, primary: &str, variance: Option<&[u8; 16]>) -> String {
        let variance = variance.map_or_else(|| "-".to_string(), |v| hex(v));
        format!("{}obj:{primary}#{variance}", self.conf.key_prefix)
    }

    /// The stored value for a key, or `None` (miss, error or timeout).
    pub async fn get(&self, primary: &str, variance: Option<&[u8; 16]>) -> Option<Bytes> {
        let key = self.object_key(primary, variance);
        let value: Option<Vec<u8>> = self.query("get", redis::cmd("GET").arg(&key)).await?;
        match value {
            Some(v) => Some(Bytes::from(v)),
            None => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Counts a value that could not be decoded (it is treated as a miss).
    pub fn corrupt(&self, primary: &str, why: impl std::fmt::Debug) {
        self.error("decode", format!("value for {primary}: {why:?}"));
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn hit(&self) {
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// The purge generation a fill starting now is ordered after (see [`RedisTier::set`]).
    pub fn generation(&self) -> u64 {
        self.known_generation.load(Ordering::Acquire)
    }

    fn learn_generation(&self, generation: u64) {
        self.known_generation
            .fetch_max(generation, Ordering::AcqRel);
    }

    /// Stores a value for `ttl` and indexes its tags, unless a purge newer than `started` (the
    /// generation the fill started at) covers it: one script checks the tombstones and writes,
    /// so a purge either lands before the check or deletes what was written.
    pub async fn set(
        &self,
        primary: &str,
        variance: Option<&[u8; 16]>,
        tags: &[String],
        value: Vec<u8>,
        ttl: Duration,
        started: u64,
    ) {
        let key = self.object_key(primary, variance);
        let ms = ttl.as_millis().max(1) as u64;
        let prefix = &self.conf.key_prefix;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(FILL).arg(3 + 2 * tags.len());
        cmd.arg(&key)
            .arg(purge::key_tombstone(prefix, primary))
            .arg(purge::prefix_tombstones(prefix));
        for tag in tags {
            cmd.arg(purge::tag_tombstone(prefix, tag));
        }
        for tag in tags {
            cmd.arg(format!("{prefix}tag:{tag}"));
        }
        cmd.arg(started.to_string()).arg(value).arg(ms).arg(primary);
        if self.query::<i64>("set", &cmd).await == Some(0) {
            self.stats.fills_refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Keeps the connections up and applies purges published by other instances, forever.
    /// `apply` evicts from this instance's memory tier.
    pub async fn run(self: Arc<Self>, apply: impl Fn(PurgeMatch) + Send + Sync + 'static) {
        loop {
            if self.pool.load().is_none() {
                match self.connect().await {
                    Ok(pool) => {
                        self.pool.store(Some(Arc::new(pool)));
                        log::info!("redis cache tier connected to {}", self.conf.url_redacted());
                    }
                    Err(e) => {
                        self.error("connect", e);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            // Subscribe; when the subscription breaks, try again after a pause.
            match self.subscribe(&apply).await {
                Ok(()) => {}
                Err(e) => self.error("connect", e),
            }
            self.stats.connected.store(false, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn connect(&self) -> Result<Vec<ConnectionManager>, RedisError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.conf.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(self.conf.timeout))
            .set_number_of_retries(1);
        let mut pool = Vec::with_capacity(self.conf.pool_size);
        for _ in 0..self.conf.pool_size {
            let conn = tokio::time::timeout(
                Duration::from_secs(2),
                self.client
                    .get_connection_manager_with_config(config.clone()),
            )
            .await
            .map_err(|_| RedisError::Timeout("connect"))??;
            pool.push(conn);
        }
        Ok(pool)
    }

    async fn subscribe(
        &self,
        apply: &(impl Fn(PurgeMatch) + Send + Sync),
    ) -> Result<(), RedisError> {
        let mut pubsub =
            tokio::time::timeout(Duration::from_secs(2), self.client.get_async_pubsub())
                .await
                .map_err(|_| RedisError::Timeout("subscribe"))??;
        let channel = format!("{}purge", self.conf.key_prefix);
        pubsub.subscribe(&channel).await?;
        self.stats.connected.store(true, Ordering::Relaxed);
        // Subscribed first, so no purge falls between this read and the messages.
        if let Some(generation) = self
            .query::<Option<u64>>(
                "connect",
                redis::cmd("GET").arg(purge::generation_key(&self.conf.key_prefix)),
            )
            .await
        {
            self.learn_generation(generation.unwrap_or(0));
        }
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            let Ok(message) = serde_json::from_str::<PurgeMessage>(&payload) else {
                self.error("decode", format!("purge message `{payload}`"));
                continue;
            };
            self.learn_generation(message.generation);
            if message.from == self.instance {
                continue;
            }
            let target = match message.kind.as_str() {
                "key" => PurgeMatch::Key(message.value),
                "prefix" => PurgeMatch::Prefix(message.value),
                "tag" => PurgeMatch::Tag(message.value),
                "pattern" => PurgeMatch::Pattern(message.value),
                _ => continue,
            };
            self.stats.purges_received.fetch_add(1, Ordering::Relaxed);
            apply(target);
        }
        Err(RedisError::Closed("subscription"))
    }
}
