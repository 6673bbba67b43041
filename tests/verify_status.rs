//! `verify` and `status` against stores laid out by hand in a temp folder,
//! exactly as a run leaves them: read-only objects under their hash, journal
//! lines, run folders with and without a summary, partial files in `tmp/`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use identifai_fetch::journal::JournalEntry;
use identifai_fetch::lock::StoreLock;
use identifai_fetch::manifest::Kind;
use identifai_fetch::report::{RowStatus, Summary};
use identifai_fetch::status::{self, StoreStatus};
use identifai_fetch::verify::{self, VerifyOptions, VerifyOutcome, ViewRepair};
use identifai_fetch::view::{self, ViewMode};
use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A store in a temp folder, written file by file.
struct TestStore {
    dir: tempfile::TempDir,
    journal: Vec<String>,
}

impl TestStore {
    fn new() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        for folder in ["objects/sha256", "runs", "tmp"] {
            fs::create_dir_all(dir.path().join(folder)).unwrap();
        }
        TestStore { dir, journal: Vec::new() }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn object_path(&self, hex: &str) -> PathBuf {
        self.path().join("objects/sha256").join(&hex[..2]).join(hex)
    }

    /// Stores `bytes` as a read-only object, as a run commits one.
    fn put(&self, bytes: &[u8]) -> String {
        let hex = sha256_hex(bytes);
        let path = self.object_path(&hex);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
        set_read_only(&path, true);
        hex
    }

    /// Overwrites an object's bytes in place, as bit rot or a careless hand would.
    fn corrupt(&self, hex: &str, bytes: &[u8]) {
        let path = self.object_path(hex);
        set_read_only(&path, false);
        fs::write(&path, bytes).unwrap();
        set_read_only(&path, true);
    }

    /// Appends a journal line and rewrites the journal.
    fn journal(&mut self, entry: JournalEntry) {
        self.journal.push(serde_json::to_string(&entry).unwrap());
        let text: String = self.journal.iter().map(|line| format!("{line}\n")).collect();
        fs::write(self.path().join("journal.jsonl"), text).unwrap();
    }

    /// A run folder, finished (with its summary) or not.
    fn run(&self, run_id: &str, summary: Option<&Summary>) {
        let folder = self.path().join("runs").join(run_id);
        fs::create_dir_all(&folder).unwrap();
        fs::write(folder.join("report.csv"), "line,type\n").unwrap();
        if let Some(summary) = summary {
            fs::write(folder.join("summary.json"), serde_json::to_string(summary).unwrap())
                .unwrap();
        }
    }

    fn verify(&self, quick: bool) -> VerifyOutcome {
        verify::verify(self.path(), &VerifyOptions { quick, threads: Some(3) }).unwrap()
    }

    fn status(&self, last: usize) -> StoreStatus {
        status::status(self.path(), last).unwrap()
    }
}

fn set_read_only(path: &Path, read_only: bool) {
    let mut permissions = fs::metadata(path).unwrap().permissions();
    permissions.set_readonly(read_only);
    fs::set_permissions(path, permissions).unwrap();
}

/// A journal line for a request of `kind` and `id`.
fn entry(kind: Kind, id: &str, status: RowStatus, object: Option<(&str, u64)>) -> JournalEntry {
    JournalEntry {
        kind: kind.to_string(),
        id: id.into(),
        identifier: id.into(),
        frame_or_track_id: String::new(),
        status,
        sha256: object.map(|(hex, _)| hex.to_owned()).unwrap_or_default(),
        bytes: object.map(|(_, bytes)| bytes),
        content_type: "application/octet-stream".into(),
        attempts: 1,
        api_calls: 1,
        error: if status == RowStatus::Ok { String::new() } else { format!("{status:?}") },
        at: "2026-12-03T02:15:00Z".into(),
        run_id: "20201203T021500Z".into(),
    }
}

/// The verification report's rows, header first.
fn report_rows(outcome: &VerifyOutcome) -> Vec<Vec<String>> {
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).from_path(&outcome.report_path).unwrap();
    reader.records().map(|r| r.unwrap().iter().map(String::from).collect()).collect()
}

