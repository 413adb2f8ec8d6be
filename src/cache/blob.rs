//! The versioned binary form of a stored response in the shared (Redis) tier:
//!
//! `SYC` · version (1) · u32 primary len · primary · u16 tag count · (u16 len · tag)* ·
//! u32 meta len · meta (Pingora's internal meta) · u32 header len · header · u64 body len · body.
//!
//! A reader refuses anything it does not fully understand, so a format change (or garbage
//! under a key) reads as a miss, never as a wrong response.

use bytes::Bytes;
use pingora_cache::CacheMeta;

const MAGIC: &[u8; 3] = b"SYC";
const VERSION: u8 = 1;

/// A decoded entry.
pub struct Blob {
    pub primary: String,
    pub tags: Vec<String>,
    pub meta: CacheMeta,
    pub body: Bytes,
}

/// Encodes an entry; `None` when the meta cannot be serialized.
pub fn encode(primary: &str, tags: &[String], meta: &CacheMeta, body: &[u8]) -> Option<Vec<u8>> {
    let (internal, header) = meta.serialize().ok()?;
    let mut out =
        Vec::with_capacity(32 + primary.len() + internal.len() + header.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&u32::try_from(primary.len()).ok()?.to_be_bytes());
    out.extend_from_slice(primary.as_bytes());
    out.extend_from_slice(&u16::try_from(tags.len()).ok()?.to_be_bytes());
    for tag in tags {
        out.extend_from_slice(&u16::try_from(tag.len()).ok()?.to_be_bytes());
        out.extend_from_slice(tag.as_bytes());
    }
    for part in [&internal, &header] {
        out.extend_from_slice(&u32::try_from(part.len()).ok()?.to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(body);
    Some(out)
}

/// Why a value could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Magic,
    Version(u8),
    Truncated,
    Text,
    Meta,
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.data.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    fn u32(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn text(&mut self, n: usize) -> Result<String, DecodeError> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| DecodeError::Text)
    }
}

/// Decodes a value written by [`encode`].
pub fn decode(data: &Bytes) -> Result<Blob, DecodeError> {
    let mut r = Reader { data };
    if r.take(3)? != MAGIC {
        return Err(DecodeError::Magic);
    }
    let version = r.take(1)?[0];
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let n = r.u32()?;
    let primary = r.text(n)?;
    let count = r.u16()?;
    let mut tags = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = r.u16()?;
        tags.push(r.text(n)?);
    }
    let n = r.u32()?;
    let internal = r.take(n)?;
    let n = r.u32()?;
    let header = r.take(n)?;
    let len = r.take(8)?;
    let len = u64::from_be_bytes([
        len[0], len[1], len[2], len[3], len[4], len[5], len[6], len[7],
    ]);
    if r.data.len() as u64 != len {
        return Err(DecodeError::Truncated);
    }
    let meta = CacheMeta::deserialize(internal, header).map_err(|_| DecodeError::Meta)?;
    let offset = data.len() - r.data.len();
    Ok(Blob {
        primary,
        tags,
        meta,
        body: data.slice(offset..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    fn meta() -> CacheMeta {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("Content-Type", "text/plain").unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 5, 10, h)
    }

    #[test]
    fn round_trip() {
        let m = meta();
        let data = Bytes::from(encode("h/a?x", &["t1".into(), "t2".into()], &m, b"body").unwrap());
        let blob = decode(&data).unwrap();
        assert_eq!(blob.primary, "h/a?x");
        assert_eq!(blob.tags, vec!["t1", "t2"]);
        assert_eq!(&blob.body[..], b"body");
        assert_eq!(blob.meta.headers()["content-type"], "text/plain");
        assert_eq!(blob.meta.stale_if_error_sec(), 10);
    }

    #[test]
    fn garbage_and_other_versions_are_refused() {
        let good = encode("h/a", &[], &meta(), b"x").unwrap();
        assert_eq!(
            decode(&Bytes::from_static(b"")).err(),
            Some(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&Bytes::from_static(b"GARBAGE!")).err(),
            Some(DecodeError::Magic)
        );
        let mut v2 = good.clone();
        v2[3] = 2;
        assert_eq!(
            decode(&Bytes::from(v2)).err(),
            Some(DecodeError::Version(2))
        );
        for cut in [5, 10, 20, good.len() - 1] {
            let truncated = Bytes::from(good[..cut].to_vec());
            assert_eq!(
                decode(&truncated).err(),
                Some(DecodeError::Truncated),
                "cut at {cut}"
            );
        }
        let mut longer = good.clone();
        longer.push(b'!');
        assert_eq!(
            decode(&Bytes::from(longer)).err(),
            Some(DecodeError::Truncated)
        );
        let mut bad_meta = good.clone();
        let meta_start = 4 + 4 + 3 + 2 + 4;
        bad_meta[meta_start] ^= 0xff;
        assert!(decode(&Bytes::from(bad_meta)).is_err());
    }
}
