//! What happens after a failure: the one classifier, and the backoff budget.
//!
//! Every error the API or the storage host can hand a row goes through
//! [`classify`], which says whether to retry, wait out a 429, ask the API for
//! a fresh URL, end the row, or stop the whole run. Nothing else in the
//! program makes that choice, so the table test at the bottom of this file is
//! the complete policy.
//!
//! Retries wait with exponential backoff and full jitter (a uniform delay
//! between zero and the exponential ceiling), which spreads retries of many
//! rows apart instead of letting them return in step.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use tokio::time::Instant;

use crate::api::ApiError;
use crate::fetch::FetchError;
use crate::report::RowStatus;

/// How long to pause after a 429 that names no reset time. The vendor's
/// windows are a second and a minute long; a few seconds is a polite guess.
pub const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(5);

/// What to do with a row after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A transient fault: wait a backoff delay and try again.
    Retry,
    /// The key's budget is spent: pause every API call for `wait`, then try
    /// again. Does not spend the row's attempts.
    RateLimited { wait: Duration },
    /// The signed URL is no good (expired or refused): ask the API for a
    /// fresh one.
    Reresolve,
    /// The row ends here with this status.
    EndRow(RowStatus),
    /// Nothing else can succeed either: stop the whole run.
    StopRun,
}

/// Either side's error, as the classifier sees it.
#[derive(Debug, Clone, Copy)]
pub enum Failure<'a> {
    Api(&'a ApiError),
    Storage(&'a FetchError),
}

/// Decides what a failure means. One arm per case, each with its reason.
pub fn classify(failure: Failure<'_>) -> Decision {
    match failure {
        Failure::Api(error) => classify_api(error),
        Failure::Storage(error) => classify_storage(error),
    }
}

fn classify_api(error: &ApiError) -> Decision {
    match error {
        ApiError::Status { status, retry_after, .. } => match *status {
            // The budget is per key: every row must wait, not just this one.
            StatusCode::TOO_MANY_REQUESTS => {
                Decision::RateLimited { wait: retry_after.unwrap_or(DEFAULT_RATE_LIMIT_WAIT) }
            }
            // A refused key fails every row the same way: retrying them all
            // would only hammer the API.
            StatusCode::UNAUTHORIZED => Decision::StopRun,
            // This key may not see this submission; asking again won't help.
            StatusCode::FORBIDDEN => Decision::EndRow(RowStatus::Forbidden),
            StatusCode::NOT_FOUND => Decision::EndRow(RowStatus::NotFound),
            // The server gave up waiting for us: the same request may pass.
            StatusCode::REQUEST_TIMEOUT => Decision::Retry,
            // The server's own fault, often passing (a deploy, an overload).
            status if status.is_server_error() => Decision::Retry,
            // Anything else is a request the server will never accept.
            _ => Decision::EndRow(RowStatus::Failed),
        },
        // The network or the server hiccuped before answering.
        ApiError::Transport(_) => Decision::Retry,
        // A redirect we refuse to follow will not improve on a retry.
        ApiError::BadLocation { .. } => Decision::EndRow(RowStatus::Failed),
        // No encoding can carry this identifier as one path segment.
        ApiError::UnsendableIdentifier { .. } => Decision::EndRow(RowStatus::Invalid),
    }
}

fn classify_storage(error: &FetchError) -> Decision {
    match error {
        FetchError::Status { status, .. } => match *status {
            // Signed URLs expire (or were refused): only the API can sign anew.
            StatusCode::FORBIDDEN => Decision::Reresolve,
            // Storage is busy or gave up waiting; the same URL may pass.
            StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => Decision::Retry,
            // Storage's own fault, often passing.
            status if status.is_server_error() => Decision::Retry,
            // 404 or 410: the object went away behind a URL the API just
            // signed; that is the row's end, not something to wait for.
            StatusCode::NOT_FOUND | StatusCode::GONE => Decision::EndRow(RowStatus::NotFound),
            _ => Decision::EndRow(RowStatus::Failed),
        },
        // Reset, timeout or a body cut short: the bytes may come next time.
        FetchError::Transport(_) | FetchError::Truncated { .. } => Decision::Retry,
        // The partial copy was dropped; the next try starts the file afresh.
        FetchError::ResumeRefused { .. } => Decision::Retry,
        // The storage host redirected us; we accept only a direct answer.
        FetchError::Redirected { .. } => Decision::EndRow(RowStatus::Failed),
        // Our own disk failed: every other row would fail the same way.
        FetchError::Io { .. } => Decision::StopRun,
    }
}

/// Added to a wait the server gives as a moment (an HTTP-date, a Unix time)
/// rather than as seconds: our clock and the server's disagree a little, and
/// an answer is read a moment after the server wrote it, so waiting for the
/// exact instant could call just before the window opens and earn a 429.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_millis(250);

/// How long the server asks us to wait, from `Retry-After` (delta-seconds or
/// an HTTP-date) or else `X-RateLimit-Reset` (Unix time).
pub fn server_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name| headers.get(name).and_then(|value| value.to_str().ok());
    let until = |when: SystemTime| when.duration_since(now).unwrap_or_default();
    if let Some(value) = text(RETRY_AFTER.as_str()) {
        let value = value.trim();
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        if let Some(when) = parse_http_date(value) {
            return Some(until(when + CLOCK_SKEW_ALLOWANCE));
        }
    }
    let reset: u64 = text("x-ratelimit-reset")?.trim().parse().ok()?;
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(reset);
    Some(until(when + CLOCK_SKEW_ALLOWANCE))
}

