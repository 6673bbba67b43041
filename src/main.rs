//! The `identifai-fetch` binary: parses the command line, starts logging,
//! runs the subcommand and maps its outcome to an exit code (see `--help`).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{CommandFactory, Parser};
use identifai_fetch::cli::{
    Cli, Command, CompletionsArgs, LinkArgs, LogFormat, ManArgs, PlanArgs, RunArgs, SimulateArgs,
    StatusArgs, VerifyArgs, ViewChoice,
};
use identifai_fetch::run::{RunError, RunOutcome, run_with_progress};
use identifai_fetch::settings::RunSettings;
use identifai_fetch::simulator::{SimConfig, Simulator, WindowLimit};
use identifai_fetch::{demo, metrics, plan, progress, status, verify, view};
use tracing_subscriber::EnvFilter;

/// Exit codes, as `--help` and the README document them.
const EXIT_RUN_STOPPED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_ROWS_FAILED: u8 = 3;
const EXIT_INTERRUPTED: u8 = 4;
const EXIT_LOCKED: u8 = 5;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run_command(args).await,
            Command::Plan(args) => plan_command(&args),
            Command::Verify(args) => with_logs(LogFormat::Text, || verify_command(&args)),
            Command::Status(args) => status_command(&args),
            Command::Link(args) => with_logs(LogFormat::Text, || link_command(&args)),
            Command::Simulate(args) => {
                init_logging(LogFormat::Text);
                simulate_command(args).await
            }
            Command::Demo(args) => {
                init_logging(LogFormat::Text);
                demo_command(&args.out).await
            }
            Command::Completions(args) => completions_command(&args),
            Command::Man(args) => man_command(&args),
        }
    })
}

/// Set once JSON logging is on: from then on every line on stderr must be a
/// JSON object, the closing messages included, for log shippers to parse.
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Logs go to stderr (above the progress bar, when one is drawn), so
/// stdout stays for what a user asked to see.
fn init_logging(format: LogFormat) {
    JSON_LOGS.store(format == LogFormat::Json, Ordering::Relaxed);
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("identifai_fetch=info,warn"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(progress::log_writer());
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // JSON lines carry the row's span (line, type, id) with every event.
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
}

fn with_logs(format: LogFormat, command: impl FnOnce() -> ExitCode) -> ExitCode {
    init_logging(format);
    command()
}

async fn run_command(args: RunArgs) -> ExitCode {
    let settings = match RunSettings::resolve(args) {
        Ok(settings) => settings,
        Err(error) => return fail(EXIT_USAGE, &with_causes(&error)),
    };
    if settings.dry_run {
        return print_plan(&settings.manifest, &settings.out, &settings.rate);
    }
    let key = match settings.api_key(|name| std::env::var(name).ok()) {
        Ok(key) => key,
        Err(error) => return fail(EXIT_USAGE, &error.to_string()),
    };
    init_logging(settings.log_format);
    let mode = progress::choose(
        std::io::stderr().is_terminal(),
        settings.progress_interval,
        settings.quiet,
    );
    let result = run_with_progress(settings.run_config(key), mode).await;
    if let Ok(outcome) = &result {
        after_run(&settings, outcome);
    }
    exit_code(result)
}

/// The by-id view and the metrics file, once the report is written.
fn after_run(settings: &RunSettings, outcome: &RunOutcome) {
    if let Some(mode) = view_mode(settings.view) {
        match view::refresh(&settings.out, mode) {
            Ok(Some(stats)) => {
                tracing::info!(linked = stats.linked, copied = stats.copied, "by-id view rebuilt")
            }
            Ok(None) => tracing::debug!("by-id view unchanged: the journal has not changed"),
            Err(error) => {
                tracing::warn!(error = %with_causes(&error), "cannot rebuild the by-id view")
            }
        }
    }
    if let Some(path) = &settings.metrics_file {
        let now = std::time::SystemTime::now();
        if let Err(error) = metrics::write(path, &outcome.summary, now) {
            tracing::warn!(path = %path.display(), error = %error, "cannot write the metrics file");
        }
    }
}

fn view_mode(choice: ViewChoice) -> Option<view::ViewMode> {
    match choice {
        ViewChoice::Symlink => Some(view::ViewMode::Symlink),
        ViewChoice::Copy => Some(view::ViewMode::Copy),
        ViewChoice::None => None,
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
                let rows = summary.rows;
                say(
                    EXIT_ROWS_FAILED,
                    &format!("{failed} of {rows} rows did not succeed; see {}", report.display()),
                )
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
    say(code, &format!("identifai-fetch: {message}"))
}

/// The closing message on stderr: a plain line for people, or a log event
/// when the logs are JSON lines.
fn say(code: u8, message: &str) -> ExitCode {
    if JSON_LOGS.load(Ordering::Relaxed) {
        tracing::error!(exit_code = code, "{message}");
    } else {
        eprintln!("{message}");
    }
    ExitCode::from(code)
}

fn plan_command(args: &PlanArgs) -> ExitCode {
    print_plan(&args.manifest, &args.out, &args.rate)
}

fn print_plan(manifest: &Path, out: &Path, rate: &identifai_fetch::rate::RateSpec) -> ExitCode {
    match plan::plan(manifest, out) {
        Ok(plan) => {
            print!("{}", plan::render(&plan, rate));
            ExitCode::SUCCESS
        }
        Err(error) => fail(EXIT_USAGE, &with_causes(&error)),
    }
}

fn verify_command(args: &VerifyArgs) -> ExitCode {
    let options = verify::VerifyOptions { quick: args.quick, threads: None };
    let outcome = match verify::verify(&args.dir, &options) {
        Ok(outcome) => outcome,
        Err(error) => return fail(EXIT_RUN_STOPPED, &with_causes(&error)),
    };
    print_verification(&outcome);
    if outcome.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_ROWS_FAILED) }
}

