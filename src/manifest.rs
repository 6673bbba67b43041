//! Streams a download manifest: the CSV file that lists which evidence files to fetch.
//!
//! The header row names the columns. `type` and `identifier` are required, `frame_or_track_id`
//! and `sha256` (the file's hash as the vendor's results give it) are optional, and every
//! other column is an "extra" that travels untouched into the report.
//! Each data record becomes an [`Entry`]: a [`Row`] ready to resolve, or an [`InvalidRow`] that
//! says why it cannot be, so one bad line never stops the batch. Only a broken header or a
//! failing read ends the manifest early, as a [`ManifestError`].
//!
//! Records are read one at a time, so memory stays flat however long the manifest is.
//!
//! Lines may end in LF, CRLF or a lone CR. Every entry carries the physical line its record
//! starts on, counting the header as line 1 and counting blank lines and line breaks inside
//! quoted fields, so that a person can find it in an editor.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::iter::FusedIterator;
use std::path::{Path, PathBuf};
use std::str::FromStr;

const TYPE: &str = "type";
const IDENTIFIER: &str = "identifier";
const FRAME_OR_TRACK_ID: &str = "frame_or_track_id";
const SHA256: &str = "sha256";

/// The longest `identifier` or `frame_or_track_id` accepted, in bytes.
pub const MAX_ID_BYTES: usize = 1024;

/// Fields of an invalid row are cut to this many characters, so that a runaway field cannot
/// bloat the report.
const SHOWN_CHARS: usize = 200;

/// A single record larger than this is taken for an unclosed quote swallowing the rest of the
/// file; without a limit it would be read into memory whole.
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// The kind of evidence a row asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An audio recording.
    Audio,
    /// A video, or one frame of it.
    Video,
    /// A still image.
    Image,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Audio, Kind::Video, Kind::Image];

    /// The lowercase name used in manifests, URLs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
            Kind::Image => "image",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = UnknownKind;

    /// Parses a kind name, ignoring ASCII case and surrounding whitespace.
    fn from_str(text: &str) -> Result<Self, UnknownKind> {
        let text = text.trim();
        Kind::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| UnknownKind(clip(text)))
    }
}

/// The error from parsing a [`Kind`]: holds the rejected text, cut to a displayable length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown type {0:?} (expected audio, video or image)")]
pub struct UnknownKind(pub String);

/// A manifest record that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The 1-based physical line the record starts on (the header is line 1).
    pub line: u64,
    /// What kind of evidence to fetch.
    pub kind: Kind,
    /// The evidence identifier, trimmed and never empty.
    pub identifier: String,
    /// The frame or track to fetch instead of the whole item; `None` when the column is absent
    /// or empty.
    pub frame_or_track_id: Option<String>,
    /// One value per [`Manifest::extra_columns`] entry, exactly as written.
    pub extra: Vec<String>,
    /// The file's expected SHA-256 (64 lower-case hex), when the manifest gives it.
    pub sha256: Option<String>,
}

impl Row {
    /// The id sent to the API: `frame_or_track_id` when set, else `identifier`.
    pub fn requested_id(&self) -> &str {
        self.frame_or_track_id.as_deref().unwrap_or(&self.identifier)
    }
}

/// A manifest record that cannot be downloaded, kept so the report can show it.
///
/// Fields hold whatever could be read: invalid UTF-8 is replaced with U+FFFD and anything
/// longer than 200 characters is cut and ends in `…`. Missing fields are empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRow {
    /// The 1-based physical line the record starts on (the header is line 1).
    pub line: u64,
    /// The `type` field as written (trimmed, case kept).
    pub kind: String,
    /// The `identifier` field, trimmed.
    pub identifier: String,
    /// The `frame_or_track_id` field, trimmed; empty when absent.
    pub frame_or_track_id: String,
    /// One value per [`Manifest::extra_columns`] entry; surplus fields are dropped.
    pub extra: Vec<String>,
    /// A sentence naming the line and the problem, e.g. `line 7: identifier is empty`.
    pub reason: String,
}

/// One data record of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A row that can be downloaded.
    Valid(Row),
    /// A row that cannot, with the reason.
    Invalid(InvalidRow),
}

impl Entry {
    /// The 1-based physical line the record starts on.
    pub fn line(&self) -> u64 {
        match self {
            Entry::Valid(row) => row.line,
            Entry::Invalid(row) => row.line,
        }
    }
}

