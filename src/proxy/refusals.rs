//! What the front end refuses before a request reaches the proxy phases: connections over
//! `server.max_connections` or `server.max_connections_per_ip` (counted here per client
//! address), headers over `max_header_size` (431) and malformed heads (400). Each gets an
//! access log line with what is known of it.

use std::collections::HashMap;
use std::io::Cursor;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use bytes::BytesMut;
use pingora_core::protocols::http::ServerSession;
use pingora_error::ErrorType;

use super::errors;
use super::reader::RequestLine;
use crate::access_log::Entry;
use crate::state::Shared;

/// Why the front end refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    MaxConnections,
    MaxConnectionsPerIp,
    HeaderTooLarge,
    MalformedHeader,
}

impl Refused {
    pub fn status(self) -> u16 {
        match self {
            Refused::MaxConnections | Refused::MaxConnectionsPerIp => 503,
            Refused::HeaderTooLarge => 431,
            Refused::MalformedHeader => 400,
        }
    }

    /// The answer's detail, and the log line's `error`.
    pub fn detail(self) -> &'static str {
        match self {
            Refused::MaxConnections => "too many connections",
            Refused::MaxConnectionsPerIp => "too many connections from this address",
            Refused::HeaderTooLarge => "request header too large",
            Refused::MalformedHeader => "malformed request header",
        }
    }
}

/// What is known of a refused connection or request.
#[derive(Debug, Clone)]
pub struct Known<'a> {
    pub client_ip: Option<IpAddr>,
    /// `TLSv1.3` and so on, on a TLS connection.
    pub tls_version: Option<String>,
    /// When its connection was accepted or its header began.
    pub started: Instant,
    pub line: Option<&'a RequestLine>,
}

/// Writes the access log line of a front-end refusal (never sampled out: it is a 4xx/5xx).
pub fn log(shared: &Shared, refused: Refused, known: Known<'_>) {
    if !shared.runtime().config.access_log.enabled {
        return;
    }
    let duration = known.started.elapsed();
    let status = refused.status();
    let (method, path, query) = match known.line {
        Some(line) => {
            let (path, query) = match line.target.split_once('?') {
                Some((path, query)) => (path, Some(query.to_string())),
                None => (line.target.as_str(), None),
            };
            (line.method.clone(), path.to_string(), query)
        }
        None => (String::new(), String::new(), None),
    };
    shared.access_log.log(Entry {
        time: Some(SystemTime::now() - duration),
        client_ip: known.client_ip,
        method,
        path,
        query,
        protocol: "HTTP/1.1",
        status,
        bytes_sent: errors::body(status, refused.detail()).len() as u64,
        duration,
        tls_version: known.tls_version,
        error: Some(refused.detail().to_string()),
        ..Entry::default()
    });
}

/// Whether Pingora's parser refuses `head` (it would answer 400): it is parsed as Pingora will
/// parse it, from memory. A head it accepts (a request line it escapes) goes on to it.
pub async fn pingora_refuses(head: &BytesMut) -> bool {
    let mut dry = ServerSession::new_http1(Box::new(Cursor::new(Vec::<u8>::new())));
    dry.set_pipelined_prefix(head.clone());
    matches!(dry.read_request().await, Err(e) if e.etype() == &ErrorType::InvalidHTTPHeader)
}

/// Open client connections by address. Counted whether or not a limit is set, so that a
/// reload that sets one finds the counts right.
#[derive(Debug, Default)]
pub struct PerIp {
    shards: [Mutex<HashMap<IpAddr, u32>>; 16],
}

impl PerIp {
    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let index = match ip {
            IpAddr::V4(v4) => usize::from(v4.octets()[3]),
            IpAddr::V6(v6) => usize::from(v6.octets()[15]),
        };
        &self.shards[index % 16]
    }

    /// Counts a connection from `ip` until the slot drops; with how many are open from it
    /// now, this one included.
    pub fn enter(&self, ip: IpAddr) -> (IpSlot<'_>, u32) {
        let mut open = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        *n += 1;
        let now = *n;
        (IpSlot { per_ip: self, ip }, now)
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> u32 {
        let open = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

/// One open connection from an address; see [`PerIp::enter`].
#[derive(Debug)]
pub struct IpSlot<'a> {
    per_ip: &'a PerIp,
    ip: IpAddr,
}

impl Drop for IpSlot<'_> {
    fn drop(&mut self) {
        let mut open = self
            .per_ip
            .shard(&self.ip)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_and_forgets_closed_ones() {
        let per_ip = PerIp::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "::2".parse().unwrap();
        let (first, n) = per_ip.enter(a);
        assert_eq!(n, 1);
        let (second, n) = per_ip.enter(a);
        assert_eq!(n, 2);
        let (_other, n) = per_ip.enter(b);
        assert_eq!(n, 1);
        drop(first);
        assert_eq!(per_ip.open(a), 1);
        drop(second);
        assert_eq!(per_ip.open(a), 0);
        assert!(per_ip.shard(&a).lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn pingora_decides_on_heads_our_parser_refused() {
        assert!(pingora_refuses(&BytesMut::from(&b"GARBAGE\r\n\r\n"[..])).await);
        let bad_name = &b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n"[..];
        assert!(pingora_refuses(&BytesMut::from(bad_name)).await);
        assert!(!pingora_refuses(&BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..])).await);
    }
}
