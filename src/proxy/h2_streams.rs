//! HTTP/2 streams reset by the client, per connection: the rapid-reset defence
//! (CVE-2023-44487), in the manner of HAProxy's per-connection "glitches" counter.
//!
//! A stream the client resets before the proxy took it up is counted by the h2 codec itself
//! (`max_pending_accept_reset_streams`, which answers with GOAWAY `ENHANCE_YOUR_CALM`). But
//! Pingora takes every stream up as soon as its HEADERS arrive, so a client that resets each
//! stream a moment later passes that check, and although Pingora then stops the stream's work
//! at once, each such stream has already cost a request to a backend. Here a connection is
//! counted: once its client has reset more than twice `server.h2_max_concurrent_streams`
//! streams and more than it let finish, it is sent GOAWAY through the connection's own shutdown
//! signal (Pingora's HTTP/2 loop answers it with a graceful GOAWAY: streams in flight finish, no
//! new one is accepted, the connection closes), and any stream it still opens before it sees
//! the GOAWAY is answered 429 without reaching a backend. A browser that cancels some of many
//! requests keeps its connection; a client that mostly cancels loses it after a bounded number.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_error::{Error, ErrorSource};
use tokio::sync::watch;

/// A client connection: its peer and local addresses (the PROXY protocol's source, when used).
pub type ConnKey = (SocketAddr, SocketAddr);

/// One HTTP/2 connection's stream counts and its own shutdown signal.
#[derive(Debug)]
struct Conn {
    answered: AtomicU32,
    reset: AtomicU32,
    flooded: AtomicBool,
    goaway: watch::Sender<bool>,
}

/// The HTTP/2 connections being served, by their addresses.
#[derive(Debug, Default)]
pub struct H2Streams {
    conns: Mutex<HashMap<ConnKey, Arc<Conn>>>,
}

/// A connection's place in [`H2Streams`], removed when dropped.
#[derive(Debug)]
pub struct Registration<'a> {
    streams: &'a H2Streams,
    key: ConnKey,
    conn: Arc<Conn>,
}

impl H2Streams {
    /// Tracks a new connection and gives it its own shutdown signal. `None` when another live
    /// connection has the same addresses (this one then goes untracked, bounded by the codec's
    /// own limits only).
    pub fn register(
        &self,
        key: ConnKey,
        shutting_down: bool,
    ) -> Option<(Registration<'_>, ShutdownWatch)> {
        let (goaway, watch) = watch::channel(shutting_down);
        let conn = Arc::new(Conn {
            answered: AtomicU32::new(0),
            reset: AtomicU32::new(0),
            flooded: AtomicBool::new(false),
            goaway,
        });
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.contains_key(&key) {
            return None;
        }
        conns.insert(key, Arc::clone(&conn));
        Some((
            Registration {
                streams: self,
                key,
                conn,
            },
            watch,
        ))
    }

    fn get(&self, key: &ConnKey) -> Option<Arc<Conn>> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.get(key).cloned()
    }

    /// Counts a finished stream of connection `key`; `true` when this reset made the
    /// connection a flood, which sends it GOAWAY.
    pub fn end_stream(&self, key: &ConnKey, reset: bool, limit: u32) -> bool {
        let Some(conn) = self.get(key) else {
            return false;
        };
        if !reset {
            conn.answered.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let resets = conn.reset.fetch_add(1, Ordering::Relaxed) + 1;
        if resets <= limit || resets <= conn.answered.load(Ordering::Relaxed) {
            return false;
        }
        let first = !conn.flooded.swap(true, Ordering::AcqRel);
        if first {
            conn.goaway.send_replace(true);
        }
        first
    }

    /// Whether connection `key` was found flooding.
    pub fn is_flooded(&self, key: &ConnKey) -> bool {
        self.get(key)
            .is_some_and(|c| c.flooded.load(Ordering::Acquire))
    }

    /// How many connections are tracked.
    pub fn tracked(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Registration<'_> {
    /// Passes a server shutdown on to the connection's own signal.
    pub fn shut_down(&self) {
        self.conn.goaway.send_replace(true);
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut conns = self.streams.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.conn))
        {
            conns.remove(&self.key);
        }
    }
}

