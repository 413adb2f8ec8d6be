//! Configuration: the YAML file (`file`) is read, expanded and checked here into a [`Config`]
//! that the rest of Switchyard trusts. Every error names the file, the key path and the reason.

mod file;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use crate::compress::{self, Algorithm};
use file::{
    FileCache, FileCompression, FileConfig, FileHealthCheck, FilePassiveHealth, FileRouteCache,
    FileSticky, FileUpstream,
};
use units::{expand_env, parse_duration, parse_size};

/// A configuration that failed to load: `<file>: <key path>: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {path}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub path: String,
    pub reason: String,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: Server,
    pub admin: Admin,
    pub cache: Cache,
    pub upstreams: BTreeMap<String, Upstream>,
    pub routes: Vec<Route>,
    /// The file as read (environment expanded), as the key tree of [`file::FileConfig`]:
    /// reload compares two of them key by key to name what changed.
    pub source: std::sync::Arc<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Addresses to accept clients on; port 0 picks a free port at start.
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub grace_period: Duration,
    pub trusted_proxies: Vec<IpNet>,
    /// Reload when the config file changes.
    pub watch_config: bool,
    /// Read buffer per client connection, in bytes (Pingora's default is 64 KiB; most of it
    /// sits unused on idle keep-alive connections).
    pub read_buffer: usize,
    /// Longest wait for each read of a request header (slow clients are closed).
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection waits for its next request.
    pub keepalive_timeout: Duration,
    /// Client connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Largest request header (request line and fields); larger gets 431.
    pub max_header_size: u64,
    /// Largest request body; larger gets 413.
    pub max_body_size: u64,
    /// The `Server` header on every response; `None` keeps the upstream's.
    pub server_header: Option<String>,
    /// The socket a graceful upgrade hands the listeners over on; `None`: a name derived from
    /// the config file's path in a private runtime directory (see `app::upgrade`).
    pub upgrade_socket: Option<std::path::PathBuf>,
}

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
}

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
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Bearer token required on every admin path but `/health`; `None` when unset or empty.
    pub token: Option<String>,
    /// Allows a non-loopback admin address without a token.
    pub allow_insecure: bool,
    /// More names a request's `Host` may give besides the listen address and `localhost`
    /// (lowercase, each a host name or `name:port`).
    pub hosts: Vec<String>,
}

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// The address as written in the file (shown in stats and metrics).
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `api.example.com`, compared without case and without port.
    Exact(String),
    /// `*.example.com`: stores `.example.com`; matches any name ending in it.
    Wildcard(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub host: Option<HostMatch>,
    pub path_prefix: String,
    pub upstream: String,
    /// `None`: responses on this route are not cached.
    pub cache: Option<RouteCache>,
    /// `None`: responses on this route are not compressed.
    pub compression: Option<compress::Settings>,
}

/// Highest weight accepted; the round-robin schedule holds one slot per unit of weight.
pub const MAX_WEIGHT: i64 = 1000;

/// Most retries an upstream may ask for.
pub const MAX_RETRIES: i64 = 10;

impl Config {
    /// Reads, expands and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            path: "(file)".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates YAML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let err = |path: &str, reason: String| ConfigError {
            file: file.to_string(),
            path: path.to_string(),
            reason,
        };
        let mut doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "(document)".into());
            err(&at, format!("invalid YAML: {e}"))
        })?;
        if doc.is_null() {
            return Err(err("(document)", "the file is empty".into()));
        }
        for name in expand_strings(&mut doc) {
            log::warn!("{file}: environment variable {name} is not set; it expands to \"\"");
        }
        let raw: FileConfig = serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." {
                "(document)".into()
            } else {
                path
            };
            err(&path, e.into_inner().to_string())
        })?;
        // Cannot fail: the file structs have string keys only.
        let source = serde_json::to_value(&raw).unwrap_or_default();
        let mut config = validate(raw).map_err(|(path, reason)| err(&path, reason))?;
        config.source = std::sync::Arc::new(source);
        Ok(config)
    }
}

