//! Sticky cookie values never panic the decoder, and only values it made verify.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use switchyard::config::Sticky;
use switchyard::upstream::sticky::StickyCodec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let codec = StickyCodec::new(&Sticky {
        cookie: "SID".into(),
        ttl: Duration::from_secs(3600),
        secret: Some("fuzz".into()),
    });
    let _ = codec.decode(text, 1_000_000);
    if let Some(value) = codec.find([text].into_iter()) {
        let _ = codec.decode(value, 1_000_000);
    }
    let id = codec.backend_id("pool", text);
    let made = codec.encode(&id, 1_000_000);
    assert_eq!(codec.decode(&made, 1_000_000).map(|(i, _)| i), Some(id));
});
