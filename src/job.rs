//! Job files: the settings of a scheduled run, kept in a TOML file so that a
//! crontab line, a systemd unit or a Kubernetes CronJob stays one short
//! command (`identifai-fetch run --job FILE`).
//!
//! This module only reads and checks a job file. Every key is optional and
//! the command line overrides any of them; merging the two is the caller's
//! business. A mistake in the file is reported with the file and the key, so
//! that a cron mail or a unit's log points straight at the line to fix.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use reqwest::Url;
use toml::{Table, Value};

use crate::cli::{LogFormat, parse_duration};
use crate::rate::RateSpec;

/// Every key a job file may hold, in the order the documentation lists them.
pub const KNOWN_KEYS: &[&str] = &[
    "manifest",
    "out",
    "api_url",
    "rate",
    "concurrency",
    "max_attempts",
    "deadline",
    "grace",
    "api_key_file",
    "api_key_env",
    "log_format",
    "progress_interval",
    "metrics_file",
    "view",
];

/// The settings a job file names; `None` where the file is silent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Job {
    /// The CSV manifest (resolved against the job file's folder).
    pub manifest: Option<PathBuf>,
    /// The output folder (resolved against the job file's folder).
    pub out: Option<PathBuf>,
    /// The API's base URL.
    pub api_url: Option<Url>,
    /// API call limits, as `--rate` takes them.
    pub rate: Option<RateSpec>,
    /// Downloads in flight at once, 1 to 256.
    pub concurrency: Option<u16>,
    /// Tries per row, 1 to 100.
    pub max_attempts: Option<u32>,
    /// Stop gracefully after this long.
    pub deadline: Option<Duration>,
    /// How long downloads in flight may finish after a stop.
    pub grace: Option<Duration>,
    /// Where the API key comes from.
    pub api_key: Option<KeySource>,
    /// How log lines are written.
    pub log_format: Option<LogFormat>,
    /// How often progress is logged.
    pub progress_interval: Option<Duration>,
    /// Where the run's metrics are written (resolved against the job file's folder).
    pub metrics_file: Option<PathBuf>,
    /// How the store's view of finished rows is made.
    pub view: Option<ViewChoice>,
}

/// Where a job's API key comes from. The key itself never sits in a job
/// file: job files end up in version control and in ConfigMaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Read the key from this file (`api_key_file`).
    File(PathBuf),
    /// Read the key from this environment variable (`api_key_env`).
    Env(String),
}

/// The `view` key takes the same values as `--view`.
pub use crate::cli::ViewChoice;

/// Why a job file could not be used. Each message starts with the file.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The file could not be read.
    #[error("{}: cannot read the job file", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}:{line}:{column}: not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    /// A key that job files do not have, most likely a typo.
    #[error(
        "{}: unknown key {key:?} (known keys: {})",
        path.display(),
        KNOWN_KEYS.join(", ")
    )]
    UnknownKey { path: PathBuf, key: String },
    /// A known key with a value that cannot be used.
    #[error("{}: {key}: {message}", path.display())]
    BadValue { path: PathBuf, key: String, message: String },
    /// `api_key_file` and `api_key_env` together: which one wins would be a guess.
    #[error("{}: api_key_file and api_key_env are both set; keep one", path.display())]
    TwoKeySources { path: PathBuf },
}

/// What is wrong with one key, before the file's name is attached.
enum KeyError {
    Unknown,
    Bad(String),
}

impl From<String> for KeyError {
    fn from(message: String) -> Self {
        KeyError::Bad(message)
    }
}

impl Job {
    /// Reads and checks the job file at `path`.
    pub fn load(path: &Path) -> Result<Job, JobError> {
        let text = fs::read_to_string(path)
            .map_err(|source| JobError::Read { path: path.to_owned(), source })?;
        Job::parse(&text, path)
    }

    /// Checks the text of a job file; `origin` is the file it came from,
    /// which names it in errors and anchors its relative paths.
    pub fn parse(text: &str, origin: &Path) -> Result<Job, JobError> {
        let path = origin.to_owned();
        let table: Table = toml::from_str(text).map_err(|error| syntax(&path, text, &error))?;
        if table.contains_key("api_key_file") && table.contains_key("api_key_env") {
            return Err(JobError::TwoKeySources { path });
        }
        let base = origin.parent().unwrap_or(Path::new(""));
        let mut job = Job::default();
        for (key, value) in &table {
            job.apply(key, value, base).map_err(|error| match error {
                KeyError::Unknown => JobError::UnknownKey { path: path.clone(), key: key.clone() },
                KeyError::Bad(message) => {
                    JobError::BadValue { path: path.clone(), key: key.clone(), message }
                }
            })?;
        }
        Ok(job)
    }

