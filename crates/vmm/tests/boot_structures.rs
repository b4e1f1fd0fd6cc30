//! The boot structures paddock-vmm writes, checked field by field against the x86 boot
//! protocol (Documentation/arch/x86/boot.rst), the PVH start info, the MP spec 1.4 and ACPI
//! 6.5, with the Debian cloud kernel from `scripts/guest-artifacts.sh`. Guest memory is a
//! plain mapping: no KVM is needed, except for the last test, which boots that kernel.
//!
//! Offsets are spelled out here rather than taken from linux-loader's structs, so the test
//! does not share the code it checks.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use paddock_vmm::arch::x86_64::{
    regs, ACPI_PM1A_CNT_PORT, ACPI_PM1A_EVT_PORT, ACPI_RSDP_ADDR, ACPI_SCI_IRQ, CMDLINE_ADDR,
    GDT_ADDR, IOAPIC_START, LAPIC_START, MPTABLE_START, PCI_ECAM_SIZE, PCI_ECAM_START,
    PCI_MMIO_SIZE, PCI_MMIO_START, PML4_ADDR, PVH_INFO_ADDR, ZERO_PAGE_ADDR,
};
use paddock_vmm::boot::{self, BootConfig, BootError, Entry, EntryChoice};
use paddock_vmm::memory::{self, GuestMem, MMIO_HOLE_END, MMIO_HOLE_START};
use vm_memory::{Bytes, GuestAddress};

/// The Debian kernel and busybox initramfs, built once per test binary.
struct Artifacts {
    kernel: PathBuf,
    initramfs: PathBuf,
}

/// Runs the artifact script; `None` (with the reason printed) when the packages cannot be
/// had, unless `PADDOCK_REQUIRE_GUEST_ARTIFACTS=1` makes that a failure.
fn artifacts(test: &str) -> Option<&'static Artifacts> {
    static BUILT: OnceLock<Result<Artifacts, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let script = common::root().join("scripts/guest-artifacts.sh");
        let o = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !o.status.success() {
            return Err(format!(
                "{} failed:\n{}",
                script.display(),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let path = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(PathBuf::from)
                .ok_or_else(|| format!("no {key} line in:\n{text}"))
        };
        Ok(Artifacts {
            kernel: path("kernel=")?,
            initramfs: path("initramfs=")?,
        })
    });
    match built {
        Ok(a) => Some(a),
        Err(why) if std::env::var("PADDOCK_REQUIRE_GUEST_ARTIFACTS").as_deref() != Ok("1") => {
            eprintln!("SKIP {test}: no guest artifacts: {why}");
            None
        }
        Err(why) => panic!("{test}: {why}"),
    }
}

fn bytes(mem: &GuestMem, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr))
        .unwrap_or_else(|e| panic!("read {len} bytes at {addr:#x}: {e}"));
    v
}
fn u8_at(b: &[u8], off: usize) -> u8 {
    b[off]
}
fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// (start, size, type) entries of the zero page's e820 table.
fn e820_of(zp: &[u8]) -> Vec<(u64, u64, u32)> {
    let n = u8_at(zp, 0x1e8) as usize;
    assert!((1..=128).contains(&n), "e820_entries = {n}");
    (0..n)
        .map(|i| {
            let e = 0x2d0 + i * 20;
            (u64_at(zp, e), u64_at(zp, e + 8), u32_at(zp, e + 16))
        })
        .collect()
}

/// Checks a memory map for `mem_size` bytes of RAM: sorted, disjoint, RAM outside the MMIO
/// hole and adding up to the RAM less the EBDA-to-1-MiB gap, the ECAM window reserved.
fn check_memory_map(map: &[(u64, u64, u32)], mem_size: u64) {
    for w in map.windows(2) {
        assert!(
            w[0].0 + w[0].1 <= w[1].0,
            "unsorted or overlapping: {map:#x?}"
        );
    }
    let mut ram = 0;
    for &(start, size, ty) in map {
        assert!(size > 0, "{map:#x?}");
        assert!(ty == 1 || ty == 2, "type {ty} in {map:#x?}");
        if ty == 1 {
            ram += size;
            assert!(
                start + size <= MMIO_HOLE_START || start >= MMIO_HOLE_END,
                "RAM in the MMIO hole: {map:#x?}"
            );
        }
    }
    assert_eq!(ram, mem_size - (0x10_0000 - 0x9_fc00), "{map:#x?}");
    assert!(
        map.contains(&(PCI_ECAM_START, PCI_ECAM_SIZE, 2)),
        "ECAM not reserved: {map:#x?}"
    );
}

