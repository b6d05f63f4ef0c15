//! TLS on both sides, against a real TLS-only redis-server and real
//! clients (redis-cli --tls, and a rustls client that sees exact bytes).
//! Certificates are made fresh for each test: a CA, a server certificate
//! for localhost and 127.0.0.1, a client certificate, and a CA nobody uses.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use auracache::Server;
use auracache::config::Config;
use common::{DEADLINE, Proxy, RawClient, RedisServer, binary, l1_eager, read_until_cached};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// PEM files made for one test, in a temporary directory.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn generate() -> Certs {
        let dir = tempfile::tempdir().expect("temporary directory");
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).expect("write PEM");
        let (ca_pem, ca) = certificate_authority("auracache test CA");
        write("ca.pem", ca_pem);
        let (other_pem, other) = certificate_authority("a CA nobody trusts");
        write("other-ca.pem", other_pem);
        for (name, names, usage, issuer) in [
            (
                "server",
                vec!["localhost".to_string(), "127.0.0.1".to_string()],
                ExtendedKeyUsagePurpose::ServerAuth,
                &ca,
            ),
            (
                "client",
                vec!["auracache-client".to_string()],
                ExtendedKeyUsagePurpose::ClientAuth,
                &ca,
            ),
            (
                "stranger",
                vec!["auracache-client".to_string()],
                ExtendedKeyUsagePurpose::ClientAuth,
                &other,
            ),
        ] {
            let mut params = CertificateParams::new(names).expect("names");
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("key");
            let certificate = params.signed_by(&key, issuer).expect("signed by its CA");
            write(&format!("{name}.pem"), certificate.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A self-signed CA: its PEM certificate and what signs with it.
fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let certificate = params.self_signed(&key).expect("self-signed");
    (certificate.pem(), Issuer::new(params, key))
}

/// A redis-server that speaks TLS only; with `auth_clients`, it demands a
/// client certificate (Redis's default, `tls-auth-clients yes`).
fn tls_redis(certs: &Certs, auth_clients: bool) -> RedisServer {
    let (cert, key, ca) = (certs.path("server.pem"), certs.path("server.key"), certs.path("ca.pem"));
    RedisServer::start_tls(&[
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        if auth_clients { "yes" } else { "no" },
    ])
}

fn rediss(redis: &RedisServer) -> String {
    format!("rediss://127.0.0.1:{}", redis.port())
}

/// The proxy trusts the test CA and shows its client certificate.
fn trust_and_present(config: &mut Config, certs: &Certs) {
    config.upstream_tls.ca = certs.path("ca.pem");
    config.upstream_tls.cert = certs.path("client.pem");
    config.upstream_tls.key = certs.path("client.key");
}

/// The proxy's listener speaks TLS with the server certificate.
fn listen_with_tls(config: &mut Config, certs: &Certs) {
    config.tls.cert = certs.path("server.pem");
    config.tls.key = certs.path("server.key");
}

/// Which client certificate a [`TlsClient`] presents.
#[derive(Clone, Copy, PartialEq)]
enum Identity {
    None,
    /// Signed by the CA the servers trust.
    Client,
    /// Signed by a CA nobody trusts.
    Stranger,
}

/// A RESP client over TLS (rustls) that reads whole replies as exact bytes.
type TlsClient = RawClient<TlsStream<TcpStream>>;

/// Connects trusting the test CA, presenting `identity`.
async fn tls_client(addr: SocketAddr, certs: &Certs, identity: Identity) -> std::io::Result<TlsClient> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(certs.path("ca.pem")).expect("CA file") {
        roots.add(certificate.expect("CA certificate")).expect("CA added");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let name = match identity {
        Identity::None => None,
        Identity::Client => Some("client"),
        Identity::Stranger => Some("stranger"),
    };
    let config = match name {
        None => builder.with_no_client_auth(),
        Some(name) => {
            let chain = CertificateDer::pem_file_iter(certs.path(&format!("{name}.pem")))
                .expect("client certificate file")
                .collect::<Result<Vec<_>, _>>()
                .expect("client certificate");
            let key = PrivateKeyDer::from_pem_file(certs.path(&format!("{name}.key"))).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate usable")
        }
    };
    let tcp = tokio::time::timeout(DEADLINE, TcpStream::connect(addr)).await??;
    let name = ServerName::try_from("127.0.0.1").expect("an IP address");
    let stream = tokio::time::timeout(DEADLINE, TlsConnector::from(Arc::new(config)).connect(name, tcp)).await??;
    Ok(RawClient::over(stream))
}

/// redis-cli over TLS to the proxy: its stdout, or its stdout and stderr
/// when it fails.
async fn redis_cli(proxy: &Proxy, certs: &Certs, with_cert: bool, args: &[&str]) -> Result<String, String> {
    let mut command = tokio::process::Command::new("redis-cli");
    command.args(["--tls", "--cacert", &certs.path("ca.pem")]).args([
        "-h",
        "127.0.0.1",
        "-p",
        &proxy.addr().port().to_string(),
    ]);
    if with_cert {
        command.args(["--cert", &certs.path("client.pem"), "--key", &certs.path("client.key")]);
    }
    let output = tokio::time::timeout(DEADLINE, command.args(args).output())
        .await
        .expect("redis-cli finishes within the deadline")
        .expect("redis-cli runs (install redis-tools)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() && !stdout.starts_with("Error") && !stdout.starts_with("ERR") {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{stderr}"))
    }
}

