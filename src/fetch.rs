//! The storage client: streams a lease's body into the store while hashing,
//! resuming a download that was cut off where it stopped.
//!
//! Storage requests go through their own HTTP client, with no default
//! headers and no API key: a signed URL is its own credential, and the
//! storage host is a different party from the API. The body is never held
//! whole: network chunks pass through a small bounded channel to a blocking
//! thread that hashes and writes them, so memory stays flat however large the
//! file, and the async workers never wait on the disk.
//!
//! A download in progress lives in the store as a partial file plus a record
//! of the storage host's validators (ETag, Last-Modified), the length, and
//! how many bytes are known durable. The next attempt, in this run or a later
//! one, asks for the rest with `Range` and `If-Range`; the host answers 206
//! with the rest of the same file, or 200 with a new one, which starts over.
//! The hash always covers the whole file: the kept prefix is read back first.
//! What is kept is every byte in the file when it was written under the
//! running boot, else its durable bytes (see `store`).

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{
    CONTENT_RANGE, CONTENT_TYPE, ETAG, HeaderMap, IF_RANGE, LAST_MODIFIED, RANGE,
};
use reqwest::{Client, Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::api::{Lease, body_excerpt, describe_transport};
use crate::manifest::Kind;
use crate::store::{Fsync, Partial, PartialMeta, Store, StoreError};

/// Chunks in flight between the network and the disk writer. Hyper reads up
/// to ~400 KiB at a time, so this caps the queue near 3 MiB per download; the
/// writer keeps up with the network, so a longer queue only costs memory.
const CHUNKS_IN_FLIGHT: usize = 8;

/// The writer's buffer: large writes keep the syscall count low.
const WRITE_BUFFER: usize = 1 << 20;

/// How often the writer makes its bytes durable and records how far it got:
/// after this many bytes, or when the body goes quiet for a moment. A crash
/// of the machine loses at most this much of a download; a kill of the
/// process, nothing it wrote.
const CHECKPOINT_BYTES: u64 = 32 << 20;
const CHECKPOINT_IDLE: Duration = Duration::from_millis(500);

/// A file safely in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub sha256: String,
    pub bytes: u64,
    pub content_type: Option<String>,
    /// Relative to the store root.
    pub object: PathBuf,
    /// Where this attempt started: non-zero when it resumed a partial file.
    pub resumed_from: u64,
}

/// What can go wrong fetching a signed URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("storage answered {status}{}", crate::api::excerpt_suffix(body))]
    Status { status: StatusCode, body: String },
    #[error("storage answered {status} (a redirect), which we do not follow")]
    Redirected { status: StatusCode },
    #[error("storage request failed: {}", describe_transport(.0))]
    Transport(#[source] reqwest::Error),
    #[error("body cut short: {received} of {expected} bytes")]
    Truncated { expected: u64, received: u64 },
    #[error("storage would not continue the partial download ({reason}); starting over")]
    ResumeRefused { reason: String },
    #[error("cannot write {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl From<StoreError> for FetchError {
    fn from(error: StoreError) -> Self {
        FetchError::Io { path: error.path, source: error.source }
    }
}

/// The storage client.
#[derive(Debug, Clone)]
pub struct StorageClient {
    http: Client,
    received: Arc<AtomicU64>,
}

impl StorageClient {
    /// `http` must carry no default headers: it talks to a host that must
    /// never see anything meant for the API.
    pub fn new(http: Client) -> StorageClient {
        StorageClient { http, received: Arc::default() }
    }

