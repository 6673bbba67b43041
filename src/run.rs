//! A run: the manifest's rows through the API and into the store, concurrently.
//!
//! The manifest is read on a blocking thread and handed over a bounded
//! channel. A row the journal already knows as stored is answered at once,
//! with no API call. Each other (type, requested id) gets a task; repeats
//! wait for it and are reported as duplicates. Two limits shape the tasks:
//!
//! - at most `2 × concurrency` rows are in play, so up to `concurrency`
//!   rows can hold a fresh URL, ready for the next free download slot, while
//!   `concurrency` rows download. Resolving further ahead would only let
//!   URLs age (they expire after 60 minutes) and spend API budget early;
//! - at most `concurrency` downloads run at once.
//!
//! Every API call, wherever it comes from, passes the one [`ApiGate`].
//! A failure is handed to [`retry::classify`] and the row does what it says.
//! A row is done once its outcome is in the journal, on disk; only then is it
//! reported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Client, Url};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use crate::api::{ApiClient, ApiError, ApiKey, Lease};
use crate::fetch::{FetchError, Fetched, StorageClient, hex};
use crate::journal::{ContentTypes, JournalEntry, JournalWriter, Outcome, Outcomes, decode_sha256};
use crate::lock::{LockError, StoreLock};
use crate::manifest::{Entry, InvalidRow, Kind, Manifest, ManifestError, Row};
use crate::progress;
use crate::rate::{ApiGate, RateSpec};
use crate::report::{Report, RowRecord, RowStatus, Summary};
use crate::retry::{self, Decision, Failure, RetryBudget, RetryPolicy};
use crate::shutdown::{Shutdown, StopCause};
use crate::store::{Store, StoreError};

/// A signed URL is valid for 60 minutes; by default we start no download on
/// one older than this, so that a slow start cannot meet an expired signature.
pub const SAFE_LEASE_AGE: Duration = Duration::from_secs(50 * 60);

/// Manifest entries read ahead of the tasks.
const READ_AHEAD: usize = 1024;

/// Everything a run needs. `Debug` shows no secret: the key is redacted.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub manifest: PathBuf,
    pub out: PathBuf,
    pub api_url: Url,
    pub api_key: ApiKey,
    pub rate: RateSpec,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// After a stop signal or the deadline, how long downloads in flight
    /// may take to finish.
    pub grace: Duration,
    /// Stop gracefully this long after the start.
    pub deadline: Option<Duration>,
    /// Stop gracefully on SIGINT and SIGTERM (the binary does; tests that
    /// run in-process do not).
    pub handle_signals: bool,
    /// No download starts on a signed URL older than this.
    pub max_url_age: Duration,
    /// Fixes the backoff jitter, for tests; random when `None`.
    pub jitter_seed: Option<u64>,
}

impl RunConfig {
    /// A config with the documented defaults for everything but the
    /// manifest, the output folder, the API and the key.
    pub fn new(manifest: &Path, out: &Path, api_url: Url, api_key: ApiKey) -> RunConfig {
        RunConfig {
            manifest: manifest.to_path_buf(),
            out: out.to_path_buf(),
            api_url,
            api_key,
            rate: RateSpec::default(),
            concurrency: 4,
            retry: RetryPolicy::with_max_attempts(8),
            grace: Duration::from_secs(30),
            deadline: None,
            handle_signals: false,
            max_url_age: SAFE_LEASE_AGE,
            jitter_seed: None,
        }
    }
}

/// Why a run could not start. A run that starts always ends with a report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("output folder unusable: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("cannot use the journal {}: {source}", path.display())]
    Journal { path: PathBuf, source: std::io::Error },
    #[error("cannot write the report in {}: {source}{}", path.display(), space_note(source, path))]
    Report { path: PathBuf, source: std::io::Error },
    #[error("cannot set up the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

/// After a full disk, how much space is left where the write failed; any
/// other error says nothing more.
fn space_note(error: &std::io::Error, path: &Path) -> String {
    match error.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            format!("; {}", crate::disk::free_space_text(path))
        }
        _ => String::new(),
    }
}

impl RunError {
    /// Usage errors (exit 2) as opposed to a run that could not go on (1).
    pub fn is_usage(&self) -> bool {
        matches!(self, RunError::Manifest(_))
    }

    /// Another run holds the store (exit 5).
    pub fn is_locked(&self) -> bool {
        matches!(self, RunError::Locked(LockError::Held { .. } | LockError::ForeignHost { .. }))
    }
}