/// Why a manifest cannot be read at all. Problems confined to one record are not errors: they
/// become an [`Entry::Invalid`].
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest file could not be opened.
    #[error("cannot open manifest {}", path.display())]
    Open {
        /// The path as given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The manifest is empty or holds only blank lines.
    #[error("manifest has no header row (it needs at least \"type\" and \"identifier\" columns)")]
    NoHeader,
    /// A required column is not in the header.
    #[error("manifest header has no {column:?} column (found: {})", found.join(", "))]
    MissingColumn {
        /// The column looked for.
        column: &'static str,
        /// The header names, trimmed.
        found: Vec<String>,
    },
    /// A known column appears twice in the header, so neither copy can be trusted.
    #[error("manifest header has more than one {column:?} column")]
    DuplicateColumn {
        /// The repeated column.
        column: &'static str,
    },
    /// Reading failed; the rest of the manifest is unreachable.
    #[error("cannot read manifest at line {line}")]
    Read {
        /// The line being read when the failure happened.
        line: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// One record grew past the size limit, almost always because a quote was never closed.
    #[error("manifest record at line {line} is longer than {limit} bytes; is a quote left open?")]
    RecordTooLong {
        /// The line the runaway record starts on.
        line: u64,
        /// The limit in bytes.
        limit: u64,
    },
}

/// A streaming reader over the entries of a manifest.
///
/// The header is read and checked on construction; iterating yields one [`Entry`] per data
/// record, in file order. After an error the iterator ends.
#[derive(Debug)]
pub struct Manifest<R> {
    records: Records<R>,
    layout: Layout,
    done: bool,
}

impl Manifest<File> {
    /// Opens the manifest at `path` and checks its header.
    pub fn open(path: &Path) -> Result<Self, ManifestError> {
        let file = File::open(path)
            .map_err(|source| ManifestError::Open { path: path.to_owned(), source })?;
        Self::from_reader(file)
    }
}

impl<R: Read> Manifest<R> {
    /// Wraps `reader`, reading and checking the header row.
    pub fn from_reader(reader: R) -> Result<Self, ManifestError> {
        let mut records = Records::new(reader);
        if records.next_line()?.is_none() {
            return Err(ManifestError::NoHeader);
        }
        let layout = Layout::from_header(records.fields())?;
        Ok(Manifest { records, layout, done: false })
    }

    /// The names of the extra columns, in header order and exactly as written.
    pub fn extra_columns(&self) -> &[String] {
        &self.layout.extra_names
    }
}

impl<R: Read> Iterator for Manifest<R> {
    type Item = Result<Entry, ManifestError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.records.next_line() {
            Ok(Some(line)) => Some(Ok(self.layout.classify(line, self.records.fields()))),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(err) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }
}

impl<R: Read> FusedIterator for Manifest<R> {}

/// Where the known columns sit in the header, and the extra columns' names.
#[derive(Debug)]
struct Layout {
    width: usize,
    kind: usize,
    identifier: usize,
    frame: Option<usize>,
    sha256: Option<usize>,
    extra: Vec<usize>,
    extra_names: Vec<String>,
}

impl Layout {
    fn from_header(header: Fields<'_>) -> Result<Self, ManifestError> {
        // Lossy decoding is harmless here: bytes that are not UTF-8 can never spell a known
        // column, and an oddly encoded extra name should not cost the whole run.
        let mut names: Vec<String> = (0..header.len())
            .map(|i| String::from_utf8_lossy(header.get(i).unwrap_or_default()).into_owned())
            .collect();
        // csv strips a byte order mark only when it arrives in one read; catch the rest here.
        if names.first().is_some_and(|name| name.starts_with('\u{feff}')) {
            names[0].remove(0);
        }
        let kind = require_column(&names, TYPE)?;
        let identifier = require_column(&names, IDENTIFIER)?;
        let frame = find_column(&names, FRAME_OR_TRACK_ID)?;
        let sha256 = find_column(&names, SHA256)?;
        let known = [Some(kind), Some(identifier), frame, sha256];
        let extra: Vec<usize> = (0..names.len()).filter(|i| !known.contains(&Some(*i))).collect();
        let extra_names = extra.iter().map(|&i| names[i].clone()).collect();
        let width = names.len();
        Ok(Layout { width, kind, identifier, frame, sha256, extra, extra_names })
    }

    fn classify(&self, line: u64, fields: Fields<'_>) -> Entry {
        match self.parse(line, fields) {
            Ok(row) => Entry::Valid(row),
            Err(mut problem) => {
                // A quote that never closes swallows the lines after it into one bad record;
                // saying so saves a long hunt for rows that seem to have vanished.
                if fields.spans_lines() {
                    problem.push_str(" (the record spans several lines; is a quote left open?)");
                }
                Entry::Invalid(self.salvage(line, fields, problem))
            }
        }
    }

    /// Checks one record column by column and reports the first problem found.
    fn parse(&self, line: u64, fields: Fields<'_>) -> Result<Row, String> {
        if fields.len() != self.width {
            return Err(field_count_problem(fields, self.width));
        }
        let kind = checked_value(fields, self.kind, TYPE)?;
        let kind = kind.parse::<Kind>().map_err(|err| err.to_string())?;
        let identifier = checked_id(fields, self.identifier, IDENTIFIER)?;
        if identifier.is_empty() {
            return Err("identifier is empty".to_owned());
        }
        let frame = match self.frame {
            Some(i) => checked_id(fields, i, FRAME_OR_TRACK_ID)?,
            None => "",
        };
        if frame.is_empty() {
            sendable(identifier, IDENTIFIER)?;
        } else {
            sendable(frame, FRAME_OR_TRACK_ID)?;
        }
        let sha256 = match self.sha256 {
            Some(i) => checked_sha256(checked_value(fields, i, SHA256)?)?,
            None => None,
        };
        let extra = self
            .extra
            .iter()
            .zip(&self.extra_names)
            .map(|(&i, name)| match utf8(fields.get(i)) {
                Some(value) => Ok(value.to_owned()),
                None => Err(not_utf8(&format!("column {name:?}"))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Row {
            line,
            kind,
            identifier: identifier.to_owned(),
            frame_or_track_id: (!frame.is_empty()).then(|| frame.to_owned()),
            extra,
            sha256,
        })
    }

    /// Keeps what can be shown of a record that failed [`Layout::parse`].
    fn salvage(&self, line: u64, fields: Fields<'_>, problem: String) -> InvalidRow {
        let known = |i: Option<usize>| clip(shown(i.and_then(|i| fields.get(i))).trim());
        InvalidRow {
            line,
            kind: known(Some(self.kind)),
            identifier: known(Some(self.identifier)),
            frame_or_track_id: known(self.frame),
            extra: self.extra.iter().map(|&i| clip(&shown(fields.get(i)))).collect(),
            reason: format!("line {line}: {problem}"),
        }
    }
}

/// The position of the column named `wanted`, if the header has it.
fn find_column(names: &[String], wanted: &'static str) -> Result<Option<usize>, ManifestError> {
    let mut hits = (0..names.len()).filter(|&i| names[i].trim().eq_ignore_ascii_case(wanted));
    let first = hits.next();
    if hits.next().is_some() {
        return Err(ManifestError::DuplicateColumn { column: wanted });
    }
    Ok(first)
}

fn require_column(names: &[String], wanted: &'static str) -> Result<usize, ManifestError> {
    find_column(names, wanted)?.ok_or_else(|| ManifestError::MissingColumn {
        column: wanted,
        found: names.iter().map(|name| name.trim().to_owned()).collect(),
    })
}

fn field_count_problem(fields: Fields<'_>, width: usize) -> String {
    let found = fields.len();
    format!("expected {width} fields as in the header, found {found}")
}

/// A checked column's value: UTF-8, trimmed, free of control characters.
fn checked_value<'a>(fields: Fields<'a>, i: usize, name: &str) -> Result<&'a str, String> {
    let value = utf8(fields.get(i)).ok_or_else(|| not_utf8(name))?.trim();
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!("{name} contains control character U+{:04X}", u32::from(c))),
        None => Ok(value),
    }
}

