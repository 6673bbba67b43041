//! The storage listener: pre-signed URLs, their checks, and the bytes behind them.
//!
//! The API hands out URLs of the form `http://127.0.0.1:PORT/bucket/{type}/{hex}.{ext}`
//! `?X-Amz-Expires={unix}&X-Amz-Signature={sig}`, where `{hex}` is the identifier's bytes
//! in hex and `{sig}` a keyed hash of path and expiry with a secret drawn once per
//! process. Storage answers as S3 would: a bad signature or an expired URL gets a 403
//! with an XML error, and a good one gets the body with `ETag`, `Last-Modified` and
//! byte-range support. Faults scripted for the requested identifier are played only
//! once the URL itself has passed its checks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE, LAST_MODIFIED,
    RANGE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::conn::Cut;
use super::content::{Content, hex};
use super::server::Answer;
use super::{Fault, FileType, Shared};

/// Every object claims this modification time; its content never changes.
const LAST_MODIFIED_AT: &str = "Mon, 01 Jan 2024 00:00:00 GMT";

/// The storage host's address and its signing secret.
pub(super) struct Bucket {
    base: String,
    secret: [u8; 32],
}

impl Bucket {
    /// A bucket served at `addr` with a fresh random secret.
    pub(super) fn new(addr: SocketAddr) -> Bucket {
        let mut secret = [0; 32];
        fastrand::fill(&mut secret);
        Bucket { base: format!("http://{addr}"), secret }
    }

    /// A URL for `identifier` as `kind`, valid until Unix second `expires`.
    pub(super) fn presign(&self, kind: FileType, identifier: &str, expires: u64) -> String {
        let path = format!("/bucket/{kind}/{}.{}", hex(identifier.as_bytes()), kind.extension());
        let signature = self.sign(&path, &expires.to_string());
        format!("{}{path}?X-Amz-Expires={expires}&X-Amz-Signature={signature}", self.base)
    }

    /// The signature of `path` with expiry text `expires`, as it appears in the URL.
    fn sign(&self, path: &str, expires: &str) -> String {
        // A keyed SHA-256 is enough here: the secret never leaves the process and the
        // point is only to notice URLs that were altered or made up. S3 uses HMAC.
        let mut hasher = Sha256::new();
        hasher.update(self.secret);
        hasher.update(path.as_bytes());
        hasher.update(b"\n");
        hasher.update(expires.as_bytes());
        hex(&hasher.finalize())
    }
}

/// The object a valid URL names.
#[derive(Debug, PartialEq, Eq)]
struct Object {
    kind: FileType,
    identifier: String,
}

/// Why storage turns a URL away before looking at the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    SignatureMismatch,
    Expired,
    NoSuchKey,
}

impl Refusal {
    fn response(self) -> Response {
        match self {
            Refusal::SignatureMismatch => signature_mismatch(),
            Refusal::Expired => expired(),
            Refusal::NoSuchKey => no_such_key(),
        }
    }
}

/// How storage plays a fault.
enum Plan {
    Status(u16),
    Truncate(u64),
    Reset,
    ResetAfter(u64),
    Expired,
    Stall(u64),
    Pause(u64, Duration),
}

/// Answers one request to the storage listener.
pub(super) fn answer(shared: &Shared, parts: &Parts) -> Answer {
    let object = match admit(shared, parts) {
        Ok(object) => object,
        Err(refusal) => return refusal.response().into(),
    };
    match shared.faults.take(&object.identifier, plan) {
        Some((fault, plan)) => play(shared, parts, &object, plan).with_fault(fault),
        None => deliver(shared, parts, &object, Shape::Whole),
    }
}

/// Checks the URL's method, signature and expiry, as S3 does before anything else.
fn admit(shared: &Shared, parts: &Parts) -> Result<Object, Refusal> {
    // A URL is signed for GET; S3 answers any other method on it with this same error.
    if parts.method != Method::GET {
        return Err(Refusal::SignatureMismatch);
    }
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    let (expires, signature) = signed_params(query).ok_or(Refusal::SignatureMismatch)?;
    if shared.bucket.sign(path, expires) != signature {
        return Err(Refusal::SignatureMismatch);
    }
    let expires: u64 = expires.parse().map_err(|_| Refusal::SignatureMismatch)?;
    if shared.clock.unix_at(Instant::now()) >= Duration::from_secs(expires) {
        return Err(Refusal::Expired);
    }
    parse_object(path).ok_or(Refusal::NoSuchKey)
}