    /// Body bytes received so far, finished or not: what the network carried.
    pub fn received_bytes(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Downloads the lease's URL into `store`, resuming the request's
    /// partial file when there is one.
    pub async fn fetch(
        &self,
        lease: &Lease,
        store: &Store,
        kind: Kind,
        id: &str,
    ) -> Result<Fetched, FetchError> {
        let partial = store.partial(kind, id);
        let resume = partial.resume_point();
        let mut request = self.http.get(lease.url.clone());
        if let Some((meta, offset)) = &resume {
            let validator = meta.validator().expect("resume points have a validator");
            request = request.header(RANGE, format!("bytes={offset}-")).header(IF_RANGE, validator);
        }
        let response = request.send().await.map_err(FetchError::Transport)?;
        let (meta, offset) = match start_from(&partial, resume, &response)? {
            Some(start) => start,
            None => return Err(refusal(response).await),
        };
        let content_type = header_text(response.headers(), CONTENT_TYPE);
        let file =
            if offset == 0 { partial.begin(&meta)? } else { partial.reopen(&meta, offset)? };
        let mut meta = meta;
        let sink = Sink::new(file, partial.clone(), meta.clone(), offset);
        let (sha256, bytes) = self.stream_to(sink, response).await?;
        if let Some(expected) = meta.length.filter(|&expected| expected != bytes) {
            return Err(FetchError::Truncated { expected, received: bytes });
        }
        if meta.length.is_none() {
            // No Content-Length, so the sink could not tell the file was
            // whole: record the hash now, before the file moves, so that a
            // crash from here on never costs the next run a download.
            (meta.durable, meta.length, meta.sha256) = (bytes, Some(bytes), Some(sha256.clone()));
            partial.checkpoint(&meta)?;
        }
        let object = commit(store, partial, sha256.clone()).await?;
        Ok(Fetched { sha256, bytes, content_type, object, resumed_from: offset })
    }

    /// A download an earlier attempt received whole, finished without a
    /// request: its object is in place already (the crash came before the
    /// journal), or its file is complete and only needs to move there, or
    /// its file is complete but was killed before its record named the hash.
    pub async fn recover(
        &self,
        store: &Store,
        kind: Kind,
        id: &str,
    ) -> Result<Option<Fetched>, FetchError> {
        let partial = store.partial(kind, id);
        let Some(meta) = partial.finished() else {
            return match partial.received_unhashed() {
                Some(meta) => seal(store, partial, meta).await,
                None => Ok(None),
            };
        };
        let (sha256, bytes) = (meta.sha256.clone().unwrap_or_default(), meta.length.unwrap_or(0));
        let content_type = meta.content_type.clone();
        if store.has_object(&sha256, Some(bytes)) {
            let object = Store::relative_object_path(&sha256);
            return Ok(Some(Fetched { sha256, bytes, content_type, object, resumed_from: bytes }));
        }
        if !partial.holds_whole(&meta) || rehash(&partial).await.as_deref() != Some(&sha256) {
            partial.discard();
            return Ok(None);
        }
        let object = commit(store, partial, sha256.clone()).await?;
        Ok(Some(Fetched { sha256, bytes, content_type, object, resumed_from: bytes }))
    }

    /// Streams the body into the sink; returns the hex SHA-256 of the whole
    /// file and its length.
    async fn stream_to(&self, sink: Sink, response: Response) -> Result<(String, u64), FetchError> {
        let (sender, receiver) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
        let path = sink.partial.data_path().to_path_buf();
        let runtime = tokio::runtime::Handle::current();
        let writer = tokio::task::spawn_blocking(move || sink.drain(receiver, &runtime));
        let mut body = response.bytes_stream();
        let mut network_error = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    self.received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    // A closed channel means the writer failed; its error says why.
                    if sender.send(chunk).await.is_err() {
                        break;
                    }
                }
                Err(error) => {
                    network_error = Some(FetchError::Transport(error));
                    break;
                }
            }
        }
        drop(sender);
        let written = writer.await.expect("the writer thread does not panic");
        let (digest, bytes) = written.map_err(|source| FetchError::Io { path, source })?;
        match network_error {
            Some(error) => Err(error),
            None => Ok((hex(&digest), bytes)),
        }
    }
}

async fn commit(store: &Store, partial: Partial, sha256: String) -> Result<PathBuf, FetchError> {
    let store = store.clone();
    let committed = tokio::task::spawn_blocking(move || store.commit(&partial, &sha256));
    Ok(committed.await.expect("the commit thread does not panic")?)
}

