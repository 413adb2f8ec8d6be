//! Redirects the proxy answers itself. `https_redirect`: a plain-HTTP request on such a route
//! gets a 308 to the same path and query on `https://`. `redirect`: the route's template made
//! into a `Location`. The host comes from the route (an exact host) or from the request's Host
//! once it matched the route and is a well-formed host name, so `https_redirect` and `$host`
//! never point elsewhere (no open redirect).

use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use super::{errors, request_host};
use crate::config::{HostMatch, UrlPart};
use crate::policy::url::{self, UrlVars};
use crate::route::strip_port;

/// A host name or a bracketed IP literal, lowercase, without port.
fn valid_host(host: &str) -> bool {
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    let literal_ok = host.len() > 2
        && host.starts_with('[')
        && host.ends_with(']')
        && host[1..host.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
    name_ok || literal_ok
}

/// The route's exact host, else the request's Host (without port, lowercase) when well formed.
fn redirect_host(session: &Session, ctx: &RequestCtx) -> Option<String> {
    match ctx.route().and_then(|r| r.host.as_ref()) {
        Some(HostMatch::Exact(name)) => Some(name.clone()),
        _ => request_host(session.req_header()).map(|h| strip_port(h).to_ascii_lowercase()),
    }
    .filter(|h| valid_host(h))
}

/// The `Location` for `host` (the Host field, port allowed) and `path_and_query` on the TLS
/// port (`None` or 443: no port in the URL). `None` when the host is not a host name or an IP
/// literal.
pub fn location(host: &str, path_and_query: &str, tls_port: Option<u16>) -> Option<String> {
    let host = strip_port(host).to_ascii_lowercase();
    if !valid_host(&host) {
        return None;
    }
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    Some(match tls_port {
        Some(port) if port != 443 => format!("https://{host}:{port}{path}"),
        _ => format!("https://{host}{path}"),
    })
}

/// Answers the request with a 308 to its `https://` URL (400 when its Host is unusable).
pub async fn to_https(session: &mut Session, ctx: &RequestCtx) -> Result<()> {
    let host = redirect_host(session, ctx);
    let req = session.req_header();
    let path = req
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let tls_port = ctx
        .runtime
        .as_ref()
        .and_then(|rt| rt.config.tls.as_ref())
        .and_then(|tls| tls.listen.first())
        .map(|addr| addr.port());
    let Some(target) = host.and_then(|h| location(&h, &path, tls_port)) else {
        return errors::respond(session, 400, "no valid Host", ctx.reply()).await;
    };
    let mut resp = ResponseHeader::build(308, Some(4))?;
    if let Some(server) = ctx.server_header() {
        resp.insert_header(http::header::SERVER, server)?;
    }
    resp.insert_header(http::header::LOCATION, target)?;
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    session.write_response_header(Box::new(resp), true).await
}

/// Answers with the route's `redirect`: its status and the `Location` from its template (400
/// when the template needs `$host` and the request has no valid one).
pub async fn answer(session: &mut Session, ctx: &RequestCtx) -> Result<()> {
    let Some(route) = ctx.route() else {
        return Ok(());
    };
    let Some(redirect) = &route.redirect else {
        return Ok(());
    };
    let host = redirect_host(session, ctx);
    if host.is_none() && redirect.to.0.contains(&UrlPart::Host) {
        return errors::respond(session, 400, "no valid Host", ctx.reply()).await;
    }
    let req = session.req_header();
    let vars = UrlVars {
        host: host.as_deref().unwrap_or(""),
        path: req.uri.path(),
        query: req.uri.query(),
    };
    let target = url::location(redirect, route.path_regex.as_ref(), &vars);
    let Ok(target) = http::HeaderValue::from_str(&target) else {
        return errors::respond(session, 400, "no valid redirect target", ctx.reply()).await;
    };
    let mut resp = ResponseHeader::build(redirect.status, Some(4))?;
    if let Some(server) = ctx.server_header() {
        resp.insert_header(http::header::SERVER, server)?;
    }
    if let Some(id) = ctx.reply().request_id {
        resp.insert_header("x-request-id", id)?;
    }
    resp.insert_header(http::header::LOCATION, target)?;
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    session.write_response_header(Box::new(resp), true).await
}

#[cfg(test)]
mod tests {
    use super::location;

    #[test]
    fn keeps_path_and_query_and_drops_the_plain_port() {
        assert_eq!(
            location("API.example.com:8080", "/a/b?x=1&y=2", None).as_deref(),
            Some("https://api.example.com/a/b?x=1&y=2")
        );
        assert_eq!(
            location("example.com", "/", Some(8443)).as_deref(),
            Some("https://example.com:8443/")
        );
        assert_eq!(
            location("[::1]:80", "/x", Some(443)).as_deref(),
            Some("https://[::1]/x")
        );
    }

    #[test]
    fn refuses_what_is_not_a_host() {
        assert_eq!(location("", "/", None), None);
        assert_eq!(location("evil.com/@x", "/", None), None);
        assert_eq!(location("a b", "/", None), None);
        assert_eq!(location("evil.com\r\nx: y", "/", None), None);
        // An absolute-form target never becomes the path.
        assert_eq!(
            location("h.test", "//evil.com", None).as_deref(),
            Some("https://h.test//evil.com")
        );
    }
}
