//! Response compression in the proxy phases: the upstream response gets the encoding
//! `compress::choose` picks (before the cache stores it), then the body is encoded chunk by
//! chunk.

use bytes::Bytes;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use crate::compress::{self, CompressionStats, Stream};

/// Going upstream: note a HEAD, and undo variant suffixes in `If-None-Match`.
pub fn on_upstream_request(req: &mut RequestHeader, ctx: &mut RequestCtx) {
    ctx.encoding.upstream_head = req.method == http::Method::HEAD;
    if ctx.route_compression().is_some() {
        ctx.encoding.etag_suffix = compress::strip_variant_suffixes(req);
    }
}

/// The upstream's response header: decide whether to encode, and rewrite the headers.
pub fn on_upstream_response(
    session: &Session,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
    stats: &CompressionStats,
) -> Result<()> {
    // Hold the runtime (one reference count) so the settings are borrowed, not copied, on
    // every response.
    let Some(runtime) = ctx.runtime.clone() else {
        return Ok(());
    };
    let Some(settings) = ctx
        .route
        .and_then(|i| runtime.config.routes.get(i))
        .and_then(|r| r.compression.as_ref())
    else {
        return Ok(());
    };
    if resp.status == http::StatusCode::NOT_MODIFIED {
        compress::on_not_modified(resp, ctx.encoding.etag_suffix);
        return Ok(());
    }
    let accept = session
        .req_header()
        .headers
        .get(http::header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let Some(alg) = compress::choose(settings, accept, resp) else {
        return Ok(());
    };
    if !ctx.encoding.upstream_head {
        let stream = Stream::start(alg, &settings.levels, stats)
            .map_err(|e| Error::because(ErrorType::InternalError, "starting the encoder", e))?;
        ctx.encoding.stream = Some(stream);
    }
    Ok(())
}

/// A chunk of the upstream body.
pub fn on_upstream_body(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestCtx,
    stats: &CompressionStats,
) -> Result<()> {
    if let Some(stream) = ctx.encoding.stream.as_mut() {
        stream
            .filter(body, end_of_stream, stats)
            .map_err(|e| Error::because(ErrorType::InternalError, "compressing the body", e))?;
    }
    Ok(())
}
