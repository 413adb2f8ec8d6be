//! The memory storage: round trips, byte bound under pressure, purges, unfinished writes.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use pingora_http::ResponseHeader;

use super::*;
use pingora_cache::trace::Span;

fn meta(headers: &[(&str, &str)]) -> CacheMeta {
    let mut h = ResponseHeader::build(200, None).unwrap();
    for (k, v) in headers {
        h.append_header(k.to_string(), *v).unwrap();
    }
    let now = SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
}

fn storage(max: u64, max_object: u64) -> &'static TieredStorage {
    TieredStorage::leak(max, max_object, None)
}

async fn fill(s: &'static TieredStorage, primary: &str, headers: &[(&str, &str)], body: &[u8]) {
    let key = CacheKey::new(primary, "");
    let trace = Span::inactive().handle();
    let mut miss = s
        .get_miss_handler(&key, &meta(headers), &trace)
        .await
        .unwrap();
    miss.write_body(Bytes::copy_from_slice(body), true)
        .await
        .unwrap();
    miss.finish().await.unwrap();
}

async fn read(s: &'static TieredStorage, primary: &str) -> Option<(CacheMeta, Bytes)> {
    let trace = Span::inactive().handle();
    let (meta, mut hit) = s
        .lookup(&CacheKey::new(primary, ""), &trace)
        .await
        .unwrap()?;
    let mut body = BytesMut::new();
    while let Some(chunk) = hit.read_body().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    Some((meta, body.freeze()))
}

#[tokio::test]
async fn a_response_without_date_is_stored_with_the_time_it_arrived() {
    let s = storage(1 << 20, 1 << 16);
    fill(s, "h/d", &[("Content-Type", "text/plain")], b"x").await;
    let (meta, _) = read(s, "h/d").await.unwrap();
    assert_eq!(
        meta.headers()[http::header::DATE],
        httpdate::fmt_http_date(meta.created()).as_str()
    );
    let origin = "Sun, 06 Nov 1994 08:49:37 GMT";
    fill(s, "h/e", &[("Date", origin)], b"x").await;
    let (meta, _) = read(s, "h/e").await.unwrap();
    assert_eq!(meta.headers()[http::header::DATE], origin);
}

#[tokio::test]
async fn round_trip_with_a_generated_etag() {
    let s = storage(1 << 20, 1 << 16);
    fill(s, "h/a", &[("Content-Type", "text/plain")], b"hello").await;
    let (meta, body) = read(s, "h/a").await.unwrap();
    assert_eq!(&body[..], b"hello");
    assert_eq!(
        meta.headers()[etag::GENERATED],
        etag::generate(b"hello").as_str()
    );
    assert!(read(s, "h/b").await.is_none());
    assert_eq!(s.memory.stats.entries.load(Ordering::Relaxed), 1);
    // An origin ETag is kept as is and no tag is generated.
    fill(s, "h/c", &[("ETag", "\"o\"")], b"x").await;
    let (meta, _) = read(s, "h/c").await.unwrap();
    assert!(meta.headers().get(etag::GENERATED).is_none());
}

#[tokio::test]
async fn unfinished_and_oversized_writes_are_never_stored() {
    let s = storage(1 << 20, 1000);
    let key = CacheKey::new("h/partial", "");
    let trace = Span::inactive().handle();
    let mut miss = s.get_miss_handler(&key, &meta(&[]), &trace).await.unwrap();
    miss.write_body(Bytes::from_static(b"half of it"), false)
        .await
        .unwrap();
    drop(miss);
    assert!(read(s, "h/partial").await.is_none());

    fill(s, "h/big", &[], &[b'x'; 1001]).await;
    assert!(read(s, "h/big").await.is_none());
}

