//! The by-id view: the store's files under the names investigators ask for.
//!
//! Objects are named by their hash; people look for a submission by its
//! identifier. [`rebuild`] derives from the journal alone a tree of relative
//! symlinks into `objects/` (or, for media without symlinks, copies):
//!
//! ```text
//! DIR/by-id/<type>/<identifier>.<ext>                      a submission's own file
//! DIR/by-id/<type>/<identifier>/<frame_or_track_id>.<ext>  one frame or track of it
//! ```
//!
//! A request appears when its latest journal outcome is `ok` and its object
//! is present with the recorded size; nothing else does, so no link dangles.
//! The links are relative (`../../objects/sha256/ab/ab12…`), so the folder
//! keeps working when it is moved or mounted elsewhere.
//!
//! The view is disposable. It is built whole in `by-id.new/` and swapped in
//! (an atomic exchange where the kernel offers one), so a reader sees the old
//! view or the new one, never half of one. Nothing in it is fsynced: after a
//! crash the next rebuild makes it again from the journal. The caller holds
//! the store's lock, since two rebuilds would share `by-id.new/`.
//!
//! In copy mode a rebuild does not copy again what the previous view already
//! holds. `by-id.copies` beside the view records, for each copy, the object it
//! was copied from and the copy's size and modification time. A copy that is
//! still at the same path, from the same object, with that size and time, is
//! hard-linked into the new view, which costs no bytes and leaves the old view
//! whole for its readers until the swap. The object's hash is what tells the
//! copy is of the right file; size and time tell it was not edited since.
//!
//! # Names
//!
//! Identifiers are opaque strings from a CSV. [`safe_component`] turns each
//! into one path component that the common file systems (ext4, APFS, NTFS,
//! exFAT, FAT32) accept and that no tool mistakes for something else:
//!
//! - `%XX` (uppercase hex, per UTF-8 byte) replaces `%`, `~`, the separators
//!   and the characters Windows forbids (`/ \ : * ? " < > |`), control
//!   characters, and the invisible characters that can disguise a name on
//!   screen (bidirectional overrides, zero-width characters, the BOM);
//! - a leading `.` or space and a trailing `.` or space are encoded too, so a
//!   name is never `.` or `..`, never hidden, and never trimmed by Windows;
//! - a Windows device name (`CON`, `NUL`, `COM1`…, with or without an
//!   extension, in any case) gets its first letter encoded: `%43ON`;
//! - a name longer than 150 bytes is cut, between characters and never inside
//!   an escape, and ends in `~` and 8 hex digits of the SHA-256 of the whole
//!   identifier.
//!
//! Because `%` itself is always encoded, an uncut name decodes back to its
//! identifier, so different identifiers get different names. Because `~` is
//! always encoded, the `~` of a cut name or of a collision suffix never comes
//! from an identifier. An empty identifier (which a manifest never yields)
//! becomes `%`, the one name no encoding produces.
//!
//! The extension comes from the content type ([`extension_for`]); an unknown
//! type gets none. A submission of unknown type that also has frames or
//! tracks has its file named `<identifier>.bin`, since a bare `<identifier>`
//! would be the name of its folder.
//!
//! # Collisions
//!
//! Names still collide when identifiers differ only in case (most Windows and
//! macOS volumes, and the USB drives evidence travels on, ignore case), or when
//! two cut names share their 8 hex digits. Every request still gets an entry:
//! entries of a folder are placed in the byte order of their original ids (a
//! submission's file before its folder), and one whose name is taken, as a
//! case-folding file system would compare names, gets `~2`, `~3`… before its
//! extension. The same journal therefore always gives the same names. Should
//! the file system still refuse a name (macOS, for one, also equates Unicode
//! normalisation forms, which this code has no tables for), the next suffix
//! is tried.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::journal::{JournalIndex, Known};
use crate::manifest::Kind;
use crate::store::Store;

/// The view, and where it is built and set aside while being replaced.
const LIVE: &str = "by-id";
const NEW: &str = "by-id.new";
const OLD: &str = "by-id.old";
/// What the live view was built from: the journal's size and time, and the
/// mode. A run whose journal did not change (a no-op rerun) keeps the view.
const STAMP: &str = "by-id.stamp";
/// In copy mode, what each copy of the live view was made from (see the
/// module documentation); absent in symlink mode.
const COPIES: &str = "by-id.copies";

/// The longest name [`safe_component`] returns, in bytes. File systems allow
/// 255; this leaves room for a collision suffix and an extension.
const MAX_NAME_BYTES: usize = 150;
/// `~` and 8 hex digits, appended to a name that was cut.
const HASH_SUFFIX_BYTES: usize = 9;
/// The extension of a file of unknown type whose bare name is its folder's.
const UNKNOWN_BESIDE_FOLDER: &str = "bin";
/// Names tried for one entry before giving up on a file system that refuses
/// every one of them.
const MAX_TRIES: u32 = 1000;

