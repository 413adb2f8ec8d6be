//! ETags and conditional requests (RFC 9110 §13): answering `If-None-Match` and
//! `If-Modified-Since` with 304, and strong ETags generated for stored responses that have none.
//!
//! A generated ETag is kept in an internal header of the stored response, so that it is shown
//! to clients but never sent upstream as a validator (the origin did not make it).

use std::time::SystemTime;

use http::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use http::{HeaderValue, Method, StatusCode};
use pingora_cache::CacheMeta;
use pingora_core::protocols::http::conditional_filter::{
    req_header_as_http_date, resp_header_as_http_date, to_304, weak_validate_etag,
};
use pingora_http::{RequestHeader, ResponseHeader};
use xxhash_rust::xxh3::xxh3_128;

/// Internal header holding a generated ETag in stored responses.
pub const GENERATED: &str = "x-switchyard-etag";

/// A strong ETag for `body`.
pub fn generate(body: &[u8]) -> String {
    format!("\"sy-{:032x}\"", xxh3_128(body))
}

/// Gives a stored response without an ETag a generated one.
pub fn attach_generated(meta: &mut CacheMeta, body: &[u8]) {
    let headers = meta.response_header_mut();
    if headers.headers.contains_key(ETAG) || headers.headers.contains_key(GENERATED) {
        return;
    }
    let _ = headers.insert_header(GENERATED, generate(body));
}

/// Keeps the generated ETag of `old` when a revalidation replaces the stored header.
pub fn keep_generated(old: &CacheMeta, new: &mut CacheMeta) {
    if new.headers().contains_key(ETAG) {
        return;
    }
    if let Some(tag) = old.headers().get(GENERATED).cloned() {
        let _ = new.response_header_mut().insert_header(GENERATED, tag);
    }
}

/// The ETag clients see: the origin's, or the generated one.
pub fn effective(resp: &ResponseHeader) -> Option<&HeaderValue> {
    resp.headers
        .get(ETAG)
        .or_else(|| resp.headers.get(GENERATED))
}

/// Moves a generated ETag into `ETag` for the client and drops the internal header.
pub fn expose(resp: &mut ResponseHeader) {
    // A scan of the few names is cheaper than removing a custom name that is rarely there.
    if !resp.headers.keys().any(|n| n.as_str() == GENERATED) {
        return;
    }
    if let Some(tag) = resp.remove_header(GENERATED) {
        if !resp.headers.contains_key(ETAG) {
            let _ = resp.insert_header(ETAG, tag);
        }
    }
}

/// Whether the request's conditions fail against `resp`, so that 304 is the answer
/// (RFC 9110 §13.2.2: `If-None-Match` takes precedence over `If-Modified-Since`).
pub fn not_modified(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    if resp.status != StatusCode::OK || !matches!(req.method, Method::GET | Method::HEAD) {
        return false;
    }
    if let Some(inm) = req.headers.get(IF_NONE_MATCH) {
        return effective(resp).is_some_and(|tag| {
            inm.as_bytes() == b"*" || weak_validate_etag(inm.as_bytes(), tag.as_bytes())
        });
    }
    if !req.headers.contains_key(IF_MODIFIED_SINCE) {
        return false;
    }
    let (Ok(Some(since)), Ok(Some(modified))) = (
        req_header_as_http_date(req, IF_MODIFIED_SINCE),
        resp_header_as_http_date(resp, LAST_MODIFIED),
    ) else {
        return false;
    };
    // A Last-Modified in the future is no evidence of anything.
    SystemTime::from(modified) <= SystemTime::from(since)
        && SystemTime::from(modified) <= SystemTime::now()
}

/// The response phase for every route: exposes a generated ETag and, for a response that did
/// not come from the cache (Pingora answers conditional hits itself through
/// `cache_not_modified_filter`), turns a 200 whose validators match the request into its 304.
/// `true`: a 304 was made, so the body must not be sent.
pub fn on_response(req: &RequestHeader, resp: &mut ResponseHeader, from_cache: bool) -> bool {
    expose(resp);
    if from_cache || !not_modified(req, resp) {
        return false;
    }
    make_304(resp);
    true
}

