//! Comparing what two images show the guest.

use crate::error::Result;
use crate::image::BlockImage;
use crate::ops::chain::{chain_status, range_is_zero};

/// The outcome of a comparison.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Comparison {
    /// Every byte matches (a size difference is allowed when the extra part reads as zero,
    /// unless strict).
    Identical,
    /// The images differ; `offset` is the first differing byte.
    Different {
        /// First differing guest offset.
        offset: u64,
        /// Why: "content" or "size".
        reason: &'static str,
    },
}

/// Compares the guest-visible contents of `a` and `b`. With `strict`, different sizes are a
/// difference even when the extra part is zero.
pub fn compare(a: &dyn BlockImage, b: &dyn BlockImage, strict: bool) -> Result<Comparison> {
    let (sa, sb) = (a.virtual_size(), b.virtual_size());
    let common = sa.min(sb);
    if strict && sa != sb {
        return Ok(Comparison::Different {
            offset: common,
            reason: "size",
        });
    }
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < common {
        let ea = chain_status(a, at, common - at)?;
        let eb = chain_status(b, at, common - at)?;
        let run = ea.extent.length.min(eb.extent.length).min(common - at);
        if !(ea.reads_zero() && eb.reads_zero()) {
            let mut o = at;
            while o < at + run {
                let n = (at + run - o).min(ba.len() as u64) as usize;
                a.read_at(&mut ba[..n], o)?;
                b.read_at(&mut bb[..n], o)?;
                if ba[..n] != bb[..n] {
                    let i = ba[..n]
                        .iter()
                        .zip(&bb[..n])
                        .position(|(x, y)| x != y)
                        .unwrap_or(0);
                    return Ok(Comparison::Different {
                        offset: o + i as u64,
                        reason: "content",
                    });
                }
                o += n as u64;
            }
        }
        at += run;
    }
    let longer: &dyn BlockImage = if sa > sb { a } else { b };
    if sa != sb && !range_is_zero(longer, common, sa.max(sb) - common)? {
        return Ok(Comparison::Different {
            offset: common,
            reason: "size",
        });
    }
    Ok(Comparison::Identical)
}
