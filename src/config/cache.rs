//! `cache` (the memory cache and the Redis tier) and `routes[].cache` (a route's policy).

use std::time::Duration;

use super::file::{FileCache, FileRedis, FileRouteCache};
use super::key::{is_token, Invalid, Key};
use super::warm::{warm, Warm};

/// The memory cache shared by every cache-enabled route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    /// Bound on stored bodies and headers, in bytes.
    pub max_size: u64,
    /// Larger responses are streamed through, not stored.
    pub max_object_size: u64,
    /// How long concurrent misses wait for the one request filling the cache.
    pub lock_timeout: Duration,
    /// The shared tier, when configured.
    pub redis: Option<RedisTier>,
    /// Targeted cache-control fields (RFC 9213) this cache obeys, in order, lower case.
    pub targeted_fields: Vec<http::HeaderName>,
    /// Whether the targeted fields are removed from responses sent downstream.
    pub strip_targeted: bool,
    /// Whether fresh hits on HTTP/1.1 take the front end's direct path (`proxy/hit.rs`).
    pub direct_hits: bool,
}

/// The targeted fields when the config names none: Switchyard's own first, so an origin can
/// address it alone, then the one every CDN obeys.
pub const DEFAULT_TARGETED_FIELDS: [&str; 2] = ["switchyard-cache-control", "cdn-cache-control"];

/// The shared Redis tier of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTier {
    pub url: String,
    pub key_prefix: String,
    /// Larger objects stay in memory only.
    pub max_object_size: u64,
    /// Deadline of every Redis operation; past it the operation counts as a miss.
    pub timeout: Duration,
    pub pool_size: usize,
}

impl RedisTier {
    /// The URL without its password, for logs.
    pub fn url_redacted(&self) -> String {
        match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &self.url[..scheme], &self.url[at + 1..])
            }
            _ => self.url.clone(),
        }
    }
}

/// A route's cache policy. RFC 9111 decides; these only widen it where set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCache {
    /// Freshness for responses whose origin gives none.
    pub default_ttl: Option<Duration>,
    /// Cap on origin-given freshness.
    pub max_ttl: Option<Duration>,
    /// Used when the origin gives no `stale-while-revalidate`.
    pub stale_while_revalidate: Duration,
    /// Used when the origin gives no `stale-if-error`.
    pub stale_if_error: Duration,
    /// What a request's `Cookie` does to the cache.
    pub cookies: CookiePolicy,
    /// Whether a request's own `Cache-Control` / `Pragma` is obeyed.
    pub client_cache_control: ClientCacheControl,
    /// URLs fetched ahead of clients and kept fresh.
    pub warm: Option<Warm>,
}

impl RouteCache {
    /// The cookies the cache is keyed on (sorted); empty unless `cookies` lists names.
    pub fn keyed_cookies(&self) -> &[String] {
        match &self.cookies {
            CookiePolicy::Key(names) => names,
            _ => &[],
        }
    }
}

/// `routes[].cache.cookies`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CookiePolicy {
    /// A request with a `Cookie` is not served from the cache, and its response is stored only
    /// when explicitly `public` or `s-maxage`.
    #[default]
    Bypass,
    /// Cookies make no difference to the cache.
    Ignore,
    /// The cache is keyed on these cookies' values; other cookies make no difference.
    Key(Vec<String>),
}

/// `routes[].cache.client_cache_control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientCacheControl {
    /// Request `no-cache`, `max-age=0`, `no-store` and `Pragma: no-cache` change nothing.
    #[default]
    Ignore,
    /// `no-store` bypasses the cache; `no-cache`, `max-age=0`, `Pragma: no-cache` revalidate.
    Honor,
}

/// Largest object the memory cache stores (its eviction weights are 16-bit).
pub const MAX_OBJECT_SIZE_LIMIT: u64 = 1 << 30;

impl TryFrom<FileCache> for Cache {
    type Error = Invalid;

    fn try_from(c: FileCache) -> Result<Cache, Invalid> {
        let key = Key::root("cache");
        let max_size = key
            .field("max_size")
            .size(c.max_size.as_deref(), 256 << 20)?;
        let object_key = key.field("max_object_size");
        let max_object_size = object_key.size(c.max_object_size.as_deref(), 8 << 20)?;
        if max_object_size > MAX_OBJECT_SIZE_LIMIT {
            return Err(object_key.invalid(format!("{max_object_size} is above the limit of 1GiB")));
        }
        if max_object_size > max_size {
            return Err(object_key.invalid("must not be larger than cache.max_size"));
        }
        Ok(Cache {
            max_size,
            max_object_size,
            lock_timeout: key
                .field("lock_timeout")
                .duration(c.lock_timeout.as_deref(), Duration::from_secs(2))?,
            redis: c
                .redis
                .map(|r| redis_tier(&key.field("redis"), r))
                .transpose()?,
            targeted_fields: targeted_fields(&key.field("targeted_fields"), c.targeted_fields)?,
            strip_targeted: c.strip_targeted.unwrap_or(false),
            direct_hits: c.direct_hits.unwrap_or(true),
        })
    }
}

