//! `upstreams.<name>`: backends, strategy, health checks, sticky sessions, retries, passive
//! health, timeouts and the in-flight cap.

use std::time::Duration;

use super::backends::{BackendSpec, DiscoverSpec};
use super::discovery::{self, Discovery};
use super::file::{FileHealthCheck, FilePassiveHealth, FileSticky, FileUpstream};
use super::key::{is_token, Invalid, Key};

/// Most retries an upstream may ask for.
pub const MAX_RETRIES: i64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Smooth weighted round-robin; `weighted` in the file means the same.
    RoundRobin,
    /// Fewest in-flight requests per unit of weight; ties by smooth weighted round-robin.
    LeastConnections,
    /// Consistent hashing (Ketama ring) on [`HashKey`].
    IpHash,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastConnections => "least_connections",
            Strategy::IpHash => "ip_hash",
        }
    }
}

/// What `ip_hash` hashes. When the chosen header or cookie is absent, the client IP is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    /// A request header, by lower-case name.
    Header(String),
    Cookie(String),
    /// Path and query.
    Uri,
}

/// Sticky sessions: a signed cookie pins a client to a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    pub cookie: String,
    pub ttl: Duration,
    /// HMAC key; `None` means a random key made once per process.
    pub secret: Option<String>,
}

/// Which failures are tried again on another backend, and how many times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Extra attempts after the first, each on a backend not yet tried.
    pub retries: u32,
    pub connect_failure: bool,
    pub timeout: bool,
    /// 5xx statuses from the upstream that are retried.
    pub statuses: Vec<u16>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 1,
            connect_failure: true,
            timeout: false,
            statuses: Vec::new(),
        }
    }
}

/// Outlier ejection from live traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveHealth {
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub strategy: Strategy,
    pub backends: Vec<BackendSpec>,
    pub health_check: Option<HealthCheck>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub hash_key: HashKey,
    pub sticky: Option<Sticky>,
    pub retry: RetryPolicy,
    pub passive_health: Option<PassiveHealth>,
    /// Requests in flight to this upstream at once; more get 503 with `Retry-After`.
    pub max_in_flight: Option<u64>,
    /// TLS to the backends; `None`: plain TCP.
    pub tls: Option<super::upstream_tls::UpstreamTls>,
    /// HTTP/2 to the backends: ALPN `h2` over TLS, prior knowledge over plain TCP.
    pub http2: bool,
    /// `/ready` needs a healthy backend of this upstream.
    pub required: bool,
    /// Entries that stand for what a name resolves to; `backends` holds what they resolved to.
    pub discover: Vec<DiscoverSpec>,
    pub discovery: Discovery,
    /// When the answers `backends` was built from expire (`None`: nothing to discover).
    pub discovery_due: Option<std::time::Instant>,
    /// Slow start, the wait queue and keep-alive.
    pub capacity: super::capacity::Capacity,
}

impl Upstream {
    /// This upstream with `found` in place of the backends discovery made before; the
    /// backends written as `ip:port` stay first.
    pub fn with_discovered(&self, found: Vec<BackendSpec>) -> Upstream {
        let mut up = self.clone();
        up.backends.retain(|b| !b.discovered);
        for spec in found {
            if !up.backends.iter().any(|b| b.name == spec.name) {
                up.backends.push(spec);
            }
        }
        up
    }

