//! `paddock`: the Paddock command-line interface.
//!
//! `paddock image ...` works on image files directly, with no daemon, and follows
//! `qemu-img`'s flag spelling so scripts move over unchanged. `paddock vm ...` drives VMs
//! through `paddockd`'s REST API on its Unix socket.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod events;
mod image;
mod output;
mod vm;

/// Paddock: an open virtualization platform on Linux KVM.
#[derive(Parser, Debug)]
#[command(name = "paddock", version, about, propagate_version = true)]
struct Cli {
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
        Command::Vm(args) => vm::run(args),
        Command::Events(args) => events::run(args),
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
