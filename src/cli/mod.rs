//! The command-line tools other than the server: `switchboard chat` (the terminal client) and
//! `switchboard bench` (the load generator). Both talk to nodes through [`crate::client`].

pub mod bench;
pub mod chat;