/// The expiry and signature texts from a URL's query, if both are present.
fn signed_params(query: &str) -> Option<(&str, &str)> {
    let (mut expires, mut signature) = (None, None);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("X-Amz-Expires", value)) => expires = Some(value),
            Some(("X-Amz-Signature", value)) => signature = Some(value),
            _ => {}
        }
    }
    Some((expires?, signature?))
}

/// Reads `/bucket/{type}/{hex}.{ext}` back into the object it names.
fn parse_object(path: &str) -> Option<Object> {
    let (kind, file) = path.strip_prefix("/bucket/")?.split_once('/')?;
    let kind = FileType::parse(kind)?;
    let token = file.strip_suffix(kind.extension())?.strip_suffix('.')?;
    let identifier = String::from_utf8(unhex(token)?).ok()?;
    Some(Object { kind, identifier })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

/// How storage plays `fault`; `None` leaves it for the API.
fn plan(fault: &Fault) -> Option<Plan> {
    match fault {
        Fault::StorageStatus(code) => Some(Plan::Status(*code)),
        Fault::StorageTruncate(bytes) => Some(Plan::Truncate(*bytes)),
        Fault::StorageReset => Some(Plan::Reset),
        Fault::StorageResetAfter(bytes) => Some(Plan::ResetAfter(*bytes)),
        Fault::StorageExpired => Some(Plan::Expired),
        Fault::StorageStallAfter(bytes) => Some(Plan::Stall(*bytes)),
        Fault::StoragePauseAfter(bytes, pause) => Some(Plan::Pause(*bytes, *pause)),
        Fault::ApiStatus(_) | Fault::ApiRedirect(_) => None,
    }
}

fn play(shared: &Shared, parts: &Parts, object: &Object, plan: Plan) -> Answer {
    match plan {
        Plan::Status(code) => scripted_status(code).into(),
        Plan::Truncate(bytes) => deliver(shared, parts, object, Shape::TruncateAfter(bytes)),
        Plan::Stall(bytes) => deliver(shared, parts, object, Shape::StallAfter(bytes)),
        Plan::ResetAfter(bytes) => deliver(shared, parts, object, Shape::ResetAfter(bytes)),
        Plan::Pause(bytes, pause) => {
            deliver(shared, parts, object, Shape::PauseAfter(bytes, pause))
        }
        // The response is never sent; the connection resets before its first byte.
        Plan::Reset => Answer::from(Response::new(Body::empty())).with_cut(Some(Cut::Reset)),
        Plan::Expired => expired().into(),
    }
}

/// How a body is bent on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Whole,
    /// This many bytes, then the connection closes.
    TruncateAfter(u64),
    /// This many bytes, then the connection resets.
    ResetAfter(u64),
    /// This many bytes, then silence on an open connection.
    StallAfter(u64),
    /// This many bytes, then silence for this long, then the rest.
    PauseAfter(u64, Duration),
}

/// The body stream for `range`, bent as `shape` says and throttled as configured.
fn body_stream(shared: &Shared, content: Content, range: Range<u64>, shape: Shape) -> Body {
    let throttle = shared.config.storage_bytes_per_second;
    let split = match shape {
        Shape::StallAfter(bytes) | Shape::PauseAfter(bytes, _) => {
            range.end.min(range.start + bytes)
        }
        Shape::Whole | Shape::TruncateAfter(_) | Shape::ResetAfter(_) => range.end,
    };
    // What follows the bytes before `split`: silence for good, a quiet spell and the
    // rest, or nothing.
    let after: BoxStream<'static, Result<Bytes, Infallible>> = match shape {
        Shape::StallAfter(_) => futures::stream::pending().boxed(),
        Shape::PauseAfter(_, pause) => {
            let quiet = futures::stream::once(tokio::time::sleep(pause));
            let quiet = quiet.filter_map(|()| async { None });
            quiet.chain(content.stream(split..range.end)).boxed()
        }
        Shape::Whole | Shape::TruncateAfter(_) | Shape::ResetAfter(_) => {
            futures::stream::empty().boxed()
        }
    };
    let sent = shared.body_bytes.clone();
    let chunks = content.stream(range.start..split).chain(after).then(move |chunk| async move {
        // Pacing each chunk by its size gives the configured rate on average.
        if let (Some(rate), Ok(bytes)) = (throttle, &chunk) {
            let seconds = bytes.len() as f64 / rate.max(1) as f64;
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        }
        chunk
    });
    let chunks = chunks.inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    });
    Body::from_stream(chunks)
}

