use super::*;
use crate::pci::config::{ConfigSpace, PciIds, BAR0, COMMAND};

struct Dummy {
    config: ConfigSpace,
    moves: Vec<(usize, Option<u64>, Option<u64>)>,
    writes: Vec<(usize, u64, Vec<u8>)>,
}

impl Dummy {
    fn new(bar_size: u32) -> Arc<Mutex<Dummy>> {
        let mut config = ConfigSpace::new(PciIds {
            vendor: 0x1af4,
            device: 0x1042,
            class: 0x018000,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        config.add_mem32_bar(0, bar_size);
        Arc::new(Mutex::new(Dummy {
            config,
            moves: vec![],
            writes: vec![],
        }))
    }
}

impl PciDevice for Dummy {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill((bar as u8) << 4 | offset as u8);
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.writes.push((bar, offset, data.to_vec()));
    }
    fn bar_moved(&mut self, bar: usize, old: Option<u64>, new: Option<u64>) {
        self.moves.push((bar, old, new));
    }
}

fn cf8(slot: u8, reg: u8) -> [u8; 4] {
    (0x8000_0000u32 | (slot as u32) << 11 | reg as u32).to_le_bytes()
}

#[test]
fn both_mechanisms_see_the_host_bridge_and_devices() {
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let d1 = Dummy::new(0x8000);
    let d2 = Dummy::new(0x1000);
    assert_eq!(root.lock().unwrap().add_device(d1.clone()).unwrap(), 1);
    assert_eq!(root.lock().unwrap().add_device(d2.clone()).unwrap(), 2);
    let mut io = PciConfigIo(root.clone());
    let mut ecam = PciConfigMmio(root.clone());
    for slot in 0..4u8 {
        io.write(0, &cf8(slot, 0));
        let mut a = [0u8; 4];
        io.read(4, &mut a);
        let mut b = [0u8; 4];
        ecam.read((slot as u64) << 15, &mut b);
        assert_eq!(a, b, "slot {slot}");
        let expect: u32 = match slot {
            0 => 0x0d57_8086,
            1 | 2 => 0x1042_1af4,
            _ => 0xffff_ffff,
        };
        assert_eq!(u32::from_le_bytes(a), expect);
    }
    // Byte access through 0xcfe reads the upper half of the dword.
    io.write(0, &cf8(1, 0));
    let mut w = [0u8; 2];
    io.read(6, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x1042);
    // Function 1, other buses and a disabled address decode to nothing.
    let mut b = [0u8; 4];
    ecam.read(1 << 15 | 1 << 12, &mut b);
    assert_eq!(b, [0xff; 4]);
    ecam.read(1 << 20, &mut b);
    assert_eq!(b, [0xff; 4]);
    io.write(0, &(1u32 << 11).to_le_bytes());
    io.read(4, &mut b);
    assert_eq!(b, [0xff; 4]);
    // BARs were allocated in the window, aligned to their size.
    assert_eq!(d1.lock().unwrap().config.bar_addr(0), PCI_MMIO_START);
    assert_eq!(
        d2.lock().unwrap().config.bar_addr(0),
        PCI_MMIO_START + 0x8000
    );
}

#[test]
fn bars_decode_with_memory_enabled_and_follow_moves() {
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let d = Dummy::new(0x1000);
    root.lock().unwrap().add_device(d.clone()).unwrap();
    let mut ecam = PciConfigMmio(root.clone());
    let mut win = PciMmioWindow(root.clone());
    let mut b = [0u8; 1];
    win.read(0x10, &mut b);
    assert_eq!(
        b[0], 0xff,
        "no decoding before the command register enables it"
    );
    ecam.write(1 << 15 | COMMAND as u64, &COMMAND_MEMORY.to_le_bytes());
    win.read(0x10, &mut b);
    assert_eq!(b[0], 0x10);
    // Sizing: all-ones reads back the mask, and the BAR stops decoding meanwhile.
    ecam.write(1 << 15 | BAR0 as u64, &[0xff; 4]);
    let mut m = [0u8; 4];
    ecam.read(1 << 15 | BAR0 as u64, &mut m);
    assert_eq!(u32::from_le_bytes(m), 0xffff_f000);
    win.read(0x10, &mut b);
    assert_eq!(b[0], 0xff);
    // Move it 1 MiB up.
    let new = PCI_MMIO_START + 0x10_0000;
    ecam.write(1 << 15 | BAR0 as u64, &(new as u32).to_le_bytes());
    win.read(0x10_0004, &mut b);
    assert_eq!(b[0], 0x04);
    win.write(0x10_0008, &[7]);
    win.read(0x10, &mut b);
    assert_eq!(b[0], 0xff);
    let dev = d.lock().unwrap();
    assert_eq!(dev.writes, vec![(0, 8, vec![7])]);
    assert_eq!(
        dev.moves,
        vec![
            (0, None, Some(PCI_MMIO_START)),
            (0, Some(PCI_MMIO_START), None),
            (0, None, Some(new)),
        ]
    );
}

#[test]
fn overlapping_bars_do_not_decode() {
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let (a, b) = (Dummy::new(0x1000), Dummy::new(0x1000));
    root.lock().unwrap().add_device(a.clone()).unwrap();
    root.lock().unwrap().add_device(b.clone()).unwrap();
    let mut ecam = PciConfigMmio(root.clone());
    for s in 1..=2u64 {
        ecam.write(s << 15 | COMMAND as u64, &COMMAND_MEMORY.to_le_bytes());
    }
    ecam.write(
        2 << 15 | BAR0 as u64,
        &(PCI_MMIO_START as u32).to_le_bytes(),
    );
    assert_eq!(
        b.lock().unwrap().moves.last(),
        Some(&(0, Some(PCI_MMIO_START + 0x1000), None))
    );
    let mut x = [0u8; 1];
    PciMmioWindow(root.clone()).read(0, &mut x);
    assert_eq!(x[0], 0x00, "the first device keeps its range");
}

#[test]
fn the_window_fills_up_and_slots_run_out() {
    let mut root = PciRoot::new();
    assert!(matches!(
        root.add_device(Dummy::new(1 << 31)),
        Err(PciError::NoBarSpace(_))
    ));
    for _ in 1..SLOTS {
        root.add_device(Dummy::new(16)).unwrap();
    }
    assert_eq!(root.add_device(Dummy::new(16)), Err(PciError::NoSlot));
}