fn parse_http_date(value: &str) -> Option<SystemTime> {
    let zoned = jiff::fmt::rfc2822::parse(value).ok()?;
    Some(SystemTime::from(zoned.timestamp()))
}

/// The limits on retrying one row.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries per row, the first included; 429s are not counted here.
    pub max_attempts: u32,
    /// No new retry starts once a row has been retrying this long.
    pub max_elapsed: Duration,
    /// The first backoff ceiling; it doubles per retry up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Fresh URLs a row may ask for after storage refused one, in all.
    /// Each refusal earns one, but a fresh URL refused too ends the row.
    pub max_reresolves: u32,
    /// 429 answers a row may meet before it gives up.
    pub max_rate_limited: u32,
}

impl RetryPolicy {
    pub fn with_max_attempts(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            max_elapsed: Duration::from_secs(15 * 60),
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            max_reresolves: 3,
            // A 429 only means "later"; allow many, but not forever.
            max_rate_limited: max_attempts.saturating_mul(4).max(20),
        }
    }
}

/// One row's progress through its retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    policy: RetryPolicy,
    started: Instant,
    ceilings: ExponentialBackoff,
    jitter: fastrand::Rng,
    attempts: u32,
    reresolves: u32,
    /// Storage refused the URL, and has not accepted one since.
    refused_last: bool,
    rate_limited: u32,
}

impl RetryBudget {
    /// `seed` feeds the jitter; tests pass a fixed one.
    pub fn new(policy: RetryPolicy, seed: u64) -> RetryBudget {
        let ceilings = ExponentialBuilder::new()
            .with_min_delay(policy.base_delay)
            .with_max_delay(policy.max_delay)
            .without_max_times()
            .build();
        RetryBudget {
            policy,
            started: Instant::now(),
            ceilings,
            jitter: fastrand::Rng::with_seed(seed),
            attempts: 1,
            reresolves: 0,
            refused_last: false,
            rate_limited: 0,
        }
    }

    /// The try now under way, counting from 1.
    pub fn attempt(&self) -> u32 {
        self.attempts
    }

    pub fn max_attempts(&self) -> u32 {
        self.policy.max_attempts
    }

