//! Client connections before Pingora's HTTP handling: the connection limit, and the timeouts
//! for reading a request header and for waiting on an idle keep-alive connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;

use super::Proxy;
use crate::state::Shared;

/// How long a refused connection may take to send its request before it gets its 503.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Wraps the Pingora proxy app with connection-level limits.
pub struct Frontend {
    proxy: Arc<HttpProxy<Proxy>>,
    shared: Arc<Shared>,
    connections: AtomicUsize,
}

impl Frontend {
    pub fn new(proxy: HttpProxy<Proxy>, shared: Arc<Shared>) -> Frontend {
        Frontend {
            proxy: Arc::new(proxy),
            shared,
            connections: AtomicUsize::new(0),
        }
    }

    /// Applies the timeouts: `first` is the first request of the connection.
    fn configure(&self, session: &mut ServerSession, first: bool, shutdown: &ShutdownWatch) {
        let server = &self.shared.runtime().config.server;
        let wait = if first {
            server.header_timeout
        } else {
            server.keepalive_timeout
        };
        // Pingora applies this to each read of the next request header; `None` when shutting
        // down so that the connection is not kept.
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(wait.as_secs().max(1)));
        }
        session.set_read_timeout(Some(server.header_timeout));
    }

    /// Waits for the first byte of the client's next request, for `server.header_timeout` on
    /// a new connection and `server.keepalive_timeout` between requests. `false` when the
    /// client closed, the wait timed out or the server began shutting down: close then.
    async fn wait_for_request(
        &self,
        stream: &mut Stream,
        first: bool,
        shutdown: &ShutdownWatch,
    ) -> bool {
        let wait = {
            let runtime = self.shared.runtime();
            let server = &runtime.config.server;
            if first {
                server.header_timeout
            } else {
                server.keepalive_timeout
            }
        };
        let mut shutdown = shutdown.clone();
        let stopping = async move {
            // A dropped sender means no shutdown will be announced: wait on the peek alone.
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
            peeked = tokio::time::timeout(wait, stream.try_peek(&mut byte)) => {
                matches!(peeked, Ok(Ok(true)))
            }
            () = stopping => false,
        }
    }

    /// Answers 503 on a connection over `server.max_connections`, then closes it.
    async fn refuse(&self, stream: Stream) {
        let mut session = ServerSession::new_http1(stream);
        session.set_read_timeout(Some(REFUSAL_READ_TIMEOUT));
        session.set_keepalive(None);
        if let Ok(true) = session.read_request().await {
            let body = Bytes::from_static(b"503 Service Unavailable: too many connections\n");
            let mut resp =
                pingora_http::ResponseHeader::build(503, Some(4)).expect("static status");
            let _ = resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
            let _ = resp.insert_header(http::header::CONTENT_LENGTH, body.len());
            let _ = resp.insert_header(http::header::RETRY_AFTER, "1");
            let _ = resp.insert_header(http::header::CONNECTION, "close");
            if let Some(server) = &self.shared.runtime().config.server.server_header {
                let _ = resp.insert_header(http::header::SERVER, server.as_str());
            }
            let _ = session.write_error_response(resp, body).await;
        }
        session.shutdown().await;
    }
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
        let limit = self.shared.runtime().config.server.max_connections;
        let open = self.connections.fetch_add(1, Ordering::AcqRel) + 1;
        let _slot = Slot(&self.connections);
        if open > limit {
            self.shared.count_refused_connection();
            // Boxed: its session and reads would otherwise size every connection's future.
            Box::pin(self.refuse(stream)).await;
            return None;
        }
        let mut stream = stream;
        let mut persistent: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            // Wait for the next request's first byte here, holding only the stream: the
            // proxy's per-request state (tens of KiB) exists only while a request is handled,
            // so idle keep-alive connections stay small.
            if !self.wait_for_request(&mut stream, first, shutdown).await {
                return None;
            }
            let mut session = ServerSession::new_http1(stream);
            if let Some(persistent) = persistent.take() {
                persistent.apply_to_session(&mut session);
            }
            self.configure(&mut session, first, shutdown);
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

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}
