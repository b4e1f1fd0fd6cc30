//! Resizing VHDs in place: fixed ones grow and shrink, dynamic ones grow. qemu-img cannot
//! resize VHDs at all, and Azure accepts only fixed VHDs whose size is a whole number of MiB,
//! so growing or trimming a fixed VHD is a common step on the way there.
//!
//! The new size follows the footer's own sizing rule: an image sized by its CHS geometry
//! ("vpc ", "qemu") rounds up to a geometry as `create` does; an image sized by
//! `current_size` (Hyper-V, Azure, qemu's exact "qem2") takes the size exactly, rounded up to
//! whole sectors.
//!
//! Crash order (the footer is the only metadata): growing writes the new footer at the new
//! end and syncs, then zeroes the old footer's sector and syncs — a crash between leaves a
//! valid image of the new size whose sector at the old end still holds the old footer's
//! bytes; shrinking writes the new footer at the new end and syncs (over guest bytes being
//! cut off), then truncates — a crash between leaves the old size with that one sector
//! overwritten. At no point does the file end without a valid footer.
//!
//! Dynamic disks grow (shrinking one is refused with the way round). New BAT entries go into
//! the BAT's own space when it has room (it is rounded up to a sector); otherwise the BAT
//! moves to the end of the file, where the next block would have gone. Order: the footer
//! (still the old size) at the file's new end, synced; the new BAT, synced; the dynamic
//! header pointing at it with the new entry count, synced; then the trailing footer and the
//! copy at offset 0 with the new size, synced. A crash before the header write leaves the old
//! image with unreferenced space (a leak); after it, a valid image of the old size whose BAT
//! has spare entries; between the two footers, footers that disagree on the size (`check`
//! reports it). Differencing disks are refused.

use std::sync::atomic::Ordering;

use super::bat::UNALLOCATED;
use super::footer::{plan_size, DiskType, Footer, Geometry, MAX_CREATE_SECTORS, SECTOR};
use super::image::{lock, VpcImage};
use super::parse::{align_up, BAT_REGION, MAX_BAT_BYTES};
use crate::error::{Error, IoContext, Result};

impl VpcImage {
    /// Changes the guest size of a fixed VHD (see the module documentation).
    pub(super) fn resize_to(&self, requested: u64) -> Result<()> {
        if self.storage.is_read_only() {
            return Err(Error::read_only("VHD image is opened read-only"));
        }
        let old = self.footer();
        if old.disk_type == DiskType::Differencing {
            return Err(Error::unsupported(
                "resizing a differencing VHD is not supported: commit it into its parent, or \
                 convert it to a standalone image first",
            ));
        }
        if requested == 0 {
            return Err(Error::invalid("a VHD cannot be resized to 0 bytes"));
        }
        let mut new = old.clone();
        if old.size_from_chs() {
            let (bytes, geometry, _) = plan_size(requested, false)?;
            new.current_size = bytes;
            new.geometry = geometry;
        } else {
            let sectors = requested.div_ceil(SECTOR);
            if sectors > MAX_CREATE_SECTORS {
                return Err(Error::invalid(format!(
                    "VHD images hold at most 2040 GiB; {requested} bytes requested"
                )));
            }
            new.current_size = sectors * SECTOR;
            if old.geometry != Geometry::MAX {
                new.geometry = Geometry::for_sectors(sectors);
            }
        }
        let from = self.size();
        let to = new.virtual_size();
        if to == from && new == old {
            return Ok(());
        }
        if old.disk_type == DiskType::Dynamic {
            if to < from {
                return Err(Error::unsupported(
                    "shrinking a dynamic VHD is not supported: convert it with -O vpc -o \
                     subformat=fixed, shrink that, and convert back",
                ));
            }
            return self.grow_dynamic(&old, new);
        }
        let st = &*self.storage;
        st.write_all_at(&new.to_bytes(), to)
            .ctx(|| format!("writing the VHD footer at offset {to:#x}"))?;
        st.sync().ctx(|| "syncing the new VHD footer".into())?;
        if to > from {
            st.write_all_at(&[0u8; SECTOR as usize], from)
                .ctx(|| format!("zeroing the old VHD footer at offset {from:#x}"))?;
        } else if to < from {
            st.set_len(to + SECTOR)
                .ctx(|| format!("truncating the VHD to {} bytes", to + SECTOR))?;
        }
        st.sync().ctx(|| "syncing the resized VHD".into())?;
        self.set_footer(new);
        Ok(())
    }

