//! Writing streamOptimized extents: compressed grains appended in increasing order, each
//! grain table written (after a GT marker) once its grains are done, then at the end the
//! grain directory (after a GD marker), the footer (after a footer marker) and the
//! end-of-stream marker, as VMware's stream format lays them out.

use super::header::{
    marker_sector, sectors_for, GRAIN_MARKER_LEN, MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT,
    SECTOR,
};
use super::sparse::{deflate_grain, SparseExtent};
use crate::error::{Error, IoContext, Result};
use crate::image::is_zero;

/// Progress of a stream being written.
pub(crate) struct StreamState {
    /// The footer and end-of-stream marker are written.
    pub finished: bool,
    /// Grains below this index are on disk (or skipped) and can no longer be written.
    next_grain: u64,
    /// A grain being assembled from partial writes: index and contents.
    pending: Option<(u64, Vec<u8>)>,
    /// The grain table being filled: index and entries.
    table: Option<(u64, Vec<u32>)>,
    /// The grain directory, written at the end.
    gd: Vec<u32>,
}

impl StreamState {
    /// A fresh stream for an extent with `gt_count` grain tables.
    pub fn new(gt_count: u64) -> Self {
        StreamState {
            finished: false,
            next_grain: 0,
            pending: None,
            table: None,
            gd: vec![0; gt_count as usize],
        }
    }
}

fn padded(mut v: Vec<u8>) -> Vec<u8> {
    v.resize((sectors_for(v.len() as u64) * SECTOR) as usize, 0);
    v
}

