//! Everything that talks to Redis: opening and setting up a connection
//! ([`connect`], over TLS for a `rediss://` [`Upstream`]), the pipelined
//! connection itself ([`UpstreamConnection`]), and the shared pools
//! ([`Pools`]). The session asks for "a connection for database D in
//! protocol P" and never learns how it is made; a cluster-aware upstream can
//! later answer "the owner of this key's slot" the same way.

pub mod cluster;
mod connection;
mod pool;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use connection::{BatchResult, Hook, UpstreamConnection};
pub use pool::{Pool, Pools};

use crate::config::{Config, ConfigError, UpstreamUrl};
use crate::protocol::{Protocol, ReplyLimits, ReplyScanner, encode_array};
use crate::stats::{ConnectionKind, Stats};
use crate::stream::Stream;
use crate::tls::UpstreamTls;

/// The Redis behind the proxy and how to reach it: its URL and, for
/// `rediss://`, the TLS set-up every connection to it uses.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub url: UpstreamUrl,
    pub tls: Option<UpstreamTls>,
}

impl Upstream {
    /// From `upstream` and `[upstream_tls]` (its files read and checked).
    pub fn from_config(config: &Config) -> Result<Upstream, ConfigError> {
        let url = UpstreamUrl::parse(&config.upstream).map_err(|allowed| ConfigError::Invalid {
            name: "upstream".into(),
            value: config.upstream_redacted(),
            allowed,
        })?;
        let tls = UpstreamTls::from_config(&url, &config.upstream_tls)?;
        Ok(Upstream { url, tls })
    }
}

/// Why Redis could not answer. The client sees
/// `-ERR upstream unavailable: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Unavailable(String),
}

impl UpstreamError {
    pub fn lost() -> Self {
        UpstreamError::Unavailable("connection lost".into())
    }

    /// The error line a client receives.
    pub fn client_message(&self) -> String {
        format!("ERR upstream unavailable: {self}")
    }
}

/// What a new upstream connection must be set up for.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    pub db: u32,
    pub protocol: Protocol,
    /// CLIENT SETNAME for the connection, so operators can tell it apart.
    pub name: Option<&'static str>,
    pub kind: ConnectionKind,
    pub timeout: Duration,
    /// With replies owed, the longest Redis may send nothing before the
    /// connection is given up (and everything owed on it fails); None:
    /// wait as long as it takes (`pool.reply_timeout_ms` 0).
    pub reply_timeout: Option<Duration>,
}

/// The name pooled connections carry in Redis's CLIENT LIST.
pub const POOL_CONNECTION_NAME: &str = "auracache:pool";

/// Opens a connection (TCP, then the TLS handshake for `rediss://`) and
/// sets it up (AUTH or HELLO, SELECT, CLIENT SETNAME), all within
/// `options.timeout`.
pub async fn connect(
    upstream: &Upstream,
    options: ConnectOptions,
    limits: ReplyLimits,
    stats: Arc<Stats>,
) -> Result<UpstreamConnection, UpstreamError> {
    let target = &upstream.url;
    if target.is_cluster() {
        return Err(UpstreamError::Unavailable(
            "a cluster connection is opened by its Pools (Pools::connect_own)".into(),
        ));
    }
    // A timeout during the handshake is told apart: a Redis that speaks
    // plain text waits for the end of a line that a ClientHello never sends.
    let handshaking = AtomicBool::new(false);
    let attempt = async {
        let tcp = TcpStream::connect(target.address())
            .await
            .map_err(|error| UpstreamError::Unavailable(format!("cannot connect to {}: {error}", target.address())))?;
        let _ = tcp.set_nodelay(true);
        let mut stream = match &upstream.tls {
            None => Stream::Plain(tcp),
            Some(tls) => {
                handshaking.store(true, Ordering::Relaxed);
                let stream = tls.connect(tcp).await.map_err(|error| {
                    UpstreamError::Unavailable(format!("TLS handshake with {} failed: {error}", target.address()))
                })?;
                handshaking.store(false, Ordering::Relaxed);
                stream
            }
        };
        let leftover = set_up(&mut stream, target, options, limits).await?;
        Ok(UpstreamConnection::start(stream, leftover, limits, stats, options))
    };
    match tokio::time::timeout(options.timeout, attempt).await {
        Ok(result) => result,
        Err(_) if handshaking.load(Ordering::Relaxed) => Err(UpstreamError::Unavailable(format!(
            "TLS handshake with {} not answered within {} ms (does Redis speak TLS on that port?)",
            target.address(),
            options.timeout.as_millis()
        ))),
        Err(_) => Err(UpstreamError::Unavailable(format!(
            "connecting to {} timed out after {} ms",
            target.address(),
            options.timeout.as_millis()
        ))),
    }
}

