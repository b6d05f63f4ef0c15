//! The binary as a user runs it: flags, layered configuration, one-line
//! errors, redis-cli through a running proxy, and exit 0 on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use common::{RedisServer, binary};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary());
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("AURACACHE_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("run auracache")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_is_printed() {
    let output = run(&["--version"], &[]);
    assert!(output.status.success());
    assert_eq!(
        text(&output.stdout).trim(),
        format!("auracache {}", env!("CARGO_PKG_VERSION"))
    );
}

/// defaults < proxy.toml < environment < flags.
#[test]
fn check_config_shows_the_layered_settings() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7000\"\nupstream = \"redis://u:pw@10.1.2.3:6400/2\"\n[pool]\nsize = 5\n[limits]\nmax_clients = 9\n",
    )
    .unwrap();
    let output = run(
        &[
            "--config",
            file.to_str().unwrap(),
            "--check-config",
            "--listen",
            "127.0.0.1:7002",
        ],
        &[("AURACACHE_LISTEN", "127.0.0.1:7001"), ("AURACACHE_MAX_CLIENTS", "7")],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let shown = text(&output.stdout);
    assert!(shown.contains("listen = \"127.0.0.1:7002\""), "flag wins:\n{shown}");
    assert!(
        shown.contains("max_clients = 7"),
        "environment beats the file:\n{shown}"
    );
    assert!(shown.contains("size = 5"), "the file beats defaults:\n{shown}");
    assert!(
        shown.contains("max_bulk_bytes = 536870912"),
        "defaults remain:\n{shown}"
    );
    assert!(
        shown.contains("redis://u:<hidden>@10.1.2.3:6400/2") && !shown.contains("pw@"),
        "password hidden:\n{shown}"
    );
}

/// Flags, environment, and what the error line must mention.
type InvalidCase = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

#[test]
fn invalid_settings_stop_start_up_with_one_line() {
    let cases: [InvalidCase; 4] = [
        (
            &[],
            &[("AURACACHE_MAX_CLIENTS", "abc")],
            &["limits.max_clients", "\"abc\"", "whole number"],
        ),
        (
            &["--log-format", "xml"],
            &[],
            &["log.format", "\"xml\"", "text or json"],
        ),
        (&["--upstream", "http://h:1"], &[], &["upstream", "redis://"]),
        (&["--listen", "nowhere"], &[], &["listen", "\"nowhere\"", "host:port"]),
    ];
    for (args, env, needles) in cases {
        let output = run(args, env);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}");
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
        for needle in needles {
            assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(&file, "[limits]\nmax_client = 3\n").unwrap();
    let output = run(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("max_client"), "{stderr:?}");
}

/// The sample proxy.toml in the repository is valid and matches the defaults.
#[test]
fn sample_config_is_valid_and_documents_the_defaults() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml");
    let with_sample = run(&["--config", sample, "--check-config"], &[]);
    assert!(with_sample.status.success(), "{}", text(&with_sample.stderr));
    let defaults = run(&["--check-config"], &[]);
    assert_eq!(text(&with_sample.stdout), text(&defaults.stdout));
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is installed (scripts/test.sh installs redis-tools)");
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout)
}

