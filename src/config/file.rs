//! The YAML file as written: serde structs that reject unknown keys, before any validation.
//! They serialize back to the same key tree, which reload diffs to name what changed.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Reads a duration or size field: a string, or a bare number kept as its text so that
/// validation can say which unit is missing.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        S(String),
        I(i64),
        F(f64),
    }
    Ok(Option::<Text>::deserialize(d)?.map(|t| match t {
        Text::S(s) => s,
        Text::I(i) => i.to_string(),
        Text::F(f) => f.to_string(),
    }))
}

/// The whole file. Every section but `upstreams` and `routes` may be left out.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: FileServer,
    #[serde(default)]
    pub admin: FileAdmin,
    #[serde(default)]
    pub cache: FileCache,
    pub compression: Option<FileCompression>,
    pub tls: Option<FileTls>,
    pub access_log: Option<FileAccessLog>,
    pub rate_limits: Option<FileRateLimits>,
    /// Service discovery settings for every upstream (each may override them).
    pub discovery: Option<FileDiscovery>,
    pub upstreams: BTreeMap<String, FileUpstream>,
    pub routes: Vec<FileRoute>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLog {
    pub enabled: Option<bool>,
    /// `stdout`, `stderr` or a file path.
    pub path: Option<String>,
    /// `json`, `combined` or a template with `$variables`.
    pub format: Option<String>,
    pub fields: Option<Vec<String>>,
    pub sample: Option<f64>,
    pub mask_query: Option<Vec<String>>,
    pub drop_query: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileCache {
    #[serde(default, deserialize_with = "text")]
    pub max_size: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub max_object_size: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub lock_timeout: Option<String>,
    pub redis: Option<FileRedis>,
    /// RFC 9213 targeted fields, first present wins.
    pub targeted_fields: Option<Vec<String>>,
    pub strip_targeted: Option<bool>,
    /// Fresh hits on HTTP/1.1 answered by the front end's direct path.
    pub direct_hits: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRedis {
    pub url: String,
    pub key_prefix: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub max_object_size: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub timeout: Option<String>,
    pub pool_size: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouteCache {
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "text")]
    pub default_ttl: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub max_ttl: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub stale_while_revalidate: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub stale_if_error: Option<String>,
    /// `bypass`, `ignore`, or a list of cookie names.
    pub cookies: Option<serde_yaml::Value>,
    pub client_cache_control: Option<String>,
    pub warm: Option<FileWarm>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileWarm {
    pub urls: Option<Vec<String>>,
    pub file: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub every: Option<String>,
    pub concurrency: Option<u32>,
    pub host: Option<String>,
    pub accept_encoding: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub listen: Option<Vec<String>>,
    pub threads: Option<usize>,
    #[serde(default, deserialize_with = "text")]
    pub grace_period: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub watch_config: Option<bool>,
    #[serde(default, deserialize_with = "text")]
    pub read_buffer: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub header_timeout: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub keepalive_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub max_connections_per_ip: Option<i64>,
    #[serde(default, deserialize_with = "text")]
    pub max_header_size: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub max_body_size: Option<String>,
    pub server_header: Option<String>,
    pub upgrade_socket: Option<String>,
    pub h2c: Option<bool>,
    pub h2_max_concurrent_streams: Option<i64>,
    pub proxy_protocol: Option<bool>,
    #[serde(default, deserialize_with = "text")]
    pub shutdown_delay: Option<String>,
    pub access: Option<FileAccess>,
    pub request_headers: Option<FileHeaderRules>,
    pub response_headers: Option<FileHeaderRules>,
    /// Status → file sent as the body of the proxy's own error answers.
    pub error_pages: Option<BTreeMap<u16, String>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub listen: Option<Vec<String>>,
    pub proxy_protocol: Option<bool>,
    pub certificates: Option<Vec<FileCertificate>>,
    pub default_certificate: Option<i64>,
    /// `"1.2"` or `"1.3"` (a bare YAML number is kept as its text).
    #[serde(default, deserialize_with = "text")]
    pub min_version: Option<String>,
    pub alpn: Option<Vec<String>>,
    pub watch: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileCertificate {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
    pub allow_insecure: Option<bool>,
    pub hosts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    pub strategy: Option<String>,
    pub backends: Vec<FileBackend>,
    pub health_check: Option<FileHealthCheck>,
    #[serde(default, deserialize_with = "text")]
    pub connect_timeout: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub read_timeout: Option<String>,
    pub hash_key: Option<String>,
    pub sticky: Option<FileSticky>,
    pub retries: Option<i64>,
    /// `connect_failure`, `timeout` or a 5xx status code.
    pub retry_on: Option<Vec<serde_yaml::Value>>,
    pub passive_health: Option<FilePassiveHealth>,
    pub max_in_flight: Option<i64>,
    /// `false`, `true`, or a block `{sni, verify, ca}`.
    pub tls: Option<serde_yaml::Value>,
    pub http2: Option<bool>,
    /// `/ready` waits for a healthy backend of this upstream (default true).
    pub required: Option<bool>,
    /// Service discovery settings over the top-level ones.
    pub discovery: Option<FileDiscovery>,
    /// How long a joining or recovering backend takes to reach its full weight.
    #[serde(default, deserialize_with = "text")]
    pub slow_start: Option<String>,
    /// Where requests wait while every backend is at its `max_conns`.
    pub queue: Option<FileQueue>,
    /// Idle upstream connections kept for reuse.
    pub keepalive: Option<FileKeepalive>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileQueue {
    pub size: Option<i64>,
    #[serde(default, deserialize_with = "text")]
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileKeepalive {
    pub idle: Option<i64>,
    #[serde(default, deserialize_with = "text")]
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSticky {
    pub cookie: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub ttl: Option<String>,
    pub secret: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilePassiveHealth {
    pub consecutive_failures: Option<i64>,
    #[serde(default, deserialize_with = "text")]
    pub ejection_time: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    /// `ip:port`, or `host:port` (re-resolved by discovery).
    pub address: Option<String>,
    /// Instead of `address`: `{dns, port}` or `{srv}`.
    pub discover: Option<FileDiscover>,
    pub weight: Option<i64>,
    pub backup: Option<bool>,
    /// Requests in flight to this backend at once.
    pub max_conns: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileDiscover {
    pub dns: Option<String>,
    pub port: Option<i64>,
    pub srv: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileDiscovery {
    #[serde(default, deserialize_with = "text")]
    pub min_ttl: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub max_ttl: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub timeout: Option<String>,
    pub nameservers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub path: Option<String>,
    pub expect_status: Option<u16>,
    #[serde(default, deserialize_with = "text")]
    pub interval: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub timeout: Option<String>,
    pub unhealthy_threshold: Option<i64>,
    pub healthy_threshold: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    /// The route's name in metrics, `/stats` and errors (default: host and path).
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: FileMatch,
    /// Required unless the route has a `redirect`.
    pub upstream: Option<String>,
    /// The route answers with a redirect itself.
    pub redirect: Option<FileRedirect>,
    /// The path sent upstream, rewritten by a regex.
    pub rewrite: Option<FileRewrite>,
    pub basic_auth: Option<FileBasicAuth>,
    /// Status → file, over `server.error_pages`.
    pub error_pages: Option<BTreeMap<u16, String>>,
    #[serde(default, deserialize_with = "text")]
    pub max_body_size: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub read_timeout: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub connect_timeout: Option<String>,
    pub cache: Option<FileRouteCache>,
    /// `false`, `true`, or a block overriding the global `compression`.
    pub compression: Option<serde_yaml::Value>,
    pub https_redirect: Option<bool>,
    pub hsts: Option<String>,
    pub access: Option<FileAccess>,
    pub rate_limit: Option<FileRateLimit>,
    /// Removed from the start of the path going upstream (`/v1`: `/v1/users` → `/users`).
    pub strip_prefix: Option<String>,
    /// The `Host` sent to the backend.
    pub upstream_host: Option<String>,
    pub request_headers: Option<FileHeaderRules>,
    pub response_headers: Option<FileHeaderRules>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileCompression {
    pub algorithms: Option<Vec<String>>,
    #[serde(default, deserialize_with = "text")]
    pub min_size: Option<String>,
    pub level: Option<FileLevels>,
    pub types: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileLevels {
    pub gzip: Option<i64>,
    pub br: Option<i64>,
    pub zstd: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileMatch {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub path_exact: Option<String>,
    pub path_regex: Option<String>,
    pub methods: Option<Vec<String>>,
    /// Field name → exact value, or `~regex`.
    pub headers: Option<BTreeMap<String, String>>,
    /// Query parameter → exact value, or `~regex`.
    pub query: Option<BTreeMap<String, String>>,
}

/// `access`: who may call a route (or the whole server).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccess {
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
}

/// `rate_limit` of a route.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimit {
    /// `100/s`, `600/m`, `1000/h`.
    pub rate: String,
    pub burst: Option<i64>,
    /// `client_ip`, `header:X-Api-Key`, `cookie:session` or `route`.
    pub key: Option<String>,
    /// `local` (each instance counts alone) or `cluster` (one budget shared through Redis).
    pub scope: Option<String>,
}

/// `rate_limits`: settings every route's `scope: cluster` limit shares.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimits {
    pub redis: Option<FileRateLimitRedis>,
}

/// `rate_limits.redis`: the Redis server cluster-scoped limits count in.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimitRedis {
    /// Defaults to `cache.redis.url`.
    pub url: Option<String>,
    pub key_prefix: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub timeout: Option<String>,
}

/// `request_headers` / `response_headers`: fields to set, add and remove.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileHeaderRules {
    pub set: Option<BTreeMap<String, String>>,
    pub add: Option<BTreeMap<String, String>>,
    pub remove: Option<Vec<String>>,
}

/// `redirect` of a route.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRedirect {
    /// A URL or path with `$host`, `$path`, `$request_uri`, `$query`, `$1`…`$9`, `$name`.
    pub to: String,
    /// 301, 302 (default), 303, 307 or 308.
    pub status: Option<u16>,
}

/// `rewrite` of a route.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRewrite {
    pub regex: String,
    pub to: String,
}

/// `basic_auth` of a route.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileBasicAuth {
    pub realm: String,
    /// htpasswd lines `user:hash` (bcrypt or argon2).
    pub users_file: String,
}
