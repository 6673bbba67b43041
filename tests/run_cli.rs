//! `identifai-fetch run` as a user sees it: the binary against the simulator
//! on 127.0.0.1, judged by its exit code, its output, the report and the
//! files it leaves.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{files_under, manifest, report_rows, run_against, run_bin, sha256_of, unlimited};
use identifai_fetch::simulator::{Endpoint, Fault, FileType, SimConfig, Simulator};

/// Checks that a row is stored, and that its object is the simulator's bytes.
fn assert_stored(
    out: &Path,
    row: &HashMap<String, String>,
    sim: &Simulator,
    kind: FileType,
    id: &str,
) {
    assert_eq!(row["status"], "ok", "{row:?}");
    assert_eq!(row["sha256"], sim.expected_sha256(kind, id), "{row:?}");
    assert_eq!(row["bytes"], sim.size_of(kind, id).to_string());
    let object = out.join(&row["object"]);
    assert_eq!(sha256_of(&object), row["sha256"], "an object's name is its hash");
    assert!(object.ends_with(Path::new(&row["sha256"][..2]).join(&row["sha256"])));
    let mode = std::fs::metadata(&object).unwrap().permissions().mode();
    assert_eq!(mode & 0o222, 0, "objects are read-only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_with_frames_tracks_and_own_columns() {
    let sim = unlimited(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(
        dir.path(),
        "Type, Identifier ,frame_or_track_id,case,note\n\
         image,img-1,,C-1,\"front, left\"\n\
         video,vid-1,,C-1,whole video\n\
         video,vid-1,frame-7,C-1,a frame\n\
         video,vid-1,track-2,C-2,an audio track\n\
         audio,aud-1,,C-2,\n",
    );
    let out = dir.path().join("out");
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    assert!(seen.stdout.contains("report.csv"), "{}", seen.stdout);

    let rows = report_rows(&out);
    let lines: Vec<&str> = rows.iter().map(|r| r["line"].as_str()).collect();
    assert_eq!(lines, ["2", "3", "4", "5", "6"]);
    assert_stored(&out, &rows[0], &sim, FileType::Image, "img-1");
    assert_stored(&out, &rows[1], &sim, FileType::Video, "vid-1");
    // A frame or track row asks for its own id, not the video's.
    assert_stored(&out, &rows[2], &sim, FileType::Video, "frame-7");
    assert_stored(&out, &rows[3], &sim, FileType::Video, "track-2");
    assert_stored(&out, &rows[4], &sim, FileType::Audio, "aud-1");
    assert_eq!((rows[0]["case"].as_str(), rows[0]["note"].as_str()), ("C-1", "front, left"));
    assert_eq!(rows[3]["frame_or_track_id"], "track-2");
    assert_eq!(rows[2]["api_calls"], "1");

    let api_targets: Vec<String> = sim
        .received()
        .into_iter()
        .filter(|r| r.endpoint == Endpoint::Api)
        .map(|r| r.target)
        .collect();
    assert!(api_targets.contains(&"/api/v2/submissions/video/frame-7/download".to_string()));
    assert_eq!(api_targets.len(), 5);
    assert!(files_under(&out.join("tmp")).is_empty(), "no temp file is left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_file_is_fetched_and_stored_once() {
    let mut config = SimConfig::default();
    // Two identifiers whose submissions hold the very same bytes.
    config.same_content_as.insert("copy-b".into(), "copy-a".into());
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(
        dir.path(),
        "type,identifier\nimage,one\nimage,one\nimage,copy-a\nimage,copy-b\naudio,one\nimage,ONE\n",
    );
    let out = dir.path().join("out");
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);

    let rows = report_rows(&out);
    let statuses: Vec<&str> = rows.iter().map(|r| r["status"].as_str()).collect();
    // Same type and id: a duplicate. Another type, or another case, is
    // another request (identifiers are opaque).
    assert_eq!(statuses, ["ok", "duplicate", "ok", "ok", "ok", "ok"]);
    assert_eq!(rows[1]["sha256"], rows[0]["sha256"]);
    assert_eq!(rows[1]["object"], rows[0]["object"]);
    assert_eq!(rows[1]["api_calls"], "0");
    assert!(rows[1]["error"].contains("line 2"), "{:?}", rows[1]);
    // Distinct identifiers with the same bytes: two downloads, one object.
    assert_eq!(rows[2]["object"], rows[3]["object"]);
    assert_eq!(sim.api_calls(), 5);
    let objects = files_under(&out.join("objects"));
    assert_eq!(objects.len(), 4, "{objects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_forbidden_rows_are_reported_and_exit_3() {
    let mut config = SimConfig::default();
    config.not_found.insert("gone".into());
    config.forbidden.insert("secret".into());
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let path =
        manifest(dir.path(), "type,identifier\nimage,gone\nimage,fine\nvideo,secret\nimage,gone\n");
    let out = dir.path().join("out");
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 3, "{}", seen.stderr);

    let rows = report_rows(&out);
    let statuses: Vec<&str> = rows.iter().map(|r| r["status"].as_str()).collect();
    assert_eq!(statuses, ["not_found", "ok", "forbidden", "not_found"]);
    assert!(rows[0]["error"].contains("404"), "{:?}", rows[0]);
    assert!(rows[3]["error"].contains("same request as line 2"), "{:?}", rows[3]);
    // Neither answer is retried.
    assert_eq!(sim.api_calls(), 3);
    let summary = common::summary(&out);
    assert_eq!(summary["by_status"]["not_found"], 2);
    assert_eq!(summary["by_status"]["forbidden"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_reaches_the_api_only_and_is_never_written() {
    let key = "sk_live_7Hq2ZpW9xK4mN8vR3tY6";
    let config = SimConfig { api_key: key.into(), ..SimConfig::default() };
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,identifier\nimage,a\nvideo,b\naudio,c\n");
    let out = dir.path().join("out");
    // The most verbose logging there is, every dependency included.
    let url = sim.api_url();
    let args = ["run", path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--api-url", &url];
    let seen = run_bin(&args, &[("IDENTIFAI_API_KEY", key), ("RUST_LOG", "trace")]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);

    assert!(!seen.stdout.contains(key) && !seen.stderr.contains(key), "the key was printed");
    for file in files_under(&out) {
        let bytes = std::fs::read(&file).unwrap();
        let found = bytes.windows(key.len()).any(|w| w == key.as_bytes());
        assert!(!found, "the key is in {}", file.display());
    }
    let received = sim.received();
    let carries_key = |r: &identifai_fetch::simulator::Received| {
        r.headers.iter().any(|(name, value)| name == "x-api-key" || value.contains(key))
    };
    let storage: Vec<_> = received.iter().filter(|r| r.endpoint == Endpoint::Storage).collect();
    assert_eq!(storage.len(), 3);
    assert!(storage.iter().all(|r| !carries_key(r)), "storage saw the key: {storage:?}");
    let api = received.iter().filter(|r| r.endpoint == Endpoint::Api);
    assert!(api.clone().all(carries_key), "every API call carries the key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_nothing_is_requested() {
    let sim = unlimited(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,identifier\nimage,a\n");
    let out = dir.path().join("out");
    let url = sim.api_url();
    let args = ["run", path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--api-url", &url];
    let seen = run_bin(&args, &[]).await;
    assert_eq!(seen.code, 2);
    assert!(seen.stderr.contains("IDENTIFAI_API_KEY"), "{}", seen.stderr);
    assert!(seen.stderr.contains("--api-key-file"), "{}", seen.stderr);
    assert_eq!(sim.api_calls(), 0);

    // The same run with the key in a file, as systemd and Kubernetes give it.
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{}\n", sim.api_key())).unwrap();
    let mut with_file = args.to_vec();
    with_file.extend(["--api-key-file", key_file.to_str().unwrap()]);
    let seen = run_bin(&with_file, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_without_identifier_stops_before_any_request() {
    let sim = unlimited(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,id\nimage,a\n");
    let seen = run_against(&sim, &path, &dir.path().join("out"), &[]).await;
    assert_eq!(seen.code, 2);
    assert!(seen.stderr.contains("\"identifier\""), "{}", seen.stderr);
    assert_eq!(sim.api_calls(), 0);

    let missing = dir.path().join("nope.csv");
    let seen = run_against(&sim, &missing, &dir.path().join("out"), &[]).await;
    assert_eq!(seen.code, 2);
    assert!(seen.stderr.contains("nope.csv"), "{}", seen.stderr);
    assert!(seen.stderr.contains("No such file"), "the cause is shown: {}", seen.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_reported_and_the_rest_still_runs() {
    let sim = unlimited(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(1025);
    let text = format!(
        "type,identifier,frame_or_track_id\n\
         image,good-1,\n\
         vidoe,typo,\n\
         image,,\n\
         image,too,many,fields\n\
         image,tab\there,\n\
         image,{long},\n\
         image,..,\n\
         audio,good-2,\n"
    );
    let path = manifest(dir.path(), &text);
    let out = dir.path().join("out");
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 3, "{}", seen.stderr);

    let rows = report_rows(&out);
    let statuses: Vec<&str> = rows.iter().map(|r| r["status"].as_str()).collect();
    let expected = ["ok", "invalid", "invalid", "invalid", "invalid", "invalid", "invalid", "ok"];
    assert_eq!(statuses, expected);
    for row in &rows[1..7] {
        assert!(row["error"].contains(&format!("line {}", row["line"])), "{row:?}");
        assert_eq!(row["api_calls"], "0", "{row:?}");
    }
    assert!(rows[1]["error"].contains("vidoe"), "{:?}", rows[1]);
    assert!(rows[6]["error"].contains("path segment"), "{:?}", rows[6]);
    assert_eq!(sim.api_calls(), 2, "invalid rows cost no API call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_ends_the_run_at_once() {
    // Paced at the vendor's rate, so the 401 is back long before a second
    // call would be due.
    let sim = unlimited(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let rows: String = (0..20).map(|n| format!("image,id-{n}\n")).collect();
    let path = manifest(dir.path(), &format!("type,identifier\n{rows}"));
    let out = dir.path().join("out");
    let url = sim.api_url();
    let args = ["run", path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--api-url", &url];
    let started = std::time::Instant::now();
    let seen = run_bin(&args, &[("IDENTIFAI_API_KEY", "wrong-key")]).await;
    assert_eq!(seen.code, 1, "{}", seen.stderr);
    assert!(started.elapsed().as_secs() < 10, "took {:?}", started.elapsed());
    assert!(seen.stderr.contains("refused the key"), "{}", seen.stderr);
    assert_eq!(sim.api_calls(), 1, "one 401 is enough to stop");
    let report = report_rows(&out);
    assert_eq!(report.len(), 20, "every row is still reported");
    assert!(report.iter().all(|r| r["status"] == "failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_identifiers_travel_as_one_path_segment() {
    let sim = unlimited(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let ids = ["a/b", "../../etc/passwd", "50%", "q?x=1#frag", "two words", "ünïcødé", "%2F"];
    let mut text = String::from("type,identifier\n");
    for id in ids {
        text.push_str(&format!("image,\"{id}\"\n"));
    }
    let path = manifest(dir.path(), &text);
    let out = dir.path().join("out");
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);

    let rows = report_rows(&out);
    for (row, id) in rows.iter().zip(ids) {
        assert_eq!(row["identifier"], id);
        // The simulator decodes the segment back: the same bytes mean it
        // received exactly this identifier.
        assert_stored(&out, row, &sim, FileType::Image, id);
    }
    for received in sim.received().iter().filter(|r| r.endpoint == Endpoint::Api) {
        let segments: Vec<&str> = received.target.split('/').collect();
        assert_eq!(segments.len(), 7, "{}", received.target);
        assert_eq!(segments[6], "download", "{}", received.target);
        assert!(!received.target.contains('?') && !received.target.contains('#'));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_location_is_refused_and_never_followed() {
    let mut config = SimConfig::default();
    config.faults.insert("evil".into(), vec![Fault::ApiRedirect("file:///etc/passwd".into())]);
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,identifier\nimage,evil\nimage,fine\n");
    let out = dir.path().join("out");
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 3, "{}", seen.stderr);
    let rows = report_rows(&out);
    assert_eq!(rows[0]["status"], "failed");
    assert!(rows[0]["error"].contains("file:///etc/passwd"), "{:?}", rows[0]);
    assert_eq!(rows[1]["status"], "ok");
    assert_eq!(sim.storage_requests(), 1, "only the good row reached storage");
    assert!(files_under(&out.join("objects")).len() == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried_until_the_file_is_whole() {
    let mut config = SimConfig::default();
    config.faults.insert("cut".into(), vec![Fault::StorageTruncate(1000)]);
    config.faults.insert("reset".into(), vec![Fault::StorageReset]);
    config.faults.insert("busy".into(), vec![Fault::ApiStatus(503), Fault::ApiStatus(500)]);
    config.faults.insert("stale".into(), vec![Fault::StorageExpired]);
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let path =
        manifest(dir.path(), "type,identifier\nvideo,cut\nimage,reset\nimage,busy\naudio,stale\n");
    let out = dir.path().join("out");
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);

    let rows = report_rows(&out);
    assert_stored(&out, &rows[0], &sim, FileType::Video, "cut");
    assert_eq!((rows[0]["attempts"].as_str(), rows[0]["api_calls"].as_str()), ("2", "1"));
    assert_stored(&out, &rows[1], &sim, FileType::Image, "reset");
    assert_eq!(rows[1]["attempts"], "2");
    assert_stored(&out, &rows[2], &sim, FileType::Image, "busy");
    assert_eq!((rows[2]["attempts"].as_str(), rows[2]["api_calls"].as_str()), ("3", "3"));
    // An expired URL costs one more API call, not an attempt.
    assert_stored(&out, &rows[3], &sim, FileType::Audio, "stale");
    assert_eq!((rows[3]["attempts"].as_str(), rows[3]["api_calls"].as_str()), ("1", "2"));
    assert!(files_under(&out.join("tmp")).is_empty(), "cut-off downloads leave no temp file");
    assert_eq!(common::summary(&out)["retries"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_out_and_the_row_fails_with_its_last_error() {
    let mut config = SimConfig::default();
    config.faults.insert("down".into(), vec![Fault::ApiStatus(503); 3]);
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,identifier\nimage,down\n");
    let out = dir.path().join("out");
    let seen = run_against(&sim, &path, &out, &["--max-attempts", "3"]).await;
    assert_eq!(seen.code, 3, "{}", seen.stderr);
    let row = &report_rows(&out)[0];
    assert_eq!((row["status"].as_str(), row["attempts"].as_str()), ("failed", "3"));
    assert!(row["error"].contains("503"), "{row:?}");
    assert_eq!(sim.api_calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_output_folder_stops_before_any_request() {
    let sim = unlimited(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,identifier\nimage,a\n");
    // A folder inside a regular file cannot be made, even by root.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "").unwrap();
    let seen = run_against(&sim, &path, &blocker.join("out"), &[]).await;
    assert_eq!(seen.code, 1, "{}", seen.stderr);
    assert!(seen.stderr.contains("blocker"), "{}", seen.stderr);
    assert_eq!(sim.api_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_are_usage_errors() {
    for args in [
        vec!["run", "m.csv", "--out", "o", "--rate", "5/day"],
        vec!["run", "m.csv", "--out", "o", "--concurrency", "0"],
        vec!["run", "m.csv", "--out", "o", "--api-url", "file:///tmp/api"],
        vec!["run", "m.csv", "--out", "o", "--api-url", "ftp://api.example.test"],
        vec!["run", "m.csv"],
        vec!["fetch"],
    ] {
        let seen = run_bin(&args, &[("IDENTIFAI_API_KEY", "k")]).await;
        assert_eq!(seen.code, 2, "{args:?}: {}", seen.stderr);
    }
    let help = run_bin(&["run", "--help"], &[]).await;
    assert!(help.stdout.contains("Exit codes:"), "{}", help.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_hashes_skip_the_api_or_flag_a_mismatch() {
    let mut config = SimConfig::default();
    config.same_content_as.insert("copy-of-a".into(), "a".into());
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let first = manifest(dir.path(), "type,identifier\nimage,a\n");
    assert_eq!(run_against(&sim, &first, &out, &[]).await.code, 0);
    let api_calls = sim.api_calls();

    // The vendor's results give each file's hash: a row whose file is
    // stored already costs nothing, even under another identifier.
    let sha_a = sim.expected_sha256(FileType::Image, "a");
    let wrong = "0".repeat(64);
    let second = dir.path().join("second.csv");
    let text = format!("type,identifier,sha256\nimage,copy-of-a,{sha_a}\nimage,b,{wrong}\n");
    std::fs::write(&second, text).unwrap();
    let seen = run_against(&sim, &second, &out, &[]).await;
    assert_eq!(seen.code, 3, "{}", seen.stderr);
    assert_eq!(sim.api_calls(), api_calls + 1, "only row b asked the API");
    let runs = std::fs::read_dir(out.join("runs")).unwrap().count();
    assert_eq!(runs, 2);
    let newest = std::fs::read_dir(out.join("runs")).unwrap().map(|e| e.unwrap().path()).max();
    let mut reader = csv::Reader::from_path(newest.unwrap().join("report.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!((&rows[0][4], &rows[0][10]), ("ok", "0"));
    assert_eq!(&rows[1][4], "hash_mismatch");
    assert!(rows[1][11].contains(&wrong), "{:?}", rows[1]);
    // The journal knows the row the hash answered, so the by-id view,
    // verify and status see it too.
    let journal = std::fs::read_to_string(out.join("journal.jsonl")).unwrap();
    let copy = journal
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|entry| entry["id"] == "copy-of-a")
        .expect("the row answered by its hash is journaled");
    assert_eq!((&copy["status"], &copy["sha256"]), (&"ok".into(), &sha_a.clone().into()));
    let linked = std::fs::read_dir(out.join("by-id/image")).unwrap();
    let names: Vec<String> =
        linked.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().any(|name| name.starts_with("copy-of-a")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_stay_json_to_the_last_line() {
    let mut config = SimConfig::default();
    config.not_found.insert("gone".into());
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(
        dir.path(),
        "type,identifier
image,gone
image,fine
",
    );
    let out = dir.path().join("out");
    let seen = run_against(&sim, &path, &out, &["--log-format", "json"]).await;
    assert_eq!(seen.code, 3, "{}", seen.stderr);
    let events: Vec<serde_json::Value> = seen
        .stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let last = events.last().expect("the run logged");
    assert!(last["fields"]["message"].as_str().unwrap().contains("1 of 2 rows"), "{last}");
    assert_eq!(last["fields"]["exit_code"], 3, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_counts_and_times_without_a_request() {
    let sim = unlimited(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stored = manifest(dir.path(), "type,identifier\nimage,a\n");
    assert_eq!(run_against(&sim, &stored, &out, &[]).await.code, 0);
    let requests = sim.received().len();

    let planned = dir.path().join("planned.csv");
    let rows = "type,identifier\nimage,a\nimage,b\nimage,a\nsound,c\nvideo,d\n";
    std::fs::write(&planned, rows).unwrap();
    let (manifest_arg, out_arg) = (planned.to_str().unwrap(), out.to_str().unwrap());
    for args in [
        vec!["plan", manifest_arg, "--out", out_arg],
        vec!["run", manifest_arg, "--out", out_arg, "--dry-run"],
    ] {
        let seen = run_bin(&args, &[]).await;
        assert_eq!(seen.code, 0, "{args:?}: {}", seen.stderr);
        let counts = "5 rows: 2 to fetch, 1 already stored, 1 duplicate, 1 invalid";
        assert!(seen.stdout.contains(counts), "{}", seen.stdout);
        assert!(seen.stdout.contains("API budget: 2 calls"), "{}", seen.stdout);
    }
    assert_eq!(sim.received().len(), requests, "a plan makes no request");
}