#[test]
fn redis_cli_through_the_binary_and_sigterm_exits_zero() {
    let server = RedisServer::start();
    let port = common::free_port();
    let mut child = Command::new(binary())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--upstream", &server.url()])
        .args(["--log-format", "json"])
        .env("AURACACHE_ADMIN_LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start auracache");
    let stderr = child.stderr.take().unwrap();
    let mut proxy = Running(child);
    let mut log = BufReader::new(stderr).lines();
    let first = log.next().expect("a log line").unwrap();
    assert!(first.starts_with('{') && first.contains("listening on"), "{first}");

    assert_eq!(redis_cli(port, &["SET", "greeting", "hello world"]), "OK\n");
    assert_eq!(redis_cli(port, &["GET", "greeting"]), "hello world\n");
    assert_eq!(redis_cli(port, &["--no-raw", "HSET", "h", "a", "1"]), "(integer) 1\n");
    // RESP3 as redis-cli shows it, the same as from Redis itself.
    let through_proxy = redis_cli(port, &["-3", "--no-raw", "HGETALL", "h"]);
    assert_eq!(through_proxy, "1# \"a\" => \"1\"\n");
    assert_eq!(
        through_proxy,
        redis_cli(server.port(), &["-3", "--no-raw", "HGETALL", "h"])
    );
    // Several commands on one connection, as typed at the prompt.
    let mut cli = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    cli.stdin
        .take()
        .unwrap()
        .write_all(b"SELECT 3\nSET k three\nGET k\nSELECT 0\nEXISTS k\n")
        .unwrap();
    let output = cli.wait_with_output().unwrap();
    assert_eq!(text(&output.stdout), "OK\nOK\nthree\nOK\n0\n");
    assert_eq!(redis_cli(server.port(), &["-n", "3", "GET", "k"]), "three\n");

    let status = Command::new("kill")
        .args(["-TERM", &proxy.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = proxy.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit 0 after SIGTERM");
}

/// Secrets never reach the logs (at the most verbose level, through a
/// client's right and wrong passwords, the admin's CONFIG GET, and Redis
/// going away and coming back) nor `--check-config`: not the upstream
/// password, not the client password, not a user's password or its hash.
#[test]
fn secrets_appear_in_no_log_and_no_shown_configuration() {
    use sha2::{Digest, Sha256};
    let upstream_secret = "upstream-S3CRET-pw";
    let client_secret = "client-S3CRET-pw";
    let user_secret = "alice-S3CRET-pw";
    let guess = "guess-S3CRET-pw";
    let user_hash = hex::encode(Sha256::digest(user_secret.as_bytes()));
    let mut server = RedisServer::start_with(&["--requirepass", upstream_secret]);
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:{port}\"\nupstream = \"redis://:{upstream_secret}@127.0.0.1:{}\"\n\
             [admin]\nlisten = \"\"\n[auth]\npassword = \"{client_secret}\"\n\
             [[auth.users]]\nname = \"alice\"\npassword_sha256 = \"{user_hash}\"\nrole = \"admin\"\n",
            server.port()
        ),
    )
    .unwrap();
    let secrets = [upstream_secret, client_secret, user_secret, guess, &user_hash];
    let leaked = |what: &str, text: &str| {
        for secret in secrets {
            assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
        }
    };

    let shown = run(&["--config", file.to_str().unwrap(), "--check-config"], &[]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let shown = text(&shown.stdout) + &text(&shown.stderr);
    assert!(shown.contains("<hidden>"), "{shown}");
    leaked("--check-config", &shown);

    let child = Command::new(binary())
        .args(["--config", file.to_str().unwrap(), "--log-level", "trace"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start auracache");
    let mut proxy = Running(child);
    let stderr = proxy.0.stderr.take().unwrap();
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    common::poll_until("the proxy to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let cli = |args: &[&str]| {
        let output = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "--no-auth-warning"])
            .args(args)
            .output()
            .expect("redis-cli");
        text(&output.stdout) + &text(&output.stderr)
    };
    common::poll_until("the proxy to reach Redis", || {
        cli(&["-a", client_secret, "SET", "k", "v"]) == "OK\n"
    });
    assert_eq!(cli(&["-a", client_secret, "GET", "k"]), "v\n");
    assert!(cli(&["-a", guess, "GET", "k"]).contains("WRONGPASS"));
    assert!(cli(&["--user", "alice", "--pass", guess, "GET", "k"]).contains("WRONGPASS"));
    assert_eq!(cli(&["--user", "alice", "--pass", user_secret, "GET", "k"]), "v\n");
    let settings = cli(&["--user", "alice", "--pass", user_secret, "PROXY", "CONFIG", "GET", "*"]);
    assert!(settings.contains("<hidden>"), "{settings}");
    leaked("PROXY CONFIG GET", &settings);
    // Redis goes away and comes back: the reconnects are logged.
    server.kill();
    assert!(cli(&["-a", client_secret, "GET", "k"]).contains("upstream unavailable"));
    server.restart();
    common::poll_until("the proxy to reach Redis again", || {
        cli(&["-a", client_secret, "SET", "k", "again"]) == "OK\n"
    });

    let status = Command::new("kill")
        .args(["-TERM", &proxy.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    proxy.0.wait().unwrap();
    let log = log.join().unwrap();
    assert!(
        log.lines().count() > 5 && log.contains("listening on"),
        "the trace log says something:\n{log}"
    );
    leaked("the trace log", &log);
}
