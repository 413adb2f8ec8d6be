//! Header rewriting: `Forwarded` and `X-Forwarded-*` towards the upstream, hop-by-hop fields
//! stripped from the response.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderName};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::fields;

const FORWARDED: &str = "forwarded";
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const X_FORWARDED_PORT: &str = "x-forwarded-port";

/// Fields through which a client claims an address, scheme, host, port or URL that an origin
/// framework may believe (and build links or access decisions from). From a peer that is not
/// a trusted proxy every one of them is removed before ours are set.
const CLIENT_CLAIMS: [&str; 12] = [
    FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_FORWARDED_PORT,
    "x-forwarded-scheme",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-host",
];

/// What the proxy knows of the hop it is adding.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The TCP (or PROXY protocol) peer.
    pub peer: Option<IpAddr>,
    /// Whether the peer is in `server.trusted_proxies`.
    pub trusted: bool,
    /// The host the client asked for (`Host`, or the absolute URI's authority).
    pub host: Option<&'a str>,
    /// `http` or `https`: how the request reached us.
    pub proto: &'a str,
    /// The local port the client connected to.
    pub port: Option<u16>,
}

/// Sets the forwarding fields for this hop.
///
/// From an untrusted peer every client claim ([`CLIENT_CLAIMS`]) is removed, then
/// `X-Forwarded-For`, `-Proto`, `-Host`, `-Port` and an RFC 7239 `Forwarded` element are set
/// from what we saw. From a trusted peer, our element is appended to its `Forwarded` and
/// `X-Forwarded-For`, and its `X-Forwarded-Proto`, `-Host` and `-Port` are kept (it saw the
/// client's scheme, host and port; we only saw its own), ours filling the ones it left out.
pub fn add_forwarded(req: &mut RequestHeader, hop: &Hop<'_>) -> Result<()> {
    if !hop.trusted {
        fields::remove_where(req, |name| CLIENT_CLAIMS.contains(&name.as_str()));
    }
    if let Some(ip) = hop.peer {
        let value = match joined(req, X_FORWARDED_FOR) {
            Some(prior) => format!("{prior}, {ip}"),
            None => ip.to_string(),
        };
        req.insert_header(X_FORWARDED_FOR, value)?;
    }
    let element = forwarded_element(hop);
    let value = match joined(req, FORWARDED) {
        Some(prior) => format!("{prior}, {element}"),
        None => element,
    };
    req.insert_header(FORWARDED, value)?;
    let keep = |req: &RequestHeader, name: &str| hop.trusted && req.headers.contains_key(name);
    if !keep(req, X_FORWARDED_PROTO) {
        req.insert_header(X_FORWARDED_PROTO, hop.proto)?;
    }
    if let Some(host) = hop.host {
        if !keep(req, X_FORWARDED_HOST) {
            req.insert_header(X_FORWARDED_HOST, host)?;
        }
    }
    if let Some(port) = hop.port {
        if !keep(req, X_FORWARDED_PORT) {
            req.insert_header(X_FORWARDED_PORT, port.to_string())?;
        }
    }
    Ok(())
}

/// The lines of a list field joined into one value; `None` when it has no element.
fn joined(req: &RequestHeader, name: &str) -> Option<String> {
    let elements: Vec<&str> = fields::list(&req.headers, name).collect();
    (!elements.is_empty()).then(|| elements.join(", "))
}

/// This hop's `Forwarded` element (RFC 7239 §4): `for=`, `proto=`, `host=`.
fn forwarded_element(hop: &Hop<'_>) -> String {
    let mut element = String::with_capacity(64);
    match hop.peer {
        Some(IpAddr::V4(ip)) => {
            let _ = write!(element, "for={ip}");
        }
        // §6: an IPv6 address is bracketed, and so must be quoted.
        Some(IpAddr::V6(ip)) => {
            let _ = write!(element, "for=\"[{ip}]\"");
        }
        None => element.push_str("for=unknown"),
    }
    let _ = write!(element, ";proto={}", hop.proto);
    if let Some(host) = hop.host {
        element.push_str(";host=");
        push_value(&mut element, host);
    }
    element
}

