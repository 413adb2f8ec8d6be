//! `routes[]`: what a request matches (host, path prefix) and what the route does with it
//! (upstream, cache, compression).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::compress;

use super::auth::{self, BasicAuth};
use super::cache::{route_cache, RouteCache};
use super::compression;
use super::error_pages::{error_pages, ErrorPages};
use super::file::{FileCompression, FileMatch, FileRoute};
use super::key::{Invalid, Key};
use super::policy::{self, Access, HeaderRules, Pattern, RateLimit, ValueMatch};
use super::rewrite::{self, Redirect, Rewrite};
use super::upstream::Upstream;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `api.example.com`, compared without case and without port.
    Exact(String),
    /// `*.example.com`: stores `.example.com`; matches any name ending in it.
    Wildcard(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// `name`: the route's label in metrics and `/stats`.
    pub name: Option<String>,
    pub host: Option<HostMatch>,
    /// `/` when the route names no path; unused when `path_exact` is set.
    pub path_prefix: String,
    pub path_exact: Option<String>,
    pub path_regex: Option<Pattern>,
    /// Empty: any method.
    pub methods: Vec<http::Method>,
    /// Fields the request must carry, by name (lowercase) and value.
    pub headers: Vec<(http::HeaderName, ValueMatch)>,
    /// Query parameters the request must carry (percent-decoded), sorted by name.
    pub query: Vec<(String, ValueMatch)>,
    /// Empty when the route answers with a `redirect`.
    pub upstream: String,
    /// The route answers every request with this redirect; no upstream.
    pub redirect: Option<Redirect>,
    /// The path going upstream, rewritten (the cache key keeps the client's).
    pub rewrite: Option<Rewrite>,
    pub basic_auth: Option<BasicAuth>,
    /// Bodies of the proxy's own error answers on this route, over `server.error_pages`.
    pub error_pages: ErrorPages,
    /// Over `server.max_body_size`.
    pub max_body_size: Option<u64>,
    /// Over the upstream's `read_timeout`.
    pub read_timeout: Option<Duration>,
    /// Over the upstream's `connect_timeout`.
    pub connect_timeout: Option<Duration>,
    /// `None`: responses on this route are not cached.
    pub cache: Option<RouteCache>,
    /// `None`: responses on this route are not compressed.
    pub compression: Option<compress::Settings>,
    /// Plain-HTTP requests get a 308 to the same URL on `https://`.
    pub https_redirect: bool,
    /// The `Strict-Transport-Security` value sent on HTTPS responses.
    pub hsts: Option<String>,
    /// `access`; empty: everyone (after `server.access`).
    pub access: Access,
    pub rate_limit: Option<RateLimit>,
    /// Removed from the start of the path going upstream.
    pub strip_prefix: Option<String>,
    /// The `Host` sent to the backend (the cache key keeps the client's).
    pub upstream_host: Option<String>,
    pub request_headers: HeaderRules,
    pub response_headers: HeaderRules,
}

impl Route {
    /// What tells this route apart from another with the same path: how many request
    /// properties beyond host and path it requires.
    pub fn narrowing(&self) -> usize {
        usize::from(self.path_regex.is_some())
            + usize::from(!self.methods.is_empty())
            + self.headers.len()
            + self.query.len()
    }

