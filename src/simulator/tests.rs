//! End-to-end tests: a real simulator on loopback, driven by reqwest over TCP.
//!
//! Each test starts its own simulator and uses a client that does not follow redirects,
//! so every hop (API, then storage) is visible. No test sleeps, and every loop is bounded.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::fmt::rfc2822::DateTimeParser;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, IF_RANGE, LOCATION, RANGE};
use reqwest::redirect::Policy;
use reqwest::{Client, StatusCode};
use sha2::{Digest, Sha256};

use super::content::hex;
use super::*;

fn client() -> Client {
    Client::builder().redirect(Policy::none()).no_proxy().build().expect("test client")
}

/// Settings for tests that are not about rate limits, so none of them meets a 429.
fn unlimited() -> SimConfig {
    SimConfig { limits: Vec::new(), ..SimConfig::default() }
}

async fn start(config: SimConfig) -> Simulator {
    Simulator::start(config).await.expect("simulator starts")
}

fn download_path(kind: FileType, identifier: &str) -> String {
    let encoded = utf8_percent_encode(identifier, NON_ALPHANUMERIC);
    format!("/api/v2/submissions/{kind}/{encoded}/download")
}

/// One API call for `identifier`, with the right key.
async fn call(client: &Client, sim: &Simulator, kind: FileType, id: &str) -> reqwest::Response {
    let url = format!("{}{}", sim.api_url(), download_path(kind, id));
    client.get(url).header("X-Api-Key", sim.api_key()).send().await.expect("API answers")
}

/// The pre-signed URL the API redirects to for `identifier`.
async fn resolve(client: &Client, sim: &Simulator, kind: FileType, id: &str) -> String {
    let response = call(client, sim, kind, id).await;
    assert_eq!(response.status(), StatusCode::FOUND, "resolving {id}");
    header(&response, LOCATION.as_str()).to_owned()
}

