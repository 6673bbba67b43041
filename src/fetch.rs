//! The storage client: streams a lease's body into the store while hashing.
//!
//! Storage requests go through their own HTTP client, with no default
//! headers and no API key: a signed URL is its own credential, and the
//! storage host is a different party from the API. The body is never held
//! whole: network chunks pass through a small bounded channel to a blocking
//! thread that hashes and writes them, so memory stays flat however large the
//! file, and the async workers never wait on the disk.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, StatusCode};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::api::{Lease, body_excerpt, describe_transport};
use crate::store::{Store, StoreError, TempObject};

/// Chunks in flight between the network and the disk writer. With hyper's
/// chunks of at most a few tens of KiB this caps the buffer at a few MiB.
const CHUNKS_IN_FLIGHT: usize = 64;

/// The writer's buffer: large writes keep the syscall count low.
const WRITE_BUFFER: usize = 1 << 20;

/// A file safely in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub sha256: String,
    pub bytes: u64,
    pub content_type: Option<String>,
    /// Relative to the store root.
    pub object: PathBuf,
}

/// What can go wrong fetching a signed URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("storage answered {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status { status: StatusCode, body: String },
    #[error("storage answered {status} (a redirect), which we do not follow")]
    Redirected { status: StatusCode },
    #[error("storage request failed: {}", describe_transport(.0))]
    Transport(#[source] reqwest::Error),
    #[error("body cut short: {received} of {expected} bytes")]
    Truncated { expected: u64, received: u64 },
    #[error("cannot write {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
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
}

impl StorageClient {
    /// `http` must carry no default headers: it talks to a host that must
    /// never see anything meant for the API.
    pub fn new(http: Client) -> StorageClient {
        StorageClient { http }
    }

    /// Downloads the lease's URL into `store`.
    pub async fn fetch(&self, lease: &Lease, store: &Store) -> Result<Fetched, FetchError> {
        let response =
            self.http.get(lease.url.clone()).send().await.map_err(FetchError::Transport)?;
        let status = response.status();
        if status.is_redirection() {
            return Err(FetchError::Redirected { status });
        }
        if status != StatusCode::OK {
            let body = body_excerpt(response).await;
            return Err(FetchError::Status { status, body });
        }
        let expected = response.content_length();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut temp = store.create_temp()?;
        let (sha256, bytes) = stream_to(&mut temp, response).await?;
        if let Some(expected) = expected.filter(|&expected| expected != bytes) {
            return Err(FetchError::Truncated { expected, received: bytes });
        }
        let committing = store.clone();
        let hex = sha256.clone();
        let object = tokio::task::spawn_blocking(move || committing.commit(temp, &hex))
            .await
            .expect("the commit thread does not panic")?;
        Ok(Fetched { sha256, bytes, content_type, object })
    }
}

/// Streams the body into the temp file; returns the hex SHA-256 and length.
async fn stream_to(
    temp: &mut TempObject,
    response: reqwest::Response,
) -> Result<(String, u64), FetchError> {
    let (sender, receiver) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let file = temp.take_file();
    let path = temp.path().to_path_buf();
    let writer = tokio::task::spawn_blocking(move || hash_and_write(file, receiver));
    let mut body = response.bytes_stream();
    let mut network_error = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            // A closed channel means the writer failed; its error says why.
            Ok(chunk) => {
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
    let (file, digest, bytes) = written.map_err(|source| FetchError::Io { path, source })?;
    temp.put_file(file);
    match network_error {
        Some(error) => Err(error),
        None => Ok((hex(&digest), bytes)),
    }
}

/// The blocking half: hashes and writes every chunk, then fsyncs.
fn hash_and_write(
    file: File,
    mut chunks: mpsc::Receiver<Bytes>,
) -> std::io::Result<(File, [u8; 32], u64)> {
    let mut hasher = Sha256::new();
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut bytes = 0u64;
    while let Some(chunk) = chunks.blocking_recv() {
        hasher.update(&chunk);
        out.write_all(&chunk)?;
        bytes += chunk.len() as u64;
    }
    let file = out.into_inner().map_err(|error| error.into_error())?;
    file.sync_all()?;
    Ok((file, hasher.finalize().into(), bytes))
}

/// Lower-case hex, as object names use.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}
