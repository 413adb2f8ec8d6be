//! Cache-Control (response and request), Expires, Age and the cache key never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pingora_http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime};
use switchyard::cache::{key, policy};
use switchyard::config::{ClientCacheControl, CookiePolicy, RouteCache};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(4, '\n');
    let (cc, expires, age, path) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("/"),
    );
    let mut resp = ResponseHeader::build(200, None).unwrap();
    let _ = resp.insert_header("Cache-Control", cc);
    let _ = resp.insert_header("Expires", expires);
    let _ = resp.insert_header("Age", age);
    let _ = resp.insert_header("Vary", cc);
    // The targeted field (RFC 9213) overrides Cache-Control when present.
    if expires.len() % 2 == 1 {
        let _ = resp.insert_header("CDN-Cache-Control", cc);
    }
    let mut req = match RequestHeader::build("GET", path.as_bytes(), None) {
        Ok(r) => r,
        Err(_) => RequestHeader::build("GET", b"/", None).unwrap(),
    };
    let _ = req.insert_header("Cache-Control", cc);
    let route = RouteCache {
        default_ttl: Some(Duration::from_secs(60)),
        max_ttl: Some(Duration::from_secs(3600)),
        stale_while_revalidate: Duration::from_secs(10),
        stale_if_error: Duration::from_secs(10),
        cookies: CookiePolicy::default(),
        client_cache_control: ClientCacheControl::Honor,
        warm: None,
    };
    let targeted = [http::HeaderName::from_static("cdn-cache-control")];
    let _ = policy::decide(&req, &resp, &route, &targeted, SystemTime::now());
    let _ = policy::request_directive(&req);
    let _ = key::primary(expires, &req);
});
