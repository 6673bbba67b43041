//! The store's journal: what the store knows about each requested file,
//! across every run and every manifest that wrote into it.
//!
//! `DIR/journal.jsonl` gets one JSON line per finished row (ok, not found,
//! forbidden, failed). A row counts as done only once its line is on disk, so
//! after a crash the journal never claims a file the store lacks. Lines are
//! fsynced in groups: a row that finishes while another row's fsync is under
//! way rides on the next one, so a busy run does not pay one fsync per row.
//!
//! A crash can leave a torn last line; loading skips any line that does not
//! parse, and the writer starts a fresh line after it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::manifest::Kind;
use crate::report::RowStatus;

// Known limit: the journal only grows (a line per finished row, failed rows
// again on every retry run); nothing compacts it yet. Loading keeps only the
// latest line per request, so memory follows the distinct requests.
pub const FILE_NAME: &str = "journal.jsonl";

/// One journal line: how a request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    #[serde(rename = "type")]
    pub kind: String,
    /// The id the API was asked for (the frame or track id when there is one).
    pub id: String,
    pub identifier: String,
    #[serde(default)]
    pub frame_or_track_id: String,
    pub status: RowStatus,
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub bytes: Option<u64>,
    #[serde(default)]
    pub content_type: String,
    pub attempts: u32,
    pub api_calls: u32,
    #[serde(default)]
    pub error: String,
    /// When the row finished, RFC 3339 UTC.
    pub at: String,
    pub run_id: String,
}

/// What the journal says about a request: its latest outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub status: RowStatus,
    pub sha256: String,
    pub bytes: Option<u64>,
    pub content_type: String,
    /// The submission, and the frame or track when the request was one.
    pub identifier: String,
    pub frame_or_track_id: String,
    /// The error of a row that did not succeed.
    pub error: String,
    /// When the row finished (RFC 3339) and in which run.
    pub at: String,
    pub run_id: String,
}

/// The journal read into memory: the latest outcome per (type, requested id).
#[derive(Debug, Default)]
pub struct JournalIndex {
    latest: HashMap<(Kind, String), Known>,
    /// Lines that did not parse (a torn write, or someone's edit).
    pub skipped_lines: u64,
}

impl JournalIndex {
    /// Reads `DIR/journal.jsonl`; a missing journal is an empty one.
    pub fn load(dir: &Path) -> io::Result<JournalIndex> {
        let mut index = JournalIndex::default();
        index.skipped_lines = read_entries(dir, |entry| index.insert(entry))?;
        Ok(index)
    }

    fn insert(&mut self, entry: JournalEntry) {
        let Ok(kind) = entry.kind.parse::<Kind>() else {
            self.skipped_lines += 1;
            return;
        };
        let known = Known {
            status: entry.status,
            sha256: entry.sha256,
            bytes: entry.bytes,
            content_type: entry.content_type,
            identifier: entry.identifier,
            frame_or_track_id: entry.frame_or_track_id,
            error: entry.error,
            at: entry.at,
            run_id: entry.run_id,
        };
        self.latest.insert((kind, entry.id), known);
    }

    /// The latest outcome recorded for this request.
    pub fn get(&self, kind: Kind, id: &str) -> Option<&Known> {
        // Known limit: the lookup key is built per call; a borrowed-key map
        // would save the allocation but the cost is noise next to a stat.
        self.latest.get(&(kind, id.to_owned()))
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    /// Every request whose latest outcome is `ok`, for `verify` and `status`.
    pub fn stored(&self) -> impl Iterator<Item = (&(Kind, String), &Known)> {
        self.latest.iter().filter(|(_, known)| known.status == RowStatus::Ok)
    }

    /// Every request and its latest outcome.
    pub fn iter(&self) -> impl Iterator<Item = (&(Kind, String), &Known)> {
        self.latest.iter()
    }
}

/// Feeds every entry of `DIR/journal.jsonl` to `take`, in order; returns
/// how many lines did not parse (a torn write, or someone's edit).
fn read_entries(dir: &Path, mut take: impl FnMut(JournalEntry)) -> io::Result<u64> {
    let file = match File::open(dir.join(FILE_NAME)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut skipped = 0;
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        match serde_json::from_slice::<JournalEntry>(&line) {
            Ok(entry) => take(entry),
            Err(_) if line.iter().all(u8::is_ascii_whitespace) => {}
            Err(_) => skipped += 1,
        }
    }
    Ok(skipped)
}

/// The latest outcome of each request, in the compact form a run keeps for
/// a whole manifest: the hash as bytes and the content type shared, so a
/// stored request costs about a hundred bytes.
#[derive(Debug, Default)]
pub struct Outcomes {
    by_kind: [HashMap<Box<str>, Outcome>; 3],
    content_types: ContentTypes,
}

/// One shared copy of each content type: a store holds a handful of them,
/// repeated on every row.
#[derive(Debug, Default)]
pub struct ContentTypes(Vec<Arc<str>>);

impl ContentTypes {
    /// The shared copy of `content_type`; `None` for an empty one.
    pub fn share(&mut self, content_type: &str) -> Option<Arc<str>> {
        if content_type.is_empty() {
            return None;
        }
        if let Some(known) = self.0.iter().find(|known| &***known == content_type) {
            return Some(known.clone());
        }
        let shared: Arc<str> = Arc::from(content_type);
        self.0.push(shared.clone());
        Some(shared)
    }
}

/// How one request last ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: RowStatus,
    pub sha256: Option<[u8; 32]>,
    pub bytes: Option<u64>,
    pub content_type: Option<Arc<str>>,
}

