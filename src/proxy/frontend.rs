//! Client connections before Pingora's HTTP handling: the connection limit, and the timeouts
//! for reading a request header and for waiting on an idle keep-alive connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::apps::{HttpServerApp, ServerApp};
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
            self.refuse(stream).await;
            return None;
        }
        let mut session = ServerSession::new_http1(stream);
        self.configure(&mut session, true, shutdown);
        let mut result = self.proxy.process_new_http(session, shutdown).await;
        while let Some((stream, persistent)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(persistent) = persistent {
                persistent.apply_to_session(&mut session);
            }
            self.configure(&mut session, false, shutdown);
            result = self.proxy.process_new_http(session, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}
