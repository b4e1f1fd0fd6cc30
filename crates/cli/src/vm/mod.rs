//! `paddock vm`: VMs through the daemon's REST API (`paddockd` on its Unix socket).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use paddock_api::client::Action;
use paddock_api::{Client, ClientError, StopRequest};

use crate::output::print_json;

mod console;
mod define;
mod table;

/// Options every `paddock vm` command takes.
#[derive(Args, Debug)]
pub struct VmArgs {
    /// The daemon's socket.
    #[arg(long, global = true, env = "PADDOCK_SOCKET", default_value = paddock_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: VmCommand,
}

/// The VM subcommands.
#[derive(Subcommand, Debug)]
enum VmCommand {
    /// Defines a VM from a spec file (JSON or YAML; `-` reads standard input) or from flags
    /// (`paddock vm define web --kernel K --memory 1G --disk volume=pool/vol --nic network=lan`).
    Define(define::DefineArgs),
    /// Lists the VMs.
    List,
    /// Shows one VM with its spec.
    Show {
        /// The VM.
        name: String,
    },
    /// Starts a VM and waits until its VMM answers.
    Start {
        /// The VM.
        name: String,
    },
    /// Stops a VM: ACPI power button, then a hard stop after --timeout, then SIGKILL.
    Stop {
        /// The VM.
        name: String,
        /// Seconds the guest gets to power off (0: skip the power button).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Stops and starts a VM.
    Restart {
        /// The VM.
        name: String,
        /// Seconds the guest gets to power off.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Pauses a running VM.
    Pause {
        /// The VM.
        name: String,
    },
    /// Resumes a paused VM.
    Resume {
        /// The VM.
        name: String,
    },
    /// Deletes a VM that is not running, with its console log and runtime files.
    Delete {
        /// The VM.
        name: String,
        /// Also delete the pool volumes its disks name (refused, deleting nothing, when another
        /// VM uses one or one backs a linked clone).
        #[arg(long)]
        volumes: bool,
    },
    /// Attaches to the VM's serial console (Ctrl-] detaches); with --log (or --json) prints
    /// the console log instead. Piped standard input is sent to the guest.
    Console {
        /// The VM.
        name: String,
        /// Print the console log (all output so far) instead of attaching.
        #[arg(long)]
        log: bool,
    },
}

/// Runs a `paddock vm` command.
pub fn run(args: VmArgs, remote: &crate::remote::RemoteArgs) -> ExitCode {
    remote.run(&args.socket, args.json, |client| {
        execute(client, args.command, args.json)
    })
}

fn execute(client: &Client, command: VmCommand, json: bool) -> Result<(), ClientError> {
    let show = |vm: paddock_api::Vm| {
        if json {
            print_json(&vm);
        } else {
            print!("{}", table::detail(&vm));
        }
    };
    let stop = |timeout: Option<u64>| {
        Some(StopRequest {
            timeout_secs: timeout,
        })
    };
    match command {
        VmCommand::Define(args) => {
            let body = args.body().map_err(|error| ClientError::Api {
                status: 0,
                body: paddock_api::ErrorBody { error, field: None },
            })?;
            show(client.define_json(&body)?)
        }
        VmCommand::List => {
            if json {
                print_json(&client.list()?);
            } else {
                print!("{}", table::list(&client.list_summaries()?));
            }
        }
        VmCommand::Show { name } => show(client.get(&name)?),
        VmCommand::Start { name } => show(client.action(&name, Action::Start, None)?),
        VmCommand::Stop { name, timeout } => {
            show(client.action(&name, Action::Stop, stop(timeout))?)
        }
        VmCommand::Restart { name, timeout } => {
            show(client.action(&name, Action::Restart, stop(timeout))?)
        }
        VmCommand::Pause { name } => show(client.action(&name, Action::Pause, None)?),
        VmCommand::Resume { name } => show(client.action(&name, Action::Resume, None)?),
        VmCommand::Delete { name, volumes } => {
            client.delete_vm(&name, volumes)?;
            if json {
                print_json(&serde_json::json!({ "deleted": name }));
            } else {
                println!("deleted {name}");
            }
        }
        VmCommand::Console { name, log: false } if !json => console::attach(client, &name)?,
        VmCommand::Console { name, .. } => {
            use std::io::Write;
            let log = client.console(&name)?;
            if json {
                print_json(&serde_json::json!({ "console": String::from_utf8_lossy(&log) }));
            } else {
                let _ = std::io::stdout().write_all(&log);
            }
        }
    }
    Ok(())
}
