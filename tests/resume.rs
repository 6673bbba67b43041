//! Resume and crash safety, as a user meets them: reruns that skip what is
//! stored, downloads cut off and continued with `Range`, kill -9 at random
//! moments, SIGTERM, a second run on a locked store, and a full disk.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{BIN, files_under, manifest, report_rows, run_against, sha256_of, unlimited};
use identifai_fetch::journal::JournalIndex;
use identifai_fetch::manifest::Kind;
use identifai_fetch::report::RowStatus;
use identifai_fetch::simulator::{Endpoint, Fault, FileType, Received, SimConfig, Simulator};
use identifai_fetch::store::Store;

/// Every object is named by its hash, and nothing else is in `objects/`.
fn assert_store_is_clean(out: &Path) {
    for object in files_under(&out.join("objects")) {
        let name = object.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(name.len(), 64, "a stray file in objects/: {}", object.display());
        assert_eq!(sha256_of(&object), name, "{} is corrupt", object.display());
    }
}

/// The requests in `log` for identifier `id`: the API path's segment, or
/// the storage path's hex-encoded name.
fn requests_for<'a>(log: &'a [Received], id: &str) -> impl Iterator<Item = &'a Received> {
    let api_path = format!("/{id}/download");
    let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
    let storage_path = format!("/{hex}.");
    log.iter().filter(move |r| r.target.contains(&api_path) || r.target.contains(&storage_path))
}