fn summary(run_id: &str, counts: &[(RowStatus, u64)], stopped: Option<&str>) -> Summary {
    let mut summary = Summary {
        run_id: run_id.into(),
        bytes_downloaded: 2048,
        elapsed_seconds: 75.0,
        stopped: stopped.map(String::from),
        interrupted: stopped.is_some_and(|reason| reason.contains("SIG")),
        ..Summary::default()
    };
    for &(status, n) in counts {
        summary.by_status.insert(status.as_str(), n);
        summary.rows += n;
    }
    summary
}

#[test]
fn a_clean_store_verifies_clean_in_both_modes() {
    let mut store = TestStore::new();
    for (n, bytes) in [b"first".as_slice(), b"second", &[7; 3000]].into_iter().enumerate() {
        let hex = store.put(bytes);
        let object = Some((hex.as_str(), bytes.len() as u64));
        store.journal(entry(Kind::Image, &format!("i{n}"), RowStatus::Ok, object));
    }
    store.journal(entry(Kind::Video, "gone", RowStatus::NotFound, None));

    let full = store.verify(false);
    assert!(full.is_clean(), "{full:?}");
    assert_eq!((full.objects_checked, full.bytes_checked), (3, 3011));
    assert_eq!(full.run_in_progress, None);
    assert_eq!(report_rows(&full), [["check", "path_or_id", "expected", "found", "action"]]);
    let name = full.report_path.file_name().unwrap().to_str().unwrap();
    assert_eq!(full.report_path.parent().unwrap(), store.path().join("verify"));
    assert!(name.len() == "20201203T021500Z.csv".len() && name.ends_with("Z.csv"), "{name}");
    assert!(!store.path().join("quarantine").exists(), "nothing to move");

    let quick = store.verify(true);
    assert!(quick.is_clean(), "{quick:?}");
    assert_eq!((quick.objects_checked, quick.bytes_checked), (3, 0));
    assert_ne!(quick.report_path, full.report_path, "each verify keeps its own report");
}

#[test]
fn a_flipped_byte_moves_the_object_to_quarantine() {
    let mut store = TestStore::new();
    let good = store.put(b"untouched");
    let hex = store.put(b"evidence bytes");
    store.journal(entry(Kind::Audio, "a1", RowStatus::Ok, Some((&hex, 14))));
    store.journal(entry(Kind::Audio, "a2", RowStatus::Ok, Some((&good, 9))));
    store.corrupt(&hex, b"evidence byteS");

    let outcome = store.verify(false);
    assert!(!outcome.is_clean());
    let [mismatch] = outcome.mismatched.as_slice() else { panic!("{outcome:?}") };
    let relative = format!("objects/sha256/{}/{hex}", &hex[..2]);
    assert_eq!(mismatch.object, Path::new(&relative));
    assert_eq!(mismatch.expected, hex);
    assert_eq!(mismatch.found, sha256_hex(b"evidence byteS"));
    assert_eq!(mismatch.quarantined, Path::new("quarantine").join(&hex));
    assert!(!store.object_path(&hex).exists(), "the bad object left objects/");
    let moved = fs::read(store.path().join("quarantine").join(&hex)).unwrap();
    assert_eq!(moved, b"evidence byteS", "moved, not deleted");
    assert!(store.object_path(&good).exists());

    // The store no longer has the file, so the journal row is missing too.
    let [missing] = outcome.missing.as_slice() else { panic!("{outcome:?}") };
    assert_eq!((missing.kind, missing.id.as_str()), (Kind::Audio, "a1"));
    assert!(missing.reason.contains("quarantine"), "{}", missing.reason);

    let rows = report_rows(&outcome);
    let hash_row = [
        "hash".to_owned(),
        relative,
        hex.clone(),
        sha256_hex(b"evidence byteS"),
        format!("moved to quarantine/{hex}"),
    ];
    assert_eq!(rows[1], hash_row);
    assert_eq!(rows[2][..2], ["journal".to_owned(), "audio a1".to_owned()]);
    assert_eq!(rows.len(), 3);
}

