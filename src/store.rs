//! The content-addressed object store under the output folder.
//!
//! ```text
//! DIR/objects/sha256/ab/ab12…(64 hex)   immutable, read-only objects
//! DIR/tmp/                             temp files being written
//! DIR/runs/<run-id>/                   one folder of reports per run
//! ```
//!
//! Bytes reach `objects/` only one way: written to a temp file in `tmp/`
//! (the same file system, so the rename is atomic), fsynced, renamed into
//! place, and the directory fsynced. A reader never sees a partial object and
//! a crash leaves at most a temp file behind. An object that already exists
//! is success: same name, same bytes.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const OBJECTS: &str = "objects/sha256";
const TMP: &str = "tmp";
const RUNS: &str = "runs";

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

fn at(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
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

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.root.join(RUNS)
    }

    /// The object's path relative to the store root, as reports show it.
    pub fn relative_object_path(sha256_hex: &str) -> PathBuf {
        Path::new(OBJECTS).join(&sha256_hex[..2]).join(sha256_hex)
    }

    pub fn object_path(&self, sha256_hex: &str) -> PathBuf {
        self.root.join(Self::relative_object_path(sha256_hex))
    }

    /// A new, empty temp file in `tmp/`, deleted on drop unless committed.
    pub fn create_temp(&self) -> Result<TempObject, StoreError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}-{}-{:08x}.part",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..)
        );
        let path = self.root.join(TMP).join(name);
        let file = File::create_new(&path).map_err(at("cannot create", &path))?;
        Ok(TempObject { path, file: Some(file), committed: false })
    }

    /// Moves a finished, fsynced temp file into place under its hash.
    /// Blocking: call it from a blocking thread.
    pub fn commit(&self, mut temp: TempObject, sha256_hex: &str) -> Result<PathBuf, StoreError> {
        let relative = Self::relative_object_path(sha256_hex);
        let target = self.root.join(&relative);
        let fan_out = target.parent().expect("an object path has a parent");
        if target.exists() {
            return Ok(relative); // The same bytes are already stored.
        }
        if !fan_out.exists() {
            fs::create_dir_all(fan_out).map_err(at("cannot create", fan_out))?;
            sync_dir(&self.root.join(OBJECTS))?;
        }
        let file = temp.file.take().expect("a temp object holds its file until commit");
        let mut permissions = file.metadata().map_err(at("cannot stat", &temp.path))?.permissions();
        permissions.set_readonly(true);
        file.set_permissions(permissions).map_err(at("cannot make read-only", &temp.path))?;
        drop(file);
        fs::rename(&temp.path, &target).map_err(at("cannot move into place", &target))?;
        temp.committed = true;
        sync_dir(fan_out)?;
        Ok(relative)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(at("cannot fsync", dir))
}

/// A temp file being filled. Removed when dropped uncommitted, so a failed
/// or cancelled download leaves nothing behind.
#[derive(Debug)]
pub struct TempObject {
    path: PathBuf,
    file: Option<File>,
    committed: bool,
}

impl TempObject {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for writing. Taken back by [`TempObject::put_file`].
    pub fn take_file(&mut self) -> File {
        self.file.take().expect("the temp file is not already taken")
    }

    pub fn put_file(&mut self, file: File) {
        self.file = Some(file);
    }
}

impl Drop for TempObject {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}