/// Finishes a download whose every byte is in its file but whose record
/// does not name the hash, as the writer would have: hashes the file, makes
/// it durable with a record that names the hash, and moves it into place.
async fn seal(
    store: &Store,
    partial: Partial,
    meta: PartialMeta,
) -> Result<Option<Fetched>, FetchError> {
    let Some(sha256) = rehash(&partial).await else {
        partial.discard();
        return Ok(None);
    };
    let bytes = meta.length.unwrap_or(0);
    let content_type = meta.content_type.clone();
    let meta = PartialMeta { durable: bytes, sha256: Some(sha256.clone()), ..meta };
    let sealing = partial.clone();
    let sealed = tokio::task::spawn_blocking(move || sealing.seal(&meta));
    sealed.await.expect("the sealing thread does not panic")?;
    let object = commit(store, partial, sha256.clone()).await?;
    Ok(Some(Fetched { sha256, bytes, content_type, object, resumed_from: bytes }))
}

/// The hash of a partial file's bytes, read back; `None` if unreadable.
async fn rehash(partial: &Partial) -> Option<String> {
    let path = partial.data_path().to_path_buf();
    let hashing = tokio::task::spawn_blocking(move || {
        let mut file = File::open(path).ok()?;
        let length = file.metadata().ok()?.len();
        let mut hasher = Sha256::new();
        hash_prefix(&mut file, length, &mut hasher).ok()?;
        Some(hex(&hasher.finalize()))
    });
    hashing.await.ok().flatten()
}

/// Where the body that `response` carries starts, given what we asked for;
/// `None` when the answer is no body of ours (an error status).
fn start_from(
    partial: &Partial,
    resume: Option<(PartialMeta, u64)>,
    response: &Response,
) -> Result<Option<(PartialMeta, u64)>, FetchError> {
    let status = response.status();
    if status.is_redirection() {
        return Err(FetchError::Redirected { status });
    }
    match (status, resume) {
        // A whole body: new, or the file changed since our partial copy.
        (StatusCode::OK, _) => Ok(Some((fresh_meta(response), 0))),
        (StatusCode::PARTIAL_CONTENT, Some((meta, offset))) => {
            match check_content_range(response.headers(), offset, meta.length) {
                Ok(()) => Ok(Some((meta, offset))),
                Err(reason) => {
                    partial.discard();
                    Err(FetchError::ResumeRefused { reason })
                }
            }
        }
        (StatusCode::RANGE_NOT_SATISFIABLE, Some(_)) => {
            partial.discard();
            Err(FetchError::ResumeRefused { reason: "416 for the rest of the file".into() })
        }
        _ => Ok(None),
    }
}

async fn refusal(response: Response) -> FetchError {
    let status = response.status();
    FetchError::Status { status, body: body_excerpt(response).await }
}

fn fresh_meta(response: &Response) -> PartialMeta {
    PartialMeta {
        etag: header_text(response.headers(), ETAG),
        last_modified: header_text(response.headers(), LAST_MODIFIED),
        length: response.content_length(),
        durable: 0,
        sha256: None,
        content_type: header_text(response.headers(), CONTENT_TYPE),
    }
}

fn header_text(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned)
}

/// Checks that a 206 carries exactly the rest of the file we started.
fn check_content_range(
    headers: &HeaderMap,
    offset: u64,
    length: Option<u64>,
) -> Result<(), String> {
    let value = header_text(headers, CONTENT_RANGE).ok_or("206 without Content-Range")?;
    let parsed = value
        .strip_prefix("bytes ")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(range, total)| Some((range.split_once('-')?, total)));
    let Some(((first, last), total)) = parsed else {
        return Err(format!("unreadable Content-Range {value:?}"));
    };
    let (first, last, total) = (first.parse::<u64>(), last.parse::<u64>(), total.parse::<u64>());
    match (first, last, total, length) {
        (Ok(first), Ok(last), Ok(total), Some(length))
            if first == offset && total == length && last + 1 == length =>
        {
            Ok(())
        }
        _ => Err(format!("Content-Range {value:?} is not the rest from byte {offset}")),
    }
}