#[test]
fn strays_are_moved_out_with_a_fresh_name_if_needed() {
    let store = TestStore::new();
    let good = store.put(b"good");
    let misplaced = sha256_hex(b"misplaced");
    let wrong = if misplaced.starts_with("00") { "01" } else { "00" };
    let objects = store.path().join("objects/sha256");
    fs::create_dir_all(objects.join(wrong)).unwrap();
    fs::write(objects.join(wrong).join(&misplaced), b"misplaced").unwrap();
    fs::write(objects.join(&good[..2]).join("notes.txt"), b"mine").unwrap();
    fs::write(objects.join("loose"), b"loose").unwrap();
    // A file of that name is already in quarantine from an earlier verify.
    fs::create_dir_all(store.path().join("quarantine")).unwrap();
    fs::write(store.path().join("quarantine/notes.txt"), b"older").unwrap();

    let outcome = store.verify(false);
    assert_eq!(outcome.objects_checked, 1, "only the well-placed object is hashed");
    assert!(outcome.mismatched.is_empty() && outcome.missing.is_empty());
    let mut stray: Vec<String> =
        outcome.stray.iter().map(|path| path.display().to_string()).collect();
    stray.sort();
    let mut expected = [
        "objects/sha256/loose".to_owned(),
        format!("objects/sha256/{}/notes.txt", &good[..2]),
        format!("objects/sha256/{wrong}/{misplaced}"),
    ];
    expected.sort();
    assert_eq!(stray, expected);

    let quarantine = store.path().join("quarantine");
    assert_eq!(fs::read(quarantine.join("notes.txt")).unwrap(), b"older");
    assert_eq!(fs::read(quarantine.join("notes.txt.2")).unwrap(), b"mine");
    assert_eq!(fs::read(quarantine.join(&misplaced)).unwrap(), b"misplaced");
    assert!(!objects.join("loose").exists() && store.object_path(&good).exists());
    let rows = report_rows(&outcome);
    let misplaced_row = rows.iter().find(|row| row[1].ends_with(&misplaced)).unwrap();
    let right_place = format!("objects/sha256/{}/{misplaced}", &misplaced[..2]);
    assert_eq!(
        misplaced_row[..4],
        ["name", &misplaced_row[1], &right_place, "in the wrong fan-out folder"]
    );

    assert!(store.verify(false).is_clean(), "a second verify finds nothing left");
}

#[test]
fn journal_rows_need_their_object_at_its_size() {
    let mut store = TestStore::new();
    let hex = store.put(b"twelve bytes");
    store.journal(entry(Kind::Image, "right", RowStatus::Ok, Some((&hex, 12))));
    store.journal(entry(Kind::Image, "short", RowStatus::Ok, Some((&hex, 13))));
    let absent = sha256_hex(b"never stored");
    store.journal(entry(Kind::Video, "absent", RowStatus::Ok, Some((&absent, 12))));
    // An ok that a later failure replaced, and a plain failure: neither has an object.
    store.journal(entry(Kind::Audio, "later", RowStatus::Ok, Some((&absent, 12))));
    store.journal(entry(Kind::Audio, "later", RowStatus::Failed, None));
    store.journal(entry(Kind::Audio, "failed", RowStatus::Failed, None));

    for quick in [false, true] {
        let outcome = store.verify(quick);
        let found: Vec<(Kind, &str, &str)> =
            outcome.missing.iter().map(|m| (m.kind, m.id.as_str(), m.reason.as_str())).collect();
        assert_eq!(
            found,
            [
                (Kind::Video, "absent", "absent"),
                (Kind::Image, "short", "12 bytes, the journal says 13"),
            ],
            "quick: {quick}"
        );
        assert_eq!(outcome.missing[0].sha256, absent);
        assert!(outcome.mismatched.is_empty() && outcome.stray.is_empty());
        assert_eq!(report_rows(&outcome).len(), 3);
    }
}