fn print_verification(outcome: &verify::VerifyOutcome) {
    if let Some(holder) = &outcome.run_in_progress {
        println!("note: a run is in progress ({holder}); its downloads are not checked yet");
    }
    let size = identifai_fetch::disk::human_bytes(outcome.bytes_checked);
    println!(
        "checked {} objects ({size}) in {:.1}s",
        outcome.objects_checked,
        outcome.elapsed.as_secs_f64()
    );
    for bad in &outcome.mismatched {
        println!(
            "MISMATCH {}: content hashes to {}; moved to {}",
            bad.object.display(),
            bad.found,
            bad.quarantined.display()
        );
    }
    for gone in &outcome.missing {
        println!("MISSING  {} {}: {} ({})", gone.kind, gone.id, gone.sha256, gone.reason);
    }
    for stray in &outcome.stray {
        println!("STRAY    {} (moved to quarantine/)", stray.display());
    }
    for unreadable in &outcome.unreadable {
        println!("UNREADABLE {}: {}", unreadable.object.display(), unreadable.error);
    }
    match &outcome.view {
        verify::ViewRepair::Unneeded => {}
        verify::ViewRepair::Rebuilt => println!("by-id view rebuilt without the files that went"),
        verify::ViewRepair::Deferred(reason) => println!(
            "note: by-id/ may still show files that went ({reason}); \
             run `identifai-fetch link DIR` once the run is over"
        ),
    }
    let verdict = if outcome.is_clean() { "clean" } else { "PROBLEMS FOUND" };
    println!("{verdict}; report: {}", outcome.report_path.display());
}

fn status_command(args: &StatusArgs) -> ExitCode {
    match status::status(&args.dir, args.last) {
        Ok(found) => {
            print!("{}", status::render(&found));
            ExitCode::SUCCESS
        }
        Err(error) => fail(EXIT_RUN_STOPPED, &with_causes(&error)),
    }
}

fn link_command(args: &LinkArgs) -> ExitCode {
    let Some(mode) = view_mode(args.view) else {
        return fail(EXIT_USAGE, "--view none builds nothing; use symlink or copy");
    };
    // Before the lock, which would create the folder and its lock file.
    if let Err(error) = view::check_store(&args.dir) {
        return fail(EXIT_USAGE, &with_causes(&error));
    }
    // A run rebuilds the view too: one writer at a time.
    let _lock = match identifai_fetch::lock::StoreLock::acquire(&args.dir) {
        Ok(lock) => lock,
        Err(error) => return fail(EXIT_LOCKED, &with_causes(&error)),
    };
    match view::rebuild(&args.dir, mode) {
        Ok(stats) => {
            let made = stats.linked + stats.copied;
            println!(
                "{}: {made} entries ({} skipped)",
                args.dir.join("by-id").display(),
                stats.skipped
            );
            ExitCode::SUCCESS
        }
        Err(error) => fail(EXIT_RUN_STOPPED, &with_causes(&error)),
    }
}

fn completions_command(args: &CompletionsArgs) -> ExitCode {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "identifai-fetch", &mut std::io::stdout());
    ExitCode::SUCCESS
}

fn man_command(args: &ManArgs) -> ExitCode {
    let written = match &args.dir {
        Some(dir) => clap_mangen::generate_to(Cli::command(), dir),
        None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(EXIT_RUN_STOPPED, &format!("cannot write the man page: {error}")),
    }
}

async fn simulate_command(args: SimulateArgs) -> ExitCode {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    let limits = args.limits.limits().iter().map(|l| WindowLimit::new(l.calls, l.window));
    let mut config = SimConfig { limits: limits.collect(), ..SimConfig::default() };
    config.sizes.extend(args.size);
    config.every_size = args.every_size;
    config.not_found.extend(args.not_found);
    config.forbidden.extend(args.forbidden);
    let simulator = match Simulator::start_on(config, address).await {
        Ok(simulator) => simulator,
        Err(error) => {
            return fail(EXIT_RUN_STOPPED, &format!("cannot listen on {address}: {error}"));
        }
    };
    println!("IdentifAI simulator listening on {}", simulator.api_url());
    println!("API key: {}", simulator.api_key());
    let (key, url) = (simulator.api_key(), simulator.api_url());
    println!("Try: IDENTIFAI_API_KEY={key} identifai-fetch run jobs/demo/manifest.csv \\");
    println!("         --out ./out --api-url {url}");
    println!("Ctrl-C stops it.");
    let _ = tokio::signal::ctrl_c().await;
    simulator.shutdown().await;
    ExitCode::SUCCESS
}

async fn demo_command(out: &Path) -> ExitCode {
    let every = std::time::Duration::from_secs(5);
    let mode = progress::choose(std::io::stderr().is_terminal(), every, false);
    let demo = demo::run_demo_with_progress(out, mode).await;
    match demo.context("the demo could not run") {
        Ok(Ok(outcome)) if demo::went_as_designed(&outcome.summary) => {
            if let Err(error) = view::rebuild(out, view::ViewMode::Symlink) {
                tracing::warn!(error = %error, "cannot build the by-id view");
            }
            let report = outcome.report_dir.join("report.csv");
            println!("demo done: {} rows, one deliberately missing (404)", outcome.summary.rows);
            println!("report: {}", report.display());
            println!("files:  {}", out.join("by-id").display());
            ExitCode::SUCCESS
        }
        Ok(result) => exit_code(result),
        Err(error) => fail(EXIT_RUN_STOPPED, &format!("{error:#}")),
    }
}