    /// Whether no request could tell this route from `other`.
    fn same_match(&self, other: &Route) -> bool {
        self.host == other.host
            && self.path_exact == other.path_exact
            && (self.path_exact.is_some() || self.path_prefix == other.path_prefix)
            && self.path_regex == other.path_regex
            && self.methods == other.methods
            && self.headers == other.headers
            && self.query == other.query
    }
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
        let upstream = match (r.upstream, &r.redirect) {
            (Some(name), None) if upstreams.contains_key(&name) => name,
            (Some(name), None) => {
                let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                return Err(key.field("upstream").invalid(format!(
                    "upstream `{name}` is not defined (defined: {})",
                    known.join(", ")
                )));
            }
            (None, Some(_)) => String::new(),
            (Some(_), Some(_)) => {
                return Err(key
                    .field("redirect")
                    .invalid("a route either redirects or has an upstream, not both: remove one"))
            }
            (None, None) => {
                return Err(key
                    .field("upstream")
                    .invalid("missing: a route needs an `upstream` or a `redirect`"))
            }
        };
        if r.redirect.is_some() {
            let upstream_only = [
                ("cache", r.cache.is_some()),
                ("strip_prefix", r.strip_prefix.is_some()),
                ("upstream_host", r.upstream_host.is_some()),
                ("rewrite", r.rewrite.is_some()),
                ("request_headers", r.request_headers.is_some()),
                ("read_timeout", r.read_timeout.is_some()),
                ("connect_timeout", r.connect_timeout.is_some()),
                ("max_body_size", r.max_body_size.is_some()),
            ];
            if let Some((name, _)) = upstream_only.iter().find(|(_, set)| *set) {
                return Err(key.field(name).invalid(
                    "the route answers with a redirect, so no request goes upstream: remove it",
                ));
            }
        }
        if r.rewrite.is_some() && r.strip_prefix.is_some() {
            return Err(key.field("rewrite").invalid(
                "cannot be combined with strip_prefix: one rewrite says the whole upstream path (rewrite: { regex: \"^/v1(/.*)$\", to: \"$1\" } strips /v1)",
            ));
        }
        let name = match r.name.as_deref().map(str::trim) {
            None => None,
            Some(n)
                if !n.is_empty() && n.len() <= 100 && n.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(n.to_string())
            }
            Some(n) => {
                return Err(key
                    .field("name")
                    .invalid(format!("`{n}` must be 1 to 100 visible ASCII characters")))
            }
        };
        if let Some(n) = &name {
            if routes.iter().any(|seen| seen.name.as_ref() == Some(n)) {
                return Err(key
                    .field("name")
                    .invalid(format!("another route is named `{n}`")));
            }
        }
        let mut route = matching(&key.field("match"), r.matcher)?;
        if let Some(seen) = routes.iter().position(|seen| seen.same_match(&route)) {
            return Err(key.field("match").invalid(format!(
                "no request can tell this route from routes[{seen}]: add or change a host, path, method, header or query condition"
            )));
        }
        let cache = match r.cache {
            Some(c) => {
                let exact = match &route.host {
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
        route.name = name;
        route.upstream = upstream;
        route.cache = cache;
        route.compression = compression;
        route.https_redirect = r.https_redirect.unwrap_or(false);
        route.hsts = hsts;
        route.access = policy::access(&key.field("access"), r.access)?;
        route.rate_limit = match r.rate_limit {
            Some(raw) => Some(policy::rate_limit(&key.field("rate_limit"), raw)?),
            None => None,
        };
        route.strip_prefix = match r.strip_prefix.as_deref() {
            None => None,
            Some(p) if p.starts_with('/') && p.len() > 1 && !p.ends_with('/') => Some(p.into()),
            Some(p) => {
                return Err(key.field("strip_prefix").invalid(format!(
                    "`{p}` must start with / and not end with / (like /v1)"
                )))
            }
        };
        route.upstream_host = match r.upstream_host.as_deref().map(str::trim) {
            None => None,
            Some(h)
                if !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b)) =>
            {
                Some(h.to_ascii_lowercase())
            }
            Some(h) => {
                return Err(key.field("upstream_host").invalid(format!(
                    "`{h}` is not a host like api.internal or api.internal:8080"
                )))
            }
        };
        route.redirect = match r.redirect {
            Some(raw) => Some(rewrite::redirect(
                &key.field("redirect"),
                raw,
                route.path_regex.as_ref(),
            )?),
            None => None,
        };
        route.rewrite = match r.rewrite {
            Some(raw) => Some(rewrite::rewrite(&key.field("rewrite"), raw)?),
            None => None,
        };
        route.basic_auth = match r.basic_auth {
            Some(raw) => Some(auth::basic_auth(&key.field("basic_auth"), raw)?),
            None => None,
        };
        route.error_pages = error_pages(&key.field("error_pages"), r.error_pages)?;
        route.max_body_size = match r.max_body_size.as_deref() {
            Some(v) => Some(key.field("max_body_size").size(Some(v), 0)?),
            None => None,
        };
        route.read_timeout = match r.read_timeout.as_deref() {
            Some(v) => Some(
                key.field("read_timeout")
                    .duration(Some(v), Duration::ZERO)?,
            ),
            None => None,
        };
        route.connect_timeout = match r.connect_timeout.as_deref() {
            Some(v) => Some(
                key.field("connect_timeout")
                    .duration(Some(v), Duration::ZERO)?,
            ),
            None => None,
        };
        route.request_headers =
            policy::header_rules(&key.field("request_headers"), r.request_headers)?;
        route.response_headers =
            policy::header_rules(&key.field("response_headers"), r.response_headers)?;
        routes.push(route);
    }
    Ok(routes)
}

/// The `match` block: host, one kind of path, and the narrowing conditions.
fn matching(matcher: &Key, raw: FileMatch) -> Result<Route, Invalid> {
    let host = match raw.host.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(h) => Some(host_match(&matcher.field("host"), h)?),
    };
    let path = |name: &str, p: &str| -> Result<String, Invalid> {
        if !p.starts_with('/') {
            return Err(matcher
                .field(name)
                .invalid(format!("`{p}` must start with /")));
        }
        Ok(p.to_string())
    };
    let path_exact = match raw.path_exact.as_deref() {
        Some(_) if raw.path_prefix.is_some() || raw.path_regex.is_some() => {
            return Err(matcher
                .field("path_exact")
                .invalid("cannot be combined with path_prefix or path_regex"))
        }
        Some(p) => Some(path("path_exact", p)?),
        None => None,
    };
    let path_prefix = match raw.path_prefix.as_deref() {
        Some(p) => path("path_prefix", p)?,
        None => "/".into(),
    };
    let path_regex = match raw.path_regex.as_deref() {
        Some(re) => Some(Pattern::new(&matcher.field("path_regex"), re)?),
        None => None,
    };
    let mut methods = Vec::new();
    for (i, m) in raw.methods.unwrap_or_default().iter().enumerate() {
        let upper = m.trim().to_ascii_uppercase();
        let method = http::Method::from_bytes(upper.as_bytes()).map_err(|_| {
            matcher
                .field("methods")
                .index(i)
                .invalid(format!("`{m}` is not a method"))
        })?;
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut headers = Vec::new();
    for (name, value) in raw.headers.unwrap_or_default() {
        let at = matcher.field("headers").field(&name);
        let field = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| at.invalid(format!("`{name}` is not a field name")))?;
        headers.push((field, policy::value_match(&at, &value)?));
    }
    headers.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let mut query = Vec::new();
    for (name, value) in raw.query.unwrap_or_default() {
        let at = matcher.field("query").field(&name);
        query.push((name, policy::value_match(&at, &value)?));
    }
    Ok(Route {
        host,
        path_prefix,
        path_exact,
        path_regex,
        methods,
        headers,
        query,
        ..Route::default()
    })
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
