//! Reads a client's request header before Pingora sees it: one deadline for the whole header
//! (as HAProxy's `timeout http-request`) and a hard size limit, so that neither a client
//! trickling bytes nor one sending an endless header can hold a connection or memory.
//!
//! Pingora 0.9.1 reads the header itself with a per-read timeout and buffers up to 1 MiB before
//! any of our code runs; there is no hook for either, so the frontend reads here and hands the
//! bytes to Pingora's parser with `set_pipelined_prefix`.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// How much is read at a time; also the buffer a new request starts with.
pub const READ_CHUNK: usize = 4096;

/// The most header fields parsed, as in Pingora (a request with more gets its 400 there).
const MAX_HEADERS: usize = 256;

/// Why no request header came.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("client closed the connection before the end of the request header")]
    Closed,
    #[error("request header not complete within the header timeout")]
    TimedOut,
    /// Over the limit; with the request line when it had arrived.
    #[error("request header larger than {0} bytes")]
    TooLarge(usize, Option<RequestLine>),
    #[error("reading the request header: {0}")]
    Io(#[from] std::io::Error),
}

/// A request as read: `head` is this request's header plus whatever of its body (or anything
/// else) came with it; `next` is the start of a following pipelined request, when the request's
/// end was known and more bytes had already arrived. `invalid`: our parser refused the header
/// (Pingora's parser decides: it answers 400, or accepts a request line it can escape).
#[derive(Debug)]
pub struct Head {
    pub head: BytesMut,
    pub next: Option<BytesMut>,
    pub invalid: bool,
}

/// The method and target of a request line, for the log line of a refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    pub method: String,
    pub target: String,
}

/// The method and target at the start of `buf` (after any empty lines), when a whole request
/// line of visible ASCII is there.
pub fn request_line(buf: &[u8]) -> Option<RequestLine> {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let rest = &buf[start..];
    let line = &rest[..rest.iter().position(|&b| b == b'\n')?];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let token = |s: &[u8]| !s.is_empty() && s.iter().all(|b| b.is_ascii_graphic());
    if !token(method) || !token(target) || !version.starts_with(b"HTTP/") {
        return None;
    }
    Some(RequestLine {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
    })
}

fn too_large(buf: &[u8], limit: usize) -> HeaderError {
    HeaderError::TooLarge(limit, request_line(buf))
}

/// Reads into `buf` (which may already hold the start of the request) until the header is
/// complete, `deadline` passes, or the header would exceed `limit` bytes.
pub async fn read_head<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: BytesMut,
    deadline: Instant,
    limit: usize,
) -> Result<Head, HeaderError> {
    tokio::time::timeout_at(deadline, fill(stream, buf, limit))
        .await
        .map_err(|_| HeaderError::TimedOut)?
}

async fn fill<R: AsyncRead + Unpin>(
    stream: &mut R,
    mut buf: BytesMut,
    limit: usize,
) -> Result<Head, HeaderError> {
    // Where to look for a blank line next, so a trickled header is scanned once, not per read.
    let mut from = 0;
    loop {
        while let Some(at) = blank_line(&buf, from) {
            match parse(&buf) {
                Parsed::Complete { header, .. } if header > limit => {
                    return Err(too_large(&buf, limit))
                }
                Parsed::Complete { header, body } => return Ok(split(buf, header, body)),
                Parsed::Invalid if at >= limit => return Err(too_large(&buf, limit)),
                // Pingora's parser answers it (400, or it escapes a sloppy request line).
                Parsed::Invalid => {
                    return Ok(Head {
                        head: buf,
                        next: None,
                        invalid: true,
                    })
                }
                // A blank line before the request line (RFC 9112 §2.2): look further.
                Parsed::Partial => from = at + 1,
            }
        }
        from = from.max(buf.len().saturating_sub(2));
        if buf.len() > limit {
            return Err(too_large(&buf, limit));
        }
        // Never more than one byte past the limit, READ_CHUNK at a time.
        let room = (limit + 1 - buf.len()).min(READ_CHUNK);
        buf.reserve(room);
        let n = (&mut *stream).take(room as u64).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
    }
}

/// The index of the first LF at or after `from` that ends the header: one followed by LF or
/// CRLF. Bare-LF headers are found too, so that Pingora's parser and our checks refuse them
/// at once instead of the connection waiting for a CRLF that never comes.
fn blank_line(buf: &[u8], from: usize) -> Option<usize> {
    let tail = buf.get(from..)?;
    tail.iter().enumerate().find_map(|(i, &b)| {
        let rest = &tail[i + 1..];
        (b == b'\n' && (rest.starts_with(b"\n") || rest.starts_with(b"\r\n"))).then_some(from + i)
    })
}

enum Parsed {
    /// The header is `header` bytes long; `body` is the body length when it is known from the
    /// header alone (`None`: chunked, an upgrade, or framing our checks will refuse).
    Complete {
        header: usize,
        body: Option<u64>,
    },
    Partial,
    Invalid,
}

