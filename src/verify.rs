//! `identifai-fetch verify DIR`: proves that a store holds what it claims to.
//!
//! Two checks run, in this order:
//!
//! 1. Every entry under `objects/sha256/` must be a regular file named by the
//!    SHA-256 of its bytes (64 lower-case hex digits) inside the fan-out folder
//!    of its first two digits. The full check re-hashes every object on a
//!    small pool of threads; `--quick` checks names and folders only. An object
//!    whose bytes do not match its name, and anything else found there (a
//!    stray), is moved to `DIR/quarantine/`, never deleted: it is evidence, and
//!    a person may want to see what went wrong with it.
//! 2. Every request whose latest journal outcome is `ok` must find its object
//!    present, with the size the journal recorded. The reports under `runs/`
//!    are not read: a report's `ok` rows were all journaled before they were
//!    reported, so the journal already names every object a report does.
//!
//! Moving an object out makes the store forget it: the next run whose
//! manifest asks for that file downloads it again. That is the repair.
//!
//! The by-id view would still show a file that is gone (a link into nowhere,
//! or a copy of bytes the store no longer vouches for), so when an `ok` row
//! lost its object verify rebuilds the view, in the mode it was built in.
//! That needs the store's lock, which verify only tries for: while a run holds
//! it, verify says so and leaves the view to that run's end or to `link`.
//!
//! Problems are written to `DIR/verify/<timestamp>.csv`, one line each.
//!
//! The checks take no lock, so verify may run beside a download run: a run
//! writes into `tmp/` and only renames finished, fsynced files into
//! `objects/`, so nothing verify reads is half-written.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::num::NonZero;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::journal::{self, JournalIndex, Known};
use crate::lock::{self, StoreLock};
use crate::manifest::Kind;
use crate::store::{Store, StoreError, at};
use crate::view;

/// Where objects live, relative to the store's folder (see [`Store`]).
pub(crate) const OBJECTS: &str = "objects/sha256";
const QUARANTINE: &str = "quarantine";
const REPORTS: &str = "verify";

/// Large enough that hashing, not system calls, dominates; small enough that
/// a pool of threads stays within a few MiB however large the objects are.
const BUFFER: usize = 1 << 20;

/// Beyond this many threads the disk, not SHA-256, is the limit, and more
/// readers only make a spinning disk seek.
const DEFAULT_MAX_THREADS: usize = 8;

/// How thoroughly to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Skip hashing: check names, folders, presence and sizes only.
    pub quick: bool,
    /// How many threads hash at once; `None` picks from the machine's cores.
    pub threads: Option<usize>,
}

/// An object whose bytes do not hash to its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Where the object was, relative to the store's folder.
    pub object: PathBuf,
    /// The hash its name claims.
    pub expected: String,
    /// The hash of its bytes.
    pub found: String,
    /// Where it is now, relative to the store's folder.
    pub quarantined: PathBuf,
}

/// A request the journal records as `ok` whose object is absent or the wrong size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub kind: Kind,
    /// The id the API was asked for.
    pub id: String,
    /// The object's hash, as the journal recorded it.
    pub sha256: String,
    /// What is wrong, in words.
    pub reason: String,
}

/// An object that could not be read to the end; it is left where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Relative to the store's folder.
    pub object: PathBuf,
    pub error: String,
}

/// What a verification found and did.
#[derive(Debug, Clone)]
pub struct VerifyOutcome {
    /// Well-formed objects looked at (hashed, unless quick).
    pub objects_checked: u64,
    /// Bytes hashed (0 when quick).
    pub bytes_checked: u64,
    /// Objects moved to quarantine because their bytes did not match their name.
    pub mismatched: Vec<Mismatch>,
    /// Journal requests whose object is absent or the wrong size.
    pub missing: Vec<Missing>,
    /// Entries under `objects/` that are not objects, as they were found
    /// (relative to the store's folder); all were moved to quarantine.
    pub stray: Vec<PathBuf>,
    /// Objects that could not be read (a permission or a disk error).
    pub unreadable: Vec<Unreadable>,
    /// The CSV file that lists every problem.
    pub report_path: PathBuf,
    pub elapsed: Duration,
    /// The run holding the store's lock while verify ran, if any.
    pub run_in_progress: Option<String>,
    /// What became of the by-id view.
    pub view: ViewRepair,
}