/// Like [`checked_value`], and also within [`MAX_ID_BYTES`].
fn checked_id<'a>(fields: Fields<'a>, i: usize, name: &str) -> Result<&'a str, String> {
    let value = checked_value(fields, i, name)?;
    if value.len() > MAX_ID_BYTES {
        let len = value.len();
        return Err(format!("{name} is {len} bytes long (the limit is {MAX_ID_BYTES})"));
    }
    Ok(value)
}

/// The requested id must survive as one URL path segment. Only `.` and `..`
/// cannot: URL parsers collapse them as dot-segments, even percent-encoded.
fn sendable(id: &str, name: &str) -> Result<(), String> {
    if id == "." || id == ".." {
        return Err(format!("{name} {id:?} cannot be requested: URLs drop it as a path segment"));
    }
    Ok(())
}

/// An expected hash: empty means none; otherwise 64 hex digits, kept lower-case.
fn checked_sha256(value: &str) -> Result<Option<String>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() != 64 || !value.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("sha256 {value:?} is not 64 hexadecimal digits"));
    }
    Ok(Some(value.to_ascii_lowercase()))
}

/// The field as text, or `None` when it is not UTF-8. A missing field reads as empty.
fn utf8(field: Option<&[u8]>) -> Option<&str> {
    std::str::from_utf8(field.unwrap_or_default()).ok()
}

fn not_utf8(name: &str) -> String {
    format!("{name} is not valid UTF-8")
}

fn shown(field: Option<&[u8]>) -> String {
    String::from_utf8_lossy(field.unwrap_or_default()).into_owned()
}

/// Cuts `text` to [`SHOWN_CHARS`] characters, marking the cut with `…`.
fn clip(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The fields of the record just read.
#[derive(Debug, Clone, Copy)]
struct Fields<'a>(&'a csv::ByteRecord);

impl<'a> Fields<'a> {
    fn len(self) -> usize {
        self.0.len()
    }

    fn get(self, i: usize) -> Option<&'a [u8]> {
        self.0.get(i)
    }

    /// A line of nothing but whitespace. csv skips empty lines itself but hands these over.
    fn is_blank(self) -> bool {
        let blank = |field: &[u8]| field.iter().all(u8::is_ascii_whitespace);
        self.len() == 1 && self.get(0).is_some_and(blank)
    }

    /// Whether a quoted field carried a line break.
    fn spans_lines(self) -> bool {
        self.0.as_slice().iter().any(|&b| b == b'\n' || b == b'\r')
    }
}

/// The CSV records of a manifest, each with the physical line it starts on.
#[derive(Debug)]
struct Records<R> {
    csv: csv::Reader<Tally<R>>,
    record: csv::ByteRecord,
}