/// Parses with the parser Pingora uses, only to find where the header and the body end.
fn parse(buf: &[u8]) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let header = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let mut body = Some(0);
    let mut lengths = 0;
    for field in req.headers.iter() {
        // After an upgrade the bytes that follow belong to the new protocol, not to a request.
        if field.name.eq_ignore_ascii_case("transfer-encoding")
            || field.name.eq_ignore_ascii_case("upgrade")
        {
            body = None;
            break;
        }
        if field.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            body = std::str::from_utf8(field.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok());
            if body.is_none() {
                break;
            }
        }
    }
    if lengths > 1 {
        body = None;
    }
    Parsed::Complete { header, body }
}

/// Splits off what follows this request's body when all of it is in `buf`.
fn split(mut buf: BytesMut, header: usize, body: Option<u64>) -> Head {
    let end = body
        .and_then(|b| usize::try_from(b).ok())
        .and_then(|b| header.checked_add(b))
        .filter(|&end| end < buf.len());
    let next = end.map(|end| buf.split_off(end));
    Head {
        head: buf,
        next,
        invalid: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn read(input: &[u8], limit: usize) -> Result<Head, HeaderError> {
        let mut stream = input;
        let deadline = Instant::now() + Duration::from_secs(5);
        read_head(&mut stream, BytesMut::new(), deadline, limit).await
    }

    #[tokio::test]
    async fn splits_pipelined_requests_at_the_end_of_each() {
        let two = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        let head = read(two, 1000).await.unwrap();
        assert_eq!(&head.head[..], b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            &head.next.unwrap()[..],
            b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n"
        );
        let with_body = b"PUT / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n";
        let head = read(with_body, 1000).await.unwrap();
        assert!(head.head.ends_with(b"\r\n\r\nabc"));
        assert_eq!(&head.next.unwrap()[..], b"GET / HTTP/1.1\r\n\r\n");
        // Chunked: the end is Pingora's to find; everything goes to it.
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /";
        let head = read(chunked, 1000).await.unwrap();
        assert_eq!(&head.head[..], &chunked[..]);
        assert!(head.next.is_none());
        let upgrade = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nframe";
        assert!(read(upgrade, 1000).await.unwrap().next.is_none());
        let two_lengths = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\naGET";
        assert!(read(two_lengths, 1000).await.unwrap().next.is_none());
    }

    #[tokio::test]
    async fn stops_past_the_limit() {
        let endless = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 5000]].concat();
        let too_large = read(&endless, 1024).await;
        let line = RequestLine {
            method: "GET".into(),
            target: "/".into(),
        };
        assert!(matches!(too_large, Err(HeaderError::TooLarge(1024, Some(l))) if l == line));
        let big = [
            b"GET / HTTP/1.1\r\nX: ".as_slice(),
            &[b'a'; 1100],
            b"\r\n\r\n",
        ]
        .concat();
        assert!(matches!(
            read(&big, 1024).await,
            Err(HeaderError::TooLarge(1024, Some(_)))
        ));
        let no_line = [b"GET /".as_slice(), &[b'a'; 2000]].concat();
        assert!(matches!(
            read(&no_line, 1024).await,
            Err(HeaderError::TooLarge(1024, None))
        ));
        assert!(read(&big, 2048).await.is_ok());
        assert!(matches!(
            read(b"GET / HTTP/1.1\r\n", 1024).await,
            Err(HeaderError::Closed)
        ));
    }

    #[tokio::test]
    async fn odd_headers_are_left_to_pingora() {
        // Bare LF and a broken request line: handed over whole for Pingora's 400.
        let bare = b"GET / HTTP/1.1\nHost: a\n\n";
        assert_eq!(&read(bare, 1000).await.unwrap().head[..], &bare[..]);
        let garbage = b"GARBAGE\r\n\r\n";
        let head = read(garbage, 1000).await.unwrap();
        assert_eq!(&head.head[..], &garbage[..]);
        assert!(head.invalid);
        // An empty line before the request line is skipped, not taken for the end.
        let leading = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let head = read(leading, 1000).await.unwrap();
        assert_eq!(&head.head[..], &leading[..]);
        assert!(!head.invalid);
    }

    #[test]
    fn request_lines() {
        let line = request_line(b"\r\nPOST /a?b=1 HTTP/1.1\r\nHost: x\r\n").unwrap();
        assert_eq!(
            (line.method.as_str(), line.target.as_str()),
            ("POST", "/a?b=1")
        );
        assert!(
            request_line(b"GET /a HTTP/1.1").is_none(),
            "no line end yet"
        );
        assert!(request_line(b"GARBAGE\r\n").is_none());
        assert!(request_line(b"GET /\x01 HTTP/1.1\r\n").is_none());
    }

    #[tokio::test]
    async fn one_deadline_for_the_whole_header() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let trickle = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for &b in b"GET / HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaa" {
                if client.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let start = Instant::now();
        let deadline = start + Duration::from_millis(200);
        let result = read_head(&mut server, BytesMut::new(), deadline, 1000).await;
        assert!(matches!(result, Err(HeaderError::TimedOut)));
        assert!(start.elapsed() < Duration::from_millis(400));
        trickle.abort();
    }
}
