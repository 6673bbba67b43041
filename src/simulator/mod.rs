//! An embedded simulator of the IdentifAI API v2 download endpoint.
//!
//! [`Simulator::start`] binds two real HTTP listeners on loopback. The API listener checks
//! the key, applies the vendor's per-key rate limits and answers `302` with a pre-signed
//! URL. That URL points at the second listener, a storage host on another port, which
//! checks the signature and expiry and streams the file. Tests, `demo` and `simulate` talk
//! to it over TCP exactly as they would talk to the vendor, so what passes here has
//! crossed a real HTTP stack.
//!
//! The files, one concept each:
//!
//! - `content`: each identifier's bytes, generated on the fly and deterministic.
//! - `limits`: fixed-window counting of API requests.
//! - `api` and `storage`: the answers of the two listeners.
//! - `faults`: scripted misbehaviour; `conn` lets a fault break a connection mid-answer.
//! - `record`: every request received, for tests to inspect.
//! - `server`: runs a listener; `clock`: turns tokio time into header dates.
//!
//! All time is measured with `tokio::time::Instant`, so tests may pause the clock.

mod api;
mod clock;
mod conn;
mod content;
mod faults;
mod limits;
mod record;
mod server;
mod storage;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

pub use api::{ResetForm, RetryAfterForm};
pub use content::{Content, FileType};
pub use faults::Fault;
pub use limits::WindowLimit;
pub use record::{Endpoint, Received};

use clock::Clock;
use faults::FaultScript;
use limits::FixedWindows;
use record::Journal;
use storage::Bucket;

/// The API key a default configuration accepts.
pub const DEFAULT_API_KEY: &str = "sim-key-7d2f4c1a9e6b";

/// How the simulator behaves. Start from [`SimConfig::default`] and change what a test needs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The only key accepted in `X-Api-Key`; anything else gets a 401.
    pub api_key: String,
    /// Limits enforced together on every authenticated API request. Empty means unlimited.
    pub limits: Vec<WindowLimit>,
    /// How long a pre-signed URL stays valid after the API hands it out. Zero makes every
    /// URL already expired when it reaches storage.
    pub url_validity: Duration,
    /// How a 429 tells the client when to come back.
    pub retry_after: RetryAfterForm,
    /// What a 429's `X-RateLimit-Reset` says, next to `retry_after`.
    pub rate_limit_reset: ResetForm,
    /// Requested identifiers the API answers with 404.
    pub not_found: HashSet<String>,
    /// Requested identifiers the API answers with 403.
    pub forbidden: HashSet<String>,
    /// Body sizes in bytes by identifier, replacing the default size for its type.
    pub sizes: HashMap<String, u64>,
    /// One size for every identifier not in `sizes`, replacing the defaults by type;
    /// for runs of very many rows that should stay small.
    pub every_size: Option<u64>,
    /// Identifiers that serve another identifier's bytes (key serves value's content).
    /// Chains are followed; the size rules then apply to the identifier at the end.
    pub same_content_as: HashMap<String, String>,
    /// Scripted faults by requested identifier, played in order; see [`Fault`].
    pub faults: HashMap<String, Vec<Fault>>,
    /// Caps every storage body at this many bytes a second, so that a test can stop a
    /// client while downloads are in flight. `None` serves as fast as the client reads.
    pub storage_bytes_per_second: Option<u64>,
}

impl Default for SimConfig {
    /// The vendor's published behaviour: 2 requests a second and 60 a minute, URLs valid
    /// for 60 minutes, `Retry-After` in seconds and `X-RateLimit-Reset` at the same moment.
    fn default() -> SimConfig {
        SimConfig {
            api_key: DEFAULT_API_KEY.to_owned(),
            limits: vec![
                WindowLimit::new(2, Duration::from_secs(1)),
                WindowLimit::new(60, Duration::from_secs(60)),
            ],
            url_validity: Duration::from_secs(60 * 60),
            retry_after: RetryAfterForm::Seconds,
            rate_limit_reset: ResetForm::WindowEnd,
            not_found: HashSet::new(),
            forbidden: HashSet::new(),
            sizes: HashMap::new(),
            every_size: None,
            same_content_as: HashMap::new(),
            faults: HashMap::new(),
            storage_bytes_per_second: None,
        }
    }
}

impl SimConfig {
    /// The body served for `identifier` requested as `kind`, with aliases and sizes applied.
    pub fn content(&self, kind: FileType, identifier: &str) -> Content {
        content::lookup(&self.sizes, self.every_size, &self.same_content_as, kind, identifier)
    }
}

