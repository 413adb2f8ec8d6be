//! `Accept-Encoding` negotiation (RFC 9110 §12.5.3): q-values, `*`, `identity`, exclusions.

use super::Algorithm;

/// One parsed `Accept-Encoding` element.
#[derive(Debug, Clone, PartialEq)]
struct Preference {
    coding: String,
    q: f32,
}

/// Parses `gzip;q=0.8, br, *;q=0` into codings (lower case) with their q-values.
fn parse(value: &str) -> Vec<Preference> {
    elements(value)
        .map(|(coding, q)| Preference { coding, q })
        .collect()
}

/// The elements of an `Accept-Encoding` value as (coding, q): codings by [`coding_name`], an
/// absent q is 1, and an invalid one makes the element count as `q=0`, the safe reading.
pub fn elements(value: &str) -> impl Iterator<Item = (String, f32)> + '_ {
    value.split(',').filter_map(|item| {
        let mut parts = item.split(';');
        let coding = coding_name(parts.next()?);
        if coding.is_empty() {
            return None;
        }
        let mut q = 1.0;
        for param in parts {
            let Some((name, value)) = param.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("q") {
                q = value
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|q| (0.0..=1.0).contains(q))
                    .unwrap_or(0.0);
            }
        }
        Some((coding, q))
    })
}

/// A content coding as compared: trimmed, lower case, `x-gzip` and `x-compress` read as
/// `gzip` and `compress` (RFC 9110 §8.4.1).
pub fn coding_name(raw: &str) -> String {
    let coding = raw.trim().to_ascii_lowercase();
    match coding.as_str() {
        "x-gzip" => "gzip".to_string(),
        "x-compress" => "compress".to_string(),
        _ => coding,
    }
}

/// The q-value the client gives `coding`.
fn q_of(prefs: &[Preference], coding: &str) -> Option<f32> {
    prefs
        .iter()
        .filter(|p| p.coding == coding)
        .map(|p| p.q)
        .reduce(f32::max)
}

/// Whether a client with this `Accept-Encoding` accepts `coding` (its q, or `*`'s, above 0).
pub fn accepts_coding(accept_encoding: &str, coding: &str) -> bool {
    let prefs = parse(accept_encoding);
    q_of(&prefs, coding)
        .or_else(|| q_of(&prefs, "*"))
        .is_some_and(|q| q > 0.0)
}

/// Whether a client with this `Accept-Encoding` accepts `alg`.
pub fn accepts(accept_encoding: &str, alg: Algorithm) -> bool {
    accepts_coding(accept_encoding, alg.name())
}

/// Picks the encoding for a response: the highest q among `enabled` (ties go to the order of
/// `enabled`), unless identity is preferred. `None` means identity. Without an
/// `Accept-Encoding` header nothing is encoded.
pub fn negotiate(accept_encoding: Option<&str>, enabled: &[Algorithm]) -> Option<Algorithm> {
    let prefs = parse(accept_encoding?);
    let star = q_of(&prefs, "*");
    let mut best: Option<(Algorithm, f32)> = None;
    for &alg in enabled {
        let q = q_of(&prefs, alg.name()).or(star).unwrap_or(0.0);
        if q > 0.0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((alg, q));
        }
    }
    let (alg, q) = best?;
    // identity is acceptable unless excluded; an explicit identity q above the best coding's
    // wins.
    let identity = q_of(&prefs, "identity");
    match identity {
        Some(iq) if iq > q => None,
        _ => Some(alg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Algorithm::*;

    const ALL: [Algorithm; 3] = [Brotli, Zstd, Gzip];

    #[test]
    fn negotiation_table() {
        let cases: [(Option<&str>, Option<Algorithm>); 18] = [
            (None, None),
            (Some(""), None),
            (Some("gzip"), Some(Gzip)),
            (Some("gzip, br"), Some(Brotli)),
            (Some("br;q=0.5, gzip;q=0.9"), Some(Gzip)),
            (Some("gzip;q=0, br"), Some(Brotli)),
            (Some("gzip;q=0"), None),
            (Some("*"), Some(Brotli)),
            (Some("*;q=0.1, gzip;q=0.5"), Some(Gzip)),
            (Some("*;q=0"), None),
            (Some("identity;q=0, gzip"), Some(Gzip)),
            (Some("identity, gzip;q=0.5"), None),
            (Some("deflate, compress"), None),
            (Some("GZIP, BR;Q=0.2"), Some(Gzip)),
            (Some("  zstd ;  q=0.9 ,gzip;q=0.8  "), Some(Zstd)),
            (Some("x-gzip"), Some(Gzip)),
            (Some("br;q=abc, gzip;q=0.1"), Some(Gzip)),
            (Some("zstd, br, gzip"), Some(Brotli)),
        ];
        for (header, expected) in cases {
            assert_eq!(negotiate(header, &ALL), expected, "{header:?}");
        }
    }

    #[test]
    fn only_enabled_algorithms_and_their_order() {
        assert_eq!(negotiate(Some("br, gzip"), &[Gzip]), Some(Gzip));
        assert_eq!(negotiate(Some("br"), &[Gzip, Zstd]), None);
        assert_eq!(
            negotiate(Some("br, gzip, zstd"), &[Gzip, Brotli]),
            Some(Gzip)
        );
        assert_eq!(negotiate(Some("br, gzip"), &[]), None);
    }
}
