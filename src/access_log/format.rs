//! Access log lines: JSON objects with stable field names, or templates of `$variables`
//! (nginx's `combined` among them, byte for byte: `-` for an empty value, `"`, `\` and
//! control bytes escaped as `\xHH`).

use std::fmt::Write;

use crate::config::{AccessLog as Settings, LogField as Field, LogFormat, LogPiece, LogVar};

use super::Entry;

/// Appends the line for `entry` (without its newline) to `out`.
pub fn line(settings: &Settings, entry: &Entry, out: &mut String) {
    let query = query(settings, entry.query.as_deref());
    match &settings.format {
        LogFormat::Json(fields) => {
            out.push('{');
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                out.push_str(field.name());
                out.push_str("\":");
                json_value(*field, entry, query.as_deref(), out);
            }
            out.push('}');
        }
        LogFormat::Template(pieces) => {
            for piece in pieces {
                match piece {
                    LogPiece::Text(text) => out.push_str(text),
                    LogPiece::Var(var) => template_value(*var, entry, query.as_deref(), out),
                }
            }
        }
    }
}

/// The query as logged: dropped, or with the values of `mask_query` parameters as `***`.
fn query(settings: &Settings, query: Option<&str>) -> Option<String> {
    let query = query.filter(|q| !q.is_empty() && !settings.drop_query)?;
    if settings.mask_query.is_empty() {
        return Some(query.to_string());
    }
    let masked: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if settings.mask_query.iter().any(|m| m == name) => {
                format!("{name}=***")
            }
            _ => pair.to_string(),
        })
        .collect();
    Some(masked.join("&"))
}

fn rfc3339(entry: &Entry) -> String {
    humantime::format_rfc3339_millis(entry.time.unwrap_or(std::time::UNIX_EPOCH)).to_string()
}

fn json_value(field: Field, entry: &Entry, query: Option<&str>, out: &mut String) {
    let text = |value: Option<&str>, out: &mut String| match value {
        Some(v) => json_string(v, out),
        None => out.push_str("null"),
    };
    match field {
        // Neither needs an escape: written straight into the line.
        Field::Time => {
            let time = entry.time.unwrap_or(std::time::UNIX_EPOCH);
            let _ = write!(out, "\"{}\"", humantime::format_rfc3339_millis(time));
        }
        Field::ClientIp => match entry.client_ip {
            Some(ip) => {
                let _ = write!(out, "\"{ip}\"");
            }
            None => out.push_str("null"),
        },
        Field::Method => json_string(&entry.method, out),
        Field::Host => json_string(&entry.host, out),
        Field::Path => json_string(&entry.path, out),
        Field::Query => text(query, out),
        Field::Status => out.push_str(itoa::Buffer::new().format(entry.status)),
        Field::BytesSent => out.push_str(itoa::Buffer::new().format(entry.bytes_sent)),
        Field::DurationMs => {
            let _ = write!(out, "{:.3}", entry.duration.as_secs_f64() * 1000.0);
        }
        Field::Upstream => text(entry.upstream.as_deref(), out),
        Field::UpstreamStatus => match entry.upstream_status {
            Some(s) => out.push_str(itoa::Buffer::new().format(s)),
            None => out.push_str("null"),
        },
        Field::UpstreamMs => match entry.upstream_ms {
            Some(ms) => {
                let _ = write!(out, "{ms:.3}");
            }
            None => out.push_str("null"),
        },
        Field::Cache => text(entry.cache, out),
        Field::Encoding => text(entry.encoding.as_deref(), out),
        Field::Route => text(entry.route.as_deref(), out),
        Field::RequestId => text(entry.request_id.as_deref(), out),
        Field::TraceId => text(entry.trace_id.as_deref(), out),
        Field::Protocol => json_string(entry.protocol, out),
        Field::TlsVersion => text(entry.tls_version.as_deref(), out),
        Field::UserAgent => text(entry.user_agent.as_deref(), out),
        Field::Referer => text(entry.referer.as_deref(), out),
        Field::Error => text(entry.error.as_deref(), out),
    }
}

