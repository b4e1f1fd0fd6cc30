//! The Paddock REST API as code: the resource types `paddockd` serves and the CLI reads
//! ([`types`]), the OpenAPI 3 document built from them ([`openapi::document`], committed as
//! `crates/api/openapi.json`), and a typed blocking client over the daemon's Unix socket
//! ([`Client`]), on a small HTTP/1.1 implementation ([`http`]) that also speaks to
//! `paddock-vmm`'s control socket.
#![forbid(unsafe_code)]

pub mod client;
pub mod client_console;
mod client_network;
mod client_remote;
mod client_storage;
pub mod http;
pub mod network;
pub mod openapi;
pub mod openapi_network;
pub mod openapi_storage;
mod openapi_tokens;
mod openapi_ws;
pub mod remote;
pub mod storage;
pub mod tokens;
pub mod types;

pub use client::{Client, ClientError};
pub use remote::{Remote, RemoteError, Trust};
pub use types::{AuditEntry, ErrorBody, Event, StopRequest, Vm, VmState, VmSummary};

/// The default path of the daemon's socket.
pub const DEFAULT_SOCKET: &str = "/run/paddock/paddockd.sock";

/// The prefix of every versioned path.
pub const API_PREFIX: &str = "/api/v1";
