//! HTTP fields: the elements of list fields, and removal of the fields a predicate names.

use http::header::{AsHeaderName, HeaderMap, HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};

/// The elements of a comma-separated list field (RFC 9110 §5.6.1) over all its lines, trimmed,
/// empty ones skipped: `Vary`, `Connection`, `Cache-Control`.
pub fn list(headers: &HeaderMap, name: impl AsHeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
}

/// A request or response header: Pingora keeps a second map of name spellings beside the
/// `HeaderMap`, so fields must be removed through its own `remove_header`.
pub trait Header {
    fn map(&self) -> &HeaderMap;
    fn remove(&mut self, name: &HeaderName);
    /// Replaces every line of `name` with `value`.
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> pingora_error::Result<()>;
    /// Adds a line of `name`.
    fn add(&mut self, name: HeaderName, value: HeaderValue) -> pingora_error::Result<()>;
}

/// The same four methods for both of Pingora's header types.
macro_rules! impl_header {
    ($t:ty) => {
        impl Header for $t {
            fn map(&self) -> &HeaderMap {
                &self.headers
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn set(&mut self, name: HeaderName, value: HeaderValue) -> pingora_error::Result<()> {
                self.insert_header(name, value)
            }
            fn add(&mut self, name: HeaderName, value: HeaderValue) -> pingora_error::Result<()> {
                self.append_header(name, value).map(|_| ())
            }
        }
    };
}

impl_header!(ResponseHeader);
impl_header!(RequestHeader);

/// Removes every field whose name `doomed` picks. One pass over the names finds them, so a
/// header with none costs no removal (Pingora's parses and looks up each name it is given).
pub fn remove_where(header: &mut impl Header, doomed: impl Fn(&HeaderName) -> bool) {
    let present: Vec<HeaderName> = header
        .map()
        .keys()
        .filter(|name| doomed(name))
        .cloned()
        .collect();
    for name in present {
        header.remove(&name);
    }
}

/// The value of cookie `name` in `Cookie` header values (`a=1; b=2`).
pub fn cookie_value<'a>(headers: impl Iterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    headers
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_elements_span_lines_and_skip_empty_ones() {
        let mut h = HeaderMap::new();
        h.append("vary", " Accept-Encoding ,, Origin".parse().unwrap());
        h.append("vary", "*".parse().unwrap());
        let elements: Vec<&str> = list(&h, "vary").collect();
        assert_eq!(elements, ["Accept-Encoding", "Origin", "*"]);
        assert_eq!(list(&h, "connection").count(), 0);
    }

    #[test]
    fn remove_where_removes_every_line_of_the_picked_names() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("X-A", "1").unwrap();
        resp.append_header("X-B", "2").unwrap();
        resp.append_header("X-A", "3").unwrap();
        remove_where(&mut resp, |n| n.as_str() == "x-a");
        assert!(!resp.headers.contains_key("x-a"));
        assert_eq!(resp.headers["x-b"], "2");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let headers = ["a=1; SID=xyz", "b=2"];
        assert_eq!(cookie_value(headers.into_iter(), "SID"), Some("xyz"));
        assert_eq!(cookie_value(headers.into_iter(), "b"), Some("2"));
        assert_eq!(cookie_value(headers.into_iter(), "S"), None);
        assert_eq!(cookie_value(["SID=\"q\""].into_iter(), "SID"), Some("q"));
    }
}
