//! What may be stored and for how long (RFC 9111), and what a request allows. RFC 9111 is the
//! default; a route's options only widen it (a default TTL, default stale windows) or cap it.

use std::time::{Duration, SystemTime};

use http::header::{AUTHORIZATION, COOKIE, DATE, ETAG, EXPIRES, LAST_MODIFIED, SET_COOKIE, VARY};
use http::StatusCode;
use pingora_cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora_cache::CacheMeta;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::config::{CookiePolicy, RouteCache};
use crate::etag::GENERATED;
use crate::fields;

/// Longest freshness the Last-Modified heuristic gives.
const HEURISTIC_CAP: Duration = Duration::from_secs(86400);

/// Whether and how a response is stored.
#[derive(Debug)]
pub enum Decision {
    Store(CacheMeta),
    /// Not stored, with the `detail` shown in `Cache-Status`.
    Pass(&'static str),
}

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Statuses stored at all: any final status with explicit freshness (RFC 9111 §3), but 206
/// (a part is not the response; ranges are served from the whole) and 304 (it only freshens).
fn storable(status: StatusCode) -> bool {
    status.as_u16() >= 200 && !matches!(status.as_u16(), 206 | 304)
}

/// Statuses whose meaning this cache knows, for `must-understand` (RFC 9111 §5.2.2.3).
fn understood(status: StatusCode) -> bool {
    heuristically_cacheable(status) || matches!(status.as_u16(), 302 | 303 | 307)
}

/// The response's cache directives for this cache (RFC 9213 §2.1): the first targeted field
/// (`targeted`, in order) present with a valid value; otherwise `Cache-Control`. The flag says
/// a targeted field decided, in which case `Cache-Control` and `Expires` are ignored.
pub fn directives(
    resp: &ResponseHeader,
    targeted: &[http::HeaderName],
) -> (Option<CacheControl>, bool) {
    for name in targeted {
        if let Some(cc) = CacheControl::from_resp_headers_named(name.as_str(), resp) {
            if !cc.directives.is_empty() {
                return (Some(cc), true);
            }
        }
    }
    (CacheControl::from_resp_headers(resp), false)
}

fn http_date(resp: &ResponseHeader, name: http::HeaderName) -> Option<SystemTime> {
    let mut values = resp.headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    httpdate::parse_http_date(first.to_str().ok()?).ok()
}

/// The freshness lifetime the origin gave, if any: `s-maxage`, `max-age`, then `Expires`
/// (not when a targeted field gave the directives).
fn origin_lifetime(
    cc: Option<&CacheControl>,
    resp: &ResponseHeader,
    use_expires: bool,
) -> Option<Duration> {
    if let Some(cc) = cc {
        if let Ok(Some(s)) = cc.s_maxage() {
            return Some(Duration::from_secs(s.into()));
        }
        if let Ok(Some(m)) = cc.max_age() {
            return Some(Duration::from_secs(m.into()));
        }
    }
    if use_expires && resp.headers.contains_key(EXPIRES) {
        // An invalid Expires means "already expired" (RFC 9111 §5.3).
        let Some(expires) = http_date(resp, EXPIRES) else {
            return Some(Duration::ZERO);
        };
        let date = http_date(resp, DATE).unwrap_or_else(SystemTime::now);
        return Some(expires.duration_since(date).unwrap_or(Duration::ZERO));
    }
    None
}

/// RFC 9111 §4.2.2: 10% of the time since Last-Modified, capped.
fn heuristic_lifetime(resp: &ResponseHeader, now: SystemTime) -> Option<Duration> {
    let modified = http_date(resp, LAST_MODIFIED)?;
    let date = http_date(resp, DATE).unwrap_or(now);
    let since = date.duration_since(modified).ok()?;
    Some((since / 10).min(HEURISTIC_CAP))
}

/// Largest `Age` taken (RFC 9111 §1.2.2: 2^31 when a value overflows).
const MAX_AGE_VALUE: u64 = 1 << 31;

/// The `Age` the origin (or a cache before us) reported (RFC 9111 §5.1): the first field, when
/// it is a non-negative integer (digits only); anything else is ignored as if absent, and a
/// very large value is 2^31.
pub fn initial_age(resp: &ResponseHeader) -> Duration {
    let age = resp
        .headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .map_or(0, |v| {
            v.parse::<u64>().unwrap_or(MAX_AGE_VALUE).min(MAX_AGE_VALUE)
        });
    Duration::from_secs(age)
}

/// Decides whether `resp` to `req` is stored under `route`'s policy, and for how long.
pub fn decide(
    req: &RequestHeader,
    resp: &ResponseHeader,
    route: &RouteCache,
    targeted: &[http::HeaderName],
    now: SystemTime,
) -> Decision {
    if !storable(resp.status) {
        return Decision::Pass("status");
    }
    if fields::list(&resp.headers, VARY).any(|v| v == "*") {
        return Decision::Pass("vary-star");
    }
    let (cc, from_targeted) = directives(resp, targeted);
    // `must-understand`: store only a status whose meaning is known, and then `no-store`
    // (which it comes with, for caches that do not know it) does not apply.
    let must_understand = cc.as_ref().is_some_and(|c| c.has_key("must-understand"));
    if must_understand && !understood(resp.status) {
        return Decision::Pass("must-understand");
    }
    if !must_understand && cc.as_ref().is_some_and(|c| c.no_store()) {
        return Decision::Pass("no-store");
    }
    if cc.as_ref().is_some_and(|c| c.private()) {
        return Decision::Pass("private");
    }
    if resp.headers.contains_key(SET_COOKIE) {
        return Decision::Pass("set-cookie");
    }
    // RFC 9111 §3.5: a shared cache stores a response to an authenticated request only with
    // the origin's explicit permission. A cookie is treated the same way (Varnish's built-in
    // rule, relaxed for that permission) unless the route says how cookies matter.
    let shared_permission = cc
        .as_ref()
        .is_some_and(|c| c.public() || matches!(c.s_maxage(), Ok(Some(_))));
    if req.headers.contains_key(AUTHORIZATION) && !shared_permission {
        return Decision::Pass("authorization");
    }
    let cookie_rule = cookie_bypass(req, route);
    if cookie_rule && !shared_permission {
        return Decision::Pass("cookie");
    }
    let has_validator = resp.headers.contains_key(ETAG) || resp.headers.contains_key(LAST_MODIFIED);
    let no_cache = cc.as_ref().is_some_and(|c| c.no_cache());
    let lifetime = match origin_lifetime(cc.as_ref(), resp, !from_targeted) {
        Some(origin) => Some(route.max_ttl.map_or(origin, |cap| origin.min(cap))),
        None if !heuristically_cacheable(resp.status) => return Decision::Pass("status"),
        // `default_ttl` is the route's guess for anonymous content: never for a cookie request.
        None => (if cookie_rule { None } else { route.default_ttl })
            .or_else(|| heuristic_lifetime(resp, now))
            .map(|ttl| route.max_ttl.map_or(ttl, |cap| ttl.min(cap))),
    };
    // `no-cache`: may be stored, but every use must be validated first.
    let lifetime = if no_cache {
        Some(Duration::ZERO)
    } else {
        lifetime
    };
    let lifetime = match lifetime {
        Some(l) if !l.is_zero() => l,
        // Stored only to be revalidated: worth it only with a validator.
        _ if has_validator => Duration::ZERO,
        _ => return Decision::Pass("no-freshness"),
    };
    let age = initial_age(resp);
    let fresh_until = match lifetime.checked_sub(age) {
        Some(left) if !left.is_zero() => now + left,
        _ => now - Duration::from_secs(1),
    };
    let no_stale = no_cache
        || cc
            .as_ref()
            .is_some_and(|c| c.must_revalidate() || c.proxy_revalidate());
    let (swr, sie) = if no_stale {
        (0, 0)
    } else {
        let secs = |origin: Option<u32>, default: Duration| {
            origin.unwrap_or_else(|| u32::try_from(default.as_secs()).unwrap_or(u32::MAX))
        };
        (
            secs(
                cc.as_ref()
                    .and_then(|c| c.stale_while_revalidate().ok().flatten()),
                route.stale_while_revalidate,
            ),
            secs(
                cc.as_ref().and_then(|c| c.stale_if_error().ok().flatten()),
                route.stale_if_error,
            ),
        )
    };
    let mut header = resp.clone();
    if let Some(cc) = &cc {
        cc.strip_private_headers(&mut header);
    }
    // Never store an internal header an origin might have sent.
    header.remove_header(GENERATED);
    Decision::Store(CacheMeta::new(fresh_until, now, swr, sie, header))
}

/// Fields a 304 never changes in the stored response (RFC 9111 §3.2): those about the stored
/// body's framing and coding, which the body we keep was made with, and `Age`, which we count.
const NOT_FRESHENED: [http::HeaderName; 6] = [
    http::header::CONTENT_LENGTH,
    http::header::CONTENT_ENCODING,
    http::header::TRANSFER_ENCODING,
    http::header::CONTENT_RANGE,
    http::header::AGE,
    http::header::VARY,
];

/// The stored header `stored` updated with the fields of the 304 `update` (RFC 9111 §4.3.4,
/// §3.2): each field the 304 carries replaces the stored one, but those in `NOT_FRESHENED`.
/// (`Vary` stays: a change of variance needs a full response.)
pub fn freshen(stored: &ResponseHeader, update: &ResponseHeader) -> ResponseHeader {
    let mut merged = stored.clone();
    let names: Vec<&http::HeaderName> = update
        .headers
        .keys()
        .filter(|name| !NOT_FRESHENED.contains(name))
        .collect();
    for name in names {
        merged.remove_header(name);
        for value in update.headers.get_all(name) {
            let _ = merged.append_header(name.clone(), value.clone());
        }
    }
    merged
}

/// Whether the route's default cookie rule applies to `req`: it carries a `Cookie` and the
/// route neither ignores cookies nor keys on them.
pub fn cookie_bypass(req: &RequestHeader, route: &RouteCache) -> bool {
    route.cookies == CookiePolicy::Bypass && req.headers.contains_key(COOKIE)
}

/// What the request's own `Cache-Control` (or `Pragma`) asks of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestDirective {
    /// Use the cache normally.
    Normal,
    /// `no-cache` or `max-age=0`: a stored response must be validated first.
    Revalidate,
    /// `no-store`: leave the cache out.
    Bypass,
}

pub fn request_directive(req: &RequestHeader) -> RequestDirective {
    match CacheControl::from_req_headers(req) {
        Some(cc) if cc.no_store() => RequestDirective::Bypass,
        Some(cc) if cc.no_cache() || matches!(cc.max_age(), Ok(Some(0))) => {
            RequestDirective::Revalidate
        }
        Some(_) => RequestDirective::Normal,
        None => {
            let pragma_no_cache = req
                .headers
                .get(http::header::PRAGMA)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache"));
            if pragma_no_cache {
                RequestDirective::Revalidate
            } else {
                RequestDirective::Normal
            }
        }
    }
}

#[cfg(test)]
mod tests;