#[test]
fn quick_mode_reads_no_bytes() {
    let mut store = TestStore::new();
    let hex = store.put(b"same size");
    store.journal(entry(Kind::Image, "i", RowStatus::Ok, Some((&hex, 9))));
    store.corrupt(&hex, b"SAME SIZE");

    let quick = store.verify(true);
    assert!(quick.is_clean(), "quick only sees names and sizes: {quick:?}");
    assert_eq!(quick.bytes_checked, 0);
    assert!(store.object_path(&hex).exists());

    let full = store.verify(false);
    assert_eq!(full.mismatched.len(), 1, "{full:?}");
    assert_eq!(full.bytes_checked, 9);
}

#[test]
fn a_folder_that_is_not_a_store_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let options = VerifyOptions::default();
    let error = verify::verify(dir.path(), &options).unwrap_err().to_string();
    assert!(error.contains(&dir.path().display().to_string()), "{error}");
    assert!(error.contains("not an identifai-fetch store"), "{error}");
    let absent = dir.path().join("absent");
    let error = status::status(&absent, 5).unwrap_err().to_string();
    assert_eq!(error, format!("{} does not exist", absent.display()));
    assert!(!dir.path().join("verify").exists(), "nothing written into a non-store");
}

#[test]
fn verify_names_the_run_in_progress() {
    let store = TestStore::new();
    let lock = StoreLock::acquire(store.path()).unwrap();
    let outcome = store.verify(true);
    let holder = outcome.run_in_progress.expect("the lock is held");
    assert!(holder.contains(&format!("pid {}", std::process::id())), "{holder}");
    drop(lock);
    assert_eq!(store.verify(true).run_in_progress, None);
}

/// Two objects, a journal with failures, three runs (one crashed), a partial download.
fn small_store() -> TestStore {
    let mut store = TestStore::new();
    let photo = store.put(&[1; 1500]);
    let clip = store.put(&[2; 700]);
    store.journal(entry(Kind::Image, "photo-1", RowStatus::Ok, Some((&photo, 1500))));
    store.journal(entry(Kind::Audio, "clip-9", RowStatus::Ok, Some((&clip, 700))));
    let mut older = entry(Kind::Video, "frame-3", RowStatus::NotFound, None);
    older.identifier = "vid-7".into();
    older.frame_or_track_id = "frame-3".into();
    older.error = "HTTP 404 from the API".into();
    older.at = "2026-12-02T02:16:00Z".into();
    store.journal(older);
    let mut newer = entry(Kind::Image, "photo-2", RowStatus::Failed, None);
    newer.error = "storage answered 500 eight times".into();
    newer.at = "2026-12-03T02:17:00Z".into();
    store.journal(newer);

    let first = summary("20201201T021500Z", &[(RowStatus::Ok, 2)], None);
    store.run("20201201T021500Z", Some(&first));
    store.run("20201202T021500Z", None);
    let counts = [(RowStatus::Ok, 1), (RowStatus::Duplicate, 1), (RowStatus::Failed, 1)];
    store.run("20201203T021500Z", Some(&summary("20201203T021500Z", &counts, None)));
    let stopped = summary("20201203T021500Z-2", &[(RowStatus::Ok, 1)], Some("SIGINT"));
    store.run("20201203T021500Z-2", Some(&stopped));

    let tmp = store.path().join("tmp");
    fs::write(tmp.join("0a1b.part"), [0; 4096]).unwrap();
    fs::write(tmp.join("0a1b.part.json"), b"{}").unwrap();
    store
}

