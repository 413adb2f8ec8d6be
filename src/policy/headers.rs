//! Header rules: `remove`, then `set`, then `add`, with `$client_ip`, `$host`, `$request_id`
//! and `$scheme` expanded per request. The global rules apply first, then the route's.

use std::net::IpAddr;

use http::HeaderValue;
use pingora_error::Result;

use crate::config::{HeaderRules, Part, Template};
use crate::fields::Header;

/// The values variables expand to.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub client_ip: Option<IpAddr>,
    pub host: &'a str,
    /// The request's id (kept from a trusted peer, otherwise made by the proxy).
    pub request_id: &'a str,
    pub scheme: &'a str,
}

/// Expands `template`; `None` if the result is not a valid field value.
pub fn expand(template: &Template, vars: &Vars<'_>) -> Option<HeaderValue> {
    if let [Part::Text(text)] = template.0.as_slice() {
        return HeaderValue::from_str(text).ok();
    }
    let mut out = String::new();
    for part in &template.0 {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::ClientIp => {
                if let Some(ip) = vars.client_ip {
                    use std::fmt::Write;
                    let _ = write!(out, "{ip}");
                }
            }
            Part::Host => out.push_str(vars.host),
            Part::RequestId => out.push_str(vars.request_id),
            Part::Scheme => out.push_str(vars.scheme),
        }
    }
    HeaderValue::from_str(&out).ok()
}

/// Applies `rules` to `fields`. A value that expands to an invalid field (a host with a control
/// character, say) is skipped.
pub fn apply(rules: &HeaderRules, fields: &mut impl Header, vars: &Vars<'_>) -> Result<()> {
    for name in &rules.remove {
        fields.remove(name);
    }
    for (name, template) in &rules.set {
        if let Some(value) = expand(template, vars) {
            fields.set(name.clone(), value)?;
        }
    }
    for (name, template) in &rules.add {
        if let Some(value) = expand(template, vars) {
            fields.add(name.clone(), value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;
    use pingora_http::RequestHeader;

    #[test]
    fn rules_remove_set_add_with_variables() {
        let rules = HeaderRules {
            set: vec![(
                HeaderName::from_static("x-client"),
                Template(vec![
                    Part::Text("ip=".into()),
                    Part::ClientIp,
                    Part::Text(" via ".into()),
                    Part::Scheme,
                    Part::Text("://".into()),
                    Part::Host,
                ]),
            )],
            add: vec![(
                HeaderName::from_static("x-tag"),
                Template(vec![Part::Text("b".into())]),
            )],
            remove: vec![HeaderName::from_static("x-secret")],
        };
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-secret", "s").unwrap();
        req.insert_header("x-tag", "a").unwrap();
        let vars = Vars {
            client_ip: Some("10.1.2.3".parse().unwrap()),
            host: "example.com",
            request_id: "",
            scheme: "https",
        };
        apply(&rules, &mut req, &vars).unwrap();
        assert!(req.headers.get("x-secret").is_none());
        assert_eq!(
            req.headers["x-client"],
            "ip=10.1.2.3 via https://example.com"
        );
        let tags: Vec<_> = req.headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
    }
}
