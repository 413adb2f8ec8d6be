//! The response cache: when a request may use it, the key, what is stored, stale serving,
//! and the `Cache-Status` (RFC 9211) every response on a cache-enabled route carries.
//! Pingora runs the cache state machine; this module answers its questions.

pub mod blob;
pub mod fresh;
pub mod invalidate;
pub mod key;
pub mod memory;
pub mod meta;
pub mod policy;
pub mod purge;
pub mod redis;
pub mod storage;
pub mod top;
pub mod warm;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::{
    CacheKey, CacheMeta, CachePhase, ForcedFreshness, NoCacheReason, RespCacheable,
};
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use crate::compress::negotiate::acceptable;
use crate::config::{self, ClientCacheControl, RouteCache};
use crate::fields;
use meta::TAG_FIELDS;
use policy::{Decision, RequestDirective};
use purge::PurgeMatch;
use redis::{RedisTier, SharedPurge};
use storage::{FillStart, TieredStorage};

/// Per-request cache state, in the request context.
#[derive(Debug, Default)]
pub struct CacheState {
    /// Why the cache was left out for this request (`method`, `no-store`).
    pub bypass: Option<&'static str>,
    /// The client asked for validation (`no-cache`, `max-age=0`).
    pub revalidate: bool,
    /// Why the response was not stored.
    pub pass: Option<&'static str>,
    /// The request carries a `Cookie` on a route with the default cookie rule: nothing stored
    /// is served to it, and its response is stored only with explicit shared permission.
    pub cookie: bool,
    /// The purge orders when the request started; a fill for it is ordered after them.
    pub fill_start: Option<FillStart>,
    /// The origin's 304 to a revalidation, whose fields freshen the stored response.
    pub freshened: Option<Box<ResponseHeader>>,
}

/// What happened in the cache for one request, for stats and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
    Stale,
    Expired,
    Revalidated,
    Bypass,
}

impl Lookup {
    pub const ALL: [Lookup; 6] = [
        Lookup::Hit,
        Lookup::Miss,
        Lookup::Stale,
        Lookup::Expired,
        Lookup::Revalidated,
        Lookup::Bypass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Stale => "stale",
            Lookup::Expired => "expired",
            Lookup::Revalidated => "revalidated",
            Lookup::Bypass => "bypass",
        }
    }
}

/// Counters for `/stats`.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale_served: AtomicU64,
    pub expired: AtomicU64,
    pub revalidated: AtomicU64,
    pub bypass: AtomicU64,
    pub coalesced: AtomicU64,
    /// Hits the front end answered itself (`proxy/hit.rs`); also counted in `hits`.
    pub direct_hits: AtomicU64,
    /// Stored responses dropped after an unsafe method (RFC 9111 §4.4).
    pub invalidations: AtomicU64,
}

/// The process-wide cache: storage and lock live as long as the process (Pingora needs
/// `'static`), so they are made once, at start.
pub struct Cache {
    pub storage: &'static TieredStorage,
    lock: &'static CacheKeyLockImpl,
    pub counters: CacheCounters,
    /// The most requested keys of the last minute (`GET /cache/top`).
    pub top: top::TopKeys,
    /// The warm lists' state (`cache.warm`).
    pub warm: Arc<warm::WarmStatus>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("storage", &self.storage)
            .finish()
    }
}

impl Cache {
    pub fn new(conf: &config::Cache) -> Cache {
        let lock: &'static CacheLock = Box::leak(Box::new(CacheLock::new(conf.lock_timeout)));
        let redis = conf
            .redis
            .as_ref()
            .and_then(|r| match RedisTier::new(r.clone()) {
                Ok(tier) => Some(Arc::new(tier)),
                Err(e) => {
                    log::error!("redis cache tier disabled: {e}");
                    None
                }
            });
        Cache {
            storage: TieredStorage::leak(conf.max_size, conf.max_object_size, redis),
            lock,
            counters: CacheCounters::default(),
            top: top::TopKeys::default(),
            warm: Arc::default(),
        }
    }

    /// Removes what `target` names from memory and, with a shared tier, from Redis and the
    /// other instances' memory. Returns the memory entries removed and, with a shared tier,
    /// what the purge did there.
    pub async fn purge(&self, target: PurgeMatch) -> (usize, Option<SharedPurge>) {
        let memory = self.storage.purge_local(target.clone());
        let shared = match &self.storage.redis {
            Some(redis) => Some(redis.purge(&target).await),
            None => None,
        };
        (memory, shared)
    }

