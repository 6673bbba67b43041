//! Progress as the two audiences see it: plain log lines on tokio's paused
//! clock for a log file, and a bar drawn into an in-memory terminal for a
//! person watching. No test sleeps in real time.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use identifai_fetch::progress::{
    Mode, Reporter, Snapshot, Source, choose, log_writer, render_bar_message, render_line,
};
use indicatif::{ProgressDrawTarget, TermLike};
use tokio::time::Instant;
use tracing_subscriber::fmt::MakeWriter;

const MIB: u64 = 1 << 20;
const ESC: u8 = 0x1b;

/// A run whose progress the test sets by hand; time is tokio's.
struct FakeRun {
    started: Instant,
    now: Mutex<Snapshot>,
}

impl FakeRun {
    fn new(snapshot: Snapshot) -> Arc<FakeRun> {
        Arc::new(FakeRun { started: Instant::now(), now: Mutex::new(snapshot) })
    }

    fn set(&self, change: impl FnOnce(&mut Snapshot)) {
        change(&mut self.now.lock().unwrap());
    }
}

impl Source for FakeRun {
    fn snapshot(&self) -> Snapshot {
        Snapshot { elapsed: self.started.elapsed(), ..self.now.lock().unwrap().clone() }
    }
}

/// A run that has just counted its 5000 rows, at one call a second.
fn counted() -> Snapshot {
    Snapshot {
        rows_total: Some(5000),
        api_calls_left: Some(5000),
        api_spacing: Duration::from_millis(1010),
        ..Snapshot::default()
    }
}

/// Log output collected in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    fn progress_lines(&self) -> Vec<String> {
        self.text().lines().filter(|line| line.contains("progress")).map(String::from).collect()
    }
}

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A text subscriber as `main` sets one up for a log file: no colours.
fn text_logs(captured: &Captured) -> tracing::subscriber::DefaultGuard {
    let sink = captured.clone();
    let subscriber =
        tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false).finish();
    tracing::subscriber::set_default(subscriber)
}

/// Waits out `finish`, failing rather than hanging if the ticker never ends.
async fn finish_within_an_hour(reporter: Reporter) {
    let finished = tokio::time::timeout(Duration::from_secs(3600), reporter.finish()).await;
    finished.expect("finish should stop the ticker");
}

#[tokio::test(start_paused = true)]
async fn lines_mode_logs_one_plain_line_per_interval() {
    let captured = Captured::default();
    let _logs = text_logs(&captured);
    let run = FakeRun::new(counted());
    let every = Duration::from_secs(60);
    let reporter = Reporter::start(Mode::Lines { every }, run.clone());

    // 600 MiB in the first minute; the line at 60 s reports 10 MiB/s.
    run.set(|s| (s.rows_done, s.bytes_received, s.api_calls_left) = (100, 600 * MIB, Some(4900)));
    tokio::time::sleep(Duration::from_secs(90)).await;
    assert_eq!(captured.progress_lines().len(), 1, "{}", captured.text());

    // Another 600 MiB by 90 s, then a 429 pause: the line at 120 s says so.
    run.set(|s| {
        (s.rows_done, s.rows_failed, s.bytes_received) = (200, 2, 1200 * MIB);
        (s.api_calls_left, s.paused_for) = (Some(4800), Some(Duration::from_secs(23)));
    });
    tokio::time::sleep(Duration::from_secs(60)).await;
    finish_within_an_hour(reporter).await;
    // Nothing more after finish, however long the runtime goes on.
    tokio::time::sleep(Duration::from_secs(600)).await;

    let lines = captured.progress_lines();
    assert_eq!(lines.len(), 2, "{}", captured.text());
    let first = "progress: 100/5000 rows, 600.0 MiB, 10.0 MiB/s, 4900 API calls left, ETA 1h22m";
    assert!(lines[0].contains(first), "{}", lines[0]);
    assert!(lines[0].contains(" INFO "), "logged at info: {}", lines[0]);
    let second = "progress: 200/5000 rows (2 failed), 1.2 GiB, 10.0 MiB/s, \
                  4800 API calls left, ETA 1h21m, paused by the API (429) for 23s";
    assert!(lines[1].contains(second), "{}", lines[1]);
    assert!(!captured.0.lock().unwrap().contains(&ESC), "{:?}", captured.text());
}

