//! TLS on the chat listener (`tls_cert_file` + `tls_key_file`): the handshake, bounded by
//! `tls_handshake_timeout_ms`, and the certificate, re-read when its files change (as
//! cert-manager rotates them) without a restart. rustls with the ring provider.
//!
//! A PROXY header, when configured, is read from the plain socket before the handshake; the
//! bytes read past it are the start of the ClientHello and are put back in front ([`Rewind`]).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::BytesMut;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::Metrics;

/// A client connection after a successful handshake.
pub type TlsStream = tokio_rustls::server::TlsStream<Rewind>;

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Not done within `tls_handshake_timeout_ms` (also: a plaintext client that sends nothing).
    #[error("no TLS handshake within {0:?}")]
    Timeout(Duration),
    /// Not TLS, no common protocol version or cipher, a bad certificate alert, a reset.
    #[error("TLS handshake failed: {0}")]
    Failed(io::Error),
}

/// The node's TLS side: an acceptor whose certificate can change under it.
pub struct Tls {
    acceptor: TlsAcceptor,
    certs: Arc<Certs>,
    handshake_timeout: Duration,
    reload_interval: Duration,
}

impl Tls {
    /// TLS as configured, or `None` when no certificate is. An unreadable or invalid
    /// certificate or key fails start-up.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Option<Tls>> {
        let (Some(cert_file), Some(key_file)) = (&settings.tls_cert_file, &settings.tls_key_file)
        else {
            return Ok(None);
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = read_pair(cert_file, key_file)?;
        let key = certified_key(&files, &provider).with_context(|| {
            format!(
                "TLS certificate {} / key {}",
                cert_file.display(),
                key_file.display()
            )
        })?;
        let certs = Arc::new(Certs {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            provider: provider.clone(),
            current: RwLock::new(Arc::new(key)),
            loaded: std::sync::Mutex::new(files),
        });
        // Safe defaults of rustls: TLS 1.3 and 1.2, AEAD cipher suites with forward secrecy only.
        // Session resumption stays on (rustls' default): reconnects after a goaway are cheaper.
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        Ok(Some(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certs,
            handshake_timeout: Duration::from_millis(settings.tls_handshake_timeout_ms),
            reload_interval: Duration::from_millis(settings.tls_reload_interval_ms),
        }))
    }

    /// Completes the server handshake on `stream`, `buffered` being bytes already read from it;
    /// counts the result in `switchboard_tls_handshakes_total`.
    pub async fn accept(
        &self,
        stream: TcpStream,
        buffered: BytesMut,
        metrics: &Metrics,
    ) -> Result<TlsStream, HandshakeError> {
        let io = Rewind {
            buffered,
            io: stream,
        };
        let result =
            match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(io)).await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(e)) => Err(HandshakeError::Failed(e)),
                Err(_) => Err(HandshakeError::Timeout(self.handshake_timeout)),
            };
        let label = match &result {
            Ok(_) => "ok",
            Err(HandshakeError::Failed(_)) => "failed",
            Err(HandshakeError::Timeout(_)) => "timeout",
        };
        metrics.tls_handshakes.with_label_values(&[label]).inc();
        result
    }

    /// Checks the certificate files every `tls_reload_interval_ms` until `stop`; new contents
    /// that load replace the certificate for the next handshakes. New contents that do not load
    /// (a half-written pair, a key that does not match) are logged and counted, and the previous
    /// certificate stays; they are tried again when the files change again.
    pub async fn watch(self: Arc<Self>, metrics: Arc<Metrics>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let certs = self.certs.clone();
            // Small files, but a blocking read all the same: off the runtime's threads.
            let outcome = tokio::task::spawn_blocking(move || certs.reload()).await;
            match outcome {
                Ok(Ok(false)) => {}
                Ok(Ok(true)) => {
                    last_error = None;
                    metrics.tls_reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(file = %self.certs.cert_file.display(), "TLS certificate reloaded");
                }
                Ok(Err(e)) => {
                    let text = format!("{e:#}");
                    // Once per distinct failure: a missing file is not logged every interval.
                    if last_error.as_ref() != Some(&text) {
                        metrics.tls_reloads.with_label_values(&["failed"]).inc();
                        tracing::warn!(error = %text, "TLS certificate reload failed; the previous certificate stays in use");
                        last_error = Some(text);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "TLS certificate reload task failed"),
            }
        }
    }
}

/// The files' contents: certificate chain, key.
type Pair = (Vec<u8>, Vec<u8>);

/// The current certificate, and the file contents it was last loaded (or tried) from.
#[derive(Debug)]
struct Certs {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// Contents compared, not modification times: a Kubernetes Secret volume swaps a symlink,
    /// and mtimes can stay equal within their resolution.
    loaded: std::sync::Mutex<Pair>,
}

impl Certs {
    /// Loads the files if their contents changed: `Ok(true)` when a new certificate is in use.
    fn reload(&self) -> anyhow::Result<bool> {
        let files = read_pair(&self.cert_file, &self.key_file)?;
        {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            if *loaded == files {
                return Ok(false);
            }
            // Remembered even if it fails to load: the same bad pair is not retried (or logged)
            // every interval; the next change is.
            *loaded = files.clone();
        }
        let key = certified_key(&files, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(true)
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn read_pair(cert_file: &Path, key_file: &Path) -> anyhow::Result<Pair> {
    let cert = std::fs::read(cert_file)
        .with_context(|| format!("reading tls_cert_file {}", cert_file.display()))?;
    let key = std::fs::read(key_file)
        .with_context(|| format!("reading tls_key_file {}", key_file.display()))?;
    Ok((cert, key))
}

/// Parses a PEM chain and key and checks that the key belongs to the first certificate.
fn certified_key((cert, key): &Pair, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .context("tls_cert_file is not a PEM certificate chain")?;
    anyhow::ensure!(!chain.is_empty(), "tls_cert_file holds no certificate");
    let key =
        PrivateKeyDer::from_pem_slice(key).context("tls_key_file holds no PEM private key")?;
    CertifiedKey::from_der(chain, key, provider)
        .context("the key does not load or does not belong to the certificate")
}

/// A TCP stream with bytes already read from it put back in front of what it reads next.
#[derive(Debug)]
pub struct Rewind {
    buffered: BytesMut,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buffered.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.buffered.len().min(buf.remaining());
        buf.put_slice(&this.buffered.split_to(n));
        if this.buffered.is_empty() {
            // Free the allocation for the life of the connection.
            this.buffered = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