/// Field names (HTTP tokens), none of them `Cache-Control`, which the targeted fields override.
fn targeted_fields(
    key: &Key,
    names: Option<Vec<String>>,
) -> Result<Vec<http::HeaderName>, Invalid> {
    let names = names.unwrap_or_else(|| DEFAULT_TARGETED_FIELDS.map(str::to_string).to_vec());
    let mut fields = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let lower = name.trim().to_ascii_lowercase();
        if lower == "cache-control" {
            return Err(key
                .index(i)
                .invalid("Cache-Control is what targeted fields override"));
        }
        match http::HeaderName::from_bytes(lower.as_bytes()) {
            Ok(field) if is_token(&lower) => fields.push(field),
            _ => {
                return Err(key
                    .index(i)
                    .invalid(format!("`{name}` is not a field name")))
            }
        }
    }
    Ok(fields)
}

/// A Redis server's URL at `key` (`cache.redis.url`, `rate_limits.redis.url`).
pub(super) fn redis_url(key: &Key, url: &str) -> Result<String, Invalid> {
    let url = url.trim().to_string();
    let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| url.starts_with(s));
    if !scheme_ok {
        return Err(key.invalid(format!("`{url}` is not a redis:// or rediss:// URL")));
    }
    if let Err(e) = redis::Client::open(url.as_str()) {
        return Err(key.invalid(e));
    }
    Ok(url)
}

fn redis_tier(key: &Key, r: FileRedis) -> Result<RedisTier, Invalid> {
    let url = redis_url(&key.field("url"), &r.url)?;
    let pool_size = match r.pool_size {
        None => 16,
        Some(n) if (1..=256).contains(&n) => n as usize,
        Some(n) => {
            return Err(key
                .field("pool_size")
                .invalid(format!("{n} is out of range 1..=256")))
        }
    };
    Ok(RedisTier {
        url,
        key_prefix: r.key_prefix.unwrap_or_else(|| "switchyard:".into()),
        max_object_size: key
            .field("max_object_size")
            .size(r.max_object_size.as_deref(), 1 << 20)?,
        timeout: key
            .field("timeout")
            .duration(r.timeout.as_deref(), Duration::from_millis(50))?,
        pool_size,
    })
}

/// A route's cache block at `key`; `None` when it says `enabled: false`.
pub(super) fn route_cache(
    key: &Key,
    c: FileRouteCache,
    exact_host: Option<&str>,
) -> Result<Option<RouteCache>, Invalid> {
    if c.enabled == Some(false) {
        return Ok(None);
    }
    let optional = |name: &str, value: Option<&str>| {
        value
            .map(|v| key.field(name).duration(Some(v), Duration::ZERO))
            .transpose()
    };
    Ok(Some(RouteCache {
        default_ttl: optional("default_ttl", c.default_ttl.as_deref())?,
        max_ttl: optional("max_ttl", c.max_ttl.as_deref())?,
        stale_while_revalidate: key
            .field("stale_while_revalidate")
            .window(c.stale_while_revalidate.as_deref())?,
        stale_if_error: key
            .field("stale_if_error")
            .window(c.stale_if_error.as_deref())?,
        cookies: cookie_policy(&key.field("cookies"), c.cookies)?,
        warm: c
            .warm
            .map(|w| warm(&key.field("warm"), w, exact_host))
            .transpose()?,
        client_cache_control: match c.client_cache_control.as_deref() {
            None | Some("ignore") => ClientCacheControl::Ignore,
            Some("honor") => ClientCacheControl::Honor,
            Some(other) => {
                return Err(key
                    .field("client_cache_control")
                    .invalid(format!("expected ignore or honor, got `{other}`")))
            }
        },
    }))
}

/// `bypass`, `ignore`, or a non-empty list of cookie names.
fn cookie_policy(key: &Key, value: Option<serde_yaml::Value>) -> Result<CookiePolicy, Invalid> {
    use serde_yaml::Value;
    match value {
        None => Ok(CookiePolicy::Bypass),
        Some(Value::String(s)) if s == "bypass" => Ok(CookiePolicy::Bypass),
        Some(Value::String(s)) if s == "ignore" => Ok(CookiePolicy::Ignore),
        Some(Value::Sequence(items)) if !items.is_empty() => {
            let mut names = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                // RFC 6265 §4.1.1: a cookie name is an HTTP token.
                match item {
                    Value::String(s) if is_token(&s) => names.push(s),
                    _ => return Err(key.index(i).invalid("expected a cookie name")),
                }
            }
            names.sort();
            names.dedup();
            Ok(CookiePolicy::Key(names))
        }
        Some(_) => Err(key.invalid("expected bypass, ignore or a list of cookie names")),
    }
}