#[tokio::test(start_paused = true)]
async fn lines_carry_structured_fields_in_json_logs() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt().json().with_writer(move || sink.clone()).finish();
    let _logs = tracing::subscriber::set_default(subscriber);
    let run = FakeRun::new(counted());
    let reporter = Reporter::start(Mode::Lines { every: Duration::from_secs(60) }, run.clone());
    run.set(|s| (s.rows_done, s.bytes_received, s.api_calls_left) = (100, 600 * MIB, Some(4900)));
    tokio::time::sleep(Duration::from_secs(61)).await;
    finish_within_an_hour(reporter).await;

    let text = captured.text();
    let line = text.lines().find(|line| line.contains("progress")).expect("a progress line");
    let event: serde_json::Value = serde_json::from_str(line).unwrap();
    let fields = &event["fields"];
    assert_eq!(fields["rows_done"], 100, "{line}");
    assert_eq!(fields["rows_total"], 5000, "{line}");
    assert_eq!(fields["bytes"], 600 * MIB, "{line}");
    assert_eq!(fields["bytes_per_second"], 10 * MIB, "{line}");
    assert_eq!(fields["api_calls_left"], 4900, "{line}");
    assert_eq!(fields["eta_s"], 4949, "{line}");
    assert!(fields.get("paused_s").is_none(), "no pause, no field: {line}");
    assert!(fields["message"].as_str().unwrap().starts_with("progress: 100/5000 rows"));
}

#[tokio::test(start_paused = true)]
async fn quiet_mode_logs_nothing() {
    let captured = Captured::default();
    let _logs = text_logs(&captured);
    let reporter =
        Reporter::start(choose(false, Duration::from_secs(1), true), FakeRun::new(counted()));
    tokio::time::sleep(Duration::from_secs(30)).await;
    finish_within_an_hour(reporter).await;
    assert_eq!(captured.text(), "");
}

#[test]
fn no_render_holds_an_escape_code() {
    let pauses = [None, Some(Duration::from_secs(23))];
    let totals = [None, Some(5000)];
    for (paused_for, rows_total) in pauses.into_iter().zip(totals) {
        let s = Snapshot { paused_for, rows_total, rows_failed: 3, ..counted() };
        for text in [render_line(&s, 1e6), render_bar_message(&s, 1e6)] {
            assert!(!text.as_bytes().contains(&ESC), "{text:?}");
        }
    }
}

/// What a fake terminal was asked to do, in order.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Write(String),
    ClearLine,
    Cursor,
}

/// An in-memory terminal that records every call the bar makes.
#[derive(Debug, Clone, Default)]
struct FakeTerm(Arc<Mutex<Vec<Op>>>);

impl FakeTerm {
    fn ops(&self) -> Vec<Op> {
        self.0.lock().unwrap().clone()
    }

    fn record(&self, op: Op) -> std::io::Result<()> {
        self.0.lock().unwrap().push(op);
        Ok(())
    }

    /// Everything written, as one string.
    fn text(&self) -> String {
        let writes = self.ops().into_iter().filter_map(|op| match op {
            Op::Write(text) => Some(text),
            _ => None,
        });
        writes.collect()
    }

    /// Where the first write containing `needle` is, if any.
    fn position(&self, needle: &str) -> Option<usize> {
        self.ops().iter().position(|op| matches!(op, Op::Write(text) if text.contains(needle)))
    }
}

