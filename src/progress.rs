//! Progress of a run, shown to whoever is watching it.
//!
//! Two kinds of people start a run. An investigator at a terminal wants a
//! live bar; a scheduler (cron, systemd, Kubernetes) sends stderr to a log
//! file, where a redrawn bar is only escape codes, so it gets one plain log
//! line every minute instead. [`choose`] picks between them and
//! [`Reporter`] draws whichever was chosen from a [`Source`] of
//! [`Snapshot`]s that the run provides.
//!
//! The ETA comes from the API budget rather than from the download speed:
//! every row needs at least one paced API call, so once downloads keep up,
//! the calls still to make times their spacing is what bounds the run.
//!
//! While the bar is on screen, log lines must go through it or they would be
//! drawn over it. [`log_writer`] is the writer `main` gives the tracing
//! subscriber at start; it prints through whichever bar a [`Reporter`] has
//! registered, and straight to stderr when there is none.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::instrument::WithSubscriber;
use tracing_subscriber::fmt::MakeWriter;

use crate::disk::human_bytes;

/// How often the bar is refreshed: often enough for the spinner to look
/// alive, rarely enough that taking snapshots costs nothing noticeable.
const BAR_TICK: Duration = Duration::from_millis(125);

/// The bar's draw rate on stderr. Each refresh draws more than once (the
/// message, then the position), and the draw target drops the surplus.
const BAR_HZ: u8 = 10;

/// The span of the moving download speed: long enough to smooth the bursts
/// of concurrent downloads, short enough to show a stall within seconds.
const SPEED_WINDOW: Duration = Duration::from_secs(5);

/// The shortest interval between progress lines; tokio's interval cannot
/// take a zero period, and more than one line a second would flood a log.
const MIN_LINE_EVERY: Duration = Duration::from_secs(1);

/// How far a run has come, as the run sees it at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Rows in the manifest, once a background pass has counted them.
    pub rows_total: Option<u64>,
    /// Rows with a final outcome, whatever their status.
    pub rows_done: u64,
    /// Of the rows done, those neither `ok` nor `duplicate`.
    pub rows_failed: u64,
    /// Body bytes received so far, across all downloads.
    pub bytes_received: u64,
    /// API calls made so far.
    pub api_calls: u64,
    /// Rows that still need an API call, once the total is known.
    pub api_calls_left: Option<u64>,
    /// The time between API calls at the configured rate.
    pub api_spacing: Duration,
    /// How long the pause a 429 imposed still lasts, while one is in force.
    pub paused_for: Option<Duration>,
    /// Time since the run started.
    pub elapsed: Duration,
}

/// Where a [`Reporter`] reads progress from; the run implements it.
pub trait Source: Send + Sync + 'static {
    /// The run's progress now. Called from the async runtime several times a
    /// second while a bar is drawn, so it must be cheap and must not block.
    fn snapshot(&self) -> Snapshot;
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A live bar on stderr, for a person at a terminal.
    Bar,
    /// A plain log line every `every`, for a log file nobody watches live.
    Lines { every: Duration },
    /// Nothing; log lines still appear.
    Quiet,
}

/// The mode for a run: a bar on a terminal, lines otherwise, and neither
/// when `quiet` is set.
pub fn choose(stderr_is_terminal: bool, every: Duration, quiet: bool) -> Mode {
    if quiet {
        Mode::Quiet
    } else if stderr_is_terminal {
        Mode::Bar
    } else {
        Mode::Lines { every }
    }
}

/// Shows a run's progress until [`Reporter::finish`].
///
/// It runs as a tokio task, ticking at the mode's rate, so it must be
/// started inside a runtime. Dropping it stops the task too, but only
/// `finish` waits for it to end.
#[derive(Debug)]
pub struct Reporter {
    /// Dropping the sender is the stop signal: the task's receiver then
    /// resolves, and no message is ever sent.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

impl Reporter {
    /// Starts showing progress in `mode`; a bar draws to stderr.
    pub fn start(mode: Mode, source: Arc<dyn Source>) -> Reporter {
        Reporter::start_with_target(mode, source, ProgressDrawTarget::stderr_with_hz(BAR_HZ))
    }