    /// Sets the field that `key` names from `value`.
    fn apply(&mut self, key: &str, value: &Value, base: &Path) -> Result<(), KeyError> {
        match key {
            "manifest" => self.manifest = Some(path(value, base)?),
            "out" => self.out = Some(path(value, base)?),
            "api_url" => self.api_url = Some(url(value)?),
            "rate" => self.rate = Some(string(value, "2/s,60/min")?.parse()?),
            "concurrency" => self.concurrency = Some(integer(value, 1, 256)?),
            "max_attempts" => self.max_attempts = Some(integer(value, 1, 100)?),
            "deadline" => self.deadline = Some(duration(value)?),
            "grace" => self.grace = Some(duration(value)?),
            "api_key_file" => self.api_key = Some(KeySource::File(path(value, base)?)),
            "api_key_env" => self.api_key = Some(KeySource::Env(env_name(value)?)),
            "log_format" => self.log_format = Some(choice(value)?),
            "progress_interval" => self.progress_interval = Some(duration(value)?),
            "metrics_file" => self.metrics_file = Some(path(value, base)?),
            "view" => self.view = Some(choice(value)?),
            // The key itself would end up wherever the job file goes.
            "api_key" => {
                return Err(KeyError::Bad(
                    "the key itself never goes in a job file; name a file with api_key_file \
                     or a variable with api_key_env"
                        .to_owned(),
                ));
            }
            _ => return Err(KeyError::Unknown),
        }
        Ok(())
    }
}

/// A TOML syntax error, placed by line and column as editors expect.
fn syntax(path: &Path, text: &str, error: &toml::de::Error) -> JobError {
    let mut offset = error.span().map_or(0, |span| span.start).min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |last| last.chars().count()) + 1;
    let message = error.message().trim_end().to_owned();
    JobError::Syntax { path: path.to_owned(), line, column, message }
}

fn string<'a>(value: &'a Value, example: &str) -> Result<&'a str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("expected a string such as {example:?}, found {}", value.type_str()))
}

/// A path, taken relative to the job file's folder unless it is absolute,
/// so a job file can sit beside its manifest wherever it is run from.
fn path(value: &Value, base: &Path) -> Result<PathBuf, String> {
    let text = string(value, "/srv/evidence")?;
    if text.is_empty() {
        return Err("the path is empty".to_owned());
    }
    // Nothing expands `~` here; unchecked, `~/evidence` would quietly
    // become a folder named `~` beside the job file.
    if text.starts_with('~') {
        return Err(format!("{text:?}: `~` is not expanded in job files; write the full path"));
    }
    Ok(tidy(&base.join(text)))
}

/// Folds `a/b/../c` into `a/c` and drops `.` without asking the file system,
/// so reports show `demo-out/runs/…` rather than `jobs/demo/../../demo-out`.
/// A `..` that would climb above the start of a relative path is kept.
// Known limit: folding is lexical, so a `..` after a symlinked folder lands
// beside the link rather than beside its target; job files rarely do that.
fn tidy(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut parts: Vec<Component<'_>> = Vec::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir if matches!(parts.last(), Some(Component::Normal(_))) => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() { PathBuf::from(".") } else { parts.iter().collect() }
}

fn url(value: &Value) -> Result<Url, String> {
    crate::cli::parse_api_url(string(value, "https://api.identifai.net")?)
}

fn integer<T: TryFrom<i64>>(value: &Value, min: i64, max: i64) -> Result<T, String> {
    let number = value
        .as_integer()
        .ok_or_else(|| format!("expected a whole number, found {}", value.type_str()))?;
    let in_range = || format!("{number} is out of range: expected {min} to {max}");
    if !(min..=max).contains(&number) {
        return Err(in_range());
    }
    T::try_from(number).map_err(|_| in_range())
}

fn duration(value: &Value) -> Result<Duration, String> {
    parse_duration(string(value, "6h")?)
}

/// An environment variable's name. The value is never echoed back: a
/// string that is not a name is most likely the key itself, pasted in.
fn env_name(value: &Value) -> Result<String, String> {
    let name = string(value, "IDENTIFAI_API_KEY")?;
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(name.to_owned())
    } else {
        Err("expected the name of an environment variable (letters, digits and _), \
             such as IDENTIFAI_API_KEY, not the key itself"
            .to_owned())
    }
}