/// The whole body behind a pre-signed URL, which must answer 200.
async fn fetch(client: &Client, url: &str) -> Vec<u8> {
    let response = client.get(url).send().await.expect("storage answers");
    assert_eq!(response.status(), StatusCode::OK, "{url}");
    response.bytes().await.expect("whole body").to_vec()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    let value = response.headers().get(name);
    value.and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

#[tokio::test]
async fn missing_or_wrong_keys_get_401_and_are_not_counted() {
    let sim = start(SimConfig::default()).await;
    let client = client();
    let url = format!("{}{}", sim.api_url(), download_path(FileType::Image, "a"));
    for key in [None, Some("wrong-key"), None, Some("")] {
        let request = client.get(&url);
        let request = match key {
            Some(key) => request.header("X-Api-Key", key),
            None => request,
        };
        let response = request.send().await.expect("API answers");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.text().await.unwrap(), r#"{"message":"Unauthenticated."}"#);
    }
    // Four refusals cost nothing: both requests the 2-per-second limit allows still pass.
    resolve(&client, &sim, FileType::Image, "a").await;
    resolve(&client, &sim, FileType::Image, "a").await;
    assert_eq!((sim.api_calls(), sim.rate_limited(), sim.storage_requests()), (6, 0, 0));
}

#[tokio::test]
async fn redirect_leads_to_the_expected_bytes_on_another_host() {
    let sim = start(unlimited()).await;
    let client = client();
    let kind = FileType::Image;
    let url = resolve(&client, &sim, kind, "sample-1").await;
    let storage_prefix = format!("http://{}/bucket/image/", sim.storage_addr());
    assert!(url.starts_with(&storage_prefix), "{url}");
    assert_ne!(sim.storage_addr().port(), sim.api_addr().port());

    let response = client.get(&url).send().await.expect("storage answers");
    assert_eq!(response.status(), StatusCode::OK);
    let content = sim.content(kind, "sample-1");
    assert_eq!(header(&response, CONTENT_TYPE.as_str()), "image/jpeg");
    assert_eq!(header(&response, CONTENT_LENGTH.as_str()), content.size().to_string());
    assert_eq!(header(&response, "etag"), content.etag());
    assert_eq!(header(&response, "accept-ranges"), "bytes");
    assert_eq!(header(&response, "last-modified"), "Mon, 01 Jan 2024 00:00:00 GMT");
    let body = response.bytes().await.expect("whole body");
    assert_eq!(body.len() as u64, sim.size_of(kind, "sample-1"));
    assert_eq!(sha256_hex(&body), sim.expected_sha256(kind, "sample-1"));

    let received = sim.received();
    assert_eq!(received.len(), 2);
    let (api, storage) = (&received[0], &received[1]);
    assert_eq!((api.endpoint, api.status), (Endpoint::Api, Some(302)));
    assert_eq!(api.method, "GET");
    assert_eq!(api.header("X-API-KEY"), Some(sim.api_key()));
    assert_eq!((storage.endpoint, storage.status), (Endpoint::Storage, Some(200)));
    assert_eq!(storage.header("x-api-key"), None);
    assert!(api.at <= storage.at);
}

#[tokio::test]
async fn sizes_and_aliases_shape_the_content() {
    let mut config = unlimited();
    config.sizes.insert("fixed".into(), 1234);
    config.same_content_as.insert("copy".into(), "fixed".into());
    let sim = start(config).await;
    let client = client();
    let kind = FileType::Audio;
    let fixed = fetch(&client, &resolve(&client, &sim, kind, "fixed").await).await;
    let copy = fetch(&client, &resolve(&client, &sim, kind, "copy").await).await;
    let other = fetch(&client, &resolve(&client, &sim, kind, "other").await).await;
    assert_eq!(fixed.len(), 1234);
    assert_eq!(fixed, copy);
    assert_ne!(sha256_hex(&fixed), sha256_hex(&other));
    assert_eq!(sim.expected_sha256(kind, "copy"), sha256_hex(&fixed));
    assert_eq!(sim.size_of(kind, "other"), other.len() as u64);
}

#[tokio::test]
async fn listed_identifiers_and_unknown_types_get_404_or_403() {
    let mut config = unlimited();
    config.not_found.insert("gone".into());
    config.forbidden.insert("secret".into());
    let sim = start(config).await;
    let client = client();
    let gone = call(&client, &sim, FileType::Video, "gone").await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let secret = call(&client, &sim, FileType::Video, "secret").await;
    assert_eq!(secret.status(), StatusCode::FORBIDDEN);
    let message = secret.text().await.unwrap();
    assert_eq!(message, r#"{"message":"This action is unauthorized."}"#);
    let unknown = format!("{}/api/v2/submissions/text/abc/download", sim.api_url());
    let unknown = client.get(unknown).header("X-Api-Key", sim.api_key()).send().await;
    assert_eq!(unknown.expect("API answers").status(), StatusCode::NOT_FOUND);
    assert_eq!(sim.storage_requests(), 0);
}

// The paused clock keeps all three requests in the same instant however loaded the machine
// is: with real time, a slow third request could open a new window and pass.
#[tokio::test(start_paused = true)]
async fn third_request_in_a_second_gets_429_with_rate_limit_headers() {
    let before = unix_now();
    let sim = start(SimConfig::default()).await;
    let after = unix_now();
    let client = client();
    let first = call(&client, &sim, FileType::Image, "a").await;
    assert_eq!(first.status(), StatusCode::FOUND);
    assert_eq!(header(&first, "x-ratelimit-limit"), "2");
    assert_eq!(header(&first, "x-ratelimit-remaining"), "1");
    let second = call(&client, &sim, FileType::Image, "b").await;
    assert_eq!(header(&second, "x-ratelimit-remaining"), "0");

    let third = call(&client, &sim, FileType::Image, "c").await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&third, "retry-after"), "1");
    assert_eq!(header(&third, "x-ratelimit-limit"), "2");
    assert_eq!(header(&third, "x-ratelimit-remaining"), "0");
    // The window opened at the simulator's start and lasts a second, rounded up to whole
    // seconds of the wall time captured at that start.
    let reset: u64 = header(&third, "x-ratelimit-reset").parse().expect("Unix seconds");
    assert!((before + 1..=after + 2).contains(&reset), "reset {reset}, start {before}..{after}");
    assert_eq!(third.text().await.unwrap(), r#"{"message":"Too Many Attempts."}"#);
    assert_eq!(sim.rate_limited(), 1);
    let times: Vec<_> = sim.received().iter().map(|r| r.at).collect();
    assert_eq!(times, [Duration::ZERO; 3], "no time passed between the three requests");
}

#[tokio::test(start_paused = true)]
async fn waiting_out_retry_after_succeeds_because_a_429_costs_nothing() {
    let sim = start(SimConfig::default()).await;
    let client = client();
    resolve(&client, &sim, FileType::Image, "a").await;
    resolve(&client, &sim, FileType::Image, "a").await;
    let refused = call(&client, &sim, FileType::Image, "a").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = header(&refused, "retry-after").parse().expect("seconds");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    // The refused request did not count, so the new one-second window has room for two.
    let again = call(&client, &sim, FileType::Image, "a").await;
    assert_eq!(again.status(), StatusCode::FOUND);
    assert_eq!(header(&again, "x-ratelimit-remaining"), "1");
    let times: Vec<_> = sim.received().iter().map(|r| r.at.as_secs()).collect();
    assert_eq!(times, [0, 0, 0, 1]);
}

#[tokio::test]
async fn retry_after_can_be_an_http_date_or_left_out() {
    let limits = vec![WindowLimit::new(1, Duration::from_secs(60))];
    let dated = SimConfig {
        limits: limits.clone(),
        retry_after: RetryAfterForm::HttpDate,
        ..SimConfig::default()
    };
    let sim = start(dated).await;
    let client = client();
    resolve(&client, &sim, FileType::Image, "a").await;
    let refused = call(&client, &sim, FileType::Image, "a").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let date = header(&refused, "retry-after");
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
    let when = DateTimeParser::new().parse_timestamp(date).expect("IMF-fixdate");
    let reset: i64 = header(&refused, "x-ratelimit-reset").parse().expect("Unix seconds");
    assert_eq!(when.as_second(), reset);

    let silent = SimConfig { limits, retry_after: RetryAfterForm::Omitted, ..SimConfig::default() };
    let sim = start(silent).await;
    resolve(&client, &sim, FileType::Image, "a").await;
    let refused = call(&client, &sim, FileType::Image, "a").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().get("retry-after").is_none());
    assert!(refused.headers().get("x-ratelimit-reset").is_some());
}