    /// As [`Reporter::start`], but a bar draws to `target` (tests draw into
    /// memory). `target` is unused in the other modes. While the bar is
    /// drawn, lines written through [`log_writer`] are printed above it.
    pub fn start_with_target(
        mode: Mode,
        source: Arc<dyn Source>,
        target: ProgressDrawTarget,
    ) -> Reporter {
        match mode {
            Mode::Quiet => Reporter { stop: None, task: None, bar: None },
            Mode::Lines { every } => Reporter::start_lines(every, source),
            Mode::Bar => Reporter::start_bar(target, source),
        }
    }

    fn start_lines(every: Duration, source: Arc<dyn Source>) -> Reporter {
        let every = every.max(MIN_LINE_EVERY);
        // The first line comes after one interval: a line at the start
        // would only say that nothing has happened yet.
        let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
        // After a stalled runtime, one late line is enough; a burst of
        // catch-up lines would all say the same thing.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut lines = LineLog::new(source.snapshot());
        let (stop, task) = spawn_ticker(ticker, move || lines.emit(&source.snapshot()));
        Reporter { stop: Some(stop), task: Some(task), bar: None }
    }

    fn start_bar(target: ProgressDrawTarget, source: Arc<dyn Source>) -> Reporter {
        let mut view = BarView::new(target, source.snapshot());
        let bar = view.bar.clone();
        set_screen_bar(Some(bar.clone()));
        let mut ticker = tokio::time::interval(BAR_TICK);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let (stop, task) = spawn_ticker(ticker, move || view.update(&source.snapshot()));
        Reporter { stop: Some(stop), task: Some(task), bar: Some(bar) }
    }

    /// Stops showing progress and clears the bar; the run prints its own
    /// closing summary after this.
    pub async fn finish(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            // A panic in a progress display must not fail the run; it is
            // only worth a warning.
            if let Err(error) = task.await {
                tracing::warn!(error = %error, "the progress display stopped early");
            }
        }
        self.clear_bar();
    }

    /// Unregisters the bar before clearing it, so that no log line is
    /// printed through a bar that is gone.
    fn clear_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            set_screen_bar(None);
            bar.finish_and_clear();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.clear_bar();
    }
}

/// Spawns a task that calls `each` on every tick until the returned sender
/// is dropped. The task logs to the subscriber current at the call, which
/// lets a test capture its lines with a scoped subscriber.
fn spawn_ticker(
    mut ticker: Interval,
    mut each: impl FnMut() + Send + 'static,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = async move {
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = ticker.tick() => each(),
            }
        }
    };
    (stop, tokio::spawn(task.with_current_subscriber()))
}

/// The bar and what it needs to remember between refreshes.
struct BarView {
    bar: ProgressBar,
    speed: MovingRate,
    total_known: bool,
}

impl BarView {
    fn new(target: ProgressDrawTarget, first: Snapshot) -> BarView {
        let bar = ProgressBar::with_draw_target(None, target).with_style(spinner_style());
        let mut speed = MovingRate::new(SPEED_WINDOW);
        speed.record(first.elapsed, first.bytes_received);
        BarView { bar, speed, total_known: false }
    }

    fn update(&mut self, snapshot: &Snapshot) {
        let speed = self.speed.record(snapshot.elapsed, snapshot.bytes_received);
        // Until the background count is done there is nothing to fill a bar
        // against, so a spinner with counts stands in for it.
        if snapshot.rows_total.is_some() && !self.total_known {
            self.bar.set_style(bar_style());
            self.total_known = true;
        }
        // Position and length first (this also ticks the spinner), then
        // the message, whose draw is the one that shows everything new.
        self.bar.update(|state| {
            state.set_pos(snapshot.rows_done);
            if let Some(total) = snapshot.rows_total {
                state.set_len(total);
            }
        });
        self.bar.set_message(render_bar_message(snapshot, speed));
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {wide_msg}").expect("the spinner template is valid")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} [{bar:24}] {wide_msg}")
        .expect("the bar template is valid")
        .progress_chars("=> ")
}

/// The progress lines and the speed between them.
struct LineLog {
    speed: MovingRate,
}

impl LineLog {
    fn new(first: Snapshot) -> LineLog {
        // Seeding with the start means the first line already has a speed.
        let mut speed = MovingRate::new(SPEED_WINDOW);
        speed.record(first.elapsed, first.bytes_received);
        LineLog { speed }
    }

