//! Error responses: which status a failure gets, and a short plain-text body that names no
//! backend and no internal error.

use std::time::Duration;

use bytes::Bytes;
use pingora_core::protocols::Stream;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::reader::READ_CHUNK;
use crate::config::{ErrorPage, ErrorPages, Server};

/// The status for a failed request, or `None` when the client is gone and nothing can be sent.
pub fn status_for(e: &Error) -> Option<u16> {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(code) => return Some(*code),
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            return Some(504)
        }
        _ => {}
    }
    match e.esource() {
        ErrorSource::Upstream => Some(502),
        ErrorSource::Downstream => match e.etype() {
            WriteError | ReadError | ConnectionClosed => None,
            _ => Some(400),
        },
        ErrorSource::Internal | ErrorSource::Unset => Some(500),
    }
}

/// Whether the client's connection may serve another request after this failure: not when
/// the client broke the exchange (its bytes cannot be trusted to frame the next request).
pub fn keeps_connection(e: &Error) -> bool {
    e.esource() != &ErrorSource::Downstream
}

/// The reason phrase of `code` (`Error` for a code without one).
pub fn reason(code: u16) -> &'static str {
    http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// The one-line text body of an error answer: `503 Service Unavailable: no healthy backend`.
pub fn body(code: u16, detail: &str) -> String {
    let reason = reason(code);
    if detail.is_empty() {
        format!("{code} {reason}\n")
    } else {
        format!("{code} {reason}: {detail}\n")
    }
}

/// What an error answer carries besides its status: the `Server` header, the request id
/// (as `X-Request-Id` and in the body, so that a user's report can be found in the log), and
/// the error pages that replace the one-line body (the route's, then the server's).
#[derive(Debug, Clone, Copy, Default)]
pub struct Reply<'a> {
    pub server: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub pages: [Option<&'a ErrorPages>; 2],
}

impl Reply<'_> {
    /// The configured page for `code`: the route's first, then the server's.
    pub fn page(&self, code: u16) -> Option<&ErrorPage> {
        self.pages.iter().flatten().find_map(|p| p.get(&code))
    }
}

/// Sends `code` with a text body such as `503 Service Unavailable: no healthy backend`, and
/// a second line `request id <id>`.
pub async fn respond(
    session: &mut Session,
    code: u16,
    detail: &str,
    reply: Reply<'_>,
) -> Result<()> {
    respond_with(session, code, detail, reply, &[]).await
}

/// [`respond`] with `extra` fields (`Retry-After` and the `RateLimit` fields of a 429, the
/// `WWW-Authenticate` of a 401). A configured error page for `code` replaces the text body.
pub async fn respond_with(
    session: &mut Session,
    code: u16,
    detail: &str,
    reply: Reply<'_>,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let page = reply.page(code);
    let mut text = String::new();
    if page.is_none() {
        text = body(code, detail);
    }
    let mut resp = ResponseHeader::build(code, Some(6 + extra.len()))?;
    if let Some(server) = reply.server {
        resp.insert_header(http::header::SERVER, server)?;
    }
    if let Some(id) = reply.request_id {
        if page.is_none() {
            text.push_str(&format!("request id {id}\n"));
        }
        resp.insert_header("x-request-id", id)?;
    }
    let (content_type, body) = match page {
        Some(page) => (page.content_type, page.body.clone()),
        None => ("text/plain; charset=utf-8", Bytes::from(text)),
    };
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if code == 503 {
        resp.insert_header(http::header::RETRY_AFTER, "1")?;
    }
    for (name, value) in extra {
        resp.insert_header(*name, value.as_str())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// The short explanation sent with each error status.
pub fn detail_for(code: u16) -> &'static str {
    match code {
        404 => "no route for this host and path",
        413 => "request body too large",
        502 => "the upstream failed",
        503 => "no healthy backend",
        504 => "the upstream timed out",
        _ => "",
    }
}

/// How long, and how much, is read from a refused client after its answer, so that closing
/// with unread data does not reset the connection before the client has read the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 << 10;

/// Answers `status` with a one-line body and closes, reading a little of what the client
/// still sends so that the answer is not lost to a reset.
pub async fn refuse(mut stream: Stream, status: u16, detail: &str, server: &Server) {
    let reason = reason(status);
    let body = body(status, detail);
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        body.len()
    );
    if status == 503 {
        head.push_str("Retry-After: 1\r\n");
    }
    if let Some(name) = &server.server_header {
        head.push_str(&format!("Server: {name}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(&body);
    if stream.write_all(head.as_bytes()).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let _ = AsyncWriteExt::shutdown(&mut stream).await;
    let mut sink = vec![0u8; READ_CHUNK];
    let mut drained = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(etype: ErrorType, source: ErrorSource) -> Box<Error> {
        match source {
            ErrorSource::Upstream => Error::new_up(etype),
            ErrorSource::Downstream => Error::new_down(etype),
            _ => Error::new_in(etype),
        }
    }

    #[test]
    fn statuses() {
        use ErrorType::*;
        assert_eq!(
            status_for(&err(ConnectRefused, ErrorSource::Upstream)),
            Some(502)
        );
        assert_eq!(
            status_for(&err(ConnectTimedout, ErrorSource::Upstream)),
            Some(504)
        );
        assert_eq!(
            status_for(&err(ReadTimedout, ErrorSource::Upstream)),
            Some(504)
        );
        assert_eq!(
            status_for(&err(InvalidHTTPHeader, ErrorSource::Upstream)),
            Some(502)
        );
        assert_eq!(
            status_for(&err(HTTPStatus(503), ErrorSource::Internal)),
            Some(503)
        );
        assert_eq!(status_for(&err(ReadError, ErrorSource::Downstream)), None);
        assert_eq!(
            status_for(&err(InvalidHTTPHeader, ErrorSource::Downstream)),
            Some(400)
        );
        assert_eq!(
            status_for(&err(InternalError, ErrorSource::Internal)),
            Some(500)
        );
    }

    #[test]
    fn only_client_failures_close_the_connection() {
        use ErrorType::*;
        assert!(keeps_connection(&err(
            HTTPStatus(503),
            ErrorSource::Internal
        )));
        assert!(keeps_connection(&err(
            ConnectRefused,
            ErrorSource::Upstream
        )));
        assert!(!keeps_connection(&err(
            InvalidHTTPHeader,
            ErrorSource::Downstream
        )));
        assert!(!keeps_connection(&err(ReadError, ErrorSource::Downstream)));
    }
}