/// How the view's entries are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewMode {
    /// Relative symbolic links into `objects/`.
    Symlink,
    /// Copies of the objects' bytes, for media that cannot hold symlinks.
    /// They are independent files (never hard links to the evidence) and
    /// keep the objects' read-only permission. A copy that the previous view
    /// already had right is kept, hard-linked from that view, not copied again.
    Copy,
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewStats {
    /// Symbolic links made (in [`ViewMode::Symlink`]).
    pub linked: u64,
    /// Entries that are copies (in [`ViewMode::Copy`]), kept or made afresh.
    pub copied: u64,
    /// Of [`copied`](Self::copied), those kept from the previous view
    /// rather than copied again.
    pub copies_kept: u64,
    /// Paths of the previous view that the new one no longer has.
    pub removed: u64,
    /// Entries that took a `~N` suffix because their name was taken.
    pub collisions: u64,
    /// `ok` requests left out: the object is missing or of another size, or
    /// the journal's hash is not a SHA-256.
    pub skipped: u64,
}

/// Why the view could not be rebuilt; the previous view, if any, is intact.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// `dir` has neither `objects/` nor a journal: most likely a folder
    /// named by mistake, such as the medium the files were meant for.
    #[error(
        "{} is not an identifai-fetch store: it has neither objects/ nor journal.jsonl; \
         the view is built inside a store, as DIR/by-id/, so name the store's folder",
        dir.display()
    )]
    NotAStore { dir: PathBuf },
    /// `DIR/journal.jsonl` exists but could not be read.
    #[error("cannot read the journal in {}: {source}", dir.display())]
    Journal {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file system operation on the view failed; `path` is what it was on.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn at(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ViewError {
    let path = path.to_path_buf();
    move |source| ViewError::Io { action, path, source }
}

/// Rebuilds the view unless it was built from the journal as it is now, in
/// the same mode; `None` when it was kept. Runs call this: rebuilding a
/// large view on a rerun that stored nothing new would cost more than the
/// rerun itself.
pub fn refresh(dir: &Path, mode: ViewMode) -> Result<Option<ViewStats>, ViewError> {
    let current = stamp(dir, mode);
    let built = fs::read_to_string(dir.join(STAMP)).ok();
    if current.is_some() && built == current && exists(&dir.join(LIVE)) {
        return Ok(None);
    }
    rebuild(dir, mode).map(Some)
}

/// Rebuilds the view, if the store has one, in the mode it was built in;
/// `None` when there is no view, or an empty one, to rebuild. For callers
/// that took objects out of the store (verify's quarantine): the journal did
/// not change, so [`refresh`] would keep entries that lead nowhere.
pub fn rebuild_existing(dir: &Path) -> Result<Option<ViewStats>, ViewError> {
    match built_mode(dir) {
        Some(mode) => rebuild(dir, mode).map(Some),
        None => Ok(None),
    }
}

/// Whether the store at `dir` has a view, empty or not.
pub fn has_view(dir: &Path) -> bool {
    exists(&dir.join(LIVE))
}

/// Makes the next [`refresh`] rebuild the view whatever the journal says,
/// for a caller that changed the store without writing to the journal.
pub fn invalidate(dir: &Path) -> io::Result<()> {
    match fs::remove_file(dir.join(STAMP)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The mode the live view was built in: as its stamp says, or else as its
/// first entry shows; `None` without a view or with an empty one.
fn built_mode(dir: &Path) -> Option<ViewMode> {
    if !has_view(dir) {
        return None;
    }
    let stamp = fs::read_to_string(dir.join(STAMP)).unwrap_or_default();
    match stamp.split_whitespace().next() {
        Some("Symlink") => return Some(ViewMode::Symlink),
        Some("Copy") => return Some(ViewMode::Copy),
        _ => {}
    }
    let live = dir.join(LIVE);
    let first = entries_of(&live).ok()?.into_iter().next()?;
    let meta = fs::symlink_metadata(live.join(first)).ok()?;
    Some(if meta.file_type().is_symlink() { ViewMode::Symlink } else { ViewMode::Copy })
}

/// The journal's size and modification time, and the mode, as one line.
fn stamp(dir: &Path, mode: ViewMode) -> Option<String> {
    let meta = fs::metadata(dir.join(crate::journal::FILE_NAME)).ok()?;
    let modified = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(format!("{mode:?} {} {}\n", meta.len(), modified.as_nanos()))
}

/// Rebuilds `DIR/by-id/` from the journal and swaps it in for the old view.
/// Refuses a folder that is not a store rather than leave a view in it.
pub fn rebuild(dir: &Path, mode: ViewMode) -> Result<ViewStats, ViewError> {
    check_store(dir)?;
    // Taken before the journal is read: a line added meanwhile changes the
    // stamp, so the next refresh rebuilds.
    let source = stamp(dir, mode);
    recover(dir)?;
    let index = JournalIndex::load(dir)
        .map_err(|source| ViewError::Journal { dir: dir.to_path_buf(), source })?;
    let mut stats = ViewStats::default();
    let plan = plan(dir, &index, &mut stats);
    let previous = match mode {
        ViewMode::Copy => read_copies(dir),
        ViewMode::Symlink => HashMap::new(),
    };

    let new_root = dir.join(NEW);
    fs::create_dir(&new_root).map_err(at("cannot create", &new_root))?;
    let mut builder = Builder {
        dir,
        root: &new_root,
        mode,
        stats,
        made: HashSet::new(),
        previous,
        copies: Vec::new(),
    };
    if let Err(e) = builder.build(&plan) {
        // Copies can be large: do not leave them for the next rebuild to find.
        let _ = fs::remove_dir_all(&new_root);
        return Err(e);
    }
    let Builder { mut stats, made, copies, .. } = builder;
    stats.removed = entries_of(&dir.join(LIVE))?.difference(&made).count() as u64;
    // Both describe the live view: gone before it changes, so that a crash
    // between the swap and their rewrite costs a rebuild, never a wrong one.
    let _ = fs::remove_file(dir.join(STAMP));
    let _ = fs::remove_file(dir.join(COPIES));
    swap_in(dir)?;
    if mode == ViewMode::Copy {
        // Without the record the next rebuild only copies everything again.
        let _ = fs::write(dir.join(COPIES), render_copies(&copies));
    }
    if let Some(source) = source {
        // Without the stamp the next refresh only rebuilds again.
        let _ = fs::write(dir.join(STAMP), source);
    }
    Ok(stats)
}

/// What one copy in the view was made from, and how it looked once made.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Copied {
    sha256: String,
    bytes: u64,
    /// Nanoseconds since the Unix epoch.
    modified: u128,
}

impl Copied {
    /// The record for a copy of `sha256` whose metadata is `meta`; `None`
    /// where the file system keeps no modification time.
    fn of(sha256: &str, meta: &fs::Metadata) -> Option<Copied> {
        let modified = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(Copied { sha256: sha256.to_owned(), bytes: meta.len(), modified: modified.as_nanos() })
    }
}

/// The live view's copies, by path relative to the view; empty when there is
/// no record. A line that does not parse is skipped: its copy is made again.
fn read_copies(dir: &Path) -> HashMap<PathBuf, Copied> {
    let text = fs::read_to_string(dir.join(COPIES)).unwrap_or_default();
    text.lines().filter_map(parse_copy).collect()
}

/// `<sha256> <bytes> <modified> <path>`, tab-separated, the path last and
/// with `/` between components. View names hold no tab or newline: both are
/// control characters, which [`safe_component`] encodes.
fn parse_copy(line: &str) -> Option<(PathBuf, Copied)> {
    let mut fields = line.splitn(4, '\t');
    let sha256 = fields.next()?.to_owned();
    let bytes = fields.next()?.parse().ok()?;
    let modified = fields.next()?.parse().ok()?;
    let path: PathBuf = fields.next()?.split('/').collect();
    Some((path, Copied { sha256, bytes, modified }))
}

fn render_copies(copies: &[(PathBuf, Copied)]) -> String {
    let mut text = String::new();
    for (path, copied) in copies {
        let parts: Vec<_> =
            path.components().map(|part| part.as_os_str().to_string_lossy()).collect();
        let Copied { sha256, bytes, modified } = copied;
        text.push_str(&format!("{sha256}\t{bytes}\t{modified}\t{}\n", parts.join("/")));
    }
    text
}

/// Fails unless `dir` has what a run leaves in a store: `objects/` (made
/// when a run opens the store) or the journal. `link` asks before it takes
/// the lock, which would create the folder and its lock file.
pub fn check_store(dir: &Path) -> Result<(), ViewError> {
    let objects = fs::metadata(dir.join("objects")).is_ok_and(|meta| meta.is_dir());
    if objects || exists(&dir.join(crate::journal::FILE_NAME)) {
        return Ok(());
    }
    Err(ViewError::NotAStore { dir: dir.to_path_buf() })
}

/// One stored file the view shows.
#[derive(Debug)]
struct Item {
    sha256: String,
    extension: Option<&'static str>,
}

/// A submission's own file, if stored, and its stored frames or tracks.
#[derive(Debug, Default)]
struct Submission {
    file: Option<Item>,
    parts: BTreeMap<String, Item>,
}

/// Every entry of the view, grouped and ordered as it is laid out.
type Plan = BTreeMap<Kind, BTreeMap<String, Submission>>;

fn plan(dir: &Path, index: &JournalIndex, stats: &mut ViewStats) -> Plan {
    // Sorted so that a hand-edited journal with two requests claiming one
    // slot still gives the same view every time (the last one wins).
    let mut stored: Vec<_> = index.stored().collect();
    stored.sort_by(|a, b| a.0.cmp(b.0));
    let mut plan = Plan::new();
    for ((kind, id), known) in stored {
        if !object_present(dir, known) {
            tracing::debug!(%kind, id, sha256 = known.sha256, "not in the view: no such object");
            stats.skipped += 1;
            continue;
        }
        let item =
            Item { sha256: known.sha256.clone(), extension: extension_for(&known.content_type) };
        let submission =
            plan.entry(*kind).or_default().entry(known.identifier.clone()).or_default();
        if known.frame_or_track_id.is_empty() {
            submission.file = Some(item);
        } else {
            submission.parts.insert(known.frame_or_track_id.clone(), item);
        }
    }
    plan
}

/// Whether the journal's object is in the store with its recorded size. The
/// hash is checked first: it becomes part of a path.
fn object_present(dir: &Path, known: &Known) -> bool {
    let hex = &known.sha256;
    let is_hash = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !is_hash {
        return false;
    }
    match fs::symlink_metadata(dir.join(Store::relative_object_path(hex))) {
        Ok(meta) => meta.is_file() && known.bytes.is_none_or(|bytes| meta.len() == bytes),
        Err(_) => false,
    }
}

/// Lays the plan out under `root` (which is `DIR/by-id.new`).
struct Builder<'a> {
    dir: &'a Path,
    root: &'a Path,
    mode: ViewMode,
    stats: ViewStats,
    /// Every file made, relative to `root`, to tell what the old view had
    /// that this one lacks.
    made: HashSet<PathBuf>,
    /// The live view's copies, which this build may keep (copy mode only).
    previous: HashMap<PathBuf, Copied>,
    /// The copies this build made or kept, for the next one.
    copies: Vec<(PathBuf, Copied)>,
}

/// How one entry was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    Linked,
    Copied,
    /// The previous view's copy, hard-linked into this one.
    Kept,
}

impl Builder<'_> {
    fn build(&mut self, plan: &Plan) -> Result<(), ViewError> {
        for (kind, submissions) in plan {
            let folder = self.root.join(kind.as_str());
            fs::create_dir(&folder).map_err(at("cannot create", &folder))?;
            let mut names = Names::default();
            for (identifier, submission) in submissions {
                self.submission(&folder, &mut names, identifier, submission)?;
            }
        }
        Ok(())
    }

    fn submission(
        &mut self,
        folder: &Path,
        names: &mut Names,
        identifier: &str,
        submission: &Submission,
    ) -> Result<(), ViewError> {
        let base = safe_component(identifier);
        if let Some(item) = &submission.file {
            let beside_folder = !submission.parts.is_empty();
            let extension = item.extension.or(beside_folder.then_some(UNKNOWN_BESIDE_FOLDER));
            self.file(folder, names, &base, extension, item)?;
        }
        if submission.parts.is_empty() {
            return Ok(());
        }
        let (inner, suffixed) = place(folder, names, &base, None, |path| fs::create_dir(path))?;
        self.stats.collisions += u64::from(suffixed);
        let mut inner_names = Names::default();
        for (part, item) in &submission.parts {
            self.file(&inner, &mut inner_names, &safe_component(part), item.extension, item)?;
        }
        Ok(())
    }

    fn file(
        &mut self,
        folder: &Path,
        names: &mut Names,
        base: &str,
        extension: Option<&str>,
        item: &Item,
    ) -> Result<(), ViewError> {
        let relative_object = Store::relative_object_path(&item.sha256);
        let object = self.dir.join(&relative_object);
        // The link sits as deep below DIR as its folder is below the view,
        // plus one for the view itself (by-id.new becomes by-id in place).
        let depth = folder.strip_prefix(self.root).expect("inside the view").components().count();
        let target: PathBuf = std::iter::repeat_n("..", depth + 1).collect();
        let target = target.join(relative_object);
        let mut made = Made::Linked;
        let (path, suffixed) = place(folder, names, base, extension, |path| {
            made = self.materialize(item, &object, &target, path)?;
            Ok(())
        })?;
        self.stats.collisions += u64::from(suffixed);
        let relative = path.strip_prefix(self.root).expect("inside the view").to_path_buf();
        match made {
            Made::Linked => self.stats.linked += 1,
            Made::Copied | Made::Kept => {
                self.stats.copied += 1;
                self.stats.copies_kept += u64::from(made == Made::Kept);
                let meta = fs::symlink_metadata(&path).map_err(at("cannot stat", &path))?;
                if let Some(copied) = Copied::of(&item.sha256, &meta) {
                    self.copies.push((relative.clone(), copied));
                }
            }
        }
        self.made.insert(relative);
        Ok(())
    }

    /// Makes one entry at `path`; fails with `AlreadyExists` if the name is taken.
    fn materialize(
        &self,
        item: &Item,
        object: &Path,
        target: &Path,
        path: &Path,
    ) -> io::Result<Made> {
        match self.mode {
            ViewMode::Symlink => symlink(target, path).map(|()| Made::Linked),
            ViewMode::Copy if self.keep_copy(item, path)? => Ok(Made::Kept),
            ViewMode::Copy => {
                // Claim the name first: a plain copy would overwrite a file that
                // the file system equates with this name.
                File::create_new(path)?;
                fs::copy(object, path).map(|_| Made::Copied)
            }
        }
    }

    /// Hard-links the live view's copy at the same place into `path`, if it
    /// was copied from this item's object and still has the size and time it
    /// had then; `false` when it must be copied afresh.
    // Known limit: where the file system has no hard links (FAT, exFAT),
    // every rebuild copies every file again. Moving the old copies instead
    // would empty the live view while the new one is built.
    // Known limit: a copy edited in place and given back its size and time
    // (`touch -d`) is kept; the view is a convenience, and `verify` checks
    // the objects it is made from.
    fn keep_copy(&self, item: &Item, path: &Path) -> io::Result<bool> {
        let relative = path.strip_prefix(self.root).expect("inside the view");
        let Some(recorded) = self.previous.get(relative) else { return Ok(false) };
        let old = self.dir.join(LIVE).join(relative);
        let unchanged = fs::symlink_metadata(&old).is_ok_and(|meta| {
            meta.is_file() && Copied::of(&item.sha256, &meta).as_ref() == Some(recorded)
        });
        if !unchanged {
            return Ok(false);
        }
        match fs::hard_link(&old, path) {
            Ok(()) => Ok(true),
            // The name is taken: `place` tries the next one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
            Err(error) => {
                tracing::debug!(path = %old.display(), %error, "cannot keep the copy; copying");
                Ok(false)
            }
        }
    }
}