/// What a finished (or stopped) run hands back.
#[derive(Debug)]
pub struct RunOutcome {
    pub summary: Summary,
    pub report_dir: PathBuf,
}

/// Runs the manifest to the end, or until something stops the whole run.
pub async fn run(config: RunConfig) -> Result<RunOutcome, RunError> {
    run_with_progress(config, progress::Mode::Quiet).await
}

/// [`run`], showing progress as `mode` says.
pub async fn run_with_progress(
    config: RunConfig,
    mode: progress::Mode,
) -> Result<RunOutcome, RunError> {
    let manifest = Manifest::open(&config.manifest)?;
    // The lock comes first: nothing in the folder is touched while another
    // run may be writing it.
    let lock = StoreLock::acquire(&config.out)?;
    let store = Store::open(&config.out)?;
    let started_wall = std::time::SystemTime::now();
    let cleaned = store.clean_tmp(started_wall)?;
    let journal_path = store.root().join(crate::journal::FILE_NAME);
    let journal_error = |source| RunError::Journal { path: journal_path.clone(), source };
    let known = Outcomes::load(store.root()).map_err(journal_error)?;
    let journal = JournalWriter::open(store.root()).map_err(journal_error)?;
    let (run_id, report) = open_report(&store, manifest.extra_columns())?;
    info!(
        run_id = %run_id,
        manifest = %config.manifest.display(),
        out = %config.out.display(),
        rate = %config.rate,
        concurrency = config.concurrency,
        known = known.len(),
        cleaned_tmp_files = cleaned,
        "run started"
    );
    let context = Arc::new(Context::new(&config, store, report, known, journal, run_id.clone())?);
    count_in_background(&context, &config);
    let reporter = progress::Reporter::start(mode, context.clone());
    let watcher = spawn_stop_watch(&context, &config);
    dispatch(&context, read_in_background(manifest)).await;
    context.journal_settle().await;
    watcher.abort();
    reporter.finish().await;
    let started = context.started;
    let summary = context.summarize(run_id, started.elapsed());
    let report_dir = context.finish_report(&summary)?;
    log_summary(&summary);
    if let Err(error) = lock.release() {
        warn!(error = %error, "could not clear the lock record");
    }
    Ok(RunOutcome { summary, report_dir })
}

fn spawn_stop_watch(context: &Arc<Context>, config: &RunConfig) -> tokio::task::JoinHandle<()> {
    let context = context.clone();
    let (grace, deadline, signals) = (config.grace, config.deadline, config.handle_signals);
    tokio::spawn(async move {
        if signals {
            context.shutdown.watch(grace, deadline).await;
        } else if let Some(deadline) = deadline {
            tokio::time::sleep(deadline).await;
            let cause = StopCause::Interrupted("the --deadline was reached".into());
            context.shutdown.stop_gracefully(cause);
            tokio::time::sleep(grace).await;
            context.shutdown.stop_now(StopCause::Interrupted("grace period over".into()));
        }
    })
}

/// Counts the manifest's rows, and those that need an API call, on a
/// blocking thread while the run goes on: the progress bar's total and the
/// ETA come from it. The run itself never waits for it.
fn count_in_background(context: &Arc<Context>, config: &RunConfig) {
    let context = context.clone();
    let manifest = config.manifest.clone();
    tokio::task::spawn_blocking(move || {
        // The same journal the run decides by, read at the start: the
        // count is of the work as it stood then.
        let counted = crate::plan::plan_with(&manifest, &context.store, &context.known);
        if let Ok(counted) = counted {
            let _ = context.counted.set(counted);
        }
    });
}

impl progress::Source for Context {
    fn snapshot(&self) -> progress::Snapshot {
        let (rows_done, rows_failed) = {
            let ledger = self.ledger();
            let counts = ledger.report.as_ref().map(Report::counts).unwrap_or_default();
            let succeeded: u64 = counts.get("ok").copied().unwrap_or(0)
                + counts.get("duplicate").copied().unwrap_or(0);
            (ledger.rows, ledger.rows.saturating_sub(succeeded))
        };
        let counted = self.counted.get();
        let fetched = self.rows_fetched.load(Ordering::Relaxed);
        let gate = self.api.gate();
        progress::Snapshot {
            rows_total: counted.map(|plan| plan.rows),
            rows_done,
            rows_failed,
            bytes_received: self.storage.received_bytes(),
            api_calls: gate.calls(),
            api_calls_left: counted.map(|plan| plan.to_fetch.saturating_sub(fetched)),
            api_spacing: gate.spacing(),
            paused_for: gate.pause_remaining(),
            elapsed: self.started.elapsed(),
        }
    }
}

