//! Routing: pick the route for a request by Host (exact, then `*.wildcard`, then any), then by
//! path (exact, then the longest prefix; a `path_regex` narrows like a condition), then by the
//! narrowing conditions (regex, methods, headers, query): more of them first, then file order.

use http::{HeaderMap, Method};

use crate::config::{HostMatch, Route};

/// What routing looks at in a request; `path` is already normalised.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

/// Routes in match order (see the module documentation).
#[derive(Debug)]
pub struct Router {
    routes: Vec<(usize, Route)>,
    /// Some route matches on request header fields.
    matches_headers: bool,
    /// Some route caches.
    caches: bool,
}

impl Router {
    pub fn new(routes: &[Route]) -> Router {
        let mut routes: Vec<(usize, Route)> = routes.iter().cloned().enumerate().collect();
        // A stable sort: equal keys keep file order.
        routes.sort_by_key(|(_, r)| {
            let path = match &r.path_exact {
                Some(p) => (1, p.len()),
                None => (0, r.path_prefix.len()),
            };
            std::cmp::Reverse((host_rank(r.host.as_ref()), path, r.narrowing()))
        });
        Router {
            matches_headers: routes.iter().any(|(_, r)| !r.headers.is_empty()),
            caches: routes.iter().any(|(_, r)| r.cache.is_some()),
            routes,
        }
    }

    /// Whether a route matches on request header fields (else `Request::headers` is unread).
    pub fn matches_headers(&self) -> bool {
        self.matches_headers
    }

    /// Whether a route caches.
    pub fn caches(&self) -> bool {
        self.caches
    }

    /// The index (in config order) and route for a request (host in any case, port allowed).
    pub fn find(&self, req: &Request<'_>) -> Option<(usize, &Route)> {
        let host = strip_port(req.host);
        self.routes
            .iter()
            .find(|(_, r)| host_matches(r.host.as_ref(), host) && matches(r, req))
            .map(|(i, r)| (*i, r))
    }
}

fn matches(r: &Route, req: &Request<'_>) -> bool {
    let path_ok = match &r.path_exact {
        Some(p) => req.path == p,
        None => req.path.starts_with(&r.path_prefix),
    };
    path_ok
        && r.path_regex
            .as_ref()
            .is_none_or(|re| re.0.is_match(req.path))
        && (r.methods.is_empty() || r.methods.contains(req.method))
        && r.headers.iter().all(|(name, want)| {
            req.headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| want.matches(v.trim())))
        })
        && r.query.iter().all(|(name, want)| {
            query_pairs(req.query.unwrap_or("")).any(|(k, v)| k == *name && want.matches(&v))
        })
}

/// The `name=value` pairs of a query, percent-decoded (`+` is a space).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k), decode(v))
    })
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Orders host matches: exact beats the longest wildcard beats none.
fn host_rank(host: Option<&HostMatch>) -> (u8, usize) {
    match host {
        Some(HostMatch::Exact(_)) => (2, 0),
        Some(HostMatch::Wildcard(suffix)) => (1, suffix.len()),
        None => (0, 0),
    }
}