/// Replaces `${NAME}` in every string value (not keys); returns the unset names.
fn expand_strings(value: &mut serde_yaml::Value) -> Vec<String> {
    let lookup = |name: &str| std::env::var(name).ok();
    let mut missing = Vec::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            serde_yaml::Value::String(s) if s.contains("${") => {
                let (expanded, unset) = expand_env(s, &lookup);
                *s = expanded;
                missing.extend(unset);
            }
            serde_yaml::Value::Sequence(items) => stack.extend(items.iter_mut()),
            serde_yaml::Value::Mapping(map) => stack.extend(map.iter_mut().map(|(_, v)| v)),
            serde_yaml::Value::Tagged(tagged) => stack.push(&mut tagged.value),
            _ => {}
        }
    }
    missing
}

type Invalid = (String, String);

fn invalid(path: impl Into<String>, reason: impl fmt::Display) -> Invalid {
    (path.into(), reason.to_string())
}

fn duration(path: &str, value: Option<&str>, default: Duration) -> Result<Duration, Invalid> {
    match value {
        None => Ok(default),
        Some(v) => {
            let d = parse_duration(v).map_err(|e| invalid(path, e))?;
            if d.is_zero() {
                return Err(invalid(path, "must be greater than 0"));
            }
            Ok(d)
        }
    }
}

fn socket_addr(path: &str, text: &str) -> Result<SocketAddr, Invalid> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(invalid(
            path,
            format!("`{text}` is not an address like 127.0.0.1:9001 or host:port"),
        ));
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| invalid(path, format!("`{text}` resolves to no address"))),
        Err(e) => Err(invalid(
            path,
            format!("`{text}` is not a valid address: {e}"),
        )),
    }
}

fn threshold(path: &str, value: Option<i64>, default: u32) -> Result<u32, Invalid> {
    match value {
        None => Ok(default),
        Some(v) if v < 1 => Err(invalid(path, "must be at least 1")),
        Some(v) => u32::try_from(v).map_err(|_| invalid(path, "is too large")),
    }
}

/// `admin.hosts`: names as they appear in a `Host` header, lowercased.
fn admin_hosts(hosts: Vec<String>) -> Result<Vec<String>, Invalid> {
    hosts
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            let h = h.trim().to_ascii_lowercase();
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic()) || h.contains(['/', '@'])
            {
                Err(invalid(
                    format!("admin.hosts[{i}]"),
                    format!("`{h}` is not a host name (like admin.example.com or admin.example.com:9901)"),
                ))
            } else {
                Ok(h)
            }
        })
        .collect()
}

