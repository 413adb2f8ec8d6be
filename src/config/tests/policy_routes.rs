//! Routes that answer or change requests themselves: redirect, rewrite, basic auth, error
//! pages, and per-route limits; parsed values and key-path errors.

use std::time::Duration;

use super::{parse, rejects, BASE};
use crate::config::{PasswordHash, UrlPart};

fn with_route(options: &str) -> String {
    format!(
        "{BASE}  - match: {{ path_prefix: /p/ }}\n    upstream: assessments\n{}",
        indent(options)
    )
}

fn indent(options: &str) -> String {
    options.lines().map(|l| format!("    {l}\n")).collect()
}

/// A route without `upstream`, with `match` and `options`.
fn answering(matcher: &str, options: &str) -> String {
    format!("{BASE}  - match: {matcher}\n{}", indent(options))
}

fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn redirect_replaces_the_upstream() {
    let c = parse(&answering(
        "{ path_regex: \"^/old/(?P<id>[0-9]+)/(.*)$\" }",
        "redirect: { to: \"https://$host/new/$id/$2?$query\", status: 308 }",
    ))
    .unwrap();
    let r = &c.routes[1];
    assert_eq!(r.upstream, "");
    let redirect = r.redirect.as_ref().unwrap();
    assert_eq!(redirect.status, 308);
    assert!(redirect.to.0.contains(&UrlPart::Named("id".into())));
    assert!(redirect.to.0.contains(&UrlPart::Group(2)));
    let default = parse(&answering(
        "{ path_prefix: /a/ }",
        "redirect: { to: /b$request_uri }",
    ))
    .unwrap();
    assert_eq!(default.routes[1].redirect.as_ref().unwrap().status, 302);
}

#[test]
fn redirect_errors_name_the_key() {
    let prefix = "{ path_prefix: /a/ }";
    rejects(
        &answering(prefix, "redirect: { to: \"/b/$1\" }"),
        "routes[1].redirect.to",
        "unknown variable `$1`",
    );
    rejects(
        &answering(prefix, "redirect: { to: \"/b/$user\" }"),
        "routes[1].redirect.to",
        "unknown variable `$user`",
    );
    rejects(
        &answering("{ path_regex: \"^/(a)$\" }", "redirect: { to: \"/b/$2\" }"),
        "routes[1].redirect.to",
        "unknown variable `$2`",
    );
    rejects(
        &answering(prefix, "redirect: { to: \"$host/x\" }"),
        "routes[1].redirect.to",
        "must start with https://",
    );
    rejects(
        &answering(prefix, "redirect: { to: /x, status: 200 }"),
        "routes[1].redirect.status",
        "not 301",
    );
    rejects(
        &answering(prefix, ""),
        "routes[1].upstream",
        "needs an `upstream` or a `redirect`",
    );
    rejects(
        &with_route("redirect: { to: /x }"),
        "routes[1].redirect",
        "not both",
    );
    rejects(
        &answering(prefix, "redirect: { to: /x }\ncache: {}"),
        "routes[1].cache",
        "no request goes upstream",
    );
}

#[test]
fn rewrite_is_checked_and_excludes_strip_prefix() {
    let c = parse(&with_route(
        "rewrite: { regex: \"^/p/old/(.*)$\", to: \"/new/$1\" }",
    ))
    .unwrap();
    let rw = c.routes[1].rewrite.as_ref().unwrap();
    assert_eq!(rw.to.0, [UrlPart::Text("/new/".into()), UrlPart::Group(1)]);
    rejects(
        &with_route("rewrite: { regex: \"^/p/(.*)$\", to: \"/new/$1\" }\nstrip_prefix: /p"),
        "routes[1].rewrite",
        "cannot be combined with strip_prefix",
    );
    rejects(
        &with_route("rewrite: { regex: \"^/p/(.*)$\", to: \"/new/$1?x=1\" }"),
        "routes[1].rewrite.to",
        "without ? or #",
    );
    rejects(
        &with_route("rewrite: { regex: \"^/p/(.*)$\", to: \"/new/$query\" }"),
        "routes[1].rewrite.to",
        "unknown variable `$query`",
    );
    rejects(
        &with_route("rewrite: { regex: \"(\", to: /x }"),
        "routes[1].rewrite.regex",
        "not a valid regex",
    );
}