#[tokio::test(start_paused = true)]
async fn x_ratelimit_reset_can_be_left_out_or_name_a_later_moment() {
    let limits = vec![WindowLimit::new(1, Duration::from_secs(60))];
    let later = SimConfig {
        limits: limits.clone(),
        retry_after: RetryAfterForm::HttpDate,
        rate_limit_reset: ResetForm::Later(Duration::from_secs(30)),
        ..SimConfig::default()
    };
    let sim = start(later).await;
    let client = client();
    resolve(&client, &sim, FileType::Image, "a").await;
    let refused = call(&client, &sim, FileType::Image, "a").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let when = DateTimeParser::new().parse_timestamp(header(&refused, "retry-after"));
    let reset: i64 = header(&refused, "x-ratelimit-reset").parse().expect("Unix seconds");
    assert_eq!(reset - when.expect("IMF-fixdate").as_second(), 30);

    let omitted =
        SimConfig { limits, rate_limit_reset: ResetForm::Omitted, ..SimConfig::default() };
    let sim = start(omitted).await;
    resolve(&client, &sim, FileType::Image, "a").await;
    let refused = call(&client, &sim, FileType::Image, "a").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // Both requests came at the same paused instant, so the whole window is still ahead.
    assert_eq!(header(&refused, "retry-after"), "60");
    assert!(refused.headers().get("x-ratelimit-reset").is_none());
    assert_eq!(header(&refused, "x-ratelimit-remaining"), "0");
}