#[test]
fn status_counts_the_store_and_lists_runs_newest_first() {
    let store = small_store();
    let status = store.status(3);
    assert_eq!((status.objects, status.object_bytes), (2, 2200));
    assert_eq!((status.known_requests, status.journal_skipped_lines), (4, 0));
    assert_eq!((status.partial_downloads, status.partial_bytes), (1, 4096));
    assert_eq!(status.lock_holder, None);

    let runs: Vec<(&str, &str)> =
        status.runs.iter().map(|r| (r.run_id.as_str(), r.outcome.as_str())).collect();
    assert_eq!(
        runs,
        [
            ("20201203T021500Z-2", "interrupted: SIGINT"),
            ("20201203T021500Z", "some rows failed"),
            ("20201202T021500Z", "unfinished (no summary)"),
        ]
    );
    assert_eq!(status.runs[1].summary.as_ref().unwrap()["rows"], 3);
    assert!(status.runs[2].summary.is_none());
    assert_eq!(store.status(10).runs.last().unwrap().outcome, "ok");

    let failing: Vec<(&str, RowStatus, &str)> =
        status.failing.iter().map(|f| (f.id.as_str(), f.status, f.at.as_str())).collect();
    assert_eq!(
        failing,
        [
            ("photo-2", RowStatus::Failed, "2026-12-03T02:17:00Z"),
            ("frame-3", RowStatus::NotFound, "2026-12-02T02:16:00Z"),
        ]
    );
    assert_eq!(
        (status.failing[1].identifier.as_str(), status.failing[1].frame.as_str()),
        ("vid-7", "frame-3")
    );
}

#[test]
fn status_renders_aligned_text() {
    let store = small_store();
    let text = status::render(&store.status(3));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "objects   2 (2.1 KiB)");
    assert_eq!(lines[1], "requests  4 known, 2 not ok");
    assert_eq!(lines[2], "partial   1 download in tmp/ (4.0 KiB)");
    assert_eq!(lines[3], "lock      free");
    let runs = lines.iter().position(|line| *line == "runs, newest first").unwrap();
    let failing = lines.iter().position(|line| *line == "not ok, newest first").unwrap();
    assert!(lines[runs + 1].starts_with("  20201203T021500Z-2  interrupted: SIGINT  "));
    assert!(lines[runs + 2].ends_with("  1 ok, 1 duplicate, 1 failed; 2.0 KiB in 1m15s"));
    assert_eq!(lines[runs + 3], "  20201202T021500Z    unfinished (no summary)");
    let photo = lines[failing + 1];
    let frame = lines[failing + 2];
    assert!(photo.starts_with("  image  photo-2          failed     2026-12-03T02:17:00Z  "));
    assert!(frame.starts_with("  video  vid-7 / frame-3  not_found  2026-12-02T02:16:00Z  "));
    assert!(frame.ends_with("HTTP 404 from the API"), "{frame}");
    assert!(text.lines().all(|line| line.chars().count() <= 100), "{text}");
}

#[test]
fn status_shows_the_lock_holder_and_its_run_in_progress() {
    let store = small_store();
    let lock = StoreLock::acquire(store.path()).unwrap();
    // The run holding the lock names its folder after it took the lock.
    let now = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    store.run(&now, None);

    let status = store.status(2);
    let holder = status.lock_holder.clone().expect("the lock is held");
    assert_eq!(holder, lock.holder().to_string());
    assert_eq!(status.runs[0].run_id, now);
    assert_eq!(status.runs[0].outcome, "in progress");
    assert_eq!(status.runs[1].outcome, "interrupted: SIGINT");
    let older = store.status(5).runs.into_iter().find(|r| r.run_id == "20201202T021500Z");
    assert_eq!(older.unwrap().outcome, "unfinished (no summary)", "older than the lock");
    assert!(status::render(&status).contains(&format!("lock      held by {holder}")));

    drop(lock);
    let status = store.status(1);
    assert_eq!(status.lock_holder, None);
    assert_eq!(status.runs[0].outcome, "unfinished (no summary)", "the holder is gone");
}

#[test]
fn a_torn_summary_or_journal_line_is_shown_not_fatal() {
    let mut store = small_store();
    fs::write(store.path().join("runs/20201201T021500Z/summary.json"), b"{\"run_id\":").unwrap();
    store.journal.push("{\"type\":\"image\",".into());
    let text: String = store.journal.iter().map(|line| format!("{line}\n")).collect();
    fs::write(store.path().join("journal.jsonl"), text).unwrap();

    let status = store.status(10);
    assert_eq!(status.journal_skipped_lines, 1);
    let torn = status.runs.iter().find(|r| r.run_id == "20201201T021500Z").unwrap();
    assert!(torn.summary.is_none());
    assert!(torn.outcome.starts_with("unreadable summary: "), "{}", torn.outcome);
    assert!(status::render(&status).contains("(1 unreadable journal line skipped)"));
}

