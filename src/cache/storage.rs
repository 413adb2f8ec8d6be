//! The memory tier: Pingora's `Storage` on TinyUFO (S3-FIFO eviction, every store admitted),
//! bounded in bytes, with an index by primary key and tag for purges.
//!
//! Lookups touch only the TinyUFO map (lock free). Inserts, evictions and purges keep the
//! index under one mutex. A body is buffered by its miss handler and stored only when the
//! response finished, so a partial write of an aborted response is never served.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use pingora_cache::key::{CacheHashKey, CacheKey, HashBinary};
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheMeta;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use tinyufo::TinyUfo;

use super::blob;
pub use super::purge::PurgeMatch;
use super::redis::{FromRedis, RedisTier};
use crate::etag;

/// Bytes an entry is charged for besides its body and header fields: its metadata, the header
/// map, the eviction and purge indexes. With `PER_FIELD` and `LARGE_BODY_PAD`, measured so that
/// the process's resident memory grows by about what is charged (1 KiB and 16 KiB objects with
/// nginx's nine header fields: 3.5 KiB and 22 KiB each).
const ENTRY_OVERHEAD: usize = 1536;

/// Bytes charged per header field besides its name and value.
const PER_FIELD: usize = 96;

/// The allocator places a large body (16 KiB and up) at a random offset within one extra page.
const LARGE_BODY_PAD: usize = 4096;
const LARGE_BODY: usize = 16 << 10;

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

/// One stored response.
#[derive(Debug)]
struct Entry {
    key: HashBinary,
    primary: Arc<str>,
    tags: Vec<String>,
    meta: CacheMeta,
    body: Bytes,
    /// Bytes charged (body, header fields, overhead).
    size: usize,
}

impl Entry {
    /// An entry with its tags and charge derived from `meta` and `body`.
    fn new(key: HashBinary, primary: Arc<str>, meta: CacheMeta, body: Bytes) -> Entry {
        Entry {
            key,
            primary,
            tags: tags_of(&meta),
            size: MemoryStorage::size_of(&meta, body.len()),
            meta,
            body,
        }
    }
}

#[derive(Debug, Default)]
struct Index {
    by_key: HashMap<HashBinary, (Arc<str>, Vec<String>, usize)>,
    by_primary: BTreeMap<Arc<str>, HashSet<HashBinary>>,
    by_tag: HashMap<String, HashSet<HashBinary>>,
    /// Recent purges with their sequence numbers, for fills that started before them.
    recent_purges: VecDeque<(u64, PurgeMatch)>,
}

/// Counters for `/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct StorageStats {
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
    pub evictions: AtomicU64,
}

/// The memory cache storage. Lives for the whole process (`Storage` needs `'static`).
pub struct MemoryStorage {
    map: TinyUfo<HashBinary, Arc<Entry>>,
    /// Bytes per unit of TinyUFO weight (its weights are 16-bit).
    unit: usize,
    max_bytes: u64,
    max_object_size: usize,
    index: Mutex<Index>,
    purge_seq: AtomicU64,
    pub stats: StorageStats,
    /// The shared tier behind this one, when configured.
    pub redis: Option<Arc<RedisTier>>,
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStorage")
            .field("max_bytes", &self.max_bytes)
            .field("unit", &self.unit)
            .finish()
    }
}

impl MemoryStorage {
    /// A storage bounded to `max_bytes`, storing objects of up to `max_object_size` bytes,
    /// in front of an optional Redis tier.
    pub fn new(
        max_bytes: u64,
        max_object_size: u64,
        redis: Option<Arc<RedisTier>>,
    ) -> MemoryStorage {
        let largest = max_object_size as usize + (64 << 10);
        let unit = largest
            .div_ceil(u16::MAX as usize)
            .next_power_of_two()
            .max(64);
        let units = (max_bytes as usize / unit).max(1);
        // TinyLFU's frequency sketch is sized for the number of entries expected.
        let estimated_entries = (max_bytes as usize / 4096).clamp(1024, 4 << 20);
        MemoryStorage {
            map: TinyUfo::new(units, estimated_entries),
            unit,
            max_bytes,
            max_object_size: max_object_size as usize,
            index: Mutex::new(Index::default()),
            purge_seq: AtomicU64::new(0),
            stats: StorageStats::default(),
            redis,
        }
    }

