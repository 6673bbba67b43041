//! What a run uses: the command line over the job file over the defaults.
//!
//! Everything is settled here, before logging starts and before any
//! request, so that a bad job file or a missing key is a usage error (exit
//! 2) that names the option or key at fault.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use crate::api::ApiKey;
use crate::cli::{LogFormat, RunArgs, ViewChoice};
use crate::job::{Job, JobError, KeySource};
use crate::retry::RetryPolicy;
use crate::run::RunConfig;

/// The variable the API key is read from unless a job file names another.
pub const KEY_VARIABLE: &str = "IDENTIFAI_API_KEY";

/// The API the tool talks to unless told otherwise.
pub const DEFAULT_API_URL: &str = "https://api.identifai.net";

/// A run's settings, merged.
#[derive(Debug)]
pub struct RunSettings {
    pub manifest: PathBuf,
    pub out: PathBuf,
    pub api_url: Url,
    pub key_source: KeySource,
    pub rate: crate::rate::RateSpec,
    pub concurrency: u16,
    pub max_attempts: u32,
    pub grace: Duration,
    pub deadline: Option<Duration>,
    pub log_format: LogFormat,
    pub progress_interval: Duration,
    pub quiet: bool,
    pub metrics_file: Option<PathBuf>,
    pub view: ViewChoice,
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("no {what}: give {flag} on the command line or `{key}` in the job file")]
    Missing { what: &'static str, flag: &'static str, key: &'static str },
    #[error("{0}")]
    Key(String),
}

impl RunSettings {
    /// Merges the command line with the job file it names, if any.
    pub fn resolve(args: RunArgs) -> Result<RunSettings, SettingsError> {
        let job = match &args.job {
            Some(path) => Job::load(path)?,
            None => Job::default(),
        };
        let missing = |what, flag, key| SettingsError::Missing { what, flag, key };
        let key_source = match (&args.api_key_file, &job.api_key) {
            (Some(file), _) => KeySource::File(file.clone()),
            (None, Some(source)) => source.clone(),
            (None, None) => KeySource::Env(KEY_VARIABLE.to_owned()),
        };
        let default_url = || DEFAULT_API_URL.parse().expect("the default API URL parses");
        Ok(RunSettings {
            manifest: args
                .manifest
                .or(job.manifest)
                .ok_or(missing("manifest", "MANIFEST", "manifest"))?,
            out: args.out.or(job.out).ok_or(missing("output folder", "--out DIR", "out"))?,
            api_url: args.api_url.or(job.api_url).unwrap_or_else(default_url),
            key_source,
            rate: args.tuning.rate.or(job.rate).unwrap_or_default(),
            concurrency: args.tuning.concurrency.or(job.concurrency).unwrap_or(4),
            max_attempts: args.tuning.max_attempts.or(job.max_attempts).unwrap_or(8),
            grace: args.tuning.grace.or(job.grace).unwrap_or(Duration::from_secs(30)),
            deadline: args.tuning.deadline.or(job.deadline),
            log_format: args.output.log_format.or(job.log_format).unwrap_or_default(),
            progress_interval: args
                .output
                .progress_interval
                .or(job.progress_interval)
                .unwrap_or(Duration::from_secs(60)),
            quiet: args.output.quiet,
            metrics_file: args.output.metrics_file.or(job.metrics_file),
            view: args.output.view.or(job.view).unwrap_or_default(),
            dry_run: args.dry_run,
        })
    }

    /// Reads the key from where the settings say: a file, or a variable
    /// (from `env`, so tests need not touch the process environment).
    pub fn api_key(&self, env: impl Fn(&str) -> Option<String>) -> Result<ApiKey, SettingsError> {
        match &self.key_source {
            KeySource::File(path) => ApiKey::from_file(path).map_err(SettingsError::Key),
            KeySource::Env(name) => match env(name) {
                Some(value) => ApiKey::new(&value).ok_or_else(|| {
                    SettingsError::Key(format!("{name} is set but holds no usable key"))
                }),
                None => Err(SettingsError::Key(format!(
                    "no API key: set {name} or pass --api-key-file PATH (nothing was requested)"
                ))),
            },
        }
    }

    /// The run's configuration, with the key read.
    pub fn run_config(&self, api_key: ApiKey) -> RunConfig {
        let mut config = RunConfig::new(&self.manifest, &self.out, self.api_url.clone(), api_key);
        config.rate = self.rate.clone();
        config.concurrency = usize::from(self.concurrency);
        config.retry = RetryPolicy::with_max_attempts(self.max_attempts);
        config.grace = self.grace;
        config.deadline = self.deadline;
        config.handle_signals = true;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn settings(args: &[&str]) -> Result<RunSettings, SettingsError> {
        let cli = Cli::parse_from(["identifai-fetch", "run"].iter().chain(args));
        let Command::Run(run) = cli.command else { unreachable!() };
        RunSettings::resolve(run)
    }

    #[test]
    fn flags_win_over_the_job_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("nightly.toml");
        let text = "manifest = \"m.csv\"\nout = \"store\"\nrate = \"30/min\"\nconcurrency = 2\n";
        std::fs::write(&job, text).unwrap();
        let merged = settings(&["--job", job.to_str().unwrap(), "--concurrency", "9"]).unwrap();
        assert_eq!(merged.manifest, dir.path().join("m.csv"), "relative to the job file");
        assert_eq!(merged.out, dir.path().join("store"));
        assert_eq!(merged.rate.to_string(), "30/min");
        assert_eq!(merged.concurrency, 9, "the flag wins");
        assert_eq!(merged.max_attempts, 8, "the default fills in");
        assert_eq!(merged.api_url.as_str(), "https://api.identifai.net/");
    }

    #[test]
    fn a_run_without_a_manifest_or_folder_says_where_to_give_one() {
        let error = settings(&["--out", "o"]).unwrap_err().to_string();
        assert!(error.contains("MANIFEST") && error.contains("`manifest`"), "{error}");
        let error = settings(&["m.csv"]).unwrap_err().to_string();
        assert!(error.contains("--out DIR"), "{error}");
    }

    #[test]
    fn the_key_comes_from_the_named_place_only() {
        let merged = settings(&["m.csv", "--out", "o"]).unwrap();
        let env = |name: &str| (name == KEY_VARIABLE).then(|| "k-123".to_owned());
        assert!(merged.api_key(env).is_ok());
        let error = merged.api_key(|_| None).unwrap_err().to_string();
        assert!(error.contains(KEY_VARIABLE) && error.contains("--api-key-file"), "{error}");
    }
}
