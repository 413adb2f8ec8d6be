//! A route's `redirect` and `rewrite`: URL templates with `$host`, `$path`, `$request_uri`,
//! `$query` and regex captures (`$1`…`$9`, `$name`), parsed once here at load.

use super::file::{FileRedirect, FileRewrite};
use super::key::{Invalid, Key};
use super::policy::Pattern;

/// One piece of a URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlPart {
    Text(String),
    /// The request's host, lowercase, without its port.
    Host,
    /// The normalised path.
    Path,
    /// The normalised path and, when there is one, `?` and the query.
    RequestUri,
    /// The query without `?` (empty when there is none).
    Query,
    /// A numbered capture group of the route's regex (`$1`…`$9`); empty when it did not take part.
    Group(usize),
    /// A named capture group (`$name` for `(?P<name>…)`).
    Named(String),
}

/// A URL template, parsed at load.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UrlTemplate(pub Vec<UrlPart>);

impl UrlTemplate {
    /// Whether rendering needs the captures of a regex.
    pub fn uses_captures(&self) -> bool {
        self.0
            .iter()
            .any(|p| matches!(p, UrlPart::Group(_) | UrlPart::Named(_)))
    }
}

/// `redirect`: the route answers with `status` and a `Location` made from `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub to: UrlTemplate,
    pub status: u16,
}

/// `rewrite`: when `regex` matches the path going upstream, the path becomes `to` (the query
/// is kept); otherwise the path is forwarded unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub regex: Pattern,
    pub to: UrlTemplate,
}

const BUILT_IN: [(&str, UrlPart); 4] = [
    ("host", UrlPart::Host),
    ("path", UrlPart::Path),
    ("request_uri", UrlPart::RequestUri),
    ("query", UrlPart::Query),
];

/// Parses `text`; `captures` is the regex whose groups `$1`… and `$name` refer to (none: a
/// capture is an error). `allowed` lists the built-in variables this template may use.
fn parse(
    key: &Key,
    text: &str,
    captures: Option<&regex::Regex>,
    allowed: &[&str],
) -> Result<UrlTemplate, Invalid> {
    let mut parts: Vec<UrlPart> = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        literal.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        if let Some(after) = tail.strip_prefix('$') {
            literal.push('$');
            rest = after;
            continue;
        }
        let len = match tail.bytes().next() {
            Some(b) if b.is_ascii_digit() => 1,
            Some(b) if b.is_ascii_alphabetic() || b == b'_' => tail
                .bytes()
                .position(|b| !(b.is_ascii_alphanumeric() || b == b'_'))
                .unwrap_or(tail.len()),
            _ => {
                return Err(key.invalid(format!(
                    "`{text}`: a `$` must start a variable (write `$$` for a dollar sign)"
                )))
            }
        };
        let name = &tail[..len];
        let part = variable(key, text, name, captures, allowed)?;
        if !literal.is_empty() {
            parts.push(UrlPart::Text(std::mem::take(&mut literal)));
        }
        parts.push(part);
        rest = &tail[len..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(UrlPart::Text(literal));
    }
    Ok(UrlTemplate(parts))
}

fn variable(
    key: &Key,
    text: &str,
    name: &str,
    captures: Option<&regex::Regex>,
    allowed: &[&str],
) -> Result<UrlPart, Invalid> {
    let unknown = || {
        let mut known: Vec<String> = allowed.iter().map(|v| format!("${v}")).collect();
        match captures {
            Some(re) => {
                known.push(format!("$1…${}", (re.captures_len() - 1).min(9)));
                known.extend(re.capture_names().flatten().map(|n| format!("${n}")));
            }
            None => known.push("no captures (the route has no regex)".into()),
        }
        key.invalid(format!(
            "`{text}`: unknown variable `${name}`; the variables are {}",
            known.join(", ")
        ))
    };
    if let Some(digit) = name.parse::<usize>().ok().filter(|_| name.len() == 1) {
        return match captures {
            Some(re) if digit >= 1 && digit < re.captures_len() => Ok(UrlPart::Group(digit)),
            _ => Err(unknown()),
        };
    }
    if let Some((_, part)) = BUILT_IN.iter().find(|(n, _)| *n == name) {
        return if allowed.contains(&name) {
            Ok(part.clone())
        } else {
            Err(unknown())
        };
    }
    match captures {
        Some(re) if re.capture_names().flatten().any(|n| n == name) => {
            Ok(UrlPart::Named(name.to_string()))
        }
        _ => Err(unknown()),
    }
}