/// A sortable, unique run id: the UTC start time, with a suffix in the rare
/// case that two runs start in the same second.
fn open_report(store: &Store, extra: &[String]) -> Result<(String, Report), RunError> {
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    let runs = store.runs_dir();
    // Two digits keep the suffixed ids in order when sorted as text.
    for n in 1..=99 {
        let run_id = if n == 1 { stamp.clone() } else { format!("{stamp}-{n:02}") };
        let dir = runs.join(&run_id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                let report = Report::create(&runs, &run_id, extra)
                    .map_err(|source| RunError::Report { path: dir, source })?;
                return Ok((run_id, report));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(RunError::Report { path: dir, source }),
        }
    }
    let source = std::io::Error::other("99 runs already started this second");
    Err(RunError::Report { path: runs, source })
}

/// Reads the manifest on a blocking thread, a bounded distance ahead.
fn read_in_background(
    manifest: Manifest<std::fs::File>,
) -> mpsc::Receiver<Result<Entry, ManifestError>> {
    let (sender, receiver) = mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        for entry in manifest {
            // The run dropped the receiver: nobody wants the rest.
            if sender.blocking_send(entry).is_err() {
                return;
            }
        }
    });
    receiver
}

/// Hands each entry to the ledger or to a new task, then waits for them all.
/// Once the run is stopping, the remaining rows are reported unfinished.
async fn dispatch(
    context: &Arc<Context>,
    mut entries: mpsc::Receiver<Result<Entry, ManifestError>>,
) {
    let in_play = Arc::new(Semaphore::new(context.concurrency * 2));
    let mut tasks = JoinSet::new();
    let mut position = 0u64;
    while let Some(entry) = entries.recv().await {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                let reason = format!("cannot read the manifest: {error}");
                context.shutdown.stop_now(StopCause::Fatal(reason));
                break;
            }
        };
        let this = position;
        position += 1;
        let row = match entry {
            Entry::Invalid(bad) => {
                context.record(this, invalid_record(bad));
                continue;
            }
            Entry::Valid(row) => row,
        };
        if !context.claim(&row, this) {
            continue; // Stored already, or a duplicate answered with its first.
        }
        let permit = tokio::select! {
            permit = in_play.clone().acquire_owned() => permit.expect("never closed"),
            () = context.shutdown.no_new_work() => {
                context.finish_row(this, &row, RowResult::unfinished(context));
                continue;
            }
        };
        if context.shutdown.is_stopping() {
            context.finish_row(this, &row, RowResult::unfinished(context));
            continue;
        }
        tasks.spawn(row_task(context.clone(), row, this, permit));
        reap(&mut tasks);
    }
    while let Some(joined) = tasks.join_next().await {
        log_panic(joined);
    }
}

fn reap(tasks: &mut JoinSet<()>) {
    while let Some(joined) = tasks.try_join_next() {
        log_panic(joined);
    }
}

fn log_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined {
        tracing::error!(error = %error, "a row task failed; its row is missing from the report");
    }
}

/// One row from first API call to final outcome.
async fn row_task(context: Arc<Context>, row: Row, position: u64, _permit: OwnedSemaphorePermit) {
    let span = info_span!(
        "row",
        line = row.line,
        kind = %row.kind,
        identifier = %row.identifier,
        frame_or_track_id = row.frame_or_track_id.as_deref(),
    );
    let result = tokio::select! {
        result = fetch_row(&context, &row).instrument(span) => result,
        () = context.shutdown.everything_ends() => RowResult::unfinished(&context),
    };
    context.rows_fetched.fetch_add(1, Ordering::Relaxed);
    if result.finished {
        match context.journal_row(&row, &result).await {
            // Journaled: a record of a whole download has done its job.
            Ok(()) => forget_finished_download(&context.store, &row),
            Err(error) => context.stop_for_journal(&error),
        }
    }
    context.finish_row(position, &row, result);
}

fn forget_finished_download(store: &Store, row: &Row) {
    let partial = store.partial(row.kind, row.requested_id());
    if partial.finished().is_some() {
        partial.discard();
    }
}

/// Why one try of a row failed.
enum TryError {
    Api(ApiError),
    Storage(FetchError),
    /// The run is stopping; this row must not start anything new.
    Stopping,
}