#[cfg(unix)]
fn symlink(target: &Path, path: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, path)
}

#[cfg(windows)]
fn symlink(target: &Path, path: &Path) -> io::Result<()> {
    std::os::windows::fs::symlink_file(target, path)
}

/// Makes an entry under the first free name for `base` and `extension` in
/// `folder`; returns its path and whether it took a collision suffix.
fn place(
    folder: &Path,
    names: &mut Names,
    base: &str,
    extension: Option<&str>,
    mut make: impl FnMut(&Path) -> io::Result<()>,
) -> Result<(PathBuf, bool), ViewError> {
    let mut last = None;
    for _ in 0..MAX_TRIES {
        let (name, suffixed) = names.claim(base, extension);
        let path = folder.join(name);
        match make(&path) {
            Ok(()) => return Ok((path, suffixed)),
            // The file system equates this name with one already made, in a
            // way the case folding did not foresee: try the next suffix.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some((path, e)),
            Err(e) => return Err(at("cannot create", &path)(e)),
        }
    }
    let (path, e) = last.expect("MAX_TRIES is not zero");
    Err(at("found no free name like", &path)(e))
}

/// The names given out in one folder, compared as a case-insensitive file
/// system compares them.
#[derive(Debug, Default)]
struct Names {
    taken: HashSet<String>,
    /// The next suffix to try per wanted name, so that many collisions on
    /// one name do not make every claim walk all the suffixes again.
    next: HashMap<String, u32>,
}

