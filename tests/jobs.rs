//! The examples under `jobs/` must work as written: every job file loads,
//! and the crontab, systemd units and Kubernetes manifest agree with the
//! job files they run and keep the settings their comments promise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use identifai_fetch::cli::{Cli, Command as CliCommand, parse_duration};
use identifai_fetch::job::{Job, KNOWN_KEYS, KeySource};

/// The walk of `jobs/` stops here, so a stray link loop cannot hang it.
const MAX_DEPTH: usize = 4;
const MAX_ENTRIES: usize = 500;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn jobs() -> PathBuf {
    repo().join("jobs")
}

fn read(relative: &str) -> String {
    let path = jobs().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir` whose name ends with `suffix`, depth first.
fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![(dir.to_owned(), 0)];
    let mut seen = 0;
    while let Some((folder, depth)) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            seen += 1;
            assert!(seen <= MAX_ENTRIES, "more than {MAX_ENTRIES} entries under jobs/");
            let path = entry.unwrap().path();
            if path.is_dir() && depth < MAX_DEPTH {
                pending.push((path, depth + 1));
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn load(relative: &str) -> Job {
    Job::load(&jobs().join(relative)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_job_file_loads() {
    let files = files_under(&jobs(), ".toml");
    assert!(files.len() >= 2, "found only {files:?}");
    for file in files {
        if let Err(error) = Job::load(&file) {
            panic!("{error}");
        }
    }
}

#[test]
fn the_demo_job_runs_the_demo_manifest_against_the_simulator() {
    let job = load("demo/job.toml");
    let manifest = job.manifest.unwrap();
    assert_eq!(manifest.canonicalize().unwrap(), jobs().join("demo/manifest.csv"));

    // `out` is the repository's ./demo-out, where `demo` writes too.
    let out = job.out.unwrap();
    assert_eq!(out.file_name().unwrap(), "demo-out");
    let repo_root = repo().canonicalize().unwrap();
    assert_eq!(out.parent().unwrap().canonicalize().unwrap(), repo_root);

    let Ok(Cli { command: CliCommand::Simulate(simulate) }) =
        Cli::try_parse_from(["identifai-fetch", "simulate"])
    else {
        panic!("`simulate` did not parse");
    };
    let url = job.api_url.unwrap();
    assert_eq!((url.host_str(), url.port()), (Some("127.0.0.1"), Some(simulate.port)));
    assert_eq!(job.api_key, Some(KeySource::Env("IDENTIFAI_API_KEY".into())));
}

#[test]
fn the_nightly_example_explains_every_key() {
    let text = read("nightly.toml");
    for key in KNOWN_KEYS {
        let set = format!("\n{key} = ");
        let commented = format!("\n# {key} = ");
        assert!(text.contains(&set) || text.contains(&commented), "nightly.toml lacks {key}");
    }
    let job = load("nightly.toml");
    assert_eq!(job.out, Some("/srv/evidence".into()));
    assert_eq!(job.deadline, Some(Duration::from_secs(6 * 3600)));
    let credential = "/run/credentials/identifai-fetch.service/api-key";
    assert_eq!(job.api_key, Some(KeySource::File(credential.into())));
}

/// A unit file's settings as (section, key, value), in file order. As in
/// systemd, a backslash at the end of a line continues it on the next.
fn unit_settings(text: &str) -> Vec<(String, String, String)> {
    let joined = text.replace("\\\n", " ");
    let mut section = String::new();
    let mut settings = Vec::new();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, value)) = line.split_once('=') {
            settings.push((section.clone(), key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    settings
}

/// The one value of `key` in `section`.
fn setting<'a>(settings: &'a [(String, String, String)], section: &str, key: &str) -> &'a str {
    let mut values = settings.iter().filter(|(s, k, _)| s == section && k == key);
    let (_, _, value) = values.next().unwrap_or_else(|| panic!("no {key}= in [{section}]"));
    assert!(values.next().is_none(), "{key}= is set twice in [{section}]");
    value
}

/// The job file a scheduled command names after `--job`, which must be one
/// of the examples here, installed under /etc/identifai-fetch/.
fn job_named_in(command: &str) -> Job {
    let words: Vec<&str> = command.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "--job").expect("the command names --job");
    let installed = Path::new(words[at + 1]);
    assert_eq!(installed.parent(), Some(Path::new("/etc/identifai-fetch")), "{command}");
    load(installed.file_name().unwrap().to_str().unwrap())
}

#[test]
fn the_systemd_service_runs_the_nightly_job_with_its_credential() {
    let settings = unit_settings(&read("systemd/identifai-fetch.service"));
    let service = |key| setting(&settings, "Service", key);
    assert_eq!(service("Type"), "oneshot");
    assert_eq!(service("LoadCredential"), "api-key:/etc/identifai-fetch/api-key");
    let exec = service("ExecStart");
    assert!(exec.starts_with("/usr/local/bin/identifai-fetch run --job "), "{exec}");
    assert!(exec.contains("--api-key-file ${CREDENTIALS_DIRECTORY}/api-key"), "{exec}");
    assert_eq!(service("KillSignal"), "SIGTERM");

    let job = job_named_in(exec);
    let stop = parse_duration(service("TimeoutStopSec")).unwrap();
    assert!(stop > job.grace.unwrap(), "TimeoutStopSec must outlast the job's grace");
    let start = parse_duration(service("TimeoutStartSec")).unwrap();
    assert!(start > job.deadline.unwrap(), "the job's own deadline must come first");

    for (key, value) in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict")] {
        assert_eq!(service(key), value);
    }
    assert_eq!(service("PrivateTmp"), "yes");
    let writable: Vec<&str> = service("ReadWritePaths").split_whitespace().collect();
    // The store must exist: without `-`, systemd refuses to start when it is missing.
    assert!(writable.contains(&job.out.unwrap().to_str().unwrap()), "{writable:?}");
    // The metrics folder is optional: `-` makes systemd skip it when it is missing.
    let metrics_folder = job.metrics_file.unwrap().parent().unwrap().to_owned();
    let optional = format!("-{}", metrics_folder.display());
    assert!(writable.contains(&optional.as_str()), "{writable:?}");
}

#[test]
fn the_systemd_timer_runs_nightly_and_catches_up() {
    let settings = unit_settings(&read("systemd/identifai-fetch.timer"));
    assert_eq!(setting(&settings, "Timer", "OnCalendar"), "*-*-* 02:15:00");
    assert_eq!(setting(&settings, "Timer", "Persistent"), "true");
    assert!(parse_duration(setting(&settings, "Timer", "RandomizedDelaySec")).is_ok());
    assert_eq!(setting(&settings, "Install", "WantedBy"), "timers.target");
}

/// `systemd-analyze verify` on copies of the units whose ExecStart runs the
/// binary under test, since /usr/local/bin may not hold one here.
#[test]
fn systemd_analyze_accepts_the_units() {
    let available = Command::new("sh").args(["-c", "command -v systemd-analyze"]).output();
    if !available.is_ok_and(|out| out.status.success()) {
        eprintln!("note: systemd-analyze is not installed; the unit files were not verified");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let service = read("systemd/identifai-fetch.service")
        .replace("/usr/local/bin/identifai-fetch", env!("CARGO_BIN_EXE_identifai-fetch"));
    std::fs::write(dir.path().join("identifai-fetch.service"), service).unwrap();
    std::fs::copy(
        jobs().join("systemd/identifai-fetch.timer"),
        dir.path().join("identifai-fetch.timer"),
    )
    .unwrap();

    let output = Command::new("systemd-analyze")
        .args(["verify", "identifai-fetch.service", "identifai-fetch.timer"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Unknown keys are only warnings to systemd, so its exit code is not
    // enough: any complaint that names our units fails the test.
    let complaints: Vec<&str> =
        stderr.lines().filter(|line| line.contains("identifai-fetch.")).collect();
    assert!(output.status.success() && complaints.is_empty(), "{stderr}");
}

#[test]
fn the_crontab_line_runs_a_job_nightly_without_flock() {
    let text = read("cron/crontab");
    let entries: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        // Lines such as MAILTO=... set cron's environment.
        .filter(|line| !line.split_whitespace().next().unwrap().contains('='))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let fields: Vec<&str> = entries[0].split_whitespace().collect();
    assert!(fields.len() > 5, "{entries:?}");
    let is_time = |field: &&str| field.chars().all(|c| c.is_ascii_digit() || "*/,-".contains(c));
    assert!(fields[..5].iter().all(is_time), "{:?}", &fields[..5]);
    assert_eq!(fields[..5], ["15", "2", "*", "*", "*"]);

    let command = fields[5..].join(" ");
    assert!(command.starts_with("/usr/local/bin/identifai-fetch run --job "), "{command}");
    assert!(!command.contains("flock"), "the tool's own lock is enough");
    // cron treats % as a line break.
    assert!(!command.contains('%'), "{command}");
    job_named_in(&command);
}

/// The lines of the YAML block scalar `key: |` (one level, as ConfigMaps
/// write them), without their indent.
fn block_scalar(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|line| line.trim() != format!("{key}: |"));
    let head = lines.next().unwrap_or_else(|| panic!("no `{key}: |` block"));
    let indent = |line: &str| line.len() - line.trim_start().len();
    let outer = indent(head);
    let body: Vec<&str> =
        lines.take_while(|line| line.trim().is_empty() || indent(line) > outer).collect();
    let inner = body.iter().filter(|l| !l.trim().is_empty()).map(|l| indent(l)).min().unwrap();
    body.iter().map(|line| line.get(inner..).unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The number after `key: ` on its one line in `yaml`.
fn yaml_number(yaml: &str, key: &str) -> u64 {
    let prefix = format!("{key}: ");
    let line = yaml.lines().map(str::trim).find(|line| line.starts_with(&prefix)).unwrap();
    line[prefix.len()..].parse().unwrap_or_else(|_| panic!("{line}"))
}

#[test]
fn the_k8s_cronjob_never_overlaps_and_reads_its_key_from_a_secret() {
    let yaml = read("k8s/cronjob.yaml");
    for wanted in ["concurrencyPolicy: Forbid", "backoffLimit: 0", "restartPolicy: Never"] {
        assert!(yaml.contains(wanted), "cronjob.yaml lacks {wanted}");
    }
    assert!(yaml.contains("secretKeyRef:") || yaml.contains("secretName:"));
    assert!(yaml.contains("claimName: identifai-evidence"));
    assert!(yaml.contains("\nkind: ConfigMap\n") && yaml.contains("\nkind: CronJob\n"));
    assert!(yaml.contains(r#"args: ["run", "--job", "/etc/identifai-fetch/job.toml"]"#));
    assert!(yaml.contains("mountPath: /etc/identifai-fetch\n"));

    // The ConfigMap's job file, where the container mounts it.
    let origin = Path::new("/etc/identifai-fetch/job.toml");
    let job =
        Job::parse(&block_scalar(&yaml, "job.toml"), origin).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(job.manifest, Some("/etc/identifai-fetch/nightly.csv".into()));
    assert!(block_scalar(&yaml, "nightly.csv").starts_with("type,identifier,"));
    assert_eq!(job.out, Some("/srv/evidence".into()));
    assert!(yaml.contains("mountPath: /srv/evidence\n"));
    let Some(KeySource::File(key_file)) = job.api_key else { panic!("no api_key_file") };
    let key_folder = key_file.parent().unwrap().to_str().unwrap();
    assert!(yaml.contains(&format!("mountPath: {key_folder}\n")), "{key_folder} is not mounted");

    let grace = Duration::from_secs(yaml_number(&yaml, "terminationGracePeriodSeconds"));
    assert!(grace > job.grace.unwrap(), "the pod must outlast the job's grace");
    let active = Duration::from_secs(yaml_number(&yaml, "activeDeadlineSeconds"));
    assert!(active > job.deadline.unwrap(), "the job's own deadline must come first");
}

/// The value after `key: ` on its one line in `yaml`, and that line's indent.
fn yaml_line<'a>(yaml: &'a str, key: &str) -> (usize, &'a str) {
    let prefix = format!("{key}: ");
    let mut lines = yaml.lines().filter(|line| line.trim_start().starts_with(&prefix));
    let line = lines.next().unwrap_or_else(|| panic!("no `{key}:` line"));
    assert!(lines.next().is_none(), "`{key}:` is set twice");
    let indent = line.len() - line.trim_start().len();
    (indent, line.trim_start()[prefix.len()..].trim())
}

#[test]
fn the_k8s_cronjob_pods_keep_one_host_name_for_the_stores_lock() {
    // The lock refuses a record that another host left behind, so pods with
    // names of their own would lock each other out after one hard kill. A
    // shared name is only safe while Kubernetes runs one pod at a time.
    let yaml = read("k8s/cronjob.yaml");
    assert_eq!(yaml_line(&yaml, "concurrencyPolicy").1, "Forbid");
    let (indent, hostname) = yaml_line(&yaml, "hostname");
    let (pod_spec_indent, _) = yaml_line(&yaml, "restartPolicy");
    assert_eq!(indent, pod_spec_indent, "hostname belongs to the pod's spec");
    // A DNS label, as Kubernetes requires of a pod's hostname; a fixed one,
    // not something a templating tool fills in per pod.
    let label = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    assert!(
        (1..=63).contains(&hostname.len())
            && hostname.chars().all(label)
            && !hostname.starts_with('-')
            && !hostname.ends_with('-'),
        "{hostname:?}"
    );
}
