//! `--metrics-file`: the run's figures in Prometheus text format, for
//! node_exporter's textfile collector, so that a nightly job can be alerted
//! on ("no finished run for two days", "rows failing") like any other service.
//!
//! The file is replaced atomically (written aside, then renamed), so the
//! collector never reads half a file. Three timestamps tell runs apart:
//!
//! - `identifai_fetch_last_run_timestamp_seconds`: when the last run that
//!   wrote a report ended, however it ended;
//! - `identifai_fetch_last_finished_timestamp_seconds`: when a run last went
//!   through its whole manifest, not stopped by a signal, its deadline or an
//!   error, whatever its rows' outcomes. This is the one to alert on: it
//!   goes stale when the job stops running, keeps dying or never finishes;
//! - `identifai_fetch_last_success_timestamp_seconds`: when a finished run
//!   last stored every row. One submission that the API no longer has keeps
//!   it back for good, so it is for graphs, not for paging.
//!
//! The last two survive runs that did not reach them: they are read back
//! from the previous file. A run that could not start (a bad manifest, an
//! unusable store, the lock held) writes no file at all, so every timestamp
//! keeps its age.
//!
//! Every figure is a gauge of the last run, not a counter across runs, so
//! none ends in `_total`; units are suffixes, as Prometheus names them.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::report::{RowStatus, Summary};

const LAST_FINISHED: &str = "identifai_fetch_last_finished_timestamp_seconds";
const LAST_SUCCESS: &str = "identifai_fetch_last_success_timestamp_seconds";

/// When runs last reached the milestones that a later run may not reach,
/// Unix time; `None` until one did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Milestones {
    /// A run went through its whole manifest.
    pub finished: Option<f64>,
    /// A finished run stored every row.
    pub success: Option<f64>,
}

/// Writes the metrics of a finished run to `path`.
pub fn write(path: &Path, summary: &Summary, now: SystemTime) -> io::Result<()> {
    let previous = std::fs::read_to_string(path).unwrap_or_default();
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let finished = summary.stopped.is_none();
    let succeeded = finished && summary.all_succeeded();
    let milestones = Milestones {
        finished: if finished { Some(now) } else { read_back(&previous, LAST_FINISHED) },
        success: if succeeded { Some(now) } else { read_back(&previous, LAST_SUCCESS) },
    };
    let text = render(summary, now, milestones);
    let aside = path.with_extension("prom.new");
    std::fs::write(&aside, text)?;
    std::fs::rename(&aside, path)
}

/// The Prometheus text for a run.
pub fn render(summary: &Summary, now: f64, milestones: Milestones) -> String {
    let mut text = String::new();
    gauge_header(&mut text, "identifai_fetch_rows", "Rows of the last run, by status.");
    for status in RowStatus::ALL {
        let count = summary.count(status);
        let _ = writeln!(text, "identifai_fetch_rows{{status=\"{}\"}} {count}", status.as_str());
    }
    let figures = [
        (
            "identifai_fetch_rows_already_stored",
            "Rows answered from the store without an API call.",
            summary.already_stored as f64,
        ),
        (
            "identifai_fetch_downloaded_bytes",
            "Body bytes received from storage in the last run.",
            summary.bytes_downloaded as f64,
        ),
        ("identifai_fetch_api_calls", "API calls made by the last run.", summary.api_calls as f64),
        (
            "identifai_fetch_rate_limited",
            "429 answers met by the last run.",
            summary.rate_limited as f64,
        ),
        ("identifai_fetch_retries", "Retries made by the last run.", summary.retries as f64),
        (
            "identifai_fetch_duration_seconds",
            "How long the last run took.",
            summary.elapsed_seconds,
        ),
        (
            "identifai_fetch_interrupted",
            "1 if the last run was stopped by a signal or its deadline.",
            f64::from(u8::from(summary.interrupted)),
        ),
        (
            "identifai_fetch_stopped",
            "1 if the last run stopped early for any reason.",
            f64::from(u8::from(summary.stopped.is_some())),
        ),
        ("identifai_fetch_last_run_timestamp_seconds", "When the last run ended, Unix time.", now),
    ];
    for (name, help, value) in figures {
        gauge_header(&mut text, name, help);
        let _ = writeln!(text, "{name} {value}");
    }
    let carried = [
        (
            LAST_FINISHED,
            "When a run last went through its whole manifest, Unix time.",
            milestones.finished,
        ),
        (LAST_SUCCESS, "When a run last stored every row, Unix time.", milestones.success),
    ];
    for (name, help, value) in carried {
        if let Some(when) = value {
            gauge_header(&mut text, name, help);
            let _ = writeln!(text, "{name} {when}");
        }
    }
    text
}

