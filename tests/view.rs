//! The by-id view over a hand-built store: objects written under their
//! SHA-256 names and a journal written line by line, as a run leaves them.

#![cfg(unix)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use identifai_fetch::journal::JournalEntry;
use identifai_fetch::report::RowStatus;
use identifai_fetch::view::{ViewMode, ViewStats, rebuild, safe_component};
use sha2::{Digest, Sha256};

/// A store in a temp folder, filled by hand.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    journal: Vec<String>,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("case");
        fs::create_dir(&dir).unwrap();
        Fixture { _tmp: tmp, dir, journal: Vec::new() }
    }

    /// Stores `bytes` as an object, read-only like the real store's.
    fn object(&self, bytes: &[u8]) -> String {
        let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        let fan_out = self.dir.join("objects/sha256").join(&hex[..2]);
        fs::create_dir_all(&fan_out).unwrap();
        let path = fan_out.join(&hex);
        if !path.exists() {
            fs::write(&path, bytes).unwrap();
            let mut permissions = fs::metadata(&path).unwrap().permissions();
            permissions.set_readonly(true);
            fs::set_permissions(&path, permissions).unwrap();
        }
        hex
    }

    /// Stores `bytes` and records the request as `ok`.
    fn ok(&mut self, kind: &str, identifier: &str, part: &str, content_type: &str, bytes: &[u8]) {
        let sha256 = self.object(bytes);
        let entry =
            entry(kind, identifier, part, RowStatus::Ok, &sha256, bytes.len(), content_type);
        self.record(&entry);
    }

    /// Records an outcome other than `ok` for a request.
    fn not_ok(&mut self, kind: &str, identifier: &str, part: &str, status: RowStatus) {
        self.record(&entry(kind, identifier, part, status, "", 0, ""));
    }

    fn record(&mut self, entry: &JournalEntry) {
        self.journal.push(serde_json::to_string(entry).unwrap());
        let text: String = self.journal.iter().map(|line| format!("{line}\n")).collect();
        fs::write(self.dir.join("journal.jsonl"), text).unwrap();
    }

    fn rebuild(&self, mode: ViewMode) -> ViewStats {
        rebuild(&self.dir, mode).unwrap()
    }

    fn view(&self) -> PathBuf {
        self.dir.join("by-id")
    }
}

fn entry(
    kind: &str,
    identifier: &str,
    part: &str,
    status: RowStatus,
    sha256: &str,
    bytes: usize,
    content_type: &str,
) -> JournalEntry {
    JournalEntry {
        kind: kind.into(),
        id: if part.is_empty() { identifier.into() } else { part.into() },
        identifier: identifier.into(),
        frame_or_track_id: part.into(),
        status,
        sha256: sha256.into(),
        bytes: (status == RowStatus::Ok).then_some(bytes as u64),
        content_type: content_type.into(),
        attempts: 1,
        api_calls: 1,
        error: String::new(),
        at: "2026-12-03T02:15:00Z".into(),
        run_id: "20261203T021500Z".into(),
    }
}

/// What the view holds: each path under `root`, and a link's target or a
/// file's bytes (`None` for a folder).
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Folder,
    Link(PathBuf),
    File(Vec<u8>),
}

fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut found = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
            let kind = fs::symlink_metadata(&path).unwrap().file_type();
            let node = if kind.is_symlink() {
                Node::Link(fs::read_link(&path).unwrap())
            } else if kind.is_dir() {
                pending.push(path.clone());
                Node::Folder
            } else {
                Node::File(fs::read(&path).unwrap())
            };
            found.insert(relative, node);
        }
    }
    found
}

fn paths(root: &Path) -> Vec<String> {
    tree(root).into_keys().collect()
}

