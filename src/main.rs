//! The `auracache` binary: reads the layered configuration, sets up logging,
//! runs the proxy until SIGINT/SIGTERM, and turns errors into one clear line.

use std::path::PathBuf;
use std::process::ExitCode;

use auracache::Server;
use auracache::config::{Config, ConfigError};
use clap::Parser;

/// A RESP-compatible caching proxy for Redis.
#[derive(Debug, Parser)]
#[command(name = "auracache", version, about)]
struct Flags {
    /// Configuration file (proxy.toml); settings there are overridden by
    /// environment variables, which flags override in turn.
    #[arg(long, env = "AURACACHE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on for clients, e.g. 127.0.0.1:6380.
    #[arg(long)]
    listen: Option<String>,
    /// Redis behind the proxy: redis://[user:password@]host:port[/db]
    /// (rediss:// for TLS; redis-cluster://host:port,host:port for a Redis Cluster).
    #[arg(long)]
    upstream: Option<String>,
    /// Threads serving clients: 1 = single-threaded event loop, 0 = one per core.
    #[arg(long)]
    threads: Option<String>,
    /// error, warn, info, debug or trace.
    #[arg(long)]
    log_level: Option<String>,
    /// text or json.
    #[arg(long)]
    log_format: Option<String>,
    /// Validate the configuration, print the effective settings, and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let config = match effective_config(&flags) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("auracache: {error}");
            return ExitCode::from(2);
        }
    };
    if flags.check_config {
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    let mut builder = match config.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        threads => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("auracache: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match Server::start(config).await {
            Ok(server) => {
                server.run_until(termination()).await;
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("auracache: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Defaults < proxy.toml < environment < flags, then checked as a whole,
/// the TLS files named included.
fn effective_config(flags: &Flags) -> Result<Config, ConfigError> {
    let mut config = match &flags.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply_environment(std::env::vars())?;
    let overrides = [
        ("listen", &flags.listen),
        ("upstream", &flags.upstream),
        ("threads", &flags.threads),
        ("log.level", &flags.log_level),
        ("log.format", &flags.log_format),
    ];
    for (name, value) in overrides {
        if let Some(value) = value {
            config.set(name, value)?;
        }
    }
    config.validate()?;
    auracache::tls::check(&config)?;
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("auracache={}", config.log.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn termination() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
