//! One run per store: an exclusive lock on `DIR/lock`, held for the life of a run.
//!
//! Cron may start tonight's run while last night's is still going, and a person
//! may start one by hand on top of both. Two runs writing one store would race
//! on its temp files and reports, so a run takes this lock before anything else.
//!
//! The lock itself is the kernel's advisory file lock (`flock` on Linux), taken
//! with [`File::try_lock`]. The kernel drops it when the holder dies, however it
//! dies, so a run killed with `kill -9` never blocks the next one. While a run
//! holds the lock, the file also records who it is (a [`Holder`] as JSON) so
//! that the run turned away can say whom it is waiting for.
//!
//! That record is only advice, with one exception. Network file systems may
//! not share locks between hosts, so when we get the lock but the record names
//! another host that never released it, we refuse rather than guess: only the
//! user can tell whether that run is dead. A record from this host whose lock
//! we could take is stale by definition, and we take it over.
//!
//! A clean release empties the file before unlocking it, so only a run that
//! died leaves a record behind. The file is never removed: were it removed
//! while a run held it, the next run would create and lock a new file, and
//! two runs would each hold "the" lock.

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the output folder.
const LOCK_FILE: &str = "lock";

/// A record larger than this is not one we wrote; reading stops there.
const MAX_RECORD: u64 = 64 * 1024;

/// Who holds (or last held) a store's lock, as recorded in the lock file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    /// The holding process's id, on `host`.
    pub pid: u32,
    /// The host name of the machine the holder runs on.
    pub host: String,
    /// When the holder took the lock, RFC 3339 in UTC (`2026-12-03T02:15:00Z`).
    pub started: String,
    /// The identifai-fetch version of the holder.
    pub version: String,
}

impl Holder {
    /// The record this process writes when it takes the lock.
    fn this_process() -> Holder {
        Holder {
            pid: std::process::id(),
            host: host_name(),
            started: jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} on host {}, started {}", self.pid, self.host, self.started)
    }
}

/// Why a run could not take a store's lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock right now.
    #[error(
        "another run holds {}{}; wait for it to finish, then try again",
        path.display(),
        describe_held(holder.as_ref())
    )]
    Held { path: PathBuf, holder: Option<Holder> },
    /// The lock was free here, but a run on another host never released it.
    #[error(
        "a run on host {} (pid {}, since {}) may still hold {}: it never released it, and \
         network file systems may not share locks between hosts; if that run is dead, \
         remove {} by hand and try again",
        holder.host, holder.pid, holder.started, path.display(), path.display()
    )]
    ForeignHost { path: PathBuf, holder: Holder },
    /// The lock file could not be created, read, locked or written.
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn describe_held(holder: Option<&Holder>) -> String {
    match holder {
        Some(holder) => format!(": {holder}"),
        // It has the lock but has not written its record yet, or wrote something unreadable.
        None => " (it has not recorded who it is)".to_string(),
    }
}

/// The guard for a store's lock: the run holds the store until this is
/// dropped or [released](StoreLock::release).
#[derive(Debug)]
pub struct StoreLock {
    path: PathBuf,
    /// `None` once released, so that `Drop` does not release twice.
    file: Option<File>,
    holder: Holder,
}

impl StoreLock {
    /// Takes the lock on the store at `dir` (creating `dir` if needed) and
    /// records this process as its holder. Never waits for another run.
    pub fn acquire(dir: &Path) -> Result<StoreLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io_error = |source| LockError::Io { path: path.clone(), source };
        fs::create_dir_all(dir).map_err(io_error)?;
        let file = open_for_locking(&path).map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                // Best effort: the refusal is what matters, the name only helps.
                let holder = read_record(&file).ok().flatten();
                return Err(LockError::Held { path, holder });
            }
            Err(TryLockError::Error(source)) => return Err(io_error(source)),
        }
        let ours = Holder::this_process();
        if let Some(previous) = read_record(&file).map_err(io_error)? {
            check_previous(&path, &ours, previous)?;
        }
        write_record(&file, &ours).map_err(io_error)?;
        Ok(StoreLock { path, file: Some(file), holder: ours })
    }

    /// The record this run wrote into the lock file.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// Clears the record and unlocks, reporting any error (dropping the
    /// guard does the same but can only log one).
    pub fn release(mut self) -> io::Result<()> {
        match self.file.take() {
            Some(file) => clear_and_unlock(&file),
            None => Ok(()),
        }
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        let Some(file) = self.file.take() else { return };
        if let Err(error) = clear_and_unlock(&file) {
            // The kernel still drops the lock when `file` closes; only the
            // record may be left behind, which the next run on this host takes over.
            tracing::warn!(path = %self.path.display(), %error, "could not clear the lock file");
        }
    }
}

