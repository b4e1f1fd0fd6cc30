//! `paddock image check` and `paddock image compare`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use paddock_disk::{Comparison, OpenOptions};

use super::{parse_format, OutputArgs, SourceArgs};
use crate::output::{fail, print_json};

/// Arguments of `check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Repair: `leaks` frees leaked clusters, `all` also fixes what else is safe to fix.
    #[arg(short = 'r', long = "repair", value_parser = ["leaks", "all"])]
    pub repair: Option<String>,
    /// The image.
    pub filename: PathBuf,
}

/// Runs `check`. Exit status as qemu-img: 0 clean, 1 check failed, 2 corruptions, 3 leaks.
pub fn run(args: CheckArgs) -> Result<ExitCode> {
    let json = args.output.json();
    let mut opts = args.source.open_options()?;
    opts.writable = args.repair.is_some();
    opts.open_backing = false;
    let img = paddock_disk::open(&args.filename, &opts)?;
    let report = match img.check(args.repair.is_some()) {
        Ok(r) => r,
        Err(e) => {
            return Ok(fail(
                &anyhow::Error::new(e).context("check failed"),
                json,
                1,
            ))
        }
    };
    let left_corrupt = report.corruptions.saturating_sub(report.corruptions_fixed);
    let left_leaks = report.leaks.saturating_sub(report.leaks_fixed);
    if json {
        print_json(&serde_json::json!({
            "filename": args.filename, "format": img.format().name(),
            "check-errors": report.check_errors, "corruptions": left_corrupt, "leaks": left_leaks,
            "corruptions-fixed": report.corruptions_fixed, "leaks-fixed": report.leaks_fixed,
            "allocated-clusters": report.allocated_clusters, "total-clusters": report.total_clusters,
            "messages": report.messages,
        }));
    } else {
        for m in &report.messages {
            println!("{m}");
        }
        if report.leaks_fixed + report.corruptions_fixed > 0 {
            println!(
                "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n",
                report.leaks_fixed, report.corruptions_fixed
            );
        }
        if left_corrupt == 0 && left_leaks == 0 && report.check_errors == 0 {
            println!("No errors were found on the image.");
        } else {
            if left_corrupt > 0 {
                println!("{left_corrupt} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.");
            }
            if left_leaks > 0 {
                println!("{left_leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\nRun `paddock image check -r leaks` to free them.");
            }
        }
        if let (Some(a), Some(t)) = (report.allocated_clusters, report.total_clusters) {
            let pct = if t > 0 {
                a as f64 * 100.0 / t as f64
            } else {
                0.0
            };
            println!("{a}/{t} = {pct:.2}% allocated");
        }
    }
    let code = if report.check_errors > 0 {
        1
    } else if left_corrupt > 0 {
        2
    } else if left_leaks > 0 {
        3
    } else {
        0
    };
    Ok(ExitCode::from(code))
}

/// Arguments of `compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Format of the first image.
    #[arg(short = 'f', long = "format")]
    pub format_a: Option<String>,
    /// Format of the second image.
    #[arg(short = 'F', long = "format-b")]
    pub format_b: Option<String>,
    /// Strict: images of different sizes differ even if the extra part is zero.
    #[arg(short = 's', long = "strict")]
    pub strict: bool,
    /// Accepted for qemu-img compatibility.
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// First image.
    pub a: PathBuf,
    /// Second image.
    pub b: PathBuf,
}

/// Runs `compare`: exit 0 identical, 1 different, 2 error.
pub fn run_compare(args: CompareArgs) -> Result<ExitCode> {
    let open = |p: &PathBuf, f: &Option<String>| -> Result<_> {
        Ok(paddock_disk::open(
            p,
            &OpenOptions::read(parse_format(f.as_deref())?),
        )?)
    };
    let result = open(&args.a, &args.format_a)
        .and_then(|a| Ok((a, open(&args.b, &args.format_b)?)))
        .and_then(|(a, b)| Ok(paddock_disk::compare(a.as_ref(), b.as_ref(), args.strict)?));
    let cmp = match result {
        Ok(c) => c,
        Err(e) => return Ok(fail(&e, args.json, 2)),
    };
    if args.json {
        print_json(&cmp);
    }
    Ok(match cmp {
        Comparison::Identical => {
            if !args.json {
                println!("Images are identical.");
            }
            ExitCode::SUCCESS
        }
        Comparison::Different { offset, reason } => {
            if !args.json {
                match reason {
                    "size" => println!("Image size mismatch at offset {offset}!"),
                    _ => println!("Content mismatch at offset {offset}!"),
                }
            }
            ExitCode::from(1)
        }
    })
}
