//! The `identifai-fetch` binary: parses the command line, starts logging,
//! runs the subcommand and maps its outcome to an exit code (see `--help`).

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use identifai_fetch::api::ApiKey;
use identifai_fetch::cli::{Cli, Command, RunArgs, SimulateArgs};
use identifai_fetch::demo;
use identifai_fetch::retry::RetryPolicy;
use identifai_fetch::run::{RunConfig, RunError, RunOutcome, run};
use identifai_fetch::simulator::{SimConfig, Simulator, WindowLimit};
use tracing_subscriber::EnvFilter;

/// Exit codes, as `--help` and the README document them.
const EXIT_RUN_STOPPED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_ROWS_FAILED: u8 = 3;
const EXIT_INTERRUPTED: u8 = 4;
const EXIT_LOCKED: u8 = 5;

/// The variable the API key is read from.
const KEY_VARIABLE: &str = "IDENTIFAI_API_KEY";

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run_command(args).await,
            Command::Simulate(args) => simulate_command(args).await,
            Command::Demo(args) => demo_command(&args.out).await,
        }
    })
}

/// Logs go to stderr, so stdout stays for what a user asked to see.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("identifai_fetch=info,warn"));
    let colour = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

async fn run_command(args: RunArgs) -> ExitCode {
    let key = match api_key(&args) {
        Ok(key) => key,
        Err(message) => return fail(EXIT_USAGE, &message),
    };
    let mut config = RunConfig::new(&args.manifest, &args.out, args.api_url, key);
    config.rate = args.tuning.rate;
    config.concurrency = usize::from(args.tuning.concurrency);
    config.retry = RetryPolicy::with_max_attempts(args.tuning.max_attempts);
    config.grace = args.tuning.grace;
    config.deadline = args.tuning.deadline;
    config.handle_signals = true;
    exit_code(run(config).await)
}

/// The key from `--api-key-file`, else from the environment; never a flag
/// value, which would show in `ps` and shell history.
fn api_key(args: &RunArgs) -> Result<ApiKey, String> {
    if let Some(path) = &args.api_key_file {
        return ApiKey::from_file(path);
    }
    match std::env::var(KEY_VARIABLE) {
        Ok(value) => ApiKey::new(&value)
            .ok_or_else(|| format!("{KEY_VARIABLE} is set but holds no usable key")),
        Err(_) => Err(format!(
            "no API key: set {KEY_VARIABLE} or pass --api-key-file PATH (nothing was requested)"
        )),
    }
}

fn exit_code(result: Result<RunOutcome, RunError>) -> ExitCode {
    match result {
        Err(error) if error.is_usage() => fail(EXIT_USAGE, &with_causes(&error)),
        Err(error) if error.is_locked() => fail(EXIT_LOCKED, &with_causes(&error)),
        Err(error) => fail(EXIT_RUN_STOPPED, &with_causes(&error)),
        Ok(outcome) => {
            let report = outcome.report_dir.join("report.csv");
            println!("report: {}", report.display());
            let summary = &outcome.summary;
            if let Some(reason) = summary.stopped.as_ref().filter(|_| summary.interrupted) {
                let resume = "run the same command again to resume";
                fail(EXIT_INTERRUPTED, &format!("the run was stopped ({reason}); {resume}"))
            } else if let Some(reason) = &summary.stopped {
                fail(EXIT_RUN_STOPPED, &format!("the run stopped: {reason}"))
            } else if summary.all_succeeded() {
                ExitCode::SUCCESS
            } else {
                let failed = summary.rows - summary.count_succeeded();
                eprintln!(
                    "{failed} of {} rows did not succeed; see {}",
                    summary.rows,
                    report.display()
                );
                ExitCode::from(EXIT_ROWS_FAILED)
            }
        }
    }
}

/// The error and its causes on one line, each cause once: some messages
/// already quote their cause.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("identifai-fetch: {message}");
    ExitCode::from(code)
}

async fn simulate_command(args: SimulateArgs) -> ExitCode {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    let limits = args.limits.limits().iter().map(|l| WindowLimit::new(l.calls, l.window));
    let mut config = SimConfig { limits: limits.collect(), ..SimConfig::default() };
    config.sizes.extend(args.size);
    config.every_size = args.every_size;
    config.not_found.extend(args.not_found);
    let simulator = match Simulator::start_on(config, address).await {
        Ok(simulator) => simulator,
        Err(error) => {
            return fail(EXIT_RUN_STOPPED, &format!("cannot listen on {address}: {error}"));
        }
    };
    println!("IdentifAI simulator listening on {}", simulator.api_url());
    println!("API key: {}", simulator.api_key());
    println!(
        "Try: IDENTIFAI_API_KEY={} identifai-fetch run jobs/demo/manifest.csv --out ./out --api-url {}",
        simulator.api_key(),
        simulator.api_url()
    );
    println!("Ctrl-C stops it.");
    let _ = tokio::signal::ctrl_c().await;
    simulator.shutdown().await;
    ExitCode::SUCCESS
}

async fn demo_command(out: &std::path::Path) -> ExitCode {
    match demo::run_demo(out).await.context("the demo could not run") {
        Ok(Ok(outcome)) if demo::went_as_designed(&outcome.summary) => {
            let report = outcome.report_dir.join("report.csv");
            println!("demo done: {} rows, one deliberately missing (404)", outcome.summary.rows);
            println!("report: {}", report.display());
            println!("files:  {}", out.join("objects").display());
            ExitCode::SUCCESS
        }
        Ok(result) => exit_code(result),
        Err(error) => fail(EXIT_RUN_STOPPED, &format!("{error:#}")),
    }
}