impl TryError {
    fn describe(&self) -> String {
        match self {
            TryError::Api(error) => error.to_string(),
            TryError::Storage(error) => error.to_string(),
            TryError::Stopping => "the run is stopping".to_owned(),
        }
    }
}

/// A row's end, before it becomes a report line.
struct RowResult {
    status: RowStatus,
    fetched: Option<Fetched>,
    attempts: u32,
    api_calls: u32,
    error: String,
    /// False when the run stopped before the row could end on its own: it
    /// goes to the report, but not to the journal, so a rerun tries it.
    finished: bool,
}

impl RowResult {
    /// A row whose file the store already holds: nothing was asked.
    fn stored(fetched: Fetched) -> RowResult {
        RowResult {
            status: RowStatus::Ok,
            fetched: Some(fetched),
            attempts: 0,
            api_calls: 0,
            error: String::new(),
            finished: true,
        }
    }

    fn unfinished(context: &Context) -> RowResult {
        let cause = context.shutdown.cause();
        let reason = cause.as_ref().map_or("the run stopped", StopCause::reason);
        RowResult {
            status: RowStatus::Failed,
            fetched: None,
            attempts: 0,
            api_calls: 0,
            error: format!("not finished: {reason}"),
            finished: false,
        }
    }
}

/// Tries a row until it is stored or the classifier says it is over.
async fn fetch_row(context: &Context, row: &Row) -> RowResult {
    let seed = context.jitter_seed ^ row.line;
    let mut budget = RetryBudget::new(context.retry.clone(), seed);
    let mut lease = None;
    let mut api_calls = 0;
    loop {
        // Before every try: an earlier run, or a try of this one cut off
        // after its last byte, may have left the file whole already.
        let tries_made = budget.attempt() - 1;
        if let Some(result) = recover_finished(context, row, tries_made, api_calls).await {
            return result;
        }
        let error = match try_once(context, row, &mut lease, &mut api_calls).await {
            Ok(fetched) => {
                let attempts = budget.attempt();
                let (status, error) = check_expected_hash(row, &fetched);
                let fetched = Some(fetched);
                return RowResult { status, fetched, attempts, api_calls, error, finished: true };
            }
            Err(error) => error,
        };
        let end = |status, budget: &RetryBudget| RowResult {
            status,
            fetched: None,
            attempts: budget.attempt(),
            api_calls,
            error: error.describe(),
            finished: true,
        };
        let failure = match &error {
            TryError::Api(api) => Failure::Api(api),
            TryError::Storage(storage) => Failure::Storage(storage),
            TryError::Stopping => {
                return RowResult { api_calls, ..RowResult::unfinished(context) };
            }
        };
        let decision = retry::classify(failure);
        if matches!(error, TryError::Storage(_)) && decision != Decision::Reresolve {
            budget.storage_accepted();
        }
        match decision {
            Decision::Retry => {
                let Some(delay) = budget.next_delay() else {
                    return end(RowStatus::Failed, &budget);
                };
                context.retries.fetch_add(1, Ordering::Relaxed);
                info!(
                    attempt = budget.attempt(),
                    max = budget.max_attempts(),
                    wait_ms = delay.as_millis() as u64,
                    error = %error.describe(),
                    "retrying"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = context.shutdown.no_new_work() => {}
                }
            }
            Decision::RateLimited { wait } => {
                context.api.gate().pause_for(wait);
                warn!(wait_s = wait.as_secs_f64(), "API rate limit hit: pausing every API call");
                if !budget.take_rate_limited() {
                    return end(RowStatus::Failed, &budget);
                }
            }
            Decision::Reresolve => {
                info!(error = %error.describe(), "storage refused the URL: asking for a fresh one");
                lease = None;
                if !budget.take_reresolve() {
                    return end(RowStatus::Failed, &budget);
                }
            }
            Decision::EndRow(status) => {
                context.store.partial(row.kind, row.requested_id()).discard();
                return end(status, &budget);
            }
            Decision::StopRun => {
                let result = end(RowStatus::Failed, &budget);
                context.shutdown.stop_now(StopCause::Fatal(stop_reason(&error)));
                return result;
            }
        }
    }
}

/// A row received whole (by an earlier run or try) but not journaled or
/// not stored: finished from its partial file, with no request.
async fn recover_finished(
    context: &Context,
    row: &Row,
    attempts: u32,
    api_calls: u32,
) -> Option<RowResult> {
    let (kind, id) = (row.kind, row.requested_id());
    let fetched = match context.storage.recover(&context.store, kind, id).await {
        Ok(found) => found?,
        Err(error) => {
            let reason = stop_reason(&TryError::Storage(error));
            context.shutdown.stop_now(StopCause::Fatal(reason));
            return Some(RowResult { finished: false, ..RowResult::unfinished(context) });
        }
    };
    info!("finished from a download received whole before, with no request");
    let (status, error) = check_expected_hash(row, &fetched);
    let fetched = Some(fetched);
    Some(RowResult { status, fetched, attempts, api_calls, error, finished: true })
}