/// The blocking half of a download: the file, and how to record progress.
struct Sink {
    file: File,
    partial: Partial,
    meta: PartialMeta,
    offset: u64,
    /// Whether a record of this sink has reached the disk with `tmp/`
    /// fsynced, so that the file's and the record's names are durable.
    names_durable: bool,
}

impl Sink {
    fn new(file: File, partial: Partial, meta: PartialMeta, offset: u64) -> Sink {
        Sink { file, partial, meta, offset, names_durable: false }
    }

    /// Hashes the kept prefix, then hashes and writes every chunk, making
    /// progress durable now and then. Returns the digest and total length.
    // Known limit: this blocking thread lives as long as the download, and
    // tokio does not auto-advance a paused test clock while one runs, so
    // paused-clock tests cannot drive a download that waits on timers.
    fn drain(
        mut self,
        mut chunks: mpsc::Receiver<Bytes>,
        runtime: &tokio::runtime::Handle,
    ) -> io::Result<([u8; 32], u64)> {
        let mut hasher = Sha256::new();
        hash_prefix(&mut self.file, self.offset, &mut hasher)?;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, self.file.try_clone()?);
        let mut total = self.offset;
        loop {
            let next = runtime.block_on(tokio::time::timeout(CHECKPOINT_IDLE, chunks.recv()));
            match next {
                Ok(Some(chunk)) => {
                    hasher.update(&chunk);
                    out.write_all(&chunk)?;
                    total += chunk.len() as u64;
                    if total - self.meta.durable >= CHECKPOINT_BYTES {
                        self.make_durable(&mut out, total, &hasher)?;
                    }
                }
                Ok(None) => break,
                // The body went quiet: a good moment to secure what we have.
                Err(_) if total > self.meta.durable => {
                    self.make_durable(&mut out, total, &hasher)?;
                }
                Err(_) => {}
            }
        }
        self.make_durable(&mut out, total, &hasher)?;
        Ok((hasher.finalize().into(), total))
    }

    /// Fsyncs the file, then records `total` bytes as durable.
    fn make_durable(
        &mut self,
        out: &mut BufWriter<File>,
        total: u64,
        hasher: &Sha256,
    ) -> io::Result<()> {
        out.flush()?;
        out.get_ref().sync_data()?;
        self.meta.durable = total;
        // Whole: the record names the hash too, so that no moment exists
        // when the bytes are all on disk and a crash forgets them. The body
        // can go quiet after its last byte and before its end, so this is
        // any record, not only the last.
        let whole = self.meta.length == Some(total);
        self.meta.sha256 = whole.then(|| hex(&hasher.clone().finalize()));
        // Between the first record and the whole one, a rename lost to a
        // power cut leaves the previous record, which counts fewer bytes but
        // is true: the folder is fsynced at most twice a download.
        let fsync =
            if self.names_durable && !whole { Fsync::Record } else { Fsync::RecordAndFolder };
        self.partial.record(&self.meta, fsync).map_err(|error| error.source)?;
        self.names_durable = true;
        Ok(())
    }
}

/// Feeds the first `length` bytes of `file` to `hasher`, leaving the file
/// positioned after them.
fn hash_prefix(file: &mut File, length: u64, hasher: &mut Sha256) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut buffer = vec![0u8; WRITE_BUFFER];
    let mut left = length;
    while left > 0 {
        let want = buffer.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = file.read(&mut buffer[..want])?;
        if got == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "partial file shrank"));
        }
        hasher.update(&buffer[..got]);
        left -= got as u64;
    }
    file.seek(SeekFrom::Start(length)).map(drop)
}

