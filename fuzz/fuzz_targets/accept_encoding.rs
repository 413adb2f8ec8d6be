//! Accept-Encoding negotiation and the cache's normalisation never panic, and agree.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard::compress::negotiate::{negotiate, normalize_accept_encoding};
use switchyard::compress::Algorithm;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let picked = negotiate(Some(text), &Algorithm::ALL);
    let accepted = normalize_accept_encoding(Some(text));
    if let Some(alg) = picked {
        // Whatever negotiation picks, the client accepts it.
        assert!(
            accepted.split(',').any(|a| a == alg.name()),
            "{text:?}: {alg:?} not in {accepted}"
        );
    }
});