impl SparseExtent {
    fn stream_state(&self) -> Result<std::sync::MutexGuard<'_, StreamState>> {
        let st = self
            .stream
            .as_ref()
            .ok_or_else(|| {
                Error::unsupported(
                    "writing an existing streamOptimized image is not supported; convert it instead",
                )
            })?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if st.finished {
            return Err(Error::invalid(
                "the streamOptimized image is finished and can no longer be written",
            ));
        }
        Ok(st)
    }

    fn already_written(&self, grain: u64) -> Error {
        Error::invalid(format!(
            "grain {grain} (offset {}) of the streamOptimized image was already written; \
             stream images are written once, in increasing order",
            grain * self.grain_bytes
        ))
    }

    /// Closes the current grain table: writes a GT marker and the table when it has entries.
    fn close_table(&self, st: &mut StreamState) -> Result<()> {
        let Some((t, entries)) = st.table.take() else {
            return Ok(());
        };
        if entries.iter().all(|&e| e == 0) {
            return Ok(());
        }
        let gt_sectors = sectors_for(self.gtes * 4);
        let mut out = marker_sector(gt_sectors, MARKER_GT);
        out.extend(entries.iter().flat_map(|e| e.to_le_bytes()));
        let out = padded(out);
        let mut meta = self.lock();
        let s = self.append(&mut meta, &out)?;
        st.gd[t as usize] = (s + 1) as u32;
        Ok(())
    }

    /// Appends grain `grain` with its compressed bytes.
    fn put_grain(&self, st: &mut StreamState, grain: u64, packed: &[u8]) -> Result<()> {
        let t = grain / self.gtes;
        if st.table.as_ref().is_some_and(|(cur, _)| *cur != t) {
            self.close_table(st)?;
        }
        let size = u32::try_from(packed.len())
            .map_err(|_| Error::invalid("compressed grain is larger than 4 GiB"))?;
        let mut out = Vec::with_capacity(packed.len() + SECTOR as usize);
        out.extend_from_slice(&(grain * self.hdr.grain_size).to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        debug_assert_eq!(out.len(), GRAIN_MARKER_LEN);
        out.extend_from_slice(packed);
        let out = padded(out);
        let s = {
            let mut meta = self.lock();
            self.append(&mut meta, &out)?
        };
        let gtes = self.gtes as usize;
        let table = st.table.get_or_insert_with(|| (t, vec![0; gtes]));
        table.1[(grain % self.gtes) as usize] = s as u32;
        st.next_grain = grain + 1;
        Ok(())
    }

    /// Compresses and appends the pending grain, if any.
    fn emit_pending(&self, st: &mut StreamState) -> Result<()> {
        if let Some((grain, data)) = st.pending.take() {
            if is_zero(&data) {
                st.next_grain = grain + 1;
                return Ok(());
            }
            let packed = deflate_grain(&data, self.grain_bytes as usize, Default::default())?;
            self.put_grain(st, grain, &packed)?;
        }
        Ok(())
    }

    /// Stores one grain compressed by the caller (`CompressedWrite::write_compressed`).
    pub fn stream_put_compressed(&self, grain: u64, raw: &[u8], packed: &[u8]) -> Result<()> {
        let mut st = self.stream_state()?;
        if grain < st.next_grain {
            return Err(self.already_written(grain));
        }
        match st.pending.as_ref().map(|p| p.0) {
            Some(p) if p == grain => return Err(self.already_written(grain)),
            Some(p) if p > grain => return Err(self.already_written(grain)),
            Some(_) => self.emit_pending(&mut st)?,
            None => {}
        }
        if is_zero(raw) {
            st.next_grain = grain + 1;
            return Ok(());
        }
        self.put_grain(&mut st, grain, packed)
    }

    /// Writes `buf` at extent offset `off` into the stream, compressing whole grains; parts
    /// of a grain are gathered until a later grain is written or the stream finishes.
    pub fn stream_write(&self, buf: &[u8], off: u64, zeroes: bool) -> Result<()> {
        let mut st = self.stream_state()?;
        let g = self.grain_bytes;
        let mut done = 0usize;
        while done < buf.len() {
            let at = off + done as u64;
            let grain = at / g;
            let in_grain = (at % g) as usize;
            let n = (g as usize - in_grain).min(buf.len() - done);
            let piece = &buf[done..done + n];
            if grain < st.next_grain {
                return Err(self.already_written(grain));
            }
            match st.pending.as_ref().map(|p| p.0) {
                Some(p) if p > grain => return Err(self.already_written(grain)),
                Some(p) if p < grain => self.emit_pending(&mut st)?,
                _ => {}
            }
            match &mut st.pending {
                Some((_, data)) => data[in_grain..in_grain + n].copy_from_slice(piece),
                None if zeroes || is_zero(piece) => {}
                None if n as u64 == g => {
                    let packed = deflate_grain(piece, g as usize, Default::default())?;
                    self.put_grain(&mut st, grain, &packed)?;
                }
                None => {
                    let mut data = vec![0u8; g as usize];
                    data[in_grain..in_grain + n].copy_from_slice(piece);
                    st.pending = Some((grain, data));
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Writes the remaining tables, the directory, the footer and the end-of-stream marker.
    pub fn stream_finish(&self) -> Result<()> {
        let Some(lock) = self.stream.as_ref() else {
            return Ok(());
        };
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        if st.finished {
            return Ok(());
        }
        self.emit_pending(&mut st)?;
        self.close_table(&mut st)?;
        let gd_sectors = sectors_for(self.gt_count * 4);
        let mut out = marker_sector(gd_sectors, MARKER_GD);
        out.extend(st.gd.iter().flat_map(|e| e.to_le_bytes()));
        let out = padded(out);
        let mut meta = self.lock();
        let s = self.append(&mut meta, &out)?;
        let mut footer = self.hdr.clone();
        footer.gd_offset = s + 1;
        let mut tail = marker_sector(1, MARKER_FOOTER);
        tail.extend(footer.to_sector());
        tail.extend(marker_sector(0, MARKER_EOS));
        self.append(&mut meta, &tail)?;
        self.storage
            .sync()
            .ctx(|| "flushing streamOptimized image".into())?;
        meta.gd = st.gd.clone();
        st.finished = true;
        Ok(())
    }
}