fn in_ram(map: &[(u64, u64, u32)], start: u64, len: u64) -> bool {
    map.iter()
        .any(|&(s, l, t)| t == 1 && s <= start && start + len <= s + l)
}

/// Finds `sig` on a 16-byte boundary in `[from, to)`, as Linux scans for the MP floating
/// pointer and the RSDP.
fn scan(mem: &GuestMem, from: u64, to: u64, sig: &[u8]) -> Option<u64> {
    let area = bytes(mem, from, (to - from) as usize);
    (0..area.len() - sig.len())
        .step_by(16)
        .find(|&o| &area[o..o + sig.len()] == sig)
        .map(|o| from + o as u64)
}

/// Reads a whole ACPI table at `addr`, checking its signature, length and checksum.
fn acpi_table(mem: &GuestMem, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
    let head = bytes(mem, addr, 36);
    assert_eq!(&head[..4], sig, "table at {addr:#x}");
    let len = u32_at(&head, 4) as usize;
    assert!((36..0x10000).contains(&len), "{sig:?} length {len}");
    let t = bytes(mem, addr, len);
    assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
    assert!(
        addr >= ACPI_RSDP_ADDR && addr + len as u64 <= 0x10_0000,
        "{sig:?} outside the BIOS area"
    );
    t
}

fn walk_identity_map(mem: &GuestMem, addr: u64) -> Option<u64> {
    let pml4e: u64 = mem
        .read_obj(GuestAddress(PML4_ADDR + (addr >> 39 & 511) * 8))
        .ok()?;
    if pml4e & 1 == 0 {
        return None;
    }
    let pdpte: u64 = mem
        .read_obj(GuestAddress((pml4e & !0xfff) + (addr >> 30 & 511) * 8))
        .ok()?;
    if pdpte & 1 == 0 {
        return None;
    }
    let pde: u64 = mem
        .read_obj(GuestAddress(
            (pdpte & !0xfff & ((1 << 52) - 1)) + (addr >> 21 & 511) * 8,
        ))
        .ok()?;
    // Present, writable, 2 MiB page.
    if pde & 0x83 != 0x83 {
        return None;
    }
    Some((pde & !0x1f_ffff & ((1 << 52) - 1)) + (addr & 0x1f_ffff))
}

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 paddock.test=boot-structures";
const CPUS: u8 = 4;

