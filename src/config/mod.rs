//! Configuration: the YAML file (`file`) is read, expanded and checked here into a [`Config`]
//! that the rest of Switchyard trusts. Every error names the file, the key path and the reason.
//!
//! Two layers, as in River: [`file`] holds the serde structs as written, and one module per
//! section turns its part into the validated type ([`server`], [`admin`], [`upstream`],
//! [`route`] with [`rewrite`], [`auth`] and [`error_pages`], [`cache`], [`compression`], [`tls`],
//! [`access_log`], [`discovery`]), [`backends`] the backend entries; [`key`] tracks key paths for
//! their errors.

mod access_log;
mod admin;
mod auth;
mod backends;
mod cache;
mod capacity;
mod compression;
mod discovery;
mod error_pages;
mod file;
mod key;
mod policy;
mod rewrite;
mod route;
mod server;
mod tls;
pub mod units;
mod upstream;
mod upstream_tls;
mod warm;

use std::collections::BTreeMap;
use std::path::Path;

pub use access_log::{
    AccessLog, Field as LogField, LogFormat, LogTarget, Piece as LogPiece, Var as LogVar,
};
pub use admin::Admin;
pub use auth::{BasicAuth, PasswordHash};
pub use backends::{BackendSpec, DiscoverSpec, MAX_WEIGHT};
pub use cache::{
    Cache, ClientCacheControl, CookiePolicy, RedisTier, RouteCache, MAX_OBJECT_SIZE_LIMIT,
};
pub use capacity::{Capacity, Keepalive, Queue};
pub use discovery::Discovery;
pub use error_pages::{ErrorPage, ErrorPages, MAX_ERROR_PAGE};
pub use policy::{
    Access, ClusterRedis, HeaderRules, Part, Pattern, RateKey, RateLimit, Scope, Template,
    ValueMatch,
};
pub use rewrite::{Redirect, Rewrite, UrlPart, UrlTemplate};
pub use route::{HostMatch, Route};
pub use server::Server;
pub use tls::{Alpn, Tls, TlsVersion};
pub use upstream::{
    CheckKind, HashKey, HealthCheck, PassiveHealth, RetryPolicy, Sticky, Strategy, Upstream,
    MAX_RETRIES,
};
pub use upstream_tls::{ClientIdentity, UpstreamTls};
pub use warm::Warm;

use file::FileConfig;
use key::{Invalid, Key};
use units::expand_env;

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
    /// `None`: no TLS listener.
    pub tls: Option<Tls>,
    pub access_log: AccessLog,
    /// Where `scope: cluster` rate limits count; `None` when no route has one.
    pub rate_limits: Option<ClusterRedis>,
    /// The file as read (environment expanded), as the key tree of [`file::FileConfig`]:
    /// reload compares two of them key by key to name what changed.
    pub source: std::sync::Arc<serde_json::Value>,
}

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
        let mut config = validate(raw).map_err(|e| err(&e.path, e.reason))?;
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

/// Each section in turn, in the order a reader of the file meets them.
fn validate(raw: FileConfig) -> Result<Config, Invalid> {
    let server = Server::try_from(raw.server)?;
    let admin = Admin::try_from(raw.admin)?;
    let list = Key::root("upstreams");
    if raw.upstreams.is_empty() {
        return Err(list.invalid("needs at least one upstream"));
    }
    let discovery = discovery::settings(
        &Key::root("discovery"),
        raw.discovery,
        &Discovery::default(),
    )?;
    let mut upstreams = BTreeMap::new();
    for (name, up) in raw.upstreams {
        let upstream = upstream::upstream(&list.field(&name), up, &discovery)?;
        upstreams.insert(name, upstream);
    }
    let routes = route::routes(raw.routes, &upstreams, raw.compression.as_ref())?;
    let cache = Cache::try_from(raw.cache)?;
    let first_cluster_route = routes.iter().position(|r| {
        r.rate_limit
            .as_ref()
            .is_some_and(|l| l.scope == Scope::Cluster)
    });
    let rate_limits =
        policy::cluster_redis(raw.rate_limits, cache.redis.as_ref(), first_cluster_route)?;
    let tls = match raw.tls {
        Some(raw) => {
            let tls = tls::tls(raw)?;
            tls::check_ports(&tls, &server.listen, admin.listen)?;
            Some(tls)
        }
        None => None,
    };
    let access_log = AccessLog::try_from(raw.access_log)?;
    Ok(Config {
        access_log,
        rate_limits,
        source: Default::default(),
        tls,
        server,
        admin,
        cache,
        upstreams,
        routes,
    })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_capacity;
