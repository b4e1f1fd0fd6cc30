//! Disk I/O straight into and out of guest memory: the image reads into (or writes from) the
//! host mapping of each guest buffer, with no bounce buffer, and pages the device writes are
//! marked in the dirty bitmap as `write_slice` would.

use std::io::{IoSlice, IoSliceMut};

use vm_memory::bitmap::Bitmap;
use vm_memory::volatile_memory::{PtrGuard, PtrGuardMut};
use vm_memory::{GuestAddress, GuestMemory};

use crate::memory::GuestMem;

/// Calls `f` with the host bytes of guest range `[addr, addr + len)` as a mutable slice and
/// marks them dirty; `None` when the range is not inside one RAM region.
pub fn with_guest_mut<R>(
    mem: &GuestMem,
    addr: GuestAddress,
    len: usize,
    f: impl FnOnce(&mut [u8]) -> R,
) -> Option<R> {
    let slice = mem.get_slice(addr, len).ok()?;
    let guard = slice.ptr_guard_mut();
    // SAFETY: `get_slice` checked that the range lies inside one mapping that lives as long
    // as `mem`. The driver handed this buffer to the device until the chain is used, so no
    // one else writes it meanwhile; a misbehaving guest touching it concurrently can only
    // corrupt its own bytes (plain `u8`s, no invariants).
    let bytes = unsafe { std::slice::from_raw_parts_mut(guard.as_ptr(), len) };
    let r = f(bytes);
    slice.bitmap().mark_dirty(0, len);
    Some(r)
}

/// Calls `f` with the host bytes of guest range `[addr, addr + len)`; `None` when the range
/// is not inside one RAM region.
pub fn with_guest<R>(
    mem: &GuestMem,
    addr: GuestAddress,
    len: usize,
    f: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    let slice = mem.get_slice(addr, len).ok()?;
    let guard = slice.ptr_guard();
    // SAFETY: as in `with_guest_mut`; the device only reads the bytes.
    let bytes = unsafe { std::slice::from_raw_parts(guard.as_ptr(), len) };
    Some(f(bytes))
}

/// Calls `f` with the host bytes of every guest range of `ranges`, in order, as one scatter
/// list (for a single `preadv`), and marks them dirty. `None` when a range is not inside one
/// RAM region, or when two ranges overlap: a guest may hand the device the same buffer twice,
/// and two mutable slices of the same bytes may not exist, so the caller then serves the
/// ranges one at a time.
pub fn with_guest_ranges_mut<R>(
    mem: &GuestMem,
    ranges: &[(GuestAddress, usize)],
    f: impl FnOnce(&mut [IoSliceMut<'_>]) -> R,
) -> Option<R> {
    let slices = ranges
        .iter()
        .map(|&(addr, len)| mem.get_slice(addr, len).ok())
        .collect::<Option<Vec<_>>>()?;
    let guards: Vec<PtrGuardMut> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
    let mut spans: Vec<(usize, usize)> = guards
        .iter()
        .map(|g| (g.as_ptr() as usize, g.len()))
        .collect();
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
        return None;
    }
    let mut list: Vec<IoSliceMut<'_>> = guards
        .iter()
        // SAFETY: each range lies inside one mapping that lives as long as `mem` (checked by
        // `get_slice`), no two ranges overlap (checked above), and the slices are dropped
        // before this function returns. As in `with_guest_mut`, a guest touching its own
        // buffers meanwhile can only corrupt its own bytes.
        .map(|g| IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(g.as_ptr(), g.len()) }))
        .collect();
    let r = f(&mut list);
    drop(list);
    for s in &slices {
        s.bitmap().mark_dirty(0, s.len());
    }
    Some(r)
}

/// Calls `f` with the host bytes of every guest range of `ranges`, in order, as one gather
/// list (for a single `pwritev`); `None` when a range is not inside one RAM region.
pub fn with_guest_ranges<R>(
    mem: &GuestMem,
    ranges: &[(GuestAddress, usize)],
    f: impl FnOnce(&[IoSlice<'_>]) -> R,
) -> Option<R> {
    let guards = ranges
        .iter()
        .map(|&(addr, len)| mem.get_slice(addr, len).ok().map(|s| s.ptr_guard()))
        .collect::<Option<Vec<PtrGuard>>>()?;
    let list: Vec<IoSlice<'_>> = guards
        .iter()
        // SAFETY: as in `with_guest_ranges_mut`; the device only reads these bytes, so
        // overlapping ranges are harmless.
        .map(|g| IoSlice::new(unsafe { std::slice::from_raw_parts(g.as_ptr(), g.len()) }))
        .collect();
    Some(f(&list))
}
