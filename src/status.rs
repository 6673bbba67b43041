//! `identifai-fetch status DIR`: what a store holds and how its last runs
//! went, for a person at a terminal deciding whether to look closer.
//!
//! Everything is read, nothing is written or repaired: objects are counted
//! from their names and sizes (`verify` is what reads their bytes), requests
//! come from the journal, runs from `runs/<run-id>/summary.json`, downloads
//! in progress from `tmp/*.part`, and the lock's holder from `DIR/lock`.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use crate::disk::human_bytes;
use crate::journal::{self, JournalIndex};
use crate::lock::{self, Holder};
use crate::manifest::Kind;
use crate::report::RowStatus;
use crate::store::{StoreError, at};
use crate::verify::{self, NotAStore};

/// `render` lists this many failing requests; the journal has the rest.
const FAILING_SHOWN: usize = 20;
/// Longer requests and run outcomes are cut, to keep a line within a terminal.
const NAME_CHARS: usize = 40;
/// Longer errors are cut; the journal and the run's report have them whole.
const ERROR_CHARS: usize = 60;

/// A store at a glance.
#[derive(Debug, Clone)]
pub struct StoreStatus {
    /// Files under `objects/` that are named and placed as objects.
    pub objects: u64,
    pub object_bytes: u64,
    /// Requests the journal knows, whatever their outcome.
    pub known_requests: u64,
    /// Journal lines that did not parse (a torn write, or a hand edit).
    pub journal_skipped_lines: u64,
    /// Runs, newest first, at most as many as asked for.
    pub runs: Vec<RunInfo>,
    /// Requests whose latest outcome is not `ok`, newest first.
    pub failing: Vec<FailingRow>,
    /// Who holds the store's lock, if a run does.
    pub lock_holder: Option<String>,
    /// Downloads cut off or under way in `tmp/`, and the bytes they kept.
    pub partial_downloads: u64,
    pub partial_bytes: u64,
}

/// One run and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub run_id: String,
    /// The run's `summary.json`; `None` if the run never wrote it.
    pub summary: Option<serde_json::Value>,
    /// `ok`, `some rows failed`, `stopped: <reason>`, `interrupted: <reason>`,
    /// `in progress`, `unfinished (no summary)` or `unreadable summary: <error>`.
    pub outcome: String,
}

/// A request whose latest outcome in the journal is not `ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailingRow {
    pub kind: Kind,
    /// The id the API was asked for.
    pub id: String,
    pub identifier: String,
    /// The frame or track, empty for a whole submission.
    pub frame: String,
    pub status: RowStatus,
    pub error: String,
    /// When it ended, RFC 3339.
    pub at: String,
}

/// Why `status` could not read the store.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    NotAStore(#[from] NotAStore),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads the store at `dir`, with its `last` newest runs.
pub fn status(dir: &Path, last: usize) -> Result<StoreStatus, StatusError> {
    verify::check_store(dir)?;
    let listing = verify::list_objects(dir)?;
    let journal_path = dir.join(journal::FILE_NAME);
    let journal = JournalIndex::load(dir).map_err(at("cannot read", &journal_path))?;
    let holder = lock::current_holder(dir).map_err(at("cannot read the lock of", dir))?;
    let (partial_downloads, partial_bytes) = count_partials(&dir.join("tmp"))?;
    Ok(StoreStatus {
        objects: listing.objects.len() as u64,
        object_bytes: listing.objects.iter().map(|object| object.len).sum(),
        known_requests: journal.len() as u64,
        journal_skipped_lines: journal.skipped_lines,
        runs: list_runs(&dir.join("runs"), last, holder.as_ref())?,
        failing: failing_rows(&journal),
        lock_holder: holder.map(|holder| holder.to_string()),
        partial_downloads,
        partial_bytes,
    })
}

/// The `last` newest runs, newest first.
fn list_runs(
    runs: &Path,
    last: usize,
    holder: Option<&Holder>,
) -> Result<Vec<RunInfo>, StoreError> {
    let entries = match fs::read_dir(runs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(at("cannot list", runs)(e)),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(at("cannot list", runs))?;
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if let (true, Ok(id)) = (is_dir, entry.file_name().into_string()) {
            ids.push(id);
        }
    }
    ids.sort_by(|a, b| run_order(b).cmp(&run_order(a)));
    ids.truncate(last);
    let started = holder.and_then(holder_stamp);
    ids.into_iter().map(|id| read_run(&runs.join(&id), id, started.as_deref())).collect()
}

/// Run ids are start times (`20261203T021500Z`), with `-2`, `-3`… for runs
/// that started in the same second: sort the number as a number.
fn run_order(id: &str) -> (&str, u64) {
    match id.rsplit_once('-').and_then(|(stamp, n)| Some((stamp, n.parse().ok()?))) {
        Some(split) => split,
        None => (id, 1),
    }
}