fn validate(raw: FileConfig) -> Result<Config, Invalid> {
    let threads_default = std::thread::available_parallelism().map_or(1, |n| n.get());
    let listen = raw
        .server
        .listen
        .unwrap_or_else(|| vec!["0.0.0.0:8080".into()]);
    if listen.is_empty() {
        return Err(invalid("server.listen", "needs at least one address"));
    }
    let listen = listen
        .iter()
        .enumerate()
        .map(|(i, a)| socket_addr(&format!("server.listen[{i}]"), a))
        .collect::<Result<Vec<_>, _>>()?;
    let threads = match raw.server.threads {
        Some(0) => return Err(invalid("server.threads", "must be at least 1")),
        Some(n) => n,
        None => threads_default,
    };
    let grace_period = duration(
        "server.grace_period",
        raw.server.grace_period.as_deref(),
        Duration::from_secs(10),
    )?;
    let trusted_proxies = raw
        .server
        .trusted_proxies
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, text)| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    invalid(
                        format!("server.trusted_proxies[{i}]"),
                        format!("`{text}` is not an IP address or CIDR like 10.0.0.0/8"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let admin = Admin {
        listen: socket_addr(
            "admin.listen",
            raw.admin.listen.as_deref().unwrap_or("127.0.0.1:9901"),
        )?,
        token: raw.admin.token.filter(|t| !t.is_empty()),
        allow_insecure: raw.admin.allow_insecure.unwrap_or(false),
        hosts: admin_hosts(raw.admin.hosts.unwrap_or_default())?,
    };
    if !admin.listen.ip().is_loopback() && admin.token.is_none() && !admin.allow_insecure {
        return Err(invalid(
            "admin.listen",
            format!(
                "{} is reachable from other hosts but admin.token is not set; set a token or admin.allow_insecure: true",
                admin.listen
            ),
        ));
    }

    if raw.upstreams.is_empty() {
        return Err(invalid("upstreams", "needs at least one upstream"));
    }
    let mut upstreams = BTreeMap::new();
    for (name, up) in raw.upstreams {
        let upstream = validate_upstream(&format!("upstreams.{name}"), up)?;
        upstreams.insert(name, upstream);
    }

    if raw.routes.is_empty() {
        return Err(invalid("routes", "needs at least one route"));
    }
    let global_compression = raw.compression.clone();
    if let Some(global) = &global_compression {
        // Validate the global block on its own, so errors name its path.
        compression("compression", None, global)?;
    }
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.into_iter().enumerate() {
        let path = format!("routes[{i}]");
        if !upstreams.contains_key(&r.upstream) {
            let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            return Err(invalid(
                format!("{path}.upstream"),
                format!(
                    "upstream `{}` is not defined (defined: {})",
                    r.upstream,
                    known.join(", ")
                ),
            ));
        }
        let host = match r.matcher.host.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(h) => Some(host_match(&format!("{path}.match.host"), h)?),
        };
        let path_prefix = r.matcher.path_prefix.unwrap_or_else(|| "/".into());
        if !path_prefix.starts_with('/') {
            return Err(invalid(
                format!("{path}.match.path_prefix"),
                format!("`{path_prefix}` must start with /"),
            ));
        }
        if routes
            .iter()
            .any(|seen: &Route| seen.host == host && seen.path_prefix == path_prefix)
        {
            return Err(invalid(
                format!("{path}.match"),
                "another route already matches the same host and path_prefix",
            ));
        }
        let cache = match r.cache {
            Some(c) => validate_route_cache(&format!("{path}.cache"), c)?,
            None => None,
        };
        let cpath = format!("{path}.compression");
        let compression = match (r.compression, &global_compression) {
            (None, None) | (Some(serde_yaml::Value::Bool(false)), _) => None,
            (None, Some(global)) => Some(compression("compression", None, global)?),
            (Some(serde_yaml::Value::Bool(true)), global) => Some(compression(
                "compression",
                None,
                &global.clone().unwrap_or_default(),
            )?),
            (Some(block @ serde_yaml::Value::Mapping(_)), global) => {
                let own: FileCompression =
                    serde_path_to_error::deserialize(block).map_err(|e| {
                        let inner = e.path().to_string();
                        let at = if inner == "." {
                            cpath.clone()
                        } else {
                            format!("{cpath}.{inner}")
                        };
                        invalid(at, e.into_inner())
                    })?;
                Some(compression(&cpath, global.as_ref(), &own)?)
            }
            (Some(_), _) => {
                return Err(invalid(
                    cpath,
                    "expected false, true or a compression block",
                ))
            }
        };
        routes.push(Route {
            host,
            path_prefix,
            upstream: r.upstream,
            cache,
            compression,
        });
    }

    let cache = validate_cache(raw.cache)?;
    let read_buffer = size(
        "server.read_buffer",
        raw.server.read_buffer.as_deref(),
        4 << 10,
    )?;
    if !(1024..=(1 << 20)).contains(&read_buffer) {
        return Err(invalid(
            "server.read_buffer",
            "must be between 1KiB and 1MiB",
        ));
    }
    let read_buffer = read_buffer as usize;
    let max_connections = match raw.server.max_connections {
        None => 10_000,
        Some(n) if n >= 1 => n as usize,
        Some(_) => return Err(invalid("server.max_connections", "must be at least 1")),
    };
    let server_header = match raw.server.server_header {
        None => Some("switchyard".to_string()),
        Some(h) if h.is_empty() => None,
        Some(h) if h.bytes().all(|b| (0x20..0x7f).contains(&b)) => Some(h),
        Some(_) => return Err(invalid("server.server_header", "must be printable ASCII")),
    };

    let upgrade_socket = match raw.server.upgrade_socket {
        None => None,
        // sun_path holds 108 bytes with the terminating NUL.
        Some(p) if p.is_empty() || p.len() > 107 || p.ends_with('/') => {
            return Err(invalid(
                "server.upgrade_socket",
                "must be a file path of 1 to 107 bytes (a Unix socket path)",
            ))
        }
        Some(p) => Some(std::path::PathBuf::from(p)),
    };

    Ok(Config {
        source: Default::default(),
        cache,
        server: Server {
            listen,
            threads,
            grace_period,
            trusted_proxies,
            watch_config: raw.server.watch_config.unwrap_or(false),
            read_buffer,
            header_timeout: duration(
                "server.header_timeout",
                raw.server.header_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            keepalive_timeout: duration(
                "server.keepalive_timeout",
                raw.server.keepalive_timeout.as_deref(),
                Duration::from_secs(60),
            )?,
            max_connections,
            max_header_size: size(
                "server.max_header_size",
                raw.server.max_header_size.as_deref(),
                64 << 10,
            )?,
            max_body_size: size(
                "server.max_body_size",
                raw.server.max_body_size.as_deref(),
                16 << 20,
            )?,
            server_header,
            upgrade_socket,
        },
        admin,
        upstreams,
        routes,
    })
}

fn size(path: &str, value: Option<&str>, default: u64) -> Result<u64, Invalid> {
    match value {
        None => Ok(default),
        Some(v) => {
            let n = parse_size(v).map_err(|e| invalid(path, e))?;
            if n == 0 {
                return Err(invalid(path, "must be greater than 0"));
            }
            Ok(n)
        }
    }
}

/// Largest object the memory cache stores (its eviction weights are 16-bit).
pub const MAX_OBJECT_SIZE_LIMIT: u64 = 1 << 30;

fn validate_cache(c: FileCache) -> Result<Cache, Invalid> {
    let max_size = size("cache.max_size", c.max_size.as_deref(), 256 << 20)?;
    let max_object_size = size(
        "cache.max_object_size",
        c.max_object_size.as_deref(),
        8 << 20,
    )?;
    if max_object_size > MAX_OBJECT_SIZE_LIMIT {
        return Err(invalid(
            "cache.max_object_size",
            format!("{max_object_size} is above the limit of 1GiB"),
        ));
    }
    if max_object_size > max_size {
        return Err(invalid(
            "cache.max_object_size",
            "must not be larger than cache.max_size",
        ));
    }
    let redis = c.redis.map(validate_redis).transpose()?;
    Ok(Cache {
        max_size,
        max_object_size,
        lock_timeout: duration(
            "cache.lock_timeout",
            c.lock_timeout.as_deref(),
            Duration::from_secs(2),
        )?,
        redis,
    })
}

fn validate_redis(r: file::FileRedis) -> Result<RedisTier, Invalid> {
    let url = r.url.trim().to_string();
    let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| url.starts_with(s));
    if !scheme_ok {
        return Err(invalid(
            "cache.redis.url",
            format!("`{url}` is not a redis:// or rediss:// URL"),
        ));
    }
    if let Err(e) = redis::Client::open(url.as_str()) {
        return Err(invalid("cache.redis.url", e));
    }
    let pool_size = match r.pool_size {
        None => 16,
        Some(n) if (1..=256).contains(&n) => n as usize,
        Some(n) => {
            return Err(invalid(
                "cache.redis.pool_size",
                format!("{n} is out of range 1..=256"),
            ))
        }
    };
    Ok(RedisTier {
        url,
        key_prefix: r.key_prefix.unwrap_or_else(|| "switchyard:".into()),
        max_object_size: size(
            "cache.redis.max_object_size",
            r.max_object_size.as_deref(),
            1 << 20,
        )?,
        timeout: duration(
            "cache.redis.timeout",
            r.timeout.as_deref(),
            Duration::from_millis(50),
        )?,
        pool_size,
    })
}

