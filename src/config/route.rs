//! `routes[]`: what a request matches (host, path prefix) and what the route does with it
//! (upstream, cache, compression).

use std::collections::BTreeMap;

use crate::compress;

use super::cache::{route_cache, RouteCache};
use super::compression;
use super::file::{FileCompression, FileRoute};
use super::key::{Invalid, Key};
use super::upstream::Upstream;

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
    /// Plain-HTTP requests get a 308 to the same URL on `https://`.
    pub https_redirect: bool,
    /// The `Strict-Transport-Security` value sent on HTTPS responses.
    pub hsts: Option<String>,
}

/// Validates `routes` against the upstreams they name and the global compression block.
pub(super) fn routes(
    raw: Vec<FileRoute>,
    upstreams: &BTreeMap<String, Upstream>,
    global_compression: Option<&FileCompression>,
) -> Result<Vec<Route>, Invalid> {
    let list = Key::root("routes");
    if raw.is_empty() {
        return Err(list.invalid("needs at least one route"));
    }
    if let Some(global) = global_compression {
        compression::check_global(global)?;
    }
    let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = list.index(i);
        if !upstreams.contains_key(&r.upstream) {
            let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            return Err(key.field("upstream").invalid(format!(
                "upstream `{}` is not defined (defined: {})",
                r.upstream,
                known.join(", ")
            )));
        }
        let matcher = key.field("match");
        let host = match r.matcher.host.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(h) => Some(host_match(&matcher.field("host"), h)?),
        };
        let path_prefix = r.matcher.path_prefix.unwrap_or_else(|| "/".into());
        if !path_prefix.starts_with('/') {
            return Err(matcher
                .field("path_prefix")
                .invalid(format!("`{path_prefix}` must start with /")));
        }
        if routes
            .iter()
            .any(|seen| seen.host == host && seen.path_prefix == path_prefix)
        {
            return Err(
                matcher.invalid("another route already matches the same host and path_prefix")
            );
        }
        let cache = match r.cache {
            Some(c) => {
                let exact = match &host {
                    Some(HostMatch::Exact(h)) => Some(h.as_str()),
                    _ => None,
                };
                route_cache(&key.field("cache"), c, exact)?
            }
            None => None,
        };
        let compression =
            compression::for_route(&key.field("compression"), r.compression, global_compression)?;
        let hsts = match r.hsts.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(v) if v.starts_with("max-age=") && v.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
                Some(v.to_string())
            }
            Some(v) => {
                return Err(key.field("hsts").invalid(format!(
                    "`{v}` is not a Strict-Transport-Security value like \"max-age=31536000; includeSubDomains\""
                )))
            }
        };
        routes.push(Route {
            host,
            path_prefix,
            upstream: r.upstream,
            cache,
            compression,
            https_redirect: r.https_redirect.unwrap_or(false),
            hsts,
        });
    }
    Ok(routes)
}

fn host_match(key: &Key, host: &str) -> Result<HostMatch, Invalid> {
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
        return Err(key.invalid(format!(
            "`{host}` is not a host name like api.example.com or *.example.com"
        )));
    }
    Ok(if wildcard {
        HostMatch::Wildcard(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}
