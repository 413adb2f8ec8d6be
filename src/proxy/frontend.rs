//! Client connections before Pingora's HTTP handling: the connection limit, the TLS handshake
//! on TLS listeners (see `handshake`), the choice of HTTP/2 (ALPN `h2`, or the h2c preface on
//! a plain listener) whose connections Pingora's own HTTP/2 server takes, and for HTTP/1.1
//! reading each request header under one deadline and a size limit (see `reader`) and the
//! wait for the next request on an idle keep-alive connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::errors;
use super::h2_streams::{self, H2Streams};
use super::handshake;
use super::hit;
use super::proxy_protocol;
use super::reader::{self, Head, HeaderError, READ_CHUNK};
use super::refusals::{self, Known, PerIp, Refused};
use super::Proxy;
use crate::config::Server;
use crate::state::Shared;

/// How long a refused connection may take to send its request before it gets its answer.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Pingora's parser refuses a header over 1 MiB whatever we allow.
const PINGORA_MAX_HEADER: u64 = (1 << 20) - 2;

/// Wraps the Pingora proxy app with connection-level limits.
pub struct Frontend {
    proxy: Arc<HttpProxy<Proxy>>,
    shared: Arc<Shared>,
    connections: AtomicUsize,
    /// Open connections by client address (`server.max_connections_per_ip`).
    per_ip: PerIp,
    /// The TLS listen addresses: a connection that arrived on one is TLS.
    tls_listen: Vec<SocketAddr>,
    /// HTTP/2 handlers in flight per connection, shared with the proxy.
    streams: Arc<H2Streams>,
}

/// How an HTTP/2 connection with prior knowledge starts (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The running config's connection settings, copied so that a waiting connection holds no
/// config version.
#[derive(Debug, Clone, Copy)]
struct Timing {
    header_timeout: Duration,
    keepalive_timeout: Duration,
    /// `server.max_header_size`, within what Pingora's parser accepts.
    header_limit: usize,
    h2c: bool,
}

impl Timing {
    fn of(shared: &Shared) -> Timing {
        Timing::from(&shared.runtime().config.server)
    }
}

impl From<&Server> for Timing {
    fn from(server: &Server) -> Timing {
        Timing {
            header_timeout: server.header_timeout,
            keepalive_timeout: server.keepalive_timeout,
            header_limit: usize::try_from(server.max_header_size.min(PINGORA_MAX_HEADER))
                .unwrap_or(usize::MAX),
            h2c: server.h2c,
        }
    }
}

impl Frontend {
    /// The front end of `proxy`; connections arriving on a `tls_listen` address are TLS.
    pub fn new(
        proxy: HttpProxy<Proxy>,
        shared: Arc<Shared>,
        tls_listen: Vec<SocketAddr>,
        streams: Arc<H2Streams>,
    ) -> Frontend {
        Frontend {
            proxy: Arc::new(proxy),
            shared,
            connections: AtomicUsize::new(0),
            per_ip: PerIp::default(),
            tls_listen,
            streams,
        }
    }

    /// Whether `stream` arrived on a TLS listener (by the local address it was accepted on).
    fn arrived_on_tls(&self, stream: &Stream) -> bool {
        if self.tls_listen.is_empty() {
            return false;
        }
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        local.is_some_and(|local| {
            self.tls_listen.iter().any(|l| {
                l.port() == local.port() && (l.ip().is_unspecified() || l.ip() == local.ip())
            })
        })
    }

    /// Whether connections on this kind of listener start with a PROXY protocol header.
    fn expects_proxy_header(&self, tls: bool) -> bool {
        let runtime = self.shared.runtime();
        if tls {
            runtime
                .config
                .tls
                .as_ref()
                .is_some_and(|t| t.proxy_protocol)
        } else {
            runtime.config.server.proxy_protocol
        }
    }

    /// Reads the PROXY protocol header; `None` (the connection closes) without a valid one.
    async fn proxy_header(&self, stream: Stream) -> Option<Stream> {
        let timeout = self.shared.runtime().config.server.header_timeout;
        let mut l4 = handshake::plain(stream)?;
        match proxy_protocol::read(&mut l4, timeout).await {
            Ok(()) => Some(l4),
            Err(reason) => {
                log::debug!("closing a client connection: {reason}");
                None
            }
        }
    }

