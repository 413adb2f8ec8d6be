//! Stored response metadata: copies of `CacheMeta` (Pingora's is not `Clone`), the compact header
//! an entry keeps, and the purge tags a response carries.

use http::HeaderValue;
use pingora_cache::CacheMeta;
use pingora_http::ResponseHeader;

/// A copy of `meta` (Pingora's `CacheMeta` is not `Clone`): same freshness, stale windows,
/// variance, header, and age reference. The header shares its bytes with the original.
pub fn clone_meta(meta: &CacheMeta) -> CacheMeta {
    meta_with_header(meta, meta.response_header_copy())
}

/// Like [`clone_meta`], with the compact header an entry keeps: see [`owned_header`].
pub fn stored_meta(meta: &CacheMeta) -> CacheMeta {
    meta_with_header(meta, owned_header(meta.response_header()))
}

fn meta_with_header(meta: &CacheMeta, header: ResponseHeader) -> CacheMeta {
    let mut copy = CacheMeta::new(
        meta.fresh_until(),
        meta.created(),
        meta.stale_while_revalidate_sec(),
        meta.stale_if_error_sec(),
        header,
    );
    if let Some(variance) = meta.variance() {
        copy.set_variance_key(variance);
    }
    // Age counts from the last revalidation.
    copy.set_epoch_override(meta.epoch());
    copy
}

/// The header an entry keeps: the same fields in the same order, owning their bytes, without
/// the original spelling of names. Pingora parses a response header into slices of its read
/// buffer (4 KiB or more, often with the start of the body), which a stored header would keep
/// alive; and the spelling is a second map per header. Hits are written with standard names in
/// their usual case (`Content-Type`) and others in lower case, as HAProxy does.
pub fn owned_header(header: &ResponseHeader) -> ResponseHeader {
    let Ok(mut copy) = ResponseHeader::build_no_case(header.status, Some(header.headers.len()))
    else {
        return header.clone();
    };
    copy.set_version(header.version);
    let mut ok = copy.set_reason_phrase(header.get_reason_phrase()).is_ok();
    for (name, value) in header.headers.iter() {
        ok &= HeaderValue::from_bytes(value.as_bytes())
            .ok()
            .is_some_and(|value| copy.append_header(name.clone(), value).is_ok());
    }
    // Every field of a parsed header copies; should one not, keep the shared original.
    if ok {
        copy
    } else {
        header.clone()
    }
}

/// The fields that tag a response for purges; internal, never sent to clients.
pub const TAG_FIELDS: [&str; 2] = ["surrogate-key", "cache-tag"];

/// Tags from `Surrogate-Key` and `Cache-Tag` (space- or comma-separated).
pub fn tags_of(meta: &CacheMeta) -> Vec<String> {
    let mut tags: Vec<String> = TAG_FIELDS
        .iter()
        .flat_map(|name| meta.headers().get_all(*name).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([' ', ',']))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;

    use super::*;

    fn meta(headers: &[(&str, &str)]) -> CacheMeta {
        let mut h = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            h.append_header(k.to_string(), *v).unwrap();
        }
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
    }

    #[test]
    fn tags_split_on_spaces_and_commas() {
        let m = meta(&[("Surrogate-Key", "a b  c"), ("Cache-Tag", "c,d")]);
        assert_eq!(tags_of(&m), vec!["a", "b", "c", "d"]);
    }

    #[test]
    fn cloned_meta_keeps_freshness_and_variance() {
        let mut m = meta(&[("X", "1")]);
        m.set_variance_key([7; 16]);
        let c = clone_meta(&m);
        assert_eq!(c.fresh_until(), m.fresh_until());
        assert_eq!(c.variance(), Some([7; 16]));
        assert_eq!(c.headers()["x"], "1");
    }

    #[test]
    fn stored_headers_own_their_bytes() {
        // As Pingora parses them: names and values are slices of one read buffer.
        let buf = Bytes::from_static(b"Content-Type: text/plainX-Trace: abcX-Trace: def");
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.set_reason_phrase(Some("Fine")).unwrap();
        for (name, value) in [(0..12, 14..24), (24..31, 33..36), (36..43, 45..48)] {
            let value = HeaderValue::from_maybe_shared(buf.slice(value)).unwrap();
            h.append_header(buf.slice(name), value).unwrap();
        }
        let copy = owned_header(&h);

        let fields = |h: &ResponseHeader| -> Vec<(String, Vec<u8>)> {
            h.headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        assert_eq!(fields(&copy), fields(&h));
        assert_eq!(copy.status, h.status);
        assert_eq!(copy.get_reason_phrase(), Some("Fine"));
        let inside = |p: *const u8| buf.as_ptr_range().contains(&p);
        assert!(h.headers.values().all(|v| inside(v.as_bytes().as_ptr())));
        assert!(copy
            .headers
            .values()
            .all(|v| !inside(v.as_bytes().as_ptr())));
        assert!(!copy.has_case(), "no second map of spellings");
        let mut wire = Vec::new();
        copy.header_to_h1_wire(&mut wire);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "Content-Type: text/plain\r\nx-trace: abc\r\nx-trace: def\r\n"
        );
    }
}