/// The lock holder's start time in the form of a run id, to recognise its run.
fn holder_stamp(holder: &Holder) -> Option<String> {
    let started: jiff::Timestamp = holder.started.parse().ok()?;
    Some(started.strftime("%Y%m%dT%H%M%SZ").to_string())
}

/// Reads one run's summary. A run without one either crashed or is the run
/// holding the lock now: a run takes the lock before it names its folder, so
/// its id is no earlier than the lock's start time.
fn read_run(
    folder: &Path,
    run_id: String,
    lock_since: Option<&str>,
) -> Result<RunInfo, StoreError> {
    let path = folder.join("summary.json");
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let running = lock_since.is_some_and(|since| run_order(&run_id).0 >= since);
            let outcome = if running { "in progress" } else { "unfinished (no summary)" };
            return Ok(RunInfo { run_id, summary: None, outcome: outcome.to_owned() });
        }
        Err(e) => return Err(at("cannot read", &path)(e)),
    };
    let (summary, outcome) = match serde_json::from_slice(&text) {
        Ok(summary) => {
            let outcome = outcome_of(&summary);
            (Some(summary), outcome)
        }
        Err(error) => (None, format!("unreadable summary: {error}")),
    };
    Ok(RunInfo { run_id, summary, outcome })
}

/// How a finished run ended, from its summary (see `report::Summary`).
fn outcome_of(summary: &serde_json::Value) -> String {
    let stopped = summary["stopped"].as_str();
    if summary["interrupted"].as_bool() == Some(true) {
        return format!("interrupted: {}", stopped.unwrap_or("no reason recorded"));
    }
    if let Some(reason) = stopped {
        return format!("stopped: {reason}");
    }
    let count = |status: RowStatus| summary["by_status"][status.as_str()].as_u64().unwrap_or(0);
    let succeeded = count(RowStatus::Ok) + count(RowStatus::Duplicate);
    if Some(succeeded) == summary["rows"].as_u64() { "ok" } else { "some rows failed" }.to_owned()
}

/// Requests whose latest outcome is not `ok`, newest first.
fn failing_rows(journal: &JournalIndex) -> Vec<FailingRow> {
    let mut rows: Vec<FailingRow> = journal
        .iter()
        .filter(|(_, known)| known.status != RowStatus::Ok)
        .map(|((kind, id), known)| FailingRow {
            kind: *kind,
            id: id.clone(),
            identifier: known.identifier.clone(),
            frame: known.frame_or_track_id.clone(),
            status: known.status,
            error: known.error.clone(),
            at: known.at.clone(),
        })
        .collect();
    rows.sort_by(|a, b| (&b.at, a.kind, &a.id).cmp(&(&a.at, b.kind, &b.id)));
    rows
}

/// Counts `tmp/*.part` files and their bytes (their `.part.json` records aside).
fn count_partials(tmp: &Path) -> Result<(u64, u64), StoreError> {
    let entries = match fs::read_dir(tmp) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(at("cannot list", tmp)(e)),
    };
    let (mut count, mut bytes) = (0, 0);
    for entry in entries {
        let entry = entry.map_err(at("cannot list", tmp))?;
        let is_part = entry.file_name().to_str().is_some_and(|name| name.ends_with(".part"));
        // A file may finish and move into objects/ while we look: skip it.
        match entry.metadata() {
            Ok(meta) if is_part && meta.is_file() => {
                count += 1;
                bytes += meta.len();
            }
            _ => {}
        }
    }
    Ok((count, bytes))
}

/// The status as compact, aligned text for a terminal, ending in a newline.
pub fn render(status: &StoreStatus) -> String {
    let mut out = String::new();
    let summary = [
        [
            "objects".to_owned(),
            format!("{} ({})", status.objects, human_bytes(status.object_bytes)),
        ],
        ["requests".to_owned(), requests_line(status)],
        ["partial".to_owned(), partial_line(status)],
        ["lock".to_owned(), lock_line(status)],
    ];
    out.push_str(&table(&summary, ""));
    if !status.runs.is_empty() {
        let _ = writeln!(out, "\nruns, newest first");
        let rows: Vec<[String; 3]> = status.runs.iter().map(run_cells).collect();
        out.push_str(&table(&rows, "  "));
    }
    if !status.failing.is_empty() {
        let _ = writeln!(out, "\nnot ok, newest first");
        let shown = status.failing.iter().take(FAILING_SHOWN);
        let rows: Vec<[String; 5]> = shown.map(failing_cells).collect();
        out.push_str(&table(&rows, "  "));
        let more = status.failing.len().saturating_sub(FAILING_SHOWN);
        if more > 0 {
            let _ = writeln!(out, "  … and {more} more in {}", journal::FILE_NAME);
        }
    }
    out
}

