//! RFC 9111 decisions, one rule at a time.

use super::*;

/// The default targeted fields (RFC 9213).
const TARGETED: [http::HeaderName; 2] = [
    http::HeaderName::from_static("switchyard-cache-control"),
    http::HeaderName::from_static("cdn-cache-control"),
];

fn route() -> RouteCache {
    RouteCache {
        default_ttl: None,
        max_ttl: None,
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
        cookies: CookiePolicy::Bypass,
        client_cache_control: crate::config::ClientCacheControl::Ignore,
    }
}

fn req(headers: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/", None).unwrap();
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
    let mut r = ResponseHeader::build(status, None).unwrap();
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

/// Seconds of freshness left, or the reason it is not stored.
fn ttl(
    req: &RequestHeader,
    resp: &ResponseHeader,
    route: &RouteCache,
) -> Result<i64, &'static str> {
    let now = SystemTime::now();
    match decide(req, resp, route, &TARGETED, now) {
        Decision::Store(meta) => Ok(match meta.fresh_until().duration_since(now) {
            Ok(d) => d.as_secs_f64().round() as i64,
            Err(_) => 0,
        }),
        Decision::Pass(reason) => Err(reason),
    }
}

#[test]
fn max_age_and_s_maxage() {
    let r = route();
    assert_eq!(
        ttl(
            &req(&[]),
            &resp(200, &[("Cache-Control", "max-age=60")]),
            &r
        ),
        Ok(60)
    );
    assert_eq!(
        ttl(
            &req(&[]),
            &resp(200, &[("Cache-Control", "max-age=1, s-maxage=90")]),
            &r
        ),
        Ok(90)
    );
}

#[test]
fn age_counts_against_freshness() {
    let r = route();
    let aged = resp(200, &[("Cache-Control", "max-age=60"), ("Age", "50")]);
    assert_eq!(ttl(&req(&[]), &aged, &r), Ok(10));
    let too_old = resp(
        200,
        &[
            ("Cache-Control", "max-age=60"),
            ("Age", "90"),
            ("ETag", "\"a\""),
        ],
    );
    assert_eq!(ttl(&req(&[]), &too_old, &r), Ok(0));
}

#[test]
fn expires_relative_to_date() {
    let r = route();
    let e = resp(
        200,
        &[
            ("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("Expires", "Sun, 06 Nov 1994 08:51:37 GMT"),
        ],
    );
    assert_eq!(ttl(&req(&[]), &e, &r), Ok(120));
    let invalid = resp(200, &[("Expires", "0"), ("ETag", "\"x\"")]);
    assert_eq!(
        ttl(&req(&[]), &invalid, &r),
        Ok(0),
        "invalid Expires is already expired"
    );
}

#[test]
fn never_stored() {
    let r = route();
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[("Cache-Control", "no-store, max-age=60")], "no-store"),
        (&[("Cache-Control", "private, max-age=60")], "private"),
        (
            &[("Cache-Control", "max-age=60"), ("Set-Cookie", "a=1")],
            "set-cookie",
        ),
        (
            &[("Cache-Control", "max-age=60"), ("Vary", "*")],
            "vary-star",
        ),
        (
            &[("Cache-Control", "max-age=60"), ("Vary", "Accept, *")],
            "vary-star",
        ),
    ];
    for (headers, reason) in cases {
        assert_eq!(ttl(&req(&[]), &resp(200, headers), &r), Err(reason));
    }
    assert_eq!(
        ttl(
            &req(&[]),
            &resp(206, &[("Cache-Control", "max-age=60")]),
            &r
        ),
        Err("status")
    );
    assert_eq!(ttl(&req(&[]), &resp(500, &[]), &r), Err("status"));
}

