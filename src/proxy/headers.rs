//! Header rewriting: `X-Forwarded-*` towards the upstream, hop-by-hop fields stripped from
//! the response.

use std::net::IpAddr;

use http::header::{self, HeaderName};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::fields;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// Sets `X-Forwarded-For` to the peer appended to what a trusted peer sent, or to the peer
/// alone when the peer is not trusted (so a client cannot forge its chain), and sets
/// `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub fn add_forwarded(
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    peer_trusted: bool,
    host: Option<&str>,
) -> Result<()> {
    if !peer_trusted {
        req.remove_header(X_FORWARDED_FOR);
    }
    if let Some(ip) = peer {
        let prior: Vec<String> = req
            .headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect();
        let value = if prior.is_empty() {
            ip.to_string()
        } else {
            format!("{}, {ip}", prior.join(", "))
        };
        req.insert_header(X_FORWARDED_FOR, value)?;
    }
    req.insert_header(X_FORWARDED_PROTO, "http")?;
    if let Some(host) = host {
        req.insert_header(X_FORWARDED_HOST, host)?;
    }
    Ok(())
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

    #[test]
    fn forwarded_for_appends_behind_a_trusted_peer() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("X-Forwarded-For", "203.0.113.7").unwrap();
        add_forwarded(
            &mut req,
            Some("10.0.0.1".parse().unwrap()),
            true,
            Some("api.example.com"),
        )
        .unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "203.0.113.7, 10.0.0.1");
        assert_eq!(req.headers["x-forwarded-proto"], "http");
        assert_eq!(req.headers["x-forwarded-host"], "api.example.com");
    }

    #[test]
    fn forwarded_for_starts_fresh() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        add_forwarded(&mut req, Some("::1".parse().unwrap()), true, None).unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "::1");
        assert!(req.headers.get("x-forwarded-host").is_none());
    }

    #[test]
    fn forwarded_for_from_an_untrusted_peer_is_replaced() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("X-Forwarded-For", "1.2.3.4").unwrap();
        req.append_header("X-Forwarded-For", "5.6.7.8").unwrap();
        add_forwarded(&mut req, Some("198.51.100.1".parse().unwrap()), false, None).unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "198.51.100.1");
        assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
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
