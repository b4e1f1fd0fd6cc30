//! virtio-blk requests: parsing a chain into header, data and status, checking directions and
//! limits, and executing it on the image. A chain that breaks the protocol (no status byte,
//! short header, data in the wrong direction, segments beyond `size_max`/`seg_max`) is a
//! [`ChainError`]; a valid request the disk cannot serve ends with IOERR or UNSUPP.

use std::sync::Arc;

use paddock_disk::BlockImage;

use super::counters::BlockCounters;
use super::guestio;
use super::{
    ID_LEN, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG,
    SECTOR_SIZE, SEG_MAX, SIZE_MAX,
};
use crate::devices::virtio::queue::{ChainError, DescriptorChain, Queue, Segments};
use crate::devices::virtio::worker::QueueHandler;
use crate::memory::GuestMem;

/// Request type: read.
pub const T_IN: u32 = 0;
/// Request type: write.
pub const T_OUT: u32 = 1;
/// Request type: flush.
pub const T_FLUSH: u32 = 4;
/// Request type: device ID.
pub const T_GET_ID: u32 = 8;
/// Request type: discard.
pub const T_DISCARD: u32 = 11;
/// Request type: write zeroes.
pub const T_WRITE_ZEROES: u32 = 13;
/// Status: success.
pub const S_OK: u8 = 0;
/// Status: I/O error.
pub const S_IOERR: u8 = 1;
/// Status: unsupported request.
pub const S_UNSUPP: u8 = 2;
/// Bytes of the request header.
pub const HEADER_LEN: u64 = 16;
/// Write-zeroes flag: the range may be deallocated.
pub const WZ_UNMAP: u32 = 1;

/// Used entries published with one index store at most; a pass over the queue publishes
/// at its end and after every this many requests, so the driver can refill meanwhile.
pub const PUBLISH_EVERY: u16 = 8;

/// Processes the request queue of one device.
pub struct BlockHandler {
    /// The disk.
    pub image: Arc<dyn BlockImage>,
    /// Writes fail with IOERR.
    pub read_only: bool,
    /// GET_ID answer.
    pub serial: [u8; ID_LEN],
    /// Counters.
    pub counters: Arc<BlockCounters>,
    /// Features the driver accepted.
    pub acked: u64,
    /// The chain being processed, kept so its allocation is reused.
    pub scratch: DescriptorChain,
}

fn malformed(m: impl Into<String>) -> ChainError {
    ChainError::Request(m.into())
}

struct Parsed<'a> {
    kind: u32,
    sector: u64,
    out: Segments<'a>,
    out_len: u64,
    input: Segments<'a>,
    in_len: u64,
}

/// The guest ranges of stream bytes `[offset, offset + len)` when there are several (`None`
/// for one: the caller's single-range path needs no list).
fn pieces(
    seg: &Segments,
    offset: u64,
    len: u64,
) -> Result<Option<Vec<(vm_memory::GuestAddress, usize)>>, ChainError> {
    let mut count = 0usize;
    seg.for_range(offset, len, |_, _, _| {
        count += 1;
        Ok(())
    })?;
    if count < 2 {
        return Ok(None);
    }
    let mut ranges = Vec::with_capacity(count);
    seg.for_range(offset, len, |addr, _, n| {
        ranges.push((addr, n));
        Ok(())
    })?;
    Ok(Some(ranges))
}

