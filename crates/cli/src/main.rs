//! `paddock`: the Paddock command-line interface.
//!
//! `paddock image ...` works on image files directly, with no daemon, and follows
//! `qemu-img`'s flag spelling so scripts move over unchanged. `paddock vm ...` drives VMs
//! through `paddockd`'s REST API on its Unix socket.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod events;
mod image;
mod network;
mod output;
mod remote;
mod storage;
mod token;
mod vm;

/// Paddock: an open virtualization platform on Linux KVM.
#[derive(Parser, Debug)]
#[command(name = "paddock", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    remote: remote::RemoteArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Disk images: info, convert, check, compare, create, resize, map, rebase, commit.
    #[command(subcommand)]
    Image(Box<image::ImageCommand>),
    /// VMs through paddockd: define, list, show, start, stop, restart, pause, resume,
    /// delete, console.
    Vm(vm::VmArgs),
    /// Storage pools through paddockd: define, list, show, delete.
    Pool(storage::pool::PoolArgs),
    /// Volumes in pools: create, import, clone, resize, delete, list, show.
    Volume(storage::volume::VolumeArgs),
    /// Background tasks (imports, clones): list, show, cancel, wait.
    Task(storage::task::TaskArgs),
    /// Managed networks through paddockd: define, list, show, delete.
    Network(network::NetworkArgs),
    /// API tokens for remote access (paddockd --listen): create, list, revoke.
    Token(token::TokenArgs),
    /// Follows paddockd's events (lifecycle and audit) until interrupted.
    Events(events::EventsArgs),
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Image(cmd) => image::run(*cmd),
        Command::Vm(args) => vm::run(args, &cli.remote),
        Command::Token(args) => token::run(args, &cli.remote),
        Command::Pool(args) => storage::pool::execute(args, &cli.remote),
        Command::Volume(args) => storage::volume::execute(args, &cli.remote),
        Command::Task(args) => storage::task::execute(args, &cli.remote),
        Command::Network(args) => network::run(args, &cli.remote),
        Command::Events(args) => events::run(args, &cli.remote),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "paddock",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
    }
}
