//! The conversion engine: any format to any format, streaming, sparse, parallel, bounded.
//!
//! The dispatcher (the calling thread) walks the source's allocation map and cuts data runs
//! into chunks. Zero and unallocated runs are never read; they are written as zeroes only when
//! the target is not known to read as zero already. Worker threads read a chunk, find its zero
//! blocks, compress it when asked, and write it. Targets that must be written in order (VMDK
//! streamOptimized) get their compressed chunks through a single writer thread that restores
//! the order. A fixed number of tokens bounds the chunks in flight, so memory stays at about
//! `2 × threads + 2` chunks whatever the image size.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::error::{Error, ErrorKind, Result};
use crate::image::{is_zero, BlockImage, ExtentKind};
use crate::ops::chain::chain_status;
use crate::ops::progress::Progress;

/// How to convert.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Compress the output (qcow2 compressed clusters, VMDK streamOptimized grains).
    pub compress: bool,
    /// The target already reads as zeroes everywhere (a new image without a backing file):
    /// zero runs are skipped. Ignored with `top_only`, whose target reads its backing file.
    pub target_is_zero: bool,
    /// Finish with a flush that makes the target durable.
    pub flush: bool,
    /// Worker threads (0 = one per CPU).
    pub threads: usize,
    /// Bytes per work unit (rounded to the compression unit when compressing).
    pub chunk_size: u64,
    /// Copy only what the top image holds (the target keeps a backing file: `-B`).
    pub top_only: bool,
    /// Smallest run of zeroes that is skipped rather than written (`-S`); 0 writes all data.
    pub sparse_granularity: u64,
    /// How hard compressed output is compressed.
    pub compression_level: crate::image::CompressionLevel,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            compress: false,
            target_is_zero: true,
            flush: true,
            threads: 0,
            chunk_size: 2 << 20,
            top_only: false,
            sparse_granularity: 4096,
            compression_level: crate::image::CompressionLevel::Fast,
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConvertStats {
    /// Virtual size converted.
    pub virtual_size: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Guest bytes written to the target (before compression).
    pub bytes_written: u64,
    /// Bytes skipped because they read as zero.
    pub bytes_zero: u64,
}

struct Chunk {
    seq: u64,
    offset: u64,
    len: usize,
}

enum Ready {
    /// Compressed units of one chunk, in offset order: (offset, raw, compressed).
    Units(Vec<(u64, Vec<u8>, Vec<u8>)>),
}