impl BlockHandler {
    fn parse<'a>(
        &self,
        chain: &'a DescriptorChain,
        mem: &GuestMem,
    ) -> Result<Parsed<'a>, ChainError> {
        let readable = Segments::new(chain.readable());
        let writable = Segments::new(chain.writable());
        if readable.len() < HEADER_LEN {
            return Err(malformed(format!(
                "{} readable bytes: no 16-byte header",
                readable.len()
            )));
        }
        if writable.len() == 0 {
            return Err(malformed("no writable status byte"));
        }
        let data_descs = chain.descs.len().saturating_sub(2);
        if data_descs as u64 > SEG_MAX as u64 {
            return Err(malformed(format!(
                "{data_descs} data segments exceed seg_max"
            )));
        }
        if let Some(d) = chain.descs.iter().find(|d| d.len > SIZE_MAX) {
            return Err(malformed(format!(
                "descriptor of {} bytes exceeds size_max",
                d.len
            )));
        }
        let mut hdr = [0u8; HEADER_LEN as usize];
        readable.read(mem, 0, &mut hdr)?;
        let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
        let (out_len, in_len) = (readable.len() - HEADER_LEN, writable.len() - 1);
        Ok(Parsed {
            kind,
            sector,
            out: readable,
            out_len,
            input: writable,
            in_len,
        })
    }

    /// Executes one chain; returns the status and the bytes written to the guest.
    fn execute(&self, chain: &DescriptorChain, mem: &GuestMem) -> Result<(u8, u32), ChainError> {
        let p = self.parse(chain, mem)?;
        let c = &self.counters;
        let (status, written) = match p.kind {
            T_IN => {
                if p.out_len != 0 {
                    return Err(malformed("read request with device-readable data"));
                }
                let s = self.read(&p, mem)?;
                if s == S_OK {
                    BlockCounters::add(&c.read_requests, 1);
                    BlockCounters::add(&c.read_bytes, p.in_len);
                }
                (s, if s == S_OK { p.in_len as u32 } else { 0 })
            }
            T_OUT => {
                if p.in_len != 0 {
                    return Err(malformed("write request with device-writable data"));
                }
                let s = self.write(&p, mem)?;
                if s == S_OK {
                    BlockCounters::add(&c.write_requests, 1);
                    BlockCounters::add(&c.write_bytes, p.out_len);
                }
                (s, 0)
            }
            T_FLUSH => {
                let s = match self.image.flush() {
                    Ok(()) => S_OK,
                    Err(e) => {
                        eprintln!("paddock-vmm: virtio-blk: flush: {e}");
                        S_IOERR
                    }
                };
                BlockCounters::add(&c.flush_requests, (s == S_OK) as u64);
                (s, 0)
            }
            T_GET_ID => {
                let n = p.in_len.min(ID_LEN as u64) as usize;
                p.input.write(mem, 0, &self.serial[..n])?;
                (S_OK, n as u32)
            }
            T_DISCARD | T_WRITE_ZEROES => (self.discard(&p, mem)?, 0),
            _ => (S_UNSUPP, 0),
        };
        if status != S_OK {
            BlockCounters::add(&c.errors, 1);
        }
        p.input.write(mem, p.in_len, &[status])?;
        Ok((status, written + 1))
    }

    fn range_ok(&self, sector: u64, len: u64) -> bool {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|o| o.checked_add(len))
            .is_some_and(|end| end <= self.image.virtual_size())
    }

    /// Reads the disk straight into the guest's buffers: one image read for a single
    /// segment, one vectored read (`preadv` on raw images) for several.
    fn read(&self, p: &Parsed, mem: &GuestMem) -> Result<u8, ChainError> {
        if p.in_len % SECTOR_SIZE != 0 || !self.range_ok(p.sector, p.in_len) {
            return Ok(S_IOERR);
        }
        let base = p.sector * SECTOR_SIZE;
        if let Some(ranges) = pieces(&p.input, 0, p.in_len)? {
            if let Some(r) = guestio::with_guest_ranges_mut(mem, &ranges, |list| {
                self.image.read_vectored_at(list, base)
            }) {
                return Ok(self.status(r, "read", p.sector));
            }
            // A range outside RAM, or overlapping ranges: one segment at a time below.
        }
        let mut status = S_OK;
        p.input.for_range(0, p.in_len, |addr, at, n| {
            if status != S_OK {
                return Ok(());
            }
            let r =
                guestio::with_guest_mut(mem, addr, n, |b| self.image.read_at(b, base + at as u64))
                    .ok_or(ChainError::OutOfRange {
                        addr: addr.0,
                        len: n as u32,
                    })?;
            status = self.status(r, "read", p.sector);
            Ok(())
        })?;
        Ok(status)
    }

    /// Writes the guest's buffers straight to the disk: one image write for a single
    /// segment, one vectored write (`pwritev` on raw images) for several.
    fn write(&self, p: &Parsed, mem: &GuestMem) -> Result<u8, ChainError> {
        if self.read_only || p.out_len % SECTOR_SIZE != 0 || !self.range_ok(p.sector, p.out_len) {
            return Ok(S_IOERR);
        }
        let base = p.sector * SECTOR_SIZE;
        if let Some(ranges) = pieces(&p.out, HEADER_LEN, p.out_len)? {
            if let Some(r) = guestio::with_guest_ranges(mem, &ranges, |list| {
                self.image.write_vectored_at(list, base)
            }) {
                return Ok(self.status(r, "write", p.sector));
            }
        }
        let mut status = S_OK;
        p.out.for_range(HEADER_LEN, p.out_len, |addr, at, n| {
            if status != S_OK {
                return Ok(());
            }
            let r = guestio::with_guest(mem, addr, n, |b| self.image.write_at(b, base + at as u64))
                .ok_or(ChainError::OutOfRange {
                    addr: addr.0,
                    len: n as u32,
                })?;
            status = self.status(r, "write", p.sector);
            Ok(())
        })?;
        Ok(status)
    }

    /// S_OK, or S_IOERR with the image's error logged.
    fn status(&self, r: paddock_disk::Result<()>, what: &str, sector: u64) -> u8 {
        match r {
            Ok(()) => S_OK,
            Err(e) => {
                eprintln!("paddock-vmm: virtio-blk: {what} at sector {sector}: {e}");
                S_IOERR
            }
        }
    }

    fn discard(&self, p: &Parsed, mem: &GuestMem) -> Result<u8, ChainError> {
        let zeroes = p.kind == T_WRITE_ZEROES;
        let (feature, max_sectors, max_seg) = if zeroes {
            (
                super::F_WRITE_ZEROES,
                MAX_WRITE_ZEROES_SECTORS,
                MAX_WRITE_ZEROES_SEG,
            )
        } else {
            (super::F_DISCARD, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG)
        };
        if self.acked & (1 << feature) == 0 {
            return Ok(S_UNSUPP);
        }
        if self.read_only {
            return Ok(S_IOERR);
        }
        if p.in_len != 0 || p.out_len == 0 || p.out_len % 16 != 0 {
            return Err(malformed(format!(
                "discard/write-zeroes payload of {} bytes is not whole 16-byte segments",
                p.out_len
            )));
        }
        let segs = p.out_len / 16;
        if segs > max_seg as u64 {
            return Ok(S_IOERR);
        }
        for i in 0..segs {
            let mut s = [0u8; 16];
            p.out.read(mem, HEADER_LEN + i * 16, &mut s)?;
            let sector = u64::from_le_bytes(s[0..8].try_into().unwrap_or_default());
            let num = u32::from_le_bytes(s[8..12].try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(s[12..16].try_into().unwrap_or_default());
            let len = num as u64 * SECTOR_SIZE;
            if num > max_sectors || !self.range_ok(sector, len) {
                return Ok(S_IOERR);
            }
            if (!zeroes && flags != 0) || flags & !WZ_UNMAP != 0 {
                return Ok(S_UNSUPP);
            }
            let r = if zeroes {
                self.image
                    .write_zeroes(sector * SECTOR_SIZE, len, flags & WZ_UNMAP != 0)
            } else {
                self.image.discard(sector * SECTOR_SIZE, len)
            };
            if let Err(e) = r {
                eprintln!("paddock-vmm: virtio-blk: discard at sector {sector}: {e}");
                return Ok(S_IOERR);
            }
        }
        BlockCounters::add(&self.counters.discard_requests, 1);
        Ok(S_OK)
    }
}

impl QueueHandler for BlockHandler {
    /// Every request is served at once, so the worker may drain with notifications off.
    fn drains_queues(&self) -> bool {
        true
    }

    /// Serves up to one queue's worth of requests and publishes their used entries in
    /// batches of [`PUBLISH_EVERY`].
    fn process(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &GuestMem,
    ) -> Result<bool, ChainError> {
        let mut chain = std::mem::take(&mut self.scratch);
        let mut served = 0u16;
        let mut result = Ok(());
        while served < queue.size() {
            match queue.pop_into(mem, &mut chain) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            match self.execute(&chain, mem) {
                Ok((_, written)) => queue.push_used(mem, chain.head, written)?,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            served += 1;
            if served % PUBLISH_EVERY == 0 {
                // A polling driver refills while the rest of the pass is served.
                queue.publish_used(mem)?;
            }
        }
        self.scratch = chain;
        if served > 0 {
            queue.publish_used(mem)?;
        }
        result.map(|()| served > 0)
    }
}