#[test]
fn debian_bzimage_boot_params_follow_the_boot_protocol() {
    let Some(a) = artifacts("debian_bzimage_boot_params_follow_the_boot_protocol") else {
        return;
    };
    let image = std::fs::read(&a.kernel).unwrap();
    let initrd = std::fs::read(&a.initramfs).unwrap();
    let mem_size = 512u64 << 20;
    let mem = memory::create(mem_size).unwrap();
    regs::write_boot_tables(&mem).unwrap();
    let cfg = BootConfig {
        kernel: a.kernel.clone(),
        initramfs: Some(a.initramfs.clone()),
        cmdline: CMDLINE.into(),
        entry: EntryChoice::Auto,
    };
    let entry = boot::load_smp(&mem, &cfg, CPUS).unwrap();
    let zp = bytes(&mem, ZERO_PAGE_ADDR, 4096);

    // The setup header: copied from the image, with only the loader's fields changed.
    let setup_end = 0x202 + image[0x201] as usize;
    let loader_fields = [0x210..0x212, 0x218..0x220, 0x224..0x226, 0x228..0x22c];
    for off in 0x1f1..setup_end {
        if !loader_fields.iter().any(|r| r.contains(&off)) {
            assert_eq!(zp[off], image[off], "setup header byte {off:#x}");
        }
    }
    assert_eq!(u16_at(&zp, 0x1fe), 0xaa55, "boot_flag");
    assert_eq!(&zp[0x202..0x206], b"HdrS", "header magic");
    let version = u16_at(&zp, 0x206);
    assert!(version >= 0x020c, "boot protocol {version:#x} < 2.12");
    assert_eq!(u8_at(&zp, 0x210), 0xff, "type_of_loader");
    let loadflags = u8_at(&zp, 0x211);
    assert_eq!(
        loadflags & 0x81,
        0x81,
        "LOADED_HIGH | CAN_USE_HEAP: {loadflags:#x}"
    );
    assert_eq!(u16_at(&zp, 0x224), 0xfe00, "heap_end_ptr");

    // Command line: pointer, bytes, NUL, within the kernel's cmdline_size.
    assert_eq!(u32_at(&zp, 0x228) as u64, CMDLINE_ADDR, "cmd_line_ptr");
    let cmdline_size = u32_at(&zp, 0x238) as usize;
    assert!(CMDLINE.len() <= cmdline_size, "cmdline_size {cmdline_size}");
    let mut want = CMDLINE.as_bytes().to_vec();
    want.push(0);
    assert_eq!(
        bytes(&mem, CMDLINE_ADDR, want.len()),
        want,
        "command line bytes"
    );

    // Protected-mode code at code32_start, byte for byte.
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let pm_offset = (setup_sects + 1) * 512;
    let load = u32_at(&zp, 0x214) as u64;
    assert_eq!(load, 0x10_0000, "code32_start");
    assert!(
        bytes(&mem, load, image.len() - pm_offset) == image[pm_offset..],
        "protected-mode code differs from the image"
    );

    // Alignment and limits.
    let initrd_addr_max = u32_at(&zp, 0x22c) as u64;
    let kernel_alignment = u32_at(&zp, 0x230) as u64;
    let relocatable = u8_at(&zp, 0x234);
    let xloadflags = u16_at(&zp, 0x236);
    let pref_address = u64_at(&zp, 0x258);
    let init_size = u32_at(&zp, 0x260) as u64;
    assert!(kernel_alignment.is_power_of_two(), "kernel_alignment");
    assert!(
        load % kernel_alignment == 0 || relocatable == 1,
        "load address {load:#x} not aligned to {kernel_alignment:#x} and not relocatable"
    );
    assert_eq!(xloadflags & 1, 1, "XLF_KERNEL_64");

    // Initramfs: bytes, page aligned, below initrd_addr_max and RAM's end, above the
    // kernel's decompression buffer.
    let rd = u32_at(&zp, 0x218) as u64;
    let rd_size = u32_at(&zp, 0x21c) as u64;
    assert_eq!(rd_size, initrd.len() as u64, "ramdisk_size");
    assert_eq!(rd % 4096, 0, "ramdisk_image alignment");
    assert!(
        rd + rd_size - 1 <= initrd_addr_max,
        "initrd above initrd_addr_max"
    );
    assert!(rd + rd_size <= mem_size, "initrd beyond RAM");
    assert!(
        rd >= pref_address.max(load) + init_size,
        "initrd at {rd:#x} inside the kernel's buffer"
    );
    assert!(bytes(&mem, rd, initrd.len()) == initrd, "initramfs bytes");

    // 64-bit entry.
    assert_eq!(
        entry,
        Entry::Linux64 {
            rip: load + 0x200,
            zero_page: ZERO_PAGE_ADDR
        }
    );

    // e820.
    let map = e820_of(&zp);
    check_memory_map(&map, mem_size);
    for (what, start, len) in [
        ("kernel", load, init_size),
        ("zero page", ZERO_PAGE_ADDR, 4096),
        ("command line", CMDLINE_ADDR, want.len() as u64),
        ("initramfs", rd, rd_size),
    ] {
        assert!(in_ram(&map, start, len), "{what} not in e820 RAM");
    }
    for (what, start) in [("MP table", MPTABLE_START), ("ACPI", ACPI_RSDP_ADDR)] {
        assert!(!in_ram(&map, start, 1), "{what} in e820 RAM");
    }

    // Identity map and GDT (regs::write_boot_tables): the protocol needs the kernel's
    // init_size span, the zero page and the command line mapped 1:1.
    for addr in [
        load,
        load + 0x200,
        load + init_size - 1,
        ZERO_PAGE_ADDR,
        CMDLINE_ADDR,
    ] {
        assert_eq!(
            walk_identity_map(&mem, addr),
            Some(addr),
            "{addr:#x} not identity-mapped"
        );
    }
    assert_eq!(walk_identity_map(&mem, (1 << 30) - 1), Some((1 << 30) - 1));
    let gdt: Vec<u64> = (0..5)
        .map(|i| mem.read_obj(GuestAddress(GDT_ADDR + i * 8)).unwrap())
        .collect();
    assert_eq!(gdt[0], 0, "null descriptor");
    // The protocol's selectors: __BOOT_CS = 0x10, __BOOT_DS = 0x18.
    // Code: present, DPL 0, execute/read, L=1 (64-bit), D=0, G=1, limit 0xfffff, base 0.
    assert_eq!(
        gdt[2], 0x00af_9b00_0000_ffff,
        "64-bit code descriptor at __BOOT_CS"
    );
    // Data: present, read/write, D/B=1, G=1, flat 4 GiB.
    assert_eq!(
        gdt[3], 0x00cf_9300_0000_ffff,
        "flat data descriptor at __BOOT_DS"
    );

    check_mp_table(&mem, CPUS);
    check_acpi(&mem, CPUS, &map);
}