fn requests_line(status: &StoreStatus) -> String {
    let mut line = format!("{} known, {} not ok", status.known_requests, status.failing.len());
    match status.journal_skipped_lines {
        0 => {}
        1 => line.push_str(" (1 unreadable journal line skipped)"),
        n => {
            let _ = write!(line, " ({n} unreadable journal lines skipped)");
        }
    }
    line
}

fn partial_line(status: &StoreStatus) -> String {
    match status.partial_downloads {
        0 => "none".to_owned(),
        1 => format!("1 download in tmp/ ({})", human_bytes(status.partial_bytes)),
        n => format!("{n} downloads in tmp/ ({})", human_bytes(status.partial_bytes)),
    }
}

fn lock_line(status: &StoreStatus) -> String {
    match &status.lock_holder {
        Some(holder) => format!("held by {holder}"),
        None => "free".to_owned(),
    }
}

fn run_cells(run: &RunInfo) -> [String; 3] {
    let detail = run.summary.as_ref().map(run_detail).unwrap_or_default();
    [run.run_id.clone(), clip(&run.outcome, NAME_CHARS), detail]
}

/// `18 ok, 2 not_found; 1.2 GiB in 12m03s` from a summary.
fn run_detail(summary: &serde_json::Value) -> String {
    let counts: Vec<String> = RowStatus::ALL
        .iter()
        .filter_map(|status| {
            let n = summary["by_status"][status.as_str()].as_u64().filter(|&n| n > 0)?;
            Some(format!("{n} {}", status.as_str()))
        })
        .collect();
    let received = human_bytes(summary["bytes_downloaded"].as_u64().unwrap_or(0));
    let elapsed = duration(summary["elapsed_seconds"].as_f64().unwrap_or(0.0));
    let counts = if counts.is_empty() { "no rows".to_owned() } else { counts.join(", ") };
    format!("{counts}; {received} in {elapsed}")
}

fn failing_cells(row: &FailingRow) -> [String; 5] {
    let request = if row.frame.is_empty() {
        row.identifier.clone()
    } else {
        format!("{} / {}", row.identifier, row.frame)
    };
    let kind = row.kind.to_string();
    [
        kind,
        clip(&request, NAME_CHARS),
        row.status.as_str().to_owned(),
        row.at.clone(),
        clip(&row.error, ERROR_CHARS),
    ]
}

/// Lines of cells with every column but the last padded to its widest cell.
fn table<const N: usize>(rows: &[[String; N]], indent: &str) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = indent.to_owned();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 < N {
                let _ = write!(line, "{cell:<width$}  ", width = widths[column]);
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The text on one line, cut to `max` characters.
fn clip(text: &str, max: usize) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max - 1).collect();
    format!("{cut}…")
}

/// Seconds as `45s`, `12m03s` or `2h05m`.
fn duration(seconds: f64) -> String {
    let total = seconds.max(0.0).round() as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runs_of_the_same_second_sort_by_their_number() {
        let mut ids =
            ["20261203T021500Z-10", "20261202T000000Z", "20261203T021500Z", "20261203T021500Z-2"];
        ids.sort_by(|a, b| run_order(b).cmp(&run_order(a)));
        assert_eq!(
            ids,
            ["20261203T021500Z-10", "20261203T021500Z-2", "20261203T021500Z", "20261202T000000Z"]
        );
    }

    #[test]
    fn a_summary_says_how_the_run_ended() {
        let ok = json!({"rows": 3, "by_status": {"ok": 2, "duplicate": 1}, "stopped": null});
        assert_eq!(outcome_of(&ok), "ok");
        let some = json!({"rows": 3, "by_status": {"ok": 2, "failed": 1}, "stopped": null});
        assert_eq!(outcome_of(&some), "some rows failed");
        let stopped =
            json!({"rows": 3, "stopped": "the API refused the key", "interrupted": false});
        assert_eq!(outcome_of(&stopped), "stopped: the API refused the key");
        let signal = json!({"rows": 3, "stopped": "SIGINT", "interrupted": true});
        assert_eq!(outcome_of(&signal), "interrupted: SIGINT");
    }

    #[test]
    fn times_read_easily() {
        assert_eq!(duration(44.6), "45s");
        assert_eq!(duration(723.0), "12m03s");
        assert_eq!(duration(7500.0), "2h05m");
    }

    #[test]
    fn tables_align_every_column_but_the_last() {
        let rows = [
            ["a".to_owned(), "bbb".to_owned(), "x".to_owned()],
            ["aaaa".to_owned(), "b".to_owned(), "".to_owned()],
        ];
        assert_eq!(table(&rows, "  "), "  a     bbb  x\n  aaaa  b\n");
    }

    #[test]
    fn long_or_multi_line_cells_are_cut() {
        assert_eq!(clip("a\nb", 5), "a b");
        let long = "x".repeat(100);
        let cut = clip(&long, 10);
        assert_eq!(cut, format!("{}…", "x".repeat(9)));
        assert!(cut.ends_with('…'));
    }
}