impl Names {
    /// The first free name of `base~N.extension` (no `~N` for N = 1), and
    /// whether it needed a suffix.
    fn claim(&mut self, base: &str, extension: Option<&str>) -> (String, bool) {
        let wanted = fold_case(&with_extension(base.to_owned(), extension));
        let mut n = self.next.get(&wanted).copied().unwrap_or(1);
        loop {
            let stem = if n == 1 { base.to_owned() } else { format!("{base}~{n}") };
            let name = with_extension(stem, extension);
            n += 1;
            if self.taken.insert(fold_case(&name)) {
                self.next.insert(wanted, n);
                return (name, n > 2);
            }
        }
    }
}

fn with_extension(mut name: String, extension: Option<&str>) -> String {
    if let Some(extension) = extension {
        name.push('.');
        name.push_str(extension);
    }
    name
}

/// A key equal for names that a case-insensitive file system equates. Going
/// through upper case first also joins `ς`/`σ` and `ß`/`ss`: a suffix too
/// many is harmless, a name too few is not.
fn fold_case(name: &str) -> String {
    name.to_uppercase().to_lowercase()
}

/// The file extension (without the dot) for a content type, or `None` when
/// the type is unknown. Parameters such as `; charset=binary` are ignored.
pub fn extension_for(content_type: &str) -> Option<&'static str> {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let extension = match essence.to_ascii_lowercase().as_str() {
        "image/jpeg" | "image/jpg" | "image/pjpeg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/tiff" => "tif",
        "image/heic" => "heic",
        "video/mp4" => "mp4",
        "video/quicktime" => "mov",
        "video/webm" => "webm",
        "video/x-matroska" => "mkv",
        "audio/mpeg" => "mp3",
        "audio/wav" | "audio/x-wav" | "audio/wave" => "wav",
        "audio/ogg" => "ogg",
        "audio/mp4" | "audio/aac" | "audio/x-m4a" => "m4a",
        "audio/flac" | "audio/x-flac" => "flac",
        "application/pdf" => "pdf",
        _ => return None,
    };
    Some(extension)
}

