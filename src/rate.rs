//! The API budget: the `--rate` spec, the limiter every API call waits on,
//! and the pause a 429 puts on all of them.
//!
//! The vendor counts calls per key in fixed windows (2 a second and 60 a
//! minute). A token bucket with a burst lets up to twice a window's quota
//! through across a window boundary, so we pace instead: with a burst of one,
//! calls spaced at least `W / N` apart can never put more than `N` calls in
//! any window of length `W`, however the server aligns its windows. When
//! several limits are given, the widest spacing satisfies all of them at once,
//! so one governor limiter paced at that spacing enforces the whole spec.
//!
//! Time comes from tokio's clock, so tests can run a limiter under a paused
//! clock and see exact instants.

use std::fmt;
use std::num::NonZeroU32;
use std::ops::Add;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

/// How much slower than the exact limit we pace, so that jitter between our
/// clock and the server's (network latency, scheduling) cannot push one call
/// too many into a server-side window. One percent costs 0.6 s a minute.
const PACING_MARGIN: f64 = 0.01;

/// A fixed allowance per window on top of the margin: one percent of a
/// second is only 10 ms, less than a new TLS connection can delay one call
/// against the next. 50 ms costs 0.1% of a minute's calls, 5% of a second's.
const JITTER_ALLOWANCE: Duration = Duration::from_millis(50);

/// One limit of the spec: at most `calls` in any window of `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub calls: u32,
    pub window: Duration,
}

impl Limit {
    /// The spacing between calls that keeps this limit in any window.
    pub fn spacing(&self) -> Duration {
        self.window / self.calls
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.window.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.calls)
    }
}

/// The parsed `--rate` option: one or more limits, all enforced together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateSpec {
    limits: Vec<Limit>,
}

impl RateSpec {
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// The spacing that satisfies every limit: the widest of them.
    pub fn spacing(&self) -> Duration {
        self.limits.iter().map(Limit::spacing).max().unwrap_or_default()
    }

    /// Calls per second the spec allows when sustained.
    pub fn sustained_per_second(&self) -> f64 {
        1.0 / self.spacing().as_secs_f64()
    }
}

