//! Who the client is: the TCP peer, or, behind trusted proxies, the right-most untrusted
//! address in `X-Forwarded-For`; and the key `ip_hash` hashes for a request.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use pingora_http::RequestHeader;

use crate::config::HashKey;
use crate::fields::cookie_value;

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// `::ffff:10.0.0.1` compares as `10.0.0.1`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` element: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`.
pub fn parse_forwarded_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .map(canonical)
}

/// The client address: walks `X-Forwarded-For` from the right while the hop that added an
/// element is trusted. Unparsable elements end the walk (the last trusted hop is the answer).
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpNet]) -> IpAddr {
    let mut client = canonical(peer);
    if trusted.is_empty() {
        return client;
    }
    let elements = forwarded_for
        .iter()
        .rev()
        .flat_map(|header| header.rsplit(','));
    for element in elements {
        if !is_trusted(client, trusted) {
            break;
        }
        match parse_forwarded_ip(element) {
            Some(ip) => client = ip,
            None => break,
        }
    }
    client
}

/// The `X-Forwarded-For` header values of a request.
pub fn forwarded_for(req: &RequestHeader) -> Vec<&str> {
    req.headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// The bytes `ip_hash` hashes; the client IP when the chosen header or cookie is absent.
pub fn hash_input(key: &HashKey, req: &RequestHeader, client: IpAddr) -> Vec<u8> {
    let found = match key {
        HashKey::ClientIp => None,
        HashKey::Uri => Some(
            req.uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .as_bytes()
                .to_vec(),
        ),
        HashKey::Header(name) => req
            .headers
            .get(name.as_str())
            .map(|v| v.as_bytes().to_vec()),
        HashKey::Cookie(name) => {
            let cookies = req
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok());
            cookie_value(cookies, name).map(|v| v.as_bytes().to_vec())
        }
    };
    found.unwrap_or_else(|| client.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("203.0.113.5"), &["1.1.1.1"], &trusted),
            ip("203.0.113.5")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), &["1.1.1.1"], &[]), ip("10.0.0.1"));
    }

    #[test]
    fn trusted_chain_gives_the_rightmost_untrusted() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                &["6.6.6.6, 198.51.100.7, 10.1.1.1"],
                &trusted
            ),
            ip("198.51.100.7")
        );
        // Split over two headers.
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                &["6.6.6.6, 198.51.100.7", "10.1.1.1"],
                &trusted
            ),
            ip("198.51.100.7")
        );
        // All trusted: the left-most.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["10.2.2.2, 10.1.1.1"], &trusted),
            ip("10.2.2.2")
        );
        // No header: the peer.
        assert_eq!(client_ip(ip("127.0.0.1"), &[], &trusted), ip("127.0.0.1"));
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["1.1.1.1, junk, 10.1.1.1"], &trusted),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn forwarded_element_forms() {
        assert_eq!(parse_forwarded_ip(" 1.2.3.4 "), Some(ip("1.2.3.4")));
        assert_eq!(parse_forwarded_ip("1.2.3.4:80"), Some(ip("1.2.3.4")));
        assert_eq!(
            parse_forwarded_ip("[2001:db8::1]:80"),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(parse_forwarded_ip("::ffff:1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(parse_forwarded_ip("unknown"), None);
        assert_eq!(parse_forwarded_ip(""), None);
    }

    #[test]
    fn mapped_v4_peers_match_v4_networks() {
        assert!(is_trusted(ip("::ffff:127.0.0.1"), &nets(&["127.0.0.0/8"])));
    }

    #[test]
    fn hash_inputs() {
        let mut req = RequestHeader::build("GET", b"/a?b=1", None).unwrap();
        req.insert_header("X-User", "alice").unwrap();
        req.insert_header("Cookie", "x=1; session=abc").unwrap();
        let client = ip("9.9.9.9");
        assert_eq!(hash_input(&HashKey::ClientIp, &req, client), b"9.9.9.9");
        assert_eq!(hash_input(&HashKey::Uri, &req, client), b"/a?b=1");
        assert_eq!(
            hash_input(&HashKey::Header("x-user".into()), &req, client),
            b"alice"
        );
        assert_eq!(
            hash_input(&HashKey::Cookie("session".into()), &req, client),
            b"abc"
        );
        assert_eq!(
            hash_input(&HashKey::Header("x-none".into()), &req, client),
            b"9.9.9.9"
        );
    }
}