/// Whether the request came on an HTTP/2 connection already found flooding: it is refused.
pub fn flooded(streams: &H2Streams, session: &ServerSession) -> bool {
    session.is_http2() && key_of_session(session).is_some_and(|k| streams.is_flooded(&k))
}

/// Counts the end of an HTTP/2 request: reset when it failed other than upstream (the client
/// went away, or broke the stream). `true` when this made its connection a flood: more than
/// twice `max_concurrent_streams` resets, and more than answered streams.
pub fn finished(
    streams: &H2Streams,
    session: &ServerSession,
    e: Option<&Error>,
    max_concurrent_streams: u32,
) -> bool {
    if !session.is_http2() {
        return false;
    }
    let Some(key) = key_of_session(session) else {
        return false;
    };
    let reset = e.is_some_and(|e| e.esource() != &ErrorSource::Upstream);
    let flood = streams.end_stream(&key, reset, max_concurrent_streams.saturating_mul(2));
    if flood {
        log::warn!(
            "sending GOAWAY to {}: it reset more than {} HTTP/2 streams (rapid reset)",
            key.0,
            max_concurrent_streams.saturating_mul(2)
        );
    }
    flood
}

fn inet(addr: Option<&PeerAddr>) -> Option<SocketAddr> {
    addr.and_then(|a| a.as_inet()).copied()
}

/// The addresses of a client connection as accepted.
pub fn key_of_stream(stream: &Stream) -> Option<ConnKey> {
    let digest = stream.get_socket_digest()?;
    Some((inet(digest.peer_addr())?, inet(digest.local_addr())?))
}

/// The addresses of the connection a request came on.
pub fn key_of_session(session: &ServerSession) -> Option<ConnKey> {
    Some((inet(session.client_addr())?, inet(session.server_addr())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> ConnKey {
        (
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from(([127, 0, 0, 1], 443)),
        )
    }

    #[test]
    fn a_connection_resetting_more_than_it_lets_finish_is_sent_goaway_once() {
        let streams = H2Streams::default();
        let (registration, mut watch) = streams.register(key(1), false).unwrap();
        for _ in 0..3 {
            assert!(!streams.end_stream(&key(1), true, 3));
        }
        assert!(!*watch.borrow_and_update());
        assert!(!streams.is_flooded(&key(1)));
        assert!(streams.end_stream(&key(1), true, 3));
        assert!(watch.has_changed().unwrap());
        assert!(*watch.borrow_and_update());
        assert!(streams.is_flooded(&key(1)));
        // Counted once.
        assert!(!streams.end_stream(&key(1), true, 3));
        // Another connection is counted apart, and an unknown one not at all.
        let (_other, other_watch) = streams.register(key(2), false).unwrap();
        assert!(!streams.is_flooded(&key(2)));
        assert!(!*other_watch.borrow());
        assert!(!streams.end_stream(&key(3), true, 0));
        drop(registration);
        assert_eq!(streams.tracked(), 1);
        assert!(!streams.is_flooded(&key(1)));
    }

    #[test]
    fn a_client_that_lets_most_streams_finish_keeps_its_connection() {
        let streams = H2Streams::default();
        let (_registration, watch) = streams.register(key(1), false).unwrap();
        for _ in 0..100 {
            assert!(!streams.end_stream(&key(1), false, 3));
            assert!(!streams.end_stream(&key(1), true, 3));
        }
        assert!(!*watch.borrow());
        assert!(!streams.is_flooded(&key(1)));
    }

    #[test]
    fn the_same_addresses_twice_go_untracked() {
        let streams = H2Streams::default();
        let first = streams.register(key(1), false);
        assert!(first.is_some());
        assert!(streams.register(key(1), false).is_none());
        drop(first);
        assert!(streams
            .register(key(1), true)
            .is_some_and(|(_, w)| *w.borrow()));
    }
}