impl Outcomes {
    /// Reads `DIR/journal.jsonl`; a missing journal is an empty one.
    pub fn load(dir: &Path) -> io::Result<Outcomes> {
        let mut outcomes = Outcomes::default();
        read_entries(dir, |entry| outcomes.insert(entry))?;
        Ok(outcomes)
    }

    fn insert(&mut self, entry: JournalEntry) {
        let Ok(kind) = entry.kind.parse::<Kind>() else { return };
        let outcome = Outcome {
            status: entry.status,
            sha256: decode_sha256(&entry.sha256),
            bytes: entry.bytes,
            content_type: self.content_types.share(&entry.content_type),
        };
        self.by_kind[slot(kind)].insert(entry.id.into_boxed_str(), outcome);
    }

    pub fn get(&self, kind: Kind, id: &str) -> Option<&Outcome> {
        self.by_kind[slot(kind)].get(id)
    }

    pub fn len(&self) -> usize {
        self.by_kind.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn slot(kind: Kind) -> usize {
    match kind {
        Kind::Audio => 0,
        Kind::Video => 1,
        Kind::Image => 2,
    }
}

/// 64 hex digits as 32 bytes; `None` for anything else.
pub fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *slot = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Appends entries and makes them durable in groups.
#[derive(Debug)]
pub struct JournalWriter {
    path: PathBuf,
    state: Mutex<WriterState>,
    /// Held while an fsync runs; whoever waits here next finds its line
    /// already covered, or runs the next fsync for everyone queued.
    syncing: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct WriterState {
    file: File,
    written: u64,
    synced: u64,
}

/// A place in the journal; durable once [`JournalWriter::durable`] returns.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl JournalWriter {
    /// Opens the journal for appending, after a torn last line if any.
    pub fn open(dir: &Path) -> io::Result<JournalWriter> {
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        if ends_mid_line(&mut file)? {
            file.write_all(b"\n")?;
        }
        let state = WriterState { file, written: 0, synced: 0 };
        Ok(JournalWriter { path, state: Mutex::new(state), syncing: tokio::sync::Mutex::new(()) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one line (not yet durable) and returns its ticket.
    pub fn append(&self, entry: &JournalEntry) -> io::Result<Ticket> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut state = self.state.lock().expect("journal lock poisoned");
        // One write call per line: appends of whole lines never interleave.
        state.file.write_all(&line)?;
        state.written += 1;
        Ok(Ticket(state.written))
    }

    /// Waits until the line behind `ticket` is on disk.
    pub async fn durable(&self, ticket: Ticket) -> io::Result<()> {
        let _turn = self.syncing.lock().await;
        let (file, target) = {
            let state = self.state.lock().expect("journal lock poisoned");
            if state.synced >= ticket.0 {
                return Ok(());
            }
            (state.file.try_clone()?, state.written)
        };
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .expect("fsync does not panic")?;
        let mut state = self.state.lock().expect("journal lock poisoned");
        state.synced = state.synced.max(target);
        Ok(())
    }
}

impl JournalWriter {
    /// Waits until every line written so far is on disk.
    pub async fn durable_all(&self) -> io::Result<()> {
        let written = self.state.lock().expect("journal lock poisoned").written;
        self.durable(Ticket(written)).await
    }
}

fn ends_mid_line(file: &mut File) -> io::Result<bool> {
    let length = file.seek(SeekFrom::End(0))?;
    if length == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(length - 1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, status: RowStatus) -> JournalEntry {
        JournalEntry {
            kind: "image".into(),
            id: id.into(),
            identifier: id.into(),
            frame_or_track_id: String::new(),
            status,
            sha256: if status == RowStatus::Ok { "ab".repeat(32) } else { String::new() },
            bytes: Some(10),
            content_type: "image/jpeg".into(),
            attempts: 1,
            api_calls: 1,
            error: String::new(),
            at: "2026-12-03T02:15:00Z".into(),
            run_id: "20261203T021500Z".into(),
        }
    }

    #[tokio::test]
    async fn the_latest_outcome_wins_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let writer = JournalWriter::open(dir.path()).unwrap();
        let first = writer.append(&entry("a", RowStatus::Failed)).unwrap();
        let second = writer.append(&entry("a", RowStatus::Ok)).unwrap();
        writer.append(&entry("b", RowStatus::NotFound)).unwrap();
        writer.durable(second).await.unwrap();
        writer.durable(first).await.unwrap(); // Already covered: returns at once.
        drop(writer);

        let index = JournalIndex::load(dir.path()).unwrap();
        assert_eq!(index.len(), 2);
        assert_eq!(index.get(Kind::Image, "a").unwrap().status, RowStatus::Ok);
        assert_eq!(index.get(Kind::Image, "b").unwrap().status, RowStatus::NotFound);
        assert!(index.get(Kind::Video, "a").is_none(), "the type is part of the key");
        assert_eq!(index.stored().count(), 1);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_skipped_and_the_next_line_starts_clean() {
        let dir = tempfile::tempdir().unwrap();
        let good = serde_json::to_string(&entry("a", RowStatus::Ok)).unwrap();
        let torn = &serde_json::to_string(&entry("b", RowStatus::Ok)).unwrap()[..40];
        std::fs::write(dir.path().join(FILE_NAME), format!("{good}\n{torn}")).unwrap();

        let index = JournalIndex::load(dir.path()).unwrap();
        assert_eq!((index.len(), index.skipped_lines), (1, 1));

        let writer = JournalWriter::open(dir.path()).unwrap();
        let ticket = writer.append(&entry("c", RowStatus::Ok)).unwrap();
        writer.durable(ticket).await.unwrap();
        let index = JournalIndex::load(dir.path()).unwrap();
        assert!(index.get(Kind::Image, "c").is_some(), "the new line is not glued to the torn one");
        assert_eq!(index.skipped_lines, 1);
    }

    #[tokio::test]
    async fn a_run_keeps_compact_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let writer = JournalWriter::open(dir.path()).unwrap();
        writer.append(&entry("a", RowStatus::Failed)).unwrap();
        writer.append(&entry("a", RowStatus::Ok)).unwrap();
        let ticket = writer.append(&entry("b", RowStatus::Ok)).unwrap();
        writer.durable(ticket).await.unwrap();
        let outcomes = Outcomes::load(dir.path()).unwrap();
        assert_eq!(outcomes.len(), 2);
        let a = outcomes.get(Kind::Image, "a").unwrap();
        assert_eq!((a.status, a.bytes), (RowStatus::Ok, Some(10)));
        assert_eq!(a.sha256, Some([0xab; 32]));
        let b = outcomes.get(Kind::Image, "b").unwrap();
        let (type_a, type_b) = (a.content_type.clone().unwrap(), b.content_type.clone().unwrap());
        assert!(Arc::ptr_eq(&type_a, &type_b), "one copy of each content type");
        assert!(outcomes.get(Kind::Video, "a").is_none());
        assert_eq!(decode_sha256("xy"), None);
    }

    #[test]
    fn a_missing_journal_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(JournalIndex::load(dir.path()).unwrap().is_empty());
    }

    #[tokio::test]
    async fn concurrent_rows_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let writer = std::sync::Arc::new(JournalWriter::open(dir.path()).unwrap());
        let mut tasks = Vec::new();
        for n in 0..50 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                let ticket = writer.append(&entry(&format!("r{n}"), RowStatus::Ok)).unwrap();
                writer.durable(ticket).await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let state = writer.state.lock().unwrap();
        assert_eq!((state.written, state.synced), (50, 50));
        assert_eq!(JournalIndex::load(dir.path()).unwrap().len(), 50);
    }
}