#[tokio::test]
async fn a_rediss_upstream_with_a_client_certificate_serves_reads_writes_l1_hits_and_invalidations() {
    let certs = Certs::generate();
    let redis = tls_redis(&certs, true);
    let proxy = Proxy::start_with(&rediss(&redis), |config| {
        trust_and_present(config, &certs);
        l1_eager(config);
    })
    .await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET user:1 alice").await, "+OK\r\n");
    assert_eq!(client.cmd("GET user:1").await, "$5\r\nalice\r\n");
    // A client's own connection (MULTI moves it there for good) is TLS too.
    let mut transaction = proxy.raw().await;
    assert_eq!(transaction.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(transaction.cmd("INCR visits").await, "+QUEUED\r\n");
    assert_eq!(transaction.cmd("EXEC").await, "*1\r\n:1\r\n");
    // An L1 hit, then a write straight to Redis (over TLS) arrives as an
    // invalidation on the tracking connection, itself over TLS.
    let mut direct = tls_client(redis.addr(), &certs, Identity::Client)
        .await
        .expect("TLS to Redis");
    assert_eq!(
        common::read_until_cached(&proxy, &mut client, "user:1").await,
        "$5\r\nalice\r\n"
    );
    assert_eq!(direct.cmd("SET user:1 bob").await, "+OK\r\n");
    client.cmd_until("GET user:1", "$3\r\nbob\r\n").await;
    let clients = direct.cmd("CLIENT LIST").await;
    assert!(clients.contains("name=auracache:tracking"), "{clients}");
    assert!(clients.contains("name=auracache:pool"), "{clients}");
}

#[tokio::test]
async fn a_redis_certificate_from_an_unknown_ca_is_upstream_unavailable_naming_the_problem() {
    let certs = Certs::generate();
    let redis = tls_redis(&certs, false);
    let proxy = Proxy::start_with(&rediss(&redis), |config| {
        config.upstream_tls.ca = certs.path("other-ca.pem");
    })
    .await;
    let mut client = proxy.raw().await;
    let reply = client.cmd("GET anything").await;
    assert!(
        reply.starts_with("-ERR upstream unavailable: TLS handshake with 127.0.0.1:"),
        "{reply}"
    );
    assert!(reply.contains("invalid peer certificate: UnknownIssuer"), "{reply}");
    // A client's own connection reports the same.
    let reply = client.cmd("MULTI").await;
    assert!(reply.contains("UnknownIssuer"), "{reply}");
}

#[tokio::test]
async fn the_server_name_checked_is_the_host_or_upstream_tls_sni() {
    let certs = Certs::generate();
    let redis = tls_redis(&certs, false);
    // The certificate names localhost: as SNI it passes though the URL's host is an IP.
    let named = Proxy::start_with(&rediss(&redis), |config| {
        config.upstream_tls.ca = certs.path("ca.pem");
        config.upstream_tls.sni = "localhost".into();
    })
    .await;
    assert_eq!(named.raw().await.cmd("PING").await, "+PONG\r\n");
    let mismatched = Proxy::start_with(&rediss(&redis), |config| {
        config.upstream_tls.ca = certs.path("ca.pem");
        config.upstream_tls.sni = "redis.example.com".into();
    })
    .await;
    let reply = mismatched.raw().await.cmd("PING").await;
    assert!(reply.starts_with("-ERR upstream unavailable: TLS handshake"), "{reply}");
    assert!(
        reply.contains("certificate not valid for name") && reply.contains("redis.example.com"),
        "{reply}"
    );
}

#[tokio::test]
async fn redis_without_a_client_certificate_from_the_proxy_refuses_it_readably() {
    let certs = Certs::generate();
    let redis = tls_redis(&certs, true);
    let proxy = Proxy::start_with(&rediss(&redis), |config| {
        config.upstream_tls.ca = certs.path("ca.pem");
    })
    .await;
    let reply = proxy.raw().await.cmd("PING").await;
    assert_eq!(
        reply,
        "-ERR upstream unavailable: set-up failed: received fatal alert: CertificateRequired \
         (Redis asks for a client certificate: set upstream_tls.cert and upstream_tls.key)\r\n"
    );
}

#[tokio::test]
async fn redis_refusing_the_proxy_s_certificate_is_reported_with_what_to_check() {
    let certs = Certs::generate();
    let redis = tls_redis(&certs, true);
    let proxy = Proxy::start_with(&rediss(&redis), |config| {
        config.upstream_tls.ca = certs.path("ca.pem");
        config.upstream_tls.cert = certs.path("stranger.pem");
        config.upstream_tls.key = certs.path("stranger.key");
    })
    .await;
    let reply = proxy.raw().await.cmd("PING").await;
    assert!(
        reply.starts_with("-ERR upstream unavailable: set-up failed: received fatal alert: "),
        "{reply}"
    );
    assert!(reply.contains("is it signed by Redis's tls-ca-cert-file?"), "{reply}");
}

#[tokio::test]
async fn redis_cli_speaks_tls_to_the_proxy() {
    let certs = Certs::generate();
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |config| listen_with_tls(config, &certs)).await;
    assert_eq!(
        redis_cli(&proxy, &certs, false, &["SET", "greeting", "hello"]).await,
        Ok("OK\n".into())
    );
    assert_eq!(
        redis_cli(&proxy, &certs, false, &["GET", "greeting"]).await,
        Ok("hello\n".into())
    );
    let info = redis_cli(&proxy, &certs, false, &["INFO"])
        .await
        .expect("INFO answered");
    assert!(info.contains("redis_version:") && info.contains("# Cache"), "{info}");
    // The listener speaks TLS only.
    let mut plain = proxy.raw().await;
    plain.send_command(&[b"PING"]).await;
    let got = plain.read_until_closed().await;
    assert!(!String::from_utf8_lossy(&got).contains("PONG"), "{got:?}");
}

