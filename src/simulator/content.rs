//! File bodies, generated on demand instead of stored.
//!
//! Each identifier owns a seed taken from the SHA-256 of its name. The body is the
//! little-endian bytes of a splitmix64 sequence run from that seed, and splitmix64 can
//! jump straight to any position, so a range or a multi-gigabyte body is produced chunk by
//! chunk from any offset and never held in memory. Sizes default to a small range per
//! file type so tests stay quick; the configuration can fix a size or make one identifier
//! serve another's bytes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::fmt::Write as _;
use std::ops::{Range, RangeInclusive};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

/// Bytes per streamed chunk: big enough that per-chunk overhead vanishes, small enough
/// that memory stays flat whatever the body size.
pub(super) const CHUNK: usize = 64 * 1024;

const KIB: u64 = 1024;

/// The three file types the download endpoint serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    /// `audio`, served as `audio/mpeg`, 100–600 KiB by default.
    Audio,
    /// `video`, served as `video/mp4`, 200 KiB–1 MiB by default.
    Video,
    /// `image`, served as `image/jpeg`, 20–300 KiB by default.
    Image,
}

impl FileType {
    /// Every type, in the order the vendor lists them.
    pub const ALL: [FileType; 3] = [FileType::Audio, FileType::Video, FileType::Image];

    /// Parses the path segment the API uses (`audio`, `video` or `image`).
    pub fn parse(segment: &str) -> Option<FileType> {
        FileType::ALL.into_iter().find(|kind| kind.as_str() == segment)
    }

    /// The path segment the API uses for this type.
    pub fn as_str(self) -> &'static str {
        match self {
            FileType::Audio => "audio",
            FileType::Video => "video",
            FileType::Image => "image",
        }
    }

    /// The `Content-Type` storage sends.
    // Known limit: a frame or audio track of a video is served as the video's
    // type (video/mp4), since the URL names only the type the API was asked for.
    pub(super) fn mime(self) -> &'static str {
        match self {
            FileType::Audio => "audio/mpeg",
            FileType::Video => "video/mp4",
            FileType::Image => "image/jpeg",
        }
    }

    /// The extension on storage object names, as a real bucket would have.
    pub(super) fn extension(self) -> &'static str {
        match self {
            FileType::Audio => "mp3",
            FileType::Video => "mp4",
            FileType::Image => "jpg",
        }
    }

    fn default_sizes(self) -> RangeInclusive<u64> {
        match self {
            FileType::Audio => 100 * KIB..=600 * KIB,
            FileType::Video => 200 * KIB..=1024 * KIB,
            FileType::Image => 20 * KIB..=300 * KIB,
        }
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body served for one identifier: a seed and a length, nothing stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Content {
    seed: u64,
    size: u64,
}

impl Content {
    /// `size` bytes drawn from the seed of `owner`, the identifier that owns the bytes.
    pub fn new(owner: &str, size: u64) -> Content {
        Content { seed: digest_words(owner).0, size }
    }

    /// Length of the body in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Strong entity tag, quoted as it appears in an `ETag` header.
    pub fn etag(&self) -> String {
        format!("\"{:016x}-{:x}\"", self.seed, self.size)
    }

    /// Fills `buf` with the body's bytes from `offset` on. The sequence goes on past the
    /// body's end; staying inside it is the caller's business.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let first_word = offset / 8;
        let skip = (offset % 8) as usize;
        // An offset inside a word takes only the rest of that word first.
        let head_len = if skip == 0 { 0 } else { (8 - skip).min(buf.len()) };
        let (head, rest) = buf.split_at_mut(head_len);
        head.copy_from_slice(&self.word(first_word)[skip..skip + head_len]);
        let mut word = first_word + u64::from(head_len > 0);
        let mut whole = rest.chunks_exact_mut(8);
        for out in &mut whole {
            out.copy_from_slice(&self.word(word));
            word += 1;
        }
        let tail = whole.into_remainder();
        let tail_len = tail.len();
        tail.copy_from_slice(&self.word(word)[..tail_len]);
    }

    /// The bytes in `range`, clipped to the body; meant for tests of small ranges.
    pub fn bytes(&self, range: Range<u64>) -> Vec<u8> {
        let end = range.end.min(self.size);
        let start = range.start.min(end);
        let mut out = vec![0; (end - start) as usize];
        self.fill(start, &mut out);
        out
    }

    /// Hex SHA-256 of the whole body, computed chunk by chunk.
    pub fn sha256_hex(&self) -> String {
        let mut hasher = Sha256::new();
        let mut buf = vec![0; CHUNK];
        for offset in (0..self.size).step_by(CHUNK) {
            let len = chunk_len(offset, self.size);
            self.fill(offset, &mut buf[..len]);
            hasher.update(&buf[..len]);
        }
        hex(&hasher.finalize())
    }

    /// The bytes in `range` (already within the body) as a stream of chunks.
    pub(super) fn stream(
        self,
        range: Range<u64>,
    ) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        let end = range.end;
        futures::stream::iter(range.step_by(CHUNK)).map(move |offset| {
            let mut chunk = vec![0; chunk_len(offset, end)];
            self.fill(offset, &mut chunk);
            Ok(Bytes::from(chunk))
        })
    }

    fn word(&self, index: u64) -> [u8; 8] {
        splitmix64(self.seed, index).to_le_bytes()
    }
}