    /// Reads on from a first byte `P` until the h2c preface is complete or ruled out: `Some`
    /// with whether it is the preface, `None` when the client closed or was too slow.
    async fn h2c_preface(
        stream: &mut Stream,
        buf: &mut BytesMut,
        deadline: Instant,
    ) -> Option<bool> {
        loop {
            let n = buf.len().min(H2_PREFACE.len());
            if buf[..n] != H2_PREFACE[..n] {
                return Some(false);
            }
            if n == H2_PREFACE.len() {
                return Some(true);
            }
            match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
                Ok(Ok(read)) if read > 0 => {}
                _ => return None,
            }
        }
    }

    /// Hands an HTTP/2 connection to Pingora's HTTP/2 server (its handshake, then each stream
    /// through the proxy phases, GOAWAY on shutdown). `read` is what was read of it already.
    /// The connection gets its own shutdown signal, raised by a server shutdown or by a flood
    /// of streams (`h2_streams`), so that either ends it with a graceful GOAWAY.
    async fn serve_h2(
        &self,
        stream: Stream,
        read: &[u8],
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream = if read.is_empty() {
            stream
        } else {
            let mut l4 = handshake::plain(stream)?;
            l4.rewind(read);
            l4
        };
        let registered = h2_streams::key_of_stream(&stream)
            .and_then(|key| self.streams.register(key, *shutdown.borrow()));
        let Some((registration, own)) = registered else {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        };
        let mut server = shutdown.clone();
        let forward = async {
            loop {
                if server.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                if *server.borrow() {
                    registration.shut_down();
                }
            }
        };
        tokio::select! {
            served = ServerApp::process_new(&self.proxy, stream, &own) => served,
            () = forward => None,
        }
    }

    /// Waits up to `wait` for the first byte of the client's next request, holding no buffer.
    /// `None` when the client closed, the wait timed out or the server began shutting down.
    async fn first_byte(
        stream: &mut Stream,
        wait: Duration,
        shutdown: &ShutdownWatch,
    ) -> Option<BytesMut> {
        let mut shutdown = shutdown.clone();
        let stopping = async move {
            // A dropped sender means no shutdown will be announced: wait on the read alone.
            if shutdown.wait_for(|stopping| *stopping).await.is_err() {
                std::future::pending::<()>().await;
            }
            // A request the client sent as the shutdown began may be on its way: closing now
            // would reset it. It is served (with `Connection: close`) if it comes soon.
            tokio::time::sleep(LAST_CALL).await;
        };
        let mut byte = [0u8; 1];
        tokio::select! {
            biased;
            read = tokio::time::timeout(wait, stream.read(&mut byte)) => match read {
                Ok(Ok(1)) => {
                    let mut buf = BytesMut::with_capacity(READ_CHUNK);
                    buf.put_u8(byte[0]);
                    Some(buf)
                }
                _ => None,
            },
            () = stopping => None,
        }
    }

    /// Answers 503 on a connection over `server.max_connections` or
    /// `server.max_connections_per_ip`, once its request is read, and logs it.
    async fn refuse_connection(&self, mut stream: Stream, refused: Refused, known: Known<'_>) {
        let runtime = self.shared.runtime();
        let server = &runtime.config.server;
        let timing = Timing::from(server);
        let deadline = Instant::now() + REFUSAL_READ_TIMEOUT.min(timing.header_timeout);
        let buf = BytesMut::with_capacity(READ_CHUNK);
        let line = match reader::read_head(&mut stream, buf, deadline, timing.header_limit).await {
            Ok(head) => reader::request_line(&head.head),
            Err(HeaderError::TooLarge(_, line)) => line,
            Err(_) => return,
        };
        let known = Known {
            line: line.as_ref(),
            ..known
        };
        refusals::log(&self.shared, refused, known);
        errors::refuse(stream, refused.status(), refused.detail(), server).await
    }

    /// Serves the requests of one connection until it closes or is not kept alive.
    async fn serve(
        &self,
        mut stream: Stream,
        tls: bool,
        known: Known<'_>,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = Instant::now();
        let mut persistent: Option<HttpPersistentSettings> = None;
        // The start of the next request when the client pipelined it behind the last one.
        let mut pipelined: Option<BytesMut> = None;
        let mut first = true;
        loop {
            let timing = Timing::of(&self.shared);
            // Wait for the next request holding only the stream: buffers, the config version
            // and the proxy's per-request state exist only while a request is handled, so idle
            // keep-alive connections stay small.
            let (mut buf, deadline) = match pipelined.take() {
                Some(buf) => (buf, Instant::now() + timing.header_timeout),
                None if first => {
                    let deadline = accepted + timing.header_timeout;
                    let wait = deadline.saturating_duration_since(Instant::now());
                    (
                        Self::first_byte(&mut stream, wait, shutdown).await?,
                        deadline,
                    )
                }
                None => {
                    let buf =
                        Self::first_byte(&mut stream, timing.keepalive_timeout, shutdown).await?;
                    (buf, Instant::now() + timing.header_timeout)
                }
            };
            // HTTP/2 with prior knowledge announces itself before a first request.
            if first
                && !tls
                && timing.h2c
                && buf.first() == Some(&b'P')
                && Self::h2c_preface(&mut stream, &mut buf, deadline).await?
            {
                return self.serve_h2(stream, &buf, shutdown).await;
            }
            // From its first byte to its response, a graceful shutdown waits for this request.
            let _started = self.shared.start_request();
            let began = Instant::now().into_std();
            let read = reader::read_head(&mut stream, buf, deadline, timing.header_limit).await;
            let Head {
                head,
                next,
                invalid,
            } = match read {
                Ok(head) => head,
                Err(HeaderError::TooLarge(_, line)) => {
                    let known = Known {
                        started: began,
                        line: line.as_ref(),
                        ..known.clone()
                    };
                    Box::pin(self.refuse_request(stream, Refused::HeaderTooLarge, known)).await;
                    return None;
                }
                Err(e) => {
                    log::debug!("closing a client connection: {e}");
                    let _ = AsyncWriteExt::shutdown(&mut stream).await;
                    return None;
                }
            };
            if invalid && refusals::pingora_refuses(&head).await {
                let line = reader::request_line(&head);
                let known = Known {
                    started: began,
                    line: line.as_ref(),
                    ..known.clone()
                };
                Box::pin(self.refuse_request(stream, Refused::MalformedHeader, known)).await;
                return None;
            }
            pipelined = next;
            if !invalid {
                let conn = hit::Conn {
                    tls,
                    peer: known.client_ip,
                    tls_version: known.tls_version.as_deref(),
                    closing: *shutdown.borrow(),
                };
                // Boxed: its state would otherwise size every idle connection's future.
                match Box::pin(hit::serve(&self.shared, &head, &mut stream, conn)).await {
                    Some(hit::Served::KeepAlive) => {
                        first = false;
                        continue;
                    }
                    Some(hit::Served::Close) => return None,
                    None => {}
                }
            }
            let mut session = ServerSession::new_http1(stream);
            if let Some(persistent) = persistent.take() {
                persistent.apply_to_session(&mut session);
            }
            // `None` when shutting down so that the connection is not kept.
            if *shutdown.borrow() {
                session.set_keepalive(None);
            } else {
                session.set_keepalive(Some(timing.keepalive_timeout.as_secs().max(1)));
            }
            // Pingora parses these bytes as the request; it reads the stream only for the body.
            session.set_pipelined_prefix(head);
            let (next, settings) = self
                .proxy
                .process_new_http(session, shutdown)
                .await?
                .consume();
            stream = next;
            persistent = settings;
            first = false;
        }
    }
}

