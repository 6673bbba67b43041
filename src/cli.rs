//! The command line: subcommands, options and the help text that teaches them.
//!
//! Options of `run` that a job file can also set are optional here, with
//! their defaults stated in the help: the command line overrides the job
//! file, which overrides the defaults (see `settings`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use reqwest::Url;

use crate::rate::RateSpec;

const EXIT_CODES: &str = "\
Exit codes:
  0  every row was downloaded (or is a duplicate of one that was)
  1  the run could not go on: the API refused the key (401), the output
     folder is not writable, a disk or I/O error
  2  usage or configuration error: a bad option or job file, no API key,
     a manifest without the required columns
  3  the run finished but some rows did not succeed; the report says which
     (verify: something is missing or does not match)
  4  the run was stopped (SIGINT, SIGTERM or --deadline); run it again to resume
  5  another run holds the output folder's lock";

const RUN_EXAMPLES: &str = "\
Examples:
  # One investigation's manifest, key from the environment:
  IDENTIFAI_API_KEY=... identifai-fetch run case-0412.csv --out /srv/evidence

  # What would it do, and how long would the API budget take? No requests:
  identifai-fetch run case-0412.csv --out /srv/evidence --dry-run

  # Nightly from a job file, stopping gracefully after six hours:
  identifai-fetch run --job /etc/identifai-fetch/nightly.toml --deadline 6h

  # Against the built-in simulator (see `identifai-fetch simulate`):
  IDENTIFAI_API_KEY=sim-key-7d2f4c1a9e6b identifai-fetch run jobs/demo/manifest.csv \\
      --out ./out --api-url http://127.0.0.1:8417";

/// Downloads evidence files from the IdentifAI API v2 in bulk: rate-limited,
/// retried, deduplicated and stored by SHA-256, with a report for every row.
#[derive(Debug, Parser)]
#[command(name = "identifai-fetch", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download every row of a manifest into a content-addressed store.
    #[command(after_help = format!("{RUN_EXAMPLES}\n\n{EXIT_CODES}"))]
    Run(RunArgs),
    /// Count what a run would fetch and how long the API budget needs; no requests.
    #[command(after_help = "Example:\n  identifai-fetch plan case-0412.csv --out /srv/evidence")]
    Plan(PlanArgs),
    /// Re-hash every stored file and check it against its name and the journal.
    #[command(after_help = "Examples:\n  identifai-fetch verify /srv/evidence\n  \
        identifai-fetch verify /srv/evidence --quick   # presence and size only\n\n\
        Exit codes: 0 clean, 3 something is missing or does not match (mismatched\n\
        files are moved to DIR/quarantine/, never deleted), 1 the check could not run.")]
    Verify(VerifyArgs),
    /// What a store holds, its last runs, the rows still failing, and who holds its lock.
    #[command(after_help = "Example:\n  identifai-fetch status /srv/evidence --last 5")]
    Status(StatusArgs),
    /// Rebuild DIR/by-id/, the view of stored files by submission id.
    #[command(after_help = "Examples:\n  identifai-fetch link /srv/evidence\n  \
        identifai-fetch link /srv/evidence --view copy   # real files in /srv/evidence/by-id/\n\n\
        The view is always built inside the store. To hand files over on a USB stick,\n\
        copy the view from there, following its links:\n  \
        cp -rL /srv/evidence/by-id /mnt/usb-handover/")]
    Link(LinkArgs),
    /// Run the built-in IdentifAI API simulator, to try the tool without an account.
    #[command(after_help = "Examples:\n  identifai-fetch simulate --port 8417\n  \
        identifai-fetch simulate --limits 100/s --size big-video=2147483648")]
    Simulate(SimulateArgs),
    /// Start the simulator and download the demo manifest into ./demo-out.
    #[command(after_help = format!("Example:\n  cargo run --release -- demo\n\n{EXIT_CODES}"))]
    Demo(DemoArgs),
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  identifai-fetch completions bash \
        > /etc/bash_completion.d/identifai-fetch")]
    Completions(CompletionsArgs),
    /// Print the manual page (roff), or write one page per command.
    #[command(after_help = "Examples:\n  \
        identifai-fetch man > /usr/local/share/man/man1/identifai-fetch.1\n  \
        identifai-fetch man --dir /usr/local/share/man/man1   # also identifai-fetch-run.1, ...")]
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `identifai-fetch.1` and a page for each subcommand
    /// (`identifai-fetch-run.1`, ...) into this folder instead.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The CSV manifest: a header with `type`, `identifier` and optionally
    /// `frame_or_track_id` and `sha256`; other columns are carried into the
    /// report. May come from the job file instead.
    pub manifest: Option<PathBuf>,

    /// The output folder: `objects/`, `runs/<run-id>/` reports, `by-id/`.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// A TOML job file with any of the options below; flags given here win.
    #[arg(long, value_name = "FILE")]
    pub job: Option<PathBuf>,

    /// The API's base URL [default: `https://api.identifai.net`].
    #[arg(long, value_name = "URL", value_parser = parse_api_url)]
    pub api_url: Option<Url>,

    #[command(flatten)]
    pub tuning: Tuning,

    /// Read the API key from this file instead of IDENTIFAI_API_KEY.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,

    /// Only plan: count what would be fetched and how long it would take.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// How hard a run may push, and when it stops.
