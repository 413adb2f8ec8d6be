//! Traffic policy options of routes and of `server`: access lists, rate limits, header rules,
//! and the value patterns route matching uses. Validated here; applied by `crate::policy`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

use super::cache::{redis_url, RedisTier};
use super::file::{FileAccess, FileHeaderRules, FileRateLimit, FileRateLimits};
use super::key::{Invalid, Key};

/// A compiled regular expression (the `regex` crate: linear time), compared by its text.
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Pattern {}

impl Pattern {
    pub(super) fn new(key: &Key, text: &str) -> Result<Pattern, Invalid> {
        regex::RegexBuilder::new(text)
            .size_limit(1 << 20)
            .build()
            .map(Pattern)
            .map_err(|e| key.invalid(format!("`{text}` is not a valid regex: {e}")))
    }
}

/// A header or query value a route requires: exact, or a regex (written with a `~` prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    Exact(String),
    Regex(Pattern),
}

impl ValueMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::Regex(p) => p.0.is_match(value),
        }
    }
}

pub(super) fn value_match(key: &Key, text: &str) -> Result<ValueMatch, Invalid> {
    match text.strip_prefix('~') {
        Some(re) => Ok(ValueMatch::Regex(Pattern::new(key, re)?)),
        None => Ok(ValueMatch::Exact(text.to_string())),
    }
}

/// `access`: `deny` is checked first, then `allow`; the first list holding the address decides.
/// An address in neither is admitted when `allow` is empty and refused otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl Access {
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

pub(super) fn access(key: &Key, raw: Option<FileAccess>) -> Result<Access, Invalid> {
    let Some(raw) = raw else {
        return Ok(Access::default());
    };
    let list = |name: &str, items: Option<Vec<String>>| -> Result<Vec<IpNet>, Invalid> {
        let mut nets = Vec::new();
        for (i, text) in items.unwrap_or_default().iter().enumerate() {
            let text = text.trim();
            if text.eq_ignore_ascii_case("all") {
                nets.extend(["0.0.0.0/0", "::/0"].map(|n| n.parse::<IpNet>().expect("literal")));
                continue;
            }
            let net = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    key.field(name).index(i).invalid(format!(
                        "`{text}` is not an IP address, a CIDR like 10.0.0.0/8, or `all`"
                    ))
                })?;
            nets.push(net.trunc());
        }
        Ok(nets)
    };
    Ok(Access {
        allow: list("allow", raw.allow)?,
        deny: list("deny", raw.deny)?,
    })
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    ClientIp,
    /// The field's value; the client IP when the field is absent.
    Header(HeaderName),
    /// The cookie's value; the client IP when the cookie is absent.
    Cookie(String),
    /// One budget for the whole route.
    Route,
}

/// Where a rate limit's budget is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// In this instance alone.
    #[default]
    Local,
    /// In Redis (`rate_limits.redis`), one budget for every instance; this instance's own
    /// limiter answers while Redis does not.
    Cluster,
}

/// `rate_limit`: `count` requests per `per`, with bursts of up to `burst` (GCRA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
    pub key: RateKey,
    pub scope: Scope,
}

/// `rate_limits.redis`: where `scope: cluster` limits are counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRedis {
    pub url: String,
    /// Every counter's key starts with it.
    pub key_prefix: String,
    /// Past it a check counts as failed and the local limiter answers.
    pub timeout: Duration,
}

/// The `rate_limits` block: `None` when no route counts in the cluster (`first_cluster_route`
/// is the index of the first that does). The URL defaults to `cache.redis.url`.
pub(super) fn cluster_redis(
    raw: Option<FileRateLimits>,
    cache_redis: Option<&RedisTier>,
    first_cluster_route: Option<usize>,
) -> Result<Option<ClusterRedis>, Invalid> {
    let key = Key::root("rate_limits").field("redis");
    let raw = raw.and_then(|r| r.redis).unwrap_or_default();
    let url = match (&raw.url, cache_redis) {
        (Some(url), _) => Some(redis_url(&key.field("url"), url)?),
        (None, Some(tier)) => Some(tier.url.clone()),
        (None, None) => None,
    };
    let timeout = key
        .field("timeout")
        .duration(raw.timeout.as_deref(), Duration::from_millis(50))?;
    let key_prefix = raw.key_prefix.unwrap_or_else(|| "switchyard:rl:".into());
    let Some(first) = first_cluster_route else {
        return Ok(None);
    };
    let Some(url) = url else {
        return Err(Key::root("routes")
            .index(first)
            .field("rate_limit")
            .field("scope")
            .invalid("`cluster` needs a Redis server: set rate_limits.redis.url or cache.redis"));
    };
    Ok(Some(ClusterRedis {
        url,
        key_prefix,
        timeout,
    }))
}

