//! The content-addressed object store under the output folder.
//!
//! ```text
//! DIR/objects/sha256/ab/ab12…(64 hex)   immutable, read-only objects
//! DIR/tmp/<key>.part, <key>.part.json   downloads in progress, resumable
//! DIR/runs/<run-id>/                   one folder of reports per run
//! DIR/journal.jsonl                    what the store knows (see journal)
//! ```
//!
//! Bytes reach `objects/` only one way: written to a partial file in `tmp/`
//! (the same file system, so the rename is atomic), fsynced, renamed into
//! place, and the directory fsynced. A reader never sees a partial object,
//! and a crash leaves at most a partial file, which the next attempt resumes.
//! An object that already exists is success: same name, same bytes.
//!
//! A partial file's record names the boot of the kernel that wrote it. A
//! kill of the process spares the page cache, so a rerun under the same boot
//! keeps every byte in the file; after a reboot, which may follow a crash
//! that lost unsynced bytes, only the bytes the record calls durable count.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::disk;
use crate::manifest::Kind;

const OBJECTS: &str = "objects/sha256";
const TMP: &str = "tmp";
const RUNS: &str = "runs";
const PART: &str = ".part";
const PART_META: &str = ".part.json";

/// The store rooted at the output folder.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Where a store operation failed, with the path it was working on.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct StoreError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

pub(crate) fn at(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError { action, path, source }
}

impl Store {
    /// Opens (creating if needed) the store at `root` and proves it writable.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store { root: root.to_path_buf() };
        for dir in [OBJECTS, TMP, RUNS] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(at("cannot create", &path))?;
        }
        // Fail now, before any API call, rather than after the first download.
        let probe = store.root.join(TMP).join(format!(".probe-{}", std::process::id()));
        File::create(&probe).map_err(at("cannot write in", &probe))?;
        fs::remove_file(&probe).map_err(at("cannot remove", &probe))?;
        Ok(store)
    }

    /// The store at `root` as it is, for reading: nothing is created.
    pub fn existing(root: &Path) -> Store {
        Store { root: root.to_path_buf() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.root.join(RUNS)
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP)
    }

    /// The object's path relative to the store root, as reports show it.
    pub fn relative_object_path(sha256_hex: &str) -> PathBuf {
        Path::new(OBJECTS).join(&sha256_hex[..2]).join(sha256_hex)
    }

    pub fn object_path(&self, sha256_hex: &str) -> PathBuf {
        self.root.join(Self::relative_object_path(sha256_hex))
    }

    /// Whether the object is present with the expected size.
    pub fn has_object(&self, sha256_hex: &str, bytes: Option<u64>) -> bool {
        if sha256_hex.len() != 64 {
            return false;
        }
        match fs::metadata(self.object_path(sha256_hex)) {
            Ok(meta) => meta.is_file() && bytes.is_none_or(|bytes| meta.len() == bytes),
            Err(_) => false,
        }
    }

    /// The object's size, if it is stored.
    pub fn object_size(&self, sha256_hex: &str) -> Option<u64> {
        let path = (sha256_hex.len() == 64).then(|| self.object_path(sha256_hex))?;
        fs::metadata(path).ok().filter(|meta| meta.is_file()).map(|meta| meta.len())
    }

    /// The partial download of one request. Its name comes from the request,
    /// so a later attempt, or a later run, finds it again.
    pub fn partial(&self, kind: Kind, id: &str) -> Partial {
        let digest = Sha256::digest(format!("{kind}\0{id}").as_bytes());
        let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let tmp = self.root.join(TMP);
        Partial {
            data: tmp.join(format!("{name}{PART}")),
            meta: tmp.join(format!("{name}{PART_META}")),
        }
    }

    /// Moves a finished, fsynced partial file into place under its hash. The
    /// record stays behind, naming the hash, until the row is in the journal:
    /// a crash in between must not cost the next run a download.
    /// Blocking: call it from a blocking thread.
    pub fn commit(&self, partial: &Partial, sha256_hex: &str) -> Result<PathBuf, StoreError> {
        let relative = Self::relative_object_path(sha256_hex);
        let target = self.root.join(&relative);
        let fan_out = target.parent().expect("an object path has a parent");
        if target.exists() {
            // The same bytes are already stored; the record stays until the
            // row is journaled (see `Partial::forget`).
            let _ = fs::remove_file(&partial.data);
            return Ok(relative);
        }
        if !fan_out.exists() {
            fs::create_dir_all(fan_out).map_err(at("cannot create", fan_out))?;
            sync_dir(&self.root.join(OBJECTS))?;
        }
        let mut permissions =
            fs::metadata(&partial.data).map_err(at("cannot stat", &partial.data))?.permissions();
        permissions.set_readonly(true);
        fs::set_permissions(&partial.data, permissions)
            .map_err(at("cannot make read-only", &partial.data))?;
        fs::rename(&partial.data, &target).map_err(at("cannot move into place", &target))?;
        sync_dir(fan_out)?;
        Ok(relative)
    }

    /// Removes what a crashed or killed run left in `tmp/` that cannot be
    /// resumed: files with no record beside them, records with no file, and
    /// half-written records. Only files older than `started` are touched, so
    /// nothing of the present run is. Returns how many files went.
    pub fn clean_tmp(&self, started: SystemTime) -> Result<usize, StoreError> {
        let tmp = self.root.join(TMP);
        let entries = fs::read_dir(&tmp).map_err(at("cannot list", &tmp))?;
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|m| m < started);
            if old && !is_resumable(&path) && fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The records of downloads received whole (their hash known) that are
    /// still in `tmp/`: a run killed between its journal line and forgetting
    /// the record leaves one behind. Read once at the start of a run.
    pub fn finished_records(&self) -> HashSet<PathBuf> {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else { return HashSet::new() };
        let records = entries.flatten().map(|entry| entry.path());
        let records = records.filter(|path| path.to_string_lossy().ends_with(PART_META));
        records.filter(|path| read_meta(path).is_some_and(|meta| meta.sha256.is_some())).collect()
    }
}

