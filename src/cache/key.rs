//! Cache keys: `<host><path?query>` (the form purges use), and the variance of a response that
//! `Vary`s on request headers, with `Accept-Encoding` reduced to the encodings Switchyard knows.

use pingora_cache::key::HashBinary;
use pingora_cache::{CacheMeta, VarianceBuilder};
use pingora_http::RequestHeader;

use crate::compress::negotiate::{accepts, negotiate};
use crate::compress::Algorithm;
use crate::fields;

/// Encodings `Accept-Encoding` is reduced to, in a fixed order.
const KNOWN_ENCODINGS: [Algorithm; 3] = [Algorithm::Brotli, Algorithm::Gzip, Algorithm::Zstd];

/// `api.example.com/items?page=2`: the host in lower case without its port, then the path and
/// query as sent.
pub fn primary(host: &str, req: &RequestHeader) -> String {
    let host = crate::proxy::route::strip_port(host);
    let path = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    format!("{}{path}", host.to_ascii_lowercase())
}

/// The encodings a client accepts among those Switchyard can produce, as `br,gzip`; `identity`
/// when none. Clients that differ only in ways that do not change the answer share a variant.
pub fn normalize_accept_encoding(value: Option<&str>) -> String {
    let Some(value) = value else {
        return "identity".into();
    };
    let accepted: Vec<&str> = KNOWN_ENCODINGS
        .iter()
        .filter(|alg| accepts(value, **alg))
        .map(|alg| alg.name())
        .collect();
    if accepted.is_empty() {
        "identity".into()
    } else {
        accepted.join(",")
    }
}

/// The variance hash of `req` for a stored response that varies; `None` when it does not.
/// On a route that compresses with `algorithms`, `Accept-Encoding` counts only through the
/// encoding it negotiates, so every client that gets `br` shares one variant.
pub fn variance(
    meta: &CacheMeta,
    req: &RequestHeader,
    algorithms: Option<&[Algorithm]>,
) -> Option<HashBinary> {
    let mut names: Vec<String> = fields::list(meta.headers(), http::header::VARY)
        .map(str::to_ascii_lowercase)
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort();
    names.dedup();
    let mut builder = VarianceBuilder::new();
    for name in names {
        let value: Vec<u8> = if name == "accept-encoding" {
            let raw = req
                .headers
                .get(http::header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok());
            match algorithms {
                Some(algorithms) => negotiate(raw, algorithms)
                    .map_or("identity", Algorithm::name)
                    .as_bytes()
                    .to_vec(),
                None => normalize_accept_encoding(raw).into_bytes(),
            }
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
    fn accept_encoding_is_reduced_to_known_codings() {
        let n = |v| normalize_accept_encoding(Some(v));
        assert_eq!(n("gzip, deflate, br"), "br,gzip");
        assert_eq!(n("br;q=1.0, gzip;q=0.8, *;q=0.1"), "br,gzip,zstd");
        assert_eq!(n("deflate"), "identity");
        assert_eq!(n("gzip;q=0, br"), "br");
        assert_eq!(n("GZIP"), "gzip");
        assert_eq!(n("*"), "br,gzip,zstd");
        assert_eq!(n("*;q=0, gzip"), "gzip");
        assert_eq!(n("identity;q=0, x-gzip"), "gzip");
        assert_eq!(n("br;q=abc"), "identity", "an invalid q-value is q=0");
        assert_eq!(normalize_accept_encoding(None), "identity");
        assert_eq!(n("gzip, deflate, br"), n("br, gzip"));
    }

    #[test]
    fn variance_follows_vary() {
        assert_eq!(variance(&meta(None), &req("/", &[]), None), None);
        let m = meta(Some("X-Lang"));
        let en = variance(&m, &req("/", &[("X-Lang", "en")]), None);
        let fr = variance(&m, &req("/", &[("X-Lang", "fr")]), None);
        assert!(en.is_some());
        assert_ne!(en, fr);
        assert_eq!(en, variance(&m, &req("/", &[("x-lang", "en")]), None));
        let ae = meta(Some("Accept-Encoding"));
        let v = |h: &str, algs| variance(&ae, &req("/", &[("Accept-Encoding", h)]), algs);
        assert_eq!(v("gzip, deflate, br", None), v("br,gzip", None));
        assert_ne!(v("gzip", None), variance(&ae, &req("/", &[]), None));
        // With compression on, only the negotiated encoding matters.
        let all = Some(&Algorithm::ALL[..]);
        assert_eq!(v("br", all), v("gzip, br;q=1, zstd;q=0.5", all));
        assert_ne!(v("br", all), v("gzip", all));
        assert_eq!(v("deflate", all), variance(&ae, &req("/", &[]), all));
    }
}
