//! switchboard: a stateless, horizontally scaled TCP chat server (protocol v1, see
//! docs/protocol.md). Nodes share one Redis; the embedded in-memory backend serves a single node.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod auth;
pub mod bench;
pub mod chat;
pub mod clock;
pub mod config;
pub mod conn;
pub mod error;
pub mod http;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod session;
pub mod store;
pub mod telemetry;

pub use config::Settings;
pub use server::Server;
