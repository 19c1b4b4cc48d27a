//! switchboard: a stateless, horizontally scaled TCP chat server (protocol v1, see
//! docs/protocol.md). Nodes share one Redis; the embedded in-memory backend serves a single node.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod store;
pub mod telemetry;

pub use config::Settings;
pub use server::Server;
