//! X-Forwarded-For parsing never panics and only ever yields the peer or an address from
//! the header.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use switchyard::proxy::client::{client_ip, parse_forwarded_ip};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let trusted = vec![
        "127.0.0.0/8".parse().unwrap(),
        "10.0.0.0/8".parse().unwrap(),
    ];
    let client = client_ip(peer, &[text], &trusted);
    let from_header = text
        .split(',')
        .filter_map(parse_forwarded_ip)
        .any(|ip| ip == client);
    assert!(client == peer || from_header, "{text:?} gave {client}");
});