impl TermLike for FakeTerm {
    fn width(&self) -> u16 {
        200
    }

    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        self.record(Op::Cursor)
    }

    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        self.record(Op::Cursor)
    }

    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        self.record(Op::Cursor)
    }

    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        self.record(Op::Cursor)
    }

    fn write_line(&self, text: &str) -> std::io::Result<()> {
        self.record(Op::Write(format!("{text}\n")))
    }

    fn write_str(&self, text: &str) -> std::io::Result<()> {
        self.record(Op::Write(text.to_string()))
    }

    fn clear_line(&self) -> std::io::Result<()> {
        self.record(Op::ClearLine)
    }

    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bar on screen is process-wide (it is where logs go), so tests that
/// draw one take turns.
static SCREEN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn log_through_writer(text: &str) {
    let mut writer = log_writer().make_writer();
    writer.write_all(text.as_bytes()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_bar_shows_counts_the_pause_and_lets_logs_pass() {
    let _screen = SCREEN.lock().await;
    let term = FakeTerm::default();
    let target = ProgressDrawTarget::term_like(Box::new(term.clone()));
    let run = FakeRun::new(Snapshot { rows_done: 7, ..Snapshot::default() });
    let reporter = Reporter::start_with_target(Mode::Bar, run.clone(), target);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Before the count: a spinner with counts, and no bar to fill.
    assert!(term.text().contains("7/? rows · 0 B · 0 B/s"), "{:?}", term.text());
    assert!(!term.text().contains('['), "{:?}", term.text());

    run.set(|s| {
        *s = Snapshot { rows_done: 1200, bytes_received: 2150 * MIB, ..counted() };
        (s.api_calls_left, s.paused_for) = (Some(3800), Some(Duration::from_secs(23)));
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = term.text();
    assert!(text.contains("paused by the API (429) for 23s · 1200/5000 rows"), "{text:?}");
    assert!(text.contains("3800 API calls left · ETA 1h04m"), "{text:?}");
    // 1200 of 5000 fills 5 of the bar's 24 cells.
    assert!(text.contains("[=====>"), "{text:?}");
    // And no frame pairs the new counts with a bar not yet filled.
    let frames = term.ops().into_iter().filter_map(|op| match op {
        Op::Write(frame) if frame.contains("1200/5000") => Some(frame),
        _ => None,
    });
    for frame in frames {
        assert!(frame.contains("[=====>"), "{frame:?}");
    }

    // A log line clears the bar, takes a line of its own, then the bar returns.
    let before = term.ops().len();
    log_through_writer("INFO a log line while the bar is drawn\n");
    let ops = term.ops();
    let logged = term.position("a log line while").expect("the log line reached the screen");
    assert!(logged > before, "{ops:?}");
    assert!(ops[before..logged].contains(&Op::ClearLine), "bar not cleared first: {ops:?}");
    assert!(ops[logged].eq(&Op::Write("INFO a log line while the bar is drawn".into())));
    let redrawn = ops[logged..].iter().any(|op| matches!(op, Op::Write(t) if t.contains("rows")));
    assert!(redrawn, "the bar was not drawn again: {ops:?}");

    finish_within_an_hour(reporter).await;
    // Finishing clears the bar: nothing is written after its last clearing.
    let ops = term.ops();
    let last_clear = ops.iter().rposition(|op| *op == Op::ClearLine).unwrap();
    assert!(!ops[last_clear..].iter().any(|op| matches!(op, Op::Write(t) if !t.trim().is_empty())));
    // And logs no longer go through it.
    log_through_writer("(this line belongs on stderr) logged after the bar was cleared\n");
    assert_eq!(term.ops().len(), ops.len());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_reporter_stops_drawing() {
    let _screen = SCREEN.lock().await;
    let term = FakeTerm::default();
    let target = ProgressDrawTarget::term_like(Box::new(term.clone()));
    let reporter = Reporter::start_with_target(Mode::Bar, FakeRun::new(counted()), target);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(reporter);
    let drawn = term.ops().len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(term.ops().len(), drawn, "the bar kept drawing after its reporter was dropped");
}
