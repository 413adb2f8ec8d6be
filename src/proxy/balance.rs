//! Choosing and re-choosing the backend for a request: sticky cookies, the pool's strategy,
//! retries on another backend, and feeding results to passive health.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_proxy::Session;

use super::client;
use super::ctx::RequestCtx;
use super::retry::{self, Failure};
use crate::config::Strategy;
use crate::metrics::Metrics;
use crate::upstream::selection::ring::hash_key;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Works out who the client is and what the request allows, once routed.
pub fn prepare(session: &mut Session, ctx: &mut RequestCtx) {
    let (Some(runtime), Some(pool)) = (&ctx.runtime, &ctx.upstream.pool) else {
        return;
    };
    let trusted = &runtime.config.server.trusted_proxies;
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let req = session.req_header();
    if let Some(peer) = peer {
        ctx.upstream.peer_trusted = client::is_trusted(peer, trusted);
        // Only ip_hash needs the client behind the proxies; others skip the header walk.
        if pool.strategy == Strategy::IpHash {
            // Set by `gate::identify` from the same peer and trusted proxies.
            let client = ctx.client_ip.unwrap_or(peer);
            ctx.upstream.hash = Some(hash_key(&client::hash_input(&pool.hash_key, req, client)));
        }
    }
    ctx.upstream.resendable = retry::safe_to_resend(req);
    let retries_after_send = pool.retry.timeout || !pool.retry.statuses.is_empty();
    if pool.retry.retries > 0 && retries_after_send && ctx.upstream.resendable {
        session.as_mut().enable_retry_buffering();
    }
}

/// Picks the backend for this attempt and describes how to reach it. When every backend
/// it could use is at its `max_conns`, the request waits in the upstream's queue.
pub async fn pick(session: &Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let pool = ctx
        .upstream
        .pool
        .clone()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "route without a pool"))?;
    // Leaving the previous attempt ends its in-flight count.
    ctx.upstream.attempt = None;
    ctx.upstream.answered = false;
    let now = now_unix();
    let mut pinned = ctx
        .upstream
        .reconnect
        .take()
        .filter(|&i| pool.backends[i].is_available());
    if pinned.is_none() && ctx.upstream.tried.is_empty() {
        if let Some(sticky) = &pool.sticky {
            let cookies = session
                .req_header()
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok());
            let found = sticky
                .codec
                .find(cookies)
                .and_then(|value| pool.sticky_backend(value, now));
            if let Some((index, refresh)) = found {
                pinned = Some(index);
                if !refresh {
                    ctx.upstream.set_cookie = None;
                } else {
                    ctx.upstream.set_cookie = pool.sticky_cookie(index, now);
                }
            }
        }
    }
    if let Some(max) = pool.max_in_flight {
        let in_flight: u64 = pool.backends.iter().map(|b| b.in_flight()).sum();
        if in_flight >= max {
            pool.count_overload();
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                format!("upstream {}: max_in_flight ({max}) reached", pool.name),
            ));
        }
    }
    let mut waiting = None;
    let (index, guard) = loop {
        // A pinned backend at its `max_conns` gives way to balancing (the cookie moves).
        if let Some(i) = pinned.take() {
            if let Some(guard) = pool.backends[i].try_start_request() {
                break (i, guard);
            }
        }
        if let Some((i, backend)) = pool.select(ctx.upstream.hash, &ctx.upstream.tried) {
            if let Some(guard) = backend.try_start_request() {
                ctx.upstream.set_cookie = pool.sticky_cookie(i, now);
                break (i, guard);
            }
            // Filled up since it was picked: look again.
            continue;
        }
        let queue = match (
            &pool.capacity.queue,
            pool.waits_for_slot(&ctx.upstream.tried),
        ) {
            (Some(queue), true) => queue,
            (None, true) => {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    format!("upstream {}: every backend is at max_conns", pool.name),
                ))
            }
            (_, false) => {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    format!("upstream {}: no healthy backend", pool.name),
                ))
            }
        };
        let waited = match &waiting {
            // Joined: look once more before sleeping, so a slot freed meanwhile is seen.
            None => pool
                .waiters
                .enter(queue.size, queue.timeout)
                .map(|place| waiting = Some(place)),
            Some(place) => place.next().await,
        };
        if let Err(e) = waited {
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                format!("upstream {}: {e}", pool.name),
            ));
        }
    };
    drop(waiting);
    if !ctx.upstream.tried.contains(&index) {
        ctx.upstream.tried.push(index);
    }
    let backend = Arc::clone(guard.backend());
    ctx.upstream.attempt = Some((index, guard));
    let mut peer = HttpPeer::new(backend.addr, pool.tls.is_some(), String::new());
    if let Some(tls) = &pool.tls {
        tls.apply(&mut peer, &backend.host);
    }
    if pool.http2 {
        // HTTP/2 only (ALPN h2, or prior knowledge over plain TCP), requests multiplexed.
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
    }
    // The route's timeouts, where it sets them, over the upstream's.
    let route = ctx.route();
    let read_timeout = route
        .and_then(|r| r.read_timeout)
        .unwrap_or(pool.read_timeout);
    peer.options.connection_timeout = Some(
        route
            .and_then(|r| r.connect_timeout)
            .unwrap_or(pool.connect_timeout),
    );
    peer.options.read_timeout = Some(read_timeout);
    peer.options.write_timeout = Some(read_timeout);
    peer.options.idle_timeout = Some(pool.capacity.keepalive.idle_timeout);
    Ok(Box::new(peer))
}

