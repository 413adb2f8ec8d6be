//! Retry policy: which failures may be tried again on another backend.

use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::RequestHeader;

use crate::config::RetryPolicy;

/// What went wrong with one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made; the request was not sent.
    Connect { timed_out: bool },
    /// The upstream took longer than `read_timeout` after the request was sent.
    Timeout,
    /// The upstream answered with a status listed in `retry_on`.
    Status(u16),
    /// The backend closed or reset the connection before any byte of a response arrived (the
    /// request may have reached it, so only a resendable request goes again).
    Dropped,
    /// Anything else after connecting (malformed response, a failure mid-response).
    Other,
}

pub fn classify_connect(e: &Error) -> Failure {
    Failure::Connect {
        timed_out: matches!(e.etype(), ErrorType::ConnectTimedout),
    }
}

/// What an error after connecting was; `answered` says a response header already arrived on
/// this attempt.
pub fn classify(e: &Error, answered: bool) -> Failure {
    match e.etype() {
        ErrorType::HTTPStatus(code) => Failure::Status(*code),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Failure::Timeout,
        ErrorType::ConnectTimedout => Failure::Connect { timed_out: true },
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            if !answered && e.esource() == &ErrorSource::Upstream =>
        {
            Failure::Dropped
        }
        _ => Failure::Other,
    }
}

/// Whether the request may be sent again: an idempotent method, or no body.
pub fn safe_to_resend(req: &RequestHeader) -> bool {
    let idempotent = matches!(
        req.method.as_str(),
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    );
    idempotent || !has_body(req)
}

fn has_body(req: &RequestHeader) -> bool {
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return true;
    }
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// Whether `failure` on attempt number `attempts` (1 = the first) is retried under `policy`.
/// `resendable` says the request may be sent again (see [`safe_to_resend`]).
pub fn allows(policy: &RetryPolicy, failure: Failure, attempts: usize, resendable: bool) -> bool {
    if attempts > policy.retries as usize {
        return false;
    }
    match failure {
        Failure::Connect { timed_out } => policy.connect_failure || (timed_out && policy.timeout),
        Failure::Timeout => policy.timeout && resendable,
        Failure::Status(code) => policy.statuses.contains(&code) && resendable,
        // nginx's `proxy_next_upstream error`: not gated by `retry_on`.
        Failure::Dropped => resendable,
        Failure::Other => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            retries: 2,
            connect_failure: true,
            timeout: true,
            statuses: vec![502, 503],
        }
    }

    #[test]
    fn attempts_are_bounded() {
        let p = policy();
        let f = Failure::Connect { timed_out: false };
        assert!(allows(&p, f, 1, true));
        assert!(allows(&p, f, 2, true));
        assert!(!allows(&p, f, 3, true));
    }

    #[test]
    fn connect_failures_retry_even_when_not_resendable() {
        assert!(allows(
            &policy(),
            Failure::Connect { timed_out: false },
            1,
            false
        ));
        let only_timeout = RetryPolicy {
            connect_failure: false,
            ..policy()
        };
        assert!(!allows(
            &only_timeout,
            Failure::Connect { timed_out: false },
            1,
            true
        ));
        assert!(allows(
            &only_timeout,
            Failure::Connect { timed_out: true },
            1,
            true
        ));
    }

    #[test]
    fn statuses_and_timeouts_need_a_resendable_request() {
        let p = policy();
        assert!(allows(&p, Failure::Status(502), 1, true));
        assert!(!allows(&p, Failure::Status(502), 1, false));
        assert!(!allows(&p, Failure::Status(504), 1, true));
        assert!(allows(&p, Failure::Timeout, 1, true));
        assert!(!allows(&p, Failure::Timeout, 1, false));
        assert!(!allows(&p, Failure::Other, 1, true));
        assert!(!allows(&RetryPolicy::default(), Failure::Timeout, 1, true));
    }

    #[test]
    fn dropped_connections_retry_resendable_requests_within_retries() {
        let only_status = RetryPolicy {
            connect_failure: false,
            timeout: false,
            ..policy()
        };
        assert!(allows(&only_status, Failure::Dropped, 1, true));
        assert!(!allows(&only_status, Failure::Dropped, 1, false));
        assert!(!allows(&only_status, Failure::Dropped, 3, true));
    }

    #[test]
    fn only_upstream_closes_before_a_response_count_as_dropped() {
        let closed = Error::new_up(ErrorType::ConnectionClosed);
        assert_eq!(classify(&closed, false), Failure::Dropped);
        assert_eq!(classify(&closed, true), Failure::Other);
        let reset = Error::new_up(ErrorType::ReadError);
        assert_eq!(classify(&reset, false), Failure::Dropped);
        let client_gone = Error::new_down(ErrorType::ReadError);
        assert_eq!(classify(&client_gone, false), Failure::Other);
        let garbled = Error::new_up(ErrorType::InvalidHTTPHeader);
        assert_eq!(classify(&garbled, false), Failure::Other);
    }

    #[test]
    fn resendable_requests() {
        let get = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(safe_to_resend(&get));
        let mut post = RequestHeader::build("POST", b"/", None).unwrap();
        assert!(safe_to_resend(&post), "a POST without a body");
        post.insert_header("Content-Length", "5").unwrap();
        assert!(!safe_to_resend(&post));
        let mut chunked = RequestHeader::build("PATCH", b"/", None).unwrap();
        chunked
            .insert_header("Transfer-Encoding", "chunked")
            .unwrap();
        assert!(!safe_to_resend(&chunked));
    }
}
