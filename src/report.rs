//! The run's report: one line per manifest row, in manifest order.
//!
//! `DIR/runs/<run-id>/report.csv` and `report.jsonl` hold the same rows;
//! `summary.json` holds the counts. Rows finish out of order (downloads run
//! concurrently), so finished rows wait in a small buffer until every row
//! before them is written: a reader of a half-written report (after a crash)
//! sees a clean prefix of the manifest.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How a row ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowStatus {
    /// The file is in the store.
    Ok,
    /// Another row asked for the same file; it is in the store once.
    Duplicate,
    /// The API (or storage) says there is no such file.
    NotFound,
    /// The key may not download this file.
    Forbidden,
    /// The manifest row itself is unusable.
    Invalid,
    /// The file was downloaded (and stored under its own hash), but its hash
    /// is not the one the manifest expects.
    HashMismatch,
    /// Everything else: retries ran out, a refused redirect, a stopped run.
    Failed,
}

impl RowStatus {
    pub const ALL: [RowStatus; 7] = [
        RowStatus::Ok,
        RowStatus::Duplicate,
        RowStatus::NotFound,
        RowStatus::Forbidden,
        RowStatus::Invalid,
        RowStatus::HashMismatch,
        RowStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Ok => "ok",
            RowStatus::Duplicate => "duplicate",
            RowStatus::NotFound => "not_found",
            RowStatus::Forbidden => "forbidden",
            RowStatus::Invalid => "invalid",
            RowStatus::HashMismatch => "hash_mismatch",
            RowStatus::Failed => "failed",
        }
    }

    /// Whether the row's file is in the store.
    pub fn is_success(self) -> bool {
        matches!(self, RowStatus::Ok | RowStatus::Duplicate)
    }
}

/// One report line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowRecord {
    pub line: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub identifier: String,
    pub frame_or_track_id: String,
    pub status: RowStatus,
    pub sha256: String,
    pub bytes: Option<u64>,
    pub content_type: String,
    pub object: String,
    pub attempts: u32,
    pub api_calls: u32,
    pub error: String,
    /// Values of the manifest's other columns, in their order.
    #[serde(skip)]
    pub extra: Vec<String>,
}

impl RowRecord {
    /// A row's line with what it asked for; the outcome's fields are empty.
    pub fn new(
        line: u64,
        kind: &str,
        identifier: &str,
        frame_or_track_id: String,
        status: RowStatus,
    ) -> RowRecord {
        RowRecord {
            line,
            kind: kind.to_owned(),
            identifier: identifier.to_owned(),
            frame_or_track_id,
            status,
            sha256: String::new(),
            bytes: None,
            content_type: String::new(),
            object: String::new(),
            attempts: 0,
            api_calls: 0,
            error: String::new(),
            extra: Vec::new(),
        }
    }
}

/// The fixed columns, in order; the manifest's own columns follow.
pub const COLUMNS: [&str; 12] = [
    "line",
    "type",
    "identifier",
    "frame_or_track_id",
    "status",
    "sha256",
    "bytes",
    "content_type",
    "object",
    "attempts",
    "api_calls",
    "error",
];

/// What `summary.json` and the closing log line say.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub run_id: String,
    pub rows: u64,
    pub by_status: BTreeMap<&'static str, u64>,
    /// Rows answered from the store without an API call (counted as ok).
    pub already_stored: u64,
    /// Body bytes received from storage, finished downloads or not.
    pub bytes_downloaded: u64,
    pub api_calls: u64,
    pub rate_limited: u64,
    pub retries: u64,
    pub elapsed_seconds: f64,
    /// API calls per second between the first and the last call.
    pub api_calls_per_second: f64,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
    /// The stop was asked for (a signal or the deadline): the run can resume.
    pub interrupted: bool,
}

impl Summary {
    pub fn count(&self, status: RowStatus) -> u64 {
        self.by_status.get(status.as_str()).copied().unwrap_or(0)
    }