/// A partial file and its record, kept together.
fn is_resumable(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if let Some(stem) = name.strip_suffix(PART_META) {
        let data = path.with_file_name(format!("{stem}{PART}"));
        return read_meta(path).is_some_and(|meta| meta.sha256.is_some() || data.is_file());
    }
    if let Some(stem) = name.strip_suffix(PART) {
        return read_meta(&path.with_file_name(format!("{stem}{PART_META}"))).is_some();
    }
    false
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(at("cannot fsync", dir))
}

/// What is remembered of a download in progress, beside its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialMeta {
    /// The storage host's validators: a resumed range must match them.
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The whole file's length, as the storage host announced it.
    pub length: Option<u64>,
    /// Bytes known to be on disk (fsynced): what a resume keeps at most
    /// after a reboot. Under the boot that wrote the file, all of it is kept.
    pub durable: u64,
    /// Set once the whole file is received and fsynced: its hash, and its
    /// content type for the report.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
}

impl PartialMeta {
    /// The `If-Range` value: the ETag if strong, else the Last-Modified date.
    pub fn validator(&self) -> Option<&str> {
        let strong_etag = self.etag.as_deref().filter(|etag| !etag.starts_with("W/"));
        strong_etag.or(self.last_modified.as_deref())
    }
}

/// A record as it is stored: the download's state and the boot that wrote
/// it. The boot belongs to the write, not to the download, so every write
/// stamps the running one and `PartialMeta` does not carry it.
#[derive(Deserialize)]
struct Record {
    #[serde(flatten)]
    meta: PartialMeta,
    /// Absent in records of versions before boots were recorded.
    #[serde(default)]
    boot_id: Option<String>,
}

/// The same, borrowed, for writing.
#[derive(Serialize)]
struct RecordOut<'a> {
    #[serde(flatten)]
    meta: &'a PartialMeta,
    boot_id: Option<&'a str>,
}

/// How many leading bytes of a partial file `on_disk` bytes long a resume
/// can keep, when the running boot is `current`.
///
/// Under the boot the record was written in, all of them: write() extends
/// a file only after copying the bytes, so every byte inside its length
/// holds what the dead process wrote, and only a crash of the kernel or of
/// the power, which ends the boot, loses bytes not yet fsynced. No record is
/// written under a boot while the file holds unsynced bytes of an earlier
/// one: `begin` empties the file and `reopen` cuts it to what it keeps
/// before writing theirs. Otherwise, or when the boot is unknown, only the
/// fsynced bytes count.
fn kept_bytes(record: &Record, on_disk: u64, current: Option<&str>) -> u64 {
    // Longer than the download it records: not that download's bytes.
    if record.meta.length.is_some_and(|length| on_disk > length) {
        return 0;
    }
    let same_boot = current.is_some() && record.boot_id.as_deref() == current;
    if same_boot { on_disk } else { on_disk.min(record.meta.durable) }
}

