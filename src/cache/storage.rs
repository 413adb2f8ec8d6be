//! The cache's Pingora `Storage`: the memory tier in front of the optional shared Redis tier,
//! composed here so that neither tier knows the other. A lookup tries memory, then Redis (a
//! Redis hit is copied into memory); a fill is stored in memory and then shared to Redis.
//!
//! A body is buffered by its miss handler and stored only when the response finished, so a
//! partial write of an aborted response is never served.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_cache::key::{CacheHashKey, CacheKey, HashBinary};
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheMeta;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_error::{Error, ErrorType, Result};

use super::blob;
use super::memory::{Entry, MemoryTier};
use super::meta::{clone_meta, stored_meta};
use super::purge::PurgeMatch;
use super::redis::{FromRedis, RedisTier};
use crate::etag;

/// Where the purge orders stood when a request started: a fill for it is not stored when a
/// purge since then covers it. Carried in the `CacheMeta` extensions from the response filter
/// to the miss handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillStart {
    /// This instance's purge sequence.
    seq: u64,
    /// The Redis tier's purge generation.
    generation: u64,
}

/// The two tiers. Lives for the whole process (`Storage` needs `'static`).
#[derive(Debug)]
pub struct TieredStorage {
    pub memory: MemoryTier,
    /// The shared tier behind memory, when configured.
    pub redis: Option<Arc<RedisTier>>,
}

impl TieredStorage {
    /// Leaks a storage for the rest of the process: a memory tier bounded to `max_bytes`,
    /// storing objects of up to `max_object_size` bytes, in front of an optional Redis tier.
    pub fn leak(
        max_bytes: u64,
        max_object_size: u64,
        redis: Option<Arc<RedisTier>>,
    ) -> &'static TieredStorage {
        Box::leak(Box::new(TieredStorage {
            memory: MemoryTier::new(max_bytes, max_object_size),
            redis,
        }))
    }

    /// Removes every entry `target` matches from the memory tier; returns how many. (The
    /// Redis tier is purged by [`super::redis::SharedPurge`], which reaches every instance.)
    pub fn purge_local(&self, target: PurgeMatch) -> usize {
        self.memory.purge(target)
    }

    /// The purge orders as they stand now, for a request that may fill.
    pub fn fill_start(&self) -> FillStart {
        FillStart {
            seq: self.memory.purge_seq(),
            generation: self.redis.as_ref().map_or(0, |r| r.generation()),
        }
    }

    /// Copies an entry to the Redis tier in the background, for as long as it may be used
    /// (freshness plus the longer stale window), unless a purge after `started` covers it.
    fn share(&self, entry: &Entry, variance: Option<HashBinary>, started: u64) {
        let Some(redis) = self.redis.clone() else {
            return;
        };
        if entry.body.len() as u64 > redis.max_object_size() {
            return;
        }
        let meta = &entry.meta;
        let fresh = meta
            .fresh_until()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let windows = meta
            .stale_while_revalidate_sec()
            .max(meta.stale_if_error_sec());
        let ttl = fresh + Duration::from_secs(windows.into());
        if ttl.is_zero() {
            return;
        }
        let Some(value) = blob::encode(&entry.primary, &entry.tags, meta, &entry.body) else {
            return;
        };
        let primary = entry.primary.to_string();
        let tags = entry.tags.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                redis
                    .set(&primary, variance.as_ref(), &tags, value, ttl, started)
                    .await;
            });
        }
    }

    /// Looks a key up in the Redis tier; a hit is copied into memory.
    async fn lookup_shared(&self, key: &CacheKey) -> Option<(CacheMeta, HitHandler)> {
        let redis = self.redis.as_ref()?;
        let primary = key.primary_key_str()?;
        let started = self.memory.purge_seq();
        let data = redis.get(primary, key.get_variance_key()).await?;
        let decoded = match blob::decode(&data) {
            Ok(b) if b.primary == primary => b,
            Ok(_) => {
                redis.corrupt(primary, "stored under another key");
                return None;
            }
            Err(e) => {
                redis.corrupt(primary, e);
                return None;
            }
        };
        redis.hit();
        let mut meta = clone_meta(&decoded.meta);
        meta.extensions_mut().insert(FromRedis);
        let hit = Hit {
            body: decoded.body.clone(),
            done: false,
            range: None,
        };
        let entry = Entry::new(
            key.combined_bin(),
            Arc::from(decoded.primary.as_str()),
            stored_meta(&decoded.meta),
            decoded.body,
        );
        self.memory.insert(entry, started);
        Some((meta, Box::new(hit)))
    }
}

