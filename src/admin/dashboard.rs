//! The live dashboard: `GET /` and `GET /dashboard` on the admin listener serve one
//! self-contained page (HTML, CSS and script built into the binary) that polls `/stats`.
//!
//! The page holds no data, so it is served without the admin token; its script asks for the
//! token, keeps it in a variable only, and sends it as the bearer token on its polls. The
//! Content-Security-Policy names the SHA-256 of the page's one inline script and one style
//! block, so nothing else runs or styles it, and allows requests to its own origin only.

use std::sync::OnceLock;

use http::{Response, StatusCode};
use sha2::{Digest, Sha256};

/// The page, as built into the binary.
pub const PAGE: &str = include_str!("dashboard.html");

/// The text between `<tag>` and `</tag>` in the page.
fn inline(tag: &str) -> &'static str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    PAGE.split_once(open.as_str())
        .and_then(|(_, rest)| rest.split_once(close.as_str()))
        .map_or("", |(inner, _)| inner)
}

/// `'sha256-<base64>'` of `text`, as CSP names an inline block.
fn csp_hash(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::from("'sha256-");
    for chunk in digest.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out.push('\'');
    out
}

/// The page's own inline script and style only, requests to the admin endpoint itself, no
/// framing, no form targets, nothing else.
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            csp_hash(inline("script")),
            csp_hash(inline("style")),
        )
    })
}

/// The dashboard page with its security headers.
pub fn page(head_only: bool) -> Response<Vec<u8>> {
    let body = if head_only {
        Vec::new()
    } else {
        PAGE.as_bytes().to_vec()
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(http::header::CONTENT_LENGTH, PAGE.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .header(
            http::header::CONTENT_SECURITY_POLICY,
            content_security_policy(),
        )
        .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(http::header::X_FRAME_OPTIONS, "DENY")
        .header(http::header::REFERRER_POLICY, "no-referrer")
        .body(body)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_small() {
        for outside in [
            "src=\"http",
            "href=\"http",
            "@import",
            "localStorage",
            "cookie",
        ] {
            assert!(!PAGE.contains(outside), "the page uses {outside}");
        }
        for id in [
            "id=\"rps\"",
            "id=\"hit-ratio\"",
            "id=\"backends\"",
            "id=\"token\"",
        ] {
            assert!(PAGE.contains(id), "the page lacks {id}");
        }
        assert!(PAGE.len() < 24 << 10, "{} bytes", PAGE.len());
        let resp = page(false);
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        assert!(resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("connect-src 'self'"));
        assert_eq!(resp.body().len(), PAGE.len());
        assert!(inline("script").contains("fetch(\"/stats\""));
        assert!(inline("style").contains("--bg"));
    }

    #[test]
    fn hashes_are_base64_sha256() {
        // echo -n abc | openssl dgst -sha256 -binary | base64
        assert_eq!(
            csp_hash("abc"),
            "'sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0='"
        );
        assert_eq!(csp_hash("").len(), "'sha256-".len() + 44 + 1);
    }
}