/// One path component for an identifier, safe on any common file system and
/// distinct for distinct identifiers (see the module documentation).
pub fn safe_component(name: &str) -> String {
    if name.is_empty() {
        return "%".to_owned();
    }
    let device = is_windows_device_name(name);
    let mut out = String::with_capacity(name.len());
    // Where to cut if the name turns out too long: the end of the last whole
    // character or escape that leaves room for the hash suffix.
    let mut cut = 0;
    for (at, c) in name.char_indices() {
        let first = at == 0;
        let last = at + c.len_utf8() == name.len();
        let edge = (first || last) && matches!(c, '.' | ' ');
        if edge || (first && device) || must_escape(c) {
            escape(c, &mut out);
        } else {
            out.push(c);
        }
        if out.len() <= MAX_NAME_BYTES - HASH_SUFFIX_BYTES {
            cut = out.len();
        }
    }
    if out.len() > MAX_NAME_BYTES {
        out.truncate(cut);
        out.push('~');
        out.push_str(&short_hash(name));
    }
    out
}

fn must_escape(c: char) -> bool {
    matches!(c, '%' | '~' | '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|')
        || c.is_control()
        || is_invisible(c)
}

/// Characters that show nothing, or reorder what follows, and so can make a
/// name look like another one.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

fn escape(c: char, out: &mut String) {
    let mut buffer = [0; 4];
    for byte in c.encode_utf8(&mut buffer).bytes() {
        out.push_str(&format!("%{byte:02X}"));
    }
}

