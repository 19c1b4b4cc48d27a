//! The command-line tools other than the server: `switchboard chat` (the terminal client) and
//! `switchboard bench` (the load generator). Both talk to nodes through [`crate::client`].

use std::path::PathBuf;

use anyhow::Context;

use crate::client::Connector;

pub mod bench;
pub mod chat;

/// How the tools reach a node: `--tls`, `--ca FILE`, `--server-name NAME`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Connect with TLS, verifying the server against the system's root certificates.
    #[arg(long)]
    pub tls: bool,
    /// Connect with TLS, verifying the server against this PEM CA certificate (a private CA;
    /// implies --tls).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The name the server's certificate must have (default: the host part of the address;
    /// implies --tls).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
}

impl TlsArgs {
    /// The connector these options ask for: plain TCP unless one of them is given.
    pub fn connector(&self) -> anyhow::Result<Connector> {
        if !self.tls && self.ca.is_none() && self.server_name.is_none() {
            return Ok(Connector::default());
        }
        Connector::tls(self.ca.as_deref(), self.server_name.as_deref()).context("setting up TLS")
    }
}
