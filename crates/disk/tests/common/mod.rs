//! Helpers shared by the integration tests: qemu-img discovery, pattern images, the corpus.
#![allow(dead_code)]

pub mod interop;

use std::path::{Path, PathBuf};
use std::process::Command;

use paddock_disk::Format;

/// Whether qemu-img is installed; prints why a test skips when it is not.
pub fn qemu_img(test: &str) -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP {test}: qemu-img is not installed (run scripts/setup.sh)");
    }
    ok
}

/// Runs qemu-img with `args`; panics with its stderr on failure.
pub fn run_qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("spawn qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs qemu-img and returns its exit status code and combined output.
pub fn qemu_img_status(args: &[&str]) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("spawn qemu-img");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A small deterministic PRNG (xorshift) so patterns are reproducible without extra crates.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    /// Next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Fills `buf` with pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Writes a raw pattern image of `size` bytes (at least 8 MiB): random data, text, explicit
/// zero runs, holes, unaligned writes, and data in the last sector.
pub fn pattern_raw(path: &Path, size: u64, seed: u64) {
    use std::os::unix::fs::FileExt;
    assert!(size >= 8 << 20);
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut rng = Rng::new(seed);
    let mut random = vec![0u8; 1 << 20];
    rng.fill(&mut random);
    f.write_all_at(&random, 0).unwrap();
    let text: Vec<u8> = (0..300_000u32)
        .flat_map(|i| format!("line {i}: the quick brown fox\n").into_bytes())
        .take(700_000)
        .collect();
    f.write_all_at(&text, (1 << 20) + 4096).unwrap();
    f.write_all_at(&vec![0u8; 1 << 20], 3 << 20).unwrap(); // allocated zeroes
    rng.fill(&mut random[..70_000]);
    f.write_all_at(&random[..70_000], (5 << 20) + 12_345)
        .unwrap(); // unaligned
    rng.fill(&mut random[..512]);
    f.write_all_at(&random[..512], size - 512).unwrap();
    for i in 0..16u64 {
        // Scattered 4 KiB blocks, each in a different 64 KiB cluster.
        rng.fill(&mut random[..4096]);
        f.write_all_at(&random[..4096], (6 << 20) + i * 73_728)
            .unwrap();
    }
}

/// One image of the corpus.
#[derive(Debug, Clone)]
pub struct CorpusImage {
    /// What it is, for messages.
    pub label: String,
    /// Where it is.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// The raw file with the same guest content.
    pub raw: PathBuf,
}

/// qemu-img conversions that make the corpus: (label, format, -o options, compress).
pub const VARIANTS: &[(&str, &str, &str, bool)] = &[
    ("qcow2-v2", "qcow2", "compat=0.10", false),
    ("qcow2-v3", "qcow2", "compat=1.1", false),
    ("qcow2-c512", "qcow2", "cluster_size=512", false),
    (
        "qcow2-c4k-rc1",
        "qcow2",
        "cluster_size=4096,refcount_bits=1",
        false,
    ),
    (
        "qcow2-c2m-rc64",
        "qcow2",
        "cluster_size=2M,refcount_bits=64",
        false,
    ),
    (
        "qcow2-rc8-lazy",
        "qcow2",
        "refcount_bits=8,lazy_refcounts=on",
        false,
    ),
    ("qcow2-zlib", "qcow2", "compression_type=zlib", true),
    ("qcow2-zstd", "qcow2", "compression_type=zstd", true),
    (
        "qcow2-extl2",
        "qcow2",
        "extended_l2=on,cluster_size=128k",
        false,
    ),
    ("vmdk-sparse", "vmdk", "subformat=monolithicSparse", false),
    ("vmdk-stream", "vmdk", "subformat=streamOptimized", false),
    ("vmdk-flat", "vmdk", "subformat=monolithicFlat", false),
    (
        "vmdk-2gsparse",
        "vmdk",
        "subformat=twoGbMaxExtentSparse",
        false,
    ),
    ("vmdk-2gflat", "vmdk", "subformat=twoGbMaxExtentFlat", false),
    ("vpc-dynamic", "vpc", "subformat=dynamic", false),
    ("vpc-fixed", "vpc", "subformat=fixed", false),
    (
        "vhdx-dynamic",
        "vhdx",
        "subformat=dynamic,block_size=1M",
        false,
    ),
    ("vhdx-fixed", "vhdx", "subformat=fixed", false),
    ("vdi-dynamic", "vdi", "", false),
    ("vdi-static", "vdi", "static=on", false),
];

/// Builds the corpus in `dir` from one pattern raw of `size` bytes, with qemu-img.
pub fn build_corpus(dir: &Path, size: u64) -> Vec<CorpusImage> {
    let raw = dir.join("pattern.raw");
    pattern_raw(&raw, size, 42);
    let mut out = vec![CorpusImage {
        label: "raw".into(),
        path: raw.clone(),
        format: Format::Raw,
        raw: raw.clone(),
    }];
    for (label, fmt, opts, compress) in VARIANTS {
        let path = dir.join(format!("{label}.{fmt}"));
        let mut args = vec!["convert", "-f", "raw", "-O", fmt];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        if *compress {
            args.push("-c");
        }
        let (r, p) = (raw.to_str().unwrap(), path.to_str().unwrap());
        args.extend([r, p]);
        run_qemu_img(&args);
        // Some formats round the size up (vpc geometry): the raw equivalent is qemu's own.
        let expect = dir.join(format!("{label}.expect.raw"));
        run_qemu_img(&[
            "convert",
            "-f",
            fmt,
            "-O",
            "raw",
            p,
            expect.to_str().unwrap(),
        ]);
        out.push(CorpusImage {
            label: label.to_string(),
            path,
            format: fmt.parse().unwrap(),
            raw: expect,
        });
    }
    out.push(backing_chain(dir, size));
    out
}

/// A qcow2 overlay that holds part of the data and reads the rest through its backing file:
/// made with qemu-img's safe rebase, which copies only the clusters where two bases differ.
pub fn backing_chain(dir: &Path, size: u64) -> CorpusImage {
    let a = dir.join("chain-a.raw");
    let b = dir.join("chain-b.raw");
    pattern_raw(&a, size, 7);
    std::fs::copy(&a, &b).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&b).unwrap();
        f.write_all_at(&[0x5a; 200_000], 2 << 20).unwrap();
    }
    let base_a = dir.join("chain-base-a.qcow2");
    let base_b = dir.join("chain-base-b.qcow2");
    for (raw, q) in [(&a, &base_a), (&b, &base_b)] {
        run_qemu_img(&[
            "convert",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ]);
    }
    let top = dir.join("chain-top.qcow2");
    run_qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "chain-base-a.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    run_qemu_img(&[
        "rebase",
        "-f",
        "qcow2",
        "-b",
        "chain-base-b.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    let expect = dir.join("chain.expect.raw");
    run_qemu_img(&[
        "convert",
        "-O",
        "raw",
        top.to_str().unwrap(),
        expect.to_str().unwrap(),
    ]);
    CorpusImage {
        label: "qcow2-chain".into(),
        path: top,
        format: Format::Qcow2,
        raw: expect,
    }
}

/// Reads the whole guest view of `img` with our engine.
pub fn read_all(img: &dyn paddock_disk::BlockImage) -> Vec<u8> {
    let mut out = vec![0u8; img.virtual_size() as usize];
    for (i, chunk) in out.chunks_mut(1 << 20).enumerate() {
        img.read_at(chunk, i as u64 * (1 << 20)).unwrap();
    }
    out
}

/// Index of the first differing byte, for readable failures.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then_some(a.len().min(b.len())))
}

/// Opens untrusted `bytes` as `format` on memory storage: read-only, or writable with room to
/// grow by 64 MiB.
pub fn open_mem(
    bytes: &[u8],
    format: Format,
    writable: bool,
) -> paddock_disk::Result<Box<dyn paddock_disk::BlockImage>> {
    use paddock_disk::{open_storage, MemStorage, OpenContext, Storage};
    let storage: Box<dyn Storage> = if writable {
        Box::new(MemStorage::new(
            bytes.to_vec(),
            bytes.len() as u64 + (64 << 20),
        ))
    } else {
        Box::new(MemStorage::read_only(bytes.to_vec()))
    };
    open_storage(storage, Some(format), &OpenContext::isolated(writable))
}