    /// Leaks a storage for the rest of the process.
    pub fn leak(
        max_bytes: u64,
        max_object_size: u64,
        redis: Option<Arc<RedisTier>>,
    ) -> &'static MemoryStorage {
        Box::leak(Box::new(MemoryStorage::new(
            max_bytes,
            max_object_size,
            redis,
        )))
    }

    /// The purge orders as they stand now, for a request that may fill.
    pub fn fill_start(&self) -> FillStart {
        FillStart {
            seq: self.purge_seq.load(Ordering::Acquire),
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
        let started = self.purge_seq.load(Ordering::Acquire);
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
        self.insert(entry, started);
        Some((meta, Box::new(hit)))
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn weight(&self, size: usize) -> u16 {
        size.div_ceil(self.unit).clamp(1, u16::MAX as usize) as u16
    }

    /// Takes the entry under `key` out of the map and the index; whether there was one.
    fn remove(&self, index: &mut Index, key: &HashBinary) -> bool {
        let removed = self.map.remove(key).is_some();
        if removed {
            self.unindex(index, key);
        }
        removed
    }

    /// Forgets an entry in the index and counters (it already left the map).
    fn unindex(&self, index: &mut Index, key: &HashBinary) {
        let Some((primary, tags, size)) = index.by_key.remove(key) else {
            return;
        };
        if let Some(set) = index.by_primary.get_mut(&primary) {
            set.remove(key);
            if set.is_empty() {
                index.by_primary.remove(&primary);
            }
        }
        for tag in tags {
            if let Some(set) = index.by_tag.get_mut(&tag) {
                set.remove(key);
                if set.is_empty() {
                    index.by_tag.remove(&tag);
                }
            }
        }
        self.stats.entries.fetch_sub(1, Ordering::Relaxed);
        self.stats.bytes.fetch_sub(size as u64, Ordering::Relaxed);
    }

    /// Stores `entry`, replacing any entry under its key, unless a purge since `started`
    /// covers it. Returns the stored entry.
    fn insert(&self, entry: Entry, started: u64) -> Option<Arc<Entry>> {
        let mut index = self.index();
        if index
            .recent_purges
            .iter()
            .any(|(seq, m)| *seq > started && m.matches(&entry.primary, &entry.tags))
        {
            return None;
        }
        self.remove(&mut index, &entry.key);
        let key = entry.key;
        let weight = self.weight(entry.size);
        index
            .by_key
            .insert(key, (entry.primary.clone(), entry.tags.clone(), entry.size));
        index
            .by_primary
            .entry(entry.primary.clone())
            .or_default()
            .insert(key);
        for tag in &entry.tags {
            index.by_tag.entry(tag.clone()).or_default().insert(key);
        }
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(entry.size as u64, Ordering::Relaxed);
        // Forced admission: requests coalesced on this fill are about to read it. S3-FIFO's
        // small queue keeps one-time keys from flushing the hot set (see the storage tests).
        let entry = Arc::new(entry);
        let evicted = self.map.force_put(key, Arc::clone(&entry), weight);
        for kv in evicted {
            self.unindex(&mut index, &kv.data.key);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        Some(entry)
    }

    /// Removes every entry `target` matches; returns how many.
    pub fn purge(&self, target: PurgeMatch) -> usize {
        let mut index = self.index();
        let keys: Vec<HashBinary> = match &target {
            PurgeMatch::Key(k) => index
                .by_primary
                .get(k.as_str())
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
            PurgeMatch::Prefix(p) => index
                .by_primary
                .range::<str, _>((
                    std::ops::Bound::Included(p.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(primary, _)| primary.starts_with(p.as_str()))
                .flat_map(|(_, set)| set.iter().copied())
                .collect(),
            PurgeMatch::Tag(t) => index
                .by_tag
                .get(t)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
        };
        for key in &keys {
            self.remove(&mut index, key);
        }
        let seq = self.purge_seq.fetch_add(1, Ordering::AcqRel) + 1;
        index.recent_purges.push_back((seq, target));
        while index.recent_purges.len() > 4096 {
            index.recent_purges.pop_front();
        }
        keys.len()
    }

    /// The charge for an entry with this body and header.
    fn size_of(meta: &CacheMeta, body_len: usize) -> usize {
        let headers: usize = meta
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + PER_FIELD)
            .sum();
        let pad = if body_len >= LARGE_BODY {
            LARGE_BODY_PAD
        } else {
            0
        };
        body_len + pad + headers + ENTRY_OVERHEAD
    }
}

/// A copy of `meta` (Pingora's `CacheMeta` is not `Clone`): same freshness, stale windows,
/// variance, header, and age reference. The header shares its bytes with the original.
pub fn clone_meta(meta: &CacheMeta) -> CacheMeta {
    meta_with_header(meta, meta.response_header_copy())
}

/// Like [`clone_meta`], with the compact header an entry keeps: see [`owned_header`].
fn stored_meta(meta: &CacheMeta) -> CacheMeta {
    meta_with_header(meta, owned_header(meta.response_header()))
}

fn meta_with_header(meta: &CacheMeta, header: ResponseHeader) -> CacheMeta {
    let mut copy = CacheMeta::new(
        meta.fresh_until(),
        meta.created(),
        meta.stale_while_revalidate_sec(),
        meta.stale_if_error_sec(),
        header,
    );
    if let Some(variance) = meta.variance() {
        copy.set_variance_key(variance);
    }
    // Age counts from the last revalidation.
    copy.set_epoch_override(meta.epoch());
    copy
}

/// The header an entry keeps: the same fields in the same order, owning their bytes, without
/// the original spelling of names. Pingora parses a response header into slices of its read
/// buffer (4 KiB or more, often with the start of the body), which a stored header would keep
/// alive; and the spelling is a second map per header. Hits are written with standard names in
/// their usual case (`Content-Type`) and others in lower case, as HAProxy does.
pub fn owned_header(header: &ResponseHeader) -> ResponseHeader {
    let Ok(mut copy) = ResponseHeader::build_no_case(header.status, Some(header.headers.len()))
    else {
        return header.clone();
    };
    copy.set_version(header.version);
    let mut ok = copy.set_reason_phrase(header.get_reason_phrase()).is_ok();
    for (name, value) in header.headers.iter() {
        ok &= HeaderValue::from_bytes(value.as_bytes())
            .ok()
            .is_some_and(|value| copy.append_header(name.clone(), value).is_ok());
    }
    // Every field of a parsed header copies; should one not, keep the shared original.
    if ok {
        copy
    } else {
        header.clone()
    }
}

/// The fields that tag a response for purges; internal, never sent to clients.
pub const TAG_FIELDS: [&str; 2] = ["surrogate-key", "cache-tag"];

/// Tags from `Surrogate-Key` and `Cache-Tag` (space- or comma-separated).
pub fn tags_of(meta: &CacheMeta) -> Vec<String> {
    let mut tags: Vec<String> = TAG_FIELDS
        .iter()
        .flat_map(|name| meta.headers().get_all(*name).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([' ', ',']))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(entry) = self.map.get(&key.combined_bin()) else {
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
            body: BytesMut::with_capacity(expected_len(meta, self.max_object_size)),
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
        if self.remove(&mut self.index(), &key) {
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
        let Some(old) = self.map.get(&key) else {
            return Ok(false);
        };
        let mut meta = stored_meta(meta);
        etag::keep_generated(&old.meta, &mut meta);
        let entry = Entry::new(key, old.primary.clone(), meta, old.body.clone());
        match self.insert(entry, started.seq) {
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
    storage: &'static MemoryStorage,
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
        if self.too_large || self.body.len() + data.len() > self.storage.max_object_size {
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
        let entry = Entry::new(self.key, self.primary, meta, body);
        let size = entry.size;
        if let Some(stored) = self.storage.insert(entry, self.started.seq) {
            self.storage
                .share(&stored, self.variance, self.started.generation);
        }
        Ok(MissFinishType::Created(size))
    }
}

#[cfg(test)]
mod tests;