/// Requests sent at once on one HTTP/2 connection to a backend.
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// The attempt has its upstream connection: count whether it came from the pool.
pub fn on_connected(ctx: &RequestCtx, reused: bool, metrics: &Metrics) {
    if let Some((pool, index)) = ctx.upstream.current() {
        metrics.observe_upstream_connect(&pool.name, &pool.backends[index].name, reused);
    }
}

/// A connection to the backend failed: count it and retry elsewhere when the policy allows.
pub fn on_connect_failure(ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
    let Some((pool, index)) = ctx.upstream.current().map(|(p, i)| (Arc::clone(p), i)) else {
        return e;
    };
    pool.backends[index].record_failure();
    pool.report(index, false);
    if pool.tls.is_some()
        && matches!(
            e.etype(),
            ErrorType::TLSHandshakeFailure
                | ErrorType::InvalidCert
                | ErrorType::TLSHandshakeTimedout
        )
    {
        // The client only sees a 502: say here which upstream's certificate failed.
        log::warn!(
            "upstream {}: backend {}: TLS handshake failed: {e}",
            pool.name,
            pool.backends[index].name
        );
    }
    let failure = retry::classify_connect(&e);
    let retry = retry::allows(&pool.retry, failure, ctx.upstream.attempts(), true)
        && pool.has_candidate(&ctx.upstream.tried);
    e.set_retry(retry);
    e
}

/// How many times one request may move on after a pooled connection failed before any
/// response byte. Each such failure uses up one stale pooled connection; Pingora caps all
/// attempts of a request at its `max_retries` (16) as well.
const MAX_STALE_RETRIES: u8 = 4;

/// The exchange failed after connecting: count it, and decide whether to try again.
///
/// A reused (pooled) connection that the backend closed or reset before any response byte is
/// retried for resendable requests whatever `retries` says (nginx's `proxy_next_upstream error`
/// default): on another available backend when there is one, not counted as an attempt,
/// else on the same backend. The same failure on a fresh connection counts as an attempt.
pub fn on_proxy_error(
    session: &Session,
    ctx: &mut RequestCtx,
    mut e: Box<Error>,
    client_reused: bool,
) -> Box<Error> {
    let Some((pool, index)) = ctx.upstream.current().map(|(p, i)| (Arc::clone(p), i)) else {
        return e;
    };
    let failure = retry::classify(&e, ctx.upstream.answered);
    let stale = client_reused && failure == Failure::Dropped;
    if e.esource() == &ErrorSource::Upstream && !matches!(failure, Failure::Status(_)) {
        pool.backends[index].record_failure();
        // A stale pooled connection says little about the backend now; the next attempt
        // (a fresh connection, or another pooled one) does.
        if !stale {
            pool.report(index, false);
        }
    }
    let resendable = ctx.upstream.resendable && !session.as_ref().retry_buffer_truncated();
    match failure {
        // Decided when the status arrived (see `on_upstream_status`).
        Failure::Status(_) => {}
        _ if stale => {
            let retry = resendable && ctx.upstream.stale_retries < MAX_STALE_RETRIES;
            if retry {
                ctx.upstream.stale_retries += 1;
                if pool.has_candidate(&ctx.upstream.tried) {
                    ctx.upstream.free_attempts += 1;
                } else {
                    ctx.upstream.reconnect = Some(index);
                }
            }
            e.set_retry(retry);
        }
        _ => {
            let retry = retry::allows(&pool.retry, failure, ctx.upstream.attempts(), resendable)
                && pool.has_candidate(&ctx.upstream.tried);
            e.set_retry(retry);
        }
    }
    e
}

/// The upstream answered: feed passive health, and turn a status listed in `retry_on` into a
/// retry when another backend is left.
pub fn on_upstream_status(ctx: &mut RequestCtx, status: u16) -> Result<()> {
    let Some((pool, index)) = ctx.upstream.current().map(|(p, i)| (Arc::clone(p), i)) else {
        return Ok(());
    };
    ctx.upstream.answered = true;
    pool.report(index, status < 500);
    let failure = Failure::Status(status);
    if retry::allows(
        &pool.retry,
        failure,
        ctx.upstream.attempts(),
        ctx.upstream.resendable,
    ) && pool.has_candidate(&ctx.upstream.tried)
    {
        let mut e = Error::explain(
            ErrorType::HTTPStatus(status),
            format!("backend answered {status}; retrying on another"),
        );
        e.esource = ErrorSource::Upstream;
        e.set_retry(true);
        return Err(e);
    }
    Ok(())
}