/// Who holds the lock on the store at `dir` now, if anyone, for a `status`
/// command. Probes with a lock it does not keep, and never writes.
///
/// A record left by a run on another host that never released it counts as
/// held, since [`StoreLock::acquire`] would refuse it. `None` is also the
/// answer in the instant between a run taking the lock and writing its record.
pub fn current_holder(dir: &Path) -> io::Result<Option<Holder>> {
    let file = match File::open(dir.join(LOCK_FILE)) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    match file.try_lock() {
        Err(TryLockError::WouldBlock) => read_record(&file),
        Err(TryLockError::Error(error)) => Err(error),
        Ok(()) => {
            let record = read_record(&file)?;
            file.unlock()?;
            let host = host_name();
            Ok(record.filter(|holder| holder.host != host))
        }
    }
}

fn open_for_locking(path: &Path) -> io::Result<File> {
    // Not truncated: until we hold the lock, the record belongs to whoever does.
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)
}

/// Decides what a record left in a lock we just took means: refuse a foreign
/// host's, take over (and say so) a record from this host.
fn check_previous(path: &Path, ours: &Holder, previous: Holder) -> Result<(), LockError> {
    if previous.host != ours.host {
        return Err(LockError::ForeignHost { path: path.to_path_buf(), holder: previous });
    }
    let (pid, started) = (previous.pid, &previous.started);
    if pid_alive(pid) {
        // We hold the lock, so that process does not: its pid was reused by
        // another program, or it let go of the file without clearing it.
        tracing::info!(
            path = %path.display(),
            "took over the lock recorded for pid {pid} (started {started}): \
             that process no longer holds it"
        );
    } else {
        tracing::info!(
            path = %path.display(),
            "took over a stale lock from pid {pid} (started {started}), which is no longer running"
        );
    }
    Ok(())
}

/// The record in the lock file; `None` when it is empty or not one of ours,
/// which both mean "free".
fn read_record(mut file: &File) -> io::Result<Option<Holder>> {
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    file.take(MAX_RECORD).read_to_end(&mut bytes)?;
    Ok(parse_record(&bytes))
}

fn parse_record(bytes: &[u8]) -> Option<Holder> {
    serde_json::from_slice(bytes).ok()
}

/// Replaces the file's contents with `holder`, durably, so that a crash of
/// the machine leaves the record of who was running.
fn write_record(mut file: &File, holder: &Holder) -> io::Result<()> {
    let mut json = serde_json::to_vec(holder).map_err(io::Error::other)?;
    json.push(b'\n');
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&json)?;
    file.sync_all()
}

/// Empties the record before unlocking, so no one can ever find our lock free
/// with our record still in it; an empty file is what a clean exit leaves.
fn clear_and_unlock(file: &File) -> io::Result<()> {
    file.set_len(0)?;
    file.sync_all()?;
    file.unlock()
}