#[test]
fn any_status_with_explicit_freshness_is_stored() {
    let r = route();
    for status in [404, 301, 500, 502, 503, 504, 418] {
        assert_eq!(
            ttl(
                &req(&[]),
                &resp(status, &[("Cache-Control", "max-age=60")]),
                &r
            ),
            Ok(60),
            "{status}"
        );
    }
    let expires = resp(
        503,
        &[
            ("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("Expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
        ],
    );
    assert_eq!(ttl(&req(&[]), &expires, &r), Ok(60));
    // Heuristics stay with the codes RFC 9110 §15.1 names.
    let lm = [("Last-Modified", "Sun, 06 Nov 1994 00:00:00 GMT")];
    assert_eq!(ttl(&req(&[]), &resp(404, &lm), &r), Ok(86400));
    assert_eq!(ttl(&req(&[]), &resp(500, &lm), &r), Err("status"));
}

#[test]
fn age_values_that_are_not_integers_are_ignored() {
    let age = |value: &str| {
        let mut r = resp(200, &[("Cache-Control", "max-age=100")]);
        r.append_header("Age", value).unwrap();
        initial_age(&r).as_secs()
    };
    assert_eq!(age("30"), 30);
    assert_eq!(age(" 30 "), 30);
    for bad in ["3a", "1.5", "-1", "+1", ""] {
        assert_eq!(age(bad), 0, "{bad:?}");
    }
    assert_eq!(age("99999999999999999999999"), 1 << 31);
    assert_eq!(age("4294967296"), 1 << 31);
    let mut twice = resp(200, &[("Age", "10"), ("Age", "50")]);
    assert_eq!(initial_age(&twice).as_secs(), 10, "the first Age counts");
    twice.insert_header("Age", "x").unwrap();
    assert_eq!(
        ttl(
            &req(&[]),
            &{
                let mut r = twice.clone();
                r.insert_header("Cache-Control", "max-age=100").unwrap();
                r
            },
            &route()
        ),
        Ok(100),
        "an invalid Age is absent"
    );
}

#[test]
fn obsolete_date_formats_are_read() {
    let r = route();
    for (date, expires) in [
        (
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:50:37 GMT",
        ),
        ("Sun Nov  6 08:49:37 1994", "Sun Nov  6 08:50:37 1994"),
    ] {
        let old = resp(200, &[("Date", date), ("Expires", expires)]);
        assert_eq!(ttl(&req(&[]), &old, &r), Ok(60), "{date}");
    }
    let invalid = resp(200, &[("Expires", "tomorrow"), ("ETag", "\"a\"")]);
    assert_eq!(
        ttl(&req(&[]), &invalid, &r),
        Ok(0),
        "invalid Expires is expired"
    );
}

#[test]
fn targeted_fields_take_precedence_for_this_cache() {
    let r = route();
    let cdn = |cc: &str, cdn: &str| resp(200, &[("Cache-Control", cc), ("CDN-Cache-Control", cdn)]);
    assert_eq!(
        ttl(&req(&[]), &cdn("max-age=10", "max-age=600"), &r),
        Ok(600)
    );
    assert_eq!(ttl(&req(&[]), &cdn("no-store", "max-age=600"), &r), Ok(600));
    assert_eq!(
        ttl(&req(&[]), &cdn("max-age=600", "private"), &r),
        Err("private")
    );
    assert_eq!(
        ttl(&req(&[]), &cdn("max-age=600", "no-store"), &r),
        Err("no-store")
    );
    assert_eq!(
        ttl(&req(&[]), &cdn("max-age=600", "no-cache"), &r),
        Err("no-freshness")
    );
    // Switchyard's own field comes first.
    let both = resp(
        200,
        &[
            ("CDN-Cache-Control", "max-age=600"),
            ("Switchyard-Cache-Control", "s-maxage=30"),
        ],
    );
    assert_eq!(ttl(&req(&[]), &both, &r), Ok(30));
    // With a targeted field, Expires is ignored too.
    let expires = resp(
        200,
        &[
            ("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("Expires", "Sun, 06 Nov 1994 09:49:37 GMT"),
            ("CDN-Cache-Control", "must-revalidate"),
            ("ETag", "\"a\""),
        ],
    );
    assert_eq!(ttl(&req(&[]), &expires, &r), Ok(0));
    // An empty targeted field is not a valid value: Cache-Control decides.
    assert_eq!(ttl(&req(&[]), &cdn("max-age=10", ""), &r), Ok(10));
    // Without the field in the list, it is just another header.
    let now = SystemTime::now();
    let plain = cdn("max-age=10", "max-age=600");
    match decide(&req(&[]), &plain, &r, &[], now) {
        Decision::Store(meta) => assert_eq!(
            meta.fresh_until()
                .duration_since(now)
                .unwrap()
                .as_secs_f64()
                .round(),
            10.0
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn must_understand_stores_known_statuses_despite_no_store() {
    let r = route();
    let mu = |status| {
        resp(
            status,
            &[("Cache-Control", "must-understand, no-store, max-age=60")],
        )
    };
    assert_eq!(ttl(&req(&[]), &mu(200), &r), Ok(60));
    assert_eq!(ttl(&req(&[]), &mu(404), &r), Ok(60));
    assert_eq!(ttl(&req(&[]), &mu(599), &r), Err("must-understand"));
}

#[test]
fn a_304_freshens_every_field_but_framing_and_coding() {
    let stored = resp(
        200,
        &[
            ("Cache-Control", "max-age=1"),
            ("ETag", "\"v1\""),
            ("X-Version", "1"),
            ("Content-Length", "5"),
            ("Content-Encoding", "gzip"),
            ("Vary", "Accept-Encoding"),
            ("Content-Type", "text/plain"),
        ],
    );
    let update = resp(
        304,
        &[
            ("Cache-Control", "max-age=600"),
            ("ETag", "\"v2\""),
            ("X-Version", "2"),
            ("X-New", "a"),
            ("X-New", "b"),
            ("Content-Length", "0"),
            ("Content-Encoding", "br"),
            ("Vary", "Cookie"),
            ("Age", "9"),
        ],
    );
    let merged = freshen(&stored, &update);
    let get = |name: &str| -> Vec<&str> {
        merged
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    };
    assert_eq!(merged.status, 200);
    assert_eq!(get("cache-control"), ["max-age=600"]);
    assert_eq!(get("etag"), ["\"v2\""]);
    assert_eq!(get("x-version"), ["2"]);
    assert_eq!(get("x-new"), ["a", "b"]);
    assert_eq!(get("content-length"), ["5"]);
    assert_eq!(get("content-encoding"), ["gzip"]);
    assert_eq!(get("vary"), ["Accept-Encoding"]);
    assert_eq!(get("content-type"), ["text/plain"]);
    assert!(get("age").is_empty());
}

#[test]
fn authorization_needs_public_or_s_maxage() {
    let r = route();
    let auth = req(&[("Authorization", "Bearer x")]);
    assert_eq!(
        ttl(&auth, &resp(200, &[("Cache-Control", "max-age=60")]), &r),
        Err("authorization")
    );
    assert_eq!(
        ttl(
            &auth,
            &resp(200, &[("Cache-Control", "public, max-age=60")]),
            &r
        ),
        Ok(60)
    );
    assert_eq!(
        ttl(&auth, &resp(200, &[("Cache-Control", "s-maxage=30")]), &r),
        Ok(30)
    );
}

#[test]
fn no_explicit_freshness() {
    let r = route();
    assert_eq!(ttl(&req(&[]), &resp(200, &[]), &r), Err("no-freshness"));
    // With a validator it is stored to be revalidated.
    assert_eq!(ttl(&req(&[]), &resp(200, &[("ETag", "\"a\"")]), &r), Ok(0));
    // The Last-Modified heuristic: 10% of the age, capped at a day.
    let lm = resp(
        200,
        &[
            ("Date", "Sun, 06 Nov 1994 10:00:00 GMT"),
            ("Last-Modified", "Sun, 06 Nov 1994 00:00:00 GMT"),
        ],
    );
    assert_eq!(ttl(&req(&[]), &lm, &r), Ok(3600));
    let ancient = resp(200, &[("Last-Modified", "Sun, 06 Nov 1994 00:00:00 GMT")]);
    assert_eq!(ttl(&req(&[]), &ancient, &r), Ok(86400));
    // Not heuristically cacheable without explicit freshness.
    assert_eq!(
        ttl(&req(&[]), &resp(302, &[("ETag", "\"a\"")]), &r),
        Err("status")
    );
    assert_eq!(
        ttl(&req(&[]), &resp(302, &[("Cache-Control", "max-age=5")]), &r),
        Ok(5)
    );
}

#[test]
fn route_default_and_cap() {
    let mut r = route();
    r.default_ttl = Some(Duration::from_secs(60));
    r.max_ttl = Some(Duration::from_secs(100));
    assert_eq!(ttl(&req(&[]), &resp(200, &[]), &r), Ok(60));
    assert_eq!(
        ttl(
            &req(&[]),
            &resp(200, &[("Cache-Control", "max-age=1000")]),
            &r
        ),
        Ok(100)
    );
    assert_eq!(
        ttl(
            &req(&[]),
            &resp(200, &[("Cache-Control", "max-age=10")]),
            &r
        ),
        Ok(10)
    );
}

#[test]
fn no_cache_stores_for_revalidation_only() {
    let r = route();
    assert_eq!(
        ttl(
            &req(&[]),
            &resp(
                200,
                &[("Cache-Control", "no-cache, max-age=60"), ("ETag", "\"a\"")]
            ),
            &r
        ),
        Ok(0)
    );
    assert_eq!(
        ttl(&req(&[]), &resp(200, &[("Cache-Control", "no-cache")]), &r),
        Err("no-freshness")
    );
}

#[test]
fn stale_windows() {
    let mut r = route();
    r.stale_while_revalidate = Duration::from_secs(10);
    r.stale_if_error = Duration::from_secs(300);
    let now = SystemTime::now();
    let windows =
        |headers: &[(&str, &str)]| match decide(&req(&[]), &resp(200, headers), &r, &TARGETED, now)
        {
            Decision::Store(m) => (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
            Decision::Pass(p) => panic!("{p}"),
        };
    assert_eq!(windows(&[("Cache-Control", "max-age=5")]), (10, 300));
    assert_eq!(
        windows(&[(
            "Cache-Control",
            "max-age=5, stale-while-revalidate=2, stale-if-error=3"
        )]),
        (2, 3)
    );
    assert_eq!(
        windows(&[("Cache-Control", "max-age=5, must-revalidate")]),
        (0, 0)
    );
    assert_eq!(
        windows(&[("Cache-Control", "max-age=5, proxy-revalidate")]),
        (0, 0)
    );
}

#[test]
fn internal_headers_from_the_origin_are_not_stored() {
    let r = route();
    let now = SystemTime::now();
    let forged = resp(
        200,
        &[("Cache-Control", "max-age=5"), (GENERATED, "\"sy-fake\"")],
    );
    match decide(&req(&[]), &forged, &r, &TARGETED, now) {
        Decision::Store(m) => assert!(m.headers().get(GENERATED).is_none()),
        Decision::Pass(p) => panic!("{p}"),
    }
}

#[test]
fn request_directives() {
    assert_eq!(request_directive(&req(&[])), RequestDirective::Normal);
    assert_eq!(
        request_directive(&req(&[("Cache-Control", "no-store")])),
        RequestDirective::Bypass
    );
    assert_eq!(
        request_directive(&req(&[("Cache-Control", "no-cache")])),
        RequestDirective::Revalidate
    );
    assert_eq!(
        request_directive(&req(&[("Cache-Control", "max-age=0")])),
        RequestDirective::Revalidate
    );
    assert_eq!(
        request_directive(&req(&[("Pragma", "no-cache")])),
        RequestDirective::Revalidate
    );
    assert_eq!(
        request_directive(&req(&[("Cache-Control", "max-age=60")])),
        RequestDirective::Normal
    );
}

#[test]
fn cookie_requests_are_stored_only_with_shared_permission() {
    let mut r = route();
    r.default_ttl = Some(Duration::from_secs(60));
    let cookie = req(&[("Cookie", "session=a")]);
    // An API that sends no cache headers: default_ttl applies to anonymous requests only.
    assert_eq!(ttl(&req(&[]), &resp(200, &[]), &r), Ok(60));
    assert_eq!(ttl(&cookie, &resp(200, &[]), &r), Err("cookie"));
    assert_eq!(
        ttl(&cookie, &resp(200, &[("Cache-Control", "max-age=30")]), &r),
        Err("cookie")
    );
    assert_eq!(
        ttl(
            &cookie,
            &resp(200, &[("Cache-Control", "public, max-age=30")]),
            &r
        ),
        Ok(30)
    );
    assert_eq!(
        ttl(&cookie, &resp(200, &[("Cache-Control", "s-maxage=20")]), &r),
        Ok(20)
    );
    // `public` without a lifetime: no default_ttl for a cookie request, so nothing to store.
    assert_eq!(
        ttl(&cookie, &resp(200, &[("Cache-Control", "public")]), &r),
        Err("no-freshness")
    );
    // The route can say cookies do not matter, or key on some of them.
    r.cookies = CookiePolicy::Ignore;
    assert_eq!(ttl(&cookie, &resp(200, &[]), &r), Ok(60));
    r.cookies = CookiePolicy::Key(vec!["lang".into()]);
    assert_eq!(ttl(&cookie, &resp(200, &[]), &r), Ok(60));
}
