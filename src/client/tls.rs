//! Connecting over TLS (to a node with a certificate, or to a load balancer that terminates
//! TLS): a [`Connector`] says how to reach a node, plain or TLS with which roots and server
//! name, and yields a [`Connection`], the [`Transport`] of both (the TLS side through
//! [`Split`]). rustls with the ring provider.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::timeout;
use tokio_util::either::Either;

use super::{Client, ClientError, Options, Split, Transport};

/// A client-side TLS stream.
pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A connection that is plain TCP or TLS, chosen at run time (`--tls`).
#[derive(Debug)]
pub enum Connection {
    /// Plain TCP (its owned halves, no lock).
    Plain(TcpStream),
    /// TLS, split through [`Split`] (boxed: the TLS state is large, and this value only lives
    /// until the connection is split).
    Tls(Box<Split<TlsStream>>),
}

impl Transport for Connection {
    type Read = Either<OwnedReadHalf, tokio::io::ReadHalf<TlsStream>>;
    type Write = Either<OwnedWriteHalf, tokio::io::WriteHalf<TlsStream>>;
    fn split(self) -> (Self::Read, Self::Write) {
        match self {
            Connection::Plain(stream) => {
                let (rd, wr) = stream.into_split();
                (Either::Left(rd), Either::Left(wr))
            }
            Connection::Tls(stream) => {
                let (rd, wr) = (*stream).split();
                (Either::Right(rd), Either::Right(wr))
            }
        }
    }
}

/// How to reach a node: plain TCP ([`Connector::default`]) or TLS.
#[derive(Clone, Default)]
pub struct Connector {
    tls: Option<TlsSetup>,
}

#[derive(Clone)]
struct TlsSetup {
    connector: tokio_rustls::TlsConnector,
    /// `None`: the host part of each address connected to.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.is_some())
            .field(
                "server_name",
                &self.tls.as_ref().and_then(|t| t.server_name.as_ref()),
            )
            .finish()
    }
}

fn invalid(what: String) -> ClientError {
    ClientError::Io(io::Error::new(io::ErrorKind::InvalidInput, what))
}

impl Connector {
    /// TLS that trusts the certificates in `ca_file` (PEM; a private CA, as the chart's
    /// self-signed issuer makes) or, without one, the system's root certificates. The
    /// certificate must name `server_name`, or else the host of each address connected to.
    pub fn tls(
        ca_file: Option<&Path>,
        server_name: Option<&str>,
    ) -> Result<Connector, ClientError> {
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| invalid(format!("reading CA file {}: {e}", path.display())))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(invalid(format!("no CA certificate in {}", path.display())));
                }
            }
            None => {
                // Certificates the system store holds but rustls cannot parse are skipped.
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(invalid(
                        "no system root certificates found; give the CA with --ca FILE".into(),
                    ));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = server_name
            .map(|name| {
                ServerName::try_from(name.to_string())
                    .map_err(|_| invalid(format!("{name:?} is not a valid server name")))
            })
            .transpose()?;
        Ok(Connector {
            tls: Some(TlsSetup {
                connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
                server_name,
            }),
        })
    }

    /// True for TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connects to `addr` (`host:port`) within `options.connect_timeout`, then does the TLS
    /// handshake (if TLS) within the same limit again.
    pub async fn connect(&self, addr: &str, options: &Options) -> Result<Connection, ClientError> {
        let stream = timeout(options.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout("connecting".into()))??;
        if options.nodelay {
            stream.set_nodelay(true)?;
        }
        self.over(stream, addr, options).await
    }

    /// Wraps an open TCP connection to `addr` (its host is the default server name): as it is,
    /// or after a TLS handshake within `options.connect_timeout`.
    pub async fn over(
        &self,
        stream: TcpStream,
        addr: &str,
        options: &Options,
    ) -> Result<Connection, ClientError> {
        let Some(tls) = &self.tls else {
            return Ok(Connection::Plain(stream));
        };
        let name = match &tls.server_name {
            Some(name) => name.clone(),
            None => {
                let host = host_of(addr);
                ServerName::try_from(host.to_string())
                    .map_err(|_| invalid(format!("{host:?} is not a valid server name")))?
            }
        };
        let stream = timeout(options.connect_timeout, tls.connector.connect(name, stream))
            .await
            .map_err(|_| ClientError::Timeout("TLS handshake".into()))??;
        Ok(Connection::Tls(Box::new(Split(stream))))
    }
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        // One colon: host:port. More: a bare IPv6 address.
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

impl Client<Connection> {
    /// Connects through `connector` (plain or TLS) and reads `hello`.
    pub async fn connect_via(
        connector: &Connector,
        addr: &str,
        options: Options,
    ) -> Result<Client<Connection>, ClientError> {
        let connection = connector.connect(addr, &options).await?;
        Client::handshake(connection, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn server_name_from_the_address() {
        assert_eq!(host_of("chat.example.com:6000"), "chat.example.com");
        assert_eq!(host_of("127.0.0.1:6000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:6000"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
        assert_eq!(host_of("::1"), "::1");
    }
}