/// A regex's group named like a built-in variable would be shadowed: refused.
fn check_group_names(key: &Key, re: &regex::Regex) -> Result<(), Invalid> {
    match re
        .capture_names()
        .flatten()
        .find(|n| BUILT_IN.iter().any(|(b, _)| b == n))
    {
        Some(n) => Err(key.invalid(format!(
            "the group name `{n}` is a variable name; rename the group"
        ))),
        None => Ok(()),
    }
}

pub(super) fn redirect(
    key: &Key,
    raw: FileRedirect,
    path_regex: Option<&Pattern>,
) -> Result<Redirect, Invalid> {
    let status = match raw.status {
        None => 302,
        Some(s @ (301 | 302 | 303 | 307 | 308)) => s,
        Some(s) => {
            return Err(key
                .field("status")
                .invalid(format!("{s} is not 301, 302, 303, 307 or 308")))
        }
    };
    let to_key = key.field("to");
    if let Some(re) = path_regex {
        check_group_names(&key.field("to"), &re.0)?;
    }
    let to = parse(
        &to_key,
        &raw.to,
        path_regex.map(|p| &p.0),
        &["host", "path", "request_uri", "query"],
    )?;
    let starts_ok = match to.0.first() {
        Some(UrlPart::Text(t)) => {
            t.starts_with("https://") || t.starts_with("http://") || t.starts_with('/')
        }
        _ => false,
    };
    if !starts_ok {
        return Err(to_key.invalid(format!(
            "`{}` must start with https://, http:// or / (written out, not a variable)",
            raw.to
        )));
    }
    if raw.to.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(to_key.invalid(format!(
            "`{}` may hold only visible ASCII (percent-encode the rest)",
            raw.to
        )));
    }
    Ok(Redirect { to, status })
}

pub(super) fn rewrite(key: &Key, raw: FileRewrite) -> Result<Rewrite, Invalid> {
    let regex = Pattern::new(&key.field("regex"), &raw.regex)?;
    let to_key = key.field("to");
    check_group_names(&to_key, &regex.0)?;
    let to = parse(&to_key, &raw.to, Some(&regex.0), &["host", "path"])?;
    if !matches!(to.0.first(), Some(UrlPart::Text(t)) if t.starts_with('/')) {
        return Err(to_key.invalid(format!("`{}` must start with /", raw.to)));
    }
    let bad = raw
        .to
        .bytes()
        .any(|b| !(0x21..0x7f).contains(&b) || b == b'?' || b == b'#');
    if bad {
        return Err(to_key.invalid(format!(
            "`{}` must be a path: visible ASCII without ? or # (the client's query is kept)",
            raw.to
        )));
    }
    Ok(Rewrite { regex, to })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::root("t")
    }

    #[test]
    fn templates_parse_variables_captures_and_dollars() {
        let re = regex::Regex::new("^/(?P<user>[a-z]+)/(.*)$").unwrap();
        let t = parse(
            &key(),
            "https://$host/u/$user/$2?$query&x=$$1",
            Some(&re),
            &["host", "query"],
        )
        .unwrap();
        assert_eq!(
            t.0,
            vec![
                UrlPart::Text("https://".into()),
                UrlPart::Host,
                UrlPart::Text("/u/".into()),
                UrlPart::Named("user".into()),
                UrlPart::Text("/".into()),
                UrlPart::Group(2),
                UrlPart::Text("?".into()),
                UrlPart::Query,
                UrlPart::Text("&x=$1".into()),
            ]
        );
        assert!(t.uses_captures());
    }

    #[test]
    fn unknown_variables_and_groups_are_errors() {
        let re = regex::Regex::new("^/(a)$").unwrap();
        for bad in ["/$2", "/$nope", "/$", "/$-"] {
            assert!(parse(&key(), bad, Some(&re), &["path"]).is_err(), "{bad}");
        }
        assert!(parse(&key(), "/$1", None, &["path"]).is_err());
        assert!(parse(&key(), "/$query", Some(&re), &["path"]).is_err());
        let err = parse(&key(), "/$hots", None, &["host"]).unwrap_err();
        assert!(err.reason.contains("unknown variable `$hots`"), "{err:?}");
    }
}