fn host_matches(rule: Option<&HostMatch>, host: &str) -> bool {
    match rule {
        None => true,
        Some(HostMatch::Exact(name)) => host.eq_ignore_ascii_case(name),
        Some(HostMatch::Wildcard(suffix)) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
    }
}

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<HostMatch>, prefix: &str, upstream: &str) -> Route {
        Route {
            host,
            path_prefix: prefix.into(),
            upstream: upstream.into(),
            ..Route::default()
        }
    }

    fn router() -> Router {
        Router::new(&[
            route(None, "/", "default"),
            route(None, "/api/", "api"),
            route(None, "/api/v2/", "api-v2"),
            route(
                Some(HostMatch::Exact("admin.example.com".into())),
                "/",
                "admin",
            ),
            route(
                Some(HostMatch::Wildcard(".example.com".into())),
                "/",
                "wild",
            ),
            route(
                Some(HostMatch::Wildcard(".eu.example.com".into())),
                "/",
                "eu",
            ),
        ])
    }

    fn get<'a>(host: &'a str, path: &'a str, headers: &'a HeaderMap) -> Request<'a> {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        Request {
            host,
            path,
            query,
            method: &Method::GET,
            headers,
        }
    }

    fn upstream(host: &str, path: &str) -> String {
        let headers = HeaderMap::new();
        router()
            .find(&get(host, path, &headers))
            .unwrap()
            .1
            .upstream
            .clone()
    }

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(upstream("other.org", "/"), "default");
        assert_eq!(upstream("other.org", "/api/x"), "api");
        assert_eq!(upstream("other.org", "/api/v2/x"), "api-v2");
        assert_eq!(upstream("other.org", "/api"), "default");
    }

    #[test]
    fn hosts_exact_then_wildcard_then_any() {
        assert_eq!(upstream("ADMIN.example.com:8080", "/api/"), "admin");
        assert_eq!(upstream("www.example.com", "/"), "wild");
        assert_eq!(upstream("a.eu.example.com", "/"), "eu");
        assert_eq!(upstream("example.com", "/"), "default");
        assert_eq!(upstream("[::1]:8080", "/"), "default");
    }

    #[test]
    fn no_route_is_none() {
        let r = Router::new(&[route(None, "/only/", "x")]);
        assert!(r.find(&get("h", "/elsewhere", &HeaderMap::new())).is_none());
    }

    #[test]
    fn index_is_config_order() {
        let headers = HeaderMap::new();
        assert_eq!(router().find(&get("x", "/api/v2/", &headers)).unwrap().0, 2);
    }

    fn pattern(re: &str) -> crate::config::Pattern {
        crate::config::Pattern(regex::Regex::new(re).unwrap())
    }

    #[test]
    fn exact_then_prefix_then_narrowed_then_file_order() {
        use crate::config::ValueMatch;
        let mut exact = route(None, "/", "exact");
        exact.path_exact = Some("/api/users".into());
        let mut regex_a = route(None, "/api/", "regex-a");
        regex_a.path_regex = Some(pattern("^/api/v[0-9]+/"));
        let mut regex_b = route(None, "/api/", "regex-b");
        regex_b.path_regex = Some(pattern("^/api/v1/"));
        let mut post = route(None, "/api/", "post");
        post.methods = vec![Method::POST];
        let mut tenant = route(None, "/api/", "tenant");
        tenant.headers = vec![(
            http::HeaderName::from_static("x-tenant"),
            ValueMatch::Exact("acme".into()),
        )];
        tenant.query = vec![("version".into(), ValueMatch::Regex(pattern("^2$")))];
        let r = Router::new(&[
            route(None, "/", "default"),
            route(None, "/api/", "api"),
            regex_a,
            regex_b,
            post,
            tenant,
            exact,
        ]);
        let pick = |method: &Method, path: &str, headers: &HeaderMap| {
            let mut req = get("h", path, headers);
            req.method = method;
            r.find(&req).unwrap().1.upstream.clone()
        };
        let none = HeaderMap::new();
        let mut acme = HeaderMap::new();
        acme.insert("x-tenant", "acme".parse().unwrap());
        assert_eq!(pick(&Method::GET, "/api/users", &none), "exact");
        assert_eq!(pick(&Method::GET, "/api/users/1", &none), "api");
        // Both regexes match: the first in file order wins.
        assert_eq!(pick(&Method::GET, "/api/v1/x", &none), "regex-a");
        assert_eq!(pick(&Method::POST, "/api/x", &none), "post");
        // Two conditions beat one.
        assert_eq!(pick(&Method::POST, "/api/x?version=2", &acme), "tenant");
        assert_eq!(pick(&Method::GET, "/api/x?version=3", &acme), "api");
        assert_eq!(pick(&Method::GET, "/other", &acme), "default");
    }

    #[test]
    fn query_values_are_decoded() {
        let pairs: Vec<_> = query_pairs("a=1&b=x%20y+z&c").collect();
        assert_eq!(
            pairs,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y z".into()),
                ("c".into(), String::new())
            ]
        );
    }
}