fn validate_route_cache(path: &str, c: FileRouteCache) -> Result<Option<RouteCache>, Invalid> {
    if c.enabled == Some(false) {
        return Ok(None);
    }
    let optional = |key: &str, value: Option<&str>| -> Result<Option<Duration>, Invalid> {
        value
            .map(|v| duration(&format!("{path}.{key}"), Some(v), Duration::ZERO))
            .transpose()
    };
    let window = |key: &str, value: Option<&str>| -> Result<Duration, Invalid> {
        match value {
            None => Ok(Duration::ZERO),
            Some(v) => parse_duration(v).map_err(|e| invalid(format!("{path}.{key}"), e)),
        }
    };
    Ok(Some(RouteCache {
        default_ttl: optional("default_ttl", c.default_ttl.as_deref())?,
        max_ttl: optional("max_ttl", c.max_ttl.as_deref())?,
        stale_while_revalidate: window(
            "stale_while_revalidate",
            c.stale_while_revalidate.as_deref(),
        )?,
        stale_if_error: window("stale_if_error", c.stale_if_error.as_deref())?,
    }))
}

/// Compression settings: built-in defaults, then `base` (the global block), then `own`.
fn compression(
    path: &str,
    base: Option<&FileCompression>,
    own: &FileCompression,
) -> Result<compress::Settings, Invalid> {
    let mut settings = compress::Settings::default();
    for (layer, layer_path) in [(base, "compression"), (Some(own), path)] {
        let Some(layer) = layer else { continue };
        if let Some(names) = &layer.algorithms {
            let mut algorithms = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let alg = Algorithm::from_name(&name.to_ascii_lowercase()).ok_or_else(|| {
                    invalid(
                        format!("{layer_path}.algorithms[{i}]"),
                        format!("unknown algorithm `{name}`; expected br, zstd or gzip"),
                    )
                })?;
                if !algorithms.contains(&alg) {
                    algorithms.push(alg);
                }
            }
            settings.algorithms = algorithms;
        }
        if let Some(min) = layer.min_size.as_deref() {
            settings.min_size =
                parse_size(min).map_err(|e| invalid(format!("{layer_path}.min_size"), e))?;
        }
        if let Some(level) = &layer.level {
            let check =
                |key: &str, value: Option<i64>, range: std::ops::RangeInclusive<i64>| match value {
                    Some(v) if !range.contains(&v) => Err(invalid(
                        format!("{layer_path}.level.{key}"),
                        format!("{v} is out of range {}..={}", range.start(), range.end()),
                    )),
                    other => Ok(other),
                };
            if let Some(v) = check("gzip", level.gzip, 1..=9)? {
                settings.levels.gzip = v as u32;
            }
            if let Some(v) = check("br", level.br, 0..=11)? {
                settings.levels.br = v as u32;
            }
            if let Some(v) = check("zstd", level.zstd, 1..=22)? {
                settings.levels.zstd = v as i32;
            }
        }
        if let Some(types) = &layer.types {
            for (i, t) in types.iter().enumerate() {
                let valid = t
                    .split_once('/')
                    .is_some_and(|(a, b)| is_token(a) && (b == "*" || is_token(b)));
                if !valid {
                    return Err(invalid(
                        format!("{layer_path}.types[{i}]"),
                        format!("`{t}` is not a media type like text/html or text/*"),
                    ));
                }
            }
            settings.types = types.iter().map(|t| t.to_ascii_lowercase()).collect();
        }
    }
    Ok(settings)
}

