//! The API budget, end to end: whole runs against the simulator under
//! tokio's paused clock, so minutes of pacing and 429 pauses take
//! milliseconds and every instant is exact.

mod common;

use std::time::Duration;

use identifai_fetch::api::ApiKey;
use identifai_fetch::rate::RateSpec;
use identifai_fetch::retry::RetryPolicy;
use identifai_fetch::run::{RunConfig, run};
use identifai_fetch::simulator::{
    Endpoint, ResetForm, RetryAfterForm, SimConfig, Simulator, WindowLimit,
};

/// A manifest of `rows` distinct small images; returns the run's config.
fn config_for(sim: &Simulator, dir: &std::path::Path, rows: usize) -> RunConfig {
    let body: String = (0..rows).map(|n| format!("image,img-{n:05}\n")).collect();
    let manifest = common::manifest(dir, &format!("type,identifier\n{body}"));
    let key = ApiKey::new(sim.api_key()).unwrap();
    let mut config =
        RunConfig::new(&manifest, &dir.join("out"), sim.api_url().parse().unwrap(), key);
    config.jitter_seed = Some(7);
    config
}

/// Small files keep the test about pacing, not bandwidth.
fn small_files(mut config: SimConfig, rows: usize) -> SimConfig {
    for n in 0..rows {
        config.sizes.insert(format!("img-{n:05}"), 2048);
    }
    config
}

/// Arrival times of the API calls, in seconds of simulator time.
fn api_arrivals(sim: &Simulator) -> Vec<(f64, Option<u16>)> {
    let received = sim.received().into_iter().filter(|r| r.endpoint == Endpoint::Api);
    received.map(|r| (r.at.as_secs_f64(), r.status)).collect()
}