    fn emit(&mut self, s: &Snapshot) {
        let speed = self.speed.record(s.elapsed, s.bytes_received);
        tracing::info!(
            rows_done = s.rows_done,
            rows_total = s.rows_total,
            rows_failed = s.rows_failed,
            bytes = s.bytes_received,
            bytes_per_second = speed.round() as u64,
            api_calls = s.api_calls,
            api_calls_left = s.api_calls_left,
            eta_s = eta(s).map(whole_seconds),
            paused_s = s.paused_for.map(whole_seconds),
            "{}",
            render_line(s, speed)
        );
    }
}

/// The bar on screen, if any. It is global because stderr is: `main`
/// installs the log writer once, before the run decides whether to draw a
/// bar, and the writer finds the bar here.
static SCREEN_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn set_screen_bar(bar: Option<ProgressBar>) {
    *SCREEN_BAR.lock().unwrap_or_else(PoisonError::into_inner) = bar;
}

fn screen_bar() -> Option<ProgressBar> {
    SCREEN_BAR.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// The writer for the tracing subscriber: see [`LogWriter`].
pub fn log_writer() -> LogWriter {
    LogWriter
}

/// A [`MakeWriter`] that prints each log line above the progress bar while
/// a [`Reporter`] draws one, and straight to stderr otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine { text: Vec::new() }
    }
}

/// One log event, collected whole and printed when dropped, so that an
/// event written in pieces still reaches the bar as one line.
#[derive(Debug)]
pub struct LogLine {
    text: Vec<u8>,
}

impl Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if self.text.is_empty() {
            return;
        }
        match screen_bar().filter(|bar| !bar.is_hidden()) {
            // `println` clears the bar, prints the line and redraws the bar
            // in one draw, so neither is left half on screen.
            Some(bar) => bar.println(String::from_utf8_lossy(&self.text).trim_end_matches('\n')),
            // Nowhere better to report a failed write of a log line.
            None => {
                let _ = io::stderr().write_all(&self.text);
            }
        }
    }
}

/// Bytes per second over the last few seconds of samples.
///
/// indicatif's own rate is per step of the bar, and a step here is a row,
/// whose size varies from bytes to gigabytes; so the speed is measured
/// from the byte counts in successive snapshots instead.
#[derive(Debug, Clone)]
pub struct MovingRate {
    window: Duration,
    /// (time since the run started, bytes received by then), oldest first.
    samples: VecDeque<(Duration, u64)>,
}

impl MovingRate {
    /// A rate over the last `window` of samples.
    pub fn new(window: Duration) -> MovingRate {
        MovingRate { window, samples: VecDeque::new() }
    }

    /// Records that `bytes` had been received by `at`, and returns the rate.
    pub fn record(&mut self, at: Duration, bytes: u64) -> f64 {
        // Time or bytes going backwards means a different run's numbers:
        // nothing before this sample is comparable.
        if self.samples.back().is_some_and(|&(t, b)| at < t || bytes < b) {
            self.samples.clear();
        }
        self.samples.push_back((at, bytes));
        // Keep one sample at or before the window's start, so the rate spans
        // the whole window, or the gap since the last sample when samples
        // are further apart than the window (as progress lines are).
        while self.samples.len() > 2 && at - self.samples[1].0 >= self.window {
            self.samples.pop_front();
        }
        self.rate()
    }

    /// Bytes per second between the oldest and newest sample kept; zero
    /// until two samples lie apart in time.
    pub fn rate(&self) -> f64 {
        let (Some(&(t0, b0)), Some(&(t1, b1))) = (self.samples.front(), self.samples.back()) else {
            return 0.0;
        };
        let seconds = (t1 - t0).as_secs_f64();
        if seconds > 0.0 { (b1 - b0) as f64 / seconds } else { 0.0 }
    }
}

/// How long the run still needs by its API budget: the calls left at the
/// configured spacing, after any 429 pause in force.
///
/// It is a floor rather than a promise: retries and refreshed URLs spend
/// more calls, and the last downloads finish after the last call. Unknown
/// until the rows have been counted, or when calls are left but no rate is.
pub fn eta(s: &Snapshot) -> Option<Duration> {
    let left = s.api_calls_left?;
    if left > 0 && s.api_spacing.is_zero() {
        return None;
    }
    let calls = s.api_spacing.saturating_mul(u32::try_from(left).unwrap_or(u32::MAX));
    Some(calls.saturating_add(s.paused_for.unwrap_or_default()))
}

