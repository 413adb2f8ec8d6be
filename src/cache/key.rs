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
    let host = crate::route::strip_port(host);
    let path = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    format!("{}{path}", host.to_ascii_lowercase())
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
            let values: Vec<&[u8]> = req
                .headers
                .get_all(name.as_str())
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            values.join(&b","[..])
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