#[tokio::test]
async fn with_client_ca_a_client_without_a_certificate_is_refused_and_others_keep_working() {
    let certs = Certs::generate();
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |config| {
        listen_with_tls(config, &certs);
        config.tls.client_ca = certs.path("ca.pem");
    })
    .await;
    let mut certified = tls_client(proxy.addr(), &certs, Identity::Client)
        .await
        .expect("handshake");
    assert_eq!(certified.cmd("SET k v").await, "+OK\r\n");
    assert_eq!(redis_cli(&proxy, &certs, true, &["GET", "k"]).await, Ok("v\n".into()));
    // In TLS 1.3 the client may finish its side before the proxy refuses
    // its empty certificate: then the refusal comes instead of a reply.
    for identity in [Identity::None, Identity::Stranger] {
        match tls_client(proxy.addr(), &certs, identity).await {
            Err(_) => {}
            Ok(mut refused) => assert_eq!(refused.try_cmd("PING").await, None),
        }
    }
    let refused = redis_cli(&proxy, &certs, false, &["GET", "k"]).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(certified.cmd("GET k").await, "$1\r\nv\r\n");
}

#[tokio::test]
async fn a_plain_text_or_silent_client_on_the_tls_listener_is_dropped_and_tls_clients_are_unaffected() {
    let certs = Certs::generate();
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |config| {
        listen_with_tls(config, &certs);
        config.tls.handshake_timeout_ms = 300;
    })
    .await;
    let mut tls = tls_client(proxy.addr(), &certs, Identity::None)
        .await
        .expect("handshake");
    assert_eq!(tls.cmd("SET k v").await, "+OK\r\n");
    // A silent client (never a handshake) is dropped after the timeout,
    // and holds up no one meanwhile: the accept loop is not waiting on it.
    let mut silent = RawClient::connect(proxy.addr()).await;
    let mut late = tls_client(proxy.addr(), &certs, Identity::None)
        .await
        .expect("handshake while a silent client waits");
    assert_eq!(late.cmd("GET k").await, "$1\r\nv\r\n");
    let started = Instant::now();
    assert!(silent.read_until_closed().await.is_empty());
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let mut plain = proxy.raw().await;
    plain.send_command(&[b"GET", b"k"]).await;
    let got = plain.read_until_closed().await;
    assert!(!String::from_utf8_lossy(&got).contains("$1\r\nv"), "{got:?}");
    assert_eq!(tls.cmd("GET k").await, "$1\r\nv\r\n");
    common::poll_until_async("only the TLS clients to remain", || async {
        proxy.handle().stats().clients() == 2
    })
    .await;
}