/// A download whose hash is not the one the manifest names is kept (it is
/// stored under its own hash, so nothing is corrupt) but the row says so.
fn check_expected_hash(row: &Row, fetched: &Fetched) -> (RowStatus, String) {
    match &row.sha256 {
        Some(expected) if *expected != fetched.sha256 => {
            let error = format!("expected sha256 {expected}, got {}", fetched.sha256);
            (RowStatus::HashMismatch, error)
        }
        _ => (RowStatus::Ok, String::new()),
    }
}

fn stop_reason(error: &TryError) -> String {
    match error {
        TryError::Api(ApiError::Status { status, .. }) if status.as_u16() == 401 => {
            "the API refused the key (401 Unauthorized): check IDENTIFAI_API_KEY or --api-key-file"
                .to_owned()
        }
        TryError::Storage(FetchError::Io { path, .. }) => {
            let free = crate::disk::free_space_text(path);
            format!("{}; {free}", error.describe())
        }
        other => other.describe(),
    }
}

/// One try: a URL (reused while fresh), a download slot, the download.
async fn try_once(
    context: &Context,
    row: &Row,
    lease: &mut Option<Lease>,
    api_calls: &mut u32,
) -> Result<Fetched, TryError> {
    let mut current = match lease.take() {
        Some(fresh) if fresh.age() < context.max_url_age => fresh,
        _ => resolve(context, row, api_calls).await?,
    };
    // Stop first: once the run is stopping, a row back from a retry must
    // not start a new download even when a slot is free.
    let _slot = tokio::select! {
        biased;
        () = context.shutdown.no_new_work() => return Err(TryError::Stopping),
        slot = context.downloads.acquire() => slot.expect("never closed"),
    };
    // The wait for a slot can be long when large files are downloading.
    if current.age() >= context.max_url_age {
        current = resolve(context, row, api_calls).await?;
    }
    let (kind, id) = (row.kind, row.requested_id());
    let result = context.storage.fetch(&current, &context.store, kind, id).await;
    *lease = Some(current);
    let fetched = result.map_err(TryError::Storage)?;
    if fetched.resumed_from > 0 {
        info!(from_byte = fetched.resumed_from, "resumed a partial download");
    }
    Ok(fetched)
}

/// Asks the API for a URL, unless the run is stopping: then no new call.
async fn resolve(context: &Context, row: &Row, api_calls: &mut u32) -> Result<Lease, TryError> {
    let call =
        async { context.api.resolve(row.kind, row.requested_id()).await.map_err(TryError::Api) };
    tokio::select! {
        biased;
        () = context.shutdown.no_new_work() => Err(TryError::Stopping),
        lease = call => {
            *api_calls += 1;
            lease
        }
    }
}

/// The key rows are deduplicated by: what the API is asked for.
type RowKey = (Kind, String);

fn row_key(row: &Row) -> RowKey {
    (row.kind, row.requested_id().to_owned())
}

/// What the run knows of a key: still being fetched (with the duplicates
/// waiting on it), or finished.
enum KeyState {
    Pending { waiting: Vec<(u64, Row)> },
    Done(Settled),
}

/// A finished key, kept so that later duplicates can be answered at once,
/// in the compact form: the hash as bytes and the content type shared.
#[derive(Clone)]
struct Settled {
    line: u64,
    outcome: Outcome,
    error: Box<str>,
}

/// State shared by the tasks: clients, limits, the report and the tallies.
struct Context {
    api: ApiClient,
    storage: StorageClient,
    store: Store,
    known: Outcomes,
    /// Records of whole downloads an earlier run left in `tmp/`; forgotten
    /// when their row turns out to be stored already.
    finished_records: std::collections::HashSet<PathBuf>,
    journal: JournalWriter,
    run_id: String,
    retry: RetryPolicy,
    max_url_age: Duration,
    jitter_seed: u64,
    concurrency: usize,
    downloads: Semaphore,
    shutdown: Shutdown,
    ledger: Mutex<Ledger>,
    retries: AtomicU64,
    already_stored: AtomicU64,
    /// Rows whose task ended, for the API calls still to come.
    rows_fetched: AtomicU64,
    /// The background count of the manifest, once done.
    counted: std::sync::OnceLock<crate::plan::Plan>,
    started: Instant,
}