    /// The backends discovery made.
    pub fn discovered(&self) -> impl Iterator<Item = &BackendSpec> {
        self.backends.iter().filter(|b| b.discovered)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// GET `path`; healthy when the status is `expect_status`, or any 2xx/3xx when unset.
    Http {
        path: String,
        expect_status: Option<u16>,
    },
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

/// Validates the upstream at `key` (`upstreams.<name>`); `base` is the top-level `discovery`.
pub(super) fn upstream(key: &Key, up: FileUpstream, base: &Discovery) -> Result<Upstream, Invalid> {
    let capacity = super::capacity::capacity(key, &up)?;
    let strategy = match up.strategy.as_deref().unwrap_or("round_robin") {
        "round_robin" | "weighted" => Strategy::RoundRobin,
        "least_connections" => Strategy::LeastConnections,
        "ip_hash" => Strategy::IpHash,
        other => {
            return Err(key.field("strategy").invalid(format!(
                "unknown strategy `{other}`; expected round_robin, weighted, least_connections or ip_hash"
            )))
        }
    };
    let list = key.field("backends");
    let discovery = discovery::settings(&key.field("discovery"), up.discovery, base)?;
    let super::backends::Entries {
        backends,
        discover,
        due: discovery_due,
    } = super::backends::backends(&list, up.backends, &discovery)?;
    let health_check = up
        .health_check
        .map(|hc| health_check(&key.field("health_check"), hc))
        .transpose()?;
    let hash_key = match up.hash_key.as_deref() {
        None => HashKey::ClientIp,
        Some(_) if strategy != Strategy::IpHash => {
            return Err(key
                .field("hash_key")
                .invalid("applies to strategy ip_hash only"))
        }
        Some(text) => hash_key(&key.field("hash_key"), text)?,
    };
    let sticky = up
        .sticky
        .map(|s| sticky(&key.field("sticky"), s))
        .transpose()?;
    let retry = retry(key, up.retries, up.retry_on)?;
    let passive_health = up
        .passive_health
        .map(|p| passive(&key.field("passive_health"), p))
        .transpose()?;
    let max_in_flight = match up.max_in_flight {
        None => None,
        Some(n) if n >= 1 => Some(n as u64),
        Some(_) => return Err(key.field("max_in_flight").invalid("must be at least 1")),
    };
    let names: Vec<&str> = backends.iter().map(|b| b.host.as_str()).collect();
    let tls = super::upstream_tls::upstream_tls(key, up.tls, &names)?;
    Ok(Upstream {
        discover,
        discovery,
        discovery_due,
        capacity,
        required: up.required.unwrap_or(true),
        tls,
        http2: up.http2.unwrap_or(false),
        strategy,
        backends,
        health_check,
        hash_key,
        sticky,
        retry,
        passive_health,
        max_in_flight,
        connect_timeout: key
            .field("connect_timeout")
            .duration(up.connect_timeout.as_deref(), Duration::from_secs(5))?,
        read_timeout: key
            .field("read_timeout")
            .duration(up.read_timeout.as_deref(), Duration::from_secs(60))?,
    })
}

fn hash_key(key: &Key, text: &str) -> Result<HashKey, Invalid> {
    Ok(match text.split_once(':') {
        None if text == "client_ip" => HashKey::ClientIp,
        None if text == "uri" => HashKey::Uri,
        Some(("header", name)) if is_token(name) => HashKey::Header(name.to_ascii_lowercase()),
        Some(("cookie", name)) if is_token(name) => HashKey::Cookie(name.to_string()),
        _ => {
            return Err(key.invalid(format!(
                "`{text}` is not one of client_ip, uri, header:<Name>, cookie:<name>"
            )))
        }
    })
}

fn sticky(key: &Key, s: FileSticky) -> Result<Sticky, Invalid> {
    let cookie = s.cookie.unwrap_or_else(|| "SWITCHYARD_STICKY".into());
    if !is_token(&cookie) {
        return Err(key
            .field("cookie")
            .invalid(format!("`{cookie}` is not a valid cookie name")));
    }
    Ok(Sticky {
        cookie,
        ttl: key
            .field("ttl")
            .duration(s.ttl.as_deref(), Duration::from_secs(3600))?,
        secret: s.secret.filter(|v| !v.is_empty()),
    })
}

/// `retries` and `retry_on` of the upstream at `key`.
fn retry(
    key: &Key,
    retries: Option<i64>,
    retry_on: Option<Vec<serde_yaml::Value>>,
) -> Result<RetryPolicy, Invalid> {
    let mut policy = RetryPolicy::default();
    if let Some(n) = retries {
        if !(0..=MAX_RETRIES).contains(&n) {
            return Err(key.field("retries").invalid(format!(
                "{n} is out of range; retries must be 0 to {MAX_RETRIES}"
            )));
        }
        policy.retries = n as u32;
    }
    let Some(items) = retry_on else {
        return Ok(policy);
    };
    policy.connect_failure = false;
    for (i, item) in items.iter().enumerate() {
        let code = match item {
            serde_yaml::Value::String(s) if s == "connect_failure" => {
                policy.connect_failure = true;
                continue;
            }
            serde_yaml::Value::String(s) if s == "timeout" => {
                policy.timeout = true;
                continue;
            }
            serde_yaml::Value::String(s) => s.parse::<u16>().ok(),
            serde_yaml::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            _ => None,
        };
        match code {
            Some(c) if (500..=599).contains(&c) => policy.statuses.push(c),
            _ => {
                return Err(key.field("retry_on").index(i).invalid(format!(
                    "`{}` is not connect_failure, timeout or a 5xx status",
                    serde_yaml::to_string(item).unwrap_or_default().trim()
                )))
            }
        }
    }
    Ok(policy)
}

fn passive(key: &Key, p: FilePassiveHealth) -> Result<PassiveHealth, Invalid> {
    Ok(PassiveHealth {
        consecutive_failures: key
            .field("consecutive_failures")
            .threshold(p.consecutive_failures, 5)?,
        ejection_time: key
            .field("ejection_time")
            .duration(p.ejection_time.as_deref(), Duration::from_secs(30))?,
    })
}

fn health_check(key: &Key, hc: FileHealthCheck) -> Result<HealthCheck, Invalid> {
    let kind = match hc.kind.as_deref().unwrap_or("http") {
        "http" => {
            let check_path = hc.path.unwrap_or_else(|| "/".into());
            if !check_path.starts_with('/') || check_path.contains(char::is_whitespace) {
                return Err(key.field("path").invalid(format!(
                    "`{check_path}` must start with / and hold no spaces"
                )));
            }
            if let Some(code) = hc.expect_status {
                if !(100..=599).contains(&code) {
                    return Err(key
                        .field("expect_status")
                        .invalid(format!("{code} is not an HTTP status")));
                }
            }
            CheckKind::Http {
                path: check_path,
                expect_status: hc.expect_status,
            }
        }
        "tcp" => {
            if hc.path.is_some() || hc.expect_status.is_some() {
                return Err(key.invalid("path and expect_status apply to http checks only"));
            }
            CheckKind::Tcp
        }
        other => {
            return Err(key.field("type").invalid(format!(
                "unknown check type `{other}`; expected http or tcp"
            )))
        }
    };
    Ok(HealthCheck {
        kind,
        interval: key
            .field("interval")
            .duration(hc.interval.as_deref(), Duration::from_secs(5))?,
        timeout: key
            .field("timeout")
            .duration(hc.timeout.as_deref(), Duration::from_secs(2))?,
        unhealthy_threshold: key
            .field("unhealthy_threshold")
            .threshold(hc.unhealthy_threshold, 3)?,
        healthy_threshold: key
            .field("healthy_threshold")
            .threshold(hc.healthy_threshold, 2)?,
    })
}
