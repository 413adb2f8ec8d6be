//! `basic_auth`: reads the client's `Authorization: Basic` credentials, verifies them against
//! the route's users (bcrypt or argon2, off the request threads), and remembers a successful
//! verification for [`REMEMBER`] so that a logged-in client does not pay the hash per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::{BasicAuth, PasswordHash};

/// How long a verified user and password are taken without hashing again.
pub const REMEMBER: Duration = Duration::from_secs(300);
/// The most verifications remembered at once (32-byte key and an instant each: under 1 MiB).
pub const REMEMBERED: usize = 10_000;

/// Successful verifications of one config version: SHA-256 of (route, user, password) → when
/// the entry expires. A reload starts a new, empty one, so a changed users file counts at once.
#[derive(Debug, Default)]
pub struct Verified {
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Verified {
    fn key(route: usize, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((route as u64).to_be_bytes());
        h.update((user.len() as u64).to_be_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    fn remembers(&self, key: &[u8; 32], now: Instant) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).is_some_and(|expires| *expires > now)
    }

    /// Remembers `key`; when full, expired entries go first, and if none had expired all go.
    fn remember(&self, key: [u8; 32], now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= REMEMBERED && !entries.contains_key(&key) {
            entries.retain(|_, expires| *expires > now);
            if entries.len() >= REMEMBERED {
                entries.clear();
            }
        }
        entries.insert(key, now + REMEMBER);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The user and password of an `Authorization: Basic` field (RFC 7617), if well formed.
pub fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Whether `password` matches `hash` (slow on purpose: call it off the request threads).
pub fn verify(hash: &PasswordHash, password: &str) -> bool {
    match hash {
        PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        PasswordHash::Argon2(h) => {
            use argon2::PasswordVerifier;
            argon2::PasswordHash::new(h).is_ok_and(|parsed| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        }
    }
}

/// Whether the request's credentials name a user of `auth` with the right password. `route`
/// is the route's index in this config version.
pub async fn admits(
    auth: &BasicAuth,
    verified: &Verified,
    route: usize,
    headers: &HeaderMap,
) -> bool {
    let Some((user, password)) = credentials(headers) else {
        return false;
    };
    // An unknown user costs a verification against another user's hash, like a wrong
    // password, so the time of a refusal does not tell which user names exist.
    let (hash, known) = match auth.users.get(&user) {
        Some(hash) => (hash, true),
        None => match auth.users.values().next() {
            Some(other) => (other, false),
            None => return false,
        },
    };
    let key = Verified::key(route, &user, &password);
    if known && verified.remembers(&key, Instant::now()) {
        return true;
    }
    let hash = hash.clone();
    let verified_hash = tokio::task::spawn_blocking(move || verify(&hash, &password))
        .await
        .unwrap_or(false);
    let ok = known && verified_hash;
    if ok {
        verified.remember(key, Instant::now());
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(text: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(text);
        h.insert("authorization", format!("Basic {token}").parse().unwrap());
        h
    }

    #[test]
    fn reads_basic_credentials() {
        assert_eq!(
            credentials(&basic("alice:pa:ss")),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(credentials(&basic("nocolon")), None);
        let mut bearer = HeaderMap::new();
        bearer.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(credentials(&bearer), None);
    }

    #[test]
    fn remembered_verifications_expire_and_stay_bounded() {
        let v = Verified::default();
        let now = Instant::now();
        let key = Verified::key(0, "a", "b");
        assert_ne!(key, Verified::key(1, "a", "b"));
        assert_ne!(Verified::key(0, "ab", ""), Verified::key(0, "a", "b"));
        v.remember(key, now);
        assert!(v.remembers(&key, now));
        assert!(!v.remembers(&key, now + REMEMBER));
        for i in 0..REMEMBERED + 5 {
            v.remember(Verified::key(0, "u", &i.to_string()), now);
        }
        assert!(v.len() <= REMEMBERED);
    }

    #[tokio::test]
    async fn an_unknown_user_is_refused_even_with_another_users_password() {
        let auth = BasicAuth {
            realm: "r".into(),
            users_file: "users".into(),
            users: [(
                "alice".to_string(),
                PasswordHash::Bcrypt(bcrypt::hash("s3cret", 4).unwrap()),
            )]
            .into(),
            challenge: String::new(),
        };
        let verified = Verified::default();
        assert!(admits(&auth, &verified, 0, &basic("alice:s3cret")).await);
        // Checked against alice's hash so that it costs the same, but never admitted.
        assert!(!admits(&auth, &verified, 0, &basic("mallory:s3cret")).await);
        assert!(!admits(&auth, &verified, 0, &basic("alice:wrong")).await);
        assert!(admits(&auth, &verified, 0, &basic("alice:s3cret")).await);
    }

    #[test]
    fn verifies_bcrypt() {
        let hash = PasswordHash::Bcrypt(bcrypt::hash("s3cret", 4).unwrap());
        assert!(verify(&hash, "s3cret"));
        assert!(!verify(&hash, "S3cret"));
    }
}
