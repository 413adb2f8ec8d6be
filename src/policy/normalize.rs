//! The request path in one canonical form before routing and access rules see it: escapes of
//! unreserved characters decoded (`%61` → `a`), other escapes upper-cased (`%2f` → `%2F`, never
//! decoded into `/`), repeated slashes merged, and `.`/`..` segments removed (RFC 3986 §5.2.4).

use std::borrow::Cow;

/// A path that cannot be normalised: a `%` not followed by two hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The normal form of `path`; borrowed when it already is one. Paths not starting with `/`
/// (`*`) are left alone.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, Malformed> {
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for segment in decoded.split('/').skip(1) {
        trailing = false;
        match segment {
            "" => trailing = true,
            "." => trailing = true,
            ".." => {
                segments.pop();
                trailing = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    if out == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(out))
    }
}

fn decode_unreserved(path: &str) -> Result<Cow<'_, str>, Malformed> {
    if !path.contains('%') {
        return Ok(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            let next = path[i..].find('%').map_or(bytes.len(), |n| i + n);
            out.push_str(&path[i..next]);
            i = next;
            continue;
        }
        let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
        let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) else {
            return Err(Malformed);
        };
        let b = (h * 16 + l) as u8;
        if unreserved(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push_str(&format!("{b:02X}"));
        }
        i += 3;
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p).unwrap().into_owned()
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(n("/admin/../public"), "/public");
        assert_eq!(n("/a/./b/../c"), "/a/c");
        assert_eq!(n("/../../etc"), "/etc");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/."), "/a/");
        assert_eq!(n("/"), "/");
        assert_eq!(n("/.."), "/");
    }

    #[test]
    fn unreserved_escapes_are_decoded_before_dot_segments() {
        assert_eq!(n("/%61dmin"), "/admin");
        assert_eq!(n("/%41DMIN"), "/ADMIN");
        assert_eq!(n("/%2e%2e/admin"), "/admin");
        assert_eq!(n("/x/%2E%2e/admin"), "/admin");
        assert_eq!(n("/a%7e%5F"), "/a~_");
    }

    #[test]
    fn slash_escapes_stay_escaped_and_are_upper_cased() {
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/a%2F..%2Fb"), "/a%2F..%2Fb");
        assert_eq!(n("/%20x%c3%a9"), "/%20x%C3%A9");
    }

    #[test]
    fn repeated_slashes_merge() {
        assert_eq!(n("//admin"), "/admin");
        assert_eq!(n("/a//b///"), "/a/b/");
    }

    #[test]
    fn normal_paths_are_borrowed_and_bad_escapes_refused() {
        assert!(matches!(normalize("/api/v1/users"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("*"), Ok(Cow::Borrowed("*"))));
        assert_eq!(normalize("/a%2"), Err(Malformed));
        assert_eq!(normalize("/a%zz"), Err(Malformed));
    }
}