fn check_mp_table(mem: &GuestMem, cpus: u8) {
    let fp = scan(mem, 0x9_fc00, 0xa_0000, b"_MP_").expect("MP floating pointer in the last KiB");
    assert_eq!(fp, MPTABLE_START);
    let f = bytes(mem, fp, 16);
    assert_eq!(sum(&f), 0, "floating pointer checksum");
    assert_eq!(
        (f[8], f[9], f[11]),
        (1, 4, 0),
        "length, spec rev, feature 1"
    );
    let table = u32_at(&f, 4) as u64;
    let head = bytes(mem, table, 44);
    assert_eq!(&head[..4], b"PCMP");
    let len = u16_at(&head, 4) as usize;
    let t = bytes(mem, table, len);
    assert_eq!(sum(&t), 0, "configuration table checksum");
    assert_eq!(t[6], 4, "spec rev");
    assert_eq!(u32_at(&t, 36) as u64, LAPIC_START);
    let count = u16_at(&t, 34) as usize;
    let (mut procs, mut bus, mut ioapic, mut isa, mut lint) =
        (vec![], vec![], None, vec![], vec![]);
    let mut off = 44;
    for _ in 0..count {
        let e = &t[off..];
        off += match e[0] {
            0 => {
                procs.push((e[1], e[3]));
                20
            }
            1 => {
                bus.push((e[1], e[2..8].to_vec()));
                8
            }
            2 => {
                ioapic = Some((e[1], e[3], u32_at(e, 4)));
                8
            }
            3 => {
                isa.push((e[1], u16_at(e, 2), e[4], e[5], e[6], e[7]));
                8
            }
            4 => {
                lint.push((e[1], e[6], e[7]));
                8
            }
            k => panic!("MP entry type {k}"),
        };
    }
    assert_eq!(off, len, "entries fill the table");
    let want: Vec<(u8, u8)> = (0..cpus).map(|i| (i, if i == 0 { 3 } else { 1 })).collect();
    assert_eq!(procs, want, "processors: APIC IDs, enabled, BSP on 0 only");
    assert_eq!(bus, vec![(0, b"ISA   ".to_vec())]);
    let (io_id, io_flags, io_addr) = ioapic.expect("IOAPIC entry");
    assert_eq!((io_flags & 1, io_addr as u64), (1, IOAPIC_START));
    assert!(io_id >= cpus, "IOAPIC ID {io_id} collides with a CPU");
    for irq in 0..16u8 {
        let routes: Vec<_> = isa.iter().filter(|r| r.0 == 0 && r.3 == irq).collect();
        if irq == 2 {
            assert!(routes.is_empty(), "IRQ 2 is the cascade");
            continue;
        }
        assert_eq!(routes.len(), 1, "ISA IRQ {irq}");
        let r = routes[0];
        assert_eq!((r.2, r.4), (0, io_id), "IRQ {irq}: bus ISA, this IOAPIC");
        assert_eq!(r.5, if irq == 0 { 2 } else { irq }, "IRQ {irq} pin");
        let flags = if irq as u16 == ACPI_SCI_IRQ { 0xd } else { 0 };
        assert_eq!(r.1, flags, "IRQ {irq} flags");
    }
    assert!(
        isa.iter().any(|r| r.0 == 3 && r.5 == 0),
        "8259 ExtINT on pin 0"
    );
    assert_eq!(
        lint,
        vec![(3, 0xff, 0), (1, 0xff, 1)],
        "LINT0 ExtINT, LINT1 NMI"
    );
}

