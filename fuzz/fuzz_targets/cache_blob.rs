//! Values read from Redis never panic the decoder.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = switchyard::cache::blob::decode(&bytes::Bytes::copy_from_slice(data));
});
