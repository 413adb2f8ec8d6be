//! Renders a route's `redirect` and `rewrite` templates for one request.

use crate::config::{Pattern, Redirect, Rewrite, UrlPart, UrlTemplate};

/// What a template's variables stand for in one request. `host` is lowercase without port;
/// `path` is normalised.
#[derive(Debug, Clone, Copy)]
pub struct UrlVars<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

fn render(
    template: &UrlTemplate,
    vars: &UrlVars<'_>,
    captures: Option<&regex::Captures<'_>>,
) -> String {
    let mut out = String::with_capacity(64);
    for part in &template.0 {
        match part {
            UrlPart::Text(t) => out.push_str(t),
            UrlPart::Host => out.push_str(vars.host),
            UrlPart::Path => out.push_str(vars.path),
            UrlPart::RequestUri => {
                out.push_str(vars.path);
                if let Some(q) = vars.query {
                    out.push('?');
                    out.push_str(q);
                }
            }
            UrlPart::Query => out.push_str(vars.query.unwrap_or("")),
            UrlPart::Group(i) => {
                if let Some(m) = captures.and_then(|c| c.get(*i)) {
                    out.push_str(m.as_str());
                }
            }
            UrlPart::Named(name) => {
                if let Some(m) = captures.and_then(|c| c.name(name)) {
                    out.push_str(m.as_str());
                }
            }
        }
    }
    out
}

/// The `Location` of a route's redirect; captures come from the route's `path_regex`.
pub fn location(redirect: &Redirect, path_regex: Option<&Pattern>, vars: &UrlVars<'_>) -> String {
    let captures = match path_regex {
        Some(re) if redirect.to.uses_captures() => re.0.captures(vars.path),
        _ => None,
    };
    render(&redirect.to, vars, captures.as_ref())
}

/// The rewritten path, or `None` when the rewrite's regex does not match `vars.path`.
pub fn rewrite(rewrite: &Rewrite, vars: &UrlVars<'_>) -> Option<String> {
    let captures = rewrite.regex.0.captures(vars.path)?;
    Some(render(&rewrite.to, vars, Some(&captures)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(re: &str) -> Pattern {
        Pattern(regex::Regex::new(re).unwrap())
    }

    #[test]
    fn renders_variables_and_captures() {
        let to = UrlTemplate(vec![
            UrlPart::Text("https://".into()),
            UrlPart::Host,
            UrlPart::Text("/new/".into()),
            UrlPart::Named("id".into()),
            UrlPart::Group(2),
            UrlPart::RequestUri,
            UrlPart::Text("#".into()),
            UrlPart::Query,
        ]);
        let redirect = Redirect { to, status: 301 };
        let vars = UrlVars {
            host: "example.com",
            path: "/old/7/x",
            query: Some("a=1"),
        };
        let re = pattern("^/old/(?P<id>[0-9]+)(/.*)?$");
        assert_eq!(
            location(&redirect, Some(&re), &vars),
            "https://example.com/new/7/x/old/7/x?a=1#a=1"
        );
        let plain = UrlVars {
            query: None,
            ..vars
        };
        let no_match = pattern("^/nothing$");
        assert_eq!(
            location(&redirect, Some(&no_match), &plain),
            "https://example.com/new//old/7/x#"
        );
    }

    #[test]
    fn rewrite_only_when_the_regex_matches() {
        let rw = Rewrite {
            regex: pattern("^/old/(.*)$"),
            to: UrlTemplate(vec![UrlPart::Text("/new/".into()), UrlPart::Group(1)]),
        };
        let vars = |path| UrlVars {
            host: "h",
            path,
            query: None,
        };
        assert_eq!(rewrite(&rw, &vars("/old/a/b")).as_deref(), Some("/new/a/b"));
        assert_eq!(rewrite(&rw, &vars("/other")), None);
    }
}