/// Converts `src` (read through its backing chain unless `top_only`) into `dst`.
pub fn convert(
    src: &dyn BlockImage,
    dst: &dyn BlockImage,
    opts: &ConvertOptions,
    progress: &Progress,
) -> Result<ConvertStats> {
    let size = src.virtual_size();
    if dst.virtual_size() < size {
        return Err(Error::invalid(format!(
            "target is smaller ({} bytes) than the source ({size} bytes)",
            dst.virtual_size()
        )));
    }
    let compressed = match (opts.compress, dst.compressed()) {
        (true, None) => {
            return Err(Error::unsupported(format!(
                "{} output cannot be compressed: use qcow2, or vmdk with subformat=streamOptimized",
                dst.format()
            )))
        }
        (_, Some(c)) if c.requires_sequential() => Some(c),
        (true, c) => c,
        (false, _) => None,
    };
    let sequential = compressed.is_some_and(|c| c.requires_sequential());
    if let Some(c) = compressed {
        c.set_level(opts.compression_level);
    }
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let unit = compressed.map_or(1, |c| c.compressed_unit()).max(1);
    if unit > 64 << 20 {
        return Err(Error::limit(format!(
            "compression unit of {unit} bytes is too large"
        )));
    }
    let chunk = (opts.chunk_size.max(unit) / unit * unit).max(unit);
    let granularity = match opts.sparse_granularity {
        0 => 0,
        g => g.max(dst.info().cluster_size.unwrap_or(4096).min(2 << 20)),
    };
    // With `top_only` the target has a backing file and reads it where nothing is written,
    // not zeroes: the top layer's zeroes (zero clusters, zero-filled data) must be written.
    let target_is_zero = opts.target_is_zero && !opts.top_only;
    progress.set_total(size);

    let stats = Mutex::new(ConvertStats {
        virtual_size: size,
        ..Default::default()
    });
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        progress.cancel();
        let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
    };
    let token_count = 2 * threads + 2;
    let (token_tx, token_rx) = bounded::<()>(token_count);
    for _ in 0..token_count {
        let _ = token_tx.send(());
    }
    let (work_tx, work_rx) = bounded::<Chunk>(threads);
    let (ready_tx, ready_rx) = bounded::<(u64, Ready)>(token_count);

    std::thread::scope(|s| {
        for _ in 0..threads {
            let work_rx: Receiver<Chunk> = work_rx.clone();
            let ready_tx: Sender<(u64, Ready)> = ready_tx.clone();
            let token_tx = token_tx.clone();
            let (stats, fail) = (&stats, &fail);
            s.spawn(move || {
                let mut buf = Vec::new();
                for c in work_rx.iter() {
                    if progress.is_cancelled() {
                        let _ = token_tx.send(());
                        continue;
                    }
                    match process_chunk(
                        src,
                        dst,
                        compressed,
                        &c,
                        &mut buf,
                        unit,
                        granularity,
                        target_is_zero,
                    ) {
                        Ok((written, zero, ready)) => {
                            {
                                let mut st = stats.lock().unwrap_or_else(|p| p.into_inner());
                                st.bytes_read += c.len as u64;
                                st.bytes_written += written;
                                st.bytes_zero += zero;
                            }
                            progress.add_written(written);
                            match ready {
                                Some(r) if sequential => {
                                    // The writer returns the token once the chunk is stored.
                                    let _ = ready_tx.send((c.seq, r));
                                    progress.advance(c.len as u64);
                                    continue;
                                }
                                _ => progress.advance(c.len as u64),
                            }
                        }
                        Err(e) => fail(e),
                    }
                    let _ = token_tx.send(());
                }
            });
        }
        drop(ready_tx);
        if sequential {
            let token_tx = token_tx.clone();
            let fail = &fail;
            let c = compressed.expect("sequential implies compressed");
            s.spawn(move || {
                let mut next = 0u64;
                let mut pending: BTreeMap<u64, Ready> = BTreeMap::new();
                for (seq, r) in ready_rx.iter() {
                    pending.insert(seq, r);
                    while let Some(Ready::Units(units)) = pending.remove(&next) {
                        if !progress.is_cancelled() {
                            for (off, raw, comp) in &units {
                                if let Err(e) = c.write_compressed(*off, raw, comp) {
                                    fail(e);
                                    break;
                                }
                            }
                        }
                        next += 1;
                        let _ = token_tx.send(());
                    }
                }
            });
        }

        // Dispatcher.
        let dispatch = || -> Result<()> {
            let mut at = 0u64;
            let mut seq = 0u64;
            let mut covered = 0u64;
            while at < size {
                if progress.is_cancelled() {
                    return Ok(());
                }
                let (kind, length) = if opts.top_only {
                    let e = src.block_status(at, size - at)?;
                    (e.kind, e.length)
                } else {
                    let ce = chain_status(src, at, size - at)?;
                    let k = if ce.reads_zero() {
                        ExtentKind::Zero
                    } else {
                        ExtentKind::Data
                    };
                    (k, ce.extent.length)
                };
                let end = at.saturating_add(length).min(size);
                if end <= at {
                    return Err(Error::corrupt(format!(
                        "allocation map makes no progress at {at}"
                    )));
                }
                match kind {
                    ExtentKind::Unallocated if opts.top_only => progress.advance(end - at),
                    ExtentKind::Zero | ExtentKind::Unallocated => {
                        let zero_from = at.max(covered).min(end);
                        if !target_is_zero && zero_from < end {
                            dst.write_zeroes(zero_from, end - zero_from, true)?;
                        }
                        stats.lock().unwrap_or_else(|p| p.into_inner()).bytes_zero += end - at;
                        progress.advance(end - at);
                    }
                    ExtentKind::Data => {
                        // Compressed output works in whole units: widen the run to unit
                        // boundaries, skipping what an earlier run already covered.
                        let (mut o, end) = if unit > 1 {
                            (
                                at / unit * unit,
                                end.div_ceil(unit).saturating_mul(unit).min(size),
                            )
                        } else {
                            (at, end)
                        };
                        o = o.max(covered);
                        covered = covered.max(end);
                        while o < end {
                            // Chunks are aligned to `chunk` so compression units line up.
                            let stop = ((o / chunk + 1) * chunk).min(end);
                            if token_rx.recv().is_err() || progress.is_cancelled() {
                                return Ok(());
                            }
                            let c = Chunk {
                                seq,
                                offset: o,
                                len: (stop - o) as usize,
                            };
                            seq += 1;
                            if work_tx.send(c).is_err() {
                                return Ok(());
                            }
                            o = stop;
                        }
                    }
                }
                at = end;
            }
            Ok(())
        };
        if let Err(e) = dispatch() {
            fail(e);
        }
        drop(work_tx);
        drop(token_tx);
    });

    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    if progress.is_cancelled() {
        return Err(Error::new(ErrorKind::Cancelled, "conversion cancelled"));
    }
    if opts.flush || sequential || compressed.is_some() {
        dst.finish()?;
    }
    Ok(stats.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// Reads one chunk, skips its zero blocks, and either writes it (plain or parallel-compressed
/// targets) or returns compressed units for the ordered writer.
#[allow(clippy::too_many_arguments)]
fn process_chunk(
    src: &dyn BlockImage,
    dst: &dyn BlockImage,
    compressed: Option<&dyn crate::image::CompressedWrite>,
    c: &Chunk,
    buf: &mut Vec<u8>,
    unit: u64,
    granularity: u64,
    target_is_zero: bool,
) -> Result<(u64, u64, Option<Ready>)> {
    buf.resize(c.len, 0);
    src.read_at(buf, c.offset)?;
    let mut written = 0u64;
    let mut zero = 0u64;
    if let Some(cw) = compressed {
        let sequential = cw.requires_sequential();
        // (guest offset, index of the unit in `buf`, compressed bytes)
        let mut units: Vec<(u64, usize, Vec<u8>)> = Vec::new();
        // Units that do not compress, stored as they are: neighbours go out in one plain
        // write (one allocation, one `pwrite`) instead of one per unit.
        let mut raw_run: Option<(usize, usize)> = None;
        let u = unit as usize;
        for (i, piece) in buf.chunks(u).enumerate() {
            let off = c.offset + i as u64 * unit;
            let comp = if is_zero(piece) {
                None
            } else {
                Some(cw.compress(piece)?)
            };
            if !sequential && comp.as_ref().is_some_and(Vec::is_empty) {
                written += piece.len() as u64;
                raw_run = match raw_run {
                    Some((s, e)) if e == i * u => Some((s, e + piece.len())),
                    other => {
                        if let Some((s, e)) = other {
                            dst.write_at(&buf[s..e], c.offset + s as u64)?;
                        }
                        Some((i * u, i * u + piece.len()))
                    }
                };
                continue;
            }
            if let Some((s, e)) = raw_run.take() {
                dst.write_at(&buf[s..e], c.offset + s as u64)?;
            }
            let Some(comp) = comp else {
                if !target_is_zero {
                    dst.write_zeroes(off, piece.len() as u64, true)?;
                }
                zero += piece.len() as u64;
                continue;
            };
            written += piece.len() as u64;
            units.push((off, i, comp));
        }
        if let Some((s, e)) = raw_run {
            dst.write_at(&buf[s..e], c.offset + s as u64)?;
        }
        let pieces: Vec<&[u8]> = buf.chunks(unit as usize).collect();
        if sequential {
            // The ordered writer runs on another thread: it gets its own copies.
            let owned = units
                .into_iter()
                .map(|(o, i, comp)| (o, pieces[i].to_vec(), comp))
                .collect();
            return Ok((written, zero, Some(Ready::Units(owned))));
        }
        // One batch per chunk: the format allocates and updates its tables once.
        let batch: Vec<(u64, &[u8], &[u8])> = units
            .iter()
            .map(|(o, i, comp)| (*o, pieces[*i], comp.as_slice()))
            .collect();
        cw.write_compressed_batch(&batch)?;
        return Ok((written, zero, None));
    }
    if granularity == 0 {
        dst.write_at(buf, c.offset)?;
        return Ok((c.len as u64, 0, None));
    }
    // Coalesce runs of non-zero blocks into single writes.
    let g = granularity as usize;
    let mut run_start: Option<usize> = None;
    let mut pos = 0;
    while pos < buf.len() {
        let end = (pos + g - (c.offset as usize + pos) % g).min(buf.len());
        let block_zero = is_zero(&buf[pos..end]);
        match (block_zero, run_start) {
            (false, None) => run_start = Some(pos),
            (true, Some(s)) => {
                dst.write_at(&buf[s..pos], c.offset + s as u64)?;
                written += (pos - s) as u64;
                run_start = None;
            }
            _ => {}
        }
        if block_zero {
            if !target_is_zero {
                dst.write_zeroes(c.offset + pos as u64, (end - pos) as u64, true)?;
            }
            zero += (end - pos) as u64;
        }
        pos = end;
    }
    if let Some(s) = run_start {
        dst.write_at(&buf[s..], c.offset + s as u64)?;
        written += (buf.len() - s) as u64;
    }
    Ok((written, zero, None))
}
