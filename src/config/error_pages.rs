//! `error_pages` of `server` and of a route: a file per status, read at load, sent in place of
//! the one-line body of the proxy's own error answers.

use std::collections::BTreeMap;
use std::io::Read;

use bytes::Bytes;

use super::key::{Invalid, Key};

/// The largest error page read.
pub const MAX_ERROR_PAGE: u64 = 1 << 20;

/// One error page: its bytes and the `Content-Type` its file extension gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPage {
    pub content_type: &'static str,
    pub body: Bytes,
}

/// Pages by status.
pub type ErrorPages = BTreeMap<u16, ErrorPage>;

const TYPES: [(&str, &str); 7] = [
    ("html", "text/html; charset=utf-8"),
    ("htm", "text/html; charset=utf-8"),
    ("json", "application/json"),
    ("txt", "text/plain; charset=utf-8"),
    ("xml", "application/xml"),
    ("svg", "image/svg+xml"),
    ("css", "text/css; charset=utf-8"),
];

pub(super) fn error_pages(
    key: &Key,
    raw: Option<BTreeMap<u16, String>>,
) -> Result<ErrorPages, Invalid> {
    let mut pages = ErrorPages::new();
    for (status, path) in raw.unwrap_or_default() {
        let at = key.field(&status.to_string());
        if !(400..=599).contains(&status) {
            return Err(at.invalid(format!("{status} is not an error status (400 to 599)")));
        }
        let extension = std::path::Path::new(&path)
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let Some((_, content_type)) = TYPES.iter().find(|(ext, _)| *ext == extension) else {
            let known: Vec<&str> = TYPES.iter().map(|(ext, _)| *ext).collect();
            return Err(at.invalid(format!(
                "`{path}`: the extension must say the content type ({})",
                known.join(", ")
            )));
        };
        let body = read(&path).map_err(|reason| at.invalid(reason))?;
        pages.insert(status, ErrorPage { content_type, body });
    }
    Ok(pages)
}

fn read(path: &str) -> Result<Bytes, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut body = Vec::new();
    file.take(MAX_ERROR_PAGE + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    if body.len() as u64 > MAX_ERROR_PAGE {
        return Err(format!(
            "{path} is larger than {MAX_ERROR_PAGE} bytes (1 MiB)"
        ));
    }
    Ok(Bytes::from(body))
}
