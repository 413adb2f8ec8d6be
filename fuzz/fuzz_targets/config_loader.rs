//! The config loader never panics on any input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = switchyard::config::Config::parse(&text, "fuzz.yaml");
});