fn check_acpi(mem: &GuestMem, cpus: u8, e820: &[(u64, u64, u32)]) {
    let rsdp_at = scan(mem, 0xe_0000, 0x10_0000, b"RSD PTR ").expect("RSDP in the BIOS area");
    assert_eq!(rsdp_at, ACPI_RSDP_ADDR);
    let rsdp = bytes(mem, rsdp_at, 36);
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!((rsdp[15], u32_at(&rsdp, 20)), (2, 36), "revision, length");
    let xsdt = acpi_table(mem, u64_at(&rsdp, 24), b"XSDT");
    let mut seen = Vec::new();
    let (mut fadt, mut madt, mut mcfg) = (None, None, None);
    for i in 0..(xsdt.len() - 36) / 8 {
        let addr = u64_at(&xsdt, 36 + i * 8);
        let sig: [u8; 4] = bytes(mem, addr, 4).try_into().unwrap();
        let t = acpi_table(mem, addr, &sig);
        seen.push(sig);
        match &sig {
            b"FACP" => fadt = Some(t),
            b"APIC" => madt = Some(t),
            b"MCFG" => mcfg = Some(t),
            _ => {}
        }
    }
    let (fadt, madt, mcfg) = (fadt.unwrap(), madt.unwrap(), mcfg.unwrap());
    assert_eq!(seen.len(), 3, "XSDT lists FADT, MADT, MCFG once each");

    // FADT.
    assert!(fadt.len() >= 276 && fadt[8] >= 6, "FADT 6.x");
    assert_eq!(u16_at(&fadt, 46), ACPI_SCI_IRQ, "SCI_INT");
    assert_eq!(u32_at(&fadt, 56), ACPI_PM1A_EVT_PORT as u32, "PM1a_EVT_BLK");
    assert_eq!(u32_at(&fadt, 64), ACPI_PM1A_CNT_PORT as u32, "PM1a_CNT_BLK");
    assert_eq!((fadt[88], fadt[89]), (4, 2), "PM1_EVT_LEN, PM1_CNT_LEN");
    let flags = u32_at(&fadt, 112);
    assert_eq!(flags & (1 << 20), 0, "not hardware-reduced");
    assert_eq!(flags & (1 << 4), 0, "power button is a fixed feature");
    for (off, port, width) in [(148, ACPI_PM1A_EVT_PORT, 32), (172, ACPI_PM1A_CNT_PORT, 16)] {
        assert_eq!(
            (fadt[off], fadt[off + 1]),
            (1, width),
            "X_PM1a GAS at {off}"
        );
        assert_eq!(u64_at(&fadt, off + 4), port as u64);
    }
    let facs_at = u64_at(&fadt, 132);
    assert_eq!(facs_at % 64, 0, "FACS alignment");
    let facs = bytes(mem, facs_at, 64);
    assert_eq!((&facs[..4], u32_at(&facs, 4)), (&b"FACS"[..], 64));
    let dsdt = acpi_table(mem, u64_at(&fadt, 140), b"DSDT");
    check_dsdt(&dsdt);

    // MADT.
    assert_eq!(u32_at(&madt, 36) as u64, LAPIC_START);
    let (mut lapics, mut ioapics, mut isos, mut nmis) = (vec![], vec![], vec![], 0);
    let mut off = 44;
    while off < madt.len() {
        let (kind, len) = (madt[off], madt[off + 1] as usize);
        let e = &madt[off..off + len];
        match kind {
            0 => lapics.push((e[2], e[3], u32_at(e, 4))),
            1 => ioapics.push((u32_at(e, 4) as u64, u32_at(e, 8))),
            2 => isos.push((e[2], e[3], u32_at(e, 4), u16_at(e, 8))),
            4 => nmis += 1,
            k => panic!("MADT entry type {k}"),
        }
        assert!(len >= 2);
        off += len;
    }
    assert_eq!(off, madt.len());
    let want: Vec<_> = (0..cpus).map(|i| (i, i, 1)).collect();
    assert_eq!(
        lapics, want,
        "one enabled local APIC per vCPU, UID = APIC ID"
    );
    assert_eq!(ioapics, vec![(IOAPIC_START, 0)]);
    assert!(isos.contains(&(0, 0, 2, 0)), "IRQ 0 -> GSI 2: {isos:?}");
    let sci = ACPI_SCI_IRQ as u8;
    assert!(
        isos.contains(&(0, sci, sci as u32, 0xd)),
        "SCI level, high: {isos:?}"
    );
    assert_eq!(nmis, 1);

    // MCFG = ECAM, reserved in e820.
    assert_eq!(mcfg.len(), 60);
    assert_eq!(u64_at(&mcfg, 44), PCI_ECAM_START);
    assert_eq!(
        (u16_at(&mcfg, 52), mcfg[54]),
        (0, 0),
        "segment 0 from bus 0"
    );
    let buses = mcfg[55] as u64 + 1;
    assert_eq!(
        buses << 20,
        PCI_ECAM_SIZE,
        "bus range covers the ECAM window"
    );
    assert!(e820.contains(&(PCI_ECAM_START, PCI_ECAM_SIZE, 2)));
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn check_dsdt(dsdt: &[u8]) {
    let aml = &dsdt[36..];
    // Name(_HID, EisaId("PNP0A08")) and Name(_CID, EisaId("PNP0A03")).
    assert!(
        find(aml, b"\x08_HID\x0c\x41\xd0\x0a\x08").is_some(),
        "PNP0A08"
    );
    assert!(
        find(aml, b"\x08_CID\x0c\x41\xd0\x0a\x03").is_some(),
        "PNP0A03"
    );
    assert!(find(aml, b"\x08_SEG\x00").is_some(), "_SEG 0");
    assert!(find(aml, b"\x08_BBN\x00").is_some(), "_BBN 0");
    // Name(\_S5_, Package(4) {5, 5, 0, 0}).
    assert!(
        find(aml, b"\x08\\_S5_\x12\x08\x04\x0a\x05\x0a\x05\x00\x00").is_some(),
        "_S5_"
    );
    // _CRS: bus 0-255, IO 0xcf8/8, the 32-bit MMIO window.
    let crs = find(aml, b"\x08_CRS\x11").expect("_CRS buffer");
    let res = &aml[crs..];
    assert!(
        find(res, &[0x88, 0x0d, 0, 2, 0x0c, 0, 0, 0, 0, 0, 0xff, 0]).is_some(),
        "bus range"
    );
    assert!(
        find(res, &[0x47, 1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8]).is_some(),
        "IO 0xcf8"
    );
    let mut mem32 = vec![0x87, 0x17, 0, 0, 0x0c, 1, 0, 0, 0, 0];
    mem32.extend_from_slice(&(PCI_MMIO_START as u32).to_le_bytes());
    mem32.extend_from_slice(&((PCI_MMIO_START + PCI_MMIO_SIZE - 1) as u32).to_le_bytes());
    assert!(find(res, &mem32).is_some(), "MMIO window");

    // ACPICA's disassembler, when installed, must read it back without complaint.
    let Ok(dir) = tempfile::tempdir() else { return };
    let dat = dir.path().join("dsdt.dat");
    std::fs::write(&dat, dsdt).unwrap();
    match Command::new("iasl").arg("-d").arg(&dat).output() {
        Ok(o) => {
            assert!(
                o.status.success(),
                "iasl -d: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let dsl = std::fs::read_to_string(dir.path().join("dsdt.dsl")).unwrap();
            for want in [
                "Device (PCI0)",
                "EisaId (\"PNP0A08\")",
                "WordBusNumber",
                "Name (\\_S5",
            ] {
                assert!(dsl.contains(want), "{want} missing from:\n{dsl}");
            }
        }
        Err(_) => eprintln!("note: iasl (acpica-tools) not installed; DSDT not disassembled"),
    }
}

#[test]
fn a_command_line_longer_than_the_kernel_allows_is_refused() {
    let Some(a) = artifacts("a_command_line_longer_than_the_kernel_allows_is_refused") else {
        return;
    };
    let mem = memory::create(256 << 20).unwrap();
    let cfg = BootConfig {
        kernel: a.kernel.clone(),
        initramfs: None,
        cmdline: "x".repeat(4000),
        entry: EntryChoice::Auto,
    };
    assert!(matches!(boot::load(&mem, &cfg), Err(BootError::Cmdline(_))));
}

#[test]
fn pvh_start_info_carries_the_memory_map_cmdline_initramfs_and_rsdp() {
    let hello = common::guest("hello");
    let dir = tempfile::tempdir().unwrap();
    let initrd: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let initrd_path = dir.path().join("initrd");
    std::fs::write(&initrd_path, &initrd).unwrap();
    let mem_size = 5u64 << 30;
    let mem = memory::create(mem_size).unwrap();
    let cmdline = "paddock.test=pvh console=ttyS0";
    let cfg = BootConfig {
        kernel: hello.clone(),
        initramfs: Some(initrd_path),
        cmdline: cmdline.into(),
        entry: EntryChoice::Pvh,
    };
    let entry = boot::load_smp(&mem, &cfg, 2).unwrap();
    let Entry::Pvh { rip, start_info } = entry else {
        panic!("{entry:?}")
    };
    assert_eq!(start_info, PVH_INFO_ADDR);
    assert!(rip >= 0x10_0000, "PVH entry {rip:#x}");

    let si = bytes(&mem, PVH_INFO_ADDR, 56);
    assert_eq!(u32_at(&si, 0), 0x336e_c578, "magic");
    assert_eq!(u32_at(&si, 4), 1, "version");
    // Command line.
    let cmd = u64_at(&si, 24);
    let mut want = cmdline.as_bytes().to_vec();
    want.push(0);
    assert_eq!(bytes(&mem, cmd, want.len()), want);
    // RSDP.
    let rsdp = u64_at(&si, 32);
    assert_eq!(rsdp, ACPI_RSDP_ADDR);
    assert_eq!(bytes(&mem, rsdp, 8), b"RSD PTR ");
    // Memory map: same rules as e820, and the same entries.
    let (map_at, n) = (u64_at(&si, 40), u32_at(&si, 48) as usize);
    let raw = bytes(&mem, map_at, n * 24);
    let map: Vec<_> = (0..n)
        .map(|i| {
            (
                u64_at(&raw, i * 24),
                u64_at(&raw, i * 24 + 8),
                u32_at(&raw, i * 24 + 16),
            )
        })
        .collect();
    check_memory_map(&map, mem_size);
    assert_eq!(map, boot::e820_map(&mem));
    assert!(
        map.iter().any(|&(s, _, t)| t == 1 && s == MMIO_HOLE_END),
        "RAM above 4 GiB"
    );
    // Modules.
    assert_eq!(u32_at(&si, 12), 1, "nr_modules");
    let m = bytes(&mem, u64_at(&si, 16), 32);
    let (paddr, size) = (u64_at(&m, 0), u64_at(&m, 8));
    assert_eq!(size, initrd.len() as u64);
    assert!(in_ram(&map, paddr, size), "module not in RAM");
    assert_eq!(bytes(&mem, paddr, initrd.len()), initrd);
    // The structures themselves do not overlap the module.
    assert!(paddr >= 0x10_0000);
    // MP and ACPI tables describe two vCPUs here too.
    check_mp_table(&mem, 2);
    check_acpi(&mem, 2, &map);
}

/// Whether /dev/kvm here is PVM's (which cannot run stock Linux kernels).
fn kvm_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

#[test]
fn debian_kernel_boots_to_init_under_paddock_vmm() {
    let name = "debian_kernel_boots_to_init_under_paddock_vmm";
    if !common::kvm_available(name) {
        return;
    }
    if kvm_is_pvm() {
        eprintln!("SKIP {name}: /dev/kvm is PVM (kvm_pvm loaded), which cannot run stock Linux");
        return;
    }
    let Some(a) = artifacts(name) else { return };
    let o = common::vmm(&[
        "--kernel",
        a.kernel.to_str().unwrap(),
        "--initramfs",
        a.initramfs.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 reboot=k panic=-1 paddock.poweroff=1",
        "--memory",
        "512M",
        "--cpus",
        "2",
    ]);
    let text = common::out(&o);
    assert!(
        text.contains("paddock-initramfs: ready") && text.contains("cpus=2"),
        "{text}{}",
        common::err(&o)
    );
    assert_eq!(o.status.code(), Some(0), "{text}{}", common::err(&o));
}