impl Default for RateSpec {
    /// The vendor's documented limits for GET calls.
    fn default() -> Self {
        "2/s,60/min".parse().expect("the default rate spec parses")
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.limits.iter().map(Limit::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for RateSpec {
    type Err = String;

    /// Parses `N/s`, `N/min`, `N/h`, comma separated, e.g. `2/s,60/min`.
    fn from_str(text: &str) -> Result<Self, String> {
        let limits = text.split(',').map(parse_limit).collect::<Result<Vec<_>, _>>()?;
        Ok(RateSpec { limits })
    }
}

fn parse_limit(part: &str) -> Result<Limit, String> {
    let part = part.trim();
    let bad = || format!("bad rate {part:?}: expected N/s, N/min or N/h, e.g. 2/s,60/min");
    let (count, unit) = part.split_once('/').ok_or_else(bad)?;
    let calls: u32 = count.trim().parse().map_err(|_| bad())?;
    if calls == 0 {
        return Err(format!("bad rate {part:?}: the number of calls must be at least 1"));
    }
    let window = match unit.trim() {
        "s" | "sec" => Duration::from_secs(1),
        "min" | "m" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    Ok(Limit { calls, window })
}

/// An instant on tokio's clock, as governor wants it: nanoseconds since
/// the limiter was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioInstant(u64);

impl Add<Nanos> for TokioInstant {
    type Output = Self;

    fn add(self, other: Nanos) -> Self {
        TokioInstant(self.0 + other.as_u64())
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(self.0.saturating_sub(earlier.0))
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        TokioInstant(self.0.saturating_sub(duration.as_u64()))
    }
}

/// Governor's view of tokio's (pausable) clock.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        let nanos = self.origin.elapsed().as_nanos();
        TokioInstant(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

type Pacer = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

/// The gate every API call passes: the pacer for the key, plus the pause
/// that a 429 closes for every task until the server's window resets.
pub struct ApiGate {
    /// The time between calls, margin included.
    spacing: Duration,
    /// Taken in turn (tokio's mutex is fair), so rows reach the API in the
    /// order they asked and none is starved by luckier wake-ups.
    turn: tokio::sync::Mutex<()>,
    pacer: Pacer,
    clock: TokioClock,
    paused_until: Mutex<Option<Instant>>,
    calls: AtomicU64,
    rate_limited: AtomicU64,
    /// When the first and the latest call went through.
    span: Mutex<Option<(Instant, Instant)>>,
    /// The wall clock when the gate was made, to read server dates against.
    wall_at_origin: SystemTime,
}

impl fmt::Debug for ApiGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiGate")
            .field("calls", &self.calls())
            .field("rate_limited", &self.rate_limited())
            .finish_non_exhaustive()
    }
}

/// The spacing the gate paces at: for each limit, its window stretched by
/// the margin and the jitter allowance, shared among its calls; the widest
/// of these satisfies every limit.
fn paced_spacing(spec: &RateSpec) -> Duration {
    let stretched = |limit: &Limit| {
        (limit.window.mul_f64(1.0 + PACING_MARGIN) + JITTER_ALLOWANCE) / limit.calls
    };
    spec.limits().iter().map(stretched).max().unwrap_or_default()
}

impl ApiGate {
    pub fn new(spec: &RateSpec) -> ApiGate {
        let spacing = paced_spacing(spec);
        let quota = Quota::with_period(spacing)
            .expect("a rate spec always has a non-zero spacing")
            .allow_burst(NonZeroU32::MIN);
        let clock = TokioClock { origin: Instant::now() };
        ApiGate {
            spacing,
            turn: tokio::sync::Mutex::new(()),
            pacer: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            paused_until: Mutex::new(None),
            calls: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            span: Mutex::new(None),
            wall_at_origin: SystemTime::now(),
        }
    }

    /// Waits until an API call may be sent now, and counts it.
    pub async fn acquire(&self) {
        let _turn = self.turn.lock().await;
        loop {
            self.wait_out_pause().await;
            while let Err(not_until) = self.pacer.check() {
                let wait = not_until.wait_time_from(self.clock.now());
                tokio::time::sleep(wait).await;
            }
            // A 429 seen by another task while we waited for our turn closes
            // the gate for us too: the token is spent, but sending now would
            // only earn another 429.
            if self.pause_remaining().is_none() {
                break;
            }
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut span = self.span.lock().expect("span lock poisoned");
        *span = Some(span.map_or((now, now), |(first, _)| (first, now)));
    }

    /// The achieved rate: calls per second between the first and the
    /// latest call (zero before the second call).
    pub fn calls_per_second(&self) -> f64 {
        let span = *self.span.lock().expect("span lock poisoned");
        let Some((first, last)) = span else { return 0.0 };
        let seconds = last.duration_since(first).as_secs_f64();
        if seconds > 0.0 { (self.calls() - 1) as f64 / seconds } else { 0.0 }
    }

    /// Closes the gate for every task for `wait` from now (or longer, if a
    /// pause already in force ends later).
    pub fn pause_for(&self, wait: Duration) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + wait;
        let mut paused = self.paused_until.lock().expect("pause lock poisoned");
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    /// How long the current 429 pause still lasts, if one is in force.
    pub fn pause_remaining(&self) -> Option<Duration> {
        let paused = *self.paused_until.lock().expect("pause lock poisoned");
        paused
            .map(|until| until.saturating_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    async fn wait_out_pause(&self) {
        while let Some(left) = self.pause_remaining() {
            tokio::time::sleep(left).await;
        }
    }

    /// The wall-clock time now, advanced by tokio's clock from when the gate
    /// was made. Server dates (`Retry-After`, `X-RateLimit-Reset`) are read
    /// against it, so a step of the system clock mid-run cannot shorten a
    /// pause, and a test's paused clock moves it too.
    pub fn wall_now(&self) -> SystemTime {
        self.wall_at_origin + self.clock.origin.elapsed()
    }

    /// The time between API calls, as paced.
    pub fn spacing(&self) -> Duration {
        self.spacing
    }

    /// API calls let through so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// 429 answers reported so far.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_combinations() {
        let spec: RateSpec = "2/s, 60/min,1000/h".parse().unwrap();
        let windows: Vec<u64> = spec.limits().iter().map(|l| l.window.as_secs()).collect();
        assert_eq!(windows, [1, 60, 3600]);
        assert_eq!(spec.to_string(), "2/s,60/min,1000/h");
        assert_eq!(spec.spacing(), Duration::from_millis(3600));
    }

    #[test]
    fn default_spec_is_one_call_a_second() {
        let spec = RateSpec::default();
        assert_eq!(spec.spacing(), Duration::from_secs(1));
        assert_eq!(spec.to_string(), "2/s,60/min");
    }

    #[test]
    fn rejects_bad_specs_with_the_offending_part() {
        for bad in ["", "2", "2/day", "x/s", "0/s", "2/s,,", "-1/min"] {
            let err = bad.parse::<RateSpec>().unwrap_err();
            assert!(err.contains("bad rate"), "{bad:?} gave {err}");
        }
        let err = "2/s,5/fortnight".parse::<RateSpec>().unwrap_err();
        assert!(err.contains("5/fortnight"), "{err}");
    }

    /// Takes `n` permits back to back and returns when each was granted,
    /// in seconds since the start.
    async fn grant_times(gate: &ApiGate, n: usize) -> Vec<f64> {
        let start = Instant::now();
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            gate.acquire().await;
            times.push(start.elapsed().as_secs_f64());
        }
        times
    }

    /// The most calls that fall in any half-open window of `len` seconds.
    fn most_in_any_window(times: &[f64], len: f64) -> usize {
        (0..times.len())
            .map(|i| times[i..].iter().take_while(|&&t| t < times[i] + len).count())
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_n_calls_in_any_window() {
        let gate = ApiGate::new(&"2/s,60/min".parse().unwrap());
        let times = grant_times(&gate, 150).await;
        assert!(most_in_any_window(&times, 60.0) <= 60);
        assert!(most_in_any_window(&times, 1.0) <= 2);
        // No burst: the second call already waits a full spacing.
        assert!(times[1] >= 1.0, "second call at {}", times[1]);
        // And pacing costs no more than the margin: within 2% of 1/s.
        let rate = (times.len() - 1) as f64 / (times[times.len() - 1] - times[0]);
        assert!(rate > 0.98 && rate <= 1.0, "achieved {rate}/s");
    }

    #[tokio::test(start_paused = true)]
    async fn every_limit_of_every_spec_holds_in_any_window() {
        let specs = ["5/s", "10/s,100/min", "1000/h", "3/s,100/min,2000/h", "2/s,60/min"];
        for text in specs {
            let spec: RateSpec = text.parse().unwrap();
            let gate = ApiGate::new(&spec);
            // Enough calls to fill the widest window and then some.
            let widest = spec.limits().iter().map(|l| l.calls).max().unwrap() as usize;
            let times = grant_times(&gate, widest * 2 + 10).await;
            for limit in spec.limits() {
                let most = most_in_any_window(&times, limit.window.as_secs_f64());
                assert!(most <= limit.calls as usize, "{text}: {most} calls in one {limit}");
            }
            // The margin and the allowance cost at most 6% of the rate.
            let span = times[times.len() - 1] - times[0];
            let rate = (times.len() - 1) as f64 / span;
            let allowed = spec.sustained_per_second();
            assert!(rate <= allowed && rate > allowed * 0.94, "{text}: {rate}/s of {allowed}/s");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_caller_then_pacing_resumes() {
        let gate = std::sync::Arc::new(ApiGate::new(&"10/s".parse().unwrap()));
        gate.acquire().await;
        gate.pause_for(Duration::from_secs(30));
        let start = Instant::now();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move {
                    gate.acquire().await;
                    start.elapsed()
                })
            })
            .collect();
        let mut waited = Vec::new();
        for waiter in waiters {
            waited.push(waiter.await.unwrap().as_secs_f64());
        }
        waited.sort_by(f64::total_cmp);
        assert!(waited[0] >= 30.0, "a caller went through during the pause: {waited:?}");
        // After the pause, calls are paced again rather than released at once.
        assert!(waited[2] - waited[0] >= 0.2, "{waited:?}");
        assert_eq!(gate.rate_limited(), 1);
        assert_eq!(gate.calls(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_pause_never_cuts_a_longer_one() {
        let gate = ApiGate::new(&"1/s".parse().unwrap());
        gate.pause_for(Duration::from_secs(20));
        gate.pause_for(Duration::from_secs(5));
        let left = gate.pause_remaining().unwrap();
        assert_eq!(left, Duration::from_secs(20));
    }
}