fn host_match(path: &str, host: &str) -> Result<HostMatch, Invalid> {
    let host = host.to_ascii_lowercase();
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !valid {
        return Err(invalid(
            path,
            format!("`{host}` is not a host name like api.example.com or *.example.com"),
        ));
    }
    Ok(if wildcard {
        HostMatch::Wildcard(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

fn validate_upstream(path: &str, up: FileUpstream) -> Result<Upstream, Invalid> {
    let strategy = match up.strategy.as_deref().unwrap_or("round_robin") {
        "round_robin" | "weighted" => Strategy::RoundRobin,
        "least_connections" => Strategy::LeastConnections,
        "ip_hash" => Strategy::IpHash,
        other => {
            return Err(invalid(
                format!("{path}.strategy"),
                format!(
                    "unknown strategy `{other}`; expected round_robin, weighted, least_connections or ip_hash"
                ),
            ))
        }
    };
    if up.backends.is_empty() {
        return Err(invalid(
            format!("{path}.backends"),
            "needs at least one backend",
        ));
    }
    let mut backends: Vec<BackendSpec> = Vec::with_capacity(up.backends.len());
    for (i, b) in up.backends.iter().enumerate() {
        let bpath = format!("{path}.backends[{i}]");
        let addr = socket_addr(&format!("{bpath}.address"), b.address.trim())?;
        let weight = match b.weight {
            None => 1,
            Some(w) if (1..=MAX_WEIGHT).contains(&w) => w as u32,
            Some(w) => {
                return Err(invalid(
                    format!("{bpath}.weight"),
                    format!("{w} is out of range; weight must be 1 to {MAX_WEIGHT}"),
                ))
            }
        };
        let name = b.address.trim().to_string();
        if backends.iter().any(|seen| seen.name == name) {
            return Err(invalid(
                format!("{bpath}.address"),
                format!("`{name}` is listed twice in this upstream"),
            ));
        }
        backends.push(BackendSpec { name, addr, weight });
    }
    let health_check = up
        .health_check
        .map(|hc| validate_health(&format!("{path}.health_check"), hc))
        .transpose()?;
    let hash_key = match up.hash_key.as_deref() {
        None => HashKey::ClientIp,
        Some(_) if strategy != Strategy::IpHash => {
            return Err(invalid(
                format!("{path}.hash_key"),
                "applies to strategy ip_hash only",
            ))
        }
        Some(text) => hash_key(&format!("{path}.hash_key"), text)?,
    };
    let sticky = up
        .sticky
        .map(|s| validate_sticky(&format!("{path}.sticky"), s))
        .transpose()?;
    let retry = validate_retry(path, up.retries, up.retry_on)?;
    let passive_health = up
        .passive_health
        .map(|p| validate_passive(&format!("{path}.passive_health"), p))
        .transpose()?;
    let max_in_flight = match up.max_in_flight {
        None => None,
        Some(n) if n >= 1 => Some(n as u64),
        Some(_) => {
            return Err(invalid(
                format!("{path}.max_in_flight"),
                "must be at least 1",
            ))
        }
    };
    Ok(Upstream {
        strategy,
        backends,
        health_check,
        hash_key,
        sticky,
        retry,
        passive_health,
        max_in_flight,
        connect_timeout: duration(
            &format!("{path}.connect_timeout"),
            up.connect_timeout.as_deref(),
            Duration::from_secs(5),
        )?,
        read_timeout: duration(
            &format!("{path}.read_timeout"),
            up.read_timeout.as_deref(),
            Duration::from_secs(60),
        )?,
    })
}

fn hash_key(path: &str, text: &str) -> Result<HashKey, Invalid> {
    let key = match text.split_once(':') {
        None if text == "client_ip" => HashKey::ClientIp,
        None if text == "uri" => HashKey::Uri,
        Some(("header", name)) if is_token(name) => HashKey::Header(name.to_ascii_lowercase()),
        Some(("cookie", name)) if is_token(name) => HashKey::Cookie(name.to_string()),
        _ => {
            return Err(invalid(
                path,
                format!("`{text}` is not one of client_ip, uri, header:<Name>, cookie:<name>"),
            ))
        }
    };
    Ok(key)
}

/// An HTTP token (RFC 9110 §5.6.2): header and cookie names.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn validate_sticky(path: &str, s: FileSticky) -> Result<Sticky, Invalid> {
    let cookie = s.cookie.unwrap_or_else(|| "SWITCHYARD_STICKY".into());
    if !is_token(&cookie) {
        return Err(invalid(
            format!("{path}.cookie"),
            format!("`{cookie}` is not a valid cookie name"),
        ));
    }
    Ok(Sticky {
        cookie,
        ttl: duration(
            &format!("{path}.ttl"),
            s.ttl.as_deref(),
            Duration::from_secs(3600),
        )?,
        secret: s.secret.filter(|v| !v.is_empty()),
    })
}

fn validate_retry(
    path: &str,
    retries: Option<i64>,
    retry_on: Option<Vec<serde_yaml::Value>>,
) -> Result<RetryPolicy, Invalid> {
    let mut policy = RetryPolicy::default();
    if let Some(n) = retries {
        if !(0..=MAX_RETRIES).contains(&n) {
            return Err(invalid(
                format!("{path}.retries"),
                format!("{n} is out of range; retries must be 0 to {MAX_RETRIES}"),
            ));
        }
        policy.retries = n as u32;
    }
    if let Some(items) = retry_on {
        policy.connect_failure = false;
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}.retry_on[{i}]");
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
                    return Err(invalid(
                        ipath,
                        format!(
                            "`{}` is not connect_failure, timeout or a 5xx status",
                            serde_yaml::to_string(item).unwrap_or_default().trim()
                        ),
                    ))
                }
            }
        }
    }
    Ok(policy)
}