    /// Invalidation after an unsafe method (RFC 9111 §4.4): drops what is stored for the
    /// target URI and its same-host `Location`/`Content-Location`, in memory and (with the
    /// shared tier) on every instance, before the response goes out. Runs for routes that
    /// cache; returns how many keys were invalidated.
    pub async fn invalidate(
        &self,
        host: &str,
        req: &RequestHeader,
        resp: &ResponseHeader,
    ) -> usize {
        let targets = invalidate::targets(host, req, resp);
        for primary in &targets {
            let (_, shared) = self.purge(PurgeMatch::Key(primary.clone())).await;
            if let Some(shared) = shared.filter(|s| !s.complete()) {
                log::warn!(
                    "invalidating {primary} after {}: shared tier steps failed: {:?}",
                    req.method,
                    shared.failed
                );
            }
        }
        self.counters
            .invalidations
            .fetch_add(targets.len() as u64, Ordering::Relaxed);
        targets.len()
    }

    /// `upstream_request_filter`: the warm token is removed, and a range request that may fill
    /// the cache fetches the whole response, so that it is stored once and the next range is a
    /// hit; Pingora then cuts the client's range out of it (its downstream range filter runs
    /// when the upstream request was changed for the cache).
    pub fn on_upstream_request(session: &mut Session, req: &mut RequestHeader) {
        // The warm token is for this process only.
        req.remove_header(warm::WARM_HEADER);
        if session.cache.enabled() && req.headers.contains_key(http::header::RANGE) {
            req.remove_header(&http::header::RANGE);
            req.remove_header(&http::header::IF_RANGE);
            session.mark_upstream_headers_mutated_for_cache();
        }
    }

    /// `upstream_response_filter`: an origin's 304 to a revalidation is kept, so that its
    /// fields freshen the stored response ([`policy::freshen`]).
    pub fn on_upstream_response(session: &Session, resp: &ResponseHeader, state: &mut CacheState) {
        if resp.status == http::StatusCode::NOT_MODIFIED
            && session.cache.phase() == CachePhase::Stale
        {
            state.freshened = Some(Box::new(resp.clone()));
        }
    }

    /// `request_cache_filter`: turns the cache on for this request when the route caches and
    /// the request allows it.
    pub fn on_request(
        &self,
        session: &mut Session,
        route: Option<&RouteCache>,
        max_object_size: u64,
        state: &mut CacheState,
    ) {
        let Some(route) = route else {
            return;
        };
        if !matches!(
            session.req_header().method,
            http::Method::GET | http::Method::HEAD
        ) {
            state.bypass = Some("method");
            return;
        }
        // A warm fetch refreshes what is stored instead of being answered from it.
        if session
            .req_header()
            .headers
            .get(warm::WARM_HEADER)
            .is_some_and(|v| self.warm.is_warm_request(v.as_bytes()))
        {
            state.revalidate = true;
        }
        if route.client_cache_control == ClientCacheControl::Honor {
            match policy::request_directive(session.req_header()) {
                RequestDirective::Bypass => {
                    state.bypass = Some("no-store");
                    return;
                }
                RequestDirective::Revalidate => state.revalidate = true,
                RequestDirective::Normal => {}
            }
        }
        // The cache stays on so that an explicitly shareable response can still be stored;
        // `hit_filter` keeps stored responses from this request.
        state.cookie = policy::cookie_bypass(session.req_header(), route);
        state.fill_start = Some(self.storage.fill_start());
        session
            .cache
            .enable(self.storage, None, None, Some(self.lock), None);
        session
            .cache
            .set_max_file_size_bytes(usize::try_from(max_object_size).unwrap_or(usize::MAX));
    }

    /// `cache_key_callback`.
    pub fn key(host: &str, req: &RequestHeader) -> CacheKey {
        CacheKey::new(key::primary(host, req), "")
    }