/// State shared by both listeners' handlers.
struct Shared {
    config: SimConfig,
    clock: Clock,
    limiter: Mutex<FixedWindows>,
    faults: FaultScript,
    journal: Journal,
    bucket: Bucket,
    /// Body bytes storage has handed to its connections; see [`Simulator::body_bytes_sent`].
    body_bytes: Arc<AtomicU64>,
}

impl Shared {
    fn new(config: SimConfig, storage: SocketAddr) -> Shared {
        Shared {
            clock: Clock::start(),
            limiter: Mutex::new(FixedWindows::new(&config.limits)),
            faults: FaultScript::new(&config.faults),
            journal: Journal::default(),
            bucket: Bucket::new(storage),
            body_bytes: Arc::default(),
            config,
        }
    }
}

/// Locks a mutex even if a panicking handler poisoned it: every critical section here
/// leaves its data consistent, and one failed test should not cascade into others.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running simulator. Dropping it or calling [`Simulator::shutdown`] stops both
/// listeners; answers already in flight are allowed to finish.
pub struct Simulator {
    shared: Arc<Shared>,
    api_addr: SocketAddr,
    storage_addr: SocketAddr,
    stop: watch::Sender<bool>,
    closed: Vec<oneshot::Receiver<()>>,
}

impl Simulator {
    /// Starts both listeners on `127.0.0.1` with ports chosen by the system.
    pub async fn start(config: SimConfig) -> io::Result<Simulator> {
        Simulator::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts the API listener on `api_addr` and storage on a free loopback port.
    pub async fn start_on(config: SimConfig, api_addr: SocketAddr) -> io::Result<Simulator> {
        let api = TcpListener::bind(api_addr).await?;
        let storage = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let api_addr = api.local_addr()?;
        let storage_addr = storage.local_addr()?;
        let shared = Arc::new(Shared::new(config, storage_addr));
        let (stop, _) = watch::channel(false);
        let closed = vec![
            server::spawn(Endpoint::Api, api, shared.clone(), stop.subscribe()),
            server::spawn(Endpoint::Storage, storage, shared.clone(), stop.subscribe()),
        ];
        Ok(Simulator { shared, api_addr, storage_addr, stop, closed })
    }

    /// Base URL of the API, e.g. `http://127.0.0.1:41234`, without a trailing slash.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// Address the API listener is bound to.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Address the storage listener is bound to; pre-signed URLs point here.
    pub fn storage_addr(&self) -> SocketAddr {
        self.storage_addr
    }

    /// The key the API accepts.
    pub fn api_key(&self) -> &str {
        &self.shared.config.api_key
    }

    /// The configuration the simulator was started with.
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// A snapshot of every request received so far, in the order they arrived.
    pub fn received(&self) -> Vec<Received> {
        self.shared.journal.snapshot()
    }

    /// Requests the API listener has received, whatever it answered.
    pub fn api_calls(&self) -> usize {
        self.shared.journal.count(|r| r.endpoint == Endpoint::Api)
    }

    /// 429 answers the API has sent, from the limiter or from a scripted fault.
    pub fn rate_limited(&self) -> usize {
        self.shared.journal.count(|r| r.endpoint == Endpoint::Api && r.status == Some(429))
    }

    /// Requests the storage listener has received, whatever it answered.
    pub fn storage_requests(&self) -> usize {
        self.shared.journal.count(|r| r.endpoint == Endpoint::Storage)
    }

    /// Body bytes storage has handed to its connections so far, over every request: what
    /// a client cost the storage host. A connection cut by a fault, or by a client going
    /// away, may have delivered up to a few chunks fewer than counted.
    pub fn body_bytes_sent(&self) -> u64 {
        self.shared.body_bytes.load(Ordering::Relaxed)
    }

    /// The body served for `identifier` requested as `kind`; see [`SimConfig::content`].
    pub fn content(&self, kind: FileType, identifier: &str) -> Content {
        self.shared.config.content(kind, identifier)
    }

    /// Hex SHA-256 of the body served for `identifier` requested as `kind`.
    pub fn expected_sha256(&self, kind: FileType, identifier: &str) -> String {
        self.content(kind, identifier).sha256_hex()
    }

    /// Size in bytes of the body served for `identifier` requested as `kind`.
    pub fn size_of(&self, kind: FileType, identifier: &str) -> u64 {
        self.content(kind, identifier).size()
    }

    /// Stops accepting connections on both listeners and waits until both sockets are
    /// closed. Connections already open finish their current answer on their own.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        for closed in self.closed {
            // The sender is dropped with the listener, which is exactly the moment wanted.
            let _ = closed.await;
        }
    }
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("api_addr", &self.api_addr)
            .field("storage_addr", &self.storage_addr)
            .finish_non_exhaustive()
    }
}