#[derive(Debug, Args)]
pub struct Tuning {
    /// API call limits, all enforced together: N/s, N/min or N/h, comma
    /// separated; N/min means at most N calls in any 60-second window
    /// [default: 2/s,60/min].
    #[arg(long, value_name = "SPEC")]
    pub rate: Option<RateSpec>,

    /// Downloads in flight at once; API calls are paced separately [default: 4].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: Option<u16>,

    /// Tries per row before it is reported failed; 429 answers are not
    /// tries [default: 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: Option<u32>,

    /// After SIGINT, SIGTERM or the deadline, how long downloads in flight
    /// may take to finish; their partial files are kept and resumed next
    /// time [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub grace: Option<Duration>,

    /// Stop gracefully after this long, e.g. `6h` to fit a cron window.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub deadline: Option<Duration>,
}

/// What a run shows and leaves besides the report.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Log lines as text or as JSON objects [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Off a terminal, how often a progress line is logged [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub progress_interval: Option<Duration>,

    /// No progress bar or progress lines (the closing summary stays).
    #[arg(long, short)]
    pub quiet: bool,

    /// Write Prometheus metrics here at the end of the run (for
    /// node_exporter's textfile collector).
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,

    /// How DIR/by-id/ is built after the run: relative symlinks, real
    /// copies, or not at all [default: symlink].
    #[arg(long, value_name = "VIEW")]
    pub view: Option<ViewChoice>,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines, for people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// How the by-id view is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ViewChoice {
    /// Relative symbolic links into objects/.
    #[default]
    Symlink,
    /// Real files, for media without symbolic links.
    Copy,
    /// No view.
    None,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The CSV manifest.
    pub manifest: PathBuf,

    /// The output folder a run would write into (only read).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// The API limits to time the plan by [default: 2/s,60/min].
    #[arg(long, value_name = "SPEC", default_value = "2/s,60/min")]
    pub rate: RateSpec,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The output folder to check.
    pub dir: PathBuf,

    /// Check presence and size only; do not re-hash.
    #[arg(long)]
    pub quick: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The output folder.
    pub dir: PathBuf,

    /// How many of the latest runs to show.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub last: usize,
}

#[derive(Debug, Args)]
pub struct LinkArgs {
    /// The store (a run's --out folder); the view is built inside it, as DIR/by-id/.
    pub dir: PathBuf,

    /// Relative symlinks, or real copies for shares and tools that do not follow links.
    #[arg(long, value_name = "VIEW", default_value = "symlink")]
    pub view: ViewChoice,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

/// Durations such as `30s`, `90m`, `6h` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 30s, 90m or 6h");
    let signed: jiff::SignedDuration = text.trim().parse().map_err(|_| bad())?;
    Duration::try_from(signed).map_err(|_| bad())
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The port to listen on, on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8417)]
    pub port: u16,

    /// The limits the simulated API enforces per key, in fixed windows.
    #[arg(long, value_name = "SPEC", default_value = "2/s,60/min")]
    pub limits: RateSpec,

    /// Serve this identifier with this many bytes (repeatable), e.g.
    /// `--size big-video=2147483648`.
    #[arg(long, value_name = "ID=BYTES", value_parser = parse_size)]
    pub size: Vec<(String, u64)>,

    /// Serve every other identifier with this many bytes, instead of the
    /// default sizes by type (20 KiB to 1 MiB).
    #[arg(long, value_name = "BYTES")]
    pub every_size: Option<u64>,

    /// Answer 404 for this identifier (repeatable).
    #[arg(long, value_name = "ID")]
    pub not_found: Vec<String>,

    /// Answer 403 for this identifier (repeatable).
    #[arg(long, value_name = "ID")]
    pub forbidden: Vec<String>,
}

/// An http or https base URL: anything else (`file:`, `ftp:`) could never
/// answer, and would only cost every row its attempts.
pub fn parse_api_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|error| format!("bad URL {text:?}: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("bad URL {text:?}: expected http or https"));
    }
    Ok(url)
}

fn parse_size(text: &str) -> Result<(String, u64), String> {
    let (id, bytes) = text.rsplit_once('=').ok_or("expected ID=BYTES")?;
    let bytes = bytes.parse().map_err(|_| format!("{bytes:?} is not a number of bytes"))?;
    Ok((id.to_owned(), bytes))
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo's store and reports go.
    #[arg(long, value_name = "DIR", default_value = "demo-out")]
    pub out: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_leaves_unset_options_to_the_job_file_and_defaults() {
        let cli = Cli::parse_from(["identifai-fetch", "run", "m.csv", "--out", "o"]);
        let Command::Run(args) = cli.command else { panic!("not run") };
        assert_eq!(args.api_url, None);
        assert_eq!(args.tuning.rate, None);
        assert_eq!(args.tuning.concurrency, None);
        assert_eq!(args.output.view, None);
        assert!(!args.dry_run);
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-5m").is_err());
    }

    #[test]
    fn a_bad_rate_names_the_option() {
        let args = ["identifai-fetch", "run", "m", "--out", "o", "--rate", "5/day"];
        let error = Cli::try_parse_from(args).unwrap_err().to_string();
        assert!(error.contains("--rate") && error.contains("5/day"), "{error}");
    }

    #[test]
    fn every_subcommand_teaches_by_example() {
        let mut command = Cli::command();
        for sub in command.get_subcommands_mut() {
            let help = sub.render_long_help().to_string();
            assert!(help.contains("Example"), "`{}` has no example", sub.get_name());
        }
    }
}