/// What verify did about the by-id view once objects were found gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewRepair {
    /// No `ok` row lost its object, or the store has no view.
    Unneeded,
    /// The view was rebuilt without the objects that are gone.
    Rebuilt,
    /// The view could not be rebuilt now, for this reason; it may still
    /// show files that are gone until `link DIR` or the next run rebuilds it.
    Deferred(String),
}

impl VerifyOutcome {
    /// True when verify found nothing wrong.
    pub fn is_clean(&self) -> bool {
        self.mismatched.is_empty()
            && self.missing.is_empty()
            && self.stray.is_empty()
            && self.unreadable.is_empty()
    }
}

/// Why a folder cannot be read as a store.
#[derive(Debug, thiserror::Error)]
pub enum NotAStore {
    #[error("{} does not exist", path.display())]
    Absent { path: PathBuf },
    #[error("{} is not an identifai-fetch store: it has no objects/ folder", path.display())]
    NoObjects { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why verify could not finish.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    NotAStore(#[from] NotAStore),
    /// Listing, moving or writing failed: the store, not one object, is in trouble.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks the store at `dir`, moves what is wrong to quarantine and writes
/// the list of problems to `DIR/verify/<timestamp>.csv`.
pub fn verify(dir: &Path, options: &VerifyOptions) -> Result<VerifyOutcome, VerifyError> {
    let started = Instant::now();
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    check_store(dir)?;
    let holder = lock::current_holder(dir).map_err(at("cannot read the lock of", dir))?;
    // The journal before the objects: a run journals a row only after its
    // object is in place, so every row read here has its object listed below.
    let journal_path = dir.join(journal::FILE_NAME);
    let journal = JournalIndex::load(dir).map_err(at("cannot read", &journal_path))?;
    let listing = list_objects(dir)?;

    let mut findings = Findings::new(dir);
    findings.quarantine_strays(listing.stray)?;
    let objects = if options.quick {
        findings.objects_checked = listing.objects.len() as u64;
        listing.objects
    } else {
        findings.check_hashes(listing.objects, options.threads)?
    };
    findings.check_journal(&journal, &objects);
    let report_path = write_report(dir, &stamp, &findings.rows)?;
    let view = if findings.missing.is_empty() || !view::has_view(dir) {
        ViewRepair::Unneeded
    } else {
        repair_view(dir)
    };
    let outcome = findings.into_outcome(report_path, started.elapsed(), holder, view);
    tracing::debug!(
        objects = outcome.objects_checked,
        bytes = outcome.bytes_checked,
        mismatched = outcome.mismatched.len(),
        missing = outcome.missing.len(),
        stray = outcome.stray.len(),
        unreadable = outcome.unreadable.len(),
        elapsed_ms = outcome.elapsed.as_millis() as u64,
        "verified the store"
    );
    Ok(outcome)
}

/// Takes the entries of objects that are gone out of the by-id view, and
/// says what it did on stderr, since that is where a user of `verify` looks.
fn repair_view(dir: &Path) -> ViewRepair {
    // First, so that whatever happens below, the next run's refresh rebuilds
    // the view: refresh watches the journal, and the journal did not change.
    if let Err(error) = view::invalidate(dir) {
        tracing::debug!(%error, "cannot remove the view's stamp");
    }
    let repair = match StoreLock::acquire(dir) {
        // Never waits: a run holding the lock may go on for hours.
        Err(error) => ViewRepair::Deferred(error.to_string()),
        Ok(lock) => {
            let rebuilt = view::rebuild_existing(dir);
            if let Err(error) = lock.release() {
                tracing::warn!(%error, "could not clear the lock record");
            }
            match rebuilt {
                Ok(Some(_)) => ViewRepair::Rebuilt,
                Ok(None) => ViewRepair::Unneeded,
                Err(error) => ViewRepair::Deferred(error.to_string()),
            }
        }
    };
    match &repair {
        ViewRepair::Rebuilt => {
            tracing::info!(dir = %dir.display(), "rebuilt by-id/ without the files that are gone")
        }
        ViewRepair::Deferred(reason) => tracing::warn!(
            "by-id/ may still show files that are gone: cannot rebuild it now ({reason}); \
             the next run rebuilds it, or run `identifai-fetch link {}`",
            dir.display()
        ),
        ViewRepair::Unneeded => {}
    }
    repair
}

/// Fails unless `dir` is a folder with an `objects/` folder in it.
pub(crate) fn check_store(dir: &Path) -> Result<(), NotAStore> {
    let objects = dir.join("objects");
    match fs::metadata(&objects) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(NotAStore::NoObjects { path: dir.to_path_buf() }),
        Err(_) if !dir.exists() => Err(NotAStore::Absent { path: dir.to_path_buf() }),
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
            Err(NotAStore::NoObjects { path: dir.to_path_buf() })
        }
        Err(source) => Err(NotAStore::Unreadable { path: objects, source }),
    }
}

/// A file under `objects/` whose name and folder are right.
#[derive(Debug, Clone)]
pub(crate) struct ObjectFile {
    pub hex: String,
    pub path: PathBuf,
    pub len: u64,
}

/// An entry under `objects/` that is not an object, and why.
#[derive(Debug, Clone)]
pub(crate) struct StrayEntry {
    pub path: PathBuf,
    pub why: &'static str,
}

/// What `objects/sha256/` holds, sorted by path.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub objects: Vec<ObjectFile>,
    pub stray: Vec<StrayEntry>,
}

