//! The API listener: `GET /api/v2/submissions/{type}/{identifier}/download`.
//!
//! Checks run in the order a Laravel app applies them. The route must match (else 404,
//! not counted), the key must be right (else 401, not counted), then the throttle counts
//! the request or refuses it with 429. Only a counted request reaches the scripted
//! faults, the per-identifier 404 and 403 lists, and finally the 302 to a fresh signed
//! URL. Every counted answer carries the tightest limit's `X-RateLimit-*` headers.

use std::time::Duration;

use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use percent_encoding::percent_decode_str;
use tokio::time::Instant;

use super::clock::{ceil_secs, http_date};
use super::limits::{Standing, Verdict};
use super::server::Answer;
use super::{Fault, FileType, Shared, lock};

/// How a 429 tells the client when to come back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetryAfterForm {
    /// `Retry-After: <seconds>`, rounded up and at least 1, as Laravel sends it.
    #[default]
    Seconds,
    /// `Retry-After: <IMF-fixdate>` of the window's end, e.g.
    /// `Sun, 06 Nov 1994 08:49:37 GMT`.
    HttpDate,
    /// No `Retry-After` at all; only `X-RateLimit-Reset`, unless left out too, tells when
    /// the window ends.
    Omitted,
}

/// What a 429's `X-RateLimit-Reset` says. Laravel sends the same moment as `Retry-After`;
/// the other choices let a test tell which of the two headers a client followed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResetForm {
    /// The Unix second the window ends, rounded up: the moment `Retry-After` names.
    #[default]
    WindowEnd,
    /// That moment plus this long, so that it disagrees with `Retry-After`.
    Later(Duration),
    /// No `X-RateLimit-Reset` at all; only `Retry-After` tells when the window ends.
    Omitted,
}

const KEY_HEADER: &str = "x-api-key";
const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Answers one request to the API listener.
pub(super) fn answer(shared: &Shared, parts: &Parts) -> Answer {
    let Some((kind, identifier)) = parse_path(parts.uri.path()) else {
        return json(StatusCode::NOT_FOUND, "Not Found.").into();
    };
    if parts.method != Method::GET {
        return json(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed.").into();
    }
    if !has_key(&parts.headers, &shared.config.api_key) {
        return json(StatusCode::UNAUTHORIZED, "Unauthenticated.").into();
    }
    let now = Instant::now();
    let verdict = lock(&shared.limiter).hit(now);
    match verdict {
        Verdict::Refused { max, ends } => too_many(shared, max, now, ends).into(),
        Verdict::Allowed { tightest } => {
            let mut answer = counted(shared, kind, &identifier, now);
            if let Some(standing) = tightest {
                standing_headers(answer.response.headers_mut(), standing);
            }
            answer
        }
    }
}

/// Splits a download path into its type and decoded identifier; `None` if no route
/// matches, which includes an unknown type.
fn parse_path(path: &str) -> Option<(FileType, String)> {
    let middle = path.strip_prefix("/api/v2/submissions/")?.strip_suffix("/download")?;
    let (kind, raw) = middle.split_once('/')?;
    // The identifier is decoded from its raw segment so an encoded `/` stays inside it;
    // a bare `/` would make extra segments, which no route matches.
    if raw.is_empty() || raw.contains('/') {
        return None;
    }
    let identifier = percent_decode_str(raw).decode_utf8().ok()?;
    Some((FileType::parse(kind)?, identifier.into_owned()))
}

fn has_key(headers: &HeaderMap, key: &str) -> bool {
    headers.get(KEY_HEADER).is_some_and(|value| value.as_bytes() == key.as_bytes())
}

/// The answer to a request the throttle has counted.
fn counted(shared: &Shared, kind: FileType, identifier: &str, now: Instant) -> Answer {
    if let Some((fault, response)) = shared.faults.take(identifier, scripted) {
        return Answer::from(response).with_fault(fault);
    }
    let config = &shared.config;
    if config.not_found.contains(identifier) {
        return json(StatusCode::NOT_FOUND, "Not Found.").into();
    }
    if config.forbidden.contains(identifier) {
        return json(StatusCode::FORBIDDEN, "This action is unauthorized.").into();
    }
    // Rounding the expiry down keeps a URL's life at most the configured validity, and
    // makes a validity of zero mean "already expired".
    let expires = shared.clock.unix_at(now).saturating_add(config.url_validity).as_secs();
    redirect(&shared.bucket.presign(kind, identifier, expires)).into()
}

/// The response for a fault the API plays; `None` leaves it for storage.
fn scripted(fault: &Fault) -> Option<Response> {
    match fault {
        Fault::ApiStatus(code) => Some(status_reply(*code)),
        Fault::ApiRedirect(location) => Some(redirect(location)),
        Fault::StorageStatus(_)
        | Fault::StorageTruncate(_)
        | Fault::StorageReset
        | Fault::StorageResetAfter(_)
        | Fault::StorageExpired
        | Fault::StorageStallAfter(_)
        | Fault::StoragePauseAfter(..) => None,
    }
}

/// A bare answer with `code` and its reason as the message. Codes outside 100..=999,
/// which HTTP cannot carry, become 500.
fn status_reply(code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, status.canonical_reason().unwrap_or("Error"))
}