/// Windows opens a device instead of a file for these names, whatever the
/// extension or case, and ignores spaces before the extension.
fn is_windows_device_name(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or_default().trim_end_matches(' ');
    let stem = stem.to_ascii_uppercase();
    if matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$") {
        return true;
    }
    let port = stem.strip_prefix("COM").or_else(|| stem.strip_prefix("LPT"));
    let mut digits = port.unwrap_or_default().chars();
    let digit = digits.next().is_some_and(|c| c.is_ascii_digit() || "¹²³".contains(c));
    digit && digits.next().is_none()
}

/// 8 hex digits of the identifier's SHA-256, to keep cut names apart.
fn short_hash(name: &str) -> String {
    Sha256::digest(name.as_bytes())[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Puts a crashed rebuild's leftovers right before a new one starts: a
/// half-built view goes, and a previous view that was moved aside but never
/// replaced comes back, so that readers have it during the rebuild.
fn recover(dir: &Path) -> Result<(), ViewError> {
    let (live, old) = (dir.join(LIVE), dir.join(OLD));
    remove_if_present(&dir.join(NEW))?;
    if exists(&old) && !exists(&live) {
        fs::rename(&old, &live).map_err(at("cannot restore", &old))?;
    }
    remove_if_present(&old)
}

/// Replaces `by-id` with `by-id.new`.
fn swap_in(dir: &Path) -> Result<(), ViewError> {
    let (live, new) = (dir.join(LIVE), dir.join(NEW));
    if !exists(&live) {
        return fs::rename(&new, &live).map_err(at("cannot rename", &new));
    }
    if exchange(&new, &live).is_ok() {
        // `by-id.new` now holds the previous view.
        return remove_if_present(&new);
    }
    swap_by_renames(dir)
}

/// The portable swap: for a moment between the renames there is no `by-id`,
/// but never a partial one; [`recover`] finishes the job after a crash.
fn swap_by_renames(dir: &Path) -> Result<(), ViewError> {
    let (live, new, old) = (dir.join(LIVE), dir.join(NEW), dir.join(OLD));
    fs::rename(&live, &old).map_err(at("cannot rename", &live))?;
    fs::rename(&new, &live).map_err(at("cannot rename", &new))?;
    remove_if_present(&old)
}

/// Swaps two paths in one step, so `by-id` never goes missing.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(io::Error::from)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn exchange(_: &Path, _: &Path) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Removes a file, a symlink (never what it points to) or a whole tree.
fn remove_if_present(path: &Path) -> Result<(), ViewError> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(at("cannot remove", path)(e)),
        _ => Ok(()),
    }
}

