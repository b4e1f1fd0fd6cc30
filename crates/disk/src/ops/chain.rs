//! Block status through a backing chain, and the operations that edit a chain
//! (rebase, commit).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::Format;
use crate::image::{is_zero, BlockImage, Extent, ExtentKind};
use crate::open::{open, OpenOptions};

/// An extent of the whole chain: what the guest reads, and which layer supplies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainExtent {
    /// The extent as reported by the layer that supplies it (`Unallocated` only when no layer
    /// holds the range: it reads as zeroes).
    pub extent: Extent,
    /// 0 for the top image, 1 for its backing file, and so on.
    pub depth: u32,
}

impl ChainExtent {
    /// True when the range is known to read as zeroes without reading it.
    pub fn reads_zero(&self) -> bool {
        self.extent.kind != ExtentKind::Data
    }
}

/// Describes the run at `offset` (at most `max_len` bytes) as seen through the backing chain.
pub fn chain_status(img: &dyn BlockImage, offset: u64, max_len: u64) -> Result<ChainExtent> {
    let mut layer = img;
    let mut depth = 0;
    let mut len = max_len;
    loop {
        let e = layer.block_status(offset, len)?;
        if e.length == 0 {
            return Err(Error::corrupt(format!(
                "{} map returned an empty run at {offset}",
                layer.format()
            )));
        }
        if e.kind != ExtentKind::Unallocated {
            return Ok(ChainExtent { extent: e, depth });
        }
        match layer.backing() {
            Some(b) if offset < b.virtual_size() => {
                len = e.length.min(b.virtual_size() - offset);
                layer = b;
                depth += 1;
            }
            // Past the end of a shorter backing file the guest reads zeroes.
            _ => return Ok(ChainExtent { extent: e, depth }),
        }
    }
}

/// The path of `img`'s backing file, resolved like the image resolves it.
pub fn backing_path(top: &Path, img: &dyn BlockImage) -> Option<PathBuf> {
    let name = img.info().backing_file?;
    let p = Path::new(&name);
    Some(if p.is_absolute() {
        p.to_path_buf()
    } else {
        top.parent().unwrap_or(Path::new(".")).join(p)
    })
}

/// Copies the data of every range that `top` holds itself into its backing file, then (unless
/// `keep_top`) discards those ranges in `top` so they read through to the backing file again.
/// Returns the number of bytes copied.
pub fn commit(top_path: &Path, top_format: Option<Format>, keep_top: bool) -> Result<u64> {
    let top = open(
        top_path,
        &OpenOptions {
            open_backing: false,
            ..OpenOptions::write(top_format)
        },
    )?;
    let info = top.info();
    let base_path = backing_path(top_path, top.as_ref()).ok_or_else(|| {
        Error::invalid(format!(
            "{} has no backing file to commit into",
            top_path.display()
        ))
    })?;
    let base_format = info.backing_format.as_deref().map(str::parse).transpose()?;
    let base = open(&base_path, &OpenOptions::write(base_format))?;
    if base.virtual_size() < top.virtual_size() {
        base.resize(top.virtual_size())?;
    }
    let size = top.virtual_size();
    let mut copied = 0;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    let mut to_discard = Vec::new();
    while at < size {
        let e = top.block_status(at, size - at)?;
        match e.kind {
            ExtentKind::Unallocated => {}
            ExtentKind::Zero => {
                base.write_zeroes(e.start, e.length, false)?;
                to_discard.push((e.start, e.length));
            }
            ExtentKind::Data => {
                let mut o = e.start;
                while o < e.start + e.length {
                    let n = (e.start + e.length - o).min(buf.len() as u64) as usize;
                    top.read_at(&mut buf[..n], o)?;
                    base.write_at(&buf[..n], o)?;
                    o += n as u64;
                    copied += n as u64;
                }
                to_discard.push((e.start, e.length));
            }
        }
        at = e.start + e.length;
    }
    base.flush()?;
    if !keep_top {
        for (o, l) in to_discard {
            top.discard(o, l)?;
        }
        top.flush()?;
    }
    Ok(copied)
}

/// Points `top` at a new backing file. In safe mode (`unsafe_mode == false`) every range that
/// `top` does not hold and where the old and new backing chains differ is first copied into
/// `top`, so the guest sees the same bytes afterwards. `new_backing == None` removes the
/// backing file (flattening what `top` reads through).
pub fn rebase(
    top_path: &Path,
    top_format: Option<Format>,
    new_backing: Option<(&str, Option<Format>)>,
    unsafe_mode: bool,
) -> Result<()> {
    if unsafe_mode {
        let top = open(
            top_path,
            &OpenOptions {
                open_backing: false,
                ..OpenOptions::write(top_format)
            },
        )?;
        top.set_backing(new_backing)?;
        return top.flush();
    }
    let top = open(top_path, &OpenOptions::write(top_format))?;
    let new = match new_backing {
        Some((name, fmt)) => {
            let p = Path::new(name);
            let p = if p.is_absolute() {
                p.to_path_buf()
            } else {
                top_path.parent().unwrap_or(Path::new(".")).join(p)
            };
            Some(open(&p, &OpenOptions::read(fmt))?)
        }
        None => None,
    };
    let size = top.virtual_size();
    let mut old_buf = vec![0u8; 1 << 20];
    let mut new_buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < size {
        let e = top.block_status(at, size - at)?;
        if e.kind == ExtentKind::Unallocated {
            let mut o = e.start;
            while o < e.start + e.length {
                let n = (e.start + e.length - o).min(old_buf.len() as u64) as usize;
                read_layer(top.backing(), &mut old_buf[..n], o)?;
                read_layer(new.as_deref(), &mut new_buf[..n], o)?;
                if old_buf[..n] != new_buf[..n] {
                    top.write_at(&old_buf[..n], o)?;
                }
                o += n as u64;
            }
        }
        at = e.start + e.length;
    }
    top.set_backing(new_backing)?;
    top.flush()
}

/// Reads `buf` at `offset` from an optional layer; beyond its end (or without one) reads zero.
fn read_layer(layer: Option<&dyn BlockImage>, buf: &mut [u8], offset: u64) -> Result<()> {
    buf.fill(0);
    if let Some(l) = layer {
        let size = l.virtual_size();
        if offset < size {
            let n = (size - offset).min(buf.len() as u64) as usize;
            l.read_at(&mut buf[..n], offset)?;
        }
    }
    Ok(())
}

/// Whether the range reads as all zeroes (by status where possible, else by reading).
pub fn range_is_zero(img: &dyn BlockImage, mut offset: u64, len: u64) -> Result<bool> {
    let end = offset + len;
    let mut buf = vec![0u8; 1 << 20];
    while offset < end {
        let ce = chain_status(img, offset, end - offset)?;
        let run = ce.extent.length.min(end - offset);
        if !ce.reads_zero() {
            let mut o = offset;
            while o < offset + run {
                let n = (offset + run - o).min(buf.len() as u64) as usize;
                img.read_at(&mut buf[..n], o)?;
                if !is_zero(&buf[..n]) {
                    return Ok(false);
                }
                o += n as u64;
            }
        }
        offset += run;
    }
    Ok(true)
}
