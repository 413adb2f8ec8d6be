//! Built-in demo origins for `switchyard demo`: tiny HTTP servers that answer with their own
//! name, so balancing is visible with nothing else running.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

/// One demo origin; answers every path with a small JSON document naming itself.
pub struct DemoOrigin {
    pub name: String,
}

#[async_trait]
impl ServeHttp for DemoOrigin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let body = if req.uri.path() == "/health" {
            b"ok".to_vec()
        } else {
            let doc = serde_json::json!({
                "origin": self.name,
                "method": req.method.as_str(),
                "path": req.uri.path(),
                "x_forwarded_for": req
                    .headers
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok()),
            });
            let mut body = serde_json::to_vec(&doc).unwrap_or_default();
            body.push(b'\n');
            body
        };
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, body.len())
            .header("x-origin", self.name.as_str())
            .body(body)
            .unwrap_or_default()
    }
}
