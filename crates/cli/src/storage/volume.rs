//! `paddock volume create|import|clone|resize|delete|list|show`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use paddock_api::storage::{
    CloneOutcome, Size, Volume, VolumeClone, VolumeCreate, VolumeImport, VolumeResize,
};
use paddock_api::Client;

use super::task::follow;
use super::{run, table, Common, Failure};
use crate::output::print_json;

/// `paddock volume`.
#[derive(Args, Debug)]
pub struct VolumeArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Subcommand, Debug)]
enum VolumeCommand {
    /// Creates an empty volume.
    Create {
        /// The pool.
        pool: String,
        /// The volume's name.
        name: String,
        /// Virtual size: bytes, or with a K, M, G or T suffix.
        #[arg(short = 's', long)]
        size: String,
        /// Format: qcow2, raw, vmdk, vpc, vhdx or vdi.
        #[arg(short = 'f', long, default_value = "qcow2")]
        format: String,
    },
    /// Copies or converts a host image into a new volume, following the task with a
    /// progress bar.
    Import {
        /// The pool.
        pool: String,
        /// The volume's name.
        name: String,
        /// The image to import (absolute path on the daemon's host).
        source: PathBuf,
        /// The source's format (probed when absent).
        #[arg(short = 'f', long)]
        format: Option<String>,
        /// The volume's format (the source's when absent).
        #[arg(short = 'O', long = "convert-to")]
        convert_to: Option<String>,
        /// Answer the task at once instead of following it.
        #[arg(long)]
        detach: bool,
    },
    /// Clones a volume: a linked qcow2 clone, or a full copy with --full.
    Clone {
        /// The pool.
        pool: String,
        /// The volume to clone.
        from: String,
        /// The new volume's name.
        name: String,
        /// Copy the data instead of linking to it (runs as a task).
        #[arg(long)]
        full: bool,
        /// With --full, answer the task at once.
        #[arg(long)]
        detach: bool,
    },
    /// Changes a volume's virtual size.
    Resize {
        /// The pool.
        pool: String,
        /// The volume.
        name: String,
        /// New size: bytes, or with a K, M, G or T suffix.
        size: String,
        /// Allow a smaller size (data past the new end is lost).
        #[arg(long)]
        shrink: bool,
    },
    /// Deletes a volume and its file.
    Delete {
        /// The pool.
        pool: String,
        /// The volume.
        name: String,
    },
    /// Lists a pool's volumes.
    List {
        /// The pool.
        pool: String,
    },
    /// Shows one volume.
    Show {
        /// The pool.
        pool: String,
        /// The volume.
        name: String,
    },
}

fn show(v: &Volume, json: bool) {
    if json {
        print_json(v);
    } else {
        print!("{}", table::volume_detail(v));
    }
}

/// Follows `task` unless `detach`, then shows the volume it made.
fn finish_task(
    c: &Client,
    task: paddock_api::storage::Task,
    pool: &str,
    name: &str,
    detach: bool,
    json: bool,
) -> Result<(), Failure> {
    if detach {
        if json {
            print_json(&serde_json::json!({ "task": task }));
        } else {
            println!(
                "task {} started ({} {})",
                task.id,
                task.kind.as_str(),
                task.target
            );
        }
        return Ok(());
    }
    follow(c, task.id, !json && std::io::stderr().is_terminal())?;
    show(&c.volume(pool, name)?, json);
    Ok(())
}

/// Runs a `paddock volume` command.
pub fn execute(args: VolumeArgs, remote: &crate::remote::RemoteArgs) -> ExitCode {
    run(&args.common, remote, |c, json| {
        match args.command {
            VolumeCommand::Create {
                pool,
                name,
                size,
                format,
            } => {
                let req = VolumeCreate {
                    name,
                    capacity: Size::Text(size),
                    format,
                };
                show(&c.create_volume(&pool, &req)?, json);
            }
            VolumeCommand::Import {
                pool,
                name,
                source,
                format,
                convert_to,
                detach,
            } => {
                let source = std::path::absolute(&source).unwrap_or(source);
                let req = VolumeImport {
                    name: name.clone(),
                    source,
                    format,
                    convert_to,
                };
                let task = c.import_volume(&pool, &req)?;
                finish_task(c, task, &pool, &name, detach, json)?;
            }
            VolumeCommand::Clone {
                pool,
                from,
                name,
                full,
                detach,
            } => {
                let req = VolumeClone {
                    name: name.clone(),
                    from,
                    linked: !full,
                };
                match c.clone_volume(&pool, &req)? {
                    CloneOutcome::Volume(v) => show(&v, json),
                    CloneOutcome::Task(a) => finish_task(c, a.task, &pool, &name, detach, json)?,
                }
            }
            VolumeCommand::Resize {
                pool,
                name,
                size,
                shrink,
            } => {
                let req = VolumeResize {
                    capacity: Size::Text(size),
                    shrink,
                };
                show(&c.resize_volume(&pool, &name, &req)?, json);
            }
            VolumeCommand::Delete { pool, name } => {
                c.delete_volume(&pool, &name)?;
                if json {
                    print_json(&serde_json::json!({ "deleted": format!("{pool}/{name}") }));
                } else {
                    println!("deleted volume {pool}/{name}");
                }
            }
            VolumeCommand::List { pool } => {
                let vols = c.volumes(&pool)?;
                if json {
                    print_json(&vols);
                } else {
                    print!("{}", table::volumes(&vols));
                }
            }
            VolumeCommand::Show { pool, name } => show(&c.volume(&pool, &name)?, json),
        }
        Ok(())
    })
}