impl Frontend {
    /// Answers a request the front end refuses (431, 400) and closes, with its log line.
    async fn refuse_request(&self, stream: Stream, refused: Refused, known: Known<'_>) {
        refusals::log(&self.shared, refused, known);
        let runtime = self.shared.runtime();
        errors::refuse(
            stream,
            refused.status(),
            refused.detail(),
            &runtime.config.server,
        )
        .await;
    }
}

/// The client's address: the socket peer, or the PROXY protocol header's source.
fn client_ip(stream: &Stream) -> Option<IpAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
}

/// Once shutdown begins (SIGTERM, or the end of a graceful upgrade), how long a connection
/// waiting for its next request still waits before it is closed.
pub const LAST_CALL: Duration = Duration::from_millis(300);

/// Gives the connection slot back when the connection ends, however it ends.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl ServerApp for Frontend {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = std::time::Instant::now();
        let open = self.connections.fetch_add(1, Ordering::AcqRel) + 1;
        let _slot = Slot(&self.connections);
        let tls = self.arrived_on_tls(&stream);
        let stream = if self.expects_proxy_header(tls) {
            Box::pin(self.proxy_header(stream)).await?
        } else {
            stream
        };
        let client_ip = client_ip(&stream);
        let (_ip_slot, open_from_ip) = match client_ip {
            Some(ip) => {
                let (slot, n) = self.per_ip.enter(ip);
                (Some(slot), n)
            }
            None => (None, 0),
        };
        let stream = if tls {
            Box::pin(handshake::accept(stream, &self.shared)).await?
        } else {
            stream
        };
        let known = Known {
            client_ip,
            tls_version: stream.get_ssl_digest().map(|d| d.version.to_string()),
            started: accepted,
            line: None,
        };
        let refused = {
            let runtime = self.shared.runtime();
            let server = &runtime.config.server;
            if open > server.max_connections {
                Some(Refused::MaxConnections)
            } else if server
                .max_connections_per_ip
                .is_some_and(|limit| open_from_ip as usize > limit)
            {
                Some(Refused::MaxConnectionsPerIp)
            } else {
                None
            }
        };
        if let Some(refused) = refused {
            let counter = match refused {
                Refused::MaxConnectionsPerIp => {
                    &self.shared.refused_connections.max_connections_per_ip
                }
                _ => &self.shared.refused_connections.max_connections,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            // Boxed: its reads would otherwise size every connection's future.
            Box::pin(self.refuse_connection(stream, refused, known)).await;
            return None;
        }
        if tls && matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.serve_h2(stream, &[], shutdown).await;
        }
        self.serve(stream, tls, known, shutdown).await
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}
