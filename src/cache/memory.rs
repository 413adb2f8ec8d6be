//! The memory tier: stored responses in TinyUFO (S3-FIFO eviction, every store admitted),
//! bounded in bytes, with an index by primary key and tag for purges. It knows nothing of
//! the Redis tier; `TieredStorage` (`storage.rs`) composes the two.
//!
//! Lookups touch only the TinyUFO map (lock free). Inserts, evictions and purges keep the
//! index under one mutex.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pingora_cache::key::HashBinary;
use pingora_cache::CacheMeta;
use tinyufo::TinyUfo;

use super::meta::tags_of;
use super::purge::{glob_matches, literal_prefix, PurgeMatch};

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

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    pub key: HashBinary,
    pub primary: Arc<str>,
    pub tags: Vec<String>,
    pub meta: CacheMeta,
    pub body: Bytes,
    /// Bytes charged (body, header fields, overhead).
    pub size: usize,
}

impl Entry {
    /// An entry with its tags and charge derived from `meta` and `body`.
    pub fn new(key: HashBinary, primary: Arc<str>, meta: CacheMeta, body: Bytes) -> Entry {
        Entry {
            key,
            primary,
            tags: tags_of(&meta),
            size: MemoryTier::size_of(&meta, body.len()),
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

/// The memory tier.
pub struct MemoryTier {
    map: TinyUfo<HashBinary, Arc<Entry>>,
    /// Bytes per unit of TinyUFO weight (its weights are 16-bit).
    unit: usize,
    max_bytes: u64,
    max_object_size: usize,
    index: Mutex<Index>,
    purge_seq: AtomicU64,
    pub stats: StorageStats,
}

impl std::fmt::Debug for MemoryTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTier")
            .field("max_bytes", &self.max_bytes)
            .field("unit", &self.unit)
            .finish()
    }
}

impl MemoryTier {
    /// A tier bounded to `max_bytes`, storing objects of up to `max_object_size` bytes.
    pub fn new(max_bytes: u64, max_object_size: u64) -> MemoryTier {
        let largest = max_object_size as usize + (64 << 10);
        let unit = largest
            .div_ceil(u16::MAX as usize)
            .next_power_of_two()
            .max(64);
        let units = (max_bytes as usize / unit).max(1);
        // TinyLFU's frequency sketch is sized for the number of entries expected.
        let estimated_entries = (max_bytes as usize / 4096).clamp(1024, 4 << 20);
        MemoryTier {
            map: TinyUfo::new(units, estimated_entries),
            unit,
            max_bytes,
            max_object_size: max_object_size as usize,
            index: Mutex::new(Index::default()),
            purge_seq: AtomicU64::new(0),
            stats: StorageStats::default(),
        }
    }

    /// The entry stored under `key`.
    pub fn get(&self, key: &HashBinary) -> Option<Arc<Entry>> {
        self.map.get(key)
    }

    /// Every stored variant of `primary` (for inspection).
    pub fn variants(&self, primary: &str) -> Vec<Arc<Entry>> {
        let keys: Vec<HashBinary> = self
            .index()
            .by_primary
            .get(primary)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default();
        keys.iter().filter_map(|key| self.map.get(key)).collect()
    }

    /// This tier's purge sequence: a fill that started at it is not stored when a purge since
    /// then covers it.
    pub fn purge_seq(&self) -> u64 {
        self.purge_seq.load(Ordering::Acquire)
    }

    /// The largest body this tier stores.
    pub fn max_object_size(&self) -> usize {
        self.max_object_size
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// How many entries the purge index knows (as many as the map holds).
    #[cfg(test)]
    pub fn indexed(&self) -> usize {
        self.index().by_key.len()
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn weight(&self, size: usize) -> u16 {
        size.div_ceil(self.unit).clamp(1, u16::MAX as usize) as u16
    }

    /// Takes the entry under `key` out; whether there was one.
    pub fn remove_key(&self, key: &HashBinary) -> bool {
        self.remove(&mut self.index(), key)
    }

    /// [`Self::remove_key`] with the index already locked.
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
    pub fn insert(&self, entry: Entry, started: u64) -> Option<Arc<Entry>> {
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
            PurgeMatch::Pattern(p) => {
                let start = literal_prefix(p);
                index
                    .by_primary
                    .range::<str, _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
                    .take_while(|(primary, _)| primary.starts_with(start))
                    .filter(|(primary, _)| glob_matches(p, primary))
                    .flat_map(|(_, set)| set.iter().copied())
                    .collect()
            }
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
    pub fn size_of(meta: &CacheMeta, body_len: usize) -> usize {
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
