//! How a run stops before its end: gracefully (a signal, the deadline) or at
//! once (a second signal, a grace period run out, a fatal error).
//!
//! A graceful stop lets downloads in flight finish while no new row starts
//! and no new API call is made; an immediate stop ends the downloads too.
//! Either way every row still gets its report line, partial files stay for
//! the next run to resume, and no object is ever left half-written (objects
//! only appear by rename).

use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Why the run stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopCause {
    /// Asked to stop (a signal or the deadline): the run can be resumed.
    Interrupted(String),
    /// Something every row would fail on (a refused key, a full disk).
    Fatal(String),
}

impl StopCause {
    pub fn reason(&self) -> &str {
        match self {
            StopCause::Interrupted(reason) | StopCause::Fatal(reason) => reason,
        }
    }
}

/// The run's two stop levels, shared by every task.
#[derive(Debug, Default)]
pub struct Shutdown {
    graceful: CancellationToken,
    immediate: CancellationToken,
    cause: Mutex<Option<StopCause>>,
}

impl Shutdown {
    /// Stops starting work; what is downloading may finish.
    pub fn stop_gracefully(&self, cause: StopCause) {
        self.record(cause);
        self.graceful.cancel();
    }

    /// Stops everything now.
    pub fn stop_now(&self, cause: StopCause) {
        self.record(cause);
        self.graceful.cancel();
        self.immediate.cancel();
    }

    /// The first cause wins, except that a fatal error overrides an
    /// interruption: a disk that fills during the grace period must end the
    /// run as a failure (exit 1), not as a stop that a rerun simply resumes.
    fn record(&self, cause: StopCause) {
        let mut current = self.cause.lock().expect("stop lock poisoned");
        let replaces = match (&*current, &cause) {
            (None, _) => true,
            (Some(StopCause::Interrupted(_)), StopCause::Fatal(_)) => true,
            (Some(_), _) => false,
        };
        if replaces {
            warn!(reason = cause.reason(), "stopping the run");
            *current = Some(cause);
        }
    }

    pub fn cause(&self) -> Option<StopCause> {
        self.cause.lock().expect("stop lock poisoned").clone()
    }

    /// Resolves when no new work should start.
    pub async fn no_new_work(&self) {
        self.graceful.cancelled().await;
    }

    /// Resolves when everything must end.
    pub async fn everything_ends(&self) {
        self.immediate.cancelled().await;
    }

    pub fn is_stopping(&self) -> bool {
        self.graceful.is_cancelled()
    }

    /// Watches for SIGINT, SIGTERM and the deadline: the first one stops
    /// gracefully and allows `grace` for downloads to finish; a second
    /// signal, or the end of the grace period, stops at once.
    pub async fn watch(&self, grace: Duration, deadline: Option<Duration>) {
        let first = tokio::select! {
            name = next_signal() => format!("{name} received"),
            () = sleep_or_never(deadline) => "the --deadline was reached".to_owned(),
            () = self.no_new_work() => return,
        };
        self.stop_gracefully(StopCause::Interrupted(first.clone()));
        tokio::select! {
            name = next_signal() => {
                warn!("{name} again: stopped at once, downloads in flight included");
                self.immediate.cancel();
            }
            () = tokio::time::sleep(grace) => {
                let grace_s = grace.as_secs_f64();
                warn!(grace_s, "grace period over: ending downloads in flight");
                self.immediate.cancel();
            }
            () = self.everything_ends() => {}
        }
    }
}

async fn sleep_or_never(deadline: Option<Duration>) {
    match deadline {
        Some(deadline) => tokio::time::sleep(deadline).await,
        None => std::future::pending().await,
    }
}

/// The name of the next SIGINT or SIGTERM.
#[cfg(unix)]
async fn next_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        // Without signal handling the default action (exit) still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

#[cfg(not(unix))]
async fn next_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_stops_gracefully_then_the_grace_ends_everything() {
        let shutdown = std::sync::Arc::new(Shutdown::default());
        let watcher = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.watch(Duration::from_secs(30), Some(Duration::from_secs(3600))).await;
            })
        };
        let started = tokio::time::Instant::now();
        shutdown.no_new_work().await;
        assert_eq!(started.elapsed(), Duration::from_secs(3600));
        assert!(
            matches!(shutdown.cause(), Some(StopCause::Interrupted(r)) if r.contains("deadline"))
        );
        shutdown.everything_ends().await;
        assert_eq!(started.elapsed(), Duration::from_secs(3630));
        watcher.await.unwrap();
    }

    #[tokio::test]
    async fn the_first_cause_is_kept_unless_a_fatal_one_follows() {
        let shutdown = Shutdown::default();
        shutdown.stop_gracefully(StopCause::Interrupted("SIGTERM received".into()));
        shutdown.stop_now(StopCause::Interrupted("grace period over".into()));
        assert_eq!(shutdown.cause(), Some(StopCause::Interrupted("SIGTERM received".into())));
        shutdown.stop_now(StopCause::Fatal("disk full".into()));
        assert_eq!(shutdown.cause(), Some(StopCause::Fatal("disk full".into())));
        shutdown.stop_now(StopCause::Fatal("a later failure".into()));
        shutdown.stop_gracefully(StopCause::Interrupted("SIGINT received".into()));
        assert_eq!(shutdown.cause(), Some(StopCause::Fatal("disk full".into())));
        assert!(shutdown.is_stopping());
    }

    #[tokio::test]
    async fn a_fatal_stop_ends_the_watch() {
        let shutdown = Shutdown::default();
        shutdown.stop_now(StopCause::Fatal("key refused".into()));
        // Returns at once instead of waiting for a signal that never comes.
        shutdown.watch(Duration::from_secs(30), None).await;
    }
}
