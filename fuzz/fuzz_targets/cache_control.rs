//! Cache-Control (response and request), Expires, Age and the cache key never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pingora_http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime};
use switchyard::cache::{key, policy};
use switchyard::config::RouteCache;

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
    };
    let _ = policy::decide(&req, &resp, &route, SystemTime::now());
    let _ = policy::request_directive(&req);
    let _ = key::primary(expires, &req);
});