    /// Grows a dynamic VHD to `new.virtual_size()` (see the module documentation).
    fn grow_dynamic(&self, old: &Footer, new: Footer) -> Result<()> {
        let d = self.dyn_part();
        let st = &*self.storage;
        let entries = new.virtual_size().div_ceil(d.block_size);
        if entries * 4 > MAX_BAT_BYTES || entries > u64::from(u32::MAX) {
            return Err(Error::limit(format!(
                "a BAT of {entries} entries is over the 256 MiB limit"
            )));
        }
        let mut m = lock(&d.meta);
        let have = m.bat.len() as u64;
        let mut layout = m.layout.clone();
        let synced = |what: &str| st.sync().ctx(|| format!("syncing the VHD after {what}"));
        if entries <= layout.capacity {
            // The BAT's space holds the new entries already: mark them unallocated.
            let tail = vec![0xffu8; ((entries - have) * 4) as usize];
            let at = layout.bat_offset + have * 4;
            st.write_all_at(&tail, at)
                .ctx(|| format!("extending the VHD BAT at offset {at:#x}"))?;
            synced("extending the BAT")?;
        } else {
            // Move the BAT to where the next block would go; the footer moves past it.
            let at = m.next_block;
            let bytes = align_up(entries * 4);
            if (at + bytes) / SECTOR >= u64::from(UNALLOCATED) {
                return Err(Error::limit(format!(
                    "a BAT at offset {at:#x} would leave no block addressable (2 TiB)"
                )));
            }
            let footer_at = at + bytes;
            st.write_all_at(&old.to_bytes(), footer_at)
                .ctx(|| format!("writing the VHD footer at offset {footer_at:#x}"))?;
            synced("moving the footer")?;
            let mut raw = Vec::with_capacity(bytes as usize);
            for e in &m.bat {
                raw.extend_from_slice(&e.to_be_bytes());
            }
            raw.resize(bytes as usize, 0xff);
            st.write_all_at(&raw, at)
                .ctx(|| format!("writing the moved VHD BAT at offset {at:#x}"))?;
            synced("writing the moved BAT")?;
            layout.bat_offset = at;
            layout.capacity = bytes / 4;
            for r in &mut layout.regions {
                if r.2 == BAT_REGION {
                    (r.0, r.1) = (at, at + bytes);
                }
            }
            m.next_block = footer_at;
            m.file_len = footer_at + SECTOR;
        }
        if entries > u64::from(layout.max_table_entries) || layout.bat_offset != m.layout.bat_offset
        {
            layout.max_table_entries = layout.max_table_entries.max(entries as u32);
            let mut header = d.header.clone();
            header.table_offset = layout.bat_offset;
            header.max_table_entries = layout.max_table_entries;
            st.write_all_at(&header.to_bytes(), old.data_offset)
                .ctx(|| format!("writing the VHD dynamic header at {:#x}", old.data_offset))?;
            synced("writing the dynamic header")?;
        }
        let bytes = new.to_bytes();
        let tail = m.file_len - SECTOR;
        st.write_all_at(&bytes, tail)
            .ctx(|| format!("writing the VHD footer at offset {tail:#x}"))?;
        st.write_all_at(&bytes, 0)
            .ctx(|| "writing the VHD footer copy at offset 0".into())?;
        synced("writing the footers")?;
        m.grow((entries - have) as usize);
        m.layout = layout;
        drop(m);
        self.set_footer(new);
        Ok(())
    }

    fn set_footer(&self, new: Footer) {
        let size = new.virtual_size();
        *self
            .footer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
        self.size.store(size, Ordering::Release);
    }
}