/// The 429 for a request refused by the limit allowing `max` until `ends`.
fn too_many(shared: &Shared, max: u32, now: Instant, ends: Instant) -> Response {
    let reset = ceil_secs(shared.clock.unix_at(ends));
    let mut response = json(StatusCode::TOO_MANY_REQUESTS, "Too Many Attempts.");
    let headers = response.headers_mut();
    standing_headers(headers, Standing { max, remaining: 0 });
    match shared.config.rate_limit_reset {
        ResetForm::WindowEnd => {
            headers.insert(RESET, reset.into());
        }
        ResetForm::Later(by) => {
            headers.insert(RESET, ceil_secs(shared.clock.unix_at(ends + by)).into());
        }
        ResetForm::Omitted => {}
    }
    match shared.config.retry_after {
        RetryAfterForm::Seconds => {
            let wait = ceil_secs(ends.saturating_duration_since(now)).max(1);
            headers.insert(RETRY_AFTER, wait.into());
        }
        RetryAfterForm::HttpDate => insert(headers, RETRY_AFTER, &http_date(reset)),
        RetryAfterForm::Omitted => {}
    }
    response
}

fn standing_headers(headers: &mut HeaderMap, standing: Standing) {
    headers.insert(LIMIT, standing.max.into());
    headers.insert(REMAINING, standing.remaining.into());
}

fn redirect(location: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::FOUND;
    insert(response.headers_mut(), LOCATION, location);
    response
}

/// Inserts a header, leaving it out if `value` cannot be one. Only a scripted `Location`
/// can be invalid; every other value here is generated ASCII.
fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// A Laravel-style JSON error: `{"message": "..."}`.
fn json(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let json = HeaderValue::from_static("application/json");
    response.headers_mut().insert(CONTENT_TYPE, json);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(path: &str) -> Option<(FileType, String)> {
        parse_path(path)
    }

    #[test]
    fn paths_decode_one_segment_into_the_identifier() {
        let path = "/api/v2/submissions/video/a%2Fb%2F..%2Fc%25%3F%23%20%C3%A9/download";
        assert_eq!(parsed(path), Some((FileType::Video, "a/b/../c%?# é".to_string())));
        let plain = "/api/v2/submissions/image/abc-123/download";
        assert_eq!(parsed(plain), Some((FileType::Image, "abc-123".to_string())));
    }

    #[test]
    fn paths_that_match_no_route() {
        for path in [
            "/api/v2/submissions/text/abc/download",
            "/api/v2/submissions/image/a/b/download",
            "/api/v2/submissions/image//download",
            "/api/v2/submissions/image/download",
            "/api/v2/submissions/image/abc",
            "/api/v1/submissions/image/abc/download",
            "/api/v2/submissions/image/%FF/download",
        ] {
            assert_eq!(parsed(path), None, "{path}");
        }
    }
}
