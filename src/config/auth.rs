//! A route's `basic_auth`: the realm and the users file (htpasswd lines `user:hash`), read and
//! checked at load. Only bcrypt and argon2 hashes are accepted; the rest are load errors that
//! name the file and line.

use std::collections::BTreeMap;
use std::str::FromStr;

use super::file::FileBasicAuth;
use super::key::{Invalid, Key};

/// The largest users file read.
const MAX_USERS_FILE: u64 = 1 << 20;
/// The costliest bcrypt hash accepted (each step doubles the work; 12 takes about 0.25 s).
const MAX_BCRYPT_COST: u32 = 14;
/// The most memory an argon2 hash may ask for per verification, in KiB (64 MiB).
const MAX_ARGON2_MEMORY: u32 = 64 << 10;
/// The most passes an argon2 hash may ask for.
const MAX_ARGON2_PASSES: u32 = 10;

/// A stored password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$2y$`, `$2b$` or `$2a$`.
    Bcrypt(String),
    /// `$argon2id$`, `$argon2i$` or `$argon2d$` (PHC string).
    Argon2(String),
}

/// `basic_auth` of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub realm: String,
    /// The users file, as written (for messages).
    pub users_file: String,
    pub users: BTreeMap<String, PasswordHash>,
    /// The `WWW-Authenticate` value of a 401: `Basic realm="…", charset="UTF-8"`.
    pub challenge: String,
}

pub(super) fn basic_auth(key: &Key, raw: FileBasicAuth) -> Result<BasicAuth, Invalid> {
    let realm = raw.realm.trim();
    if realm.is_empty()
        || realm.len() > 100
        || !realm
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        return Err(key.field("realm").invalid(format!(
            "`{realm}` must be 1 to 100 printable ASCII characters without \" or \\"
        )));
    }
    let file_key = key.field("users_file");
    let path = raw.users_file.as_str();
    let text = read_bounded(path).map_err(|e| file_key.invalid(e))?;
    let users = users(path, &text).map_err(|e| file_key.invalid(e))?;
    Ok(BasicAuth {
        challenge: format!("Basic realm=\"{realm}\", charset=\"UTF-8\""),
        realm: realm.to_string(),
        users_file: path.to_string(),
        users,
    })
}

fn read_bounded(path: &str) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    if meta.len() > MAX_USERS_FILE {
        return Err(format!(
            "{path} is {} bytes; the limit is {MAX_USERS_FILE}",
            meta.len()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// The users of an htpasswd text: `user:hash` lines; blank lines and `#` comments skipped.
pub fn users(path: &str, text: &str) -> Result<BTreeMap<String, PasswordHash>, String> {
    let mut users = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |reason: String| format!("{path} line {}: {reason}", i + 1);
        let Some((user, hash)) = line.split_once(':') else {
            return Err(at("not a `user:hash` line".into()));
        };
        if user.is_empty() || user.chars().any(char::is_control) {
            return Err(at("the user name is empty or has control characters".into()));
        }
        let hash = password_hash(hash).map_err(|reason| at(format!("user `{user}`: {reason}")))?;
        if users.insert(user.to_string(), hash).is_some() {
            return Err(at(format!("user `{user}` is listed twice")));
        }
    }
    if users.is_empty() {
        return Err(format!("{path} lists no users"));
    }
    Ok(users)
}

fn password_hash(hash: &str) -> Result<PasswordHash, String> {
    const USE: &str = "use bcrypt (htpasswd -B) or argon2id";
    if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
        let parts = bcrypt::HashParts::from_str(hash)
            .map_err(|e| format!("not a valid bcrypt hash: {e}"))?;
        if parts.get_cost() > MAX_BCRYPT_COST {
            return Err(format!(
                "bcrypt cost {} is above {MAX_BCRYPT_COST}: each login would take seconds",
                parts.get_cost()
            ));
        }
        return Ok(PasswordHash::Bcrypt(hash.to_string()));
    }
    if ["$argon2id$", "$argon2i$", "$argon2d$"]
        .iter()
        .any(|p| hash.starts_with(p))
    {
        let parsed =
            argon2::PasswordHash::new(hash).map_err(|e| format!("not a valid argon2 hash: {e}"))?;
        let params = argon2::Params::try_from(&parsed)
            .map_err(|e| format!("not a valid argon2 hash: {e}"))?;
        if params.m_cost() > MAX_ARGON2_MEMORY || params.t_cost() > MAX_ARGON2_PASSES {
            return Err(format!(
                "argon2 asks for m={} KiB, t={}; the limits are m={MAX_ARGON2_MEMORY}, t={MAX_ARGON2_PASSES}",
                params.m_cost(),
                params.t_cost()
            ));
        }
        if parsed.salt.is_none() || parsed.hash.is_none() {
            return Err("the argon2 hash has no salt or no output".into());
        }
        return Ok(PasswordHash::Argon2(hash.to_string()));
    }
    let kind = if hash.starts_with("$apr1$") {
        "an MD5-apr1 hash"
    } else if hash.starts_with("{SHA}") {
        "a SHA-1 hash"
    } else if hash.starts_with("$1$") || hash.starts_with("$5$") || hash.starts_with("$6$") {
        "a crypt(3) hash"
    } else if hash.starts_with('$') {
        "an unknown hash"
    } else {
        "plaintext or a DES crypt hash"
    };
    Err(format!("{kind} is not accepted; {USE}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordHasher;

    fn bcrypt_hash() -> String {
        bcrypt::hash("pw", 4).unwrap()
    }

    #[test]
    fn weak_hashes_name_the_file_and_line() {
        let good = bcrypt_hash();
        let cases = [
            ("bob:secret", "plaintext"),
            ("bob:$apr1$abc$def", "MD5-apr1"),
            ("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1"),
            ("bob:$6$salt$hash", "crypt(3)"),
            ("bob", "not a `user:hash` line"),
        ];
        for (line, reason) in cases {
            let text = format!("# users\n\nalice:{good}\n{line}\n");
            let err = users("/etc/htpasswd", &text).unwrap_err();
            assert!(err.starts_with("/etc/htpasswd line 4: "), "{err}");
            assert!(err.contains(reason), "{line}: {err}");
        }
        let twice = format!("alice:{good}\nalice:{good}\n");
        assert!(users("f", &twice).unwrap_err().contains("listed twice"));
        assert!(users("f", "# none\n").unwrap_err().contains("no users"));
    }

    #[test]
    fn bcrypt_and_argon2_are_accepted_within_bounds() {
        let bcrypt = bcrypt_hash();
        let argon = argon2::Argon2::default()
            .hash_password(b"pw")
            .unwrap()
            .to_string();
        let list = users("f", &format!("a:{bcrypt}\nb:{argon}\n")).unwrap();
        assert!(matches!(list["a"], PasswordHash::Bcrypt(_)));
        assert!(matches!(list["b"], PasswordHash::Argon2(_)));
        let costly = bcrypt.replacen("$04$", "$20$", 1);
        assert!(users("f", &format!("a:{costly}\n"))
            .unwrap_err()
            .contains("cost 20"));
        let greedy = argon.replacen("m=19456", "m=4194304", 1);
        assert!(users("f", &format!("a:{greedy}\n"))
            .unwrap_err()
            .contains("limits"));
    }
}