#[tokio::test]
async fn over_max_clients_a_tls_client_is_told_so_over_tls() {
    let certs = Certs::generate();
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |config| {
        listen_with_tls(config, &certs);
        config.limits.max_clients = 1;
    })
    .await;
    let mut first = tls_client(proxy.addr(), &certs, Identity::None)
        .await
        .expect("handshake");
    assert_eq!(first.cmd("PING").await, "+PONG\r\n");
    let mut second = tls_client(proxy.addr(), &certs, Identity::None)
        .await
        .expect("handshake");
    let reply = tokio::time::timeout(DEADLINE, second.next_reply())
        .await
        .expect("an answer");
    assert_eq!(reply.as_deref(), Some(&b"-ERR max number of clients reached\r\n"[..]));
}

#[tokio::test]
async fn tls_on_both_sides_at_once() {
    let certs = Certs::generate();
    let redis = tls_redis(&certs, true);
    let proxy = Proxy::start_with(&rediss(&redis), |config| {
        listen_with_tls(config, &certs);
        config.tls.client_ca = certs.path("ca.pem");
        trust_and_present(config, &certs);
        l1_eager(config);
    })
    .await;
    let mut client = tls_client(proxy.addr(), &certs, Identity::Client)
        .await
        .expect("handshake");
    assert_eq!(client.cmd("SET both:1 encrypted").await, "+OK\r\n");
    assert_eq!(
        read_until_cached(&proxy, &mut client, "both:1").await,
        "$9\r\nencrypted\r\n"
    );
    let mut direct = tls_client(redis.addr(), &certs, Identity::Client)
        .await
        .expect("TLS to Redis");
    assert_eq!(direct.cmd("SET both:1 changed").await, "+OK\r\n");
    client.cmd_until("GET both:1", "$7\r\nchanged\r\n").await;
    // A large value crosses both TLS sessions whole (many TLS records).
    let large = "x".repeat(300_000);
    assert_eq!(client.cmd(&format!("SET big {large}")).await, "+OK\r\n");
    let reply = client.cmd("GET big").await;
    assert_eq!(reply, format!("${}\r\n{large}\r\n", large.len()));
    assert_eq!(
        redis_cli(&proxy, &certs, true, &["GET", "both:1"]).await,
        Ok("changed\n".into())
    );
}