/// A child run of the binary, for tests that stop it from outside.
fn spawn_run(
    sim: &Simulator,
    manifest: &Path,
    out: &Path,
    extra: &[&str],
) -> tokio::process::Child {
    let url = sim.api_url();
    let mut args = vec!["run", manifest.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend(["--api-url", &url]);
    if !extra.contains(&"--rate") {
        args.extend(["--rate", "1000/s"]);
    }
    args.extend_from_slice(extra);
    tokio::process::Command::new(BIN)
        .args(&args)
        .env("IDENTIFAI_API_KEY", sim.api_key())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits (bounded) until the run has made `bytes` of a partial file durable.
async fn wait_for_partial(out: &Path, bytes: u64) {
    for _ in 0..400 {
        let tmp = out.join("tmp");
        let records = std::fs::read_dir(&tmp).into_iter().flatten().flatten();
        for record in records.filter(|e| e.path().to_string_lossy().ends_with(".part.json")) {
            let text = std::fs::read_to_string(record.path()).unwrap_or_default();
            let durable = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|meta| meta["durable"].as_u64());
            if durable.is_some_and(|durable| durable >= bytes) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no partial file reached {bytes} bytes");
}

fn kill(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(status.success());
}

async fn finish(child: tokio::process::Child) -> (i32, String) {
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the run ends in time")
        .unwrap();
    let code = output.status.code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_skips_every_stored_row_without_a_request() {
    let sim = unlimited(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let rows: String = (0..12).map(|n| format!("image,img-{n}\n")).collect();
    let text = format!("type,identifier\n{rows}video,img-0\nimage,img-1\n");
    let path = manifest(dir.path(), &text);
    let out = dir.path().join("out");
    assert_eq!(run_against(&sim, &path, &out, &[]).await.code, 0);
    let before = sim.received().len();

    let rerun_out = out.clone();
    let seen = run_against(&sim, &path, &rerun_out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    assert_eq!(sim.received().len(), before, "the rerun made no request at all");
    let newest = latest_run(&out);
    let report = read_rows(&newest);
    assert!(
        report[..13].iter().all(|r| r["status"] == "ok" && r["api_calls"] == "0"),
        "{report:?}"
    );
    assert_eq!(report[13]["status"], "duplicate", "a repeat is still a duplicate");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(newest.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        (summary["already_stored"].as_u64(), summary["api_calls"].as_u64()),
        (Some(13), Some(0))
    );
}

/// The most recent run folder under `out`.
fn latest_run(out: &Path) -> PathBuf {
    let mut runs: Vec<PathBuf> =
        std::fs::read_dir(out.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    runs.sort();
    runs.pop().unwrap()
}

fn read_rows(run: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut reader = csv::Reader::from_path(run.join("report.csv")).unwrap();
    let header = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| header.iter().map(String::from).zip(r.unwrap().iter().map(String::from)).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rows_and_lost_objects_are_fetched_again_and_manifests_share_the_store() {
    let mut config = SimConfig::default();
    config.faults.insert("flaky".into(), vec![Fault::ApiStatus(503)]);
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let first = manifest(dir.path(), "type,identifier\nimage,flaky\nimage,kept\nimage,lost\n");
    let seen = run_against(&sim, &first, &out, &["--max-attempts", "1"]).await;
    assert_eq!(seen.code, 3, "{}", seen.stderr);

    // Someone deletes an object behind the journal's back.
    let lost_sha = sim.expected_sha256(FileType::Image, "lost");
    let lost = out.join("objects/sha256").join(&lost_sha[..2]).join(&lost_sha);
    std::fs::remove_file(&lost).unwrap();

    // Another manifest into the same store, sharing two rows with the first.
    let second = dir.path().join("second.csv");
    std::fs::write(&second, "type,identifier\nimage,kept\nimage,flaky\nimage,lost\nimage,new\n")
        .unwrap();
    let before = sim.received().len();
    let seen = run_against(&sim, &second, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    let log = &sim.received()[before..];
    assert_eq!(requests_for(log, "kept").count(), 0, "a stored row costs nothing");
    assert_eq!(requests_for(log, "flaky").count(), 2, "a failed row is tried again");
    assert_eq!(requests_for(log, "lost").count(), 2, "a lost object is fetched again");
    assert!(lost.exists());
    assert_store_is_clean(&out);
}

/// A body cut after its first MiB, by `fault`, continues with a Range
/// request for the rest: the kept MiB is not fetched again.
async fn a_cut_off_download_continues_with_a_range_request(fault: Fault) {
    let size: u64 = 3 << 20;
    let mut config = SimConfig::default();
    config.sizes.insert("clip".into(), size);
    config.faults.insert("clip".into(), vec![fault.clone()]);
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,identifier\nvideo,clip\n");
    let out = dir.path().join("out");
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);

    let storage: Vec<Received> =
        sim.received().into_iter().filter(|r| r.endpoint == Endpoint::Storage).collect();
    assert_eq!(storage.len(), 2, "{storage:?}");
    assert_eq!(storage[0].fault, Some(fault));
    assert_eq!(storage[0].header("range"), None);
    assert_eq!(storage[1].header("range"), Some("bytes=1048576-"));
    assert!(storage[1].header("if-range").is_some(), "the resume names what it continues");
    assert_eq!(storage[1].status, Some(206));
    let sha256 = sim.expected_sha256(FileType::Video, "clip");
    assert_eq!(report_rows(&out)[0]["sha256"], sha256);
    let object = out.join("objects/sha256").join(&sha256[..2]).join(&sha256);
    assert_eq!(sha256_of(&object), sha256, "the object is whole and named by its hash");
    // Three MiB in all reached the tool, not four.
    assert_eq!(common::summary(&out)["bytes_downloaded"], size);
    // Starting over would have cost storage the whole file on top of the
    // first MiB; resuming costs it the file once, plus what the HTTP stack
    // had buffered past a reset (a few hundred KiB).
    let sent = sim.body_bytes_sent();
    assert!(sent < size + (1 << 20), "storage sent {sent} bytes");
    assert_store_is_clean(&out);
    assert!(files_under(&out.join("tmp")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_download_continues_with_a_range_request() {
    a_cut_off_download_continues_with_a_range_request(Fault::StorageTruncate(1 << 20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_reset_mid_body_continues_with_a_range_request() {
    a_cut_off_download_continues_with_a_range_request(Fault::StorageResetAfter(1 << 20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_file_of_an_older_version_is_started_over() {
    let (size, cut): (u64, u64) = (3 << 20, 1 << 20);
    let mut config = SimConfig::default();
    config.sizes.insert("changed".into(), size);
    config.faults.insert("changed".into(), vec![Fault::StorageTruncate(cut)]);
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,identifier\nvideo,changed\n");
    let out = dir.path().join("out");
    let seen = run_against(&sim, &path, &out, &["--max-attempts", "1"]).await;
    assert_eq!(seen.code, 3, "{}", seen.stderr);

    // Between the runs the object changes on the host: the kept bytes and
    // the validator in their record now belong to an older version.
    let partial = Store::existing(&out).partial(Kind::Video, "changed");
    let text = std::fs::read_to_string(partial.record_path()).unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(record["durable"], cut, "the first run kept what it received");
    record["etag"] = "\"an-older-version\"".into();
    std::fs::write(partial.record_path(), record.to_string()).unwrap();
    std::fs::write(partial.data_path(), vec![0xa5; cut as usize]).unwrap();

    let (before, sent_before) = (sim.received().len(), sim.body_bytes_sent());
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    let log = &sim.received()[before..];
    let storage: Vec<&Received> = log.iter().filter(|r| r.endpoint == Endpoint::Storage).collect();
    assert_eq!(storage.len(), 1, "{storage:?}");
    assert_eq!(storage[0].header("range"), Some("bytes=1048576-"));
    assert_eq!(storage[0].header("if-range"), Some("\"an-older-version\""));
    assert_eq!(storage[0].status, Some(200), "a stale validator gets the whole file");
    assert_eq!(sim.body_bytes_sent() - sent_before, size);
    // Had the stale prefix been kept, the hash would not be the file's.
    let sha256 = sim.expected_sha256(FileType::Video, "changed");
    assert_eq!(report_rows_latest(&out)[0]["sha256"], sha256);
    let object = out.join("objects/sha256").join(&sha256[..2]).join(&sha256);
    assert_eq!(sha256_of(&object), sha256, "the object is whole and named by its hash");
    assert_store_is_clean(&out);
    assert!(files_under(&out.join("tmp")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_next_run_resumes_the_partial_file() {
    let mut config = SimConfig::default();
    config.sizes.insert("long".into(), 2 << 20);
    config.faults.insert("long".into(), vec![Fault::StorageStallAfter(700_000)]);
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,identifier\nvideo,long\n");
    let out = dir.path().join("out");
    let child = spawn_run(&sim, &path, &out, &[]);
    wait_for_partial(&out, 700_000).await;
    kill(&child, "-9");
    let (code, _) = finish(child).await;
    assert_eq!(code, -1, "killed by the signal");

    let before = sim.received().len();
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    let log = &sim.received()[before..];
    let storage: Vec<&Received> = log.iter().filter(|r| r.endpoint == Endpoint::Storage).collect();
    assert_eq!(storage.len(), 1);
    assert_eq!(storage[0].header("range"), Some("bytes=700000-"));
    assert_eq!(report_rows_latest(&out)[0]["sha256"], sim.expected_sha256(FileType::Video, "long"));
    assert_store_is_clean(&out);
}

fn report_rows_latest(out: &Path) -> Vec<std::collections::HashMap<String, String>> {
    read_rows(&latest_run(out))
}

/// A simulator whose 1 MiB video `stuck` stalls after 300,000 bytes, and a
/// manifest of that video followed by `later` images.
async fn stalled_video_then_images(later: usize) -> (Simulator, tempfile::TempDir, PathBuf) {
    let mut config = SimConfig::default();
    config.sizes.insert("stuck".into(), 1 << 20);
    config.faults.insert("stuck".into(), vec![Fault::StorageStallAfter(300_000)]);
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let rows: String = (0..later).map(|n| format!("image,later-{n}\n")).collect();
    let path = manifest(dir.path(), &format!("type,identifier\nvideo,stuck\n{rows}"));
    (sim, dir, path)
}

/// Reruns the manifest (the stall was a one-off) and checks that the cut-off
/// video was continued from its 300,000 bytes rather than started over.
async fn rerun_continues_the_stalled_video(sim: &Simulator, path: &Path, out: &Path) {
    let before = sim.received().len();
    let seen = run_against(sim, path, out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    let log = &sim.received()[before..];
    let storage: Vec<&Received> =
        requests_for(log, "stuck").filter(|r| r.endpoint == Endpoint::Storage).collect();
    assert_eq!(storage.len(), 1, "{storage:?}");
    assert_eq!(storage[0].header("range"), Some("bytes=300000-"));
    assert_eq!(storage[0].status, Some(206));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_downloads_go_for_the_grace_then_exits_4_resumably() {
    let (sim, dir, path) = stalled_video_then_images(30).await;
    let out = dir.path().join("out");
    // One download slot, slow API: the stuck download blocks the rest.
    let child =
        spawn_run(&sim, &path, &out, &["--grace", "1s", "--concurrency", "1", "--rate", "2/s"]);
    wait_for_partial(&out, 300_000).await;
    let signalled = std::time::Instant::now();
    kill(&child, "-TERM");
    let (code, stderr) = finish(child).await;
    assert_eq!(code, 4, "{stderr}");
    assert!(signalled.elapsed() < Duration::from_secs(10), "the grace is 1 s");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    let rows = report_rows(&out);
    assert_eq!(rows.len(), 31, "every row is reported");
    assert!(rows[0]["error"].contains("not finished"), "{:?}", rows[0]);
    assert!(files_under(&out.join("tmp")).len() == 2, "the partial file and its record stay");

    rerun_continues_the_stalled_video(&sim, &path, &out).await;
    assert_store_is_clean(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_stops_a_stalled_run_with_4_and_a_rerun_resumes_it() {
    let (sim, dir, path) = stalled_video_then_images(3).await;
    let out = dir.path().join("out");
    // One download slot: the stalled download keeps the other rows waiting.
    let options = ["--deadline", "1s", "--grace", "1s", "--concurrency", "1"];
    let started = std::time::Instant::now();
    let seen = run_against(&sim, &path, &out, &options).await;
    assert_eq!(seen.code, 4, "{}", seen.stderr);
    assert!(started.elapsed() < Duration::from_secs(10), "deadline and grace are 1 s each");
    assert!(seen.stderr.contains("the --deadline was reached"), "{}", seen.stderr);
    let rows = report_rows(&out);
    assert_eq!(rows.len(), 4, "every row is reported");
    assert_eq!(rows[0]["error"], "not finished: the --deadline was reached", "{:?}", rows[0]);
    // Rows may win the slot before the stalled one; every other row is
    // marked as left for the rerun.
    for row in &rows {
        let finished = row["status"] == "ok" && row["error"].is_empty();
        assert!(finished || row["error"].starts_with("not finished: "), "{row:?}");
    }
    assert_eq!(files_under(&out.join("tmp")).len(), 2, "the partial file and its record stay");

    rerun_continues_the_stalled_video(&sim, &path, &out).await;
    let report = report_rows_latest(&out);
    assert!(report.iter().all(|r| r["status"] == "ok"), "{report:?}");
    assert_eq!(report[0]["sha256"], sim.expected_sha256(FileType::Video, "stuck"));
    assert_store_is_clean(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_a_locked_store_is_turned_away() {
    let mut config = SimConfig::default();
    config.faults.insert("stuck".into(), vec![Fault::StorageStallAfter(1000)]);
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,identifier\nimage,stuck\n");
    let out = dir.path().join("out");
    let first = spawn_run(&sim, &path, &out, &[]);
    wait_for_partial(&out, 1000).await;

    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 5, "{}", seen.stderr);
    let pid = first.id().unwrap().to_string();
    assert!(seen.stderr.contains(&pid), "the message names the holder: {}", seen.stderr);
    kill(&first, "-9");
    finish(first).await;
    // The holder died: its lock does not outlive it.
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
}

/// Bytes of a row's download that a killed run left durable in tmp/: what
/// its record vouches for and its file still holds. `None` when it left no
/// partial file at all.
fn durable_left(store: &Store, kind: Kind, id: &str) -> Option<u64> {
    let partial = store.partial(kind, id);
    let on_disk = std::fs::metadata(partial.data_path()).ok()?.len();
    let text = std::fs::read_to_string(partial.record_path()).unwrap_or_default();
    let record = serde_json::from_str::<serde_json::Value>(&text).ok();
    let durable = record.and_then(|record| record["durable"].as_u64()).unwrap_or(0);
    Some(durable.min(on_disk))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_twenty_moments_never_corrupts_or_refetches() {
    // Slow bodies, so that kills land in the middle of downloads. Bytes
    // become durable when a body goes quiet, so one download pauses for two
    // seconds after 300 000 bytes: kills during the pause leave bytes that a
    // rerun must not fetch again.
    let mut config = SimConfig { storage_bytes_per_second: Some(2 << 20), ..SimConfig::default() };
    config.sizes.insert("held".into(), 1 << 20);
    let pause = Fault::StoragePauseAfter(300_000, Duration::from_secs(2));
    let mut rows = vec![(Kind::Video, FileType::Video, "held".to_owned())];
    for n in 0..24 {
        rows.push((Kind::Video, FileType::Video, format!("clip-{n}")));
        rows.push((Kind::Image, FileType::Image, format!("img-{n}")));
    }
    let text: String = rows.iter().map(|(_, kind, id)| format!("{kind},{id}\n")).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), &format!("type,identifier\n{text}"));
    let mut rng = fastrand::Rng::with_seed(20261203);
    let (mut rounds_with_partials, mut rounds_with_durable) = (0, 0);
    for round in 0..20 {
        // Each run has a simulator of its own: nothing the killed run still
        // had in flight can pass for the rerun's, and the rerun meets no pause.
        let mut killed = config.clone();
        killed.faults.insert("held".into(), vec![pause.clone()]);
        let sim = unlimited(killed).await;
        let out = dir.path().join(format!("out-{round}"));
        let child = spawn_run(&sim, &path, &out, &["--concurrency", "6"]);
        let delay = Duration::from_millis(rng.u64(100..1500));
        tokio::time::sleep(delay).await;
        kill(&child, "-9");
        finish(child).await;
        drop(sim);
        assert_store_is_clean(&out);

        // What the killed run had finished must not be fetched again.
        let done: HashSet<String> = JournalIndex::load(&out)
            .unwrap()
            .iter()
            .filter(|(_, known)| known.status == RowStatus::Ok)
            .map(|((_, id), _)| id.clone())
            .collect();
        // Nor what it had made durable of the rest.
        let store = Store::existing(&out);
        let (mut missing, mut resumable, mut partials) = (0, Vec::new(), 0);
        for (kind, file_type, id) in rows.iter().filter(|(_, _, id)| !done.contains(id)) {
            let size = config.content(*file_type, id).size();
            let left = durable_left(&store, *kind, id);
            partials += usize::from(left.is_some());
            let kept = left.unwrap_or(0).min(size);
            missing += size - kept;
            if 0 < kept && kept < size {
                resumable.push((id, kept));
            }
        }
        rounds_with_partials += usize::from(partials > 0);
        rounds_with_durable += usize::from(!resumable.is_empty());

        let sim = unlimited(config.clone()).await;
        let seen = run_against(&sim, &path, &out, &["--concurrency", "6"]).await;
        assert_eq!(seen.code, 0, "round {round} after {delay:?}: {}", seen.stderr);
        let log = sim.received();
        for id in &done {
            assert_eq!(requests_for(&log, id).count(), 0, "round {round}: {id} fetched again");
        }
        for (id, kept) in &resumable {
            let first = requests_for(&log, id).find(|r| r.endpoint == Endpoint::Storage);
            let range = first.and_then(|request| request.header("range"));
            let expected = format!("bytes={kept}-");
            assert_eq!(range, Some(expected.as_str()), "round {round}: {id} did not resume");
        }
        let served = sim.body_bytes_sent();
        assert!(served <= missing, "round {round}: {served} bytes served, {missing} missing");
        assert_store_is_clean(&out);
        let report = report_rows_latest(&out);
        assert_eq!(report.len(), rows.len());
        assert!(report.iter().all(|r| r["status"] == "ok"), "round {round}");
    }
    assert!(rounds_with_partials > 0, "no kill landed in the middle of a download");
    assert!(rounds_with_durable > 0, "no kill left durable bytes for a rerun to keep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_waited_too_long_for_a_download_slot_is_resolved_again() {
    // One download slot and two slow videos: whichever goes second has held
    // its URL for about two seconds, and URLs count as stale after one.
    // (The same logic guards the 60-minute URLs with a 50-minute limit.)
    let mut config = SimConfig { storage_bytes_per_second: Some(1 << 20), ..SimConfig::default() };
    config.every_size = Some(2 << 20);
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,identifier\nvideo,first\nvideo,second\n");
    let key = identifai_fetch::api::ApiKey::new(sim.api_key()).unwrap();
    let out = dir.path().join("out");
    let mut config =
        identifai_fetch::run::RunConfig::new(&path, &out, sim.api_url().parse().unwrap(), key);
    config.concurrency = 1;
    config.rate = "100/s".parse().unwrap();
    config.max_url_age = Duration::from_secs(1);
    let outcome = identifai_fetch::run::run(config).await.unwrap();

    assert_eq!(outcome.summary.count_succeeded(), 2, "{:?}", outcome.summary);
    let rows = report_rows(&out);
    let mut calls: Vec<&str> = rows.iter().map(|r| r["api_calls"].as_str()).collect();
    calls.sort();
    assert_eq!(calls, ["1", "2"], "the URL that aged while waiting was replaced: {rows:?}");
    assert!(sim.received().iter().all(|r| r.status != Some(403)), "no download met an expiry");
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. "1m") at `path`, or says why not.
    fn mount(path: &Path, size: &str) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(path).unwrap();
        let options = format!("size={size}");
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs", path.to_str().unwrap()])
            .output()
            .map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        Ok(SmallDisk { path: path.to_path_buf() })
    }

    fn grow(&self, size: &str) {
        let options = format!("remount,size={size}");
        let status = std::process::Command::new("mount")
            .args(["-o", &options, self.path.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_run_and_a_rerun_after_freeing_space_completes() {
    let mut config = SimConfig::default();
    for n in 0..5 {
        config.sizes.insert(format!("v{n}"), 400_000);
    }
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let path =
        manifest(dir.path(), "type,identifier\nvideo,v0\nvideo,v1\nvideo,v2\nvideo,v3\nvideo,v4\n");
    let out = dir.path().join("out");
    // A real file system that fills up: 1 MiB holds two of the five files.
    let disk = match SmallDisk::mount(&out, "1m") {
        Ok(disk) => disk,
        Err(why) => panic!("this test needs root to mount a tmpfs (CI runs as root): {why}"),
    };
    let seen = run_against(&sim, &path, &out, &["--concurrency", "1"]).await;
    assert_eq!(seen.code, 1, "{}", seen.stderr);
    assert!(seen.stderr.contains("No space left"), "{}", seen.stderr);
    assert!(seen.stderr.contains("free on the file system"), "{}", seen.stderr);
    assert_store_is_clean(&out);
    let stored = files_under(&out.join("objects")).len();
    assert!((1..5).contains(&stored), "{stored} objects");

    disk.grow("16m");
    let seen = run_against(&sim, &path, &out, &["--concurrency", "1"]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    assert_store_is_clean(&out);
    assert_eq!(files_under(&out.join("objects")).len(), 5);
    assert!(report_rows_latest(&out).iter().all(|r| r["status"] == "ok"));
}

/// The state a kill leaves between "received whole" and "journaled": the
/// partial record names the hash; the file is still in tmp/ (`moved` false)
/// or already in objects/ (`moved` true).
fn leave_a_finished_download(out: &Path, sim: &Simulator, id: &str, moved: bool) {
    use identifai_fetch::store::{PartialMeta, Store};
    use std::io::Write;
    let store = Store::open(out).unwrap();
    let content = sim.content(FileType::Image, id);
    let bytes = content.bytes(0..content.size());
    let sha256 = sim.expected_sha256(FileType::Image, id);
    let partial = store.partial(identifai_fetch::manifest::Kind::Image, id);
    let mut meta = PartialMeta {
        etag: Some("\"x\"".into()),
        last_modified: None,
        length: Some(bytes.len() as u64),
        durable: 0,
        sha256: None,
        content_type: Some("image/jpeg".into()),
    };
    partial.begin(&meta).unwrap().write_all(&bytes).unwrap();
    (meta.durable, meta.sha256) = (bytes.len() as u64, Some(sha256.clone()));
    partial.checkpoint(&meta).unwrap();
    if moved {
        store.commit(&partial, &sha256).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_received_whole_before_a_kill_costs_no_request() {
    let sim = unlimited(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    leave_a_finished_download(&out, &sim, "in-tmp", false);
    leave_a_finished_download(&out, &sim, "in-objects", true);
    let path = manifest(dir.path(), "type,identifier\nimage,in-tmp\nimage,in-objects\n");
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    assert_eq!(sim.received().len(), 0, "neither row asked the API or storage");
    let rows = report_rows(&out);
    for (row, id) in rows.iter().zip(["in-tmp", "in-objects"]) {
        assert_eq!(row["sha256"], sim.expected_sha256(FileType::Image, id));
        assert_eq!((row["status"].as_str(), row["api_calls"].as_str()), ("ok", "0"));
    }
    assert_store_is_clean(&out);
    assert!(files_under(&out.join("tmp")).is_empty(), "the records are forgotten once journaled");
    // And the journal now knows them: a second rerun skips them outright.
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    assert_eq!(sim.received().len(), 0);
    // A kill after the journal line but before the record was forgotten:
    // the next run, skipping the row, forgets the record too.
    leave_a_finished_download(&out, &sim, "in-objects", true);
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    assert_eq!(sim.received().len(), 0);
    assert!(files_under(&out.join("tmp")).is_empty(), "a journaled row's record is forgotten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_despite_a_long_grace() {
    let mut config = SimConfig::default();
    config.faults.insert("stuck".into(), vec![Fault::StorageStallAfter(5000)]);
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,identifier\nimage,stuck\nimage,after\n");
    let out = dir.path().join("out");
    let child = spawn_run(&sim, &path, &out, &["--grace", "10m", "--concurrency", "1"]);
    wait_for_partial(&out, 5000).await;
    let signalled = std::time::Instant::now();
    kill(&child, "-INT");
    tokio::time::sleep(Duration::from_millis(200)).await;
    kill(&child, "-INT");
    let (code, stderr) = finish(child).await;
    assert_eq!(code, 4, "{stderr}");
    assert!(signalled.elapsed() < Duration::from_secs(10), "not the 10-minute grace");
    assert!(stderr.contains("stopped at once"), "{stderr}");
    assert_store_is_clean(&out);
    assert_eq!(report_rows(&out).len(), 2, "the report is still written");
}