impl<R: Read> Records<R> {
    fn new(reader: R) -> Self {
        let csv = csv::ReaderBuilder::new()
            .has_headers(false)
            // Field counts are checked per record, so a short row becomes an invalid entry
            // instead of an error that ends the run.
            .flexible(true)
            .from_reader(Tally::new(reader));
        Records { csv, record: csv::ByteRecord::new() }
    }

    fn fields(&self) -> Fields<'_> {
        Fields(&self.record)
    }

    /// Reads the next record that is not blank and returns the line it starts on.
    fn next_line(&mut self) -> Result<Option<u64>, ManifestError> {
        loop {
            match self.csv.read_byte_record(&mut self.record) {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(err) => return Err(self.read_error(err)),
            }
            let end = self.csv.position().byte();
            let tally = self.csv.get_mut();
            let line = tally.record_line();
            tally.start_record(end);
            if !self.fields().is_blank() {
                return Ok(Some(line));
            }
        }
    }

    fn read_error(&self, err: csv::Error) -> ManifestError {
        let tally = self.csv.get_ref();
        let line = tally.record_line();
        if tally.overflowed {
            let limit = MAX_RECORD_BYTES;
            return ManifestError::RecordTooLong { line, limit };
        }
        let source = into_io_error(err);
        ManifestError::Read { line, source }
    }
}

/// Recovers the I/O error inside a csv error. Byte records with flexible lengths can fail in
/// no other way, but a later csv release might add one.
fn into_io_error(err: csv::Error) -> io::Error {
    if !err.is_io_error() {
        return io::Error::other(err);
    }
    match err.into_kind() {
        csv::ErrorKind::Io(err) => err,
        kind => io::Error::other(format!("{kind:?}")),
    }
}

/// Wraps the manifest source to find the line each record starts on, and to enforce
/// [`MAX_RECORD_BYTES`].
///
/// csv cannot say where a record starts: the position it gives is taken before the empty lines
/// it skips, and its line count sees only LF. So this watches every CR and LF go by. csv skips
/// exactly the CR and LF bytes in front of a record, so the record's first line is the line
/// where the previous one ended plus the line breaks in that unbroken run. A break is a CR, or
/// an LF not right after a CR, which makes LF, CRLF and lone-CR files all count alike.
#[derive(Debug)]
struct Tally<R> {
    inner: R,
    /// Bytes read from `inner` so far.
    total: u64,
    /// Whether the last byte read was a CR, so that the LF of a CRLF split across two reads is
    /// not counted twice.
    after_cr: bool,
    /// Byte offset where the record being read began: the end of the one before.
    record_start: u64,
    /// Line breaks before `record_start`.
    breaks_before: u64,
    /// Each CR and LF at or after `record_start`: its offset and whether it breaks a line.
    ends: VecDeque<(u64, bool)>,
    overflowed: bool,
}

impl<R> Tally<R> {
    fn new(inner: R) -> Self {
        Tally {
            inner,
            total: 0,
            after_cr: false,
            record_start: 0,
            breaks_before: 0,
            ends: VecDeque::new(),
            overflowed: false,
        }
    }

    /// The line the current record starts on, past the empty lines csv skipped.
    fn record_line(&self) -> u64 {
        let skipped = (self.ends.iter())
            .zip(self.record_start..)
            .take_while(|((offset, _), expected)| offset == expected)
            .filter(|((_, breaks), _)| *breaks)
            .count();
        1 + self.breaks_before + skipped as u64
    }

    /// Moves on to the record that begins at byte `offset`.
    fn start_record(&mut self, offset: u64) {
        while let Some(&(at, breaks)) = self.ends.front() {
            if at >= offset {
                break;
            }
            self.breaks_before += u64::from(breaks);
            self.ends.pop_front();
        }
        self.record_start = offset;
    }

    fn note(&mut self, bytes: &[u8]) {
        for (offset, &byte) in (self.total..).zip(bytes) {
            match byte {
                b'\r' => self.ends.push_back((offset, true)),
                b'\n' => self.ends.push_back((offset, !self.after_cr)),
                _ => {}
            }
            self.after_cr = byte == b'\r';
        }
        self.total += bytes.len() as u64;
    }
}

