//! Routing: pick the route for a request by Host (exact, then `*.wildcard`, then any) and then
//! by the longest path prefix.

use crate::config::{HostMatch, Route};

/// Routes in match order: most specific host first, then longest prefix.
#[derive(Debug)]
pub struct Router {
    routes: Vec<(usize, Route)>,
}

impl Router {
    pub fn new(routes: &[Route]) -> Router {
        let mut routes: Vec<(usize, Route)> = routes.iter().cloned().enumerate().collect();
        routes.sort_by_key(|(_, r)| {
            std::cmp::Reverse((host_rank(r.host.as_ref()), r.path_prefix.len()))
        });
        Router { routes }
    }

    /// The index (in config order) and route for `host` (any case, port allowed) and `path`.
    pub fn find(&self, host: &str, path: &str) -> Option<(usize, &Route)> {
        let host = strip_port(host);
        self.routes
            .iter()
            .find(|(_, r)| host_matches(r.host.as_ref(), host) && path.starts_with(&r.path_prefix))
            .map(|(i, r)| (*i, r))
    }
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
            cache: None,
            compression: None,
            https_redirect: false,
            hsts: None,
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

    fn upstream(host: &str, path: &str) -> String {
        router().find(host, path).unwrap().1.upstream.clone()
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
        assert!(r.find("h", "/elsewhere").is_none());
    }

    #[test]
    fn index_is_config_order() {
        assert_eq!(router().find("x", "/api/v2/").unwrap().0, 2);
    }
}