    /// Rows whose file is in the store.
    pub fn count_succeeded(&self) -> u64 {
        self.count(RowStatus::Ok) + self.count(RowStatus::Duplicate)
    }

    /// True when every row's file is in the store.
    pub fn all_succeeded(&self) -> bool {
        self.count_succeeded() == self.rows
    }
}

/// Writes a run's report files.
pub struct Report {
    dir: PathBuf,
    csv: csv::Writer<File>,
    jsonl: BufWriter<File>,
    extra_columns: Vec<String>,
    /// Finished rows waiting for an earlier row, keyed by manifest order.
    // Known limit: while one early row retries for minutes, every row after
    // it waits here; the buffer holds those rows' records (a few hundred
    // bytes each) rather than spilling to disk.
    waiting: BTreeMap<u64, RowRecord>,
    next: u64,
    counts: HashMap<RowStatus, u64>,
}

impl Report {
    /// Creates `runs_dir/run_id/` and the report files in it.
    pub fn create(runs_dir: &Path, run_id: &str, extra_columns: &[String]) -> io::Result<Report> {
        let dir = runs_dir.join(run_id);
        std::fs::create_dir_all(&dir)?;
        let mut csv = csv::Writer::from_path(dir.join("report.csv"))?;
        let header = COLUMNS.iter().copied().chain(extra_columns.iter().map(String::as_str));
        csv.write_record(header)?;
        let jsonl = BufWriter::new(File::create(dir.join("report.jsonl"))?);
        Ok(Report {
            dir,
            csv,
            jsonl,
            extra_columns: extra_columns.to_vec(),
            waiting: BTreeMap::new(),
            next: 0,
            counts: HashMap::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the record of the row at position `seq` (0-based, manifest
    /// order) and writes every record that is now next in line.
    pub fn submit(&mut self, seq: u64, record: RowRecord) -> io::Result<()> {
        *self.counts.entry(record.status).or_default() += 1;
        self.waiting.insert(seq, record);
        while let Some(record) = self.waiting.remove(&self.next) {
            self.write(&record)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Rows counted so far, by status.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        RowStatus::ALL
            .iter()
            .map(|s| (s.as_str(), self.counts.get(s).copied().unwrap_or(0)))
            .collect()
    }

    fn write(&mut self, record: &RowRecord) -> io::Result<()> {
        let bytes = record.bytes.map(|b| b.to_string()).unwrap_or_default();
        let fixed = [
            record.line.to_string(),
            record.kind.clone(),
            record.identifier.clone(),
            record.frame_or_track_id.clone(),
            record.status.as_str().to_owned(),
            record.sha256.clone(),
            bytes,
            record.content_type.clone(),
            record.object.clone(),
            record.attempts.to_string(),
            record.api_calls.to_string(),
            record.error.clone(),
        ];
        self.csv.write_record(fixed.iter().chain(&record.extra))?;
        let mut json = serde_json::to_value(record).map_err(io::Error::other)?;
        json["columns"] = self.carried_columns(&record.extra);
        serde_json::to_writer(&mut self.jsonl, &json).map_err(io::Error::other)?;
        self.jsonl.write_all(b"\n")
    }

    /// The manifest's own columns as one JSON object. They sit apart from
    /// the report's fields so that a column the user named `status` or
    /// `error` can never overwrite ours; a name the header repeats keeps
    /// every value, the later ones as `name (2)`, `name (3)`.
    fn carried_columns(&self, values: &[String]) -> serde_json::Value {
        let mut columns = serde_json::Map::new();
        for (name, value) in self.extra_columns.iter().zip(values) {
            let mut key = name.clone();
            let mut nth = 1;
            while columns.contains_key(&key) {
                nth += 1;
                key = format!("{name} ({nth})");
            }
            columns.insert(key, serde_json::Value::String(value.clone()));
        }
        serde_json::Value::Object(columns)
    }

    /// Flushes the reports and writes `summary.json`. Rows still waiting
    /// (only possible if the run stopped abnormally) are written as they are.
    pub fn finish(mut self, summary: &Summary) -> io::Result<PathBuf> {
        let left = std::mem::take(&mut self.waiting);
        for record in left.into_values() {
            self.write(&record)?;
        }
        self.csv.flush()?;
        self.csv.get_ref().sync_all()?;
        self.jsonl.flush()?;
        self.jsonl.get_ref().sync_all()?;
        let summary_path = self.dir.join("summary.json");
        let mut text = serde_json::to_string_pretty(summary).map_err(io::Error::other)?;
        text.push('\n');
        let mut file = File::create(&summary_path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        Ok(self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(line: u64, status: RowStatus, extra: &[&str]) -> RowRecord {
        let identifier = format!("id{line}");
        let mut record = RowRecord::new(line, "image", &identifier, String::new(), status);
        (record.attempts, record.api_calls) = (1, 1);
        record.extra = extra.iter().map(|s| s.to_string()).collect();
        record
    }

    #[test]
    fn rows_come_out_in_manifest_order_with_their_columns() {
        let dir = tempfile::tempdir().unwrap();
        let extra = vec!["case".to_string(), "note, quoted".to_string()];
        let mut report = Report::create(dir.path(), "20261203T000000Z", &extra).unwrap();
        report.submit(2, record(4, RowStatus::NotFound, &["c1", "x"])).unwrap();
        report.submit(0, record(2, RowStatus::Ok, &["c1", "a,b"])).unwrap();
        report.submit(1, record(3, RowStatus::Duplicate, &["c2", "\"q\""])).unwrap();
        let summary = Summary { rows: 3, by_status: report.counts(), ..Summary::default() };
        let out = report.finish(&summary).unwrap();

        let mut csv = csv::Reader::from_path(out.join("report.csv")).unwrap();
        let header: Vec<String> = csv.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(header[..12], COLUMNS);
        assert_eq!(header[12..], extra);
        let rows: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
        let lines: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
        assert_eq!(lines, ["2", "3", "4"]);
        assert_eq!(&rows[0][13], "a,b");
        assert_eq!(&rows[1][13], "\"q\"");
        assert_eq!(&rows[2][4], "not_found");

        let jsonl = std::fs::read_to_string(out.join("report.jsonl")).unwrap();
        let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
        assert_eq!(first["type"], "image");
        assert_eq!(first["status"], "ok");
        assert_eq!(first["columns"]["case"], "c1");
        assert_eq!(first["columns"]["note, quoted"], "a,b");
        assert_eq!(jsonl.lines().count(), 3);

        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(summary["by_status"]["duplicate"], 1);
        assert_eq!(summary["rows"], 3);
    }

    #[test]
    fn carried_columns_never_overwrite_report_fields() {
        let dir = tempfile::tempdir().unwrap();
        let extra = ["status", "error", "status"].map(String::from).to_vec();
        let mut report = Report::create(dir.path(), "20261203T000000Z", &extra).unwrap();
        report.submit(0, record(2, RowStatus::Ok, &["open", "none", "closed"])).unwrap();
        let out = report.finish(&Summary::default()).unwrap();

        let jsonl = std::fs::read_to_string(out.join("report.jsonl")).unwrap();
        let row: serde_json::Value = serde_json::from_str(jsonl.trim()).unwrap();
        assert_eq!(row["status"], "ok");
        assert_eq!(row["error"], "");
        assert_eq!(row["columns"]["status"], "open");
        assert_eq!(row["columns"]["error"], "none");
        assert_eq!(row["columns"]["status (2)"], "closed");
    }

    #[test]
    fn success_means_every_row_is_stored() {
        let mut summary = Summary { rows: 2, ..Summary::default() };
        summary.by_status.insert("ok", 1);
        summary.by_status.insert("duplicate", 1);
        assert!(summary.all_succeeded());
        summary.rows = 3;
        summary.by_status.insert("not_found", 1);
        assert!(!summary.all_succeeded());
    }
}