/// Length of the chunk that starts at `offset` in a body ending at `end`.
fn chunk_len(offset: u64, end: u64) -> usize {
    // The minimum is at most CHUNK, so the conversion cannot truncate.
    (end - offset).min(CHUNK as u64) as usize
}

/// Output number `index` of the splitmix64 sequence that starts from state `seed`.
fn splitmix64(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The content served for `identifier` requested as `kind`.
pub(super) fn lookup(
    sizes: &HashMap<String, u64>,
    every_size: Option<u64>,
    aliases: &HashMap<String, String>,
    kind: FileType,
    identifier: &str,
) -> Content {
    let owner = owner(aliases, identifier);
    let fallback = || every_size.unwrap_or_else(|| default_size(kind, owner));
    let size = sizes.get(owner).copied().unwrap_or_else(fallback);
    Content::new(owner, size)
}

/// The identifier whose bytes `identifier` serves: the end of its alias chain.
fn owner<'a>(aliases: &'a HashMap<String, String>, identifier: &'a str) -> &'a str {
    let mut current = identifier;
    // At most one step per alias, so a cycle in the configuration cannot hang a request.
    for _ in 0..aliases.len() {
        match aliases.get(current) {
            Some(next) => current = next,
            None => break,
        }
    }
    current
}

fn default_size(kind: FileType, owner: &str) -> u64 {
    let sizes = kind.default_sizes();
    let span = sizes.end() - sizes.start() + 1;
    sizes.start() + digest_words(owner).1 % span
}

/// Two independent words from the SHA-256 of `identifier`: the seed and a size pick.
fn digest_words(identifier: &str) -> (u64, u64) {
    let digest = Sha256::digest(identifier.as_bytes());
    let word = |at: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&digest[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    (word(0), word(8))
}

/// Lower-case hex of `bytes`.
pub(super) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aliases(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn any_offset_matches_the_body_from_zero() {
        let content = Content::new("offsets", 64);
        let whole = content.bytes(0..64);
        for start in 0..24 {
            for len in 0..20 {
                let mut part = vec![0; len];
                content.fill(start, &mut part);
                let start = start as usize;
                assert_eq!(part, whole[start..start + len], "start {start} len {len}");
            }
        }
    }

    #[test]
    fn bodies_depend_on_the_identifier_only() {
        let a = Content::new("a", 4096);
        assert_eq!(a.bytes(0..4096), Content::new("a", 4096).bytes(0..4096));
        assert_ne!(a.bytes(0..4096), Content::new("b", 4096).bytes(0..4096));
        assert_ne!(a.etag(), Content::new("b", 4096).etag());
        assert_ne!(a.etag(), Content::new("a", 4095).etag());
        assert!(a.etag().starts_with('"') && a.etag().ends_with('"'));
    }

    #[test]
    fn default_sizes_stay_in_the_range_of_their_type() {
        let (sizes, aliases) = (HashMap::new(), HashMap::new());
        for kind in FileType::ALL {
            for n in 0..200 {
                let size = lookup(&sizes, None, &aliases, kind, &format!("id-{n}")).size();
                assert!(kind.default_sizes().contains(&size), "{kind} {size}");
            }
        }
    }

    #[test]
    fn aliases_share_bytes_and_size_and_cycles_end() {
        let sizes = HashMap::from([("c".to_string(), 777)]);
        let chain = aliases(&[("a", "b"), ("b", "c")]);
        let a = lookup(&sizes, None, &chain, FileType::Image, "a");
        assert_eq!(a, lookup(&sizes, None, &chain, FileType::Image, "c"));
        assert_eq!(a.size(), 777);
        let cycle = aliases(&[("x", "y"), ("y", "x")]);
        let _ = lookup(&sizes, None, &cycle, FileType::Image, "x");
    }

    #[test]
    fn one_size_for_all_replaces_the_defaults_but_not_explicit_sizes() {
        let sizes = HashMap::from([("big".to_owned(), 5000)]);
        let none = HashMap::new();
        assert_eq!(lookup(&sizes, Some(64), &none, FileType::Video, "any").size(), 64);
        assert_eq!(lookup(&sizes, Some(64), &none, FileType::Video, "big").size(), 5000);
    }

    #[test]
    fn file_types_round_trip_their_path_segment() {
        for kind in FileType::ALL {
            assert_eq!(FileType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(FileType::parse("Image"), None);
        assert_eq!(FileType::parse("text"), None);
    }

    #[tokio::test]
    async fn stream_crosses_chunk_boundaries_exactly() {
        let content = Content::new("stream", 3 * CHUNK as u64);
        let range = CHUNK as u64 - 3..2 * CHUNK as u64 + 5;
        let chunks: Vec<_> = content.stream(range.clone()).collect().await;
        let joined: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(joined, content.bytes(range));
    }

    #[test]
    fn sha256_covers_the_whole_body() {
        let content = Content::new("hash", CHUNK as u64 + 11);
        let expected = hex(&Sha256::digest(content.bytes(0..content.size())));
        assert_eq!(content.sha256_hex(), expected);
        assert_eq!(Content::new("empty", 0).sha256_hex(), hex(&Sha256::digest(b"")));
    }
}
