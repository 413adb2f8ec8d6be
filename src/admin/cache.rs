//! The admin endpoint's views into the cache: `GET /cache/entry?key=…` (the stored variants of
//! a key) and `GET /cache/top?n=…` (the most requested keys of the last minute or two).

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::cache::meta::TAG_FIELDS;
use crate::cache::Cache;
use crate::digest::hex;

/// The value of query parameter `name` (percent-decoded), if present.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

/// Percent-decoding for a query value (`+` is a space, as forms send it).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /cache/entry?key=<host><path?query>`: every stored variant in the memory tier, with
/// its status, header fields, age, freshness left, stale windows, size and tags.
pub fn entry(cache: &Cache, key: &str) -> Value {
    let now = SystemTime::now();
    let variants: Vec<Value> = cache
        .storage
        .memory
        .variants(key)
        .iter()
        .map(|entry| {
            let meta = &entry.meta;
            let header = meta.response_header();
            let fields: Vec<Value> = header
                .headers
                .iter()
                .filter(|(name, _)| !TAG_FIELDS.contains(&name.as_str()))
                .map(|(name, value)| {
                    json!([name.as_str(), String::from_utf8_lossy(value.as_bytes())])
                })
                .collect();
            let ttl = meta
                .fresh_until()
                .duration_since(now)
                .map_or(0, |d| d.as_secs());
            json!({
                "variance": meta.variance().map(|v| hex(&v)),
                "status": header.status.as_u16(),
                "headers": fields,
                "age_seconds": meta.age().as_secs(),
                "ttl_seconds": ttl,
                "fresh": ttl > 0,
                "stale_while_revalidate_seconds": meta.stale_while_revalidate_sec(),
                "stale_if_error_seconds": meta.stale_if_error_sec(),
                "body_bytes": entry.body.len(),
                "charged_bytes": entry.size,
                "tags": entry.tags,
            })
        })
        .collect();
    json!({ "key": key, "variants": variants })
}

/// `GET /cache/top?n=20`: the most requested keys, most first, with hits and misses.
pub fn top(cache: &Cache, n: usize) -> Value {
    let keys: Vec<Value> = cache
        .top
        .top(n)
        .into_iter()
        .map(|(key, c)| {
            let total = c.hits + c.misses;
            json!({
                "key": key,
                "requests": total,
                "hits": c.hits,
                "misses": c.misses,
                "hit_ratio": if total == 0 { 0.0 } else { c.hits as f64 / total as f64 },
                "overcount_at_most": c.error,
            })
        })
        .collect();
    json!({ "window_seconds": 120, "keys": keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_found_and_decoded() {
        let q = Some("n=5&key=api.example.com%2Fitems%3Fpage%3D2&x");
        assert_eq!(query_param(q, "n").as_deref(), Some("5"));
        assert_eq!(
            query_param(q, "key").as_deref(),
            Some("api.example.com/items?page=2")
        );
        assert_eq!(query_param(q, "x").as_deref(), Some(""));
        assert_eq!(query_param(q, "y"), None);
        assert_eq!(query_param(Some("k=100%"), "k").as_deref(), Some("100%"));
        assert_eq!(query_param(Some("k=a+b"), "k").as_deref(), Some("a b"));
    }
}
