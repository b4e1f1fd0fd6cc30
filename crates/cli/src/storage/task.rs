//! `paddock task list|show|cancel|wait`, and following a task with a progress bar.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use paddock_api::storage::{Task, TaskState};
use paddock_api::Client;
use uuid::Uuid;

use super::{run, table, Common, Failure};
use crate::output::print_json;

/// How often a followed task is polled.
const POLL: Duration = Duration::from_millis(200);

/// `paddock task`.
#[derive(Args, Debug)]
pub struct TaskArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: TaskCommand,
}

#[derive(Subcommand, Debug)]
enum TaskCommand {
    /// Lists the tasks, newest first.
    List,
    /// Shows one task.
    Show {
        /// The task's id.
        id: Uuid,
    },
    /// Cancels a running task (its partial volume is removed).
    Cancel {
        /// The task's id.
        id: Uuid,
    },
    /// Waits until a task ends; fails unless it succeeded.
    Wait {
        /// The task's id.
        id: Uuid,
        /// Show a progress bar while waiting.
        #[arg(short = 'p', long)]
        progress: bool,
    },
}

/// Polls task `id` until it ends, drawing a bar on stderr when `bar`; a task that did not
/// succeed is a [`Failure::Task`].
pub fn follow(c: &Client, id: Uuid, bar: bool) -> Result<Task, Failure> {
    let pb = bar.then(|| {
        let b = indicatif::ProgressBar::new(100);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos:>3}% {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b
    });
    loop {
        let t = c.task(id)?;
        if let Some(b) = &pb {
            b.set_message(format!("{} {}", t.kind.as_str(), t.target));
            b.set_position(u64::from(t.progress));
        }
        if t.state.is_final() {
            if let Some(b) = &pb {
                b.finish_and_clear();
            }
            return match t.state {
                TaskState::Succeeded => Ok(t),
                _ => Err(Failure::Task(t)),
            };
        }
        std::thread::sleep(POLL);
    }
}

/// Runs a `paddock task` command.
pub fn execute(args: TaskArgs, remote: &crate::remote::RemoteArgs) -> ExitCode {
    run(&args.common, remote, |c, json| {
        let show = |t: Task| {
            if json {
                print_json(&t);
            } else {
                print!("{}", table::task_detail(&t));
            }
        };
        match args.command {
            TaskCommand::List => {
                let tasks = c.tasks()?;
                if json {
                    print_json(&tasks);
                } else {
                    print!("{}", table::tasks(&tasks));
                }
            }
            TaskCommand::Show { id } => show(c.task(id)?),
            TaskCommand::Cancel { id } => show(c.cancel_task(id)?),
            TaskCommand::Wait { id, progress } => show(follow(c, id, progress && !json)?),
        }
        Ok(())
    })
}