/// One of an enum's values, spelled as on the command line.
fn choice<T: ValueEnum>(value: &Value) -> Result<T, String> {
    let names: Vec<String> = T::value_variants()
        .iter()
        .filter_map(|variant| variant.to_possible_value())
        .map(|possible| format!("{:?}", possible.get_name()))
        .collect();
    let text = string(value, names.first().map_or("", |name| name.trim_matches('"')))?;
    T::from_str(text, false).map_err(|_| format!("expected {}, not {text:?}", names.join(" or ")))
}

#[cfg(test)]
mod tidy_tests {
    use super::tidy;
    use std::path::Path;

    #[test]
    fn paths_fold_without_the_file_system() {
        assert_eq!(tidy(Path::new("jobs/demo/../../demo-out")), Path::new("demo-out"));
        assert_eq!(tidy(Path::new("/etc/./job/../store")), Path::new("/etc/store"));
        assert_eq!(tidy(Path::new("../up/./x")), Path::new("../up/x"));
        assert_eq!(tidy(Path::new("a/..")), Path::new("."));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Job, JobError> {
        Job::parse(text, Path::new("/etc/identifai-fetch/nightly.toml"))
    }

    /// The error's message, which must name the file.
    fn error(text: &str) -> String {
        let message = parse(text).unwrap_err().to_string();
        assert!(message.starts_with("/etc/identifai-fetch/nightly.toml"), "{message}");
        message
    }

    #[test]
    fn every_key_is_read() {
        let job = parse(
            r#"
            manifest = "nightly.csv"
            out = "/srv/evidence"
            api_url = "https://api.example.net/v2/"
            rate = "5/s,100/min"
            concurrency = 16
            max_attempts = 3
            deadline = "6h"
            grace = "45s"
            api_key_file = "/run/credentials/identifai-fetch.service/api-key"
            log_format = "json"
            progress_interval = "1m"
            metrics_file = "metrics/identifai_fetch.prom"
            view = "copy"
            "#,
        )
        .unwrap();
        let expected = Job {
            manifest: Some("/etc/identifai-fetch/nightly.csv".into()),
            out: Some("/srv/evidence".into()),
            api_url: Some(Url::parse("https://api.example.net/v2/").unwrap()),
            rate: Some("5/s,100/min".parse().unwrap()),
            concurrency: Some(16),
            max_attempts: Some(3),
            deadline: Some(Duration::from_secs(6 * 3600)),
            grace: Some(Duration::from_secs(45)),
            api_key: Some(KeySource::File(
                "/run/credentials/identifai-fetch.service/api-key".into(),
            )),
            log_format: Some(LogFormat::Json),
            progress_interval: Some(Duration::from_secs(60)),
            metrics_file: Some("/etc/identifai-fetch/metrics/identifai_fetch.prom".into()),
            view: Some(ViewChoice::Copy),
        };
        assert_eq!(job, expected);
    }

    #[test]
    fn every_known_key_is_accepted() {
        let samples = [
            ("manifest", "\"m.csv\""),
            ("out", "\"o\""),
            ("api_url", "\"http://127.0.0.1:8417\""),
            ("rate", "\"1/s\""),
            ("concurrency", "1"),
            ("max_attempts", "100"),
            ("deadline", "\"90m\""),
            ("grace", "\"30s\""),
            ("api_key_file", "\"key\""),
            ("api_key_env", "\"MY_KEY\""),
            ("log_format", "\"text\""),
            ("progress_interval", "\"10s\""),
            ("metrics_file", "\"m.prom\""),
            ("view", "\"symlink\""),
        ];
        let keys: Vec<&str> = samples.iter().map(|(key, _)| *key).collect();
        assert_eq!(keys, KNOWN_KEYS);
        for (key, value) in samples {
            let job = parse(&format!("{key} = {value}")).unwrap();
            assert_ne!(job, Job::default(), "{key} was ignored");
        }
    }

    #[test]
    fn the_view_can_be_turned_off_as_on_the_command_line() {
        assert_eq!(parse("view = \"none\"").unwrap().view, Some(ViewChoice::None));
        let error = parse("view = \"links\"").unwrap_err().to_string();
        assert!(error.contains("\"symlink\" or \"copy\" or \"none\""), "{error}");
    }

    #[test]
    fn the_key_can_come_from_a_named_variable() {
        let job = parse("api_key_env = \"IDENTIFAI_API_KEY\"").unwrap();
        assert_eq!(job.api_key, Some(KeySource::Env("IDENTIFAI_API_KEY".into())));
    }

    #[test]
    fn an_empty_file_sets_nothing() {
        assert_eq!(parse("").unwrap(), Job::default());
        assert_eq!(parse("# only a comment\n\n").unwrap(), Job::default());
    }

    #[test]
    fn relative_paths_follow_the_job_file() {
        let text = "manifest = \"m.csv\"\nout = \"../out\"\napi_key_file = \"/abs/key\"";
        let job = Job::parse(text, Path::new("jobs/demo/job.toml")).unwrap();
        assert_eq!(job.manifest, Some("jobs/demo/m.csv".into()));
        assert_eq!(job.out, Some("jobs/out".into()), "folded for reading");
        assert_eq!(job.api_key, Some(KeySource::File("/abs/key".into())));

        // A job file named without a folder is in the current one.
        let job = Job::parse(text, Path::new("job.toml")).unwrap();
        assert_eq!(job.manifest, Some("m.csv".into()));
    }

    #[test]
    fn a_tilde_is_refused_rather_than_taken_literally() {
        let message = error("out = \"~/evidence\"");
        assert!(message.contains("out:") && message.contains('~'), "{message}");
    }

    #[test]
    fn an_unknown_key_is_named_with_the_known_ones() {
        let message = error("concurency = 4");
        assert!(message.contains("unknown key \"concurency\""), "{message}");
        assert!(message.contains("known keys: manifest, out,"), "{message}");
        assert!(error("[job]\nout = \"o\"").contains("unknown key \"job\""));
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases = [
            ("manifest = 3", "manifest: expected a string"),
            ("out = \"\"", "out: the path is empty"),
            ("api_url = \"not a url\"", "api_url: bad URL"),
            ("api_url = \"ftp://example.net\"", "api_url: bad URL"),
            ("rate = \"5/day\"", "rate: bad rate \"5/day\""),
            ("concurrency = 0", "concurrency: 0 is out of range"),
            ("concurrency = 257", "concurrency: 257 is out of range"),
            ("concurrency = \"4\"", "concurrency: expected a whole number, found string"),
            ("max_attempts = 101", "max_attempts: 101 is out of range"),
            ("deadline = \"soon\"", "deadline: \"soon\" is not a duration"),
            ("grace = 30", "grace: expected a string such as \"6h\""),
            ("api_key_file = false", "api_key_file: expected a string"),
            ("api_key_env = \"MY-KEY\"", "api_key_env: expected the name"),
            ("log_format = \"xml\"", "log_format: expected \"text\" or \"json\", not \"xml\""),
            ("progress_interval = \"-5s\"", "progress_interval: \"-5s\" is not a duration"),
            ("metrics_file = []", "metrics_file: expected a string"),
            ("view = \"hardlink\"", "view: expected \"symlink\" or \"copy\""),
        ];
        for (text, wanted) in cases {
            let message = error(text);
            assert!(message.contains(wanted), "{text:?} gave {message:?}");
        }
    }

    #[test]
    fn a_pasted_key_is_refused_without_being_echoed() {
        let secret = "sk-live-4f9a8b7c6d5e";
        let message = error(&format!("api_key_env = \"{secret}\""));
        assert!(!message.contains(secret), "{message}");
        let message = error(&format!("api_key = \"{secret}\""));
        assert!(message.contains("api_key:") && !message.contains(secret), "{message}");
    }

    #[test]
    fn two_key_sources_are_an_error() {
        let message = error("api_key_file = \"k\"\napi_key_env = \"K\"");
        assert!(message.contains("api_key_file and api_key_env"), "{message}");
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let message = error("out = \"o\"\nrate = 2/s\n");
        assert!(message.starts_with("/etc/identifai-fetch/nightly.toml:2:"), "{message}");
        assert!(message.contains("not valid TOML"), "{message}");
        let message = error("out = \"o\"\nout = \"p\"\n");
        assert!(message.contains(":2:"), "{message}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let path = Path::new("/nonexistent/identifai/job.toml");
        let message = Job::load(path).unwrap_err().to_string();
        assert!(message.contains("/nonexistent/identifai/job.toml"), "{message}");
    }
}
