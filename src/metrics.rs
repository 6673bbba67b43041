//! `--metrics-file`: the run's figures in Prometheus text format, for
//! node_exporter's textfile collector, so that a nightly job can be alerted
//! on ("no success for two days", "rows failing") like any other service.
//!
//! The file is replaced atomically (written aside, then renamed), so the
//! collector never reads half a file. The last success time survives runs
//! that did not succeed: it is read back from the previous file.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::report::{RowStatus, Summary};

const LAST_SUCCESS: &str = "identifai_fetch_last_success_timestamp_seconds";

/// Writes the metrics of a finished run to `path`.
pub fn write(path: &Path, summary: &Summary, now: SystemTime) -> io::Result<()> {
    let previous_success = std::fs::read_to_string(path).ok().and_then(|t| last_success(&t));
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let succeeded = summary.stopped.is_none() && summary.all_succeeded();
    let last_success = if succeeded { Some(now) } else { previous_success };
    let text = render(summary, now, last_success);
    let aside = path.with_extension("prom.new");
    std::fs::write(&aside, text)?;
    std::fs::rename(&aside, path)
}

/// The Prometheus text for a run.
pub fn render(summary: &Summary, now: f64, last_success: Option<f64>) -> String {
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
            "identifai_fetch_bytes_downloaded",
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
    if let Some(when) = last_success {
        gauge_header(&mut text, LAST_SUCCESS, "When a run last stored every row, Unix time.");
        let _ = writeln!(text, "{LAST_SUCCESS} {when}");
    }
    text
}

fn gauge_header(text: &mut String, name: &str, help: &str) {
    let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge");
}

fn last_success(previous: &str) -> Option<f64> {
    previous.lines().find_map(|line| line.strip_prefix(LAST_SUCCESS)?.trim().parse().ok())
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
        let text = render(&summary(3, 1), 1000.0, Some(900.0));
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
}
