//! `paddock pool define|list|show|delete`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use paddock_api::storage::PoolRequest;

use super::{run, table, Common};
use crate::output::print_json;

/// `paddock pool`.
#[derive(Args, Debug)]
pub struct PoolArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: PoolCommand,
}

#[derive(Subcommand, Debug)]
enum PoolCommand {
    /// Defines a directory pool (the directory is made when absent).
    Define {
        /// The pool's name.
        name: String,
        /// Its directory (absolute).
        path: PathBuf,
    },
    /// Lists the pools with their space.
    List,
    /// Shows one pool.
    Show {
        /// The pool.
        name: String,
    },
    /// Forgets an empty pool (its directory stays).
    Delete {
        /// The pool.
        name: String,
    },
}

/// Runs a `paddock pool` command.
pub fn execute(args: PoolArgs, remote: &crate::remote::RemoteArgs) -> ExitCode {
    run(&args.common, remote, |c, json| {
        let show = |p: paddock_api::storage::Pool| {
            if json {
                print_json(&p);
            } else {
                print!("{}", table::pool_detail(&p));
            }
        };
        match args.command {
            PoolCommand::Define { name, path } => show(c.define_pool(&PoolRequest { name, path })?),
            PoolCommand::List => {
                let pools = c.pools()?;
                if json {
                    print_json(&pools);
                } else {
                    print!("{}", table::pools(&pools));
                }
            }
            PoolCommand::Show { name } => show(c.pool(&name)?),
            PoolCommand::Delete { name } => {
                c.delete_pool(&name)?;
                if json {
                    print_json(&serde_json::json!({ "deleted": name }));
                } else {
                    println!("deleted pool {name}");
                }
            }
        }
        Ok(())
    })
}
