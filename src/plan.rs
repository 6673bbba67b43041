//! `identifai-fetch plan` (and `run --dry-run`): what a run would do, and
//! how long the API budget says it would take, without a single request.
//!
//! It reads the whole manifest with the same checks as a run, asks the
//! store's journal which rows are stored already, and counts the rest. The
//! output folder is only read: a plan creates nothing, not even the folder.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use crate::journal::Outcomes;
use crate::manifest::{Entry, Kind, Manifest, ManifestError};
use crate::rate::RateSpec;
use crate::run::stored_copy;
use crate::store::Store;

/// Invalid rows quoted in full; the rest are only counted.
const INVALID_SHOWN: usize = 10;

/// What a run of the manifest into the folder would do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub rows: u64,
    pub invalid: u64,
    pub duplicates: u64,
    /// Rows the store already holds: no API call, no download.
    pub stored: u64,
    /// Rows that need an API call and a download.
    pub to_fetch: u64,
    /// The first invalid rows' reasons.
    pub invalid_reasons: Vec<String>,
}

impl Plan {
    /// How long the API budget needs for the rows to fetch: one call each,
    /// paced as a run paces them (retries and 429s would add to it).
    pub fn api_time(&self, rate: &RateSpec) -> Duration {
        rate.spacing().mul_f64(self.to_fetch.saturating_sub(1) as f64)
    }
}

/// Reads the manifest and the store's journal and counts.
pub fn plan(manifest: &Path, out: &Path) -> Result<Plan, PlanError> {
    let journal = Outcomes::load(out)
        .map_err(|source| PlanError::Journal { path: out.to_path_buf(), source })?;
    plan_with(manifest, &Store::existing(out), &journal)
}

/// [`plan`] with the journal already read (a run counts with its own).
pub fn plan_with(manifest: &Path, store: &Store, journal: &Outcomes) -> Result<Plan, PlanError> {
    let entries = Manifest::open(manifest)?;
    let mut plan = Plan::default();
    let mut seen: HashSet<(Kind, String)> = HashSet::new();
    for entry in entries {
        plan.rows += 1;
        let row = match entry? {
            Entry::Valid(row) => row,
            Entry::Invalid(bad) => {
                plan.invalid += 1;
                if plan.invalid_reasons.len() < INVALID_SHOWN {
                    plan.invalid_reasons.push(bad.reason);
                }
                continue;
            }
        };
        if !seen.insert((row.kind, row.requested_id().to_owned())) {
            plan.duplicates += 1;
        } else if stored_copy(store, journal, &row).is_some() {
            plan.stored += 1;
        } else {
            plan.to_fetch += 1;
        }
    }
    Ok(plan)
}

/// The plan as a person reads it.
pub fn render(plan: &Plan, rate: &RateSpec) -> String {
    let mut text = format!(
        "{}: {} to fetch, {} already stored, {}, {} invalid\n",
        counted(plan.rows, "row"),
        plan.to_fetch,
        plan.stored,
        counted(plan.duplicates, "duplicate"),
        plan.invalid
    );
    let time = plan.api_time(rate);
    let calls = counted(plan.to_fetch, "call");
    let verb = if plan.to_fetch == 1 { "takes" } else { "take" };
    text.push_str(&format!(
        "API budget: {calls} at {rate} {verb} at least {}\n",
        human_duration(time)
    ));
    for reason in &plan.invalid_reasons {
        text.push_str(&format!("invalid: {reason}\n"));
    }
    if plan.invalid > plan.invalid_reasons.len() as u64 {
        let more = plan.invalid - plan.invalid_reasons.len() as u64;
        text.push_str(&format!("invalid: … and {more} more\n"));
    }
    text
}

/// `1 row`, `2 rows`.
fn counted(n: u64, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// `1h02m`, `3m05s`, `12s`.
pub fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64().round() as u64;
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds:02}s"),
        _ => format!("{hours}h{minutes:02}m"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cannot read the journal in {}: {source}", path.display())]
    Journal { path: std::path::PathBuf, source: std::io::Error },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_shortly() {
        assert_eq!(human_duration(Duration::from_secs(12)), "12s");
        assert_eq!(human_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn a_plan_counts_without_touching_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("m.csv");
        let rows = "type,identifier\nimage,a\nimage,a\nvideo,a\nsound,b\nimage,\n";
        std::fs::write(&manifest, rows).unwrap();
        let out = dir.path().join("never-made");
        let plan = plan(&manifest, &out).unwrap();
        let expected = (plan.rows, plan.to_fetch, plan.duplicates, plan.invalid, plan.stored);
        assert_eq!(expected, (5, 2, 1, 2, 0));
        assert!(!out.exists(), "a plan creates nothing");
        let text = render(&plan, &RateSpec::default());
        assert!(text.contains("2 to fetch"), "{text}");
        assert!(text.contains("take at least 1s"), "{text}");
        assert!(text.contains("line 5: unknown type"), "{text}");
    }
}
