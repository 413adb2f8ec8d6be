//! What a purge removes (a key, a key prefix, a tag or a glob pattern), shared by the memory
//! tier and the Redis tier without either importing the other for it.

/// A purge that a fill started before it must respect.
#[derive(Debug, Clone)]
pub enum PurgeMatch {
    Key(String),
    Prefix(String),
    Tag(String),
    /// A glob over primary keys: `*` within one path segment, `**` across segments.
    Pattern(String),
}

/// Most wildcards a purge pattern may have (each adds a pass over the key in [`glob_matches`]).
pub const MAX_PATTERN_WILDCARDS: usize = 16;

/// One piece of a purge pattern.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Literal(&'a [u8]),
    /// `*`: any run of bytes without `/`.
    Segment,
    /// `**`: any run of bytes.
    Any,
}

fn pieces(pattern: &str) -> Vec<Piece<'_>> {
    let bytes = pattern.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'*' {
            let run = bytes[i..].iter().take_while(|&&b| b == b'*').count();
            out.push(if run >= 2 { Piece::Any } else { Piece::Segment });
            i += run;
        } else {
            let run = bytes[i..].iter().take_while(|&&b| b != b'*').count();
            out.push(Piece::Literal(&bytes[i..i + run]));
            i += run;
        }
    }
    out
}

/// Whether `text` matches the glob `pattern` (`*` within a path segment, `**` across
/// segments, everything else literal). A glob rather than a regex so that a purge cannot be a
/// ReDoS: this walks the set of reachable positions piece by piece, at most pattern pieces ×
/// text length steps, and never backtracks.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let text = text.as_bytes();
    let mut reachable = vec![false; text.len() + 1];
    reachable[0] = true;
    for piece in pieces(pattern) {
        let mut next = vec![false; text.len() + 1];
        match piece {
            Piece::Literal(lit) => {
                for i in 0..=text.len() {
                    if reachable[i] && text[i..].starts_with(lit) {
                        next[i + lit.len()] = true;
                    }
                }
            }
            Piece::Segment => {
                let mut open = false;
                for i in 0..=text.len() {
                    open = reachable[i] || (open && text[i - 1] != b'/');
                    next[i] = open;
                }
            }
            Piece::Any => {
                let first = reachable.iter().position(|&r| r).unwrap_or(text.len() + 1);
                for slot in next.iter_mut().skip(first) {
                    *slot = true;
                }
            }
        }
        reachable = next;
        if !reachable.contains(&true) {
            return false;
        }
    }
    reachable[text.len()]
}

/// The literal start of a pattern, before its first wildcard: every key it matches has it.
pub fn literal_prefix(pattern: &str) -> &str {
    &pattern[..pattern.find('*').unwrap_or(pattern.len())]
}

impl PurgeMatch {
    pub(super) fn matches(&self, primary: &str, tags: &[String]) -> bool {
        match self {
            PurgeMatch::Key(k) => primary == k,
            PurgeMatch::Prefix(p) => primary.starts_with(p.as_str()),
            PurgeMatch::Tag(t) => tags.iter().any(|tag| tag == t),
            PurgeMatch::Pattern(p) => glob_matches(p, primary),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_star_stays_in_its_segment_two_cross_them() {
        let p = "api.example.com/users/*/profile";
        assert!(glob_matches(p, "api.example.com/users/42/profile"));
        assert!(glob_matches(p, "api.example.com/users//profile"));
        assert!(!glob_matches(p, "api.example.com/users/42/7/profile"));
        assert!(!glob_matches(p, "api.example.com/users/42/profile?x=1"));
        assert!(glob_matches("h/a/**", "h/a/b/c?d=1"));
        assert!(glob_matches("h/**/x", "h/a/b/x"));
        assert!(glob_matches("h/**/x", "h//x"));
        assert!(!glob_matches("h/**/x", "h/x"));
        assert!(glob_matches("h/*.css", "h/site.css"));
        assert!(!glob_matches("h/*.css", "h/a/site.css"));
        assert!(glob_matches("h/a", "h/a"));
        assert!(!glob_matches("h/a", "h/ab"));
        assert!(glob_matches("**", ""));
        assert!(glob_matches("*", "abc"));
        assert!(!glob_matches("*", "a/c"));
        assert_eq!(literal_prefix("h/users/*/x"), "h/users/");
        assert_eq!(literal_prefix("h/x"), "h/x");
    }

    #[test]
    fn many_wildcards_against_a_long_key_stay_linear() {
        // A backtracking matcher takes exponential time here; this one does 16 × 10k steps.
        let pattern = "*a".repeat(8) + &"**a".repeat(8) + "b";
        let text = "a".repeat(10_000);
        assert!(!glob_matches(&pattern, &text));
    }
}
