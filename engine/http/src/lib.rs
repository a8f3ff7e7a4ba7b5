//! Tessera over HTTP: the registry server ([`server::Server`], an
//! embeddable axum router plus a hardened accept loop) and the client that
//! pulls and pushes through it ([`client`]), speaking the protocol of
//! `format-spec/PROTOCOL.md`.
//!
//! A pull downloads only the chunks the local store lacks, verifies every
//! one against its id before keeping it, and resumes after an interruption
//! without refetching what it received; a push uploads only the chunks the
//! server lacks.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod client;
pub mod protocol;
pub mod server;

pub use auth::{Policy, TokenFile};
pub use server::{Server, ServerConfig, ServerStats};