fn gauge_header(text: &mut String, name: &str, help: &str) {
    let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// The value of the sample `name` in a previous file's text.
fn read_back(previous: &str, name: &str) -> Option<f64> {
    previous.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn summary(ok: u64, failed: u64) -> Summary {
        let mut summary = Summary { rows: ok + failed, api_calls: 7, ..Summary::default() };
        summary.by_status.insert("ok", ok);
        summary.by_status.insert("failed", failed);
        summary
    }

    #[test]
    fn every_status_and_figure_is_a_gauge() {
        let milestones = Milestones { finished: Some(1000.0), success: Some(900.0) };
        let text = render(&summary(3, 1), 1000.0, milestones);
        assert!(text.contains("identifai_fetch_rows{status=\"ok\"} 3\n"), "{text}");
        assert!(text.contains("identifai_fetch_rows{status=\"hash_mismatch\"} 0\n"), "{text}");
        assert!(text.contains("identifai_fetch_api_calls 7\n"), "{text}");
        assert!(text.contains("identifai_fetch_last_success_timestamp_seconds 900\n"), "{text}");
        // Each metric is declared once, before its samples.
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert_eq!(text.matches(&format!("# TYPE {name} ")).count(), 1, "{name}");
        }
    }

    #[test]
    fn the_last_success_survives_a_failed_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identifai_fetch.prom");
        let day_one = UNIX_EPOCH + Duration::from_secs(86_400);
        write(&path, &summary(2, 0), day_one).unwrap();
        write(&path, &summary(1, 1), day_one + Duration::from_secs(86_400)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("{LAST_SUCCESS} 86400\n")), "{text}");
        assert!(text.contains("identifai_fetch_last_run_timestamp_seconds 172800\n"), "{text}");
        assert!(!dir.path().join("identifai_fetch.prom.new").exists());
    }

    /// The samples of one metric name in a metrics file's text.
    fn sample(text: &str, name: &str) -> Option<String> {
        text.lines().find_map(|line| Some(line.strip_prefix(name)?.strip_prefix(' ')?.to_owned()))
    }

    #[test]
    fn failed_rows_finish_a_run_and_a_stop_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identifai_fetch.prom");
        let day = |n: u64| UNIX_EPOCH + Duration::from_secs(n * 86_400);

        // Night 1: one row is gone for good (not found); the run still finished.
        let mut missing_one = summary(2, 0);
        missing_one.rows += 1;
        missing_one.by_status.insert("not_found", 1);
        write(&path, &missing_one, day(1)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(sample(&text, LAST_FINISHED).as_deref(), Some("86400"), "{text}");
        assert_eq!(sample(&text, LAST_SUCCESS), None, "no run has stored every row yet");

        // Night 2: stopped by its deadline; it ended, but did not finish.
        let mut stopped = summary(1, 0);
        stopped.stopped = Some("the deadline passed".to_owned());
        stopped.interrupted = true;
        write(&path, &stopped, day(2)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let last_run = "identifai_fetch_last_run_timestamp_seconds";
        assert_eq!(sample(&text, last_run).as_deref(), Some("172800"), "{text}");
        assert_eq!(sample(&text, LAST_FINISHED).as_deref(), Some("86400"), "{text}");
        assert_eq!(sample(&text, "identifai_fetch_stopped").as_deref(), Some("1"), "{text}");

        // Night 3: every row stored; all three move.
        write(&path, &summary(3, 0), day(3)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for name in [last_run, LAST_FINISHED, LAST_SUCCESS] {
            assert_eq!(sample(&text, name).as_deref(), Some("259200"), "{name}: {text}");
        }
    }

    #[test]
    fn names_follow_the_prometheus_conventions() {
        let milestones = Milestones { finished: Some(2.0), success: Some(1.0) };
        let text = render(&Summary { bytes_downloaded: 4096, ..summary(1, 0) }, 3.0, milestones);
        assert_eq!(sample(&text, "identifai_fetch_downloaded_bytes").as_deref(), Some("4096"));
        for line in text.lines().filter(|line| line.starts_with("# HELP ")) {
            let mut words = line.split_whitespace().skip(2);
            let name = words.next().unwrap();
            let help = words.collect::<Vec<_>>().join(" ");
            let snake = name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            assert!(name.starts_with("identifai_fetch_") && snake, "{name}");
            // Gauges of the last run: `_total` would claim a counter.
            assert!(!name.ends_with("_total"), "{name}");
            if help.contains("Unix time") {
                assert!(name.ends_with("_timestamp_seconds"), "{name}");
            }
            if help.contains("bytes") || help.contains("How long") {
                assert!(name.ends_with("_bytes") || name.ends_with("_seconds"), "{name}");
            }
        }
    }
}
