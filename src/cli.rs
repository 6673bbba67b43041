//! The command line: subcommands, options and the help text that teaches them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use reqwest::Url;

use crate::rate::RateSpec;

const EXIT_CODES: &str = "\
Exit codes:
  0  every row was downloaded (or is a duplicate of one that was)
  1  the run could not go on: the API refused the key (401), the output
     folder is not writable, a disk or I/O error
  2  usage or configuration error: a bad option, no API key, a manifest
     without the required columns
  3  the run finished but some rows did not succeed; the report says which
  4  the run was stopped (SIGINT, SIGTERM or --deadline); run it again to resume
  5  another run holds the output folder's lock";

const RUN_EXAMPLES: &str = "\
Examples:
  # One investigation's manifest, key from the environment:
  IDENTIFAI_API_KEY=... identifai-fetch run case-0412.csv --out /srv/evidence

  # Nightly, key from a file (a systemd credential or a Kubernetes secret):
  identifai-fetch run nightly.csv --out /srv/evidence \\
      --api-key-file /run/credentials/identifai-fetch.service/api-key

  # Against the built-in simulator (see `identifai-fetch simulate`):
  IDENTIFAI_API_KEY=sim-key identifai-fetch run jobs/demo/manifest.csv \\
      --out ./out --api-url http://127.0.0.1:8417";

/// Downloads evidence files from the IdentifAI API v2 in bulk: rate-limited,
/// retried, deduplicated and stored by SHA-256, with a report for every row.
#[derive(Debug, Parser)]
#[command(name = "identifai-fetch", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download every row of a manifest into a content-addressed store.
    #[command(after_help = format!("{RUN_EXAMPLES}\n\n{EXIT_CODES}"))]
    Run(RunArgs),
    /// Run the built-in IdentifAI API simulator, to try the tool without an account.
    #[command(after_help = "Examples:\n  identifai-fetch simulate --port 8417\n  \
        identifai-fetch simulate --limits 100/s --size big-video=2147483648")]
    Simulate(SimulateArgs),
    /// Start the simulator and download the demo manifest into ./demo-out.
    #[command(after_help = format!("Example:\n  cargo run --release -- demo\n\n{EXIT_CODES}"))]
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The CSV manifest: a header with `type`, `identifier` and optionally
    /// `frame_or_track_id`; other columns are carried into the report.
    pub manifest: PathBuf,

    /// The output folder: `objects/`, `runs/<run-id>/` reports and `tmp/` go here.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// The API's base URL.
    #[arg(long, value_name = "URL", default_value = "https://api.identifai.net")]
    pub api_url: Url,

    #[command(flatten)]
    pub tuning: Tuning,

    /// Read the API key from this file instead of IDENTIFAI_API_KEY.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
}

/// How hard a run may push.
#[derive(Debug, Args)]
pub struct Tuning {
    /// API call limits, all enforced together: N/s, N/min or N/h, comma
    /// separated. N/min means at most N calls in any 60-second window.
    #[arg(long, value_name = "SPEC", default_value = "2/s,60/min")]
    pub rate: RateSpec,

    /// Downloads in flight at once (API calls are paced separately).
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Tries per row before it is reported failed (429 answers excepted).
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// After SIGINT, SIGTERM or the deadline, how long downloads in flight
    /// may take to finish before they are stopped (their partial files are
    /// kept and resumed next time).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Stop gracefully after this long, e.g. `6h` to fit a cron window.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub deadline: Option<Duration>,
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
    fn run_takes_its_defaults() {
        let cli = Cli::parse_from(["identifai-fetch", "run", "m.csv", "--out", "o"]);
        let Command::Run(args) = cli.command else { panic!("not run") };
        assert_eq!(args.api_url.as_str(), "https://api.identifai.net/");
        assert_eq!(args.tuning.rate, RateSpec::default());
        assert_eq!(args.tuning.concurrency, 4);
        assert_eq!(args.tuning.max_attempts, 8);
        assert_eq!(args.tuning.grace, Duration::from_secs(30));
        assert_eq!(args.tuning.deadline, None);
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
        let error =
            Cli::try_parse_from(["identifai-fetch", "run", "m", "--out", "o", "--rate", "5/day"])
                .unwrap_err()
                .to_string();
        assert!(error.contains("--rate") && error.contains("5/day"), "{error}");
    }
}
