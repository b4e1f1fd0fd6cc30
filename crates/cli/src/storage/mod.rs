//! `paddock pool`, `paddock volume` and `paddock task`: storage through paddockd's REST API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use paddock_api::{Client, ClientError};

use crate::output::print_json;

pub mod pool;
mod table;
pub mod task;
pub mod volume;

/// Options every storage command takes.
#[derive(Args, Debug)]
pub struct Common {
    /// The daemon's socket.
    #[arg(long, global = true, env = "PADDOCK_SOCKET", default_value = paddock_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

/// A failure a command reports: the daemon's, or the command's own.
#[derive(Debug)]
pub enum Failure {
    /// The daemon (or the connection) failed.
    Client(ClientError),
    /// A task ended without success.
    Task(paddock_api::storage::Task),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

/// Runs `f` with a client for `common`, reporting a failure the way `paddock vm` does.
pub fn run(
    common: &Common,
    remote: &crate::remote::RemoteArgs,
    f: impl FnOnce(&Client, bool) -> Result<(), Failure>,
) -> ExitCode {
    let client = match remote.client(&common.socket) {
        Ok(c) => c,
        Err(e) => return crate::output::client_failure(&e, common.json),
    };
    match f(&client, common.json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Task(t)) => {
            if common.json {
                print_json(&t);
            } else {
                eprintln!(
                    "paddock: task {} ({} {}) {}: {}",
                    t.id,
                    t.kind.as_str(),
                    t.target,
                    t.state,
                    t.error.as_deref().unwrap_or("no reason given")
                );
            }
            ExitCode::from(1)
        }
        Err(Failure::Client(e)) => crate::output::client_failure(&e, common.json),
    }
}
