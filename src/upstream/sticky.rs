//! Sticky sessions: pin a client to a backend with a signed cookie.
//!
//! The value is `<backend id>.<expiry>.<mac>`: the id is an HMAC of the upstream and backend
//! names (it reveals no address), the expiry is a Unix time, and the MAC signs both. A value
//! that was changed, signed with another key, or is past its expiry reads as no cookie.

use std::sync::OnceLock;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config;
use crate::digest::hex;
use crate::fields;

type HmacSha256 = Hmac<Sha256>;

/// A backend's id in cookies.
pub type BackendId = [u8; 8];

/// The key used when the config gives no secret: random, made once per process, so it
/// survives reloads but not restarts.
fn process_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        log::warn!(
            "sticky sessions without a secret: using a random key; cookies will not survive \
             a restart or work across instances (set sticky.secret)"
        );
        rand::random()
    })
}

/// Encodes and checks sticky cookies for one upstream.
#[derive(Debug, Clone)]
pub struct StickyCodec {
    pub cookie: String,
    pub ttl: Duration,
    key: Vec<u8>,
}

impl StickyCodec {
    pub fn new(conf: &config::Sticky) -> StickyCodec {
        let key = match &conf.secret {
            Some(secret) => secret.as_bytes().to_vec(),
            None => process_key().to_vec(),
        };
        StickyCodec {
            cookie: conf.cookie.clone(),
            ttl: conf.ttl,
            key,
        }
    }

    /// The HMAC of `parts`, each ended by a NUL so that no two lists give the same input.
    fn hmac(&self, parts: &[&[u8]]) -> Option<HmacSha256> {
        // HMAC accepts keys of any length: `None` is never returned.
        let mut mac = HmacSha256::new_from_slice(&self.key).ok()?;
        for part in parts {
            mac.update(part);
            mac.update(b"\0");
        }
        Some(mac)
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.hmac(parts)
            .map_or([0; 32], |mac| mac.finalize().into_bytes().into())
    }

    /// The id of `backend` in `upstream`: stable for the same key and names.
    pub fn backend_id(&self, upstream: &str, backend: &str) -> BackendId {
        let full = self.mac(&[b"backend", upstream.as_bytes(), backend.as_bytes()]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&full[..8]);
        id
    }

    /// A cookie value for `id`, valid until `now + ttl`.
    pub fn encode(&self, id: &BackendId, now_unix: u64) -> String {
        let expires = now_unix.saturating_add(self.ttl.as_secs());
        let id_hex = hex(id);
        let expires = expires.to_string();
        let mac = self.mac(&[id_hex.as_bytes(), expires.as_bytes()]);
        format!("{id_hex}.{expires}.{}", hex(&mac[..16]))
    }

    /// The backend id and expiry of a valid, unexpired value.
    pub fn decode(&self, value: &str, now_unix: u64) -> Option<(BackendId, u64)> {
        let mut parts = value.split('.');
        let (id_hex, expires, mac_hex) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || id_hex.len() != 16 || mac_hex.len() != 32 {
            return None;
        }
        let mut tag = [0u8; 16];
        hex::decode_to_slice(mac_hex, &mut tag).ok()?;
        // Constant time, over the left half of the MAC that the cookie carries.
        self.hmac(&[id_hex.as_bytes(), expires.as_bytes()])?
            .verify_truncated_left(&tag)
            .ok()?;
        let expires: u64 = expires.parse().ok()?;
        if expires <= now_unix {
            return None;
        }
        let mut id = [0u8; 8];
        hex::decode_to_slice(id_hex, &mut id).ok()?;
        Some((id, expires))
    }

    /// Whether a cookie expiring at `expires` should be issued again (less than half its
    /// lifetime left), so that active sessions keep their backend.
    pub fn wants_refresh(&self, expires: u64, now_unix: u64) -> bool {
        expires.saturating_sub(now_unix) < self.ttl.as_secs() / 2
    }

    /// The `Set-Cookie` value for `value`.
    pub fn set_cookie(&self, value: &str) -> String {
        format!(
            "{}={value}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
            self.cookie,
            self.ttl.as_secs()
        )
    }

    /// This codec's cookie in a request's `Cookie` header values.
    pub fn find<'a>(&self, cookie_headers: impl Iterator<Item = &'a str>) -> Option<&'a str> {
        fields::cookie_value(cookie_headers, &self.cookie)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(secret: &str) -> StickyCodec {
        StickyCodec::new(&config::Sticky {
            cookie: "SID".into(),
            ttl: Duration::from_secs(3600),
            secret: Some(secret.into()),
        })
    }

    #[test]
    fn round_trip() {
        let c = codec("k");
        let id = c.backend_id("pool", "10.0.0.1:80");
        let value = c.encode(&id, 1_000);
        assert!(!value.contains("10.0.0.1"));
        assert_eq!(c.decode(&value, 1_000), Some((id, 4_600)));
        assert_eq!(
            c.set_cookie(&value),
            format!("SID={value}; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax")
        );
    }

    #[test]
    fn ids_differ_per_backend_and_key() {
        let c = codec("k");
        assert_ne!(c.backend_id("p", "a:1"), c.backend_id("p", "b:1"));
        assert_ne!(
            c.backend_id("p", "a:1"),
            codec("other").backend_id("p", "a:1")
        );
        assert_eq!(c.backend_id("p", "a:1"), codec("k").backend_id("p", "a:1"));
    }

    #[test]
    fn tampered_expired_or_foreign_values_are_rejected() {
        let c = codec("k");
        let id = c.backend_id("pool", "a:1");
        let value = c.encode(&id, 1_000);
        assert_eq!(c.decode(&value, 4_600), None, "expired");
        assert_eq!(codec("other").decode(&value, 1_000), None, "other key");
        let mut tampered = value.clone().into_bytes();
        tampered[0] = if tampered[0] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            c.decode(std::str::from_utf8(&tampered).unwrap(), 1_000),
            None
        );
        let later = value.replace(".4600.", ".9999.");
        assert_eq!(c.decode(&later, 1_000), None, "extended expiry");
        for junk in ["", "...", "zz.1.2", &format!("{value}.x"), "é"] {
            assert_eq!(c.decode(junk, 1_000), None, "{junk}");
        }
    }

    #[test]
    fn refresh_after_half_the_ttl() {
        let c = codec("k");
        assert!(!c.wants_refresh(4_600, 1_000));
        assert!(c.wants_refresh(4_600, 2_900));
    }
}