impl<R: Read> Read for Tally<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.total - self.record_start > MAX_RECORD_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("manifest record is too long"));
        }
        let n = loop {
            // csv does not retry an interrupted read, and it would end the run.
            match self.inner.read(buf) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.note(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads every entry of `input`, failing the test on any manifest error.
    fn entries(input: &[u8]) -> Vec<Entry> {
        let manifest = Manifest::from_reader(input).expect("header should be accepted");
        manifest.collect::<Result<_, _>>().expect("records should be readable")
    }

    fn header_error(input: &[u8]) -> ManifestError {
        match Manifest::from_reader(input) {
            Ok(_) => panic!("header should be rejected"),
            Err(err) => err,
        }
    }

    fn valid(entry: &Entry) -> &Row {
        match entry {
            Entry::Valid(row) => row,
            Entry::Invalid(row) => panic!("expected a valid row, got {row:?}"),
        }
    }

    fn invalid(entry: &Entry) -> &InvalidRow {
        match entry {
            Entry::Invalid(row) => row,
            Entry::Valid(row) => panic!("expected an invalid row, got {row:?}"),
        }
    }

    fn lines(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(Entry::line).collect()
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    /// A source that serves `data` and then fails, like a disk going away mid-read.
    struct FailingAfter<'a>(&'a [u8]);

    impl Read for FailingAfter<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::other("disk gone"));
            }
            self.0.read(buf)
        }
    }

    /// A source that hands over one byte per read, the worst case for csv's buffering.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn reads_rows_with_frames_tracks_and_extra_columns() {
        let input = b"type,identifier,frame_or_track_id,batch,note\n\
            video,vid-1,frame-9,b1,first\n\
            image,img-2,,b1,\n\
            audio,aud-3,track-2,b2,last one\n";
        let manifest = Manifest::from_reader(&input[..]).unwrap();
        assert_eq!(manifest.extra_columns(), ["batch", "note"]);
        let rows: Vec<Entry> = manifest.map(Result::unwrap).collect();
        let expected = vec![
            Entry::Valid(Row {
                line: 2,
                kind: Kind::Video,
                identifier: "vid-1".into(),
                frame_or_track_id: Some("frame-9".into()),
                extra: strings(&["b1", "first"]),
                sha256: None,
            }),
            Entry::Valid(Row {
                line: 3,
                kind: Kind::Image,
                identifier: "img-2".into(),
                frame_or_track_id: None,
                extra: strings(&["b1", ""]),
                sha256: None,
            }),
            Entry::Valid(Row {
                line: 4,
                kind: Kind::Audio,
                identifier: "aud-3".into(),
                frame_or_track_id: Some("track-2".into()),
                extra: strings(&["b2", "last one"]),
                sha256: None,
            }),
        ];
        assert_eq!(rows, expected);
        assert_eq!(valid(&rows[0]).requested_id(), "frame-9");
        assert_eq!(valid(&rows[1]).requested_id(), "img-2");
    }

    #[test]
    fn frame_column_is_optional_and_extras_keep_their_place() {
        let rows = entries(b"note,identifier,type\nhello,abc,image\n");
        let row = valid(&rows[0]);
        assert_eq!(row.identifier, "abc");
        assert_eq!(row.kind, Kind::Image);
        assert_eq!(row.frame_or_track_id, None);
        assert_eq!(row.extra, ["hello"]);
    }

    #[test]
    fn an_expected_hash_is_checked_and_kept_lower_case() {
        let upper = "AB".repeat(32);
        let text =
            format!("type,identifier,SHA256,note\nimage,a,{upper},n\nimage,b,,m\nimage,c,xyz,o\n");
        let rows = entries(text.as_bytes());
        assert_eq!(valid(&rows[0]).sha256, Some("ab".repeat(32)));
        assert_eq!(valid(&rows[0]).extra, ["n"], "sha256 is a known column, not an extra");
        assert_eq!(valid(&rows[1]).sha256, None);
        let Entry::Invalid(bad) = &rows[2] else { panic!("a bad hash is an invalid row") };
        assert_eq!(bad.reason, "line 4: sha256 \"xyz\" is not 64 hexadecimal digits");
    }

    #[test]
    fn header_names_ignore_case_and_whitespace_but_extras_keep_theirs() {
        let input = b" Type ,IDENTIFIER\t, Frame_Or_Track_ID , My Note \nVideo,a,f,n\n";
        let manifest = Manifest::from_reader(&input[..]).unwrap();
        assert_eq!(manifest.extra_columns(), [" My Note "]);
        let rows: Vec<Entry> = manifest.map(Result::unwrap).collect();
        assert_eq!(valid(&rows[0]).requested_id(), "f");
    }

    #[test]
    fn byte_order_mark_does_not_hide_the_type_column() {
        let rows = entries(b"\xEF\xBB\xBFtype,identifier\nvideo,a\n");
        assert_eq!(valid(&rows[0]).identifier, "a");
        assert_eq!(rows[0].line(), 2);
    }

    #[test]
    fn byte_order_mark_split_across_reads_is_still_removed() {
        let input = b"\xEF\xBB\xBFtype,identifier\nvideo,a\n";
        let manifest = Manifest::from_reader(Trickle(input)).unwrap();
        let rows: Vec<Entry> = manifest.map(Result::unwrap).collect();
        assert_eq!(valid(&rows[0]).identifier, "a");
    }

    #[test]
    fn crlf_line_endings_leave_no_carriage_return_behind() {
        let input = b"type,identifier,note\r\nvideo,a,x\r\nimage,b,\"q\"\r\n\r\naudio,c,\r\n";
        let manifest = Manifest::from_reader(&input[..]).unwrap();
        assert_eq!(manifest.extra_columns(), ["note"]);
        let rows: Vec<Entry> = manifest.map(Result::unwrap).collect();
        assert_eq!(lines(&rows), [2, 3, 5]);
        assert_eq!(valid(&rows[0]).extra, ["x"]);
        assert_eq!(valid(&rows[1]).extra, ["q"]);
        assert_eq!(valid(&rows[2]).extra, [""]);
        assert_eq!(valid(&rows[2]).identifier, "c");
    }

    #[test]
    fn quoted_fields_keep_commas_quotes_and_newlines() {
        let input = b"type,identifier,note\n\
            video,\"a,b\",plain\n\
            video,\"say \"\"hi\"\"\",x\n\
            video,c,\"one\ntwo\r\nthree\"\n\
            audio,after,y\n";
        let rows = entries(input);
        assert_eq!(valid(&rows[0]).identifier, "a,b");
        assert_eq!(valid(&rows[1]).identifier, "say \"hi\"");
        assert_eq!(valid(&rows[2]).extra, ["one\ntwo\r\nthree"]);
        assert_eq!(valid(&rows[3]).identifier, "after");
        assert_eq!(lines(&rows), [2, 3, 4, 7]);
    }

    #[test]
    fn blank_lines_are_skipped_and_still_counted() {
        let input = b"\n\ntype,identifier\n\nvideo,a\n   \n\r\n\t\nimage,b\n\n\n";
        let rows = entries(input);
        assert_eq!(rows.len(), 2);
        assert_eq!(lines(&rows), [5, 9]);
    }

    #[test]
    fn lone_cr_and_mixed_line_endings_count_lines() {
        let input = b"type,identifier\rvideo,a\r\rimage,b\r\nvideo,\"x\ry\"\naudio,c\n";
        let rows = entries(input);
        assert_eq!(lines(&rows), [2, 4, 5, 7]);
        assert_eq!(valid(&rows[3]).identifier, "c");
    }

    #[test]
    fn line_numbers_survive_tiny_reads() {
        let input = b"type,identifier,note\r\n\r\nvideo,a,\"p\r\nq\"\r\n\r\nimage,b,\r\n";
        let manifest = Manifest::from_reader(Trickle(input)).unwrap();
        let rows: Vec<Entry> = manifest.map(Result::unwrap).collect();
        assert_eq!(lines(&rows), [3, 6]);
        assert_eq!(valid(&rows[0]).extra, ["p\r\nq"]);
    }

    #[test]
    fn line_numbers_stay_exact_across_many_buffers() {
        // Enough rows to cross csv's read buffer many times, with a multi-line note and a blank
        // line every few rows, so any drift in the count would show up.
        let mut input = String::from("type,identifier,note\n");
        let mut expected = Vec::new();
        let mut line = 2;
        for i in 0..5000 {
            expected.push(line);
            if i % 7 == 0 {
                input.push_str(&format!("video,id-{i},\"two\nlines\"\n\n"));
                line += 3;
            } else {
                input.push_str(&format!("image,id-{i},plain\r\n"));
                line += 1;
            }
        }
        let rows = entries(input.as_bytes());
        assert_eq!(lines(&rows), expected);
        assert_eq!(valid(&rows[4999]).identifier, "id-4999");
    }

    #[test]
    fn last_record_without_newline_keeps_its_line() {
        let rows = entries(b"type,identifier,note\nvideo,a,x\nimage,b,\"p\nq\"");
        assert_eq!(lines(&rows), [2, 3]);
        assert_eq!(valid(&rows[1]).extra, ["p\nq"]);
    }

    #[test]
    fn awkward_identifier_is_kept_exactly() {
        let rows = entries("type,identifier\nimage,a/../b%2F?x#y z ü\n".as_bytes());
        assert_eq!(valid(&rows[0]).identifier, "a/../b%2F?x#y z ü");
    }

    #[test]
    fn checked_values_are_trimmed_but_extras_are_not() {
        let rows = entries(b"type,identifier,frame_or_track_id,note\n VIDEO , a , f1 ,  n  \n");
        let row = valid(&rows[0]);
        assert_eq!(row.kind, Kind::Video);
        assert_eq!(row.identifier, "a");
        assert_eq!(row.frame_or_track_id.as_deref(), Some("f1"));
        assert_eq!(row.extra, ["  n  "]);
    }

    #[test]
    fn blank_frame_id_means_absent() {
        let rows = entries(b"type,identifier,frame_or_track_id\nvideo,a,   \n");
        assert_eq!(valid(&rows[0]).frame_or_track_id, None);
        assert_eq!(valid(&rows[0]).requested_id(), "a");
    }

    #[test]
    fn empty_input_has_no_header() {
        for input in [&b""[..], b"\n\n", b"\xEF\xBB\xBF", b" \r\n"] {
            let err = header_error(input);
            assert!(matches!(err, ManifestError::NoHeader), "{input:?} gave {err:?}");
        }
    }

    #[test]
    fn missing_column_is_named_with_what_was_found() {
        let err = header_error(b"type, id\nvideo,a\n");
        assert!(matches!(err, ManifestError::MissingColumn { column: IDENTIFIER, .. }));
        let expected = "manifest header has no \"identifier\" column (found: type, id)";
        assert_eq!(err.to_string(), expected);

        let err = header_error(b"kind,identifier\n");
        assert!(matches!(err, ManifestError::MissingColumn { column: TYPE, .. }));
    }

    #[test]
    fn duplicate_columns_are_rejected() {
        let err = header_error(b"type,identifier, TYPE\n");
        assert!(matches!(err, ManifestError::DuplicateColumn { column: TYPE }));
        assert_eq!(err.to_string(), "manifest header has more than one \"type\" column");

        let err = header_error(b"type,identifier,frame_or_track_id,frame_or_track_id\n");
        assert!(matches!(err, ManifestError::DuplicateColumn { column: FRAME_OR_TRACK_ID }));
    }

    #[test]
    fn duplicate_extra_columns_are_allowed() {
        let input = b"type,identifier,note,note\nvideo,a,1,2\n";
        let manifest = Manifest::from_reader(&input[..]).unwrap();
        assert_eq!(manifest.extra_columns(), ["note", "note"]);
    }

    #[test]
    fn unknown_type_is_invalid_and_later_rows_still_parse() {
        let input = b"type,identifier,note\nvideo,a,x\nvidoe,b,y\nimage,c,z\n";
        let rows = entries(input);
        let bad = invalid(&rows[1]);
        let reason = "line 3: unknown type \"vidoe\" (expected audio, video or image)";
        assert_eq!(bad.reason, reason);
        assert_eq!(bad.kind, "vidoe");
        assert_eq!(bad.identifier, "b");
        assert_eq!(bad.extra, ["y"]);
        assert_eq!(valid(&rows[2]).identifier, "c");
        assert_eq!(lines(&rows), [2, 3, 4]);
    }

    #[test]
    fn empty_identifier_is_invalid() {
        let rows = entries(b"type,identifier\nvideo,\nimage,   \naudio,ok\n");
        assert_eq!(invalid(&rows[0]).reason, "line 2: identifier is empty");
        assert_eq!(invalid(&rows[1]).reason, "line 3: identifier is empty");
        assert_eq!(valid(&rows[2]).identifier, "ok");
    }

    #[test]
    fn wrong_field_counts_are_invalid_but_keep_what_was_read() {
        let input = b"type,identifier,note\nvideo,a\nvideo,b,n,surplus\nvideo,c,n\n";
        let rows = entries(input);
        let short = invalid(&rows[0]);
        assert_eq!(short.reason, "line 2: expected 3 fields as in the header, found 2");
        assert_eq!((short.kind.as_str(), short.identifier.as_str()), ("video", "a"));
        assert_eq!(short.extra, [""]);
        let long = invalid(&rows[1]);
        assert_eq!(long.reason, "line 3: expected 3 fields as in the header, found 4");
        assert_eq!(long.extra, ["n"]);
        assert_eq!(valid(&rows[2]).identifier, "c");
    }

    #[test]
    fn unclosed_quote_is_flagged_in_the_reason() {
        let hint = " (the record spans several lines; is a quote left open?)";
        let rows = entries(b"type,identifier,note\nvideo,\"a,x\nvideo,b,y\n");
        let reason = format!("line 2: expected 3 fields as in the header, found 2{hint}");
        assert_eq!(invalid(&rows[0]).reason, reason);
        assert_eq!(rows.len(), 1);

        let rows = entries(b"type,identifier\nvideo,ok\nvideo,\"a\nvideo,b\n");
        let reason = format!("line 3: identifier contains control character U+000A{hint}");
        assert_eq!(invalid(&rows[1]).reason, reason);
    }

    #[test]
    fn control_characters_are_invalid_in_checked_columns_only() {
        let input = b"type,identifier,frame_or_track_id,note\n\
            video,a\x07b,,\n\
            vid\x1beo,a,,\n\
            video,a,f\x00,\n\
            video,a\tb,,\n\
            video,ok,,tab\there\n";
        let rows = entries(input);
        let reasons: Vec<&str> = rows[..4].iter().map(|e| invalid(e).reason.as_str()).collect();
        let expected = [
            "line 2: identifier contains control character U+0007",
            "line 3: type contains control character U+001B",
            "line 4: frame_or_track_id contains control character U+0000",
            "line 5: identifier contains control character U+0009",
        ];
        assert_eq!(reasons, expected);
        assert_eq!(invalid(&rows[0]).identifier, "a\x07b");
        assert_eq!(valid(&rows[4]).extra, ["tab\there"]);
        assert_eq!(rows[4].line(), 6);
    }

    #[test]
    fn dot_segments_are_invalid_only_where_they_are_requested() {
        let input = b"type,identifier,frame_or_track_id
            image,..,
            video,v1,.
            video,..,frame-1
            image,...,
";
        let rows = entries(input);
        let expected = "line 2: identifier \"..\" cannot be requested";
        assert!(invalid(&rows[0]).reason.starts_with(expected), "{:?}", rows[0]);
        let expected = "line 3: frame_or_track_id \".\" cannot be requested";
        assert!(invalid(&rows[1]).reason.starts_with(expected), "{:?}", rows[1]);
        // The frame is what is asked for; the odd identifier only names it.
        assert_eq!(valid(&rows[2]).requested_id(), "frame-1");
        assert_eq!(valid(&rows[3]).identifier, "...");
    }

    #[test]
    fn ids_longer_than_the_limit_are_invalid() {
        let ok = "x".repeat(MAX_ID_BYTES);
        let long = "y".repeat(MAX_ID_BYTES + 1);
        // Multi-byte characters count in bytes: 513 of them are 1026 bytes.
        let wide = "é".repeat(513);
        let input = format!(
            "type,identifier,frame_or_track_id\n\
             video,{ok},\nvideo,{long},\nvideo,a,{long}\nvideo,{wide},\n"
        );
        let rows = entries(input.as_bytes());
        assert_eq!(valid(&rows[0]).identifier, ok);
        let bad = invalid(&rows[1]);
        assert_eq!(bad.reason, "line 3: identifier is 1025 bytes long (the limit is 1024)");
        assert_eq!(bad.identifier, format!("{}…", "y".repeat(SHOWN_CHARS)));
        let reason = "line 4: frame_or_track_id is 1025 bytes long (the limit is 1024)";
        assert_eq!(invalid(&rows[2]).reason, reason);
        let reason = "line 5: identifier is 1026 bytes long (the limit is 1024)";
        assert_eq!(invalid(&rows[3]).reason, reason);
    }

    #[test]
    fn invalid_utf8_is_invalid_and_shown_lossily() {
        let input = b"type,identifier,note\nvideo,a\xFFb,x\nvideo,c,caf\xE9\nvideo,d,ok\n";
        let rows = entries(input);
        let bad = invalid(&rows[0]);
        assert_eq!(bad.reason, "line 2: identifier is not valid UTF-8");
        assert_eq!(bad.identifier, "a\u{FFFD}b");
        let bad = invalid(&rows[1]);
        assert_eq!(bad.reason, "line 3: column \"note\" is not valid UTF-8");
        assert_eq!(bad.extra, ["caf\u{FFFD}"]);
        assert_eq!(valid(&rows[2]).identifier, "d");
    }

    #[test]
    fn long_fields_of_invalid_rows_are_clipped() {
        let note = "n".repeat(5000);
        let input = format!("type,identifier,note\nbogus,a,{note}\n");
        let rows = entries(input.as_bytes());
        let bad = invalid(&rows[0]);
        assert_eq!(bad.extra, [format!("{}…", "n".repeat(SHOWN_CHARS))]);
    }

    #[test]
    fn valid_rows_keep_long_extra_values_whole() {
        let note = "n".repeat(5000);
        let input = format!("type,identifier,note\nvideo,a,{note}\n");
        let rows = entries(input.as_bytes());
        assert_eq!(valid(&rows[0]).extra, [note]);
    }

    #[test]
    fn read_failure_is_fatal_and_names_the_line() {
        let input = b"type,identifier\nvideo,a\nvideo,b";
        let mut manifest = Manifest::from_reader(FailingAfter(input)).unwrap();
        assert_eq!(manifest.next().unwrap().unwrap().line(), 2);
        match manifest.next() {
            Some(Err(ManifestError::Read { line, source })) => {
                assert_eq!(line, 3);
                assert_eq!(source.to_string(), "disk gone");
            }
            other => panic!("expected a read error, got {other:?}"),
        }
        assert!(manifest.next().is_none());
    }

    #[test]
    fn runaway_quote_stops_the_run_instead_of_eating_memory() {
        let mut input = b"type,identifier\nvideo,a\nvideo,\"b\n".to_vec();
        input.resize(input.len() + 2 * MAX_RECORD_BYTES as usize, b'x');
        let mut manifest = Manifest::from_reader(&input[..]).unwrap();
        assert_eq!(manifest.next().unwrap().unwrap().line(), 2);
        match manifest.next() {
            Some(Err(ManifestError::RecordTooLong { line, .. })) => assert_eq!(line, 3),
            other => panic!("expected a too-long error, got {other:?}"),
        }
        assert!(manifest.next().is_none());
    }

    #[test]
    fn open_reads_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.csv");
        std::fs::write(&path, "type,identifier\nimage,a\n").unwrap();
        let rows: Vec<Entry> = Manifest::open(&path).unwrap().map(Result::unwrap).collect();
        assert_eq!(valid(&rows[0]).identifier, "a");

        let missing = dir.path().join("nope.csv");
        match Manifest::open(&missing) {
            Err(ManifestError::Open { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected an open error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn kind_parses_any_case_and_prints_lowercase() {
        assert_eq!(" VIDEO ".parse::<Kind>(), Ok(Kind::Video));
        assert_eq!("Audio".parse::<Kind>(), Ok(Kind::Audio));
        assert_eq!("image".parse::<Kind>(), Ok(Kind::Image));
        assert_eq!("".parse::<Kind>(), Err(UnknownKind(String::new())));
        for kind in Kind::ALL {
            assert_eq!(kind.to_string(), kind.as_str());
            assert_eq!(kind.as_str().parse::<Kind>(), Ok(kind));
        }
        assert_eq!(Kind::Video.as_str(), "video");
    }
}
