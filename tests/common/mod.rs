//! Shared pieces of the integration tests: a simulator to talk to, manifests
//! in a temp folder, the binary run as a user would run it, and the report
//! read back.

#![allow(dead_code)] // Each test file uses its own subset.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use identifai_fetch::simulator::{SimConfig, Simulator};
use sha2::{Digest, Sha256};

/// The binary under test, as cargo built it for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_identifai-fetch");

/// No test run of the binary may take longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// A simulator with no rate limits, so that tests of anything but pacing
/// run at full speed.
pub async fn unlimited(mut config: SimConfig) -> Simulator {
    config.limits.clear();
    Simulator::start(config).await.expect("the simulator starts")
}

/// Writes a manifest into `dir` and returns its path.
pub fn manifest(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("manifest.csv");
    std::fs::write(&path, text).unwrap();
    path
}

/// What a user sees of a run of the binary.
pub struct Seen {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Seen {
    fn from(output: Output) -> Seen {
        Seen {
            code: output.status.code().expect("the binary exits rather than dying by signal"),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs the binary with `args` and the environment `env` (on top of a clean
/// one that has no API key) and waits for it.
pub async fn run_bin(args: &[&str], env: &[(&str, &str)]) -> Seen {
    let mut command = tokio::process::Command::new(BIN);
    command.args(args).env_remove("IDENTIFAI_API_KEY").env_remove("RUST_LOG");
    for (name, value) in env {
        command.env(name, value);
    }
    command.kill_on_drop(true);
    let output = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .expect("the binary finishes in time")
        .expect("the binary starts");
    Seen::from(output)
}

/// `run MANIFEST --out OUT --api-url SIM` with the simulator's key and a
/// rate fast enough not to slow a test down, plus `extra` options.
pub async fn run_against(sim: &Simulator, manifest: &Path, out: &Path, extra: &[&str]) -> Seen {
    let mut args = vec![
        "run",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--api-url",
        Box::leak(sim.api_url().into_boxed_str()),
        "--rate",
        "1000/s",
    ];
    args.extend_from_slice(extra);
    run_bin(&args, &[("IDENTIFAI_API_KEY", sim.api_key())]).await
}

/// The rows of the single run's report.csv under `out`, each as a map from
/// column name to value, in file order.
pub fn report_rows(out: &Path) -> Vec<HashMap<String, String>> {
    let mut reader = csv::Reader::from_path(only_run(out).join("report.csv")).unwrap();
    let header = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|record| {
            let record = record.unwrap();
            header.iter().map(String::from).zip(record.iter().map(String::from)).collect()
        })
        .collect()
}

/// The run's summary.json.
pub fn summary(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(only_run(out).join("summary.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn only_run(out: &Path) -> PathBuf {
    let runs: Vec<PathBuf> =
        std::fs::read_dir(out.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1, "expected one run folder, found {runs:?}");
    runs.into_iter().next().unwrap()
}

/// Hex SHA-256 of a file's bytes.
pub fn sha256_of(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Every regular file under `dir`, recursively (bounded by the tree).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}
