//! The host-side limit for `bench/vmm.sh`'s virtio-blk rows: one thread reading a file with
//! `pread` into one reused, page-aligned buffer, as fast as the page cache gives it — what a
//! guest's reads of the same file could reach if virtualization cost nothing.
//!
//! Usage: `host_read FILE seq|rand BLOCK_BYTES COUNT` — prints the MiB/s it measured.
//! `seq` reads COUNT blocks from the start (wrapping at the end of the file); `rand` reads
//! COUNT blocks at block-aligned offsets from a fixed-seed generator (the same order every run).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: host_read FILE seq|rand BLOCK_BYTES COUNT");
        std::process::exit(2);
    }
    let file = File::open(&args[1]).unwrap_or_else(|e| {
        eprintln!("host_read: {}: {e}", args[1]);
        std::process::exit(1)
    });
    let random = match args[2].as_str() {
        "seq" => false,
        "rand" => true,
        other => {
            eprintln!("host_read: mode {other:?} is neither seq nor rand");
            std::process::exit(2)
        }
    };
    let number = |s: &str, what: &str| -> u64 {
        s.parse().unwrap_or_else(|_| {
            eprintln!("host_read: {what} {s:?} is not a number");
            std::process::exit(2)
        })
    };
    let block = number(&args[3], "BLOCK_BYTES");
    let count = number(&args[4], "COUNT");
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let blocks = size / block.max(1);
    if block == 0 || blocks == 0 {
        eprintln!("host_read: the file holds no whole block of {block} bytes");
        std::process::exit(1);
    }
    // A page-aligned buffer, as guest buffers are.
    let mut storage = vec![0u8; block as usize + 4096];
    let skip = storage.as_ptr().align_offset(4096);
    let buf = &mut storage[skip..skip + block as usize];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let started = Instant::now();
    let mut total = 0u64;
    for i in 0..count {
        let index = if random {
            // xorshift64*: cheap enough not to count, and the same sequence every run.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d) % blocks
        } else {
            i % blocks
        };
        match file.read_at(buf, index * block) {
            Ok(n) => total += n as u64,
            Err(e) => {
                eprintln!("host_read: reading at {}: {e}", index * block);
                std::process::exit(1)
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("{:.1}", total as f64 / seconds / (1 << 20) as f64);
}