struct Ledger {
    /// Taken out when the run finishes.
    report: Option<Report>,
    // Known limit: one entry per distinct request for the run's life, so
    // that a duplicate far down the manifest is answered at once: the key
    // and a compact outcome, about 150 bytes a row.
    keys: HashMap<RowKey, KeyState>,
    content_types: ContentTypes,
    rows: u64,
    report_error: Option<std::io::Error>,
}

impl Context {
    fn new(
        config: &RunConfig,
        store: Store,
        report: Report,
        known: Outcomes,
        journal: JournalWriter,
        run_id: String,
    ) -> Result<Context, RunError> {
        let gate = Arc::new(ApiGate::new(&config.rate));
        let api_http = http_client(Some(Duration::from_secs(60))).map_err(RunError::Http)?;
        // No overall timeout for storage: a 5 GB video takes what it takes;
        // the read timeout still catches a stalled body.
        let storage_http = http_client(None).map_err(RunError::Http)?;
        let concurrency = config.concurrency.max(1);
        let ledger = Ledger {
            report: Some(report),
            keys: HashMap::new(),
            content_types: ContentTypes::default(),
            rows: 0,
            report_error: None,
        };
        Ok(Context {
            api: ApiClient::new(api_http, config.api_url.clone(), config.api_key.clone(), gate),
            storage: StorageClient::new(storage_http),
            finished_records: store.finished_records(),
            store,
            known,
            journal,
            run_id,
            retry: config.retry.clone(),
            max_url_age: config.max_url_age,
            jitter_seed: config.jitter_seed.unwrap_or_else(|| fastrand::u64(..)),
            concurrency,
            downloads: Semaphore::new(concurrency),
            shutdown: Shutdown::default(),
            ledger: Mutex::new(ledger),
            retries: AtomicU64::new(0),
            already_stored: AtomicU64::new(0),
            rows_fetched: AtomicU64::new(0),
            counted: std::sync::OnceLock::new(),
            started: Instant::now(),
        })
    }

