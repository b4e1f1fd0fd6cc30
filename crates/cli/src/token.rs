//! `paddock token`: API tokens for remote access to paddockd (`paddockd --listen`).
//! Create them on the daemon's host; the secret is printed once.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use paddock_api::tokens::{Token, TokenRequest};
use paddock_api::{Client, ClientError};

use crate::output::print_json;
use crate::remote::RemoteArgs;

/// Options every `paddock token` command takes.
#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The daemon's socket.
    #[arg(long, global = true, env = "PADDOCK_SOCKET", default_value = paddock_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: TokenCommand,
}

/// The token subcommands.
#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Creates a token and prints its secret, once (only on the daemon's Unix socket).
    Create {
        /// A unique name; the audit log records `token:<name>` for its requests.
        name: String,
        /// Days until it stops working (1-3650); default: never.
        #[arg(long, value_name = "DAYS")]
        expires_in_days: Option<u32>,
    },
    /// Lists the tokens (never their secrets).
    List,
    /// Revokes a token: requests carrying it are refused from now on.
    Revoke {
        /// The token's name.
        name: String,
    },
}

/// Runs a `paddock token` command.
pub fn run(args: TokenArgs, remote: &RemoteArgs) -> ExitCode {
    remote.run(&args.socket, args.json, |client| {
        execute(client, args.command, args.json)
    })
}

fn table(tokens: &[Token]) -> String {
    let mut rows = vec![["NAME", "CREATED", "LAST USED", "EXPIRES"].map(String::from)];
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    for t in tokens {
        rows.push([
            t.name.clone(),
            t.created_at.clone(),
            or_dash(&t.last_used),
            or_dash(&t.expires_at),
        ]);
    }
    crate::output::table(&rows)
}

fn execute(client: &Client, command: TokenCommand, json: bool) -> Result<(), ClientError> {
    match command {
        TokenCommand::Create {
            name,
            expires_in_days,
        } => {
            let t = client.create_token(&TokenRequest {
                name,
                expires_in_days,
            })?;
            if json {
                print_json(&t);
            } else {
                println!("{}", t.secret);
                eprintln!(
                    "paddock: token '{}' created{}; the secret above is shown only this once. \
                     Use it with `paddock --host https://HOST:PORT --token ...` or PADDOCK_TOKEN.",
                    t.token.name,
                    t.token
                        .expires_at
                        .as_deref()
                        .map(|a| format!(", expires {a}"))
                        .unwrap_or_default()
                );
            }
        }
        TokenCommand::List => {
            let tokens = client.tokens()?;
            if json {
                print_json(&tokens);
            } else {
                print!("{}", table(&tokens));
            }
        }
        TokenCommand::Revoke { name } => {
            client.revoke_token(&name)?;
            if json {
                print_json(&serde_json::json!({ "revoked": name }));
            } else {
                println!("revoked {name}");
            }
        }
    }
    Ok(())
}