/// Lists the store's objects without reading them. Symbolic links are
/// strays: the store never makes one, and following it could hash any file.
pub(crate) fn list_objects(dir: &Path) -> Result<Listing, StoreError> {
    let mut listing = Listing::default();
    let root = dir.join(OBJECTS);
    for entry in sorted_entries(&root)? {
        let path = entry.path();
        let file_type = entry.file_type().map_err(at("cannot stat", &path))?;
        match entry.file_name().to_str().filter(|name| is_fan_out(name)) {
            Some(prefix) if file_type.is_dir() => list_fan_out(&path, prefix, &mut listing)?,
            _ => listing.stray.push(StrayEntry { path, why: "not in a fan-out folder" }),
        }
    }
    Ok(listing)
}

fn list_fan_out(folder: &Path, prefix: &str, listing: &mut Listing) -> Result<(), StoreError> {
    for entry in sorted_entries(folder)? {
        let path = entry.path();
        let file_type = entry.file_type().map_err(at("cannot stat", &path))?;
        let name = entry.file_name();
        let why = match name.to_str().filter(|name| is_object_name(name)) {
            _ if !file_type.is_file() => "not a regular file",
            None => "name is not 64 lower-case hex digits",
            Some(hex) if !hex.starts_with(prefix) => "in the wrong fan-out folder",
            Some(hex) => {
                let len = entry.metadata().map_err(at("cannot stat", &path))?.len();
                listing.objects.push(ObjectFile { hex: hex.to_owned(), path, len });
                continue;
            }
        };
        listing.stray.push(StrayEntry { path, why });
    }
    Ok(())
}

/// A folder's entries in name order, so that reports read the same twice;
/// a folder that does not exist is empty.
fn sorted_entries(folder: &Path) -> Result<Vec<fs::DirEntry>, StoreError> {
    let entries = match fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(at("cannot list", folder)(e)),
    };
    let mut entries = entries.collect::<Result<Vec<_>, _>>().map_err(at("cannot list", folder))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    Ok(entries)
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_fan_out(name: &str) -> bool {
    name.len() == 2 && is_lower_hex(name)
}

/// Whether `name` could be a SHA-256 as the store writes it.
pub(crate) fn is_object_name(name: &str) -> bool {
    name.len() == 64 && is_lower_hex(name)
}

