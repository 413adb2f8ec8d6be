//! A fresh stored response found in the memory tier without Pingora's cache state machine, for
//! the front end's direct hit path (`proxy/hit.rs`). The same key, variance, validity and
//! freshness rules as a lookup through Pingora (`HttpCache::cache_lookup` with our
//! `cache_vary_filter` and `cache_hit_filter`); anything else is `None`, and the request goes
//! the usual way.

use std::sync::Arc;
use std::time::SystemTime;

use pingora_cache::key::CacheHashKey;
use pingora_core::protocols::http::conditional_filter::to_304;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{range_header_filter, RangeType};

use super::memory::{Entry, MemoryTier};
use super::meta::TAG_FIELDS;
use super::{key, policy, Cache, CacheState};
use crate::compress::Algorithm;
use crate::etag;
use crate::fields;

/// The fresh variant stored for `req` (to `host`), when the memory tier holds one this request
/// may be served: the same variant Pingora's lookup would pick, not older than its primary
/// slot, fresh at `now`, and one the request's `Accept-Encoding` can take. The Redis tier is
/// not asked: a request it could answer goes through Pingora.
pub fn lookup(
    memory: &MemoryTier,
    host: &str,
    req: &RequestHeader,
    algorithms: Option<&[Algorithm]>,
    cookies: &[String],
    now: SystemTime,
) -> Option<Arc<Entry>> {
    let mut cache_key = Cache::key(host, req);
    let primary = memory.get(&cache_key.combined_bin())?;
    let entry = match key::variance(&primary.meta, req, algorithms, cookies) {
        None => primary,
        Some(variance) if primary.meta.variance() == Some(variance) => primary,
        Some(variance) => {
            cache_key.set_variance_key(variance);
            let variant = memory.get(&cache_key.combined_bin())?;
            // As Pingora: a variant stored before its primary slot was replaced is gone.
            if variant.meta.variance() != Some(variance)
                || variant.meta.created() < primary.meta.provenance()
            {
                return None;
            }
            variant
        }
    };
    let fresh = entry.meta.is_fresh(now);
    let state = CacheState::default();
    (fresh && Cache::hit_filter(req, &entry.meta, &state, fresh).is_none()).then_some(entry)
}

/// The header a hit on `entry` is answered with before the proxy's own fields, as Pingora's
/// hit path and our `cache_not_modified_filter` make it: the stored header with `Age` (the
/// origin's initial age plus the time stored) and chunked framing when it gives no length;
/// then the 304 when the request's `If-None-Match` or `If-Modified-Since` match (`true` with
/// it: no body goes out); then Pingora's own range filter with its default limit (it leaves a
/// 304 alone, adds `Accept-Ranges` to a 200 with a length, and makes the 206 or 416 a `Range`
/// asks for); the internal tag fields removed.
pub fn hit_header(entry: &Entry, req: &RequestHeader) -> (ResponseHeader, bool, RangeType) {
    let meta = &entry.meta;
    let mut resp = meta.response_header_copy();
    resp.set_version(http::Version::HTTP_11);
    let age = policy::initial_age(meta.response_header()) + meta.age();
    let _ = resp.insert_header(http::header::AGE, age.as_secs().to_string());
    if !resp.headers.contains_key(http::header::CONTENT_LENGTH)
        && !matches!(resp.status.as_u16(), 204 | 304)
    {
        let _ = resp.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
    let not_modified = etag::not_modified(req, &resp);
    if not_modified {
        to_304(&mut resp);
    }
    let range = range_header_filter(req, &mut resp, MAX_RANGES);
    fields::remove_where(&mut resp, |name| TAG_FIELDS.contains(&name.as_str()));
    (resp, not_modified, range)
}

/// The most ranges one request may ask for: Pingora's default (`ProxyHttp::range_header_filter`),
/// which the proxy does not override.
const MAX_RANGES: Option<usize> = Some(200);

/// The `Cache-Status` of a hit on `meta` (RFC 9211): the time left fresh, and whether the
/// entry came from the shared tier.
pub fn hit_status(meta: &pingora_cache::CacheMeta) -> String {
    let ttl = meta
        .fresh_until()
        .duration_since(SystemTime::now())
        .map_or(0, |d| d.as_secs());
    let from_redis = meta.extensions().get::<super::redis::FromRedis>().is_some();
    let detail = if from_redis { "; detail=redis" } else { "" };
    format!("switchyard; hit; ttl={ttl}{detail}")
}