impl RateLimit {
    /// The time between two admitted requests at the steady rate.
    pub fn period(&self) -> Duration {
        self.per / self.count
    }
}

pub(super) fn rate_limit(key: &Key, raw: FileRateLimit) -> Result<RateLimit, Invalid> {
    let rate_key = key.field("rate");
    let bad_rate = || {
        rate_key.invalid(format!(
            "`{}` is not a rate like 100/s, 600/m or 1000/h",
            raw.rate
        ))
    };
    let (n, unit) = raw.rate.trim().split_once('/').ok_or_else(bad_rate)?;
    let count: u32 = n.trim().parse().map_err(|_| bad_rate())?;
    if count == 0 {
        return Err(rate_key.invalid("must admit at least 1 request"));
    }
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad_rate()),
    };
    if count > 1_000_000_000 || (per / count).is_zero() {
        return Err(rate_key.invalid("is more than one request per nanosecond"));
    }
    let burst = match raw.burst {
        None => count,
        Some(b) if (1..=1_000_000).contains(&b) => b as u32,
        Some(b) => {
            return Err(key
                .field("burst")
                .invalid(format!("{b} is not between 1 and 1000000")))
        }
    };
    let text = raw.key.as_deref().unwrap_or("client_ip").trim();
    let rkey = match text.split_once(':') {
        None if text == "client_ip" => RateKey::ClientIp,
        None if text == "route" => RateKey::Route,
        Some(("header", name)) => {
            RateKey::Header(HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                key.field("key")
                    .invalid(format!("`{name}` is not a field name"))
            })?)
        }
        Some(("cookie", name)) if !name.trim().is_empty() => RateKey::Cookie(name.trim().into()),
        _ => {
            return Err(key.field("key").invalid(format!(
                "`{text}` is not client_ip, header:<name>, cookie:<name> or route"
            )))
        }
    };
    let scope = match raw.scope.as_deref().unwrap_or("local") {
        "local" => Scope::Local,
        "cluster" => Scope::Cluster,
        other => {
            return Err(key
                .field("scope")
                .invalid(format!("`{other}` is not `local` or `cluster`")))
        }
    };
    Ok(RateLimit {
        count,
        per,
        burst,
        key: rkey,
        scope,
    })
}

/// One piece of a header rule's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    ClientIp,
    Host,
    RequestId,
    Scheme,
}

/// A header value with `$client_ip`, `$host`, `$request_id` and `$scheme` in it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template(pub Vec<Part>);

const VARIABLES: [(&str, Part); 4] = [
    ("$client_ip", Part::ClientIp),
    ("$host", Part::Host),
    ("$request_id", Part::RequestId),
    ("$scheme", Part::Scheme),
];

fn template(key: &Key, text: &str) -> Result<Template, Invalid> {
    if http::HeaderValue::from_str(text).is_err() {
        return Err(key.invalid(format!("`{text}` is not a valid field value")));
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        if at > 0 {
            parts.push(Part::Text(rest[..at].to_string()));
        }
        let tail = &rest[at..];
        let Some((name, part)) = VARIABLES.iter().find(|(name, _)| {
            tail.starts_with(name)
                && !tail[name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        }) else {
            return Err(key.invalid(format!(
                "`{text}`: unknown variable; the variables are $client_ip, $host, $request_id and $scheme"
            )));
        };
        parts.push(part.clone());
        rest = &tail[name.len()..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(Template(parts))
}

/// `request_headers` / `response_headers`: applied remove, then set, then add.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderRules {
    pub set: Vec<(HeaderName, Template)>,
    pub add: Vec<(HeaderName, Template)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Fields a rule may not touch: hop-by-hop and framing fields, and `Host` (`upstream_host`).
const FORBIDDEN: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

fn field_name(key: &Key, name: &str) -> Result<HeaderName, Invalid> {
    let header = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| key.invalid(format!("`{name}` is not a field name")))?;
    if FORBIDDEN.contains(&header.as_str()) {
        return Err(key.invalid(format!(
            "`{name}` is a hop-by-hop, framing or Host field, which header rules cannot change"
        )));
    }
    Ok(header)
}

pub(super) fn header_rules(
    key: &Key,
    raw: Option<FileHeaderRules>,
) -> Result<HeaderRules, Invalid> {
    let Some(raw) = raw else {
        return Ok(HeaderRules::default());
    };
    let values = |name: &str, map: Option<BTreeMap<String, String>>| {
        map.unwrap_or_default()
            .iter()
            .map(|(field, value)| {
                let at = key.field(name).field(field);
                Ok((field_name(&at, field)?, template(&at, value)?))
            })
            .collect::<Result<Vec<_>, Invalid>>()
    };
    let remove = raw
        .remove
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, f)| field_name(&key.field("remove").index(i), f))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HeaderRules {
        set: values("set", raw.set)?,
        add: values("add", raw.add)?,
        remove,
    })
}