/// Sends the set-up commands as one pipeline and checks their replies.
async fn set_up(
    stream: &mut Stream,
    target: &UpstreamUrl,
    options: ConnectOptions,
    limits: ReplyLimits,
) -> Result<BytesMut, UpstreamError> {
    let word = |text: &str| Bytes::copy_from_slice(text.as_bytes());
    let mut commands: Vec<(Vec<Bytes>, bool)> = Vec::new();
    let credentials = target
        .password
        .as_ref()
        .map(|password| (word(target.username.as_deref().unwrap_or("default")), word(password)));
    match (options.protocol, credentials) {
        (Protocol::Resp3, Some((user, password))) => {
            commands.push((vec![word("HELLO"), word("3"), word("AUTH"), user, password], true))
        }
        (Protocol::Resp3, None) => commands.push((vec![word("HELLO"), word("3")], true)),
        (Protocol::Resp2, Some((user, password))) => commands.push((vec![word("AUTH"), user, password], true)),
        (Protocol::Resp2, None) => {}
    }
    if options.db != 0 {
        commands.push((vec![word("SELECT"), word(&options.db.to_string())], true));
    }
    if let Some(name) = options.name {
        // Best effort: an ACL may forbid it, and the connection works without.
        commands.push((vec![word("CLIENT"), word("SETNAME"), word(name)], false));
    }
    if commands.is_empty() {
        return Ok(BytesMut::new());
    }
    let mut out = BytesMut::new();
    for (args, _) in &commands {
        encode_array(&mut out, args);
    }
    let io_error = |error: std::io::Error| {
        // A TLS-only Redis resets a connection that speaks plain text.
        let plain_to_tls = !target.tls && error.kind() == std::io::ErrorKind::ConnectionReset;
        let hint = crate::tls::hint(&error)
            .or(plain_to_tls.then_some("if Redis speaks TLS on that port, use rediss://"))
            .map(|hint| format!(" ({hint})"))
            .unwrap_or_default();
        UpstreamError::Unavailable(format!("set-up failed: {error}{hint}"))
    };
    stream.write_all(&out).await.map_err(io_error)?;
    stream.flush().await.map_err(io_error)?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut scanner = ReplyScanner::new(limits);
    for (args, required) in &commands {
        let frame = loop {
            match scanner.scan(&buf) {
                Ok(Some(frame)) => break frame,
                Ok(None) => {
                    if stream.read_buf(&mut buf).await.map_err(io_error)? == 0 {
                        return Err(UpstreamError::lost());
                    }
                }
                Err(error) => return Err(UpstreamError::Unavailable(error.to_string())),
            }
        };
        let reply = buf.split_to(frame.len);
        if *required && matches!(reply.first(), Some(b'-') | Some(b'!')) {
            let text = String::from_utf8_lossy(&reply);
            let first_word = String::from_utf8_lossy(&args[0]).to_uppercase();
            let message = text
                .trim_start_matches(['-', '!'])
                .lines()
                .last()
                .unwrap_or_default()
                .trim();
            return Err(UpstreamError::Unavailable(format!("{first_word} refused: {message}")));
        }
    }
    Ok(buf)
}
