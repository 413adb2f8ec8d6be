//! The PROXY protocol (v1 text and v2 binary, HAProxy's spec) on listeners that expect it: the
//! header an L4 load balancer sends before the client's bytes (and before the TLS ClientHello)
//! names the client, and that address becomes the connection's peer for everything after it
//! (X-Forwarded-For, `ip_hash`, trusted proxies, logs). A connection without a valid header is
//! closed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::io::AsRawFd;
use std::time::Duration;

use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use tokio::io::AsyncReadExt;

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes with its CRLF.
const V1_MAX: usize = 107;
/// The v2 fixed part.
const V2_FIXED: usize = 16;

/// What a header says: the client's address, or `None` (v1 `UNKNOWN`, v2 `LOCAL` or a family
/// other than TCP over IPv4/IPv6), when the real peer stands.
pub type Source = Option<SocketAddr>;

/// Parses a header at the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// source and the header's length.
pub fn parse(buf: &[u8]) -> Result<Option<(Source, usize)>, &'static str> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] == b'P' {
        return parse_v1(buf);
    }
    if buf[0] == b'\r' {
        return parse_v2(buf);
    }
    Err("no PROXY protocol header")
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Source, usize)>, &'static str> {
    let n = buf.len().min(6);
    if buf[..n] != b"PROXY "[..n] {
        return Err("no PROXY protocol header");
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err("PROXY v1 line too long")
        } else {
            Ok(None)
        };
    };
    if end + 2 > V1_MAX {
        return Err("PROXY v1 line too long");
    }
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| "PROXY v1 line is not text")?;
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields.as_slice() {
        ["UNKNOWN", ..] => None,
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let src: IpAddr = src.parse().map_err(|_| "bad PROXY v1 source address")?;
            let dst: IpAddr = dst
                .parse()
                .map_err(|_| "bad PROXY v1 destination address")?;
            if (*family == "TCP4") != (src.is_ipv4() && dst.is_ipv4()) {
                return Err("PROXY v1 addresses do not match the family");
            }
            let port = |p: &str| {
                if p.len() > 1 && p.starts_with('0') {
                    return Err("bad PROXY v1 port");
                }
                p.parse::<u16>().map_err(|_| "bad PROXY v1 port")
            };
            port(dport)?;
            Some(SocketAddr::new(src, port(sport)?))
        }
        _ => return Err("bad PROXY v1 line"),
    };
    Ok(Some((source, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Source, usize)>, &'static str> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err("no PROXY protocol header");
    }
    if buf.len() < V2_FIXED {
        return Ok(None);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err("unsupported PROXY protocol version");
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = V2_FIXED + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[V2_FIXED..total];
    let source = match (version_command & 0x0f, buf[13]) {
        // LOCAL: a health check of the balancer itself.
        (0, _) => None,
        (1, 0x11) if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        (1, 0x21) if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            Some(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        (1, 0x11 | 0x21) => return Err("PROXY v2 address block too short"),
        (1, _) => None,
        _ => return Err("unsupported PROXY v2 command"),
    };
    Ok(Some((source, total)))
}

/// Reads the header from `stream` within `timeout`, gives back any bytes read past it, and
/// makes its source the stream's peer address. `Err` names why the connection is closed.
pub async fn read(stream: &mut L4Stream, timeout: Duration) -> Result<(), &'static str> {
    let mut buf = Vec::with_capacity(V1_MAX);
    let mut chunk = [0u8; V1_MAX];
    let deadline = tokio::time::Instant::now() + timeout;
    let (source, used) = loop {
        if let Some(found) = parse(&buf)? {
            break found;
        }
        // Never read past what the header may still need, so that little is given back.
        let want = if buf.first() == Some(&b'\r') && buf.len() >= V2_FIXED {
            V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]])) - buf.len()
        } else {
            V1_MAX.saturating_sub(buf.len()).max(1)
        };
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk[..want.min(V1_MAX)]));
        match read.await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err("closed before a PROXY protocol header"),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err("no PROXY protocol header in time"),
        }
    };
    if used < buf.len() {
        stream.rewind(&buf[used..]);
    }
    if let Some(source) = source {
        let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
        let _ = digest.peer_addr.set(Some(PeerAddr::Inet(source)));
        stream.set_socket_digest(digest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\nGET /";
        assert_eq!(
            parse(line),
            Ok(Some((Some("203.0.113.7:5555".parse().unwrap()), 42)))
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"),
            Ok(Some((Some("[2001:db8::1]:1".parse().unwrap()), 32)))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((None, 15))));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(None));
        assert!(parse(b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n").is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4 1.2.3.4 99999 2\r\n").is_err());
        assert!(parse(b"GET / HTTP/1.1\r\n").is_err());
        assert!(parse(&[b'P'; 200]).is_err());
    }

    #[test]
    fn v2_blocks() {
        let mut body = vec![198, 51, 100, 9, 10, 0, 0, 1];
        body.extend_from_slice(&4242u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        let header = v2(1, 0x11, &body);
        assert_eq!(
            parse(&header),
            Ok(Some((Some("198.51.100.9:4242".parse().unwrap()), 28)))
        );
        assert_eq!(parse(&header[..20]), Ok(None));
        assert_eq!(parse(&v2(0, 0, &[])), Ok(Some((None, 16))));
        assert!(parse(&v2(1, 0x11, &[1, 2])).is_err());
        let mut bad = header.clone();
        bad[12] = 0x11;
        assert!(parse(&bad).is_err());
    }
}
