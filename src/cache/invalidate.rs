//! Invalidation after unsafe methods (RFC 9111 §4.4): a non-error response to a request whose
//! method is not known to be safe removes what is stored for its target URI and for the URIs
//! in its `Location` and `Content-Location`, when they are on the same host.

use http::{Method, StatusCode};
use pingora_http::{RequestHeader, ResponseHeader};

use super::key;
use crate::route::strip_port;

/// Methods this cache knows to be safe (RFC 9110 §9.2.1); any other invalidates.
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The primary keys (`host/path?query`, as purges name them) that `resp` to `req` on `host`
/// invalidates; empty when the method is safe or the response an error.
pub fn targets(host: &str, req: &RequestHeader, resp: &ResponseHeader) -> Vec<String> {
    let status = resp.status;
    if is_safe(&req.method) || !(status.is_success() || status.is_redirection()) {
        return Vec::new();
    }
    if status == StatusCode::NOT_MODIFIED {
        return Vec::new();
    }
    let mut keys = vec![key::primary(host, req)];
    for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
        let Some(value) = resp.headers.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some(target) = same_host_target(host, req.uri.path(), value.trim()) {
            if !keys.contains(&target) {
                keys.push(target);
            }
        }
    }
    keys
}

/// The primary key of a URI reference from a response, resolved against the request's path,
/// when it names the same host (another host's responses are not this one's to drop).
fn same_host_target(host: &str, request_path: &str, reference: &str) -> Option<String> {
    let host = strip_port(host).to_ascii_lowercase();
    let absolute = if reference.contains("://") {
        Some(reference.to_string())
    } else {
        reference
            .strip_prefix("//")
            .map(|rest| format!("http://{rest}"))
    };
    let path_and_query = match absolute {
        Some(absolute) => {
            let uri: http::Uri = absolute.parse().ok()?;
            let authority = uri.authority()?;
            if strip_port(authority.as_str()).to_ascii_lowercase() != host {
                return None;
            }
            uri.path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_string()
        }
        None if reference.starts_with('/') => reference.to_string(),
        // A relative reference: resolved against the request path's directory.
        None if !reference.is_empty() && !reference.starts_with('?') => {
            let dir = &request_path[..request_path.rfind('/').map_or(0, |i| i + 1)];
            format!("{}{reference}", if dir.is_empty() { "/" } else { dir })
        }
        None => return None,
    };
    Some(format!("{host}{path_and_query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str) -> RequestHeader {
        RequestHeader::build(method, path.as_bytes(), None).unwrap()
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn unsafe_methods_with_non_error_answers_invalidate() {
        let post = req("POST", "/items?x=1");
        assert_eq!(
            targets("Shop:80", &post, &resp(200, &[])),
            ["shop/items?x=1"]
        );
        assert_eq!(
            targets("shop", &req("DELETE", "/a"), &resp(204, &[])),
            ["shop/a"]
        );
        assert_eq!(
            targets("shop", &req("PURGE", "/a"), &resp(302, &[])),
            ["shop/a"]
        );
        assert!(targets("shop", &req("GET", "/a"), &resp(200, &[])).is_empty());
        assert!(targets("shop", &req("HEAD", "/a"), &resp(200, &[])).is_empty());
        assert!(targets("shop", &post, &resp(404, &[])).is_empty());
        assert!(targets("shop", &post, &resp(500, &[])).is_empty());
    }

    #[test]
    fn locations_on_the_same_host_are_invalidated_too() {
        let r = resp(
            201,
            &[
                ("Location", "/items/7"),
                ("Content-Location", "http://SHOP:8080/items/7?view=full"),
            ],
        );
        assert_eq!(
            targets("shop", &req("POST", "/items"), &r),
            ["shop/items", "shop/items/7", "shop/items/7?view=full"]
        );
        let elsewhere = resp(303, &[("Location", "https://other.example/items")]);
        assert_eq!(
            targets("shop", &req("PUT", "/items/1"), &elsewhere),
            ["shop/items/1"]
        );
        let relative = resp(200, &[("Content-Location", "7")]);
        assert_eq!(
            targets("shop", &req("PATCH", "/items/6"), &relative),
            ["shop/items/6", "shop/items/7"]
        );
    }
}
