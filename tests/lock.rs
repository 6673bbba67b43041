//! The store lock against a real second process: while another process holds
//! it, a run is turned away with that process's name; once that process is
//! killed with SIGKILL (no chance to clean up), the next run gets the lock.
//!
//! The other process is this test binary again, started with an environment
//! variable that makes [`child_holds_the_lock`] take the lock and sleep.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use identifai_fetch::lock::{Holder, LockError, StoreLock, current_holder};

/// Tells the re-started test binary which store to lock.
const CHILD_DIR: &str = "IDENTIFAI_FETCH_LOCK_TEST_DIR";

/// The child touches this file in the store once it holds the lock.
const READY: &str = "child-ready";

/// How long the child holds the lock if no one kills it.
const CHILD_LIFE: Duration = Duration::from_secs(30);

/// Kills the child however the test ends, so none outlives a failed assertion.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Not a test of its own: the body of the child process. Run normally, with
/// no store named, it does nothing.
#[test]
fn child_holds_the_lock() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else { return };
    let dir = Path::new(&dir);
    let _lock = StoreLock::acquire(dir).expect("the child takes the lock");
    std::fs::write(dir.join(READY), b"").unwrap();
    thread::sleep(CHILD_LIFE);
}

fn start_child(dir: &Path) -> Killed {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["child_holds_the_lock", "--exact", "--nocapture"])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("the test binary starts again");
    Killed(child)
}

/// Waits, a bounded number of short times, for the child to hold the lock.
fn wait_until_ready(dir: &Path, child: &mut Killed) {
    for _ in 0..400 {
        if dir.join(READY).exists() {
            return;
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("the child exited ({status}) before taking the lock");
        }
        thread::sleep(Duration::from_millis(25));
    }
    panic!("the child did not take the lock within 10 s");
}

fn record_in(dir: &Path) -> Holder {
    serde_json::from_slice(&std::fs::read(dir.join("lock")).unwrap()).unwrap()
}

#[test]
fn a_live_holder_turns_us_away_and_a_killed_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = start_child(dir.path());
    let child_pid = child.0.id();
    wait_until_ready(dir.path(), &mut child);

    // The child holds the lock: we are refused, with the child's name.
    let error = StoreLock::acquire(dir.path()).unwrap_err();
    let LockError::Held { holder: Some(holder), .. } = &error else {
        panic!("expected Held naming the child, got {error:?}");
    };
    assert_eq!(holder.pid, child_pid);
    assert!(error.to_string().contains(&format!("pid {child_pid} on host")), "{error}");
    assert_eq!(current_holder(dir.path()).unwrap().map(|h| h.pid), Some(child_pid));

    // SIGKILL: the kernel drops the lock, but the child's record stays behind.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    assert_eq!(record_in(dir.path()).pid, child_pid);
    assert_eq!(current_holder(dir.path()).unwrap(), None, "a dead holder holds nothing");

    // The next run takes the stale lock over and writes its own record.
    let lock = StoreLock::acquire(dir.path()).expect("the killed child's lock is free");
    assert_eq!(lock.holder().pid, std::process::id());
    assert_eq!(&record_in(dir.path()), lock.holder());
    lock.release().unwrap();
}