    /// The delay before the next try, or `None` when the row has used up
    /// its attempts or its time.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.attempts >= self.policy.max_attempts
            || self.started.elapsed() >= self.policy.max_elapsed
        {
            return None;
        }
        self.attempts += 1;
        let ceiling = self.ceilings.next().unwrap_or(self.policy.max_delay);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(self.jitter.u64(0..=nanos)))
    }

    /// Counts a request for a fresh URL after storage refused one. False
    /// when the refused URL was itself the fresh answer to a refusal (a new
    /// one would fare no better: that is a loop, not an expiry), or when
    /// the row has used up its fresh URLs.
    pub fn take_reresolve(&mut self) -> bool {
        self.reresolves += 1;
        let refused_again = std::mem::replace(&mut self.refused_last, true);
        !refused_again && self.reresolves <= self.policy.max_reresolves
    }

    /// Storage accepted a URL, whatever went wrong after: a later refusal
    /// is news again (say, a URL that expired while the row waited).
    pub fn storage_accepted(&mut self) {
        self.refused_last = false;
    }

    /// Counts a 429; false once the row has met too many.
    pub fn take_rate_limited(&mut self) -> bool {
        self.rate_limited += 1;
        self.rate_limited <= self.policy.max_rate_limited
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use std::path::PathBuf;

    fn api_status(code: u16, retry_after: Option<u64>) -> ApiError {
        ApiError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            body: String::new(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn storage_status(code: u16) -> FetchError {
        FetchError::Status { status: StatusCode::from_u16(code).unwrap(), body: String::new() }
    }

    #[test]
    fn every_api_case_has_its_decision() {
        use Decision::*;
        let wait = |s| RateLimited { wait: Duration::from_secs(s) };
        let cases = [
            (api_status(429, Some(7)), wait(7)),
            (api_status(429, None), RateLimited { wait: DEFAULT_RATE_LIMIT_WAIT }),
            (api_status(401, None), StopRun),
            (api_status(403, None), EndRow(RowStatus::Forbidden)),
            (api_status(404, None), EndRow(RowStatus::NotFound)),
            (api_status(408, None), Retry),
            (api_status(409, None), EndRow(RowStatus::Failed)),
            (api_status(500, None), Retry),
            (api_status(502, None), Retry),
            (api_status(503, Some(3)), Retry),
            (api_status(504, None), Retry),
            (api_status(400, None), EndRow(RowStatus::Failed)),
            (api_status(410, None), EndRow(RowStatus::Failed)),
            (api_status(422, None), EndRow(RowStatus::Failed)),
            (api_status(200, None), EndRow(RowStatus::Failed)),
            (
                ApiError::BadLocation { location: "file:///etc/passwd".into(), reason: "x" },
                EndRow(RowStatus::Failed),
            ),
            (
                ApiError::UnsendableIdentifier { identifier: "..".into() },
                EndRow(RowStatus::Invalid),
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(classify(Failure::Api(&error)), expected, "{error:?}");
        }
    }

    #[test]
    fn every_storage_case_has_its_decision() {
        use Decision::*;
        let io = FetchError::Io {
            path: PathBuf::from("tmp/x.part"),
            source: std::io::Error::other("disk full"),
        };
        let cases = [
            (storage_status(403), Reresolve),
            (storage_status(429), Retry),
            (storage_status(408), Retry),
            (storage_status(500), Retry),
            (storage_status(503), Retry),
            (storage_status(404), EndRow(RowStatus::NotFound)),
            (storage_status(410), EndRow(RowStatus::NotFound)),
            (storage_status(400), EndRow(RowStatus::Failed)),
            (storage_status(416), EndRow(RowStatus::Failed)),
            (FetchError::Truncated { expected: 10, received: 4 }, Retry),
            (FetchError::ResumeRefused { reason: "416".into() }, Retry),
            (FetchError::Redirected { status: StatusCode::FOUND }, EndRow(RowStatus::Failed)),
            (io, StopRun),
        ];
        for (error, expected) in cases {
            assert_eq!(classify(Failure::Storage(&error)), expected, "{error:?}");
        }
    }

    #[tokio::test]
    async fn transport_errors_are_retried_on_both_sides() {
        // A real connection refusal: bind a port, close it, then connect.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let refused = || async { reqwest::get(&url).await.unwrap_err() };
        let api = ApiError::Transport(refused().await);
        let storage = FetchError::Transport(refused().await);
        assert_eq!(classify(Failure::Api(&api)), Decision::Retry);
        assert_eq!(classify(Failure::Storage(&storage)), Decision::Retry);
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn server_wait_reads_every_form() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_770);
        let seconds = headers(&[("retry-after", "12")]);
        assert_eq!(server_wait(&seconds, now), Some(Duration::from_secs(12)));
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        let date = headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let skew = CLOCK_SKEW_ALLOWANCE;
        assert_eq!(server_wait(&date, now), Some(Duration::from_secs(7) + skew));
        let reset = headers(&[("x-ratelimit-reset", "784111790")]);
        assert_eq!(server_wait(&reset, now), Some(Duration::from_secs(20) + skew));
        let past = headers(&[("x-ratelimit-reset", "784111000")]);
        assert_eq!(server_wait(&past, now), Some(Duration::ZERO));
        let garbage = headers(&[("retry-after", "soon")]);
        assert_eq!(server_wait(&garbage, now), None);
        assert_eq!(server_wait(&HeaderMap::new(), now), None);
    }

    #[test]
    fn retry_after_wins_over_reset() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let both = headers(&[("retry-after", "3"), ("x-ratelimit-reset", "1060")]);
        assert_eq!(server_wait(&both, now), Some(Duration::from_secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let policy = RetryPolicy::with_max_attempts(6);
        let mut budget = RetryBudget::new(policy, 42);
        let mut delays = Vec::new();
        while let Some(delay) = budget.next_delay() {
            delays.push(delay);
        }
        assert_eq!(delays.len(), 5, "6 attempts leave 5 retries");
        for (n, delay) in delays.iter().enumerate() {
            let ceiling = Duration::from_millis(500) * 2u32.pow(n as u32);
            assert!(*delay <= ceiling, "retry {n}: {delay:?} over {ceiling:?}");
        }
        // The same seed gives the same delays: tests can rely on them.
        let mut again = RetryBudget::new(RetryPolicy::with_max_attempts(6), 42);
        let replay: Vec<_> = std::iter::from_fn(|| again.next_delay()).collect();
        assert_eq!(delays, replay);
    }

    #[tokio::test(start_paused = true)]
    async fn elapsed_time_ends_retries_before_attempts_do() {
        let mut policy = RetryPolicy::with_max_attempts(100);
        policy.max_elapsed = Duration::from_secs(60);
        let mut budget = RetryBudget::new(policy, 1);
        assert!(budget.next_delay().is_some());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(budget.next_delay(), None);
        assert_eq!(budget.attempt(), 2);
    }

    #[test]
    fn reresolves_and_rate_limits_have_their_own_bounds() {
        let mut policy = RetryPolicy::with_max_attempts(2);
        policy.max_reresolves = 2;
        policy.max_rate_limited = 3;
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _guard = rt.enter();
        let mut budget = RetryBudget::new(policy, 0);
        // Each refusal after storage accepted a URL earns a fresh one...
        assert!(budget.take_reresolve());
        budget.storage_accepted();
        assert!(budget.take_reresolve());
        budget.storage_accepted();
        // ...up to the bound.
        assert!(!budget.take_reresolve());
        assert!(budget.take_rate_limited() && budget.take_rate_limited());
        assert!(budget.take_rate_limited());
        assert!(!budget.take_rate_limited());
        // Neither spent an attempt.
        assert_eq!(budget.attempt(), 1);
    }

    #[test]
    fn a_fresh_url_refused_again_ends_the_row() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _guard = rt.enter();
        let mut budget = RetryBudget::new(RetryPolicy::with_max_attempts(8), 0);
        assert!(budget.take_reresolve(), "an expired URL gets one fresh URL");
        assert!(!budget.take_reresolve(), "the fresh URL refused too: no loop");
    }
}
