//! `identifai-fetch demo`: the simulator and the demo manifest, end to end,
//! so a new user sees a whole run without an account.

use std::path::Path;

use crate::api::ApiKey;
use crate::progress;
use crate::report::{RowStatus, Summary};
use crate::run::{RunConfig, RunError, RunOutcome, run_with_progress};
use crate::simulator::{SimConfig, Simulator};

/// The demo manifest, built in so the demo runs from any folder.
pub const MANIFEST: &str = include_str!("../jobs/demo/manifest.csv");

/// The demo's row that the simulator answers 404, as the real API would
/// for a submission that was deleted.
pub const MISSING_ID: &str = "65a0ffffffffffffffffffff";

/// Starts the simulator at the vendor's documented limits and runs the demo
/// manifest into `out`, quietly. The outer error is the set-up failing.
pub async fn run_demo(out: &Path) -> std::io::Result<Result<RunOutcome, RunError>> {
    run_demo_with_progress(out, progress::Mode::Quiet).await
}

/// [`run_demo`], showing progress as `mode` says: the demo paces at one call
/// a second, and a new user should see it working rather than wait blind.
pub async fn run_demo_with_progress(
    out: &Path,
    mode: progress::Mode,
) -> std::io::Result<Result<RunOutcome, RunError>> {
    let mut config = SimConfig::default();
    config.not_found.insert(MISSING_ID.to_owned());
    let simulator = Simulator::start(config).await?;
    std::fs::create_dir_all(out)?;
    let manifest = out.join("manifest.csv");
    std::fs::write(&manifest, MANIFEST)?;
    let key = ApiKey::new(simulator.api_key()).expect("the simulator's key is printable");
    let api_url = simulator.api_url().parse().expect("the simulator's URL parses");
    let config = RunConfig::new(&manifest, out, api_url, key);
    eprintln!("demo: simulator at {}, running {}", simulator.api_url(), manifest.display());
    let outcome = run_with_progress(config, mode).await;
    simulator.shutdown().await;
    Ok(outcome)
}

/// Whether a demo run went as designed: every row stored but the one that
/// the simulator deliberately answers 404.
pub fn went_as_designed(summary: &Summary) -> bool {
    summary.stopped.is_none()
        && summary.count(RowStatus::NotFound) == 1
        && summary.count_succeeded() + 1 == summary.rows
}