fn validate_passive(path: &str, p: FilePassiveHealth) -> Result<PassiveHealth, Invalid> {
    Ok(PassiveHealth {
        consecutive_failures: threshold(
            &format!("{path}.consecutive_failures"),
            p.consecutive_failures,
            5,
        )?,
        ejection_time: duration(
            &format!("{path}.ejection_time"),
            p.ejection_time.as_deref(),
            Duration::from_secs(30),
        )?,
    })
}

fn validate_health(path: &str, hc: FileHealthCheck) -> Result<HealthCheck, Invalid> {
    let kind = match hc.kind.as_deref().unwrap_or("http") {
        "http" => {
            let check_path = hc.path.unwrap_or_else(|| "/".into());
            if !check_path.starts_with('/') || check_path.contains(char::is_whitespace) {
                return Err(invalid(
                    format!("{path}.path"),
                    format!("`{check_path}` must start with / and hold no spaces"),
                ));
            }
            if let Some(code) = hc.expect_status {
                if !(100..=599).contains(&code) {
                    return Err(invalid(
                        format!("{path}.expect_status"),
                        format!("{code} is not an HTTP status"),
                    ));
                }
            }
            CheckKind::Http {
                path: check_path,
                expect_status: hc.expect_status,
            }
        }
        "tcp" => {
            if hc.path.is_some() || hc.expect_status.is_some() {
                return Err(invalid(
                    path,
                    "path and expect_status apply to http checks only",
                ));
            }
            CheckKind::Tcp
        }
        other => {
            return Err(invalid(
                format!("{path}.type"),
                format!("unknown check type `{other}`; expected http or tcp"),
            ))
        }
    };
    let interval = duration(
        &format!("{path}.interval"),
        hc.interval.as_deref(),
        Duration::from_secs(5),
    )?;
    let timeout = duration(
        &format!("{path}.timeout"),
        hc.timeout.as_deref(),
        Duration::from_secs(2),
    )?;
    Ok(HealthCheck {
        kind,
        interval,
        timeout,
        unhealthy_threshold: threshold(
            &format!("{path}.unhealthy_threshold"),
            hc.unhealthy_threshold,
            3,
        )?,
        healthy_threshold: threshold(
            &format!("{path}.healthy_threshold"),
            hc.healthy_threshold,
            2,
        )?,
    })
}

#[cfg(test)]
mod tests;