/// This machine's host name, as the lock records it.
fn host_name() -> String {
    let candidates =
        [fs::read_to_string("/proc/sys/kernel/hostname").ok(), std::env::var("HOSTNAME").ok()];
    candidates
        .into_iter()
        .flatten()
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Whether a process with this id runs on this machine. Linux only: where
/// `/proc` is missing every pid looks dead, which only changes the log line,
/// since the lock we already hold is what decides.
fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: u32, host: &str) -> Holder {
        Holder {
            pid,
            host: host.to_string(),
            started: "2026-12-03T02:15:00Z".to_string(),
            version: "0.0.1".to_string(),
        }
    }

    fn write_raw(dir: &Path, holder: &Holder) {
        fs::write(dir.join(LOCK_FILE), serde_json::to_vec(holder).unwrap()).unwrap();
    }

    fn file_record(dir: &Path) -> Option<Holder> {
        parse_record(&fs::read(dir.join(LOCK_FILE)).unwrap())
    }

    /// A pid that no process has: one that just exited and was reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn the_record_is_json_with_every_field() {
        let ours = Holder::this_process();
        assert_eq!(ours.pid, std::process::id());
        assert_eq!(ours.version, env!("CARGO_PKG_VERSION"));
        assert!(!ours.host.is_empty());
        let started: jiff::Timestamp = ours.started.parse().unwrap();
        assert_eq!(started.to_string(), ours.started, "whole seconds, in UTC");

        let json: serde_json::Value = serde_json::to_value(&ours).unwrap();
        for field in ["pid", "host", "started", "version"] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
        assert_eq!(parse_record(json.to_string().as_bytes()), Some(ours));
    }

    #[test]
    fn messages_say_who_holds_the_store_and_what_to_do() {
        let path = PathBuf::from("/srv/evidence/lock");
        let holder = Holder { host: "nightly-01".to_string(), ..record(4242, "") };
        let cases = [
            (
                LockError::Held { path: path.clone(), holder: Some(holder.clone()) },
                "another run holds /srv/evidence/lock: pid 4242 on host nightly-01, \
                 started 2026-12-03T02:15:00Z; wait for it to finish, then try again",
            ),
            (
                LockError::Held { path: path.clone(), holder: None },
                "another run holds /srv/evidence/lock (it has not recorded who it is); \
                 wait for it to finish, then try again",
            ),
            (
                LockError::ForeignHost { path: path.clone(), holder },
                "a run on host nightly-01 (pid 4242, since 2026-12-03T02:15:00Z) may still \
                 hold /srv/evidence/lock: it never released it, and network file systems may \
                 not share locks between hosts; if that run is dead, remove \
                 /srv/evidence/lock by hand and try again",
            ),
            (
                LockError::Io { path, source: io::ErrorKind::PermissionDenied.into() },
                "cannot lock /srv/evidence/lock: permission denied",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn an_empty_or_garbage_file_means_free() {
        for bytes in [&b""[..], b"\n", b"not json", b"{\"pid\": 7}", b"\xff\xfe{", b"[1,2]"] {
            assert_eq!(parse_record(bytes), None, "{bytes:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LOCK_FILE), "garbage").unwrap();
        assert_eq!(current_holder(dir.path()).unwrap(), None);
        let lock = StoreLock::acquire(dir.path()).unwrap();
        assert_eq!(file_record(dir.path()).as_ref(), Some(lock.holder()));
    }

    #[test]
    fn release_and_drop_leave_an_empty_free_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("not-yet-there");
        assert_eq!(current_holder(&store).unwrap(), None, "no lock file at all");

        let lock = StoreLock::acquire(&store).unwrap();
        assert_eq!(file_record(&store).as_ref(), Some(lock.holder()));
        lock.release().unwrap();
        assert!(fs::read(store.join(LOCK_FILE)).unwrap().is_empty());

        let lock = StoreLock::acquire(&store).expect("free again after release");
        drop(lock);
        assert!(fs::read(store.join(LOCK_FILE)).unwrap().is_empty());
        assert_eq!(current_holder(&store).unwrap(), None);
    }

    #[test]
    fn a_second_acquire_in_this_process_is_held_by_us() {
        // flock belongs to the open file description, so a second open of the
        // same file conflicts even within one process.
        let dir = tempfile::tempdir().unwrap();
        let first = StoreLock::acquire(dir.path()).unwrap();
        let error = StoreLock::acquire(dir.path()).unwrap_err();
        let LockError::Held { holder: Some(holder), .. } = &error else {
            panic!("expected Held with a holder, got {error:?}");
        };
        assert_eq!(holder, first.holder());
        let message = error.to_string();
        assert!(message.contains(&format!("pid {} on host", std::process::id())), "{message}");
        assert!(message.contains("another run holds"), "{message}");
        assert_eq!(current_holder(dir.path()).unwrap().as_ref(), Some(first.holder()));

        drop(first);
        StoreLock::acquire(dir.path()).expect("free once the first guard is gone");
    }

    #[test]
    fn a_record_from_another_host_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = record(4242, "surely-not-this-host.example");
        write_raw(dir.path(), &theirs);

        let error = StoreLock::acquire(dir.path()).unwrap_err();
        let LockError::ForeignHost { holder, .. } = &error else {
            panic!("expected ForeignHost, got {error:?}");
        };
        assert_eq!(holder, &theirs);
        let message = error.to_string();
        assert!(message.contains("host surely-not-this-host.example (pid 4242"), "{message}");
        assert!(message.contains("remove"), "{message}");
        assert_eq!(file_record(dir.path()), Some(theirs.clone()), "left for the user");
        assert_eq!(current_holder(dir.path()).unwrap(), Some(theirs));
    }

    #[test]
    fn a_record_from_a_dead_process_here_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dead_pid();
        write_raw(dir.path(), &record(pid, &host_name()));
        assert_eq!(current_holder(dir.path()).unwrap(), None, "stale means free");

        let lock = StoreLock::acquire(dir.path()).unwrap();
        assert_eq!(lock.holder().pid, std::process::id());
        assert_eq!(file_record(dir.path()).as_ref(), Some(lock.holder()));
    }

    #[test]
    fn a_record_from_a_live_process_that_let_go_is_taken_over() {
        // This process is alive but does not hold the lock, as a reused pid would be.
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        assert!(pid_alive(pid));
        write_raw(dir.path(), &record(pid, &host_name()));

        let lock = StoreLock::acquire(dir.path()).unwrap();
        assert_eq!(file_record(dir.path()).as_ref(), Some(lock.holder()));
    }
}