/// The text beside the bar, e.g. `1200/5000 rows (3 failed) · 2.1 GiB ·
/// 14.2 MiB/s · 3800 API calls left · ETA 1h03m`. A 429 pause comes first,
/// where a narrow terminal cannot cut it off.
pub fn render_bar_message(s: &Snapshot, speed: f64) -> String {
    let mut parts = Vec::with_capacity(6);
    parts.extend(pause_note(s));
    parts.extend(status_parts(s, speed));
    parts.join(" · ")
}

/// A progress line for a log, e.g. `progress: 1200/5000 rows (3 failed),
/// 2.1 GiB, 14.2 MiB/s, 3800 API calls left, ETA 1h03m`, with the pause
/// note at the end while a 429 pause is in force. Plain text only.
pub fn render_line(s: &Snapshot, speed: f64) -> String {
    let mut parts = status_parts(s, speed);
    parts.extend(pause_note(s));
    format!("progress: {}", parts.join(", "))
}

/// Rows, bytes, speed, API calls left and ETA; the last two only once
/// they are known.
fn status_parts(s: &Snapshot, speed: f64) -> Vec<String> {
    let mut parts = vec![rows_text(s), human_bytes(s.bytes_received), speed_text(speed)];
    if let Some(left) = s.api_calls_left {
        let calls = if left == 1 { "call" } else { "calls" };
        parts.push(format!("{left} API {calls} left"));
    }
    if let Some(eta) = eta(s) {
        parts.push(format!("ETA {}", human_duration(eta)));
    }
    parts
}

fn rows_text(s: &Snapshot) -> String {
    let total = s.rows_total.map_or_else(|| "?".to_string(), |total| total.to_string());
    let rows = format!("{}/{total} rows", s.rows_done);
    if s.rows_failed > 0 { format!("{rows} ({} failed)", s.rows_failed) } else { rows }
}

fn speed_text(speed: f64) -> String {
    // A negative or NaN speed is a bug elsewhere; showing zero beats panicking.
    let per_second = if speed.is_finite() && speed > 0.0 { speed.round() as u64 } else { 0 };
    format!("{}/s", human_bytes(per_second))
}

fn pause_note(s: &Snapshot) -> Option<String> {
    let left = s.paused_for.filter(|left| !left.is_zero())?;
    Some(format!("paused by the API (429) for {}", human_duration(left)))
}