/// Every symbolic link under `root` that leads nowhere, relative to `root`.
fn dangling_links(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    // Ends: the view is a finite tree of folders, and links are not followed.
    while let Some(folder) = pending.pop() {
        for entry in fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let kind = fs::symlink_metadata(&path).unwrap().file_type();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_symlink() && fs::metadata(&path).is_err() {
                found.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    found
}

/// A store whose view shows two recordings, and whose `a1` is then altered.
fn store_with_a_view_and_an_altered_object(mode: ViewMode) -> TestStore {
    let mut store = TestStore::new();
    let good = store.put(b"untouched");
    let bad = store.put(b"evidence bytes");
    store.journal(entry(Kind::Audio, "a1", RowStatus::Ok, Some((&bad, 14))));
    store.journal(entry(Kind::Audio, "a2", RowStatus::Ok, Some((&good, 9))));
    view::rebuild(store.path(), mode).unwrap();
    assert!(store.path().join("by-id/audio/a1").exists());
    store.corrupt(&bad, b"evidence byteS");
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_takes_a_quarantined_object_out_of_the_view() {
    for mode in [ViewMode::Symlink, ViewMode::Copy] {
        let store = store_with_a_view_and_an_altered_object(mode);
        let seen = common::run_bin(&["verify", store.path().to_str().unwrap()], &[]).await;
        assert_eq!(seen.code, 3, "{mode:?}: {}{}", seen.stdout, seen.stderr);
        assert!(seen.stdout.contains("MISMATCH"), "{}", seen.stdout);
        assert!(seen.stderr.contains("rebuilt by-id/"), "{mode:?}: {}", seen.stderr);

        let view = store.path().join("by-id");
        assert!(fs::symlink_metadata(view.join("audio/a1")).is_err(), "{mode:?}: a1 is gone");
        let kept = fs::symlink_metadata(view.join("audio/a2")).unwrap();
        assert_eq!(kept.file_type().is_symlink(), mode == ViewMode::Symlink, "the same mode");
        assert_eq!(fs::read(view.join("audio/a2")).unwrap(), b"untouched");
        assert!(dangling_links(&view).is_empty(), "{mode:?}");
        assert!(fs::read(store.path().join("lock")).unwrap().is_empty(), "the lock was let go");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_beside_a_run_says_how_to_rebuild_the_view() {
    let store = store_with_a_view_and_an_altered_object(ViewMode::Symlink);
    // This test process plays the run in progress.
    let lock = StoreLock::acquire(store.path()).unwrap();
    let dir = store.path().to_str().unwrap();
    let seen = common::run_bin(&["verify", dir], &[]).await;
    assert_eq!(seen.code, 3, "{}{}", seen.stdout, seen.stderr);
    let hint = format!("run `identifai-fetch link {dir}`");
    assert!(seen.stderr.contains(&hint), "{}", seen.stderr);
    assert!(seen.stderr.contains("another run holds"), "{}", seen.stderr);
    let view = store.path().join("by-id");
    assert_eq!(dangling_links(&view), [Path::new("audio/a1")], "left for the run");

    // The run's own refresh at its end rebuilds, though its journal is unchanged.
    drop(lock);
    assert!(view::refresh(store.path(), ViewMode::Symlink).unwrap().is_some());
    assert!(dangling_links(&view).is_empty());
}

#[test]
fn verify_leaves_a_store_without_a_view_without_one() {
    let mut store = TestStore::new();
    let hex = store.put(b"evidence bytes");
    store.journal(entry(Kind::Audio, "a1", RowStatus::Ok, Some((&hex, 14))));
    store.corrupt(&hex, b"evidence byteS");
    let outcome = store.verify(false);
    assert_eq!(outcome.view, ViewRepair::Unneeded);
    assert!(!store.path().join("by-id").exists() && !store.path().join("lock").exists());
}
