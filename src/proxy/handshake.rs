//! The TLS handshake of a connection on a TLS listener, with the certificates of the running
//! config: a client that sends plain HTTP gets a 400 in plain text, and every failure is
//! counted by reason (`switchyard_tls_handshake_errors_total`) and never reaches a worker's
//! other connections.

use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use tokio::io::AsyncReadExt;

use super::errors;
use crate::state::Shared;

/// The first byte of a TLS record carrying a handshake message (the ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The TCP stream inside `stream`, as every listener accepts it.
pub fn plain(stream: Stream) -> Option<Box<L4Stream>> {
    stream.into_any().downcast::<L4Stream>().ok()
}

/// Runs the server side of the TLS handshake on `stream` within `server.header_timeout`.
/// `None` when it failed (counted and logged at debug level) or no TLS config is in force.
pub async fn accept(stream: Stream, shared: &Shared) -> Option<Stream> {
    let runtime = shared.runtime();
    let timeout = runtime.config.server.header_timeout;
    let config = runtime.tls.clone();
    let server = runtime.config.server.clone();
    drop(runtime);
    let fail = |reason: &str| shared.metrics.observe_tls_handshake_error(reason);
    let Some(config) = config else {
        fail("no_config");
        return None;
    };
    let mut l4 = plain(stream)?;
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, l4.read(&mut first)).await {
        Ok(Ok(1)) => l4.rewind(&first),
        Ok(_) => {
            fail("closed");
            return None;
        }
        Err(_) => {
            fail("timeout");
            return None;
        }
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        if first[0].is_ascii_uppercase() {
            fail("plain_http");
            errors::refuse(l4, 400, "plain HTTP sent to an HTTPS port", &server).await;
        } else {
            fail("not_tls");
        }
        return None;
    }
    let acceptor = Acceptor::from_server_config(config);
    match tokio::time::timeout(timeout, acceptor.tls_handshake(*l4)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            let reason = classify(&format!("{e} {e:?}"));
            log::debug!("TLS handshake failed ({reason}): {e}");
            fail(reason);
            None
        }
        Err(_) => {
            fail("timeout");
            None
        }
    }
}

/// The metric reason of a failed handshake, from the error's text (rustls errors reach us
/// wrapped in I/O errors).
fn classify(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("noapplicationprotocol") || e.contains("known protocol") {
        "alpn"
    } else if e.contains("protocolversion")
        || e.contains("protocol version")
        || e.contains("incompatible")
    {
        "version"
    } else if e.contains("eof") || e.contains("reset") || e.contains("closed") {
        "closed"
    } else {
        "protocol"
    }
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn reasons() {
        assert_eq!(
            classify("PeerIncompatible(SupportedVersionsExtensionRequired)"),
            "version"
        );
        assert_eq!(classify("NoApplicationProtocol"), "alpn");
        assert_eq!(classify("peer is incompatible: Tls12NotOffered"), "version");
        assert_eq!(classify("peer doesn't support any known protocol"), "alpn");
        assert_eq!(classify("unexpected EOF"), "closed");
        assert_eq!(classify("InvalidMessage(...)"), "protocol");
    }
}
