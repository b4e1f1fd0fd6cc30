//! Unit tests of the qcow2 driver on memory storage.

use super::create::create_in;
use super::*;
use crate::storage::MemStorage;

fn mem_image(opts: &[(&str, &str)], size: u64) -> Qcow2Image {
    let mut o = CreateOptions::sized(size);
    for (k, v) in opts {
        o.options.insert(k.to_string(), v.to_string());
    }
    create_in(Box::new(MemStorage::new(Vec::new(), 1 << 30)), &o).unwrap()
}

#[test]
fn write_read_round_trip() {
    let img = mem_image(&[], 8 << 20);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    img.write_at(&data, 12345).unwrap();
    let mut back = vec![0u8; data.len()];
    img.read_at(&mut back, 12345).unwrap();
    assert_eq!(back, data);
    let r = img.check(false).unwrap();
    assert!(r.is_clean() && r.leaks == 0, "{r:?}");
}
