//! The simulator's clock: tokio time for every measurement, wall time only for headers.
//!
//! Measuring with `tokio::time::Instant` lets tests pause and advance time. Headers that
//! name a moment (`X-RateLimit-Reset`, an HTTP-date `Retry-After`, a URL's expiry) are
//! the wall time captured at start plus the tokio time elapsed since, so a paused test
//! sees header dates move exactly as far as it advanced the clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::Timestamp;
use jiff::fmt::rfc2822::DateTimePrinter;
use tokio::time::Instant;

/// The moment a simulator started, on both clocks.
#[derive(Clone, Copy, Debug)]
pub(super) struct Clock {
    started: Instant,
    unix_at_start: Duration,
}

impl Clock {
    /// Captures both clocks now.
    pub(super) fn start() -> Clock {
        // A system clock set before 1970 is not worth failing for; headers would just be odd.
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Clock { started: Instant::now(), unix_at_start: unix }
    }

    /// Tokio time elapsed since start.
    pub(super) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Time since the Unix epoch at `instant`, as the headers report it.
    pub(super) fn unix_at(&self, instant: Instant) -> Duration {
        self.unix_at_start + instant.saturating_duration_since(self.started)
    }
}

/// Whole seconds, rounded up, so a client told to wait that long is never early.
pub(super) fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// Formats Unix seconds as an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(super) fn http_date(unix_secs: u64) -> String {
    // Both fallbacks need a date past year 9999, which no simulator run reaches.
    let seconds = i64::try_from(unix_secs).unwrap_or(i64::MAX);
    let timestamp = Timestamp::from_second(seconds).unwrap_or(Timestamp::MAX);
    DateTimePrinter::new().timestamp_to_rfc9110_string(&timestamp).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_is_imf_fixdate() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn ceil_secs_rounds_up_fractions_only() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
        assert_eq!(ceil_secs(Duration::from_millis(3001)), 4);
        assert_eq!(ceil_secs(Duration::from_nanos(1)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unix_time_follows_the_tokio_clock() {
        let clock = Clock::start();
        let before = clock.unix_at(Instant::now());
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.unix_at(Instant::now()) - before, Duration::from_secs(90));
        assert_eq!(clock.elapsed(), Duration::from_secs(90));
    }
}
