//! `paddock image`: offline disk-image commands with qemu-img's flag spelling.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use paddock_disk::Format;

use crate::output::fail;

mod check;
mod convert;
mod edit;
mod info;
mod progress;

/// The image subcommands.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Shows format, sizes, cluster size, backing chain and flags of an image.
    Info(info::InfoArgs),
    /// Converts an image to another format (or the same), sparse and in parallel.
    Convert(convert::ConvertArgs),
    /// Checks an image's metadata; `-r leaks|all` repairs what is safe to repair.
    Check(check::CheckArgs),
    /// Compares what two images show a guest: exit 0 identical, 1 different, 2 error.
    Compare(check::CompareArgs),
    /// Creates an image, optionally on a backing file.
    Create(edit::CreateArgs),
    /// Changes an image's virtual size (`+10G`, `-1G` with --shrink, or an absolute size).
    Resize(edit::ResizeArgs),
    /// Prints the allocation map through the backing chain.
    Map(info::MapArgs),
    /// Points an image at a different backing file, copying what differs unless `-u`.
    Rebase(edit::RebaseArgs),
    /// Writes an overlay's data into its backing file.
    Commit(edit::CommitArgs),
}

/// Options shared by commands that read one image.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// Image format (raw, qcow2, vmdk, vpc/vhd, vhdx, vdi); probed when omitted, but a file
    /// declared raw is never probed.
    #[arg(short = 'f', long = "format")]
    pub format: Option<String>,
    /// Directory that backing files and extents may come from (repeatable); default: the
    /// image's own directory.
    #[arg(long = "allow-dir")]
    pub allow_dirs: Vec<PathBuf>,
}

impl SourceArgs {
    /// The declared format, parsed.
    pub fn format(&self) -> Result<Option<Format>> {
        parse_format(self.format.as_deref())
    }

    /// Read-only open options.
    pub fn open_options(&self) -> Result<paddock_disk::OpenOptions> {
        Ok(paddock_disk::OpenOptions {
            format: self.format()?,
            allowed_dirs: self.allow_dirs.clone(),
            ..Default::default()
        })
    }
}

/// Parses an optional format name.
pub fn parse_format(name: Option<&str>) -> Result<Option<Format>> {
    Ok(name.map(str::parse).transpose()?)
}

/// Parses `-o key=value,key=value` (repeatable) into a map; `help` lists nothing here.
pub fn parse_options(opts: &[String]) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for group in opts {
        for item in group.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| anyhow!("option '{item}' must be key=value"))?;
            map.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    Ok(map)
}

/// Runs an image subcommand and maps its outcome to an exit status.
pub fn run(cmd: ImageCommand) -> ExitCode {
    let json = match &cmd {
        ImageCommand::Info(a) => a.output.json(),
        ImageCommand::Convert(a) => a.json,
        ImageCommand::Check(a) => a.output.json(),
        ImageCommand::Compare(a) => a.json,
        ImageCommand::Map(a) => a.output.json(),
        ImageCommand::Create(a) => a.json,
        _ => false,
    };
    let result = match cmd {
        ImageCommand::Info(a) => info::run(a),
        ImageCommand::Convert(a) => convert::run(a),
        ImageCommand::Check(a) => check::run(a),
        ImageCommand::Compare(a) => check::run_compare(a),
        ImageCommand::Create(a) => edit::run_create(a),
        ImageCommand::Resize(a) => edit::run_resize(a),
        ImageCommand::Map(a) => info::run_map(a),
        ImageCommand::Rebase(a) => edit::run_rebase(a),
        ImageCommand::Commit(a) => edit::run_commit(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => fail(&e, json, 1),
    }
}

/// `--output human|json` as qemu-img spells it, plus `--json`.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Output format: human or json.
    #[arg(long = "output", default_value = "human", value_parser = ["human", "json"])]
    pub output: String,
    /// Same as --output=json.
    #[arg(long)]
    pub json: bool,
}

impl OutputArgs {
    /// Whether JSON output was asked for.
    pub fn json(&self) -> bool {
        self.json || self.output == "json"
    }
}
