//! `Accept-Encoding` negotiation (RFC 9110 §12.5.3): q-values, `*`, `identity`, exclusions;
//! and what a client accepts, for the cache's variants and for the codings a stored response
//! may be served in. The one place that reads `Accept-Encoding`.

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

/// Encodings `Accept-Encoding` is reduced to, in a fixed order.
const KNOWN_ENCODINGS: [Algorithm; 3] = [Algorithm::Brotli, Algorithm::Gzip, Algorithm::Zstd];

/// The value `Accept-Encoding` counts as in a cache variant. On a route that compresses with
/// `algorithms` it is the encoding negotiated (so every client that gets `br` shares one
/// variant); otherwise the codings the client accepts ([`normalize_accept_encoding`]).
pub fn variant_value(accept_encoding: Option<&str>, algorithms: Option<&[Algorithm]>) -> String {
    match algorithms {
        Some(algorithms) => negotiate(accept_encoding, algorithms)
            .map_or("identity", Algorithm::name)
            .to_string(),
        None => normalize_accept_encoding(accept_encoding),
    }
}

/// The codings a client accepts: those Switchyard can produce (also through `*`), in a fixed
/// order, then any other coding it names with a q above 0 (`deflate`, `dcb`, …), sorted, as
/// `br,gzip,deflate`; `identity` when none. Clients that differ only in q-values or order
/// share a variant; a client that accepts a coding an origin may answer with (`deflate`) does
/// not share one with a client that does not.
pub fn normalize_accept_encoding(value: Option<&str>) -> String {
    let Some(value) = value else {
        return "identity".into();
    };
    let mut accepted: Vec<String> = KNOWN_ENCODINGS
        .iter()
        .filter(|alg| accepts(value, **alg))
        .map(|alg| alg.name().to_string())
        .collect();
    let mut others: Vec<String> = elements(value)
        .filter(|(coding, q)| *q > 0.0 && !matches!(coding.as_str(), "identity" | "*"))
        .map(|(coding, _)| coding)
        .filter(|coding| !KNOWN_ENCODINGS.iter().any(|alg| alg.name() == coding))
        .collect();
    others.sort();
    others.dedup();
    accepted.extend(others);
    if accepted.is_empty() {
        "identity".into()
    } else {
        accepted.join(",")
    }
}

/// Whether a client with this `Accept-Encoding` can take a response with this
/// `Content-Encoding` (`None`: not encoded). Every coding applied must be accepted by name or
/// through `*`. Without `Accept-Encoding` only an unencoded response is: RFC 9110 §12.5.3
/// would allow any coding, but a cache cannot tell such a client from one that decodes none.
pub fn acceptable(accept_encoding: Option<&str>, content_encoding: Option<&str>) -> bool {
    let Some(content_encoding) = content_encoding else {
        return true;
    };
    content_encoding
        .split(',')
        .map(coding_name)
        .filter(|c| !c.is_empty() && c != "identity")
        .all(|applied| accept_encoding.is_some_and(|accept| accepts_coding(accept, &applied)))
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

    #[test]
    fn accept_encoding_is_reduced_to_known_codings() {
        let n = |v| normalize_accept_encoding(Some(v));
        assert_eq!(n("gzip, deflate, br"), "br,gzip,deflate");
        assert_eq!(n("br;q=1.0, gzip;q=0.8, *;q=0.1"), "br,gzip,zstd");
        assert_eq!(n("deflate"), "deflate", "deflate is not identity");
        assert_eq!(n("dcz, dcb;q=0.5, deflate;q=0"), "dcb,dcz");
        assert_eq!(n("gzip;q=0, br"), "br");
        assert_eq!(n("GZIP"), "gzip");
        assert_eq!(n("*"), "br,gzip,zstd");
        assert_eq!(n("*;q=0, gzip"), "gzip");
        assert_eq!(n("identity;q=0, x-gzip"), "gzip");
        assert_eq!(n("x-compress"), "compress");
        assert_eq!(n("br;q=abc"), "identity", "an invalid q-value is q=0");
        assert_eq!(normalize_accept_encoding(None), "identity");
        assert_eq!(n("gzip, deflate, br"), n("br;q=0.9, deflate, gzip;q=0.5"));
        assert_ne!(n("gzip, deflate, br"), n("br, gzip"));
    }

    #[test]
    fn stored_codings_must_be_acceptable() {
        let ok = |ae: Option<&str>, ce: Option<&str>| acceptable(ae, ce);
        assert!(ok(None, None));
        assert!(ok(Some("gzip"), None));
        assert!(ok(None, Some("identity")));
        assert!(
            !ok(None, Some("deflate")),
            "no Accept-Encoding: identity only"
        );
        assert!(!ok(Some("gzip, br"), Some("deflate")));
        assert!(ok(Some("gzip, deflate"), Some("deflate")));
        assert!(ok(Some("DEFLATE"), Some("Deflate")));
        assert!(!ok(Some("deflate;q=0, *"), Some("deflate")));
        assert!(ok(Some("*"), Some("dcz")));
        assert!(ok(Some("x-gzip"), Some("gzip")));
        assert!(ok(Some("gzip"), Some("x-gzip")));
        assert!(
            !ok(Some("gzip"), Some("gzip, br")),
            "every applied coding counts"
        );
        assert!(!ok(Some(""), Some("gzip")));
    }
}