/// The most calls in any half-open window of `len` seconds.
fn most_in_any_window(times: &[f64], len: f64) -> usize {
    let count_from = |i: usize| times[i..].iter().take_while(|&&t| t < times[i] + len).count();
    (0..times.len()).map(count_from).max().unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn the_default_rate_meets_the_vendor_limits_without_a_single_429() {
    let rows = 150;
    let sim = Simulator::start(small_files(SimConfig::default(), rows)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outcome = run(config_for(&sim, dir.path(), rows)).await.unwrap();

    assert_eq!(outcome.summary.count_succeeded(), rows as u64);
    assert_eq!(sim.rate_limited(), 0, "the paced client never meets the limit");
    let times: Vec<f64> = api_arrivals(&sim).into_iter().map(|(t, _)| t).collect();
    assert_eq!(times.len(), rows);
    assert!(most_in_any_window(&times, 60.0) <= 60);
    assert!(most_in_any_window(&times, 1.0) <= 2);
    // Within 2% of the allowed sustained rate of one call a second.
    let rate = (times.len() - 1) as f64 / (times[times.len() - 1] - times[0]);
    assert!((0.98..=1.0).contains(&rate), "achieved {rate:.4} calls/s");
    let reported = outcome.summary.api_calls_per_second;
    assert!((reported - rate).abs() < 0.01, "summary says {reported}, server saw {rate}");
}

/// A client configured faster than the server allows: the server's 429s
/// must pause every API call until the moment the server named, which is
/// `late` after the window's end when only a later `X-RateLimit-Reset`
/// names it. Headers that disagree tell which one the client followed.
async fn pauses_until_the_server_reset(form: RetryAfterForm, reset: ResetForm, late: f64) {
    let rows = 14;
    let config = SimConfig {
        limits: vec![WindowLimit::new(5, Duration::from_secs(60))],
        retry_after: form,
        rate_limit_reset: reset,
        ..small_files(SimConfig::default(), rows)
    };
    let sim = Simulator::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&sim, dir.path(), rows);
    config.rate = "10/s".parse::<RateSpec>().unwrap();
    // A 429 is not an attempt: one try each is enough.
    config.retry = RetryPolicy::with_max_attempts(1);
    let outcome = run(config).await.unwrap();

    assert_eq!(outcome.summary.count_succeeded(), rows as u64, "{:?}", outcome.summary);
    let arrivals = api_arrivals(&sim);
    // Replay the server's windows (each opens at the first call after the
    // last one closed) and check every 429 against them.
    // Times are whole milliseconds; the slack only absorbs float rounding.
    let closed = |opened: f64, at: f64| at + 1e-6 >= opened + 60.0;
    let mut opened = arrivals[0].0;
    let mut served = 0;
    for (i, (at, status)) in arrivals.iter().enumerate() {
        if closed(opened, *at) {
            (opened, served) = (*at, 0);
        }
        if *status == Some(302) {
            served += 1;
            continue;
        }
        assert_eq!(*status, Some(429), "at {at}");
        assert_eq!(served, 5, "a 429 before the window was spent: {arrivals:?}");
        // Nobody calls until the named moment, and then promptly. The
        // server rounds that moment up to a whole second.
        let (next, ends) = (arrivals[i + 1].0, opened + 60.0 + late);
        assert!(next + 1e-6 >= ends, "a call at {next} inside the pause: {arrivals:?}");
        assert!(next <= ends + 1.5, "paused longer than asked: {arrivals:?}");
    }
    let rate_limited = arrivals.iter().filter(|(_, s)| *s == Some(429)).count();
    assert_eq!(rate_limited, 2, "one 429 per exhausted window: {arrivals:?}");
    assert_eq!(outcome.summary.rate_limited, 2);
}

/// Far enough past the window's end that a client following it instead of
/// `Retry-After` would be caught by the bound on the pause.
const LATER: Duration = Duration::from_secs(30);

#[tokio::test(start_paused = true)]
async fn retry_after_in_seconds_pauses_every_worker() {
    pauses_until_the_server_reset(RetryAfterForm::Seconds, ResetForm::WindowEnd, 0.0).await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_in_seconds_alone_pauses_every_worker() {
    pauses_until_the_server_reset(RetryAfterForm::Seconds, ResetForm::Omitted, 0.0).await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_in_seconds_is_followed_over_a_later_reset() {
    pauses_until_the_server_reset(RetryAfterForm::Seconds, ResetForm::Later(LATER), 0.0).await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_an_http_date_pauses_every_worker() {
    pauses_until_the_server_reset(RetryAfterForm::HttpDate, ResetForm::WindowEnd, 0.0).await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_an_http_date_alone_pauses_every_worker() {
    pauses_until_the_server_reset(RetryAfterForm::HttpDate, ResetForm::Omitted, 0.0).await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_an_http_date_is_followed_over_a_later_reset() {
    pauses_until_the_server_reset(RetryAfterForm::HttpDate, ResetForm::Later(LATER), 0.0).await;
}

#[tokio::test(start_paused = true)]
async fn x_ratelimit_reset_alone_pauses_every_worker() {
    pauses_until_the_server_reset(RetryAfterForm::Omitted, ResetForm::WindowEnd, 0.0).await;
}

#[tokio::test(start_paused = true)]
async fn x_ratelimit_reset_alone_is_followed_to_the_moment_it_names() {
    // Neither the window's real end nor the client's default wait: the
    // pause lasts exactly as long as the header says.
    let late = LATER.as_secs_f64();
    pauses_until_the_server_reset(RetryAfterForm::Omitted, ResetForm::Later(LATER), late).await;
}

#[tokio::test(start_paused = true)]
async fn the_demo_runs_its_manifest_as_designed() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = identifai_fetch::demo::run_demo(dir.path()).await.unwrap().unwrap();
    let summary = &outcome.summary;
    assert!(identifai_fetch::demo::went_as_designed(summary), "{summary:?}");
    assert_eq!(summary.rows, 20);
    assert_eq!(summary.count(identifai_fetch::report::RowStatus::Duplicate), 1);
    assert_eq!((summary.api_calls, summary.rate_limited), (19, 0));
}

#[tokio::test(start_paused = true)]
async fn urls_that_are_always_expired_end_the_row_instead_of_looping() {
    let mut config = SimConfig { url_validity: Duration::ZERO, ..SimConfig::default() };
    config.limits.clear();
    let sim = Simulator::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut run_config = config_for(&sim, dir.path(), 1);
    run_config.rate = "100/s".parse().unwrap();
    let outcome = run(run_config).await.unwrap();
    let rows = common::report_rows(&dir.path().join("out"));
    assert_eq!(rows[0]["status"], "failed");
    assert!(rows[0]["error"].contains("Request has expired"), "{:?}", rows[0]);
    // The first URL, then one fresh URL; that one refused too ends the row.
    assert_eq!(rows[0]["api_calls"], "2");
    assert_eq!(outcome.summary.api_calls, 2);
}