#[test]
fn submissions_frames_and_tracks_are_laid_out_by_id() {
    let mut store = Fixture::new();
    store.ok("image", "img-1", "", "image/jpeg", b"a jpeg");
    store.ok("video", "v1", "", "video/mp4", b"an mp4");
    store.ok("video", "v1", "f1", "image/png", b"frame one");
    store.ok("video", "v1", "f2", "image/jpeg; charset=binary", b"frame two");
    // A track whose recording itself was never downloaded: a folder alone.
    store.ok("audio", "a1", "t1", "audio/x-wav", b"a track");

    let stats = store.rebuild(ViewMode::Symlink);
    assert_eq!(stats, ViewStats { linked: 5, ..ViewStats::default() });

    let view = store.view();
    let expected = [
        "audio",
        "audio/a1",
        "audio/a1/t1.wav",
        "image",
        "image/img-1.jpg",
        "video",
        "video/v1",
        "video/v1.mp4",
        "video/v1/f1.png",
        "video/v1/f2.jpg",
    ];
    assert_eq!(paths(&view), expected);

    let hex = hex_of(b"a jpeg");
    let target = format!("../../objects/sha256/{}/{hex}", &hex[..2]);
    assert_eq!(fs::read_link(view.join("image/img-1.jpg")).unwrap(), Path::new(&target));
    let hex = hex_of(b"frame one");
    let target = format!("../../../objects/sha256/{}/{hex}", &hex[..2]);
    assert_eq!(fs::read_link(view.join("video/v1/f1.png")).unwrap(), Path::new(&target));

    for (path, bytes) in [
        ("image/img-1.jpg", &b"a jpeg"[..]),
        ("video/v1.mp4", b"an mp4"),
        ("video/v1/f1.png", b"frame one"),
        ("video/v1/f2.jpg", b"frame two"),
        ("audio/a1/t1.wav", b"a track"),
    ] {
        assert_eq!(fs::read(view.join(path)).unwrap(), bytes, "{path}");
    }
}

