//! The dashboard at `/` of the HTTP admin, as a browser draws it: Debian's
//! headless Chromium loads the page from a proxy under a mixed load, and
//! the DOM it leaves has every chart drawn with data (hit rates and
//! latency over time, compression and memory per namespace, the patterns
//! heatmap), the load's namespaces named, and no error line. A screenshot
//! goes to `target/test-artifacts/dashboard.png` for a person to look at.

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proxy, RawClient, RedisServer, encode, http_get, poll_until_async};

const CHROMIUM: &str = "/usr/bin/chromium";
/// Chromium is killed (with its helper processes) after this long.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);
/// The namespaces the load writes and reads.
const NAMESPACES: [&str; 3] = ["user", "session", "feed"];
/// Keys per namespace the load writes, in turn.
const KEYS: u64 = 40;
/// Keys per namespace read again and again (so L1 answers them).
const HOT: u64 = 5;
/// Every chart of the page, by id.
const CHARTS: [&str; 6] = [
    "chart-hit-rates",
    "chart-throughput",
    "chart-latency",
    "chart-compression",
    "chart-memory",
    "chart-heatmap",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_draws_every_chart_of_a_proxy_under_load() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the dashboard test draws the page in Debian's headless Chromium; \
         run scripts/test.sh (it installs it) or `apt-get install -y chromium`"
    );
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        // L1 filling on the first miss, and every key read in the patterns.
        common::values::eager(config);
        config.compression.enabled = true;
        config.compression.threshold = 256;
        config.patterns.enabled = true;
        config.admin.listen = "127.0.0.1:0".into();
        config.admin.history_interval_secs = 1;
    })
    .await;
    let admin = proxy.handle().admin_addr().expect("the HTTP admin is on");
    let load = start_mixed_load(proxy.addr());

    wait_until_every_chart_has_data(admin).await;
    let url = format!("http://{admin}/");
    let started = Instant::now();
    let dom = chromium(&["--virtual-time-budget=8000", "--dump-dom"], &url).await;
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("target/test-artifacts created");
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,1800",
            "--virtual-time-budget=8000",
        ],
        &url,
    )
    .await;
    eprintln!("chromium ran twice in {:?}", started.elapsed());
    // The load runs until stopped: finished means it failed (its panic shows).
    for task in load {
        if task.is_finished() {
            task.await.expect("the load ran for the whole test");
        } else {
            task.abort();
        }
    }

    assert!(
        dom.contains(r#"<body data-ready="1""#),
        "every endpoint answered; the page's error lines: {}",
        after(&dom, r#"id="errors""#)
    );
    assert!(
        !dom.contains(r#"class="error""#),
        "no error line: {}",
        after(&dom, r#"class="error""#)
    );
    assert!(
        opening_tag(&dom, "health").contains(r#"class="badge ok""#),
        "healthy: {}",
        opening_tag(&dom, "health")
    );
    for id in CHARTS {
        let points: u64 = attribute(opening_tag(&dom, id), "data-points")
            .and_then(|points| points.parse().ok())
            .unwrap_or_else(|| panic!("{id} has data-points: {}", opening_tag(&dom, id)));
        assert!(points > 0, "{id} drew data: {}", opening_tag(&dom, id));
    }
    for id in ["chart-compression", "chart-memory"] {
        let chart = element(&dom, id);
        for namespace in NAMESPACES {
            assert!(
                chart.contains(&format!(">{namespace}</text>")),
                "{id} names {namespace}: {chart}"
            );
        }
    }
    let heatmap = element(&dom, "chart-heatmap");
    let rows: usize = attribute(opening_tag(&dom, "chart-heatmap"), "data-rows")
        .and_then(|rows| rows.parse().ok())
        .expect("the heatmap has data-rows");
    assert!(rows > 0, "{heatmap}");
    assert_eq!(heatmap.matches(r#"class="heatmap-row""#).count(), rows, "{heatmap}");
    assert!(
        NAMESPACES
            .iter()
            .any(|namespace| heatmap.contains(&format!(r#"data-key="{namespace}:"#))),
        "a row for a key the load read: {heatmap}"
    );

    let png = std::fs::read(&screenshot).unwrap_or_else(|error| panic!("{}: {error}", screenshot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is a PNG",
        screenshot.display()
    );
    assert!(png.len() > 10_000, "{} is {} bytes", screenshot.display(), png.len());
}

/// The mixed load, one client each (L1 answers a read only when the
/// client's earlier commands are answered, so hot reads have their own):
/// compressible values of about 2 KB written in each namespace, one key of
/// each in turn; reads of a hot set (L1 hits, and Redis after each of its
/// writes); and reads of keys that do not exist (misses) with an MGET
/// across namespaces. Each sends a pipeline every 10 ms, so Chromium has
/// CPU too; until aborted.
fn start_mixed_load(proxy: SocketAddr) -> Vec<tokio::task::JoinHandle<()>> {
    let writes = |round: u64| {
        let key = round % KEYS;
        NAMESPACES
            .iter()
            .map(|namespace| {
                let value = format!("{namespace} {key}: the quick brown fox jumps over the lazy dog; ").repeat(32);
                vec!["SET".to_string(), format!("{namespace}:{key}"), value]
            })
            .collect()
    };
    let hot_reads = |_round: u64| {
        NAMESPACES
            .iter()
            .flat_map(|namespace| (0..HOT).map(move |hot| vec!["GET".to_string(), format!("{namespace}:{hot}")]))
            .collect()
    };
    let misses = |round: u64| {
        vec![
            vec!["GET".to_string(), format!("user:missing:{round}")],
            ["MGET", "user:1", "session:2", "feed:3"]
                .into_iter()
                .map(str::to_string)
                .chain([format!("session:missing:{round}")])
                .collect(),
        ]
    };
    vec![
        tokio::spawn(paced(proxy, writes)),
        tokio::spawn(paced(proxy, hot_reads)),
        tokio::spawn(paced(proxy, misses)),
    ]
}

/// Sends `commands(round)` as one pipeline every 10 ms on one connection
/// and checks that no reply is an error.
async fn paced(proxy: SocketAddr, commands: impl Fn(u64) -> Vec<Vec<String>>) {
    let mut client = RawClient::connect(proxy).await;
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    for round in 0u64.. {
        ticks.tick().await;
        let commands = commands(round);
        let mut pipeline = Vec::new();
        for command in &commands {
            let args: Vec<&[u8]> = command.iter().map(|arg| arg.as_bytes()).collect();
            pipeline.extend(encode(&args));
        }
        client.send(&pipeline).await;
        for _ in &commands {
            let reply = client.read_reply().await;
            assert!(!reply.starts_with(b"-"), "{}", String::from_utf8_lossy(&reply));
        }
    }
}

/// Waits until the endpoints have what each chart draws: 3 samples of
/// reads in the history, compression and L1 figures for every namespace,
/// and top patterns.
async fn wait_until_every_chart_has_data(admin: SocketAddr) {
    let json = |path: &'static str| async move {
        let (status, _, body) = http_get(admin, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_else(|error| panic!("{path}: {error}: {body}"))
    };
    let names = |list: &serde_json::Value, field: &str| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item[field].as_str().map(str::to_string))
            .collect()
    };
    poll_until_async("3 samples with reads in /performance", || async move {
        let performance = json("/api/v1/monitoring/cache/v2/performance").await;
        let samples = performance["history"].as_array().cloned().unwrap_or_default();
        samples
            .iter()
            .filter(|sample| sample["reads"].as_u64() > Some(0))
            .count()
            >= 3
    })
    .await;
    let compression = json("/api/v1/monitoring/cache/v2/compression/stats").await;
    let memory = json("/api/v1/monitoring/cache/v2/memory/stats").await;
    let patterns = json("/api/v1/monitoring/cache/v2/patterns/analysis").await;
    for namespace in NAMESPACES {
        assert!(
            names(&compression["by_namespace"], "namespace").contains(&namespace.to_string()),
            "{namespace} compressed: {compression}"
        );
        assert!(
            names(&memory["namespaces"], "name").contains(&namespace.to_string()),
            "{namespace} in L1: {memory}"
        );
    }
    assert!(!names(&patterns["top"], "key").is_empty(), "top patterns: {patterns}");
}

/// Runs headless Chromium on `url` with `args` (in a new profile, killed
/// with its helpers after [`CHROMIUM_TIMEOUT`]) and returns what it wrote
/// to stdout.
async fn chromium(args: &[&str], url: &str) -> String {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let url = url.to_string();
    tokio::task::spawn_blocking(move || run_chromium(&args, &url))
        .await
        .expect("the chromium task")
}

fn run_chromium(args: &[String], url: &str) -> String {
    let profile = tempfile::tempdir().expect("a profile directory");
    let output = tempfile::tempdir().expect("an output directory");
    let (stdout, stderr) = (output.path().join("stdout"), output.path().join("stderr"));
    let mut command = Command::new(CHROMIUM);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).expect("stdout file"))
        .stderr(File::create(&stderr).expect("stderr file"))
        // Its own process group, so a kill reaches its renderer and helpers too.
        .process_group(0);
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {CHROMIUM}: {error}"));
    let errors = || {
        let text = std::fs::read_to_string(&stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("chromium's status") {
            break status;
        }
        if started.elapsed() > CHROMIUM_TIMEOUT {
            let group = i32::try_from(child.id()).expect("a pid");
            // SAFETY: kill(2) on the process group this test started.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "chromium {args:?} ran over {CHROMIUM_TIMEOUT:?}; its stderr ends:\n{}",
                errors()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "chromium {args:?} failed ({status}); its stderr ends:\n{}",
        errors()
    );
    std::fs::read_to_string(&stdout).expect("chromium's stdout")
}

/// Where the opening tag of the element whose id is `id` starts.
fn tag_start(dom: &str, id: &str) -> usize {
    let at = dom
        .find(&format!(r#" id="{id}""#))
        .unwrap_or_else(|| panic!("an element with id {id}"));
    dom[..at].rfind('<').expect("a tag's start")
}

/// The opening tag of the element whose id is `id`.
fn opening_tag<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = tag_start(dom, id);
    let end = start + dom[start..].find('>').expect("a tag's end");
    &dom[start..=end]
}

/// The chart (an `<svg>` with no `<svg>` inside) whose id is `id`.
fn element<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = tag_start(dom, id);
    let end = start + dom[start..].find("</svg>").expect("the chart's end");
    &dom[start..end]
}

/// Up to 2,000 characters of `dom` after `needle` (for a failure's message).
fn after(dom: &str, needle: &str) -> String {
    dom.split_once(needle)
        .map(|(_, rest)| rest.chars().take(2_000).collect())
        .unwrap_or_default()
}

/// The value of attribute `name` in an opening tag.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let at = tag.find(&format!(r#" {name}=""#))? + name.len() + 3;
    let end = at + tag[at..].find('"')?;
    Some(&tag[at..end])
}