    /// `cache_hit_filter`: a request under the cookie rule, or one that cannot decode the
    /// stored response's `Content-Encoding`, is a miss; a client asking for validation (where
    /// the route honors it) gets it even on a fresh entry.
    pub fn hit_filter(
        req: &RequestHeader,
        meta: &CacheMeta,
        state: &CacheState,
        is_fresh: bool,
    ) -> Option<ForcedFreshness> {
        let encoding = meta
            .headers()
            .get(http::header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("(invalid)"));
        let accept = req
            .headers
            .get(http::header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok());
        if state.cookie || !acceptable(accept, encoding) {
            return Some(ForcedFreshness::ForceMiss);
        }
        (state.revalidate && is_fresh).then_some(ForcedFreshness::ForceExpired)
    }

    /// `response_cache_filter`.
    pub fn decide(
        req: &RequestHeader,
        resp: &ResponseHeader,
        route: Option<&RouteCache>,
        targeted: &[http::HeaderName],
        state: &mut CacheState,
    ) -> RespCacheable {
        let Some(route) = route else {
            return RespCacheable::Uncacheable(NoCacheReason::NeverEnabled);
        };
        // After a 304, Pingora merged only a few of its fields into the stored header.
        let freshened = state
            .freshened
            .take()
            .map(|update| policy::freshen(resp, &update));
        let resp = freshened.as_ref().unwrap_or(resp);
        match policy::decide(req, resp, route, targeted, SystemTime::now()) {
            Decision::Store(mut meta) => {
                if let Some(start) = state.fill_start {
                    meta.extensions_mut().insert(start);
                }
                RespCacheable::Cacheable(meta)
            }
            Decision::Pass(reason) => {
                state.pass = Some(reason);
                RespCacheable::Uncacheable(NoCacheReason::OriginNotCache)
            }
        }
    }

    /// `should_serve_stale`: within stale-while-revalidate (no error), or within
    /// stale-if-error when the origin failed (connect error, timeout, 5xx, no backend).
    pub fn serve_stale(state: &CacheState, error: Option<&Error>) -> bool {
        if state.revalidate {
            return false;
        }
        match error {
            None => true,
            Some(e) => {
                matches!(e.etype(), ErrorType::HTTPStatus(code) if *code >= 500)
                    || e.esource() == &ErrorSource::Upstream
            }
        }
    }

    /// `response_filter`: says what the cache did (`Cache-Status`, `Age`) and strips the
    /// internal tag fields. Conditional requests are `etag::on_response`'s. Returns the lookup
    /// result, `None` when the route does not cache.
    pub fn finish_response(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        route_caches: bool,
        state: &mut CacheState,
    ) -> Option<Lookup> {
        fields::remove_where(resp, |name| TAG_FIELDS.contains(&name.as_str()));
        let phase = session.cache.phase();
        let served_from_cache = served_from_cache(session);
        if !route_caches {
            return None;
        }
        let meta = session.cache.maybe_cache_meta();
        if served_from_cache {
            if let Some(meta) = meta {
                // On a plain hit Pingora has set `Age` from the entry's own age already; only
                // an age the origin reported on top of it needs writing again.
                let initial = policy::initial_age(meta.response_header());
                if phase != CachePhase::Hit || !initial.is_zero() {
                    let age = initial + meta.age();
                    let _ = resp.insert_header(http::header::AGE, age.as_secs().to_string());
                }
            }
        }
        let fwd = if state.revalidate { "request" } else { "stale" };
        let (lookup, status) = match phase {
            // The cookie rule decided: nothing stored was looked at.
            CachePhase::Miss | CachePhase::Disabled(_) if state.cookie => {
                let stored = if phase == CachePhase::Miss && state.pass.is_none() {
                    "; stored"
                } else {
                    ""
                };
                (
                    Lookup::Bypass,
                    format!("switchyard; fwd=bypass{stored}; detail=cookie"),
                )
            }
            CachePhase::Hit => {
                if session.cache.lock_duration().is_some() {
                    self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                }
                let status =
                    meta.map_or_else(|| "switchyard; hit; ttl=0".into(), fresh::hit_status);
                (Lookup::Hit, status)
            }
            CachePhase::Stale | CachePhase::StaleUpdating => {
                (Lookup::Stale, "switchyard; hit; detail=stale".to_string())
            }
            CachePhase::Revalidated => (
                Lookup::Revalidated,
                format!("switchyard; fwd={fwd}; fwd-status=304; stored"),
            ),
            CachePhase::RevalidatedNoCache(_) => (
                Lookup::Revalidated,
                format!("switchyard; fwd={fwd}; fwd-status=304"),
            ),
            CachePhase::Expired => (
                Lookup::Expired,
                format!(
                    "switchyard; fwd={fwd}; fwd-status={}{}",
                    resp.status.as_u16(),
                    stored_or(state)
                ),
            ),
            CachePhase::Miss => (
                Lookup::Miss,
                format!("switchyard; fwd=miss{}", stored_or(state)),
            ),
            CachePhase::Disabled(reason) if state.bypass.is_none() => {
                let detail = state.pass.unwrap_or(match reason {
                    NoCacheReason::ResponseTooLarge | NoCacheReason::PredictedResponseTooLarge => {
                        "too-large"
                    }
                    NoCacheReason::UpstreamError => "upstream-error",
                    _ => "uncacheable",
                });
                (
                    Lookup::Miss,
                    format!("switchyard; fwd=miss; detail={detail}"),
                )
            }
            _ => (
                Lookup::Bypass,
                format!(
                    "switchyard; fwd=bypass; detail={}",
                    state.bypass.unwrap_or("uncacheable")
                ),
            ),
        };
        let primary = session
            .cache
            .maybe_cache_key()
            .and_then(|key| key.primary_key_str());
        self.count(lookup, primary);
        let _ = resp.insert_header("Cache-Status", status);
        Some(lookup)
    }

