//! Cache keys: `<host><path?query>` (the form purges use), and the variance of a response that
//! `Vary`s on request headers (`Accept-Encoding` through [`variant_value`], which
//! `compress` owns) or of a route keyed on cookies.

use pingora_cache::key::HashBinary;
use pingora_cache::{CacheMeta, VarianceBuilder};
use pingora_http::RequestHeader;

use crate::compress::negotiate::variant_value;
use crate::compress::Algorithm;
use crate::fields;

/// `api.example.com/items?page=2`: the host in lower case without its port, then the path and
/// query as sent.
pub fn primary(host: &str, req: &RequestHeader) -> String {
    primary_of(host, req.uri.path_and_query().map_or("/", |pq| pq.as_str()))
}

/// [`primary`] for a path with its query given as text.
pub fn primary_of(host: &str, path_and_query: &str) -> String {
    let host = crate::route::strip_port(host);
    let mut key = String::with_capacity(host.len() + path_and_query.len());
    key.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    key.push_str(path_and_query);
    key
}

/// `Accept-Language` as a variant sees it: tags in lower case, those with q=0 dropped, by
/// q-value (highest first) and then by name, with q written only when below 1. Requests that
/// differ only in case, spacing, the order of equal preferences or the spelling of q-values
/// (`q=1.0`, `q=0.50`) share a variant.
pub fn normalize_accept_language<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut tags: Vec<(String, u16)> = values
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            let mut parts = element.split(';');
            let tag = parts.next()?.trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .or_else(|| p.trim().strip_prefix("Q="))
                })
                .next()
                .map_or(Some(1000), |q| {
                    q.trim()
                        .parse::<f32>()
                        .ok()
                        .map(|q| (q.clamp(0.0, 1.0) * 1000.0).round() as u16)
                })?;
            (!tag.is_empty() && q > 0).then_some((tag, q))
        })
        .collect();
    tags.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    tags.dedup_by(|a, b| a.0 == b.0);
    tags.iter()
        .map(|(tag, q)| match *q {
            1000 => tag.clone(),
            q => format!(
                "{tag};q={}",
                format!("{:.3}", f32::from(q) / 1000.0).trim_end_matches('0')
            ),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Another `Vary`ed field's lines as one value: elements split on commas, trimmed, empty ones
/// dropped, joined by `,` (whitespace differences make no new variant).
fn normalize_list<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for element in values.flat_map(|v| v.split(|&b| b == b',')) {
        let element = element.trim_ascii();
        if element.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(element);
    }
    out
}

/// The variance name under which a keyed cookie counts: `:` cannot be in a header name, so it
/// never meets a `Vary`ed field.
fn cookie_variance_name(cookie: &str) -> String {
    format!("cookie:{cookie}")
}

/// The variance hash of `req` for a stored response that varies, or on a route keyed on
/// `cookies` (sorted names, empty when not keyed); `None` when neither. On a route that
/// compresses with `algorithms`, `Accept-Encoding` counts only through the encoding it
/// negotiates, so every client that gets `br` shares one variant.
pub fn variance(
    meta: &CacheMeta,
    req: &RequestHeader,
    algorithms: Option<&[Algorithm]>,
    cookies: &[String],
) -> Option<HashBinary> {
    let mut names: Vec<String> = fields::list(meta.headers(), http::header::VARY)
        .map(str::to_ascii_lowercase)
        .collect();
    if names.is_empty() && cookies.is_empty() {
        return None;
    }
    names.sort();
    names.dedup();
    let mut builder = VarianceBuilder::new();
    for cookie in cookies {
        let headers = req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        // `=value` when present, nothing when absent: an empty value is not a missing cookie.
        let value = fields::cookie_value(headers, cookie)
            .map_or_else(Vec::new, |v| format!("={v}").into_bytes());
        builder.add_owned_name_value(cookie_variance_name(cookie), value);
    }
    for name in names {
        let value: Vec<u8> = if name == "accept-encoding" {
            let raw = req
                .headers
                .get(http::header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok());
            variant_value(raw, algorithms).into_bytes()
        } else {
            let values = req.headers.get_all(name.as_str());
            if name == "accept-language" {
                normalize_accept_language(values.iter().filter_map(|v| v.to_str().ok()))
                    .into_bytes()
            } else {
                normalize_list(values.iter().map(|v| v.as_bytes()))
            }
        };
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::ResponseHeader;
    use std::time::SystemTime;

    fn req(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn meta(vary: Option<&str>) -> CacheMeta {
        let mut h = ResponseHeader::build(200, None).unwrap();
        if let Some(v) = vary {
            h.insert_header("Vary", v).unwrap();
        }
        let now = SystemTime::now();
        CacheMeta::new(now, now, 0, 0, h)
    }

    #[test]
    fn primary_keys() {
        assert_eq!(
            primary("API.Example.com:8080", &req("/a?b=1", &[])),
            "api.example.com/a?b=1"
        );
        assert_eq!(primary("[::1]:80", &req("/", &[])), "[::1]/");
        assert_eq!(primary("h", &req("/x", &[])), "h/x");
    }

    #[test]
    fn accept_language_variants_are_normalised() {
        let n = |v: &str| normalize_accept_language(std::iter::once(v));
        assert_eq!(n("en-US, de;q=0.5"), "en-us,de;q=0.5");
        assert_eq!(n("de;q=0.50,EN-us;q=1.0"), "en-us,de;q=0.5");
        assert_eq!(n("fr, en"), n("en ,fr"));
        assert_eq!(n("fr;q=0, en"), "en");
        assert_ne!(n("en, de;q=0.5"), n("de, en;q=0.5"));
        assert_eq!(n("en;q=abc, de"), "de", "an invalid q is dropped");
        let m = meta(Some("Accept-Language"));
        let v = |value: &str| variance(&m, &req("/", &[("Accept-Language", value)]), None, &[]);
        assert_eq!(v("en-US,de;q=0.5"), v("de;q=0.5, en-us"));
        assert_ne!(v("en-US"), v("de"));
    }

    #[test]
    fn other_varied_fields_ignore_whitespace() {
        let m = meta(Some("X-Tenant"));
        let v = |value: &str| variance(&m, &req("/", &[("X-Tenant", value)]), None, &[]);
        assert_eq!(v("a, b"), v("a,b"));
        assert_eq!(v(" a ,b,"), v("a,b"));
        assert_ne!(v("a,b"), v("b,a"));
    }

    #[test]
    fn keyed_cookies_make_variants() {
        let m = meta(None);
        let keyed = ["lang".to_string()];
        let v = |cookie: Option<&str>| {
            let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
            variance(&m, &req("/", &headers), None, &keyed)
        };
        assert_eq!(
            variance(&m, &req("/", &[("Cookie", "lang=en")]), None, &[]),
            None
        );
        assert!(v(None).is_some());
        assert_ne!(v(Some("lang=en")), v(Some("lang=fr")));
        assert_ne!(v(Some("lang=")), v(None), "empty is not absent");
        assert_eq!(
            v(Some("sid=1; lang=en")),
            v(Some("lang=en; sid=2")),
            "other cookies"
        );
    }

    #[test]
    fn variance_follows_vary() {
        assert_eq!(variance(&meta(None), &req("/", &[]), None, &[]), None);
        let m = meta(Some("X-Lang"));
        let en = variance(&m, &req("/", &[("X-Lang", "en")]), None, &[]);
        let fr = variance(&m, &req("/", &[("X-Lang", "fr")]), None, &[]);
        assert!(en.is_some());
        assert_ne!(en, fr);
        assert_eq!(en, variance(&m, &req("/", &[("x-lang", "en")]), None, &[]));
        let ae = meta(Some("Accept-Encoding"));
        let v = |h: &str, algs| variance(&ae, &req("/", &[("Accept-Encoding", h)]), algs, &[]);
        assert_eq!(v("gzip, deflate, br", None), v("br,deflate,gzip", None));
        assert_ne!(v("deflate", None), variance(&ae, &req("/", &[]), None, &[]));
        assert_ne!(v("gzip", None), variance(&ae, &req("/", &[]), None, &[]));
        // With compression on, only the negotiated encoding matters.
        let all = Some(&Algorithm::ALL[..]);
        assert_eq!(v("br", all), v("gzip, br;q=1, zstd;q=0.5", all));
        assert_ne!(v("br", all), v("gzip", all));
        assert_eq!(v("deflate", all), variance(&ae, &req("/", &[]), all, &[]));
    }
}