    /// A stored row needs no record of its download: the journal has it.
    fn forget_finished_record(&self, row: &Row) {
        if self.finished_records.is_empty() {
            return; // The common case: skip hashing the row's key.
        }
        let partial = self.store.partial(row.kind, row.requested_id());
        if self.finished_records.contains(partial.record_path()) {
            partial.discard();
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger lock poisoned")
    }

    /// Registers a row's key; false if the row is answered without a task:
    /// the journal says it is stored, or an earlier row asked for the same
    /// file (then this row is answered when that one finishes).
    fn claim(&self, row: &Row, position: u64) -> bool {
        // Outside the ledger lock: it touches the disk.
        let stored = stored_copy(&self.store, &self.known, row);
        if stored.is_some() {
            self.forget_finished_record(row);
        }
        let mut ledger = self.ledger();
        match ledger.keys.get_mut(&row_key(row)) {
            None => match stored {
                Some(fetched) => {
                    self.already_stored.fetch_add(1, Ordering::Relaxed);
                    let behind = journal_is_behind(&self.known, row, &fetched);
                    let result = RowResult::stored(fetched);
                    if behind {
                        self.journal_stored_row(row, &result);
                    }
                    ledger.submit(position, row_record(row, &result));
                    let settled = ledger.settle(row, &result);
                    ledger.keys.insert(row_key(row), KeyState::Done(settled));
                    false
                }
                None => {
                    ledger.keys.insert(row_key(row), KeyState::Pending { waiting: Vec::new() });
                    true
                }
            },
            Some(KeyState::Pending { waiting }) => {
                waiting.push((position, row.clone()));
                false
            }
            Some(KeyState::Done(settled)) => {
                let record = duplicate_record(row, settled);
                ledger.submit(position, record);
                false
            }
        }
    }

    fn record(&self, position: u64, record: RowRecord) {
        self.ledger().submit(position, record);
    }

    /// Appends the row's outcome to the journal and waits until it is on
    /// disk: only then does the row count as done.
    async fn journal_row(&self, row: &Row, result: &RowResult) -> std::io::Result<()> {
        let ticket = self.journal.append(&self.journal_entry(row, result))?;
        self.journal.durable(ticket).await
    }

    /// Journals a row the manifest's hash answered from the store, so the
    /// by-id view, `verify` and `status` (which read the journal) know it
    /// too. The file is stored already, so the row need not wait for the
    /// fsync: [`Context::journal_settle`] makes the line durable at the end.
    fn journal_stored_row(&self, row: &Row, result: &RowResult) {
        if let Err(error) = self.journal.append(&self.journal_entry(row, result)) {
            self.stop_for_journal(&error);
        }
    }

    /// Makes every journal line written so far durable.
    async fn journal_settle(&self) {
        if let Err(error) = self.journal.durable_all().await {
            self.stop_for_journal(&error);
        }
    }

    fn stop_for_journal(&self, error: &std::io::Error) {
        let path = self.journal.path();
        let note = space_note(error, path);
        let reason = format!("cannot write the journal {}: {error}{note}", path.display());
        self.shutdown.stop_now(StopCause::Fatal(reason));
    }

    fn journal_entry(&self, row: &Row, result: &RowResult) -> JournalEntry {
        let record = row_record(row, result);
        JournalEntry {
            kind: record.kind,
            id: row.requested_id().to_owned(),
            identifier: record.identifier,
            frame_or_track_id: record.frame_or_track_id,
            status: record.status,
            sha256: record.sha256,
            bytes: record.bytes,
            content_type: record.content_type,
            attempts: record.attempts,
            api_calls: record.api_calls,
            error: record.error,
            at: jiff::Timestamp::now().to_string(),
            run_id: self.run_id.clone(),
        }
    }

    /// Reports a row that was fetched (or not), and every duplicate that
    /// waited on it.
    fn finish_row(&self, position: u64, row: &Row, result: RowResult) {
        let mut ledger = self.ledger();
        ledger.submit(position, row_record(row, &result));
        let settled = ledger.settle(row, &result);
        let previous = ledger.keys.insert(row_key(row), KeyState::Done(settled.clone()));
        if let Some(KeyState::Pending { waiting }) = previous {
            for (position, duplicate) in waiting {
                ledger.submit(position, duplicate_record(&duplicate, &settled));
            }
        }
    }

    fn summarize(&self, run_id: String, elapsed: Duration) -> Summary {
        let ledger = self.ledger();
        let gate = self.api.gate();
        let cause = self.shutdown.cause();
        Summary {
            run_id,
            rows: ledger.rows,
            by_status: ledger.report.as_ref().map(Report::counts).unwrap_or_default(),
            already_stored: self.already_stored.load(Ordering::Relaxed),
            bytes_downloaded: self.storage.received_bytes(),
            api_calls: gate.calls(),
            rate_limited: gate.rate_limited(),
            retries: self.retries.load(Ordering::Relaxed),
            elapsed_seconds: elapsed.as_secs_f64(),
            api_calls_per_second: gate.calls_per_second(),
            interrupted: matches!(cause, Some(StopCause::Interrupted(_))),
            stopped: cause.map(|cause| cause.reason().to_owned()),
        }
    }

    fn finish_report(&self, summary: &Summary) -> Result<PathBuf, RunError> {
        let mut ledger = self.ledger();
        let report = ledger.report.take().expect("the report is finished once");
        let dir = report.dir().to_path_buf();
        let failed = |source| RunError::Report { path: dir.clone(), source };
        if let Some(error) = ledger.report_error.take() {
            return Err(failed(error));
        }
        report.finish(summary).map_err(failed)
    }
}

impl Ledger {
    /// What later duplicates of the row need to know, compactly.
    fn settle(&mut self, row: &Row, result: &RowResult) -> Settled {
        let fetched = result.fetched.as_ref();
        let outcome = Outcome {
            status: result.status,
            sha256: fetched.and_then(|fetched| decode_sha256(&fetched.sha256)),
            bytes: fetched.map(|fetched| fetched.bytes),
            content_type: fetched
                .and_then(|fetched| fetched.content_type.as_deref())
                .and_then(|content_type| self.content_types.share(content_type)),
        };
        Settled { line: row.line, outcome, error: result.error.clone().into_boxed_str() }
    }