/// The object's bytes: all of them, or the range asked for, bent as `shape` says.
fn deliver(shared: &Shared, parts: &Parts, object: &Object, shape: Shape) -> Answer {
    let content = shared.config.content(object.kind, &object.identifier);
    let size = content.size();
    let (status, range) = match ask(&parts.headers, &content) {
        Ask::Whole => (StatusCode::OK, 0..size),
        Ask::Part(range) => (StatusCode::PARTIAL_CONTENT, range),
        Ask::Unsatisfiable => return unsatisfiable(size).into(),
    };
    let length = range.end - range.start;
    let mut response = Response::new(body_stream(shared, content, range.clone(), shape));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_LENGTH, length.into());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(object.kind.mime()));
    if let Ok(etag) = HeaderValue::from_str(&content.etag()) {
        headers.insert(ETAG, etag);
    }
    headers.insert(LAST_MODIFIED, HeaderValue::from_static(LAST_MODIFIED_AT));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {}-{}/{size}", range.start, range.end - 1);
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(CONTENT_RANGE, value);
        }
    }
    // A cut at or past the body's end would never fire and would stay armed for the
    // next response on the connection, so it is dropped: the body is complete anyway.
    let cut = match shape {
        Shape::TruncateAfter(bytes) if bytes < length => Some(Cut::AfterBody(bytes)),
        Shape::ResetAfter(bytes) if bytes < length => Some(Cut::ResetAfterBody(bytes)),
        _ => None,
    };
    Answer::from(response).with_cut(cut)
}

/// What part of the body a request gets.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Whole,
    Part(Range<u64>),
    Unsatisfiable,
}

/// Reads `Range` and `If-Range`. An `If-Range` that names neither the current entity tag
/// nor the modification time means the client's copy is stale: it gets the whole body.
fn ask(headers: &HeaderMap, content: &Content) -> Ask {
    let Some(range) = headers.get(RANGE).and_then(|value| value.to_str().ok()) else {
        return Ask::Whole;
    };
    if let Some(validator) = headers.get(IF_RANGE) {
        let validator = validator.as_bytes();
        if validator != content.etag().as_bytes() && validator != LAST_MODIFIED_AT.as_bytes() {
            return Ask::Whole;
        }
    }
    parse_range(range, content.size())
}

/// Parses one `bytes=` range against a body of `size` bytes. Anything malformed, and
/// lists of several ranges, are ignored in favour of the whole body, as RFC 9110 allows.
fn parse_range(value: &str, size: u64) -> Ask {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ask::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Ask::Whole;
    };
    if spec.contains(',') {
        return Ask::Whole;
    }
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return suffix_range(last, size);
    }
    let Ok(start) = first.parse::<u64>() else {
        return Ask::Whole;
    };
    let end = if last.is_empty() {
        size
    } else {
        match last.parse::<u64>() {
            Ok(last) if last >= start => last.saturating_add(1).min(size),
            _ => return Ask::Whole,
        }
    };
    if start >= size { Ask::Unsatisfiable } else { Ask::Part(start..end) }
}

/// `bytes=-N`: the last `N` bytes.
fn suffix_range(last: &str, size: u64) -> Ask {
    match last.parse::<u64>() {
        Ok(0) => Ask::Unsatisfiable,
        Ok(_) if size == 0 => Ask::Unsatisfiable,
        Ok(n) => Ask::Part(size - n.min(size)..size),
        Err(_) => Ask::Whole,
    }
}

/// An S3-style error: XML with a `Code` and a `Message`.
fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let xml = HeaderValue::from_static("application/xml");
    response.headers_mut().insert(CONTENT_TYPE, xml);
    response
}

fn expired() -> Response {
    s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired")
}

fn signature_mismatch() -> Response {
    let message = "The request signature does not match the one calculated for this URL.";
    s3_error(StatusCode::FORBIDDEN, "SignatureDoesNotMatch", message)
}

fn no_such_key() -> Response {
    s3_error(StatusCode::NOT_FOUND, "NoSuchKey", "The object does not exist.")
}