#[test]
fn basic_auth_reads_the_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("pw", 4).unwrap();
    let users = file(&dir, "htpasswd", &format!("# admins\nalice:{hash}\n"));
    let c = parse(&with_route(&format!(
        "basic_auth: {{ realm: admin, users_file: {users} }}"
    )))
    .unwrap();
    let auth = c.routes[1].basic_auth.as_ref().unwrap();
    assert_eq!(auth.challenge, "Basic realm=\"admin\", charset=\"UTF-8\"");
    assert!(matches!(auth.users["alice"], PasswordHash::Bcrypt(_)));
}

#[test]
fn basic_auth_plaintext_hashes_are_a_load_error() {
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("pw", 4).unwrap();
    let weak = [
        ("bob:secret", "plaintext"),
        ("bob:$apr1$xyz$abcdefghijklmnopqrstuv", "an MD5-apr1 hash"),
        ("bob:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=", "a SHA-1 hash"),
    ];
    for (line, kind) in weak {
        let users = file(&dir, "htpasswd", &format!("alice:{hash}\n{line}\n"));
        rejects(
            &with_route(&format!(
                "basic_auth: {{ realm: admin, users_file: {users} }}"
            )),
            "routes[1].basic_auth.users_file",
            &format!("{users} line 2: user `bob`: {kind}"),
        );
    }
    rejects(
        &with_route("basic_auth: { realm: admin, users_file: /nonexistent/htpasswd }"),
        "routes[1].basic_auth.users_file",
        "cannot read /nonexistent/htpasswd",
    );
    let users = file(&dir, "ok", &format!("alice:{hash}\n"));
    rejects(
        &with_route(&format!(
            "basic_auth: {{ realm: \"a\\\"b\", users_file: {users} }}"
        )),
        "routes[1].basic_auth.realm",
        "without",
    );
}

#[test]
fn error_pages_are_read_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let html = file(&dir, "502.html", "<h1>down</h1>");
    let json = file(&dir, "429.json", "{\"error\":\"slow down\"}");
    let c = parse(&format!(
        "server:\n  error_pages: {{ 502: {html} }}\n{}",
        with_route(&format!("error_pages: {{ 429: {json} }}"))
    ))
    .unwrap();
    let page = &c.server.error_pages[&502];
    assert_eq!(page.content_type, "text/html; charset=utf-8");
    assert_eq!(&page.body[..], b"<h1>down</h1>");
    assert_eq!(
        c.routes[1].error_pages[&429].content_type,
        "application/json"
    );
    rejects(
        &with_route("error_pages: { 503: /nonexistent/503.html }"),
        "routes[1].error_pages.503",
        "cannot read /nonexistent/503.html",
    );
    rejects(
        &format!("server:\n  error_pages: {{ 200: {html} }}\n{BASE}"),
        "server.error_pages.200",
        "not an error status",
    );
    let bin = file(&dir, "502.bin", "x");
    rejects(
        &with_route(&format!("error_pages: {{ 502: {bin} }}")),
        "routes[1].error_pages.502",
        "extension",
    );
    let big = file(&dir, "big.txt", &"x".repeat((1 << 20) + 1));
    rejects(
        &with_route(&format!("error_pages: {{ 502: {big} }}")),
        "routes[1].error_pages.502",
        "larger than",
    );
}

#[test]
fn per_route_limits_parse_and_are_checked() {
    let c = parse(&with_route(
        "max_body_size: 10MiB\nread_timeout: 2s\nconnect_timeout: 300ms",
    ))
    .unwrap();
    let r = &c.routes[1];
    assert_eq!(r.max_body_size, Some(10 << 20));
    assert_eq!(r.read_timeout, Some(Duration::from_secs(2)));
    assert_eq!(r.connect_timeout, Some(Duration::from_millis(300)));
    assert_eq!(c.routes[0].read_timeout, None);
    rejects(
        &with_route("read_timeout: 0s"),
        "routes[1].read_timeout",
        "greater than 0",
    );
    rejects(
        &with_route("max_body_size: lots"),
        "routes[1].max_body_size",
        "",
    );
}