#[async_trait]
impl Storage for TieredStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(entry) = self.memory.get(&key.combined_bin()) else {
            return Ok(self.lookup_shared(key).await);
        };
        let hit = Hit {
            body: entry.body.clone(),
            done: false,
            range: None,
        };
        Ok(Some((clone_meta(&entry.meta), Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let primary: Arc<str> = key
            .primary_key_str()
            .map(Arc::from)
            .unwrap_or_else(|| Arc::from(""));
        let started = meta
            .extensions()
            .get::<FillStart>()
            .copied()
            .unwrap_or_else(|| self.fill_start());
        Ok(Box::new(Miss {
            storage: self,
            key: key.combined_bin(),
            variance: key.get_variance_key().copied(),
            primary,
            body: BytesMut::with_capacity(expected_len(meta, self.memory.max_object_size())),
            meta: stored_meta(meta),
            too_large: false,
            started,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key().combined_bin();
        if self.memory.remove_key(&key) {
            Ok(PurgeOutcome::Purged(None))
        } else {
            Ok(PurgeOutcome::NotFound)
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let key_variance = key.get_variance_key().copied();
        let key = key.combined_bin();
        let started = self.fill_start();
        let Some(old) = self.memory.get(&key) else {
            return Ok(false);
        };
        let mut meta = stored_meta(meta);
        etag::keep_generated(&old.meta, &mut meta);
        let entry = Entry::new(key, old.primary.clone(), meta, old.body.clone());
        match self.memory.insert(entry, started.seq) {
            Some(stored) => {
                self.share(&stored, key_variance, started.generation);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Keeps the Redis tier connected and applies purges other instances publish to the memory
/// tier, until shutdown.
pub struct SharedTier(pub &'static TieredStorage);

#[async_trait]
impl BackgroundService for SharedTier {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(redis) = self.0.redis.clone() else {
            return;
        };
        let storage = self.0;
        let apply = move |target| {
            let n = storage.purge_local(target);
            log::debug!("purge from another instance removed {n} entries");
        };
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = redis.run(apply) => {}
        }
    }
}

/// Reads a stored body (whole, or the part a range asked for).
struct Hit {
    body: Bytes,
    done: bool,
    range: Option<(usize, usize)>,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(match self.range {
            Some((start, end)) => self.body.slice(start..end),
            None => self.body.clone(),
        }))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        let end = end.unwrap_or(len).min(len);
        if start > end {
            return Error::e_explain(ErrorType::InternalError, "seek past the end of the body");
        }
        self.range = Some((start, end));
        self.done = false;
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// The body length `meta` announces, when it is one the cache would store.
fn expected_len(meta: &CacheMeta, max_object_size: usize) -> usize {
    meta.headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&len| len <= max_object_size)
        .unwrap_or(0)
}

/// Buffers a body being fetched; stores it when the response finished.
struct Miss {
    storage: &'static TieredStorage,
    key: HashBinary,
    variance: Option<HashBinary>,
    primary: Arc<str>,
    meta: CacheMeta,
    body: BytesMut,
    too_large: bool,
    started: FillStart,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.too_large || self.body.len() + data.len() > self.storage.memory.max_object_size() {
            self.too_large = true;
            self.body = BytesMut::new();
            return Ok(());
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        if self.too_large {
            return Ok(MissFinishType::Created(0));
        }
        // A body that grew in chunks has spare capacity (up to half its allocation): stored
        // bodies hold exactly their length, so that `max_size` bounds real memory.
        let body = if self.body.capacity() > self.body.len() {
            Bytes::copy_from_slice(&self.body)
        } else {
            self.body.freeze()
        };
        let mut meta = self.meta;
        etag::attach_generated(&mut meta, &body);
        // RFC 9110 §6.6.1: a cache stores a response without `Date` with the time it received
        // it, which hits then carry (see `proxy/hit.rs`).
        if !meta.headers().contains_key(http::header::DATE) {
            let received = httpdate::fmt_http_date(meta.created());
            let _ = meta
                .response_header_mut()
                .insert_header(http::header::DATE, received);
        }
        let entry = Entry::new(self.key, self.primary, meta, body);
        let size = entry.size;
        if let Some(stored) = self.storage.memory.insert(entry, self.started.seq) {
            self.storage
                .share(&stored, self.variance, self.started.generation);
        }
        Ok(MissFinishType::Created(size))
    }
}

#[cfg(test)]
mod tests;