fn unsatisfiable(size: u64) -> Response {
    let message = "The requested range is not satisfiable.";
    let mut response = s3_error(StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange", message);
    if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
        response.headers_mut().insert(CONTENT_RANGE, value);
    }
    response
}

/// A scripted error status, with the S3 code a client would meet for it. Codes HTTP
/// cannot carry become 500.
fn scripted_status(code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (code, message) = match status.as_u16() {
        403 => ("AccessDenied", "Access Denied"),
        404 => ("NoSuchKey", "The object does not exist."),
        500 => ("InternalError", "An internal error occurred. Try again."),
        503 => ("SlowDown", "Reduce your request rate."),
        _ => ("SimulatedError", status.canonical_reason().unwrap_or("Error")),
    };
    s3_error(status, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::SimConfig;
    use axum::http::Request;

    fn parts(target: &str) -> Parts {
        Request::get(target).body(()).expect("valid test request").into_parts().0
    }

    /// Path and query of a full URL.
    fn target(url: &str) -> &str {
        let rest = url.strip_prefix("http://").expect("http URL");
        &rest[rest.find('/').expect("URL has a path")..]
    }

    fn shared(validity: Duration) -> Shared {
        let config = SimConfig { url_validity: validity, ..SimConfig::default() };
        Shared::new(config, SocketAddr::from(([127, 0, 0, 1], 9)))
    }

    #[test]
    fn ranges_are_parsed_like_rfc_9110_says() {
        let part = |range: Range<u64>| Ask::Part(range);
        let cases = [
            ("bytes=0-", part(0..100)),
            ("bytes=10-19", part(10..20)),
            ("bytes=10-1000", part(10..100)),
            ("bytes=99-", part(99..100)),
            ("bytes=-10", part(90..100)),
            ("bytes=-1000", part(0..100)),
            ("bytes=100-", Ask::Unsatisfiable),
            ("bytes=100-200", Ask::Unsatisfiable),
            ("bytes=-0", Ask::Unsatisfiable),
            ("bytes=20-10", Ask::Whole),
            ("bytes=0-1,5-6", Ask::Whole),
            ("items=0-1", Ask::Whole),
            ("bytes=x-", Ask::Whole),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_range(value, 100), expected, "{value}");
        }
        assert_eq!(parse_range("bytes=0-", 0), Ask::Unsatisfiable);
    }

    #[test]
    fn object_paths_round_trip_any_identifier() {
        let bucket = Bucket::new(SocketAddr::from(([127, 0, 0, 1], 9)));
        let identifier = "a/b/../c%?#d é 東京";
        let url = bucket.presign(FileType::Video, identifier, 1_000);
        let path = target(&url).split('?').next().unwrap_or_default();
        let object = Object { kind: FileType::Video, identifier: identifier.to_string() };
        assert_eq!(parse_object(path), Some(object));
        assert!(path.ends_with(".mp4"));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("abc"), None);
    }

    #[test]
    fn altered_urls_fail_the_signature_check() {
        let shared = shared(Duration::from_secs(60));
        let url = shared.bucket.presign(FileType::Image, "id", u64::MAX / 2);
        assert!(admit(&shared, &parts(target(&url))).is_ok());
        let other_expiry = url.replace("X-Amz-Expires=", "X-Amz-Expires=1");
        let other_object = url.replace("/image/", "/video/");
        for altered in [other_expiry, other_object, url.replace("X-Amz-Signature", "X")] {
            let refusal = admit(&shared, &parts(target(&altered))).expect_err(&altered);
            assert_eq!(refusal, Refusal::SignatureMismatch);
        }
        let mut post = parts(target(&url));
        post.method = Method::POST;
        assert_eq!(admit(&shared, &post), Err(Refusal::SignatureMismatch));
    }

    #[tokio::test(start_paused = true)]
    async fn urls_expire_after_their_validity() {
        let shared = shared(Duration::from_secs(2));
        let unix = shared.clock.unix_at(Instant::now());
        let expires = (unix + Duration::from_secs(2)).as_secs();
        let url = shared.bucket.presign(FileType::Audio, "id", expires);
        assert!(admit(&shared, &parts(target(&url))).is_ok());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(admit(&shared, &parts(target(&url))), Err(Refusal::Expired));
    }
}