fn hex_of(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_view_still_works_after_the_folder_moves() {
    let mut store = Fixture::new();
    store.ok("video", "v1", "", "video/mp4", b"an mp4");
    store.ok("video", "v1", "f1", "image/png", b"frame one");
    store.rebuild(ViewMode::Symlink);

    let moved = store.dir.with_file_name("moved elsewhere");
    fs::rename(&store.dir, &moved).unwrap();
    assert_eq!(fs::read(moved.join("by-id/video/v1.mp4")).unwrap(), b"an mp4");
    assert_eq!(fs::read(moved.join("by-id/video/v1/f1.png")).unwrap(), b"frame one");
}

/// Whether one path component would be accepted, and mean the same, on
/// ext4, APFS, NTFS and FAT file systems.
fn is_safe_component(name: &str) -> bool {
    let forbidden = |c: char| "/\\:*?\"<>|".contains(c) || c.is_control();
    let stem = name.split('.').next().unwrap().to_ascii_uppercase();
    let device = ["CON", "PRN", "AUX", "NUL", "COM1", "COM9", "LPT1"].contains(&stem.as_str());
    !name.is_empty()
        && name.len() <= 200
        && !name.contains(forbidden)
        && !name.starts_with(['.', ' '])
        && !name.ends_with(['.', ' '])
        && !device
}

#[test]
fn awkward_ids_stay_inside_the_view_with_distinct_safe_names() {
    let kib = "k/".repeat(512);
    let ids = [
        "../../etc/passwd",
        "a/b",
        "a\\b",
        "CON",
        "nul.txt",
        "..",
        ".",
        "x:y*?",
        "<\"quoted\">|",
        kib.as_str(),
        "видео 視頻 🎞",
        "trailing dot.",
        " spaced ",
        "tab\tand\nnewline",
        "100%",
        "100%25",
    ];
    let mut store = Fixture::new();
    for id in ids {
        store.ok("image", id, "", "image/png", format!("image {id}").as_bytes());
    }
    for frame in ["..", "../../../../x", "COM1", "f"] {
        store.ok("video", "../v", frame, "image/jpeg", format!("frame {frame}").as_bytes());
    }
    let stats = store.rebuild(ViewMode::Symlink);
    assert_eq!((stats.linked, stats.collisions), (ids.len() as u64 + 4, 0));

    let found = tree(&store.view());
    for path in found.keys() {
        for component in path.split('/') {
            assert!(is_safe_component(component), "{component:?} in {path:?}");
        }
    }
    // Every request reached its own bytes, through a link of its own.
    let files: Vec<_> = found.iter().filter(|(_, node)| matches!(node, Node::Link(_))).collect();
    assert_eq!(files.len(), ids.len() + 4);
    let contents: BTreeSet<Vec<u8>> =
        files.iter().map(|(path, _)| fs::read(store.view().join(path)).unwrap()).collect();
    let mut expected: BTreeSet<Vec<u8>> =
        ids.iter().map(|id| format!("image {id}").into_bytes()).collect();
    expected
        .extend(["..", "../../../../x", "COM1", "f"].map(|f| format!("frame {f}").into_bytes()));
    assert_eq!(contents, expected);

    // Nothing was written beside the view but its stamp.
    let mut top: Vec<_> = fs::read_dir(&store.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["by-id", "by-id.stamp", "journal.jsonl", "objects"]);
    assert!(!store.dir.parent().unwrap().join("etc").exists());
    assert!(found.contains_key("image/%2E.%2F..%2Fetc%2Fpasswd.png"));
    assert!(found.contains_key("video/%2E.%2Fv/%2E%2E.jpg"));
}

#[test]
fn names_that_collide_all_get_an_entry() {
    // These two share their first 141 bytes and the first 8 hex digits of
    // their SHA-256, so they are cut to the same name.
    let cut_one = format!("{}-110740", "z".repeat(160));
    let cut_two = format!("{}-8566", "z".repeat(160));
    assert_eq!(safe_component(&cut_one), safe_component(&cut_two));
    let cut_name = safe_component(&cut_one);

    let mut store = Fixture::new();
    store.ok("image", "a", "", "image/png", b"lower");
    store.ok("image", "A", "", "image/png", b"upper");
    store.ok("image", &cut_two, "", "image/png", b"cut two");
    store.ok("image", &cut_one, "", "image/png", b"cut one");
    // A frame folder whose name is another submission's file name.
    store.ok("video", "v.mp4", "f", "image/png", b"frame");
    store.ok("video", "v", "", "video/mp4", b"video");

    let stats = store.rebuild(ViewMode::Symlink);
    assert_eq!((stats.linked, stats.collisions), (6, 3));
    let view = store.view();
    // Ordered by the original ids: "A" < "a", "…-110740" < "…-8566", "v" < "v.mp4".
    for (path, bytes) in [
        ("image/A.png".to_owned(), &b"upper"[..]),
        ("image/a~2.png".to_owned(), b"lower"),
        (format!("image/{cut_name}.png"), b"cut one"),
        (format!("image/{cut_name}~2.png"), b"cut two"),
        ("video/v.mp4".to_owned(), b"video"),
        ("video/v.mp4~2/f.png".to_owned(), b"frame"),
    ] {
        assert_eq!(fs::read(view.join(&path)).unwrap(), bytes, "{path}");
    }
}

#[test]
fn an_unknown_type_gets_no_extension_unless_its_folder_needs_the_name() {
    let mut store = Fixture::new();
    store.ok("image", "raw", "", "application/octet-stream", b"raw image");
    store.ok("video", "v", "", "", b"a video of no known type");
    store.ok("video", "v", "f", "image/x-unheard-of", b"a frame");

    store.rebuild(ViewMode::Symlink);
    let view = store.view();
    let expected = ["image", "image/raw", "video", "video/v", "video/v.bin", "video/v/f"];
    assert_eq!(paths(&view), expected);
    assert_eq!(fs::read(view.join("video/v.bin")).unwrap(), b"a video of no known type");
    assert_eq!(fs::read(view.join("video/v/f")).unwrap(), b"a frame");
}

#[test]
fn copy_mode_makes_independent_files_with_the_same_bytes() {
    let mut store = Fixture::new();
    store.ok("image", "img-1", "", "image/jpeg", b"a jpeg");
    store.ok("video", "v1", "f1", "image/png", b"frame one");
    store.rebuild(ViewMode::Symlink);

    let stats = store.rebuild(ViewMode::Copy);
    assert_eq!(stats, ViewStats { copied: 2, ..ViewStats::default() }, "the same paths");
    let view = store.view();
    for (path, bytes) in [("image/img-1.jpg", &b"a jpeg"[..]), ("video/v1/f1.png", b"frame one")] {
        let copy = fs::symlink_metadata(view.join(path)).unwrap();
        assert!(copy.file_type().is_file(), "{path} is a plain file");
        assert_eq!(fs::read(view.join(path)).unwrap(), bytes);
        let hex = hex_of(bytes);
        let object = fs::metadata(store.dir.join("objects/sha256").join(&hex[..2]).join(hex));
        let object = object.unwrap();
        assert_ne!((copy.dev(), copy.ino()), (object.dev(), object.ino()), "not a hard link");
        assert_eq!(object.nlink(), 1);
    }
}

/// The (device, inode) of a view entry, to tell a kept copy from a new one.
fn identity(path: &Path) -> (u64, u64) {
    let meta = fs::symlink_metadata(path).unwrap();
    assert!(meta.file_type().is_file(), "{} is a plain file", path.display());
    (meta.dev(), meta.ino())
}

#[test]
fn a_copy_rebuild_keeps_the_copies_that_are_right_and_remakes_the_rest() {
    let mut store = Fixture::new();
    store.ok("image", "img-1", "", "image/jpeg", b"a jpeg");
    store.ok("image", "img-2", "", "image/jpeg", b"another jpeg");
    store.ok("video", "v1", "f1", "image/png", b"frame one");
    let stats = store.rebuild(ViewMode::Copy);
    assert_eq!((stats.copied, stats.copies_kept), (3, 0), "the first view copies all");
    let view = store.view();
    let entries = ["image/img-1.jpg", "image/img-2.jpg", "video/v1/f1.png"];
    let first: Vec<_> = entries.iter().map(|entry| identity(&view.join(entry))).collect();

    // Nothing changed: the same files stay, and nothing is copied.
    let stats = store.rebuild(ViewMode::Copy);
    assert_eq!((stats.copied, stats.copies_kept, stats.removed), (3, 3, 0));
    let second: Vec<_> = entries.iter().map(|entry| identity(&view.join(entry))).collect();
    assert_eq!(second, first);
    for entry in entries {
        // The old view's link to it went with the old view.
        assert_eq!(fs::metadata(view.join(entry)).unwrap().nlink(), 1, "{entry}");
    }

    // img-1 was stored again with other bytes, and someone edited img-2's
    // copy in place without changing its size.
    store.ok("image", "img-1", "", "image/jpeg", b"a newer jpeg");
    let edited = view.join("image/img-2.jpg");
    let mut permissions = fs::metadata(&edited).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    fs::set_permissions(&edited, permissions).unwrap();
    let file = fs::OpenOptions::new().write(true).open(&edited).unwrap();
    std::io::Write::write_all(&mut &file, b"ANOTHER").unwrap();
    let earlier = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
    file.set_modified(earlier).unwrap();
    drop(file);

    let stats = store.rebuild(ViewMode::Copy);
    assert_eq!((stats.copied, stats.copies_kept), (3, 1), "only the frame is kept");
    assert_eq!(fs::read(view.join("image/img-1.jpg")).unwrap(), b"a newer jpeg");
    assert_eq!(fs::read(&edited).unwrap(), b"another jpeg", "the edit is undone");
    assert_ne!(identity(&view.join("image/img-1.jpg")), first[0]);
    assert_eq!(identity(&view.join("video/v1/f1.png")), first[2]);

    // A symlink view in between leaves no record to trust.
    store.rebuild(ViewMode::Symlink);
    assert!(!store.dir.join("by-id.copies").exists());
    let stats = store.rebuild(ViewMode::Copy);
    assert_eq!((stats.copied, stats.copies_kept), (3, 0));
}

#[test]
fn a_copy_is_not_kept_when_its_record_is_gone_or_names_another_object() {
    let mut store = Fixture::new();
    store.ok("image", "img-1", "", "image/jpeg", b"a jpeg");
    store.rebuild(ViewMode::Copy);
    let record = store.dir.join("by-id.copies");
    let text = fs::read_to_string(&record).unwrap();
    assert!(text.starts_with(&hex_of(b"a jpeg")) && text.ends_with("\timage/img-1.jpg\n"));

    // A record that claims another object for the same path is not believed.
    fs::write(&record, text.replace(&hex_of(b"a jpeg"), &hex_of(b"something else"))).unwrap();
    assert_eq!(store.rebuild(ViewMode::Copy).copies_kept, 0);
    fs::remove_file(&record).unwrap();
    assert_eq!(store.rebuild(ViewMode::Copy).copies_kept, 0, "no record, no keeping");
    assert_eq!(store.rebuild(ViewMode::Copy).copies_kept, 1, "the record was written again");
    assert_eq!(fs::read(store.view().join("image/img-1.jpg")).unwrap(), b"a jpeg");
}

#[test]
fn rebuilding_gives_the_same_tree_and_counts_what_went() {
    let mut store = Fixture::new();
    store.ok("image", "img-1", "", "image/jpeg", b"a jpeg");
    store.ok("image", "A", "", "image/png", b"upper");
    store.ok("image", "a", "", "image/png", b"lower");
    store.ok("audio", "a1", "t1", "audio/flac", b"a track");
    let first_stats = store.rebuild(ViewMode::Symlink);
    let first = tree(&store.view());
    let second_stats = store.rebuild(ViewMode::Symlink);
    assert_eq!(tree(&store.view()), first);
    assert_eq!(second_stats, first_stats);
    assert_eq!(second_stats.removed, 0);

    // A later failure of a stored request takes it out of the view.
    store.not_ok("audio", "a1", "t1", RowStatus::Failed);
    let stats = store.rebuild(ViewMode::Symlink);
    assert_eq!((stats.linked, stats.removed), (3, 1));
    assert!(!store.view().join("audio").exists());
}

#[test]
fn only_requests_whose_latest_outcome_is_ok_appear() {
    let mut store = Fixture::new();
    store.ok("image", "kept", "", "image/png", b"kept");
    store.not_ok("image", "missing", "", RowStatus::NotFound);
    store.not_ok("image", "refused", "", RowStatus::Forbidden);
    store.ok("image", "later-failed", "", "image/png", b"later failed");
    store.not_ok("image", "later-failed", "", RowStatus::Failed);
    store.not_ok("image", "retried", "", RowStatus::Failed);
    store.ok("image", "retried", "", "image/png", b"retried");
    // The journal says ok, but the object is gone: no dangling link.
    store.ok("image", "deleted", "", "image/png", b"deleted");
    let hex = hex_of(b"deleted");
    fs::remove_file(store.dir.join("objects/sha256").join(&hex[..2]).join(&hex)).unwrap();

    let stats = store.rebuild(ViewMode::Symlink);
    assert_eq!((stats.linked, stats.skipped), (2, 1));
    assert_eq!(paths(&store.view()), ["image", "image/kept.png", "image/retried.png"]);
}

#[test]
fn leftovers_of_a_crashed_rebuild_are_cleaned_up() {
    let mut store = Fixture::new();
    store.ok("image", "img-1", "", "image/jpeg", b"a jpeg");
    // Killed between moving the old view aside and moving the new one in.
    fs::create_dir_all(store.dir.join("by-id.old/image")).unwrap();
    fs::write(store.dir.join("by-id.old/image/stale.jpg"), b"stale").unwrap();
    fs::create_dir_all(store.dir.join("by-id.new/image")).unwrap();
    fs::write(store.dir.join("by-id.new/image/half.jpg"), b"half").unwrap();

    let stats = store.rebuild(ViewMode::Symlink);
    assert_eq!((stats.linked, stats.removed), (1, 1), "the restored view had stale.jpg");
    assert_eq!(paths(&store.view()), ["image", "image/img-1.jpg"]);
    assert!(!store.dir.join("by-id.new").exists() && !store.dir.join("by-id.old").exists());
}

#[test]
fn a_store_without_a_journal_gets_an_empty_view() {
    let store = Fixture::new();
    // As a run leaves a store before its first journal line: objects/ alone.
    fs::create_dir_all(store.dir.join("objects/sha256")).unwrap();
    assert_eq!(store.rebuild(ViewMode::Symlink), ViewStats::default());
    assert!(store.view().is_dir());
    assert!(paths(&store.view()).is_empty());
}

#[test]
fn a_refresh_keeps_a_view_built_from_the_same_journal() {
    use identifai_fetch::view::{ViewMode, refresh};
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path();
    std::fs::create_dir_all(store.join("objects/sha256")).unwrap();
    std::fs::write(store.join("journal.jsonl"), "").unwrap();
    assert!(refresh(store, ViewMode::Symlink).unwrap().is_some(), "the first view is built");
    assert!(refresh(store, ViewMode::Symlink).unwrap().is_none(), "nothing changed: kept");
    assert!(refresh(store, ViewMode::Copy).unwrap().is_some(), "another mode: rebuilt");
    let journal = store.join("journal.jsonl");
    let mut file = std::fs::OpenOptions::new().append(true).open(&journal).unwrap();
    std::io::Write::write_all(&mut file, b"\n").unwrap();
    assert!(refresh(store, ViewMode::Copy).unwrap().is_some(), "the journal grew: rebuilt");
    std::fs::remove_dir_all(store.join("by-id")).unwrap();
    assert!(refresh(store, ViewMode::Copy).unwrap().is_some(), "a missing view is rebuilt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_refuses_a_folder_that_is_not_a_store() {
    // The medium the files were meant for, named instead of the store.
    let dir = tempfile::tempdir().unwrap();
    let usb = dir.path().join("usb-handover");
    fs::create_dir(&usb).unwrap();
    fs::write(usb.join("notes.txt"), b"already here").unwrap();

    let seen = common::run_bin(&["link", usb.to_str().unwrap(), "--view", "copy"], &[]).await;
    assert_eq!(seen.code, 2, "a usage error: {}", seen.stdout);
    assert!(seen.stderr.contains("is not an identifai-fetch store"), "{}", seen.stderr);
    assert!(seen.stderr.contains(&usb.display().to_string()), "{}", seen.stderr);
    assert!(!usb.join("by-id").exists() && !usb.join("by-id.new").exists());
    assert!(!usb.join("lock").exists(), "nothing is left on the medium");
    assert_eq!(fs::read(usb.join("notes.txt")).unwrap(), b"already here");

    // The help shows the view built inside a store, not on the medium.
    let help = common::run_bin(&["link", "--help"], &[]).await.stdout;
    assert!(help.contains("link /srv/evidence --view copy"), "{help}");
    assert!(!help.contains("link /mnt/"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_builds_a_view_in_a_store_that_has_only_a_journal_or_only_objects() {
    for (folder, file) in [("objects/sha256", None), ("", Some("journal.jsonl"))] {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(folder)).unwrap();
        if let Some(file) = file {
            fs::write(dir.path().join(file), "").unwrap();
        }
        let seen = common::run_bin(&["link", dir.path().to_str().unwrap()], &[]).await;
        assert_eq!(seen.code, 0, "{folder:?} {file:?}: {}", seen.stderr);
        assert!(dir.path().join("by-id").is_dir());
    }
}
