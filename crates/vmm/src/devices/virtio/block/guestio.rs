//! Disk I/O straight into and out of guest memory: the image reads into (or writes from) the
//! host mapping of each guest buffer, with no bounce buffer, and pages the device writes are
//! marked in the dirty bitmap as `write_slice` would.

use vm_memory::bitmap::Bitmap;
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