/// What writing a record waits for, by what the record must outlive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Nothing: the record outlives a kill, not a power cut. Enough for one
    /// that vouches for no fsynced byte (a download just begun or reopened):
    /// losing it loses nothing that was durable.
    Nothing,
    /// The record's bytes, before the rename. A power cut then leaves it or
    /// the download's previous record, both true of the fsynced bytes; enough
    /// once an earlier record's name, and the file's, are durable.
    Record,
    /// Those, and then `tmp/` itself, so that the rename and the partial
    /// file's own name are on disk too.
    RecordAndFolder,
}

/// The files of one request's download in progress.
#[derive(Debug, Clone)]
pub struct Partial {
    data: PathBuf,
    meta: PathBuf,
}

impl Partial {
    pub fn data_path(&self) -> &Path {
        &self.data
    }

    pub fn record_path(&self) -> &Path {
        &self.meta
    }

    /// Where a resumed download can start, and what it must match: `None`
    /// when there is nothing to resume, or nothing to check a resume by.
    pub fn resume_point(&self) -> Option<(PartialMeta, u64)> {
        let (meta, offset) = self.kept()?;
        meta.validator()?;
        let length = meta.length?;
        (offset > 0 && offset < length).then_some((meta, offset))
    }

    /// The record of a download whose every byte is in the file but whose
    /// record does not name the hash: a kill after the last byte was written
    /// and before the last record. It needs hashing, not a request.
    pub fn received_unhashed(&self) -> Option<PartialMeta> {
        let (meta, kept) = self.kept()?;
        (meta.sha256.is_none() && meta.length == Some(kept)).then_some(meta)
    }

    /// The record, and how many of the file's bytes a resume keeps.
    fn kept(&self) -> Option<(PartialMeta, u64)> {
        let record = read_record(&self.meta)?;
        let on_disk = fs::metadata(&self.data).ok()?.len();
        let kept = kept_bytes(&record, on_disk, disk::boot_id());
        Some((record.meta, kept))
    }

    /// Starts the download afresh: an empty file and a new record.
    pub fn begin(&self, meta: &PartialMeta) -> Result<File, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&self.data)
            .map_err(at("cannot create", &self.data))?;
        self.record(meta, Fsync::Nothing)?;
        Ok(file)
    }

    /// Reopens the file to continue at `offset`, dropping anything past it
    /// that a resume does not keep, and stamps the record with this boot.
    pub fn reopen(&self, meta: &PartialMeta, offset: u64) -> Result<File, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.data)
            .map_err(at("cannot reopen", &self.data))?;
        file.set_len(offset).map_err(at("cannot truncate", &self.data))?;
        // Only now, with no byte of an earlier boot past `durable` left, may
        // the record say this boot: a kill before the next checkpoint then
        // keeps what this process writes.
        self.record(meta, Fsync::Nothing)?;
        Ok(file)
    }

    /// Replaces the record atomically and durably: it outlives a power cut.
    pub fn checkpoint(&self, meta: &PartialMeta) -> Result<(), StoreError> {
        self.record(meta, Fsync::RecordAndFolder)
    }

    /// Replaces the record atomically (written aside, then renamed), stamped
    /// with the running boot, waiting for what `fsync` says.
    pub fn record(&self, meta: &PartialMeta, fsync: Fsync) -> Result<(), StoreError> {
        self.write_record(meta, disk::boot_id(), fsync)
    }

    fn write_record(
        &self,
        meta: &PartialMeta,
        boot_id: Option<&str>,
        fsync: Fsync,
    ) -> Result<(), StoreError> {
        let aside = self.meta.with_extension("json.new");
        let text =
            serde_json::to_vec(&RecordOut { meta, boot_id }).expect("a partial record serializes");
        let mut file = File::create(&aside).map_err(at("cannot write", &aside))?;
        file.write_all(&text).map_err(at("cannot write", &aside))?;
        if fsync != Fsync::Nothing {
            // Before the rename: a rename that outlives the bytes it names
            // would leave an empty record, and its durable file as debris.
            file.sync_data().map_err(at("cannot fsync", &aside))?;
        }
        fs::rename(&aside, &self.meta).map_err(at("cannot write", &self.meta))?;
        if fsync == Fsync::RecordAndFolder {
            sync_dir(self.meta.parent().expect("a record is in tmp/"))?;
        }
        Ok(())
    }

    /// Makes a download that `received_unhashed` found durable and whole:
    /// fsyncs its file (bytes of this boot may be in the page cache only),
    /// then records `meta`, which names the hash. Blocking.
    pub fn seal(&self, meta: &PartialMeta) -> Result<(), StoreError> {
        // Writable: some systems fsync only files opened for writing.
        let file = OpenOptions::new().write(true).open(&self.data);
        let file = file.map_err(at("cannot reopen", &self.data))?;
        file.sync_data().map_err(at("cannot fsync", &self.data))?;
        self.checkpoint(meta)
    }

    /// Forgets the download: the next attempt starts from zero.
    pub fn discard(&self) {
        let _ = fs::remove_file(&self.data);
        let _ = fs::remove_file(&self.meta);
    }

    /// The record of a download that was received whole (its hash known),
    /// whether or not its file has reached `objects/` yet.
    pub fn finished(&self) -> Option<PartialMeta> {
        read_meta(&self.meta).filter(|meta| meta.sha256.is_some() && meta.length.is_some())
    }

    /// Whether the partial file holds exactly `length` durable bytes.
    pub fn holds_whole(&self, meta: &PartialMeta) -> bool {
        let on_disk = fs::metadata(&self.data).map(|m| m.len()).ok();
        meta.length.is_some_and(|length| on_disk == Some(length) && meta.durable == length)
    }
}

