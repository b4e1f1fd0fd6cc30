//! Commands that create or change images: create, resize, rebase, commit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use paddock_disk::{CreateOptions, Format, OpenOptions};

use super::{parse_format, parse_options};
use crate::output::print_json;

/// Arguments of `create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Format of the new image (default raw).
    #[arg(short = 'f', long = "format", default_value = "raw")]
    pub format: String,
    /// Format options, `key=value[,key=value]`.
    #[arg(short = 'o', long = "options")]
    pub options: Vec<String>,
    /// Backing file (relative names resolve against the new image's directory).
    #[arg(short = 'b', long = "backing")]
    pub backing: Option<String>,
    /// Backing file format.
    #[arg(short = 'F', long = "backing-format")]
    pub backing_format: Option<String>,
    /// Do not open the backing file (accepted for compatibility; the size must then be given).
    #[arg(short = 'u')]
    pub unsafe_backing: bool,
    /// Print the created image's details as JSON.
    #[arg(long)]
    pub json: bool,
    /// The new image.
    pub filename: PathBuf,
    /// Virtual size (K, M, G, T suffixes); taken from the backing file when omitted.
    pub size: Option<String>,
}

/// Runs `create`.
pub fn run_create(args: CreateArgs) -> Result<ExitCode> {
    let format: Format = args.format.parse()?;
    let size = args
        .size
        .as_deref()
        .map(paddock_disk::parse_size)
        .transpose()?;
    if size.is_none() && args.backing.is_none() {
        bail!("give a size (e.g. 10G) or a backing file (-b)");
    }
    let opts = CreateOptions {
        size: size.unwrap_or(0),
        backing_file: args.backing.clone(),
        backing_format: parse_format(args.backing_format.as_deref())?,
        options: parse_options(&args.options)?,
    };
    let img = paddock_disk::create(&args.filename, format, &opts)?;
    img.finish()?;
    let info = img.info();
    if args.json {
        print_json(&super::info::info_json(&args.filename, &info));
    } else {
        println!(
            "Formatting '{}', fmt={} size={}{}",
            args.filename.display(),
            format,
            info.virtual_size,
            args.backing
                .as_ref()
                .map(|b| format!(" backing_file={b}"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `resize`.
#[derive(Args, Debug)]
pub struct ResizeArgs {
    /// Image format; probed when omitted.
    #[arg(short = 'f', long = "format")]
    pub format: Option<String>,
    /// Allow shrinking (data beyond the new end is lost).
    #[arg(long)]
    pub shrink: bool,
    /// The image.
    pub filename: PathBuf,
    /// New size: absolute, `+N` to grow, `-N` to shrink.
    #[arg(allow_hyphen_values = true)]
    pub size: String,
}

/// Runs `resize`.
pub fn run_resize(args: ResizeArgs) -> Result<ExitCode> {
    let img = paddock_disk::open(
        &args.filename,
        &OpenOptions {
            open_backing: false,
            ..OpenOptions::write(parse_format(args.format.as_deref())?)
        },
    )?;
    let old = img.virtual_size();
    let new = if let Some(d) = args.size.strip_prefix('+') {
        old.checked_add(paddock_disk::parse_size(d)?)
            .ok_or_else(|| anyhow::anyhow!("size overflows"))?
    } else if let Some(d) = args.size.strip_prefix('-') {
        old.checked_sub(paddock_disk::parse_size(d)?)
            .ok_or_else(|| anyhow::anyhow!("cannot shrink {old} bytes by more than its size"))?
    } else {
        paddock_disk::parse_size(&args.size)?
    };
    if new < old && !args.shrink {
        bail!("shrinking from {old} to {new} bytes loses data past the new end; pass --shrink to confirm");
    }
    img.resize(new)?;
    img.flush()?;
    let now = img.virtual_size();
    if now == new {
        println!("Image resized.");
    } else {
        println!("Image resized to {now} bytes (the format rounds {new} up).");
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `rebase`.
#[derive(Args, Debug)]
pub struct RebaseArgs {
    /// Image format; probed when omitted.
    #[arg(short = 'f', long = "format")]
    pub format: Option<String>,
    /// New backing file; an empty string removes the backing file.
    #[arg(short = 'b', long = "backing")]
    pub backing: String,
    /// New backing file format.
    #[arg(short = 'F', long = "backing-format")]
    pub backing_format: Option<String>,
    /// Unsafe: only rewrite the backing file name, copy nothing.
    #[arg(short = 'u')]
    pub unsafe_mode: bool,
    /// Accepted for qemu-img compatibility.
    #[arg(short = 'p')]
    pub progress: bool,
    /// The image.
    pub filename: PathBuf,
}

/// Runs `rebase`.
pub fn run_rebase(args: RebaseArgs) -> Result<ExitCode> {
    let fmt = parse_format(args.format.as_deref())?;
    let bfmt = parse_format(args.backing_format.as_deref())?;
    let new = (!args.backing.is_empty()).then_some((args.backing.as_str(), bfmt));
    paddock_disk::ops::chain::rebase(&args.filename, fmt, new, args.unsafe_mode)?;
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `commit`.
#[derive(Args, Debug)]
pub struct CommitArgs {
    /// Image format; probed when omitted.
    #[arg(short = 'f', long = "format")]
    pub format: Option<String>,
    /// Keep the overlay's data after committing (do not empty it).
    #[arg(short = 'd')]
    pub keep: bool,
    /// Accepted for qemu-img compatibility.
    #[arg(short = 'p')]
    pub progress: bool,
    /// The overlay image.
    pub filename: PathBuf,
}

/// Runs `commit`.
pub fn run_commit(args: CommitArgs) -> Result<ExitCode> {
    let copied = paddock_disk::ops::chain::commit(
        &args.filename,
        parse_format(args.format.as_deref())?,
        args.keep,
    )?;
    println!("Image committed ({copied} bytes of data).");
    Ok(ExitCode::SUCCESS)
}