/// A JSON string literal (RFC 8259 escapes). Runs of bytes that need no escape are copied
/// whole: a log line is mostly such runs.
fn json_string(value: &str, out: &mut String) {
    out.push('"');
    let mut rest = value;
    while let Some(at) = rest
        .bytes()
        .position(|b| b == b'"' || b == b'\\' || b < 0x20)
    {
        out.push_str(&rest[..at]);
        match rest.as_bytes()[at] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b => {
                let _ = write!(out, "\\u{:04x}", b);
            }
        }
        // The byte is ASCII, so the next one starts a character.
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

/// A template value as nginx writes one: `-` when empty; `"`, `\` and bytes outside
/// printable ASCII as `\xHH`.
fn escaped(value: Option<&str>, out: &mut String) {
    match value.filter(|v| !v.is_empty()) {
        None => out.push('-'),
        Some(v) => {
            for b in v.bytes() {
                if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
                    let _ = write!(out, "\\x{b:02X}");
                } else {
                    out.push(b as char);
                }
            }
        }
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `04/Dec/2026:05:16:01 +0000` (nginx's `$time_local`, in UTC).
fn time_local(entry: &Entry, out: &mut String) {
    let iso = rfc3339(entry); // 2026-12-04T05:16:01.123Z
    let month = iso
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .unwrap_or(&"Jan");
    let (year, day, clock) = (
        iso.get(0..4).unwrap_or("1970"),
        iso.get(8..10).unwrap_or("01"),
        iso.get(11..19).unwrap_or("00:00:00"),
    );
    let _ = write!(out, "{day}/{month}/{year}:{clock} +0000");
}

fn template_value(var: LogVar, entry: &Entry, query: Option<&str>, out: &mut String) {
    match var {
        LogVar::RemoteAddr => escaped(entry.client_ip.map(|ip| ip.to_string()).as_deref(), out),
        LogVar::RemoteUser => out.push('-'),
        LogVar::TimeLocal => time_local(entry, out),
        LogVar::Request => {
            let target = match query {
                Some(q) => format!("{}?{q}", entry.path),
                None => entry.path.clone(),
            };
            escaped(
                Some(&format!("{} {target} {}", entry.method, entry.protocol)),
                out,
            );
        }
        LogVar::BodyBytesSent => {
            let _ = write!(out, "{}", entry.bytes_sent);
        }
        LogVar::RequestTime => {
            let _ = write!(out, "{:.3}", entry.duration.as_secs_f64());
        }
        LogVar::Field(field) => match field {
            Field::Status => {
                let _ = write!(out, "{}", entry.status);
            }
            Field::Time => out.push_str(&rfc3339(entry)),
            Field::Query => escaped(query, out),
            Field::BytesSent | Field::DurationMs | Field::UpstreamStatus | Field::UpstreamMs => {
                // Numbers: the JSON rendering, `-` for none.
                let mut number = String::new();
                json_value(field, entry, query, &mut number);
                out.push_str(if number == "null" { "-" } else { &number });
            }
            _ => {
                let mut text = String::new();
                json_value(field, entry, query, &mut text);
                let value: Option<String> = serde_json::from_str(&text).ok().flatten();
                escaped(value.as_deref(), out);
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::time::{Duration, UNIX_EPOCH};

    fn settings(extra: &str) -> Settings {
        let text = format!(
            "access_log:\n  enabled: true\n{extra}upstreams:\n  a:\n    backends: [{{address: 127.0.0.1:1}}]\nroutes:\n  - upstream: a\n"
        );
        Config::parse(&text, "t").unwrap().access_log
    }

    fn entry() -> Entry {
        Entry {
            time: Some(UNIX_EPOCH + Duration::from_secs(971_186_136)),
            client_ip: "127.0.0.1".parse().ok(),
            method: "GET".into(),
            host: "example.com".into(),
            path: "/a\"b".into(),
            query: Some("x=1&token=secret".into()),
            protocol: "HTTP/1.1",
            status: 200,
            bytes_sent: 2326,
            duration: Duration::from_millis(12),
            user_agent: Some("curl/8 \u{e9}".into()),
            ..Entry::default()
        }
    }

    #[test]
    fn combined_is_nginx_combined() {
        let s = settings("  format: combined\n  mask_query: [token]\n");
        let mut out = String::new();
        line(&s, &entry(), &mut out);
        assert_eq!(
            out,
            "127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET /a\\x22b?x=1&token=*** HTTP/1.1\" 200 2326 \"-\" \"curl/8 \\xC3\\xA9\""
        );
    }

    #[test]
    fn json_lines_parse_with_stable_names() {
        let s =
            settings("  fields: [status, query, user_agent, upstream, path]\n  drop_query: true\n");
        let mut out = String::new();
        line(&s, &entry(), &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["query"], serde_json::Value::Null);
        assert_eq!(v["user_agent"], "curl/8 \u{e9}");
        assert_eq!(v["path"], "/a\"b");
        assert!(v["upstream"].is_null());
    }
}