/// Lower-case hex, as object names use.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn range(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_RANGE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn only_the_exact_rest_of_the_file_is_accepted() {
        assert_eq!(check_content_range(&range("bytes 40-99/100"), 40, Some(100)), Ok(()));
        for bad in ["bytes 0-99/100", "bytes 40-98/100", "bytes 40-99/101", "bytes */100", "x"] {
            assert!(check_content_range(&range(bad), 40, Some(100)).is_err(), "{bad}");
        }
        assert!(check_content_range(&HeaderMap::new(), 40, Some(100)).is_err());
        assert!(check_content_range(&range("bytes 40-99/100"), 40, None).is_err());
    }

    #[test]
    fn the_prefix_hash_joins_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello world").unwrap();
        let mut file = File::options().read(true).write(true).open(&path).unwrap();
        let mut hasher = Sha256::new();
        hash_prefix(&mut file, 6, &mut hasher).unwrap();
        hasher.update(b"world");
        let whole: [u8; 32] = Sha256::digest(b"hello world").into();
        assert_eq!(<[u8; 32]>::from(hasher.finalize()), whole);
        assert!(hash_prefix(&mut file, 100, &mut Sha256::new()).is_err());
    }

    /// A writer draining into a fresh partial download announced as
    /// `length` bytes long, fed through the returned sender.
    struct Draining {
        _dir: tempfile::TempDir,
        partial: Partial,
        sender: mpsc::Sender<Bytes>,
        writer: tokio::task::JoinHandle<io::Result<([u8; 32], u64)>>,
    }

    fn start_draining(length: u64) -> Draining {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let partial = store.partial(Kind::Image, "a");
        let meta = PartialMeta {
            etag: Some("\"e\"".into()),
            last_modified: None,
            length: Some(length),
            durable: 0,
            sha256: None,
            content_type: None,
        };
        let file = partial.begin(&meta).unwrap();
        let sink = Sink::new(file, partial.clone(), meta, 0);
        let (sender, receiver) = mpsc::channel(1);
        let runtime = tokio::runtime::Handle::current();
        let writer = tokio::task::spawn_blocking(move || sink.drain(receiver, &runtime));
        Draining { _dir: dir, partial, sender, writer }
    }

    /// Drains `body` into a fresh partial download announced as `length`
    /// bytes long, and returns what its record says afterwards.
    async fn drain_into_record(body: &'static [u8], length: u64) -> PartialMeta {
        let Draining { _dir, partial, sender, writer } = start_draining(length);
        sender.send(Bytes::from_static(body)).await.unwrap();
        drop(sender);
        writer.await.unwrap().unwrap();
        record_of(&partial)
    }

    fn record_of(partial: &Partial) -> PartialMeta {
        let text = std::fs::read(partial.record_path()).unwrap();
        serde_json::from_slice(&text).unwrap()
    }

    #[tokio::test]
    async fn the_record_that_makes_a_whole_body_durable_names_its_hash() {
        let meta = drain_into_record(b"hello", 5).await;
        assert_eq!(meta.durable, 5);
        assert_eq!(meta.sha256.as_deref(), Some(hex(&Sha256::digest(b"hello")).as_str()));
        // A body cut short is durable as far as it went, and has no hash.
        let meta = drain_into_record(b"hel", 5).await;
        assert_eq!((meta.durable, meta.sha256), (3, None));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_quiet_after_its_last_byte_is_recorded_with_its_hash() {
        let Draining { _dir, partial, sender, writer } = start_draining(5);
        sender.send(Bytes::from_static(b"hello")).await.unwrap();
        // The end of the body has not come; the idle checkpoint does.
        let mut meta = record_of(&partial);
        for _ in 0..100 {
            if meta.durable == 5 {
                break;
            }
            tokio::time::sleep(CHECKPOINT_IDLE / 10).await;
            meta = record_of(&partial);
        }
        assert_eq!(meta.durable, 5, "the idle checkpoint came");
        assert_eq!(meta.sha256.as_deref(), Some(hex(&Sha256::digest(b"hello")).as_str()));
        assert!(partial.finished().is_some(), "a kill now costs no request");
        drop(sender);
        let (digest, bytes) = writer.await.unwrap().unwrap();
        assert_eq!((hex(&digest), bytes), (meta.sha256.unwrap(), 5));
    }
}