fn read_meta(path: &Path) -> Option<PartialMeta> {
    read_record(path).map(|record| record.meta)
}

fn read_record(path: &Path) -> Option<Record> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn meta(length: u64, durable: u64) -> PartialMeta {
        PartialMeta {
            etag: Some("\"e1\"".into()),
            last_modified: None,
            length: Some(length),
            durable,
            sha256: None,
            content_type: None,
        }
    }

    /// A boot that is not the running one: what a reboot leaves behind.
    const EARLIER_BOOT: Option<&str> = Some("00000000-0000-0000-0000-000000000000");

    #[test]
    fn after_a_reboot_a_partial_resumes_from_its_durable_bytes_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let partial = store.partial(Kind::Video, "v1");
        assert!(partial.resume_point().is_none(), "nothing yet");
        let mut file = partial.begin(&meta(100, 0)).unwrap();
        file.write_all(&[7; 60]).unwrap();
        partial.write_record(&meta(100, 0), EARLIER_BOOT, Fsync::Nothing).unwrap();
        assert!(partial.resume_point().is_none(), "written but not yet durable");
        partial.write_record(&meta(100, 40), EARLIER_BOOT, Fsync::RecordAndFolder).unwrap();
        let (found, offset) = partial.resume_point().unwrap();
        assert_eq!((found.length, offset), (Some(100), 40));
        let reopened = partial.reopen(&found, offset).unwrap();
        assert_eq!(reopened.metadata().unwrap().len(), 40);
        // The same request finds the same files; another does not.
        assert_eq!(store.partial(Kind::Video, "v1").data_path(), partial.data_path());
        assert_ne!(store.partial(Kind::Image, "v1").data_path(), partial.data_path());
    }

    #[test]
    fn what_a_resume_keeps_depends_on_the_boot_that_wrote_the_record() {
        let record =
            |boot: Option<&str>| Record { meta: meta(100, 40), boot_id: boot.map(str::to_owned) };
        let this = Some("8d1e3c52-6a4f-4b7e-9f2d-0c5b7a9e1f33");
        // The same boot: a kill spared the page cache, so the whole file.
        assert_eq!(kept_bytes(&record(this), 70, this), 70);
        assert_eq!(kept_bytes(&record(this), 30, this), 30, "below durable too");
        assert_eq!(kept_bytes(&record(this), 100, this), 100, "whole");
        // Another boot: a crash may have come between; what was fsynced.
        assert_eq!(kept_bytes(&record(EARLIER_BOOT), 70, this), 40);
        assert_eq!(kept_bytes(&record(EARLIER_BOOT), 30, this), 30, "never past the end");
        // The boot unreadable now or then (not Linux, or an older record):
        // what was fsynced, even if both are unknown alike.
        assert_eq!(kept_bytes(&record(this), 70, None), 40);
        assert_eq!(kept_bytes(&record(None), 70, this), 40);
        assert_eq!(kept_bytes(&record(None), 70, None), 40);
        // Longer than the download it records: nothing of it.
        assert_eq!(kept_bytes(&record(this), 101, this), 0);
        assert_eq!(kept_bytes(&record(EARLIER_BOOT), 101, this), 0);
    }

    #[test]
    fn under_the_same_boot_a_partial_resumes_from_its_whole_length() {
        if disk::boot_id().is_none() {
            return; // Not Linux: the durable bytes only, as tested above.
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let partial = store.partial(Kind::Video, "v1");
        let mut file = partial.begin(&meta(100, 0)).unwrap();
        file.write_all(&[7; 60]).unwrap();
        let (_, offset) = partial.resume_point().expect("written under this boot");
        assert_eq!(offset, 60, "nothing fsynced, yet all of it is kept");
        assert!(partial.received_unhashed().is_none(), "not whole yet");
        file.write_all(&[7; 40]).unwrap();
        assert!(partial.resume_point().is_none(), "nothing left to ask for");
        assert_eq!(partial.received_unhashed(), Some(meta(100, 0)), "only hashing left");
        file.write_all(&[7]).unwrap();
        assert!(partial.resume_point().is_none(), "longer than the download");
        assert!(partial.received_unhashed().is_none());
    }

    #[test]
    fn a_record_durable_to_its_length_without_a_hash_needs_only_hashing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let partial = store.partial(Kind::Video, "v1");
        partial.begin(&meta(100, 0)).unwrap().write_all(&[7; 100]).unwrap();
        // What an idle checkpoint after the last byte used to leave.
        partial.write_record(&meta(100, 100), EARLIER_BOOT, Fsync::RecordAndFolder).unwrap();
        assert!(partial.resume_point().is_none());
        assert_eq!(partial.received_unhashed(), Some(meta(100, 100)));
        let hashed = PartialMeta { sha256: Some("ab".repeat(32)), ..meta(100, 100) };
        partial.seal(&hashed).unwrap();
        assert_eq!(partial.finished(), Some(hashed));
        assert!(partial.received_unhashed().is_none(), "hashed now");
    }

    #[test]
    fn records_name_their_boot_and_older_records_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let partial = store.partial(Kind::Video, "v1");
        partial.begin(&meta(100, 0)).unwrap().write_all(&[7; 60]).unwrap();
        partial.checkpoint(&meta(100, 60)).unwrap();
        let text: serde_json::Value =
            serde_json::from_slice(&fs::read(partial.record_path()).unwrap()).unwrap();
        assert_eq!(text["boot_id"].as_str(), disk::boot_id());
        assert_eq!(text["durable"], 60, "the download's fields stay at the top");
        assert!(!partial.record_path().with_extension("json.new").exists(), "renamed");
        // A record from before boots were recorded: the durable bytes only.
        let old = r#"{"etag":"\"e1\"","last_modified":null,"length":100,"durable":20}"#;
        fs::write(partial.record_path(), old).unwrap();
        let (found, offset) = partial.resume_point().unwrap();
        assert_eq!((found, offset), (meta(100, 20), 20));
    }

    #[test]
    fn without_a_validator_nothing_is_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let partial = store.partial(Kind::Image, "i");
        let weak = PartialMeta { etag: Some("W/\"x\"".into()), ..meta(10, 5) };
        partial.begin(&weak).unwrap().write_all(&[1; 5]).unwrap();
        assert!(partial.resume_point().is_none(), "a weak ETag cannot vouch for bytes");
    }

    #[test]
    fn commit_makes_a_read_only_object_and_forgets_the_partial() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let partial = store.partial(Kind::Image, "i");
        partial.begin(&meta(3, 0)).unwrap().write_all(b"abc").unwrap();
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let relative = store.commit(&partial, hex).unwrap();
        partial.discard(); // As the run does once the row is journaled.
        let object = dir.path().join(&relative);
        assert_eq!(fs::read(&object).unwrap(), b"abc");
        assert!(fs::metadata(&object).unwrap().permissions().readonly());
        assert!(store.has_object(hex, Some(3)) && !store.has_object(hex, Some(4)));
        assert!(fs::read_dir(store.tmp_dir()).unwrap().next().is_none(), "tmp/ is empty");

        // The same bytes again: success, and the second copy goes away.
        let again = store.partial(Kind::Image, "j");
        again.begin(&meta(3, 0)).unwrap().write_all(b"abc").unwrap();
        assert_eq!(store.commit(&again, hex).unwrap(), relative);
        assert!(!again.data_path().exists());
        again.discard();
    }

    #[test]
    fn cleaning_keeps_resumable_partials_and_removes_debris() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let partial = store.partial(Kind::Video, "keep");
        partial.begin(&meta(10, 4)).unwrap().write_all(&[0; 4]).unwrap();
        // A record of a whole download outlives its file: it names the hash.
        let finished = store.partial(Kind::Image, "moved");
        let whole = PartialMeta { sha256: Some("ab".repeat(32)), ..meta(10, 10) };
        finished.checkpoint(&whole).unwrap();
        let orphan = store.tmp_dir().join("0123.part");
        let torn = store.tmp_dir().join("4567.part.json");
        fs::write(&orphan, b"x").unwrap();
        fs::write(&torn, b"{\"etag\":").unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        assert_eq!(store.clean_tmp(later).unwrap(), 2);
        assert!(partial.resume_point().is_some());
        assert!(finished.finished().is_some());
        assert!(!orphan.exists() && !torn.exists());
    }
}