/// One line of the verification report.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReportRow {
    check: &'static str,
    path_or_id: String,
    expected: String,
    found: String,
    action: String,
}

const REPORT_COLUMNS: [&str; 5] = ["check", "path_or_id", "expected", "found", "action"];

/// What verify has found so far, and the report lines that say so.
struct Findings<'a> {
    dir: &'a Path,
    objects_checked: u64,
    bytes_checked: u64,
    mismatched: Vec<Mismatch>,
    missing: Vec<Missing>,
    stray: Vec<PathBuf>,
    unreadable: Vec<Unreadable>,
    /// Object names moved out, and why, so a journal row can say where its object went.
    quarantined: HashMap<String, &'static str>,
    rows: Vec<ReportRow>,
}

impl<'a> Findings<'a> {
    fn new(dir: &'a Path) -> Findings<'a> {
        Findings {
            dir,
            objects_checked: 0,
            bytes_checked: 0,
            mismatched: Vec::new(),
            missing: Vec::new(),
            stray: Vec::new(),
            unreadable: Vec::new(),
            quarantined: HashMap::new(),
            rows: Vec::new(),
        }
    }

    fn relative(&self, path: &Path) -> PathBuf {
        path.strip_prefix(self.dir).unwrap_or(path).to_path_buf()
    }

    fn quarantine_strays(&mut self, strays: Vec<StrayEntry>) -> Result<(), StoreError> {
        for stray in strays {
            let name = stray.path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let expected = if is_object_name(&name) {
                Store::relative_object_path(&name).display().to_string()
            } else {
                format!("{OBJECTS}/<2 hex>/<64 hex>")
            };
            let moved = quarantine(self.dir, &stray.path)?;
            self.quarantined.insert(name, "moved to quarantine as a stray");
            let relative = self.relative(&stray.path);
            self.rows.push(ReportRow {
                check: "name",
                path_or_id: relative.display().to_string(),
                expected,
                found: stray.why.to_owned(),
                action: format!("moved to {}", moved.display()),
            });
            self.stray.push(relative);
        }
        Ok(())
    }

    /// Hashes every object and moves out those that do not match; returns
    /// the objects still in place.
    fn check_hashes(
        &mut self,
        mut objects: Vec<ObjectFile>,
        threads: Option<usize>,
    ) -> Result<Vec<ObjectFile>, StoreError> {
        // Largest first, so that one big file does not start last and run alone.
        objects.sort_by_key(|object| std::cmp::Reverse(object.len));
        let hashes = hash_all(&objects, pool_size(threads, objects.len()));
        let mut checked: Vec<_> = objects.into_iter().zip(hashes).collect();
        checked.sort_by(|(a, _), (b, _)| a.path.cmp(&b.path));
        let mut kept = Vec::with_capacity(checked.len());
        for (object, hash) in checked {
            self.objects_checked += 1;
            match hash {
                Ok((found, bytes)) => {
                    self.bytes_checked += bytes;
                    if found == object.hex {
                        kept.push(object);
                    } else {
                        self.mismatch(object, found)?;
                    }
                }
                Err(error) => {
                    self.unreadable(&object, &error);
                    kept.push(object);
                }
            }
        }
        Ok(kept)
    }

    fn mismatch(&mut self, object: ObjectFile, found: String) -> Result<(), StoreError> {
        let quarantined = quarantine(self.dir, &object.path)?;
        let relative = self.relative(&object.path);
        self.rows.push(ReportRow {
            check: "hash",
            path_or_id: relative.display().to_string(),
            expected: object.hex.clone(),
            found: found.clone(),
            action: format!("moved to {}", quarantined.display()),
        });
        self.quarantined.insert(object.hex.clone(), "moved to quarantine: its bytes changed");
        let expected = object.hex;
        self.mismatched.push(Mismatch { object: relative, expected, found, quarantined });
        Ok(())
    }

    fn unreadable(&mut self, object: &ObjectFile, error: &io::Error) {
        let relative = self.relative(&object.path);
        self.rows.push(ReportRow {
            check: "read",
            path_or_id: relative.display().to_string(),
            expected: object.hex.clone(),
            found: format!("cannot read: {error}"),
            action: "left in place".to_owned(),
        });
        self.unreadable.push(Unreadable { object: relative, error: error.to_string() });
    }

    /// Checks every `ok` request of the journal against the objects in place.
    fn check_journal(&mut self, journal: &JournalIndex, objects: &[ObjectFile]) {
        let sizes: HashMap<&str, u64> =
            objects.iter().map(|object| (object.hex.as_str(), object.len)).collect();
        let mut missing: Vec<Missing> = journal
            .stored()
            .filter_map(|((kind, id), known)| {
                let reason = self.journal_problem(known, &sizes)?;
                Some(Missing { kind: *kind, id: id.clone(), sha256: known.sha256.clone(), reason })
            })
            .collect();
        missing.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
        for entry in &missing {
            let bytes = journal.get(entry.kind, &entry.id).and_then(|known| known.bytes);
            self.rows.push(ReportRow {
                check: "journal",
                path_or_id: format!("{} {}", entry.kind, entry.id),
                expected: match bytes {
                    Some(bytes) => format!("{} ({bytes} bytes)", entry.sha256),
                    None => entry.sha256.clone(),
                },
                found: entry.reason.clone(),
                action: "none: the next run that asks for it downloads it again".to_owned(),
            });
        }
        self.missing = missing;
    }

    /// What is wrong with a stored request's object, if anything.
    fn journal_problem(&self, known: &Known, sizes: &HashMap<&str, u64>) -> Option<String> {
        if !is_object_name(&known.sha256) {
            return Some("the journal records no valid sha256".to_owned());
        }
        match (sizes.get(known.sha256.as_str()), known.bytes) {
            (None, _) => Some(match self.quarantined.get(&known.sha256) {
                Some(why) => format!("absent: {why}"),
                None => "absent".to_owned(),
            }),
            (Some(&found), Some(expected)) if found != expected => {
                Some(format!("{found} bytes, the journal says {expected}"))
            }
            _ => None,
        }
    }

    fn into_outcome(
        self,
        report_path: PathBuf,
        elapsed: Duration,
        holder: Option<lock::Holder>,
        view: ViewRepair,
    ) -> VerifyOutcome {
        VerifyOutcome {
            objects_checked: self.objects_checked,
            bytes_checked: self.bytes_checked,
            mismatched: self.mismatched,
            missing: self.missing,
            stray: self.stray,
            unreadable: self.unreadable,
            report_path,
            elapsed,
            run_in_progress: holder.map(|holder| holder.to_string()),
            view,
        }
    }
}

fn pool_size(threads: Option<usize>, objects: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, NonZero::get);
    let wanted = threads.unwrap_or(cores.min(DEFAULT_MAX_THREADS));
    wanted.clamp(1, objects.max(1))
}