    fn submit(&mut self, position: u64, record: RowRecord) {
        self.rows += 1;
        let report = self.report.as_mut().expect("no row is reported after the end");
        if let Err(error) = report.submit(position, record) {
            // Keep the first error; the run ends with it after the rows.
            self.report_error.get_or_insert(error);
        }
    }
}

fn http_client(total_timeout: Option<Duration>) -> reqwest::Result<Client> {
    let builder = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("identifai-fetch/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60));
    match total_timeout {
        Some(timeout) => builder.timeout(timeout),
        None => builder,
    }
    .build()
}

/// Whether the journal lacks what the store just answered for the row: a
/// file found by the manifest's hash that the journal does not record as
/// this request's `ok` outcome.
fn journal_is_behind(journal: &Outcomes, row: &Row, fetched: &Fetched) -> bool {
    let hash = decode_sha256(&fetched.sha256);
    let recorded = journal.get(row.kind, row.requested_id());
    !recorded.is_some_and(|known| known.status == RowStatus::Ok && known.sha256 == hash)
}

/// The stored copy of a row's file, if there is one: the manifest names its
/// hash and the object is there, or the journal says the request ended `ok`
/// and the object is there with its size. Such a row needs no API call.
pub fn stored_copy(store: &Store, journal: &Outcomes, row: &Row) -> Option<Fetched> {
    let known = journal.get(row.kind, row.requested_id()).and_then(|known| {
        let sha256 = hex(&known.sha256?);
        let present = known.status == RowStatus::Ok && store.has_object(&sha256, known.bytes);
        present.then_some((sha256, known))
    });
    match (&row.sha256, known) {
        (Some(expected), known) if store.has_object(expected, None) => {
            let content_type = known.filter(|(sha256, _)| sha256 == expected);
            let content_type = content_type.and_then(|(_, known)| known.content_type.as_deref());
            Some(stored_object(expected, store.object_size(expected), content_type))
        }
        (None, Some((sha256, known))) => {
            Some(stored_object(&sha256, known.bytes, known.content_type.as_deref()))
        }
        _ => None,
    }
}

fn stored_object(sha256: &str, bytes: Option<u64>, content_type: Option<&str>) -> Fetched {
    Fetched {
        sha256: sha256.to_owned(),
        bytes: bytes.unwrap_or_default(),
        content_type: content_type.map(str::to_owned),
        object: Store::relative_object_path(sha256),
        resumed_from: 0,
    }
}

fn row_record(row: &Row, result: &RowResult) -> RowRecord {
    let mut record = base_record(row, result.status);
    record.attempts = result.attempts;
    record.api_calls = result.api_calls;
    record.error = result.error.clone();
    if let Some(fetched) = &result.fetched {
        fill_object(&mut record, fetched);
    }
    record
}

fn duplicate_record(row: &Row, first: &Settled) -> RowRecord {
    let outcome = &first.outcome;
    match outcome.sha256.filter(|_| outcome.status.is_success()) {
        Some(sha256) => {
            let mut record = base_record(row, RowStatus::Duplicate);
            let content_type = outcome.content_type.as_deref();
            fill_object(&mut record, &stored_object(&hex(&sha256), outcome.bytes, content_type));
            record.error = format!("same file as line {}", first.line);
            record
        }
        None => {
            let mut record = base_record(row, outcome.status);
            record.error = format!("same request as line {}: {}", first.line, first.error);
            record
        }
    }
}

fn fill_object(record: &mut RowRecord, fetched: &Fetched) {
    record.sha256 = fetched.sha256.clone();
    record.bytes = Some(fetched.bytes);
    record.content_type = fetched.content_type.clone().unwrap_or_default();
    record.object = fetched.object.to_string_lossy().into_owned();
}

fn base_record(row: &Row, status: RowStatus) -> RowRecord {
    let frame = row.frame_or_track_id.clone().unwrap_or_default();
    let mut record = RowRecord::new(row.line, row.kind.as_str(), &row.identifier, frame, status);
    record.extra = row.extra.clone();
    record
}

fn invalid_record(bad: InvalidRow) -> RowRecord {
    let (kind, frame) = (&bad.kind, bad.frame_or_track_id);
    let mut record = RowRecord::new(bad.line, kind, &bad.identifier, frame, RowStatus::Invalid);
    record.error = bad.reason;
    record.extra = bad.extra;
    record
}

fn log_summary(summary: &Summary) {
    let counts: Vec<String> = summary
        .by_status
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(status, count)| format!("{status}={count}"))
        .collect();
    info!(
        run_id = %summary.run_id,
        rows = summary.rows,
        statuses = %counts.join(" "),
        already_stored = summary.already_stored,
        bytes = summary.bytes_downloaded,
        api_calls = summary.api_calls,
        rate_limited = summary.rate_limited,
        retries = summary.retries,
        elapsed_s = format!("{:.1}", summary.elapsed_seconds),
        api_rate = format!("{:.3}/s", summary.api_calls_per_second),
        "run finished"
    );
}
