//! Partial files a killed or crashed run left behind, taken up by the next
//! run: which of their bytes it keeps (all of them under the boot that wrote
//! them, else the durable ones), and the ones that need no request at all.
//! Each test lays out the partial file and its record as the run would have
//! left them, then runs the binary against the simulator.

mod common;

use std::io::Write;
use std::path::Path;

use common::{files_under, manifest, report_rows, run_against, sha256_of, summary, unlimited};
use identifai_fetch::manifest::Kind;
use identifai_fetch::simulator::{Endpoint, FileType, Received, SimConfig, Simulator};
use identifai_fetch::store::{Partial, PartialMeta, Store};

const CLIP: &str = "clip";
const CLIP_BYTES: u64 = 3 << 20;

/// A boot that is not the running one: what a reboot leaves behind.
const EARLIER_BOOT: &str = "00000000-0000-0000-0000-000000000000";

async fn simulator() -> Simulator {
    let mut config = SimConfig::default();
    config.sizes.insert(CLIP.into(), CLIP_BYTES);
    unlimited(config).await
}

/// The clip's partial download in the store at `out`, its record saying
/// `durable` and its file holding `bytes`; recorded under this boot, as a
/// run killed with -9 leaves it.
fn leave_partial(out: &Path, sim: &Simulator, durable: u64, bytes: &[u8]) -> Partial {
    let store = Store::open(out).unwrap();
    let partial = store.partial(Kind::Video, CLIP);
    let content = sim.content(FileType::Video, CLIP);
    let mut meta = PartialMeta {
        etag: Some(content.etag()),
        last_modified: None,
        length: Some(content.size()),
        durable: 0,
        sha256: None,
        content_type: Some("video/mp4".into()),
    };
    let mut file = partial.begin(&meta).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_data().unwrap();
    meta.durable = durable;
    partial.checkpoint(&meta).unwrap();
    partial
}

/// The clip's first `n` bytes, as the simulator serves them.
fn clip_bytes(sim: &Simulator, n: u64) -> Vec<u8> {
    sim.content(FileType::Video, CLIP).bytes(0..n)
}

/// Rewrites the record as if a boot before this one had written it.
fn from_an_earlier_boot(partial: &Partial) {
    let text = std::fs::read(partial.record_path()).unwrap();
    let mut record: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert!(record["boot_id"].is_string(), "the record names its boot: {record}");
    record["boot_id"] = EARLIER_BOOT.into();
    std::fs::write(partial.record_path(), record.to_string()).unwrap();
}

fn storage_requests(sim: &Simulator) -> Vec<Received> {
    sim.received().into_iter().filter(|r| r.endpoint == Endpoint::Storage).collect()
}

/// The run stored the clip whole and correct, and left nothing behind.
fn assert_clip_stored(sim: &Simulator, out: &Path) {
    let row = &report_rows(out)[0];
    assert_eq!(row["status"], "ok", "{row:?}");
    let expected = sim.expected_sha256(FileType::Video, CLIP);
    assert_eq!(row["sha256"], expected);
    let object = out.join(Store::relative_object_path(&expected));
    assert_eq!(sha256_of(&object), expected, "the object's bytes are the clip's");
    assert!(files_under(&out.join("tmp")).is_empty(), "tmp/ is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_past_the_durable_ones_are_kept_under_the_same_boot() {
    if identifai_fetch::disk::boot_id().is_none() {
        return; // Not Linux: the boot is unknown, so only durable bytes count.
    }
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // Written up to an odd byte, durable only to the first MiB.
    let written = 1_234_567;
    leave_partial(&out, &sim, 1 << 20, &clip_bytes(&sim, written));
    let path = manifest(dir.path(), "type,identifier\nvideo,clip\n");
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);

    let storage = storage_requests(&sim);
    assert_eq!(storage.len(), 1);
    assert_eq!(storage[0].header("range"), Some("bytes=1234567-"), "from the file's length");
    assert_eq!(storage[0].status, Some(206));
    assert_eq!(summary(&out)["bytes_downloaded"], CLIP_BYTES - written);
    assert_clip_stored(&sim, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reboot_only_the_durable_bytes_are_kept() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // Past the durable MiB, what a power cut may leave: zeros, not the clip.
    let mut bytes = clip_bytes(&sim, 1 << 20);
    bytes.resize(1_234_567, 0);
    let partial = leave_partial(&out, &sim, 1 << 20, &bytes);
    from_an_earlier_boot(&partial);
    let path = manifest(dir.path(), "type,identifier\nvideo,clip\n");
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);

    let storage = storage_requests(&sim);
    assert_eq!(storage.len(), 1);
    assert_eq!(storage[0].header("range"), Some("bytes=1048576-"), "from the durable bytes");
    assert_eq!(summary(&out)["bytes_downloaded"], CLIP_BYTES - (1 << 20));
    assert_clip_stored(&sim, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_file_whose_record_lacks_the_hash_is_finished_without_a_request() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,identifier\nvideo,clip\n");
    let whole = clip_bytes(&sim, CLIP_BYTES);

    // Every byte durable, no hash: an idle checkpoint after the last byte,
    // then a kill (and, to count only what the record says, a reboot).
    let out = dir.path().join("idle");
    let partial = leave_partial(&out, &sim, CLIP_BYTES, &whole);
    from_an_earlier_boot(&partial);
    let seen = run_against(&sim, &path, &out, &[]).await;
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    assert_eq!(sim.received().len(), 0, "no API call, no storage request");
    assert_eq!(report_rows(&out)[0]["api_calls"], "0");
    assert_clip_stored(&sim, &out);

    // Every byte written, none fsynced: a kill after the last write.
    if identifai_fetch::disk::boot_id().is_some() {
        let out = dir.path().join("killed");
        leave_partial(&out, &sim, 0, &whole);
        let seen = run_against(&sim, &path, &out, &[]).await;
        assert_eq!(seen.code, 0, "{}", seen.stderr);
        assert_eq!(sim.received().len(), 0, "no API call, no storage request");
        assert_clip_stored(&sim, &out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_longer_than_its_download_is_fetched_afresh() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let path = manifest(dir.path(), "type,identifier\nvideo,clip\n");
    let mut bytes = clip_bytes(&sim, CLIP_BYTES);
    bytes.push(0);
    // Neither the whole file nor its durable first MiB, under either boot.
    for (name, earlier) in [("this-boot", false), ("earlier-boot", true)] {
        let out = dir.path().join(name);
        let partial = leave_partial(&out, &sim, 1 << 20, &bytes);
        if earlier {
            from_an_earlier_boot(&partial);
        }
        let before = storage_requests(&sim).len();
        let seen = run_against(&sim, &path, &out, &[]).await;
        assert_eq!(seen.code, 0, "{}", seen.stderr);

        let storage = &storage_requests(&sim)[before..];
        assert_eq!(storage.len(), 1, "{name}");
        assert_eq!(storage[0].header("range"), None, "{name}: none of its bytes are trusted");
        assert_eq!(summary(&out)["bytes_downloaded"], CLIP_BYTES, "{name}");
        assert_clip_stored(&sim, &out);
    }
}