/// Every entry that is not a folder under `root`, relative to it, without
/// following links; empty when there is no view yet.
fn entries_of(root: &Path) -> Result<HashSet<PathBuf>, ViewError> {
    let mut found = HashSet::new();
    if !fs::symlink_metadata(root).is_ok_and(|meta| meta.is_dir()) {
        return Ok(found);
    }
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let folder = root.join(&relative);
        for entry in fs::read_dir(&folder).map_err(at("cannot list", &folder))? {
            let entry = entry.map_err(at("cannot list", &folder))?;
            let path = relative.join(entry.file_name());
            let kind = entry.file_type().map_err(at("cannot stat", &root.join(&path)))?;
            if kind.is_dir() {
                pending.push(path);
            } else {
                found.insert(path);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Undoes the percent-encoding, to show that no two identifiers share a name.
    fn decode(name: &str) -> String {
        let bytes = name.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn content_types_map_to_extensions() {
        let table = [
            ("image/jpeg", Some("jpg")),
            ("image/png", Some("png")),
            ("image/gif", Some("gif")),
            ("image/webp", Some("webp")),
            ("image/tiff", Some("tif")),
            ("image/heic", Some("heic")),
            ("video/mp4", Some("mp4")),
            ("video/quicktime", Some("mov")),
            ("video/webm", Some("webm")),
            ("video/x-matroska", Some("mkv")),
            ("audio/mpeg", Some("mp3")),
            ("audio/wav", Some("wav")),
            ("audio/x-wav", Some("wav")),
            ("audio/ogg", Some("ogg")),
            ("audio/mp4", Some("m4a")),
            ("audio/aac", Some("m4a")),
            ("audio/flac", Some("flac")),
            ("application/pdf", Some("pdf")),
            ("image/jpeg; charset=binary", Some("jpg")),
            (" Video/MP4 ;codecs=avc1", Some("mp4")),
            ("application/octet-stream", None),
            ("", None),
            ("image", None),
        ];
        for (content_type, extension) in table {
            assert_eq!(extension_for(content_type), extension, "{content_type:?}");
        }
    }

    #[test]
    fn plain_identifiers_keep_their_name() {
        for id in ["img-001", "Case 12 (copy)", "Straße café", "视频", "a.b", "#1 & [2]"] {
            assert_eq!(safe_component(id), id);
        }
    }

    #[test]
    fn awkward_characters_are_percent_encoded() {
        let table = [
            ("a/b", "a%2Fb"),
            ("../../etc/passwd", "%2E.%2F..%2Fetc%2Fpasswd"),
            (".", "%2E"),
            ("..", "%2E%2E"),
            (".hidden", "%2Ehidden"),
            ("x.", "x%2E"),
            (" x ", "%20x%20"),
            ("a\\b:c*d?e\"f<g>h|i", "a%5Cb%3Ac%2Ad%3Fe%22f%3Cg%3Eh%7Ci"),
            ("100%", "100%25"),
            ("a~2", "a%7E2"),
            ("tab\there\n", "tab%09here%0A"),
            ("del\u{7f}", "del%7F"),
            ("abc\u{202E}gpj.exe", "abc%E2%80%AEgpj.exe"),
            ("zero\u{200B}width", "zero%E2%80%8Bwidth"),
            ("", "%"),
        ];
        for (id, name) in table {
            assert_eq!(safe_component(id), name, "{id:?}");
        }
    }

    #[test]
    fn windows_device_names_are_defused() {
        let table = [
            ("CON", "%43ON"),
            ("con.txt", "%63on.txt"),
            ("Nul", "%4Eul"),
            ("AUX .x", "%41UX .x"),
            ("COM1", "%43OM1"),
            ("lpt9.tar.gz", "%6Cpt9.tar.gz"),
            ("COM¹", "%43OM¹"),
            ("CONIN$", "%43ONIN$"),
            ("COM10", "COM10"),
            ("CONSOLE", "CONSOLE"),
            ("xCON", "xCON"),
        ];
        for (id, name) in table {
            assert_eq!(safe_component(id), name, "{id:?}");
        }
    }

    #[test]
    fn uncut_names_decode_to_their_identifier() {
        let ids = ["a/b", "a%2Fb", "a%252Fb", "..", "%2E%2E", "CON", "%43ON", "x~1", "é\u{0}"];
        let mut names = HashSet::new();
        for id in ids {
            let name = safe_component(id);
            assert_eq!(decode(&name), id);
            assert!(names.insert(name), "{id:?} shares a name");
        }
    }

    #[test]
    fn long_names_are_cut_with_a_hash_of_the_whole_identifier() {
        let id = "k".repeat(1024);
        let name = safe_component(&id);
        assert_eq!(name.len(), MAX_NAME_BYTES);
        let hash = hex_of(&Sha256::digest(id.as_bytes())[..4]);
        assert_eq!(name, format!("{}~{hash}", "k".repeat(141)));

        let longer = format!("{id}!");
        assert_ne!(safe_component(&longer), name, "a different tail, a different hash");
        assert_eq!(safe_component(&"k".repeat(150)), "k".repeat(150), "150 bytes fit");
    }

    #[test]
    fn a_cut_never_splits_a_character_or_an_escape() {
        // 2 + 3k bytes: the last whole escape ends at 140, one short of 141.
        let name = safe_component(&format!("ab{}", "/".repeat(100)));
        let (kept, hash) = name.split_once('~').unwrap();
        assert_eq!((kept.len(), hash.len()), (140, 8));
        assert!(kept.ends_with("%2F"));

        let name = safe_component(&"é".repeat(600));
        assert!(name.len() <= MAX_NAME_BYTES);
        assert!(name.split_once('~').unwrap().0.chars().all(|c| c == 'é'));
    }

    fn hex_of(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn names_that_fold_together_get_suffixes_in_claim_order() {
        let mut names = Names::default();
        assert_eq!(names.claim("A", Some("jpg")), ("A.jpg".into(), false));
        assert_eq!(names.claim("a", Some("jpg")), ("a~2.jpg".into(), true));
        assert_eq!(names.claim("a", Some("JPG")), ("a~3.JPG".into(), true));
        assert_eq!(names.claim("a", None), ("a".into(), false), "no extension, another name");
        assert_eq!(names.claim("ΣΑΣ", None), ("ΣΑΣ".into(), false));
        assert_eq!(names.claim("σας", None), ("σας~2".into(), true), "final sigma folds");
    }

    #[test]
    fn a_name_the_file_system_refuses_takes_the_next_suffix() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x.jpg"), b"someone else").unwrap();
        let mut names = Names::default();
        let make = |path: &Path| File::create_new(path).map(drop);
        let (path, suffixed) = place(dir.path(), &mut names, "x", Some("jpg"), make).unwrap();
        assert_eq!((path, suffixed), (dir.path().join("x~2.jpg"), true));
        assert_eq!(fs::read(dir.path().join("x.jpg")).unwrap(), b"someone else");
    }

    #[test]
    fn a_view_set_aside_by_a_crash_is_restored_and_a_half_built_one_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(OLD).join("image")).unwrap();
        fs::create_dir_all(dir.path().join(NEW).join("video")).unwrap();
        recover(dir.path()).unwrap();
        assert!(dir.path().join(LIVE).join("image").is_dir());
        assert!(!exists(&dir.path().join(NEW)) && !exists(&dir.path().join(OLD)));

        // With the new view already in place, the set-aside one just goes.
        fs::create_dir_all(dir.path().join(OLD).join("audio")).unwrap();
        recover(dir.path()).unwrap();
        assert!(dir.path().join(LIVE).join("image").is_dir());
        assert!(!exists(&dir.path().join(OLD)));
    }

    #[test]
    fn both_swaps_leave_only_the_new_view() {
        for by_renames in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join(LIVE).join("old")).unwrap();
            fs::create_dir_all(dir.path().join(NEW).join("new")).unwrap();
            if by_renames { swap_by_renames(dir.path()) } else { swap_in(dir.path()) }.unwrap();
            let mut left: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            left.sort();
            assert_eq!(left, [LIVE]);
            assert!(dir.path().join(LIVE).join("new").is_dir(), "by_renames: {by_renames}");
        }
    }

    #[test]
    fn removing_a_view_never_follows_its_links() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join("precious");
        fs::write(&precious, b"keep").unwrap();
        fs::create_dir(dir.path().join(LIVE)).unwrap();
        fs::create_dir(dir.path().join(NEW)).unwrap();
        symlink(&precious, &dir.path().join(NEW).join("link")).unwrap();
        symlink(&precious, &dir.path().join(OLD)).unwrap();
        recover(dir.path()).unwrap();
        assert_eq!(fs::read(&precious).unwrap(), b"keep");
        assert!(!exists(&dir.path().join(NEW)) && !exists(&dir.path().join(OLD)));
    }
}