/// Turns a 200 into its 304: same validators and cache headers, no body or body headers.
pub fn make_304(resp: &mut ResponseHeader) {
    to_304(resp);
    resp.remove_header(&http::header::CONTENT_RANGE);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn resp(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn if_none_match_uses_weak_comparison_lists_and_star() {
        let r = resp(&[("ETag", "\"v1\"")]);
        assert!(not_modified(&req(&[("If-None-Match", "\"v1\"")]), &r));
        assert!(not_modified(&req(&[("If-None-Match", "W/\"v1\"")]), &r));
        assert!(not_modified(
            &req(&[("If-None-Match", "\"v0\", \"v1\"")]),
            &r
        ));
        assert!(not_modified(&req(&[("If-None-Match", "*")]), &r));
        assert!(!not_modified(&req(&[("If-None-Match", "\"v2\"")]), &r));
        let weak = resp(&[("ETag", "W/\"v1\"")]);
        assert!(not_modified(&req(&[("If-None-Match", "\"v1\"")]), &weak));
    }

    #[test]
    fn if_none_match_beats_if_modified_since() {
        let r = resp(&[
            ("ETag", "\"v1\""),
            ("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let both = req(&[
            ("If-None-Match", "\"other\""),
            ("If-Modified-Since", "Sun, 06 Nov 2005 08:49:37 GMT"),
        ]);
        assert!(!not_modified(&both, &r));
    }

    #[test]
    fn if_modified_since() {
        let r = resp(&[("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(not_modified(
            &req(&[("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            &r
        ));
        assert!(not_modified(
            &req(&[("If-Modified-Since", "Mon, 07 Nov 1994 08:49:37 GMT")]),
            &r
        ));
        assert!(!not_modified(
            &req(&[("If-Modified-Since", "Sat, 05 Nov 1994 08:49:37 GMT")]),
            &r
        ));
        assert!(!not_modified(&req(&[("If-Modified-Since", "garbage")]), &r));
        assert!(!not_modified(
            &req(&[("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            &resp(&[])
        ));
    }

    #[test]
    fn only_200_and_safe_methods() {
        let mut r = resp(&[("ETag", "\"v1\"")]);
        r.set_status(404).unwrap();
        assert!(!not_modified(&req(&[("If-None-Match", "\"v1\"")]), &r));
        let mut post = req(&[("If-None-Match", "\"v1\"")]);
        post.set_method(Method::POST);
        assert!(!not_modified(&post, &resp(&[("ETag", "\"v1\"")])));
    }

    #[test]
    fn generated_tags_are_strong_stable_and_exposed() {
        assert_eq!(generate(b"hello"), generate(b"hello"));
        assert_ne!(generate(b"hello"), generate(b"hello!"));
        assert!(generate(b"x").starts_with("\"sy-"));
        let mut r = resp(&[(GENERATED, "\"sy-1\"")]);
        assert!(not_modified(&req(&[("If-None-Match", "\"sy-1\"")]), &r));
        expose(&mut r);
        assert_eq!(r.headers[ETAG], "\"sy-1\"");
        assert!(r.headers.get(GENERATED).is_none());
        let mut origin = resp(&[("ETag", "\"o\""), (GENERATED, "\"sy-1\"")]);
        expose(&mut origin);
        assert_eq!(origin.headers[ETAG], "\"o\"");
    }

    #[test]
    fn a_304_keeps_validators_and_drops_the_body_headers() {
        let mut r = resp(&[
            ("ETag", "\"v1\""),
            ("Cache-Control", "max-age=60"),
            ("Vary", "Accept-Encoding"),
            ("Content-Length", "10"),
            ("Content-Type", "text/plain"),
        ]);
        make_304(&mut r);
        assert_eq!(r.status, 304);
        assert_eq!(r.headers[ETAG], "\"v1\"");
        assert_eq!(r.headers["cache-control"], "max-age=60");
        assert_eq!(r.headers["vary"], "Accept-Encoding");
        assert!(r.headers.get("content-length").is_none());
        assert!(r.headers.get("content-type").is_none());
    }
}
