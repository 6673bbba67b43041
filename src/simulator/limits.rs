//! Fixed-window rate limits, counted the way Laravel's throttle middleware counts them.
//!
//! Each limit keeps its own window. A window opens at the first counted request when none
//! is open and lasts the limit's length whatever happens inside it; the count starts over
//! only when a new window opens. Windows are not aligned to the clock, so a burst that
//! straddles two windows can pass up to twice a limit in a short span, as on the vendor.
//!
//! Every limit is checked before any is counted, so a refused request costs nothing and a
//! retry after the reset succeeds. (Laravel counts limits one by one and may charge the
//! earlier ones for a request a later one refuses; the simulator deliberately does not.)

use std::time::Duration;

use tokio::time::Instant;

/// At most `max` requests per `window`, counted in fixed windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowLimit {
    /// Requests allowed in one window; 0 is treated as 1.
    pub max: u32,
    /// Length of a window, from the first request it counts.
    pub window: Duration,
}

impl WindowLimit {
    /// At most `max` requests per `window`.
    pub const fn new(max: u32, window: Duration) -> WindowLimit {
        WindowLimit { max, window }
    }
}

/// How many requests one limit still allows in its current window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Standing {
    pub(super) max: u32,
    pub(super) remaining: u32,
}

/// The outcome of one request against every limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Counted. `tightest` is the limit with the fewest requests left (none if no limits).
    Allowed { tightest: Option<Standing> },
    /// Refused, not counted: the limit allowing `max` is spent until its window `ends`.
    Refused { max: u32, ends: Instant },
}

/// The counting state of every limit for one key.
#[derive(Debug)]
pub(super) struct FixedWindows {
    limits: Vec<WindowLimit>,
    windows: Vec<Option<Window>>,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    ends: Instant,
    count: u32,
}

impl FixedWindows {
    /// Fresh state with no window open.
    pub(super) fn new(limits: &[WindowLimit]) -> FixedWindows {
        // A limit of 0 could never open a window to report a reset time, so it means 1.
        let limits: Vec<_> =
            limits.iter().map(|limit| WindowLimit { max: limit.max.max(1), ..*limit }).collect();
        let windows = vec![None; limits.len()];
        FixedWindows { limits, windows }
    }

    /// Judges a request arriving at `now`, counting it against every limit if allowed.
    pub(super) fn hit(&mut self, now: Instant) -> Verdict {
        self.close_ended(now);
        match self.refusal() {
            Some(refused) => refused,
            None => self.count(now),
        }
    }

    fn close_ended(&mut self, now: Instant) {
        for window in &mut self.windows {
            if window.is_some_and(|open| now >= open.ends) {
                *window = None;
            }
        }
    }

    /// The first spent limit in configuration order, as Laravel reports it.
    fn refusal(&self) -> Option<Verdict> {
        self.limits.iter().zip(&self.windows).find_map(|(limit, window)| {
            let open = (*window)?;
            (open.count >= limit.max)
                .then_some(Verdict::Refused { max: limit.max, ends: open.ends })
        })
    }

    fn count(&mut self, now: Instant) -> Verdict {
        let mut tightest: Option<Standing> = None;
        for (limit, window) in self.limits.iter().zip(&mut self.windows) {
            let open = window.get_or_insert(Window { ends: now + limit.window, count: 0 });
            open.count += 1;
            let standing = Standing { max: limit.max, remaining: limit.max - open.count };
            if tightest.is_none_or(|t| standing.remaining < t.remaining) {
                tightest = Some(standing);
            }
        }
        Verdict::Allowed { tightest }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const SECOND: Duration = Duration::from_secs(1);

    fn limiter(limits: &[(u32, u64)]) -> FixedWindows {
        let limits: Vec<_> = limits
            .iter()
            .map(|&(max, secs)| WindowLimit::new(max, Duration::from_secs(secs)))
            .collect();
        FixedWindows::new(&limits)
    }

    fn allowed(verdict: Verdict) -> bool {
        matches!(verdict, Verdict::Allowed { .. })
    }

    #[tokio::test(start_paused = true)]
    async fn third_request_in_a_second_is_refused_until_the_window_ends() {
        let mut limits = limiter(&[(2, 1), (60, 60)]);
        let start = Instant::now();
        assert!(allowed(limits.hit(Instant::now())));
        assert!(allowed(limits.hit(Instant::now())));
        let refused = Verdict::Refused { max: 2, ends: start + SECOND };
        assert_eq!(limits.hit(Instant::now()), refused);
        advance(Duration::from_millis(999)).await;
        assert_eq!(limits.hit(Instant::now()), refused);
        advance(Duration::from_millis(1)).await;
        assert!(allowed(limits.hit(Instant::now())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_opens_at_its_first_request_not_on_a_clock_boundary() {
        let mut limits = limiter(&[(2, 1)]);
        advance(Duration::from_millis(300)).await;
        let opened = Instant::now();
        assert!(allowed(limits.hit(Instant::now())));
        advance(Duration::from_millis(900)).await;
        assert!(allowed(limits.hit(Instant::now())));
        let refused = Verdict::Refused { max: 2, ends: opened + SECOND };
        assert_eq!(limits.hit(Instant::now()), refused);
        advance(Duration::from_millis(100)).await;
        assert!(allowed(limits.hit(Instant::now())));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_requests_are_not_counted_by_any_limit() {
        let mut limits = limiter(&[(1, 1), (2, 10)]);
        let start = Instant::now();
        assert!(allowed(limits.hit(Instant::now())));
        assert!(!allowed(limits.hit(Instant::now())));
        advance(SECOND).await;
        assert!(allowed(limits.hit(Instant::now())));
        advance(SECOND).await;
        // The ten-second limit is spent: this refusal must not open a one-second window.
        let refused = Verdict::Refused { max: 2, ends: start + 10 * SECOND };
        assert_eq!(limits.hit(Instant::now()), refused);
        assert!(limits.windows[0].is_none());
        advance(8 * SECOND).await;
        assert!(allowed(limits.hit(Instant::now())));
    }

    #[tokio::test(start_paused = true)]
    async fn allowed_requests_report_the_tightest_limit() {
        let mut limits = limiter(&[(60, 60), (2, 1)]);
        let tightest = |max, remaining| Some(Standing { max, remaining });
        assert_eq!(limits.hit(Instant::now()), Verdict::Allowed { tightest: tightest(2, 1) });
        assert_eq!(limits.hit(Instant::now()), Verdict::Allowed { tightest: tightest(2, 0) });
        assert_eq!(limiter(&[]).hit(Instant::now()), Verdict::Allowed { tightest: None });
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_limit_allows_one_request_per_window() {
        let mut limits = limiter(&[(0, 1)]);
        assert!(allowed(limits.hit(Instant::now())));
        assert!(!allowed(limits.hit(Instant::now())));
    }
}
