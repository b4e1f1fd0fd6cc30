//! Resizing fixed VHDs in place. qemu-img cannot resize VHDs at all, and Azure accepts only
//! fixed VHDs whose size is a whole number of MiB, so growing or trimming a fixed VHD is a
//! common step on the way there.
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
//! Dynamic and differencing disks are refused with the way round: their block table is
//! sized at creation.

use std::sync::atomic::Ordering;

use super::footer::{plan_size, DiskType, Geometry, MAX_CREATE_SECTORS, SECTOR};
use super::image::VpcImage;
use crate::error::{Error, IoContext, Result};

impl VpcImage {
    /// Changes the guest size of a fixed VHD (see the module documentation).
    pub(super) fn resize_to(&self, requested: u64) -> Result<()> {
        if self.storage.is_read_only() {
            return Err(Error::read_only("VHD image is opened read-only"));
        }
        let old = self.footer();
        if old.disk_type != DiskType::Fixed {
            return Err(Error::unsupported(format!(
                "resizing a {} VHD is not supported (its block table is sized at creation): \
                 convert it with -O vpc -o subformat=fixed, resize that, and convert back",
                old.disk_type.name()
            )));
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
        *self
            .footer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
        self.size.store(to, Ordering::Release);
        Ok(())
    }
}
