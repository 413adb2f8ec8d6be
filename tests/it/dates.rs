//! `Date` on every path (RFC 9111 §4, RFC 9110 §6.6.1): a hit carries the stored response's
//! `Date` whichever path answers it (HTTP/2, several ranges, stale, freshened by a 304), a
//! pass-through answer the origin's, and an answer the proxy makes the time it is made.

use std::time::{Duration, SystemTime};

use crate::common::{client, closed_port, h2c_client, spawn_origin, spawn_proxy, upstream, Proxy};

/// An HTTP date `ago` before now, and as the test origin's `date` parameter wants it.
pub(crate) fn date_ago(ago: Duration) -> (String, String) {
    let date = httpdate::fmt_http_date(SystemTime::now() - ago);
    let param = date.replace(' ', "%20").replace(',', "%2C");
    (date, param)
}

/// Status, `Date`, `Cache-Status` and body of a GET with `headers`, over `http`.
pub(crate) async fn fetch(
    http: &reqwest::Client,
    proxy: &Proxy,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String, String) {
    let mut request = http.get(proxy.url(path));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let resp = request.send().await.expect("request");
    let field = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (date, cache_status) = (field("date"), field("cache-status"));
    let status = resp.status().as_u16();
    (status, date, cache_status, resp.text().await.expect("body"))
}

/// Whether `date` is within a few seconds of now (the time the proxy made the answer).
fn is_now(date: &str) -> bool {
    let Ok(t) = httpdate::parse_http_date(date) else {
        return false;
    };
    let now = SystemTime::now();
    let gap = now.duration_since(t).unwrap_or_else(|e| e.duration());
    gap <= Duration::from_secs(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_carry_the_stored_date_on_every_path_and_made_answers_the_time() {
    let origin = spawn_origin("o").await;
    let proxy = spawn_proxy(&format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  threads: 2\n  h2c: true\nupstreams:\n{}{}routes:\n  \
         - match: {{ path_prefix: /dead }}\n    upstream: dead\n  \
         - match: {{ path_prefix: /pass }}\n    upstream: pool\n  \
         - match: {{ path_prefix: / }}\n    upstream: pool\n    cache: {{ enabled: true }}\n",
        upstream("pool", &[(origin.addr, 1)], ""),
        upstream("dead", &[(closed_port(), 1)], "")
    ))
    .await;
    let h1 = client();
    let h2 = h2c_client();

    // Ten seconds old, so that a `Date` written when the answer goes out never equals it.
    let (old, old_param) = date_ago(Duration::from_secs(10));
    let fresh = format!("/fresh?cc=max-age=600&date={old_param}");
    let (_, date, cs, body) = fetch(&h1, &proxy, &fresh, &[]).await;
    assert!(cs.contains("fwd=miss"), "{cs}");
    assert_eq!(date, old, "a miss carries the origin's Date");
    let (_, date, cs, _) = fetch(&h2, &proxy, &fresh, &[]).await;
    assert!(cs.contains("; hit"), "{cs}");
    assert_eq!(date, old, "an HTTP/2 hit carries the stored Date");
    let (status, date, cs, part) = fetch(&h1, &proxy, &fresh, &[("range", "bytes=0-0, 2-2")]).await;
    assert_eq!(status, 206, "{cs}");
    let total = body.len();
    for range in ["0-0", "2-2"] {
        assert!(part.contains(&format!("bytes {range}/{total}")), "{part}");
    }
    assert_eq!(
        date, old,
        "a multipart 206 from the cache carries the stored Date"
    );

    // Stale: served at once, with the stored Date, while the cache revalidates.
    let (stored, stored_param) = date_ago(Duration::from_secs(1));
    let swr = format!("/swr?cc=max-age=2,stale-while-revalidate=30&date={stored_param}");
    fetch(&h1, &proxy, &swr, &[]).await;
    // Freshened by a 304 whose own Date the stored response takes (RFC 9111 §3.2).
    let (_, reval_param) = date_ago(Duration::from_secs(1));
    let (then, then_param) = date_ago(Duration::ZERO);
    let reval =
        format!("/reval?cond=1&etag=v1&cc=max-age=2&date={reval_param}&date304={then_param}");
    fetch(&h1, &proxy, &reval, &[]).await;
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let (_, date, cs, _) = fetch(&h1, &proxy, &swr, &[]).await;
    assert!(cs.contains("detail=stale"), "{cs}");
    assert_eq!(date, stored, "a stale answer carries the stored Date");
    let (_, date, cs, _) = fetch(&h1, &proxy, &reval, &[]).await;
    assert!(
        cs.contains("fwd=stale") && cs.contains("fwd-status=304"),
        "{cs}"
    );
    assert_eq!(date, then, "a revalidated answer carries the 304's Date");
    assert_eq!(origin.not_modified(), 1);
    let (_, date, cs, _) = fetch(&h2, &proxy, &reval, &[]).await;
    assert!(cs.contains("; hit"), "{cs}");
    assert_eq!(date, then, "the next hit carries the freshened Date");

    // Pass-through keeps the origin's Date; what the proxy makes carries the time it is made.
    let (_, date, _, _) = fetch(&h2, &proxy, &format!("/pass?date={old_param}"), &[]).await;
    assert_eq!(date, old, "a pass-through answer carries the origin's Date");
    let (status, date, _, _) = fetch(&h1, &proxy, "/dead", &[]).await;
    assert!(matches!(status, 502 | 503), "{status}");
    assert!(
        is_now(&date),
        "a 502 the proxy makes is dated now, not {date:?}"
    );
    let (status, date, _, _) = fetch(&h2, &proxy, "/dead", &[]).await;
    assert!(matches!(status, 502 | 503), "{status}");
    assert!(is_now(&date), "over HTTP/2 too, not {date:?}");
}
