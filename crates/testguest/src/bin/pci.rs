//! Enumerates bus 0 through ECAM and through ports 0xcf8/0xcfc, checks that both agree on
//! every header dword, and prints one line per function. Then moves the last device's BAR0,
//! checks it answers at the new address only, and enables MSI-X on it (the VMM installs the
//! route). Exits 0 when everything agreed.
#![no_std]
#![no_main]

use paddock_testguest::pci::{self, Mechanism};
use paddock_testguest::virtio::{self, Device};
use paddock_testguest::{entry, print, println, BootInfo};

entry!(main);

/// Where the guest moves the last device's BAR0 (inside the VMM's PCI window).
const MOVED_BAR: u32 = 0xd000_0000;

fn main(_boot: &BootInfo) -> u32 {
    let mut ok = true;
    let mut last = None;
    for slot in 0..32u8 {
        let (e, p) = (
            pci::ids(Mechanism::Ecam, slot),
            pci::ids(Mechanism::Port, slot),
        );
        if e != p {
            println!("MISMATCH 00:{slot:02x}.0: ecam {e:?} port {p:?}");
            ok = false;
        }
        let Some((vendor, device)) = e else { continue };
        for reg in (0..256u16).step_by(4) {
            let (a, b) = (
                pci::read32(Mechanism::Ecam, slot, 0, reg),
                pci::read32(Mechanism::Port, slot, 0, reg),
            );
            if a != b {
                println!("MISMATCH 00:{slot:02x}.0 reg {reg:#x}: ecam {a:#x} port {b:#x}");
                ok = false;
            }
        }
        if pci::read32(Mechanism::Ecam, slot, 1, 0) != 0xffff_ffff {
            println!("UNEXPECTED function 00:{slot:02x}.1");
            ok = false;
        }
        let cr = pci::read32(Mechanism::Ecam, slot, 0, 8);
        let sub = pci::read32(Mechanism::Ecam, slot, 0, 0x2c);
        print!(
            "PCI 00:{slot:02x}.0 {vendor:04x}:{device:04x} class {:06x} rev {:02x} sub {:04x}:{:04x} bars",
            cr >> 8,
            cr & 0xff,
            sub & 0xffff,
            sub >> 16
        );
        let mut any = false;
        for i in 0..6 {
            let (addr, size) = pci::bar(slot, i);
            if size != 0 {
                print!(" {i}:{addr:08x}/{size:x}");
                any = true;
            }
        }
        if !any {
            print!(" -");
        }
        print!(" caps");
        let (caps, n) = pci::capabilities(slot);
        for &(off, id) in &caps[..n] {
            if id == 0x09 {
                print!(" 09.{}", pci::read8(slot, off as u16 + 3));
            } else {
                print!(" {id:02x}");
            }
        }
        if n == 0 {
            print!(" -");
        }
        println!();
        if any {
            last = Some(slot);
        }
    }
    // The host bridge must be there, at 00:00.0.
    if pci::ids(Mechanism::Ecam, 0).is_none() {
        println!("no host bridge");
        ok = false;
    }
    if let Some(slot) = last {
        ok &= move_bar(slot);
        ok &= enable_msix(slot);
    }
    println!("PCI enumeration {}", if ok { "agreed" } else { "FAILED" });
    if ok {
        0
    } else {
        1
    }
}

fn move_bar(slot: u8) -> bool {
    let (old, _) = pci::bar(slot, 0);
    let cmd = pci::read16(slot, 0x04);
    pci::write16(slot, 0x04, cmd & !pci::CMD_MEMORY);
    pci::write32(Mechanism::Ecam, slot, 0, 0x10, MOVED_BAR);
    let dev = match Device::open(slot) {
        Ok(d) => d,
        Err(e) => {
            println!("BAR move: {e}");
            return false;
        }
    };
    // num_queues (common config offset 0x12) answers at the new address only.
    let nq = virtio::r32(MOVED_BAR as u64 + 0x10) >> 16;
    let stale = virtio::r32(old as u64 + 0x10);
    println!("BAR0 of 00:{slot:02x}.0 moved {old:08x} -> {MOVED_BAR:08x}: num_queues={nq} old={stale:08x}");
    let _ = dev;
    nq == 1 && stale == 0xffff_ffff
}

fn enable_msix(slot: u8) -> bool {
    let (caps, n) = pci::capabilities(slot);
    let Some(&(off, _)) = caps[..n].iter().find(|c| c.1 == 0x11) else {
        println!("no MSI-X capability");
        return false;
    };
    let off = off as u16;
    let ctrl = pci::read16(slot, off + 2);
    let table = pci::read32(Mechanism::Ecam, slot, 0, off + 4);
    let (bar, _) = pci::bar(slot, (table & 7) as u8);
    let entry0 = bar as u64 + (table & !7) as u64;
    // SAFETY: the MSI-X table lies in the device's BAR, identity-mapped device memory.
    unsafe {
        core::ptr::write_volatile(entry0 as *mut u32, 0xfee0_0000);
        core::ptr::write_volatile((entry0 + 4) as *mut u32, 0);
        core::ptr::write_volatile((entry0 + 8) as *mut u32, 0x30);
        core::ptr::write_volatile((entry0 + 12) as *mut u32, 0);
    }
    pci::write16(slot, off + 2, ctrl | 0x8000);
    let back = pci::read16(slot, off + 2);
    let data = virtio::r32(entry0 + 8);
    println!(
        "MSI-X on 00:{slot:02x}.0: {} vectors, enabled={} entry0.data={data:#x}",
        (ctrl & 0x7ff) + 1,
        back >> 15
    );
    back & 0x8000 != 0 && data == 0x30
}
