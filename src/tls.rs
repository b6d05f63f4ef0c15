//! TLS on both sides, with rustls (ring as its crypto provider).
//!
//! - [`ListenerTls`]: clients → proxy. With `tls.cert` and `tls.key` set,
//!   every accepted connection completes a TLS handshake (within
//!   `tls.handshake_timeout_ms`, in its own task) before its session starts;
//!   with `tls.client_ca`, it must present a certificate that CA signed.
//! - [`UpstreamTls`]: proxy → Redis, for a `rediss://` upstream. Every
//!   upstream connection (pooled, a client's own, tracking, the preloader's)
//!   is opened by `upstream::connect`, which runs the handshake through it.
//!
//! Every file is read and checked when the configuration is (start-up and
//! `--check-config`); an error names the setting and the file, never what
//! is in a key file.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{Config, ConfigError, TlsConfig, UpstreamTlsConfig, UpstreamUrl, invalid};
use crate::stream::Stream;

/// The client listener's TLS: certificate, key, and whom it lets in.
#[derive(Clone)]
pub struct ListenerTls {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

impl ListenerTls {
    /// None when `[tls]` names no certificate (the listener is plain TCP).
    pub fn from_config(config: &TlsConfig) -> Result<Option<ListenerTls>, ConfigError> {
        if !config.enabled() {
            return Ok(None);
        }
        let chain = certificates("tls.cert", &config.cert)?;
        let key = private_key("tls.key", &config.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| invalid("tls.cert", &config.cert, &format!("TLS cannot start: {error}")))?;
        let builder = if config.client_ca.is_empty() {
            builder.with_no_client_auth()
        } else {
            let roots = roots("tls.client_ca", &config.client_ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|error| {
                    invalid(
                        "tls.client_ca",
                        &config.client_ca,
                        &format!("cannot verify clients with it: {error}"),
                    )
                })?;
            builder.with_client_cert_verifier(verifier)
        };
        let server = builder.with_single_cert(chain, key).map_err(|error| {
            invalid(
                "tls.key",
                &config.key,
                &format!("expected the private key of tls.cert ({}): {error}", config.cert),
            )
        })?;
        Ok(Some(ListenerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
        }))
    }

    /// Runs the server side of the handshake on an accepted connection,
    /// for at most `tls.handshake_timeout_ms`. The error says why, for the
    /// log (a client speaking plain text, a certificate refused, ...).
    pub async fn accept(&self, stream: TcpStream) -> Result<Stream, String> {
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Ok(Stream::Tls(Box::new(stream.into()))),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!(
                "no TLS handshake within {} ms (tls.handshake_timeout_ms)",
                self.handshake_timeout.as_millis()
            )),
        }
    }
}

/// A `rediss://` upstream's TLS: whom to trust, the name to check, and the
/// proxy's own certificate when Redis asks for one.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// None for a `redis://` upstream.
    pub fn from_config(url: &UpstreamUrl, config: &UpstreamTlsConfig) -> Result<Option<UpstreamTls>, ConfigError> {
        if !url.tls {
            return Ok(None);
        }
        let roots = if config.ca.is_empty() {
            system_roots()?
        } else {
            roots("upstream_tls.ca", &config.ca)?
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| invalid("upstream_tls.ca", &config.ca, &format!("TLS cannot start: {error}")))?
            .with_root_certificates(roots);
        let client = if config.cert.is_empty() {
            builder.with_no_client_auth()
        } else {
            let chain = certificates("upstream_tls.cert", &config.cert)?;
            let key = private_key("upstream_tls.key", &config.key)?;
            builder.with_client_auth_cert(chain, key).map_err(|error| {
                invalid(
                    "upstream_tls.key",
                    &config.key,
                    &format!(
                        "expected the private key of upstream_tls.cert ({}): {error}",
                        config.cert
                    ),
                )
            })?
        };
        let (setting, name) = match config.sni.as_str() {
            "" => ("upstream", url.host.clone()),
            sni => ("upstream_tls.sni", sni.to_string()),
        };
        let server_name = ServerName::try_from(name.clone()).map_err(|_| {
            invalid(
                setting,
                &name,
                "expected a DNS name or an IP address to check Redis's certificate against",
            )
        })?;
        Ok(Some(UpstreamTls {
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        }))
    }

    /// Runs the client side of the handshake; the error is rustls's reason
    /// (an unknown issuer, a name mismatch, an alert from Redis).
    pub async fn connect(&self, stream: TcpStream) -> std::io::Result<Stream> {
        let stream = self.connector.connect(self.server_name.clone(), stream).await?;
        Ok(Stream::Tls(Box::new(stream.into())))
    }
}

/// What to do about a TLS failure the error alone does not make plain.
/// In TLS 1.3 a client's handshake completes before the server has checked
/// its certificate, so Redis's refusal arrives as an alert on the first read.
pub fn hint(error: &std::io::Error) -> Option<&'static str> {
    let error = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    match error {
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            Some("Redis asks for a client certificate: set upstream_tls.cert and upstream_tls.key")
        }
        rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::CertificateUnknown,
        ) => {
            Some("Redis refused the proxy's certificate (upstream_tls.cert): is it signed by Redis's tls-ca-cert-file?")
        }
        _ => None,
    }
}

/// Reads and checks every TLS file the configuration names, as start-up
/// would (for `--check-config`).
pub fn check(config: &Config) -> Result<(), ConfigError> {
    ListenerTls::from_config(&config.tls)?;
    if let Ok(url) = UpstreamUrl::parse(&config.upstream) {
        UpstreamTls::from_config(&url, &config.upstream_tls)?;
    }
    Ok(())
}

/// ring: it builds with the C compiler alone, where aws-lc-rs also needs
/// cmake (and nasm on some targets). Chosen explicitly, so a dependency
/// that enables another provider cannot make rustls guess.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(name: &str, path: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|error| invalid(name, path, &format!("cannot read the file: {error}")))
}

/// Every certificate in a PEM file; at least one.
fn certificates(name: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = read(name, path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(name, path, &format!("expected a PEM certificate file ({error})")))?;
    if chain.is_empty() {
        return Err(invalid(
            name,
            path,
            "expected a PEM certificate file (no BEGIN CERTIFICATE section in it)",
        ));
    }
    Ok(chain)
}

/// The first private key in a PEM file. The error never quotes the file:
/// it is a secret.
fn private_key(name: &str, path: &str) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let bytes = read(name, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| {
        let why = match error {
            pem::Error::NoItemsFound => "no BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY section in it",
            _ => "a section of it is not valid PEM",
        };
        invalid(name, path, &format!("expected a PEM private key file ({why})"))
    })
}

/// The CA certificates of a PEM file, as trust anchors.
fn roots(name: &str, path: &str) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(name, path)? {
        roots
            .add(certificate)
            .map_err(|error| invalid(name, path, &format!("expected CA certificates: {error}")))?;
    }
    Ok(roots)
}

/// The operating system's roots (as OpenSSL and redis-cli find them,
/// `SSL_CERT_FILE`/`SSL_CERT_DIR` included).
fn system_roots() -> Result<RootCertStore, ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(invalid(
            "upstream_tls.ca",
            "",
            "expected a PEM CA file: no system root certificates were found (install ca-certificates, or name the CA that signed Redis's certificate)",
        ));
    }
    Ok(roots)
}