/// A duration as a person reads it: `45s`, `12m05s`, `1h03m`. Rounded up
/// to the second, so that a pause still in force never reads `0s`.
pub fn human_duration(duration: Duration) -> String {
    let seconds = whole_seconds(duration);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    /// Halfway through a 5000-row run at the default rate.
    fn midway() -> Snapshot {
        Snapshot {
            rows_total: Some(5000),
            rows_done: 1200,
            rows_failed: 3,
            bytes_received: 2150 * MIB,
            api_calls: 1210,
            api_calls_left: Some(3800),
            api_spacing: Duration::from_millis(1010),
            paused_for: None,
            elapsed: secs(1300),
        }
    }

    #[test]
    fn the_line_reads_like_the_documented_example() {
        let line = render_line(&midway(), 14.2 * MIB as f64);
        assert_eq!(
            line,
            "progress: 1200/5000 rows (3 failed), 2.1 GiB, 14.2 MiB/s, \
             3800 API calls left, ETA 1h03m"
        );
    }

    #[test]
    fn the_bar_message_has_the_same_facts() {
        let message = render_bar_message(&midway(), 14.2 * MIB as f64);
        assert_eq!(
            message,
            "1200/5000 rows (3 failed) · 2.1 GiB · 14.2 MiB/s · 3800 API calls left · ETA 1h03m"
        );
    }

    #[test]
    fn before_the_count_the_total_calls_and_eta_are_unknown() {
        let s = Snapshot { rows_done: 7, bytes_received: 1536, ..Snapshot::default() };
        assert_eq!(render_line(&s, 0.0), "progress: 7/? rows, 1.5 KiB, 0 B/s");
        assert_eq!(render_bar_message(&s, 0.0), "7/? rows · 1.5 KiB · 0 B/s");
        assert_eq!(eta(&s), None);
    }

    #[test]
    fn a_pause_is_noted_and_added_to_the_eta() {
        let s = Snapshot {
            api_calls_left: Some(10),
            api_spacing: secs(1),
            paused_for: Some(Duration::from_millis(22_300)),
            ..midway()
        };
        assert_eq!(eta(&s), Some(Duration::from_millis(32_300)));
        let line = render_line(&s, 0.0);
        assert!(line.ends_with(", ETA 33s, paused by the API (429) for 23s"), "{line}");
        let message = render_bar_message(&s, 0.0);
        assert!(message.starts_with("paused by the API (429) for 23s · 1200/5000"), "{message}");
    }

    #[test]
    fn eta_is_calls_left_times_spacing() {
        let s = Snapshot { api_calls_left: Some(3800), ..midway() };
        assert_eq!(eta(&s), Some(Duration::from_millis(3800 * 1010)));
        let done = Snapshot { api_calls_left: Some(0), ..midway() };
        assert_eq!(eta(&done), Some(Duration::ZERO));
        assert!(render_line(&done, 0.0).contains("0 API calls left, ETA 0s"));
    }

    #[test]
    fn no_rate_means_no_eta_rather_than_zero() {
        let s = Snapshot { api_spacing: Duration::ZERO, ..midway() };
        assert_eq!(eta(&s), None);
        assert!(!render_line(&s, 0.0).contains("ETA"));
    }

    #[test]
    fn one_call_left_is_singular() {
        let s = Snapshot { api_calls_left: Some(1), ..midway() };
        assert!(render_line(&s, 0.0).contains(", 1 API call left,"));
    }

    #[test]
    fn odd_speeds_show_as_zero() {
        for speed in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            assert_eq!(speed_text(speed), "0 B/s", "{speed}");
        }
    }

    #[test]
    fn durations_read_naturally() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(1), "1s"),
            (secs(59), "59s"),
            (secs(60), "1m00s"),
            (secs(725), "12m05s"),
            (secs(3780), "1h03m"),
            (secs(50 * 3600 + 59), "50h00m"),
        ];
        for (duration, text) in cases {
            assert_eq!(human_duration(duration), text, "{duration:?}");
        }
    }

    #[test]
    fn speed_follows_the_last_few_seconds() {
        let mut rate = MovingRate::new(secs(5));
        assert_eq!(rate.record(secs(0), 0), 0.0);
        // 10 MiB/s for 10 s...
        for t in 1..=10 {
            rate.record(secs(t), t * 10 * MIB);
        }
        assert_eq!(rate.rate(), 10.0 * MIB as f64);
        // ...then a stall: within the window the speed falls to zero, where
        // an average since the start would still claim 5 MiB/s.
        for t in 11..=15 {
            rate.record(secs(t), 100 * MIB);
        }
        assert_eq!(rate.rate(), 0.0);
        assert!(rate.samples.len() <= 7, "kept {} samples", rate.samples.len());
    }

    #[test]
    fn sparse_samples_give_the_rate_since_the_previous_one() {
        let mut rate = MovingRate::new(secs(5));
        rate.record(secs(0), 0);
        assert_eq!(rate.record(secs(60), 600 * MIB), 10.0 * MIB as f64);
        assert_eq!(rate.record(secs(120), 1800 * MIB), 20.0 * MIB as f64);
    }

    #[test]
    fn samples_going_backwards_start_over() {
        let mut rate = MovingRate::new(secs(5));
        rate.record(secs(10), 100 * MIB);
        assert_eq!(rate.record(secs(11), 50 * MIB), 0.0);
        assert_eq!(rate.record(secs(12), 60 * MIB), 10.0 * MIB as f64);
    }

    #[test]
    fn choose_follows_the_terminal_unless_quiet() {
        let every = secs(60);
        assert_eq!(choose(true, every, false), Mode::Bar);
        assert_eq!(choose(false, every, false), Mode::Lines { every });
        assert_eq!(choose(true, every, true), Mode::Quiet);
        assert_eq!(choose(false, every, true), Mode::Quiet);
    }

    #[test]
    fn both_templates_parse() {
        // They are constants, but a typo would only panic at run time.
        spinner_style();
        bar_style();
    }
}