#[tokio::test]
async fn ranges_get_206_and_a_stale_if_range_gets_everything() {
    let mut config = unlimited();
    config.sizes.insert("r".into(), 1000);
    let sim = start(config).await;
    let client = client();
    let url = resolve(&client, &sim, FileType::Video, "r").await;
    let content = sim.content(FileType::Video, "r");
    let get = |range: &str| client.get(&url).header(RANGE, range);

    let part = get("bytes=100-199").send().await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&part, "content-range"), "bytes 100-199/1000");
    assert_eq!(part.bytes().await.unwrap(), content.bytes(100..200));

    let tail = get("bytes=990-").header(IF_RANGE, content.etag()).send().await.unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&tail, "content-range"), "bytes 990-999/1000");
    assert_eq!(tail.bytes().await.unwrap(), content.bytes(990..1000));

    let stale = get("bytes=990-").header(IF_RANGE, "\"stale\"").send().await.unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(stale.bytes().await.unwrap(), content.bytes(0..1000));

    let beyond = get("bytes=1000-").send().await.unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&beyond, "content-range"), "bytes */1000");
    // Only object bytes count, not error bodies: the range, the tail and the whole file.
    assert_eq!(sim.body_bytes_sent(), 100 + 10 + 1000);
}

#[tokio::test]
async fn expired_and_forged_urls_get_403_with_s3_xml() {
    let config = SimConfig { url_validity: Duration::ZERO, ..unlimited() };
    let sim = start(config).await;
    let client = client();
    let url = resolve(&client, &sim, FileType::Image, "a").await;
    let expired = client.get(&url).send().await.unwrap();
    assert_eq!(expired.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&expired, CONTENT_TYPE.as_str()), "application/xml");
    let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code>\
               <Message>Request has expired</Message></Error>";
    assert_eq!(expired.text().await.unwrap(), xml);

    let sim = start(unlimited()).await;
    let url = resolve(&client, &sim, FileType::Image, "a").await;
    let flipped = if url.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{flipped}", &url[..url.len() - 1]);
    let refused = client.get(&forged).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(refused.text().await.unwrap().contains("<Code>SignatureDoesNotMatch</Code>"));
}

#[tokio::test(start_paused = true)]
async fn urls_stop_working_when_their_validity_runs_out() {
    let config = SimConfig { url_validity: Duration::from_secs(60), ..unlimited() };
    let sim = start(config).await;
    let client = client();
    let url = resolve(&client, &sim, FileType::Audio, "a").await;
    fetch(&client, &url).await;
    tokio::time::advance(Duration::from_secs(61)).await;
    let late = client.get(&url).send().await.unwrap();
    assert_eq!(late.status(), StatusCode::FORBIDDEN);
    assert!(late.text().await.unwrap().contains("<Code>AccessDenied</Code>"));
}

#[tokio::test]
async fn truncation_fault_ends_the_body_after_exactly_n_bytes_once() {
    let mut config = unlimited();
    config.sizes.insert("cut".into(), 200_000);
    config.faults.insert("cut".into(), vec![Fault::StorageTruncate(70_000)]);
    let sim = start(config).await;
    let client = client();
    let url = resolve(&client, &sim, FileType::Image, "cut").await;

    let mut response = client.get(&url).send().await.expect("headers arrive");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, CONTENT_LENGTH.as_str()), "200000");
    let mut body = Vec::new();
    let mut ended_in_error = false;
    for _ in 0..10_000 {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(_) => {
                ended_in_error = true;
                break;
            }
        }
    }
    assert!(ended_in_error, "a short body must be reported as an error");
    assert_eq!(body, sim.content(FileType::Image, "cut").bytes(0..70_000));

    let again = fetch(&client, &url).await;
    assert_eq!(sha256_hex(&again), sim.expected_sha256(FileType::Image, "cut"));
    let cut = &sim.received()[1];
    assert_eq!((cut.status, cut.fault.clone()), (Some(200), Some(Fault::StorageTruncate(70_000))));
}