/// Hashes every object on `threads` threads; the results are in the order of `objects`.
fn hash_all(objects: &[ObjectFile], threads: usize) -> Vec<io::Result<(String, u64)>> {
    let next = AtomicUsize::new(0);
    let parts: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> =
            (0..threads).map(|_| scope.spawn(|| hash_some(objects, &next))).collect();
        workers.into_iter().map(|worker| worker.join().expect("hashing does not panic")).collect()
    });
    let mut results: Vec<Option<io::Result<(String, u64)>>> =
        std::iter::repeat_with(|| None).take(objects.len()).collect();
    for (index, result) in parts.into_iter().flatten() {
        results[index] = Some(result);
    }
    results.into_iter().map(|result| result.expect("every object was taken once")).collect()
}

/// One thread's share: it takes the next object nobody has taken, until none is left.
fn hash_some(
    objects: &[ObjectFile],
    next: &AtomicUsize,
) -> Vec<(usize, io::Result<(String, u64)>)> {
    let mut buffer = vec![0; BUFFER];
    let mut done = Vec::new();
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(object) = objects.get(index) else { return done };
        done.push((index, hash_file(&object.path, &mut buffer)));
    }
}

/// The file's SHA-256 in lower-case hex and its length, read in `buffer`-sized pieces.
pub(crate) fn hash_file(path: &Path, buffer: &mut [u8]) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut total = 0;
    loop {
        match file.read(buffer) {
            Ok(0) => return Ok((format!("{:x}", hasher.finalize()), total)),
            Ok(n) => {
                hasher.update(&buffer[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Moves `path` into `DIR/quarantine/` under its own name (with a number
/// added if that is taken) and returns where it went, relative to `dir`.
///
/// Not fsynced: if a crash undoes the move, the next verify finds the same
/// entry again and moves it again.
fn quarantine(dir: &Path, path: &Path) -> Result<PathBuf, StoreError> {
    let folder = dir.join(QUARANTINE);
    fs::create_dir_all(&folder).map_err(at("cannot create", &folder))?;
    let name = path.file_name().expect("a listed entry has a name");
    let target = free_name(&folder, name);
    fs::rename(path, &target).map_err(at("cannot move to quarantine", path))?;
    Ok(Path::new(QUARANTINE).join(target.file_name().expect("a name was chosen")))
}

/// `folder/name`, or `folder/name.2`, `.3`… whichever is not taken.
fn free_name(folder: &Path, name: &OsStr) -> PathBuf {
    let taken = |path: &Path| fs::symlink_metadata(path).is_ok();
    let plain = folder.join(name);
    if !taken(&plain) {
        return plain;
    }
    // Ends: each candidate is new, and a folder holds finitely many names.
    (2u64..)
        .map(|n| {
            let mut numbered = OsString::from(name);
            numbered.push(format!(".{n}"));
            folder.join(numbered)
        })
        .find(|candidate| !taken(candidate))
        .expect("some number is free")
}

/// Writes the report as `DIR/verify/<stamp>.csv`, or `<stamp>-2.csv`… if a
/// verify in the same second took that name.
fn write_report(dir: &Path, stamp: &str, rows: &[ReportRow]) -> Result<PathBuf, StoreError> {
    let folder = dir.join(REPORTS);
    fs::create_dir_all(&folder).map_err(at("cannot create", &folder))?;
    let (path, file) = create_numbered(&folder, stamp)?;
    let mut csv = csv::Writer::from_writer(file);
    let written = write_rows(&mut csv, rows).and_then(|()| csv.flush());
    written.map_err(at("cannot write", &path))?;
    Ok(path)
}

fn create_numbered(folder: &Path, stamp: &str) -> Result<(PathBuf, File), StoreError> {
    for n in 1..=100 {
        let name = if n == 1 { format!("{stamp}.csv") } else { format!("{stamp}-{n}.csv") };
        let path = folder.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(at("cannot create", &path)(e)),
        }
    }
    let source = io::Error::other("a hundred verify reports already exist for this second");
    Err(at("cannot create a report in", folder)(source))
}

fn write_rows(csv: &mut csv::Writer<File>, rows: &[ReportRow]) -> io::Result<()> {
    csv.write_record(REPORT_COLUMNS)?;
    for row in rows {
        let action = row.action.as_str();
        csv.write_record([row.check, &row.path_or_id, &row.expected, &row.found, action])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(bytes: &[u8]) -> String {
        format!("{:x}", Sha256::digest(bytes))
    }

    #[test]
    fn the_object_folder_is_the_one_the_store_writes() {
        let hex = sha256_hex(b"x");
        let expected = Path::new(OBJECTS).join(&hex[..2]).join(&hex);
        assert_eq!(Store::relative_object_path(&hex), expected);
    }

    #[test]
    fn names_must_be_lower_case_hex_of_the_right_length() {
        let hex = sha256_hex(b"abc");
        assert!(is_object_name(&hex));
        assert!(!is_object_name(&hex.to_uppercase()));
        assert!(!is_object_name(&hex[1..]));
        assert!(!is_object_name(&format!("{}g", &hex[1..])));
        assert!(is_fan_out("0f") && !is_fan_out("0F") && !is_fan_out("0") && !is_fan_out("abc"));
    }

    #[test]
    fn hashing_streams_through_a_small_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..10_000u32).map(|n| n as u8).collect();
        fs::write(&path, &bytes).unwrap();
        let mut buffer = [0; 7]; // Many reads, and a short last one.
        assert_eq!(hash_file(&path, &mut buffer).unwrap(), (sha256_hex(&bytes), 10_000));
    }

    #[test]
    fn every_object_is_hashed_once_whatever_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let objects: Vec<ObjectFile> = (0..9)
            .map(|n| {
                let path = dir.path().join(n.to_string());
                fs::write(&path, vec![n as u8; n]).unwrap();
                ObjectFile { hex: String::new(), path, len: n as u64 }
            })
            .collect();
        for threads in [1, 3, 16] {
            let hashes = hash_all(&objects, threads);
            for (n, hash) in hashes.into_iter().enumerate() {
                assert_eq!(hash.unwrap(), (sha256_hex(&vec![n as u8; n]), n as u64));
            }
        }
    }

    #[test]
    fn the_pool_has_at_least_one_thread_and_no_idle_ones() {
        assert_eq!(pool_size(Some(0), 10), 1);
        assert_eq!(pool_size(Some(4), 2), 2);
        assert_eq!(pool_size(Some(4), 0), 1);
        assert!((1..=DEFAULT_MAX_THREADS).contains(&pool_size(None, 1000)));
    }

    #[test]
    fn a_taken_quarantine_name_gets_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let name = OsStr::new("junk");
        assert_eq!(free_name(dir.path(), name), dir.path().join("junk"));
        fs::write(dir.path().join("junk"), b"").unwrap();
        assert_eq!(free_name(dir.path(), name), dir.path().join("junk.2"));
        fs::write(dir.path().join("junk.2"), b"").unwrap();
        assert_eq!(free_name(dir.path(), name), dir.path().join("junk.3"));
    }

    #[test]
    fn listing_sorts_objects_from_strays() {
        let dir = tempfile::tempdir().unwrap();
        let good = sha256_hex(b"good");
        let wrong_folder = sha256_hex(b"elsewhere");
        let elsewhere = if wrong_folder.starts_with("00") { "01" } else { "00" };
        let root = dir.path().join(OBJECTS);
        for folder in [&good[..2], elsewhere, "ZZ"] {
            fs::create_dir_all(root.join(folder)).unwrap();
        }
        fs::write(root.join(&good[..2]).join(&good), b"good").unwrap();
        fs::write(root.join(&good[..2]).join("notes.txt"), b"").unwrap();
        fs::write(root.join(elsewhere).join(&wrong_folder), b"elsewhere").unwrap();
        fs::write(root.join("loose"), b"").unwrap();

        let listing = list_objects(dir.path()).unwrap();
        let hexes: Vec<&str> = listing.objects.iter().map(|o| o.hex.as_str()).collect();
        assert_eq!(hexes, [good.as_str()]);
        assert_eq!(listing.objects[0].len, 4);
        let mut whys: Vec<&str> = listing.stray.iter().map(|s| s.why).collect();
        whys.sort();
        assert_eq!(
            whys,
            [
                "in the wrong fan-out folder",
                "name is not 64 lower-case hex digits",
                "not in a fan-out folder",
                "not in a fan-out folder",
            ]
        );
    }

    #[test]
    fn a_folder_without_objects_is_not_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let error = check_store(dir.path()).unwrap_err();
        assert!(matches!(error, NotAStore::NoObjects { .. }), "{error:?}");
        assert!(error.to_string().contains(&dir.path().display().to_string()));
        let absent = dir.path().join("nope");
        let error = check_store(&absent).unwrap_err();
        assert!(matches!(error, NotAStore::Absent { .. }), "{error:?}");
        fs::create_dir(dir.path().join("objects")).unwrap();
        check_store(dir.path()).unwrap();
    }
}