/// The binary with `--check-config` and only the given AURACACHE_ (and
/// SSL_CERT_) variables.
fn check_config(env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(binary());
    command.arg("--check-config");
    for (name, _) in std::env::vars() {
        if name.starts_with("AURACACHE_") || name.starts_with("SSL_CERT_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied()).output().expect("run auracache")
}

#[test]
fn check_config_shows_tls_paths_and_never_key_material() {
    let certs = Certs::generate();
    let (cert, key, ca) = (certs.path("server.pem"), certs.path("server.key"), certs.path("ca.pem"));
    let (client_cert, client_key) = (certs.path("client.pem"), certs.path("client.key"));
    let output = check_config(&[
        ("AURACACHE_TLS_CERT", &cert),
        ("AURACACHE_TLS_KEY", &key),
        ("AURACACHE_TLS_CLIENT_CA", &ca),
        ("AURACACHE_UPSTREAM", "rediss://:secret@127.0.0.1:6390"),
        ("AURACACHE_UPSTREAM_TLS_CA", &ca),
        ("AURACACHE_UPSTREAM_TLS_CERT", &client_cert),
        ("AURACACHE_UPSTREAM_TLS_KEY", &client_key),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for path in [&cert, &key, &ca, &client_cert, &client_key] {
        assert!(stdout.contains(path.as_str()), "{path} missing from {stdout}");
    }
    assert!(
        stdout.contains("upstream = \"rediss://:<hidden>@127.0.0.1:6390/0\""),
        "{stdout}"
    );
    for secret_file in [&key, &client_key] {
        let pem = std::fs::read_to_string(secret_file).unwrap();
        let body = pem.lines().nth(1).expect("a line of key material");
        assert!(!stdout.contains(body), "key material shown");
    }
    assert!(
        !stdout.contains("PRIVATE KEY") && !stdout.contains("secret"),
        "{stdout}"
    );
}

#[tokio::test]
async fn invalid_tls_files_stop_start_up_with_an_error_naming_the_setting_and_file() {
    let certs = Certs::generate();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem").display().to_string();
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let secret_key = dir.path().join("secret.key").display().to_string();
    std::fs::write(
        &secret_key,
        "-----BEGIN PRIVATE KEY-----\nTOPSECRET@@not base64@@\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem").display().to_string();
    let url = redis.url();
    let (server_key, server_cert, client_key) = (
        certs.path("server.key"),
        certs.path("server.pem"),
        certs.path("client.key"),
    );
    let error = start_error(&url, |config| {
        config.tls.cert = garbage.clone();
        config.tls.key = server_key.clone();
    })
    .await;
    assert_eq!(
        error,
        format!(
            "invalid setting tls.cert = {garbage:?}: expected a PEM certificate file (no BEGIN CERTIFICATE section in it)"
        )
    );
    let error = start_error(&url, |config| {
        config.tls.cert = missing.clone();
        config.tls.key = server_key.clone();
    })
    .await;
    assert!(
        error.starts_with(&format!(
            "invalid setting tls.cert = {missing:?}: cannot read the file:"
        )),
        "{error}"
    );
    let error = start_error(&url, |config| {
        config.tls.cert = server_cert.clone();
        config.tls.key = secret_key.clone();
    })
    .await;
    assert!(error.contains("tls.key") && error.contains(&secret_key), "{error}");
    assert!(!error.contains("TOPSECRET"), "{error}");
    let error = start_error(&url, |config| {
        config.tls.cert = server_cert.clone();
        config.tls.key = client_key.clone();
    })
    .await;
    assert!(
        error.starts_with(&format!(
            "invalid setting tls.key = {client_key:?}: expected the private key of tls.cert"
        )),
        "{error}"
    );
    let error = start_error(&url, |config| config.tls.cert = server_cert.clone()).await;
    assert_eq!(
        error,
        "invalid setting tls.key = \"\": expected a PEM private key file, since tls.cert is set"
    );
    let error = start_error(&url, |config| {
        config.upstream = "rediss://127.0.0.1:6390".into();
        config.upstream_tls.ca = garbage.clone();
    })
    .await;
    assert!(error.starts_with("invalid setting upstream_tls.ca"), "{error}");
    // The binary says the same in one line, and --check-config too.
    let output = check_config(&[("AURACACHE_TLS_CERT", &garbage), ("AURACACHE_TLS_KEY", &server_key)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.trim()
            == format!(
                "auracache: invalid setting tls.cert = {garbage:?}: expected a PEM certificate file (no BEGIN CERTIFICATE section in it)"
            ),
        "{stderr}"
    );
}

/// Why the proxy refuses to start with `tweak`'s configuration.
async fn start_error(upstream: &str, tweak: impl FnOnce(&mut Config)) -> String {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        upstream: upstream.into(),
        ..Config::default()
    };
    config.admin.listen = String::new();
    tweak(&mut config);
    match Server::start(config).await {
        Ok(_) => panic!("the proxy started"),
        Err(error) => error.to_string(),
    }
}

/// The auracache binary, killed on drop.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Without `upstream_tls.ca`, Redis's certificate is checked against the
/// system's roots, found as OpenSSL finds them (here `SSL_CERT_FILE`): the
/// binary is run so the variable is its own.
#[tokio::test]
async fn without_upstream_tls_ca_the_system_roots_are_trusted() {
    let certs = Certs::generate();
    let redis = tls_redis(&certs, true);
    let port = common::free_port();
    let (client_cert, client_key) = (certs.path("client.pem"), certs.path("client.key"));
    let mut command = std::process::Command::new(binary());
    for (name, _) in std::env::vars() {
        if name.starts_with("AURACACHE_") || name.starts_with("SSL_CERT_") {
            command.env_remove(name);
        }
    }
    let _proxy = Running(
        command
            .envs([
                ("AURACACHE_LISTEN", format!("127.0.0.1:{port}").as_str()),
                ("AURACACHE_UPSTREAM", rediss(&redis).as_str()),
                ("AURACACHE_UPSTREAM_TLS_CERT", &client_cert),
                ("AURACACHE_UPSTREAM_TLS_KEY", &client_key),
                ("AURACACHE_ADMIN_LISTEN", ""),
                ("SSL_CERT_FILE", &certs.path("ca.pem")),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start auracache"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    common::poll_until_async("the proxy to listen", || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let mut client = RawClient::connect(addr).await;
    client.cmd_until("SET k through-system-roots", "+OK\r\n").await;
    assert_eq!(client.cmd("GET k").await, "$20\r\nthrough-system-roots\r\n");
    // No roots at all is a start-up error that says what to set.
    let empty = certs.path("no-roots.pem");
    std::fs::write(&empty, "").unwrap();
    let output = check_config(&[("AURACACHE_UPSTREAM", &rediss(&redis)), ("SSL_CERT_FILE", &empty)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "invalid setting upstream_tls.ca = \"\": expected a PEM CA file: no system root certificates were found"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_scheme_that_does_not_match_redis_is_reported_with_the_fix() {
    let certs = Certs::generate();
    let tls_only = tls_redis(&certs, false);
    let plain = RedisServer::start();
    let proxy = Proxy::start_with(&format!("redis://127.0.0.1:{}", tls_only.port()), |_| {}).await;
    let reply = proxy.raw().await.cmd("PING").await;
    assert!(
        reply.starts_with("-ERR upstream unavailable: set-up failed: "),
        "{reply}"
    );
    assert!(
        reply.contains("(if Redis speaks TLS on that port, use rediss://)"),
        "{reply}"
    );
    let proxy = Proxy::start_with(&rediss(&plain), |config| {
        config.upstream_tls.ca = certs.path("ca.pem");
        config.pool.connect_timeout_ms = 300;
    })
    .await;
    let reply = proxy.raw().await.cmd("PING").await;
    assert!(
        reply.starts_with("-ERR upstream unavailable: TLS handshake with 127.0.0.1:")
            && reply.contains("not answered within 300 ms (does Redis speak TLS on that port?)"),
        "{reply}"
    );
}
