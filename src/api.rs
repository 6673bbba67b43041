//! The IdentifAI API client: turns a row into a signed storage URL.
//!
//! This module is the only holder of the API key. The key travels in the
//! `X-Api-Key` header of each API request, marked sensitive, and never in a
//! client's default headers: the storage host, which gets a separate client,
//! must never see it. Redirects are not followed here; the 302's `Location`
//! becomes a [`Lease`] that [`crate::fetch`] downloads.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{HeaderValue, LOCATION};
use reqwest::{Client, StatusCode, Url};
use tokio::time::Instant;

use crate::manifest::Kind;
use crate::rate::ApiGate;
use crate::retry;

/// Everything but RFC 3986's unreserved characters is escaped, so an
/// identifier always stays one path segment: `/`, `?`, `#` and `%` included.
const PATH_SEGMENT: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// How much of an error body we keep for the report.
const BODY_EXCERPT_CHARS: usize = 200;

/// The API key. It can be used, never shown: `Debug` is redacted and there
/// is no `Display`.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Takes a key, trimming the whitespace and newline a file tends to add.
    pub fn new(key: &str) -> Option<ApiKey> {
        let key = key.trim();
        let printable = key.chars().all(|c| c.is_ascii_graphic());
        (!key.is_empty() && printable).then(|| ApiKey(key.to_owned()))
    }

    /// Reads a key from a file, such as a systemd credential or a k8s secret.
    pub fn from_file(path: &Path) -> Result<ApiKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the API key file {}: {e}", path.display()))?;
        ApiKey::new(&text)
            .ok_or_else(|| format!("the API key file {} holds no usable key", path.display()))
    }

    fn header_value(&self) -> HeaderValue {
        let mut value = HeaderValue::from_str(&self.0).expect("checked printable ASCII");
        value.set_sensitive(true);
        value
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// A signed storage URL and when the API issued it.
#[derive(Clone)]
pub struct Lease {
    pub url: Url,
    pub issued_at: Instant,
}

impl Lease {
    /// How long ago the API signed this URL.
    pub fn age(&self) -> Duration {
        self.issued_at.elapsed()
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("url", &redacted(&self.url))
            .field("age", &self.age())
            .finish()
    }
}

/// A URL fit for logs: scheme, host and path, never the query, which holds
/// a signed URL's signature.
pub fn redacted(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}

/// What can go wrong asking the API for a URL.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API answered {status}{}", excerpt_suffix(body))]
    Status { status: StatusCode, body: String, retry_after: Option<Duration> },
    #[error("API request failed: {}", describe_transport(.0))]
    Transport(#[source] reqwest::Error),
    #[error("API redirected to {location:?}, which we refuse: {reason}")]
    BadLocation { location: String, reason: &'static str },
    #[error("identifier {identifier:?} cannot be sent as one URL path segment")]
    UnsendableIdentifier { identifier: String },
}

/// `: <body>` after an error status, or nothing when the body was empty.
pub(crate) fn excerpt_suffix(body: &str) -> String {
    if body.is_empty() { String::new() } else { format!(": {body}") }
}

/// A transport error with its causes, but never a URL: reqwest's own
/// message includes the request URL, which for storage holds a signature.
pub fn describe_transport(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_body() || error.is_decode() {
        "the body was cut off"
    } else {
        "connection error"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The API client. Cheap to share behind an `Arc`.
pub struct ApiClient {
    http: Client,
    base: Url,
    key: ApiKey,
    gate: std::sync::Arc<ApiGate>,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

impl ApiClient {
    pub fn new(http: Client, base: Url, key: ApiKey, gate: std::sync::Arc<ApiGate>) -> Self {
        ApiClient { http, base, key, gate }
    }

    pub fn gate(&self) -> &ApiGate {
        &self.gate
    }

    /// The download URL for one submission, frame or track.
    pub fn download_url(&self, kind: Kind, id: &str) -> Result<Url, ApiError> {
        let unsendable = || ApiError::UnsendableIdentifier { identifier: id.to_owned() };
        // Only "." and ".." are dot-segments once decoded, and URL parsers
        // collapse them (even as %2E), so no encoding can carry them.
        if id.is_empty() || id == "." || id == ".." {
            return Err(unsendable());
        }
        let segment = utf8_percent_encode(id, PATH_SEGMENT);
        let prefix = self.base.path().trim_end_matches('/');
        let path = format!("{prefix}/api/v2/submissions/{kind}/{segment}/download");
        let mut url = self.base.clone();
        url.set_path(&path);
        url.set_query(None);
        // Belt and braces: the path must be exactly what we built.
        if url.path() != path {
            return Err(unsendable());
        }
        Ok(url)
    }

    /// Asks the API for a signed URL, waiting for the gate first.
    pub async fn resolve(&self, kind: Kind, id: &str) -> Result<Lease, ApiError> {
        let url = self.download_url(kind, id)?;
        self.gate.acquire().await;
        let response = self
            .http
            .get(url.clone())
            .header("X-Api-Key", self.key.header_value())
            .send()
            .await
            .map_err(ApiError::Transport)?;
        let status = response.status();
        if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
            return lease_from(&url, response.headers().get(LOCATION));
        }
        let retry_after = retry::server_wait(response.headers(), self.gate.wall_now());
        let body = body_excerpt(response).await;
        Err(ApiError::Status { status, body, retry_after })
    }
}

fn lease_from(request: &Url, location: Option<&HeaderValue>) -> Result<Lease, ApiError> {
    let raw = location.and_then(|value| value.to_str().ok()).unwrap_or_default();
    let refuse = |reason| ApiError::BadLocation { location: shown_location(request, raw), reason };
    if raw.is_empty() {
        return Err(refuse("the redirect has no readable Location"));
    }
    let url = request.join(raw).map_err(|_| refuse("it is not a valid URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refuse("only http and https are fetched"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(refuse("it names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("it carries credentials"));
    }
    Ok(Lease { url, issued_at: Instant::now() })
}

/// A refused `Location` as errors may show it: a signed URL's query and
/// any user name or password never reach a log, the report or the journal.
fn shown_location(request: &Url, raw: &str) -> String {
    if let Ok(url) = request.join(raw) {
        return redacted(&url);
    }
    let before_query = raw.split(['?', '#']).next().unwrap_or_default();
    let without_userinfo = match before_query.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.rsplit('@').next().unwrap_or(rest)),
        None => before_query.to_owned(),
    };
    without_userinfo.chars().take(BODY_EXCERPT_CHARS).collect()
}

/// The start of an error body, on one line, for the report.
pub async fn body_excerpt(response: reqwest::Response) -> String {
    let bytes = response.bytes().await.unwrap_or_default();
    let head = &bytes[..bytes.len().min(4 * BODY_EXCERPT_CHARS)];
    String::from_utf8_lossy(head)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(BODY_EXCERPT_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::RateSpec;
    use std::sync::Arc;

    fn client(base: &str) -> ApiClient {
        let gate = Arc::new(ApiGate::new(&RateSpec::default()));
        let key = ApiKey::new("k").unwrap();
        ApiClient::new(Client::new(), base.parse().unwrap(), key, gate)
    }

    #[test]
    fn awkward_identifiers_stay_one_segment() {
        let api = client("https://api.example.test");
        let cases = [
            ("64b7f0c2a1e4d3b2c1a09f8e", "64b7f0c2a1e4d3b2c1a09f8e"),
            ("a/b", "a%2Fb"),
            ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd"),
            ("...", "..."),
            ("50%", "50%25"),
            ("q?x=1#frag", "q%3Fx%3D1%23frag"),
            ("two words", "two%20words"),
            ("ünï", "%C3%BCn%C3%AF"),
            ("a\\b", "a%5Cb"),
        ];
        for (id, encoded) in cases {
            let url = api.download_url(Kind::Image, id).unwrap();
            let expected = format!("/api/v2/submissions/image/{encoded}/download");
            assert_eq!(url.path(), expected, "{id:?}");
            assert_eq!(url.query(), None, "{id:?}");
        }
    }

    #[test]
    fn dot_segments_are_refused() {
        let api = client("https://api.example.test");
        for id in [".", "..", ""] {
            let error = api.download_url(Kind::Video, id).unwrap_err();
            assert!(matches!(error, ApiError::UnsendableIdentifier { .. }), "{id:?}");
        }
    }

    #[test]
    fn a_base_path_is_kept() {
        let api = client("http://127.0.0.1:9/proxy/");
        let url = api.download_url(Kind::Audio, "x").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9/proxy/api/v2/submissions/audio/x/download");
    }

    #[test]
    fn only_plain_http_locations_make_a_lease() {
        let request: Url = "https://api.example.test/api/v2/x".parse().unwrap();
        let value = |s: &str| HeaderValue::from_str(s).unwrap();
        let ok = lease_from(&request, Some(&value("https://s3.example.test/b/f?X-Amz-S=1")));
        assert_eq!(ok.unwrap().url.host_str(), Some("s3.example.test"));
        let relative = lease_from(&request, Some(&value("/bucket/f"))).unwrap();
        assert_eq!(relative.url.as_str(), "https://api.example.test/bucket/f");
        for bad in ["file:///etc/passwd", "ftp://h/f", "https://u:p@h/f", "data:,x", "http://"] {
            let error = lease_from(&request, Some(&value(bad)));
            assert!(matches!(error, Err(ApiError::BadLocation { .. })), "{bad}");
        }
        assert!(lease_from(&request, None).is_err());
    }

    #[test]
    fn a_refused_location_never_shows_credentials_or_a_signature() {
        let request: Url = "https://api.example.test/api/v2/x".parse().unwrap();
        let value = |s: &str| HeaderValue::from_str(s).unwrap();
        let cases = [
            ("https://user:hunter2@s3.example.test/b/f?X-Amz-Signature=s3cr3t", "hunter2"),
            ("ftp://s3.example.test/b/f?X-Amz-Signature=s3cr3t", "s3cr3t"),
            ("http://user:hunter2@[bad/f?X-Amz-Signature=s3cr3t", "hunter2"),
        ];
        for (location, secret) in cases {
            let error = lease_from(&request, Some(&value(location))).unwrap_err().to_string();
            assert!(!error.contains(secret), "{error}");
            assert!(!error.contains("Signature"), "{error}");
            assert!(error.contains("/f"), "the path is still shown: {error}");
        }
    }

    #[test]
    fn the_key_never_shows() {
        let key = ApiKey::new("  sk_live_abcdef123456\n").unwrap();
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
        assert!(key.header_value().is_sensitive());
        assert!(ApiKey::new(" \n").is_none());
        assert!(ApiKey::new("two words").is_none());
    }

    #[test]
    fn logs_see_no_signature() {
        let url: Url = "https://s3.example.test:8443/b/f.mp4?X-Amz-Signature=abc".parse().unwrap();
        assert_eq!(redacted(&url), "https://s3.example.test:8443/b/f.mp4");
    }
}