/// Whether `error`'s causes include a connection reset, as opposed to a body that
/// merely ended early.
fn was_reset(error: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    for _ in 0..16 {
        let Some(current) = cause else { return false };
        let io = current.downcast_ref::<std::io::Error>();
        if io.is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset) {
            return true;
        }
        cause = current.source();
    }
    false
}

#[tokio::test]
async fn reset_after_fault_resets_mid_body_after_exactly_n_bytes_once() {
    // Several MiB, so that the kernel still holds some of the bytes before the cut when
    // the budget is spent: a reset sent at once would throw them away.
    let mut config = unlimited();
    config.sizes.insert("cut".into(), 8 << 20);
    config.faults.insert("cut".into(), vec![Fault::StorageResetAfter(6 << 20)]);
    let sim = start(config).await;
    let client = client();
    let url = resolve(&client, &sim, FileType::Video, "cut").await;

    let mut response = client.get(&url).send().await.expect("headers arrive");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, CONTENT_LENGTH.as_str()), (8 << 20).to_string());
    let mut body = Vec::new();
    let mut reset = false;
    for _ in 0..100_000 {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(error) => {
                reset = was_reset(&error);
                break;
            }
        }
    }
    assert!(reset, "the body must end in a reset, after {} bytes", body.len());
    assert_eq!(body.len(), 6 << 20, "every byte before the cut arrives");
    assert!(body == sim.content(FileType::Video, "cut").bytes(0..6 << 20));

    let again = fetch(&client, &url).await;
    assert_eq!(sha256_hex(&again), sim.expected_sha256(FileType::Video, "cut"));
    let cut = &sim.received()[1];
    let fault = Some(Fault::StorageResetAfter(6 << 20));
    assert_eq!((cut.status, cut.fault.clone()), (Some(200), fault));
}

#[tokio::test(start_paused = true)]
async fn pause_fault_goes_quiet_mid_body_then_sends_the_rest() {
    let mut config = unlimited();
    config.sizes.insert("slow".into(), 300_000);
    let pause = Fault::StoragePauseAfter(100_000, Duration::from_secs(30));
    config.faults.insert("slow".into(), vec![pause.clone()]);
    let sim = start(config).await;
    let client = client();
    let url = resolve(&client, &sim, FileType::Audio, "slow").await;

    let mut response = client.get(&url).send().await.expect("headers arrive");
    let started = tokio::time::Instant::now();
    let mut body = Vec::new();
    let mut quiet_from = None;
    for _ in 0..1_000 {
        let Some(chunk) = response.chunk().await.expect("no error") else { break };
        body.extend_from_slice(&chunk);
        if body.len() >= 100_000 && quiet_from.is_none() {
            quiet_from = Some(tokio::time::Instant::now());
        }
    }
    assert!(body == sim.content(FileType::Audio, "slow").bytes(0..300_000));
    let before_quiet = quiet_from.expect("the first 100 000 bytes arrive") - started;
    assert!(before_quiet < Duration::from_secs(1), "the bytes before the pause come at once");
    assert!(started.elapsed() >= Duration::from_secs(30), "the rest waits out the pause");
    assert_eq!(sim.received()[1].fault, Some(pause));
}

