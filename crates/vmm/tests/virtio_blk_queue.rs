//! virtio-blk with deep queues under real KVM: the `blkbench` guest keeps up to 128 requests
//! in flight on a 256-entry queue, with VIRTIO_RING_F_EVENT_IDX and with the ring flags, and
//! checks that every sector it reads is the one it asked for, also when each request arrives
//! split over many descriptors (one vectored read per request).

mod common;

use common::*;

/// A disk whose every 512-byte sector starts with its own number.
fn numbered_disk(dir: &std::path::Path, mib: usize) -> String {
    let mut d = vec![0xa5u8; mib << 20];
    for (s, c) in d.chunks_mut(512).enumerate() {
        c[..8].copy_from_slice(&(s as u64).to_le_bytes());
    }
    let path = dir.join("disk.raw");
    std::fs::write(&path, &d).unwrap();
    path.to_str().unwrap().to_string()
}

fn bench(disk: &str, params: &str) -> String {
    let o = vmm(&[
        "--kernel",
        guest("blkbench").to_str().unwrap(),
        "--memory",
        "128M",
        "--debug-exit",
        "--disk",
        &format!("path={disk},format=raw"),
        "--cmdline",
        &format!("blkbench.check=1 {params}"),
    ]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{params}: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn deep_queues_read_the_right_sectors_with_and_without_event_idx() {
    if !kvm_available("deep_queues_read_the_right_sectors_with_and_without_event_idx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = numbered_disk(dir.path(), 8);
    for (params, event_idx, sectors) in [
        ("blkbench.rand=1 blkbench.mib=2 blkbench.qd=128", 1, 4096),
        (
            "blkbench.rand=1 blkbench.mib=2 blkbench.qd=128 blkbench.eventidx=0",
            0,
            4096,
        ),
        ("blkbench.mib=8 blkbench.qd=64", 1, 16384),
        // 128 KiB requests in 32 descriptors each (one vectored read per request).
        ("blkbench.mib=8 blkbench.qd=7 blkbench.segs=32", 1, 16384),
        // 4 KiB requests in 5 uneven pieces (819 bytes each, the last 820 with the status).
        (
            "blkbench.rand=1 blkbench.mib=2 blkbench.qd=32 blkbench.segs=5",
            1,
            4096,
        ),
        ("blkbench.mib=8 blkbench.qd=1 blkbench.eventidx=0", 0, 16384),
    ] {
        let out = bench(&disk, params);
        assert!(
            out.contains(&format!("event_idx={event_idx}")),
            "{params}: {out}"
        );
        assert!(
            out.contains(&format!("checked={sectors} ")),
            "{params}: {out}"
        );
    }
}