#[tokio::test]
async fn bytes_stay_under_the_bound_while_filling_four_times_over() {
    let max = 1 << 20;
    let s = storage(max, 64 << 10);
    let body = vec![b'x'; 16 << 10];
    for i in 0..256 {
        fill(s, &format!("h/{i}"), &[], &body).await;
        assert!(s.memory.stats.bytes.load(Ordering::Relaxed) <= max);
    }
    let entries = s.memory.stats.entries.load(Ordering::Relaxed);
    let bytes = s.memory.stats.bytes.load(Ordering::Relaxed);
    assert!(s.memory.stats.evictions.load(Ordering::Relaxed) >= 190);
    let charge = MemoryTier::size_of(&meta(&[]), body.len()) as u64;
    let most = max / charge;
    assert!(
        (most * 9 / 10..=most).contains(&entries),
        "{entries} entries of {charge} bytes"
    );
    // Full means full: within 10% of the bound.
    assert!(bytes as f64 >= max as f64 * 0.9, "{bytes} bytes");
    assert_eq!(s.memory.indexed() as u64, entries);
}

#[tokio::test]
async fn purges_by_key_prefix_and_tag() {
    let s = storage(1 << 20, 1 << 16);
    fill(s, "h/a?x=1", &[("Surrogate-Key", "t1 t2")], b"1").await;
    fill(s, "h/a?x=2", &[("Cache-Tag", "t2,t3")], b"2").await;
    fill(s, "h/b/1", &[], b"3").await;
    fill(s, "h/b/2", &[], b"4").await;
    fill(s, "other/b/1", &[], b"5").await;
    assert_eq!(s.purge_local(PurgeMatch::Key("h/a?x=1".into())), 1);
    assert!(read(s, "h/a?x=1").await.is_none());
    assert_eq!(s.purge_local(PurgeMatch::Tag("t3".into())), 1);
    assert!(read(s, "h/a?x=2").await.is_none());
    assert_eq!(s.purge_local(PurgeMatch::Prefix("h/b/".into())), 2);
    assert!(read(s, "h/b/1").await.is_none());
    assert!(read(s, "other/b/1").await.is_some());
    assert_eq!(s.purge_local(PurgeMatch::Tag("t1".into())), 0);
    assert_eq!(s.memory.stats.entries.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_purge_during_a_fill_wins() {
    let s = storage(1 << 20, 1 << 16);
    let key = CacheKey::new("h/racing", "");
    let trace = Span::inactive().handle();
    let mut miss = s
        .get_miss_handler(&key, &meta(&[("Surrogate-Key", "t")]), &trace)
        .await
        .unwrap();
    miss.write_body(Bytes::from_static(b"old"), true)
        .await
        .unwrap();
    s.purge_local(PurgeMatch::Tag("t".into()));
    miss.finish().await.unwrap();
    assert!(read(s, "h/racing").await.is_none());
}

/// Every insert is forced (requests coalesced on a fill read it next), so TinyLFU admission
/// never runs; S3-FIFO's small queue is what keeps a one-pass scan from flushing the hot set:
/// a new entry enters the small queue (10% of the cache) and leaves it evicted unless it was
/// read again meanwhile, while entries read more than once move to the main queue.
#[tokio::test]
async fn a_hot_set_survives_a_scan_of_ten_times_the_cache() {
    let s = storage(1 << 20, 64 << 10);
    let body = [b'h'; 1000];
    let hot: Vec<String> = (0..40).map(|i| format!("h/hot/{i}")).collect();
    for key in &hot {
        fill(s, key, &[], &body).await;
    }
    for _ in 0..3 {
        for key in &hot {
            assert!(read(s, key).await.is_some(), "{key} was not stored");
        }
    }
    let per_entry = s.memory.stats.bytes.load(Ordering::Relaxed) / hot.len() as u64;
    let capacity = s.memory.max_bytes() / per_entry;
    let scan = 10 * capacity;
    for i in 0..scan {
        fill(s, &format!("h/scan/{i}"), &[], &body).await;
    }
    assert!(
        s.memory.stats.evictions.load(Ordering::Relaxed) >= scan - capacity,
        "the scan did not go through the cache"
    );
    assert!(s.memory.stats.bytes.load(Ordering::Relaxed) <= s.memory.max_bytes());
    let lost: Vec<&String> = missing(s, &hot).await;
    assert!(
        lost.is_empty(),
        "hot keys evicted by a scan of {scan} keys: {lost:?}"
    );
}

async fn missing<'a>(s: &'static TieredStorage, keys: &'a [String]) -> Vec<&'a String> {
    let mut lost = Vec::new();
    for key in keys {
        if read(s, key).await.is_none() {
            lost.push(key);
        }
    }
    lost
}