#[tokio::test]
async fn reset_fault_drops_the_connection_before_any_answer() {
    let mut config = unlimited();
    config.faults.insert("r".into(), vec![Fault::StorageReset]);
    let sim = start(config).await;
    let client = client();
    let url = resolve(&client, &sim, FileType::Audio, "r").await;
    assert!(client.get(&url).send().await.is_err());
    fetch(&client, &url).await;
    let reset = &sim.received()[1];
    assert_eq!((reset.status, reset.fault.clone()), (None, Some(Fault::StorageReset)));
}

#[tokio::test]
async fn scripted_faults_play_once_each_in_order() {
    let mut config = unlimited();
    let script = vec![
        Fault::ApiStatus(503),
        Fault::ApiRedirect("file:///etc/passwd".into()),
        Fault::StorageStatus(500),
        Fault::StorageExpired,
    ];
    config.faults.insert("f".into(), script);
    let sim = start(config).await;
    let client = client();
    let kind = FileType::Image;
    assert_eq!(call(&client, &sim, kind, "f").await.status(), StatusCode::SERVICE_UNAVAILABLE);
    let bogus = call(&client, &sim, kind, "f").await;
    assert_eq!(header(&bogus, LOCATION.as_str()), "file:///etc/passwd");
    let url = resolve(&client, &sim, kind, "f").await;
    let failed = client.get(&url).send().await.unwrap();
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(failed.text().await.unwrap().contains("<Code>InternalError</Code>"));
    let expired = client.get(&url).send().await.unwrap();
    assert_eq!(expired.status(), StatusCode::FORBIDDEN);
    assert!(expired.text().await.unwrap().contains("Request has expired"));
    let body = fetch(&client, &url).await;
    assert_eq!(sha256_hex(&body), sim.expected_sha256(kind, "f"));
    let statuses: Vec<_> = sim.received().iter().map(|r| r.status).collect();
    let expected = [503, 302, 302, 500, 403, 200].map(Some);
    assert_eq!(statuses, expected);
}

#[tokio::test]
async fn encoded_identifiers_decode_whole_and_are_recorded_raw() {
    let sim = start(unlimited()).await;
    let client = client();
    let kind = FileType::Video;
    let id = "a/b/../c%?#d é 東京";
    let url = resolve(&client, &sim, kind, id).await;
    let body = fetch(&client, &url).await;
    assert_eq!(sha256_hex(&body), sim.expected_sha256(kind, id));
    assert_eq!(sim.received()[0].target, download_path(kind, id));
    assert!(sim.received()[0].target.contains("a%2Fb%2F%2E%2E%2Fc%25%3F%23d%20%C3%A9"));

    let unencoded = format!("{}/api/v2/submissions/video/a/b/download", sim.api_url());
    let response = client.get(unencoded).header("X-Api-Key", sim.api_key()).send().await;
    assert_eq!(response.expect("API answers").status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_downloads_succeed() {
    let sim = start(unlimited()).await;
    let client = client();
    let url = resolve(&client, &sim, FileType::Video, "busy").await;
    let expected = sim.expected_sha256(FileType::Video, "busy");
    let downloads: Vec<_> = (0..32)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { sha256_hex(&fetch(&client, &url).await) })
        })
        .collect();
    for download in downloads {
        assert_eq!(download.await.expect("download task"), expected);
    }
    assert_eq!(sim.storage_requests(), 32);
}

#[tokio::test]
async fn shutdown_closes_both_ports() {
    let sim = start(unlimited()).await;
    let (api, storage) = (sim.api_addr(), sim.storage_addr());
    sim.shutdown().await;
    assert!(tokio::net::TcpStream::connect(api).await.is_err());
    assert!(tokio::net::TcpStream::connect(storage).await.is_err());
}

#[tokio::test]
async fn dropping_the_handle_closes_the_api_port() {
    let sim = start(unlimited()).await;
    let api = sim.api_addr();
    drop(sim);
    for _ in 0..1_000 {
        if tokio::net::TcpStream::connect(api).await.is_err() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the API port stayed open after the handle was dropped");
}