/// Appends `value` as a token when it is one, else as a quoted-string (RFC 9110 §5.6).
fn push_value(out: &mut String, value: &str) {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !value.is_empty() && value.bytes().all(is_tchar) {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Hop-by-hop response fields (RFC 9110 §7.6.1) other than the framing Pingora manages.
const HOP_BY_HOP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
];

/// Removes hop-by-hop fields, including those the upstream named in `Connection`.
pub fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    // The names `Connection` nominates, read before `Connection` itself goes.
    let nominated: Vec<HeaderName> = fields::list(&resp.headers, header::CONNECTION)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .filter(|name| !is_protected(name))
        .collect();
    fields::remove_where(resp, |name| is_hop_by_hop(name) || nominated.contains(name));
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION || name == header::UPGRADE || HOP_BY_HOP.contains(&name.as_str())
}

/// Fields a `Connection` token must not make us drop: framing and the headers we set.
fn is_protected(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::DATE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop<'a>(peer: &str, trusted: bool, host: Option<&'a str>) -> Hop<'a> {
        Hop {
            peer: Some(peer.parse().unwrap()),
            trusted,
            host,
            proto: "http",
            port: Some(8080),
        }
    }

    #[test]
    fn forwarded_for_appends_behind_a_trusted_peer() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("X-Forwarded-For", "203.0.113.7").unwrap();
        req.insert_header("Forwarded", "for=203.0.113.7;proto=https")
            .unwrap();
        req.insert_header("X-Forwarded-Proto", "https").unwrap();
        req.insert_header("X-Forwarded-Port", "443").unwrap();
        req.insert_header("X-Real-IP", "203.0.113.7").unwrap();
        add_forwarded(&mut req, &hop("10.0.0.1", true, Some("api.example.com"))).unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "203.0.113.7, 10.0.0.1");
        assert_eq!(
            req.headers["forwarded"],
            "for=203.0.113.7;proto=https, for=10.0.0.1;proto=http;host=api.example.com"
        );
        // What the trusted proxy saw of the client is kept.
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        assert_eq!(req.headers["x-forwarded-port"], "443");
        assert_eq!(req.headers["x-real-ip"], "203.0.113.7");
        // What it left out is ours.
        assert_eq!(req.headers["x-forwarded-host"], "api.example.com");
    }

    #[test]
    fn forwarded_for_starts_fresh() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        add_forwarded(&mut req, &hop("::1", true, None)).unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "::1");
        assert_eq!(req.headers["forwarded"], "for=\"[::1]\";proto=http");
        assert_eq!(req.headers["x-forwarded-port"], "8080");
        assert!(req.headers.get("x-forwarded-host").is_none());
    }

    #[test]
    fn every_client_claim_from_an_untrusted_peer_is_replaced_or_removed() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("X-Forwarded-For", "1.2.3.4").unwrap();
        req.append_header("X-Forwarded-For", "5.6.7.8").unwrap();
        for name in CLIENT_CLAIMS.iter().skip(1) {
            req.append_header(*name, "evil.example").unwrap();
        }
        req.insert_header("Forwarded", "for=1.2.3.4;host=evil.example")
            .unwrap();
        add_forwarded(
            &mut req,
            &hop("198.51.100.1", false, Some("api.example.com:8080")),
        )
        .unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "198.51.100.1");
        assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            req.headers["forwarded"],
            "for=198.51.100.1;proto=http;host=\"api.example.com:8080\""
        );
        assert_eq!(req.headers["x-forwarded-proto"], "http");
        assert_eq!(req.headers["x-forwarded-host"], "api.example.com:8080");
        assert_eq!(req.headers["x-forwarded-port"], "8080");
        for name in &CLIENT_CLAIMS[5..] {
            assert!(req.headers.get(*name).is_none(), "{name} was kept");
        }
    }

    #[test]
    fn quoted_host_escapes_quotes_and_backslashes() {
        let mut out = String::new();
        push_value(&mut out, "a\"b\\c");
        assert_eq!(out, "\"a\\\"b\\\\c\"");
        let mut out = String::new();
        push_value(&mut out, "example.com");
        assert_eq!(out, "example.com");
    }

    #[test]
    fn hop_by_hop_and_nominated_fields_are_removed() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("Connection", "close, X-Secret, Content-Length")
            .unwrap();
        resp.insert_header("X-Secret", "1").unwrap();
        resp.insert_header("Keep-Alive", "timeout=5").unwrap();
        resp.insert_header("Content-Length", "10").unwrap();
        resp.insert_header("X-Kept", "1").unwrap();
        strip_hop_by_hop(&mut resp);
        assert!(resp.headers.get("x-secret").is_none());
        assert!(resp.headers.get("keep-alive").is_none());
        assert!(resp.headers.get("connection").is_none());
        assert_eq!(resp.headers["content-length"], "10");
        assert_eq!(resp.headers["x-kept"], "1");
    }
}