    /// Counts a lookup's result in `/stats` and, for the key `primary`, in the top keys.
    pub fn count(&self, lookup: Lookup, primary: Option<&str>) {
        let counter = match lookup {
            Lookup::Hit => &self.counters.hits,
            Lookup::Miss => &self.counters.misses,
            Lookup::Stale => &self.counters.stale_served,
            Lookup::Expired => &self.counters.expired,
            Lookup::Revalidated => &self.counters.revalidated,
            Lookup::Bypass => &self.counters.bypass,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let hit = match lookup {
            Lookup::Hit | Lookup::Stale | Lookup::Revalidated => Some(true),
            Lookup::Miss | Lookup::Expired => Some(false),
            Lookup::Bypass => None,
        };
        if let (Some(hit), Some(primary)) = (hit, primary) {
            self.top.record(primary, hit);
        }
    }

    /// The `cache` section of `/stats`.
    pub fn stats(&self) -> serde_json::Value {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let served = get(&c.hits) + get(&c.stale_served) + get(&c.revalidated);
        let lookups = served + get(&c.misses) + get(&c.expired);
        let s = &self.storage.memory.stats;
        let redis = self.storage.redis.as_ref().map(|r| {
            let rs = &r.stats;
            serde_json::json!({
                "connected": rs.connected.load(Ordering::Relaxed),
                "hits": get(&rs.hits),
                "misses": get(&rs.misses),
                "errors": rs.errors_total(),
                "purges_published": get(&rs.purges_published),
                "purges_received": get(&rs.purges_received),
                "fills_refused": get(&rs.fills_refused),
            })
        });
        serde_json::json!({
            "redis": redis,
            "entries": get(&s.entries),
            "bytes": get(&s.bytes),
            "max_bytes": self.storage.memory.max_bytes(),
            "hits": get(&c.hits),
            "misses": get(&c.misses),
            "stale_served": get(&c.stale_served),
            "expired": get(&c.expired),
            "revalidated": get(&c.revalidated),
            "bypass": get(&c.bypass),
            "coalesced": get(&c.coalesced),
            "direct_hits": get(&c.direct_hits),
            "invalidations": get(&c.invalidations),
            "warm": self.warm.stats(),
            "evictions": get(&s.evictions),
            "hit_ratio": if lookups == 0 { 0.0 } else { served as f64 / lookups as f64 },
        })
    }
}

fn stored_or(state: &CacheState) -> String {
    match state.pass {
        None => "; stored".to_string(),
        Some(detail) => format!("; detail={detail}"),
    }
}

/// Whether this response comes from the cache (a hit, stale, or revalidated by a 304).
pub fn served_from_cache(session: &Session) -> bool {
    matches!(
        session.cache.phase(),
        CachePhase::Hit
            | CachePhase::Stale
            | CachePhase::StaleUpdating
            | CachePhase::Revalidated
            | CachePhase::RevalidatedNoCache(_)
    )
}
