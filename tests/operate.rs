//! Operating the tool as its two kinds of users do: an operator's job file,
//! logs and metrics; an investigator's progress bar, by-id view, verify and
//! status. The binary runs against the simulator on 127.0.0.1.

mod common;

use common::{files_under, manifest, run_against, run_bin, unlimited};
use identifai_fetch::simulator::{Fault, FileType, SimConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_file_runs_with_flags_overriding_it_and_leaves_metrics_and_a_view() {
    let sim = unlimited(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs");
    std::fs::create_dir(&jobs).unwrap();
    manifest(
        &jobs,
        "type,identifier,frame_or_track_id\nimage,img-1,\nvideo,vid-1,\nvideo,vid-1,fr-1\n",
    );
    let job = jobs.join("nightly.toml");
    let text = format!(
        "manifest = \"manifest.csv\"\nout = \"../store\"\napi_url = \"{}\"\nrate = \"1/h\"\n\
         api_key_env = \"CASE_KEY\"\nmetrics_file = \"../node.prom\"\nlog_format = \"json\"\n",
        sim.api_url()
    );
    std::fs::write(&job, text).unwrap();
    // The job's 1/h would take hours: the flag wins.
    let args = ["run", "--job", job.to_str().unwrap(), "--rate", "1000/s"];
    let seen = run_bin(&args, &[("CASE_KEY", sim.api_key())]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);

    let store = dir.path().join("store");
    assert!(seen.stdout.contains(&store.join("runs").display().to_string()), "{}", seen.stdout);
    let metrics = std::fs::read_to_string(dir.path().join("node.prom")).unwrap();
    assert!(metrics.contains("identifai_fetch_rows{status=\"ok\"} 3"), "{metrics}");
    assert!(metrics.contains("identifai_fetch_last_success_timestamp_seconds"), "{metrics}");
    // What the README has operators alert on.
    assert!(metrics.contains("identifai_fetch_last_finished_timestamp_seconds"), "{metrics}");
    // The job asked for JSON logs: every stderr line is a JSON object.
    for line in seen.stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|_| panic!("{line}"));
    }
    // The investigator's view: by type and id, frames under their video.
    let frame = store.join("by-id/video/vid-1/fr-1.mp4");
    let bytes = std::fs::read(&frame).unwrap();
    assert_eq!(bytes.len() as u64, sim.size_of(FileType::Video, "fr-1"));
    assert!(std::fs::symlink_metadata(&frame).unwrap().file_type().is_symlink());
    assert!(store.join("by-id/image/img-1.jpg").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_job_file_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("nightly.toml");
    std::fs::write(&job, "manifest = \"m.csv\"\nconcurency = 4\n").unwrap();
    let seen =
        run_bin(&["run", "--job", job.to_str().unwrap()], &[("IDENTIFAI_API_KEY", "k")]).await;
    assert_eq!(seen.code, 2);
    assert!(
        seen.stderr.contains("nightly.toml") && seen.stderr.contains("concurency"),
        "{}",
        seen.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_row_but_never_the_key_or_a_signature() {
    let mut config = SimConfig::default();
    config.faults.insert("flaky".into(), vec![Fault::StorageStatus(500)]);
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,identifier\nimage,flaky\n");
    let out = dir.path().join("out");
    let seen = run_against(&sim, &path, &out, &["--log-format", "json"]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    let retry = seen
        .stderr
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|event| event["fields"]["message"] == "retrying")
        .expect("a retry was logged");
    assert_eq!(retry["span"]["identifier"], "flaky", "{retry}");
    assert_eq!(retry["span"]["line"], 2, "{retry}");
    assert!(!seen.stderr.contains(sim.api_key()));
    assert!(!seen.stderr.contains("X-Amz-Signature"), "{}", seen.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_a_terminal_progress_comes_as_plain_lines() {
    // About three seconds of downloads, so that a line a second shows.
    let config = SimConfig {
        storage_bytes_per_second: Some(1 << 20),
        every_size: Some(3 << 20),
        ..SimConfig::default()
    };
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let rows: String = (0..4).map(|n| format!("video,slow-{n}\n")).collect();
    let path = manifest(dir.path(), &format!("type,identifier\n{rows}"));
    let out = dir.path().join("out");
    let seen = run_against(&sim, &path, &out, &["--progress-interval", "1s"]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    assert!(seen.stderr.contains("progress: "), "{}", seen.stderr);
    assert!(!seen.stderr.contains('\u{1b}'), "no escape codes in a log");
    assert!(!seen.stderr.contains('⠁') && !seen.stderr.contains("[="), "no bar in a log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_progress_is_a_bar() {
    // `script` (util-linux) runs the binary under a pseudo-terminal.
    if std::process::Command::new("script").arg("--version").output().is_err() {
        panic!("this test needs `script` from util-linux to make a pseudo-terminal");
    }
    let config = SimConfig { storage_bytes_per_second: Some(1 << 20), ..SimConfig::default() };
    let sim = unlimited(config).await;
    let dir = tempfile::tempdir().unwrap();
    let rows: String = (0..3).map(|n| format!("video,slow-{n}\n")).collect();
    let path = manifest(dir.path(), &format!("type,identifier\n{rows}"));
    let out = dir.path().join("out");
    let command = format!(
        "IDENTIFAI_API_KEY={} {} run {} --out {} --api-url {} --rate 1000/s",
        sim.api_key(),
        common::BIN,
        path.display(),
        out.display(),
        sim.api_url()
    );
    let seen = run_script(&command).await;
    assert!(seen.contains("rows ·"), "a bar was drawn: {seen}");
    assert!(seen.contains('\u{1b}'), "the bar redraws in place");
    assert!(seen.contains("report: "), "{seen}");
}

async fn run_script(command: &str) -> String {
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new("script")
            .args(["-qec", command, "/dev/null"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the run ends in time")
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_status_and_link_tell_an_investigator_what_is_there() {
    let sim = unlimited(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,identifier\nimage,a\nimage,b\naudio,c\n");
    let out = dir.path().join("out");
    assert_eq!(run_against(&sim, &path, &out, &["--view", "none"]).await.code, 0);
    assert!(!out.join("by-id").exists(), "--view none builds no view");
    let dir_arg = out.to_str().unwrap();

    let seen = run_bin(&["verify", dir_arg], &[]).await;
    assert_eq!(seen.code, 0, "{}{}", seen.stdout, seen.stderr);
    assert!(seen.stdout.contains("checked 3 objects"), "{}", seen.stdout);

    // Someone alters a stored file.
    let victim = files_under(&out.join("objects")).pop().unwrap();
    let mut permissions = std::fs::metadata(&victim).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&victim, permissions).unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let seen = run_bin(&["verify", dir_arg, "--quick"], &[]).await;
    assert_eq!(seen.code, 0, "the size is right: --quick cannot tell");
    let seen = run_bin(&["verify", dir_arg], &[]).await;
    assert_eq!(seen.code, 3, "{}", seen.stdout);
    assert!(seen.stdout.contains("MISMATCH"), "{}", seen.stdout);
    assert!(!victim.exists(), "moved out of objects/");
    assert_eq!(files_under(&out.join("quarantine")).len(), 1, "kept, never deleted");

    let seen = run_bin(&["status", dir_arg], &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    assert!(seen.stdout.contains("objects   2"), "{}", seen.stdout);
    assert!(seen.stdout.contains("lock      free"), "{}", seen.stdout);

    let seen = run_bin(&["link", dir_arg, "--view", "copy"], &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    let copies = files_under(&out.join("by-id"));
    assert_eq!(copies.len(), 2, "the quarantined file has no entry: {copies:?}");
    assert!(copies.iter().all(|c| !std::fs::symlink_metadata(c).unwrap().is_symlink()));
    // A rerun puts the altered file back, downloaded afresh.
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    assert_eq!(files_under(&out.join("objects")).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_a_man_page_come_from_the_command_line() {
    for shell in ["bash", "zsh", "fish"] {
        let seen = run_bin(&["completions", shell], &[]).await;
        assert_eq!(seen.code, 0);
        assert!(seen.stdout.contains("verify") && seen.stdout.contains("dry-run"), "{shell}");
    }
    let man = run_bin(&["man"], &[]).await;
    assert_eq!(man.code, 0);
    assert!(man.stdout.contains(".TH identifai-fetch 1"), "{}", &man.stdout[..200]);
    let pages = tempfile::tempdir().unwrap();
    let man = run_bin(&["man", "--dir", pages.path().to_str().unwrap()], &[]).await;
    assert_eq!(man.code, 0, "{}", man.stderr);
    let run_page = std::fs::read_to_string(pages.path().join("identifai-fetch-run.1")).unwrap();
    assert!(run_page.contains("max\\-attempts"), "the run page lists run's options");
}
