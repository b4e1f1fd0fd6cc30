//! `paddock image convert`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use paddock_disk::{ConvertOptions, CreateOptions, Format, OpenOptions, Progress};

use super::progress::{Mode, Reporter};
use super::{parse_format, parse_options, SourceArgs};

/// Arguments of `convert`, spelled like `qemu-img convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Output format (default raw).
    #[arg(short = 'O', long = "output-format", default_value = "raw")]
    pub output_format: String,
    /// Output format options, `key=value[,key=value]` (cluster_size, compat, subformat,
    /// compression_type, preallocation, ...), plus `compression_level=fast|standard|1-19`
    /// (default fast; `standard` is what qemu-img uses).
    #[arg(short = 'o', long = "options")]
    pub options: Vec<String>,
    /// Compress the output (qcow2; vmdk streamOptimized always compresses).
    #[arg(short = 'c', long = "compress")]
    pub compress: bool,
    /// Show a progress bar.
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// Keep this backing file for the output and copy only what the source's top layer holds.
    #[arg(short = 'B', long = "backing")]
    pub backing: Option<String>,
    /// Format of the -B backing file.
    #[arg(short = 'F', long = "backing-format")]
    pub backing_format: Option<String>,
    /// Smallest run of zeroes kept sparse, in bytes (0: write every byte); default 4k.
    #[arg(short = 'S', long = "sparse-size", default_value = "4k")]
    pub sparse_size: String,
    /// Write into an existing target image instead of creating it.
    #[arg(short = 'n', long = "no-create")]
    pub no_create: bool,
    /// The target already reads as zeroes (with -n): zero runs are skipped.
    #[arg(long = "target-is-zero")]
    pub target_is_zero: bool,
    /// Output cache mode; `unsafe` skips the final flush (qemu-img's -t unsafe).
    #[arg(short = 't', long = "cache", default_value = "writeback", value_parser = ["writeback", "unsafe", "none", "directsync", "writethrough"])]
    pub cache: String,
    /// Skip the final flush (same as -t unsafe).
    #[arg(long = "no-flush")]
    pub no_flush: bool,
    /// Worker threads (default: one per CPU).
    #[arg(short = 'm', long = "threads", default_value_t = 0)]
    pub threads: usize,
    /// Accepted for qemu-img compatibility: writes may be out of order (always true here
    /// except for stream formats).
    #[arg(short = 'W')]
    pub out_of_order: bool,
    /// Print progress as JSON lines and a JSON summary.
    #[arg(long)]
    pub json: bool,
    /// Input image, then output image.
    #[arg(required = true, num_args = 2..)]
    pub files: Vec<PathBuf>,
}

/// Runs `convert`.
pub fn run(args: ConvertArgs) -> Result<ExitCode> {
    let (inputs, output) = args.files.split_at(args.files.len() - 1);
    let output = &output[0];
    if inputs.len() != 1 {
        bail!("concatenating several inputs is not supported: convert them one at a time");
    }
    let input = &inputs[0];
    if input.canonicalize().ok() == output.canonicalize().ok() {
        bail!("input and output are the same file: {}", output.display());
    }
    let out_format: Format = args.output_format.parse()?;
    if args.target_is_zero && !args.no_create {
        bail!("--target-is-zero only makes sense with -n (an existing target)");
    }
    let no_flush = args.no_flush || args.cache == "unsafe";
    paddock_disk::storage::set_unsafe_cache(no_flush);

    let mut open_opts = args.source.open_options()?;
    open_opts.open_backing = true;
    let src = paddock_disk::open(input, &open_opts)?;
    let size = src.virtual_size();
    let mut options = parse_options(&args.options)?;
    // Ours, not qemu-img's: how hard compressed output is compressed (fast, standard, 1-19).
    let compression_level = match options.remove("compression_level") {
        Some(l) => paddock_disk::CompressionLevel::parse(&l)?,
        None => paddock_disk::CompressionLevel::Fast,
    };
    let dst = if args.no_create {
        paddock_disk::open(output, &OpenOptions::write(Some(out_format)))?
    } else {
        let create = CreateOptions {
            size,
            backing_file: args.backing.clone(),
            backing_format: parse_format(args.backing_format.as_deref())?,
            options,
        };
        paddock_disk::create(output, out_format, &create)
            .with_context(|| format!("creating {} image {}", out_format, output.display()))?
    };
    let opts = ConvertOptions {
        compress: args.compress,
        target_is_zero: !args.no_create || args.target_is_zero,
        flush: !no_flush,
        threads: args.threads,
        top_only: args.backing.is_some(),
        sparse_granularity: paddock_disk::parse_size(&args.sparse_size)?,
        compression_level,
        ..Default::default()
    };
    let progress = Arc::new(Progress::new());
    progress.set_total(size);
    let reporter = Reporter::start(
        progress.clone(),
        Mode::choose(args.json, args.progress),
        "convert",
    );
    let started = Instant::now();
    let result = paddock_disk::convert(src.as_ref(), dst.as_ref(), &opts, &progress);
    reporter.finish();
    let stats = match result {
        Ok(s) => s,
        Err(e) => {
            drop(dst);
            if !args.no_create {
                // A half-written new image is worse than none.
                let _ = std::fs::remove_file(output);
            }
            return Err(e).with_context(|| {
                format!("converting {} to {}", input.display(), output.display())
            });
        }
    };
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        // One object per line, like the progress events before it.
        println!(
            "{}",
            serde_json::json!({
                "event": "done", "source": input, "target": output, "format": out_format.name(),
                "stats": stats, "seconds": secs, "flushed": !no_flush,
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}
