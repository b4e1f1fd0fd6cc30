//! `paddock image info` and `paddock image map`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use paddock_disk::{BlockImage, ImageInfo};
use serde_json::{json, Map, Value};

use super::{OutputArgs, SourceArgs};
use crate::output::{human_size, print_json};

/// Arguments of `info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Show every image of the backing chain.
    #[arg(long = "backing-chain")]
    pub backing_chain: bool,
    /// The image.
    pub filename: PathBuf,
}

/// Arguments of `map`.
#[derive(Args, Debug)]
pub struct MapArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// The image.
    pub filename: PathBuf,
}

/// Bytes the image's files occupy on disk.
pub fn actual_size(info: &ImageInfo) -> u64 {
    use std::os::unix::fs::MetadataExt;
    info.files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// The info record as JSON, with qemu-img's key names so scripts move over unchanged.
pub fn info_json(path: &Path, info: &ImageInfo) -> Value {
    let mut m = Map::new();
    m.insert("filename".into(), json!(path.display().to_string()));
    m.insert("format".into(), json!(info.format.name()));
    if let Some(s) = &info.subformat {
        m.insert("subformat".into(), json!(s));
    }
    m.insert("virtual-size".into(), json!(info.virtual_size));
    m.insert("actual-size".into(), json!(actual_size(info)));
    if let Some(c) = info.cluster_size {
        m.insert("cluster-size".into(), json!(c));
    }
    if let Some(b) = &info.backing_file {
        m.insert("backing-filename".into(), json!(b));
    }
    if let Some(b) = &info.backing_format {
        m.insert("backing-filename-format".into(), json!(b));
    }
    m.insert("dirty-flag".into(), json!(info.dirty));
    m.insert("corrupt".into(), json!(info.corrupt));
    if !info.snapshots.is_empty() {
        m.insert("snapshots".into(), json!(info.snapshots));
    }
    m.insert("files".into(), json!(info.files));
    if !info.specific.is_empty() {
        m.insert(
            "format-specific".into(),
            json!({ "type": info.format.name(), "data": info.specific }),
        );
    }
    Value::Object(m)
}

fn print_human(path: &Path, info: &ImageInfo) {
    println!("image: {}", path.display());
    println!("file format: {}", info.format);
    if let Some(s) = &info.subformat {
        println!("subformat: {s}");
    }
    println!(
        "virtual size: {} ({} bytes)",
        human_size(info.virtual_size),
        info.virtual_size
    );
    println!("disk size: {}", human_size(actual_size(info)));
    if let Some(c) = info.cluster_size {
        println!("cluster_size: {c}");
    }
    if let Some(b) = &info.backing_file {
        println!("backing file: {b}");
    }
    if let Some(b) = &info.backing_format {
        println!("backing file format: {b}");
    }
    if info.dirty {
        println!("dirty: yes (not closed cleanly; run `paddock image check -r all`)");
    }
    if info.corrupt {
        println!("corrupt: yes (open read-only; run `paddock image check -r all`)");
    }
    if !info.snapshots.is_empty() {
        println!("Snapshot list:");
        println!("{:<6} {:<20} {:>12} {:>12}", "ID", "TAG", "VM SIZE", "DATE");
        for s in &info.snapshots {
            println!(
                "{:<6} {:<20} {:>12} {:>12}",
                s.id,
                s.name,
                human_size(s.vm_state_size),
                s.date_sec
            );
        }
    }
    if !info.specific.is_empty() {
        println!("Format specific information:");
        for (k, v) in &info.specific {
            match v {
                Value::String(s) => println!("    {k}: {s}"),
                other => println!("    {k}: {other}"),
            }
        }
    }
}

/// Runs `info`.
pub fn run(args: InfoArgs) -> Result<ExitCode> {
    let mut opts = args.source.open_options()?;
    opts.open_backing = args.backing_chain;
    let img = paddock_disk::open(&args.filename, &opts)?;
    let mut chain: Vec<(PathBuf, ImageInfo)> = vec![(args.filename.clone(), img.info())];
    if args.backing_chain {
        let mut layer: Option<&dyn BlockImage> = img.backing();
        let mut path = args.filename.clone();
        while let Some(l) = layer {
            let name = chain
                .last()
                .and_then(|(_, i)| i.backing_file.clone())
                .unwrap_or_default();
            path = path.parent().unwrap_or(Path::new(".")).join(name);
            chain.push((path.clone(), l.info()));
            layer = l.backing();
        }
    }
    if args.output.json() {
        let items: Vec<Value> = chain.iter().map(|(p, i)| info_json(p, i)).collect();
        if args.backing_chain {
            print_json(&items);
        } else {
            print_json(&items[0]);
        }
    } else {
        for (i, (p, info)) in chain.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print_human(p, info);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `map`.
pub fn run_map(args: MapArgs) -> Result<ExitCode> {
    let img = paddock_disk::open(&args.filename, &args.source.open_options()?)?;
    let entries = paddock_disk::ops::map::map(img.as_ref())?;
    if args.output.json() {
        print_json(&entries);
    } else {
        println!("{:<20}{:<20}{:<20}File", "Offset", "Length", "Mapped to");
        for e in entries.iter().filter(|e| e.data) {
            let mapped = e
                .offset
                .map(|o| format!("{o:#x}"))
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<20}{:<20}{:<20}{}",
                format!("{:#x}", e.start),
                format!("{:#x}", e.length),
                mapped,
                if e.depth == 0 {
                    args.filename.display().to_string()
                } else {
                    format!("(backing depth {})", e.depth)
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
