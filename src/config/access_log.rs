//! `access_log`: where the per-request log goes, its format (json, combined, or a template of
//! `$variables`), which fields a JSON line has, sampling and query masking.

use std::path::PathBuf;

use super::file::FileAccessLog;
use super::key::{Invalid, Key};

/// One value of a log line. The JSON name of each is stable (see [`Field::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Time,
    ClientIp,
    Method,
    Host,
    Path,
    Query,
    Status,
    BytesSent,
    DurationMs,
    Upstream,
    UpstreamStatus,
    UpstreamMs,
    Cache,
    Encoding,
    Route,
    RequestId,
    TraceId,
    Protocol,
    TlsVersion,
    UserAgent,
    Referer,
    Error,
}

impl Field {
    pub const ALL: [Field; 22] = [
        Field::Time,
        Field::ClientIp,
        Field::Method,
        Field::Host,
        Field::Path,
        Field::Query,
        Field::Status,
        Field::BytesSent,
        Field::DurationMs,
        Field::Upstream,
        Field::UpstreamStatus,
        Field::UpstreamMs,
        Field::Cache,
        Field::Encoding,
        Field::Route,
        Field::RequestId,
        Field::TraceId,
        Field::Protocol,
        Field::TlsVersion,
        Field::UserAgent,
        Field::Referer,
        Field::Error,
    ];

    /// The JSON key and template variable name.
    pub fn name(self) -> &'static str {
        match self {
            Field::Time => "time",
            Field::ClientIp => "client_ip",
            Field::Method => "method",
            Field::Host => "host",
            Field::Path => "path",
            Field::Query => "query",
            Field::Status => "status",
            Field::BytesSent => "bytes_sent",
            Field::DurationMs => "duration_ms",
            Field::Upstream => "upstream",
            Field::UpstreamStatus => "upstream_status",
            Field::UpstreamMs => "upstream_ms",
            Field::Cache => "cache",
            Field::Encoding => "encoding",
            Field::Route => "route",
            Field::RequestId => "request_id",
            Field::TraceId => "trace_id",
            Field::Protocol => "protocol",
            Field::TlsVersion => "tls_version",
            Field::UserAgent => "user_agent",
            Field::Referer => "referer",
            Field::Error => "error",
        }
    }

    fn parse(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// A template variable: a field, or one of nginx's names for the `combined` format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Field(Field),
    /// `$remote_addr`: the client address.
    RemoteAddr,
    /// `$remote_user`: always `-` (no user authentication here).
    RemoteUser,
    /// `$time_local`: `10/Oct/2000:13:55:36 +0000`.
    TimeLocal,
    /// `$request`: `GET /path?query HTTP/1.1`.
    Request,
    /// `$body_bytes_sent`.
    BodyBytesSent,
    /// `$request_time`: seconds with millisecond resolution.
    RequestTime,
}

impl Var {
    fn parse(name: &str) -> Option<Var> {
        Some(match name {
            "remote_addr" => Var::RemoteAddr,
            "remote_user" => Var::RemoteUser,
            "time_local" => Var::TimeLocal,
            "request" => Var::Request,
            "body_bytes_sent" => Var::BodyBytesSent,
            "request_time" => Var::RequestTime,
            "http_referer" => Var::Field(Field::Referer),
            "http_user_agent" => Var::Field(Field::UserAgent),
            "upstream_addr" => Var::Field(Field::Upstream),
            other => Var::Field(Field::parse(other)?),
        })
    }
}

/// A piece of a template: literal text or a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Var(Var),
}

/// nginx's `combined` format.
pub const COMBINED: &str = "$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\"";

#[derive(Debug, Clone, PartialEq)]
pub enum LogFormat {
    /// One JSON object per line with the chosen fields.
    Json(Vec<Field>),
    /// A template; `combined` is nginx's.
    Template(Vec<Piece>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    pub enabled: bool,
    pub target: LogTarget,
    pub format: LogFormat,
    /// The fraction of 2xx/3xx answers logged (4xx, 5xx and 499 always are).
    pub sample: f64,
    /// Query parameters whose values are replaced by `***`.
    pub mask_query: Vec<String>,
    /// Leave the query string out altogether.
    pub drop_query: bool,
}

impl Default for AccessLog {
    fn default() -> AccessLog {
        AccessLog {
            enabled: false,
            target: LogTarget::Stdout,
            format: LogFormat::Json(Field::ALL.to_vec()),
            sample: 1.0,
            mask_query: Vec::new(),
            drop_query: false,
        }
    }
}

impl TryFrom<Option<FileAccessLog>> for AccessLog {
    type Error = Invalid;

    fn try_from(raw: Option<FileAccessLog>) -> Result<AccessLog, Invalid> {
        let Some(raw) = raw else {
            return Ok(AccessLog::default());
        };
        let key = Key::root("access_log");
        let fields = match raw.fields {
            None => Field::ALL.to_vec(),
            Some(names) => names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    Field::parse(name).ok_or_else(|| {
                        key.field("fields").index(i).invalid(format!(
                            "unknown field `{name}`; known: {}",
                            Field::ALL.map(Field::name).join(", ")
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let format = match raw.format.as_deref().unwrap_or("json") {
            "json" => LogFormat::Json(fields),
            "combined" => LogFormat::Template(template(&key.field("format"), COMBINED)?),
            other => LogFormat::Template(template(&key.field("format"), other)?),
        };
        let target = match raw.path.as_deref().unwrap_or("stdout") {
            "stdout" => LogTarget::Stdout,
            "stderr" => LogTarget::Stderr,
            "" => {
                return Err(key
                    .field("path")
                    .invalid("give stdout, stderr or a file path"))
            }
            path => LogTarget::File(PathBuf::from(path)),
        };
        let enabled = raw.enabled.unwrap_or(true);
        if let (true, LogTarget::File(path)) = (enabled, &target) {
            // Opened now so that a path that cannot be written is a load error (a reload keeps
            // the running log).
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    key.field("path")
                        .invalid(format!("cannot open {}: {e}", path.display()))
                })?;
        }
        let sample = raw.sample.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample) {
            return Err(key
                .field("sample")
                .invalid("must be a fraction from 0 to 1"));
        }
        Ok(AccessLog {
            enabled,
            target,
            format,
            sample,
            mask_query: raw.mask_query.unwrap_or_default(),
            drop_query: raw.drop_query.unwrap_or(false),
        })
    }
}

/// Splits a template into text and `$name` variables (names are `[a-z0-9_]`; `$$` is a `$`).
fn template(key: &Key, text: &str) -> Result<Vec<Piece>, Invalid> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        literal.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            literal.push('$');
            rest = after;
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        let var = Var::parse(name).ok_or_else(|| {
            key.invalid(format!(
                "unknown variable `${name}`; use json, combined, or a template of $variables like $client_ip $status $request_id"
            ))
        })?;
        if !literal.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut literal)));
        }
        pieces.push(Piece::Var(var));
        rest = &rest[end..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_text_and_variables() {
        let key = Key::root("access_log").field("format");
        let pieces = template(&key, "$client_ip $$ [$status]").unwrap();
        assert_eq!(
            pieces,
            vec![
                Piece::Var(Var::Field(Field::ClientIp)),
                Piece::Text(" $ [".into()),
                Piece::Var(Var::Field(Field::Status)),
                Piece::Text("]".into()),
            ]
        );
        let err = template(&key, "$nope").unwrap_err();
        assert_eq!(err.path, "access_log.format");
        assert!(template(&key, COMBINED).is_ok());
    }
}
