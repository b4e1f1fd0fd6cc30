//! The test guests under real KVM: each boots, reports on COM1, and ends the VM with a status.

mod common;

use common::*;

#[test]
fn hello_guest_boots_on_the_64_bit_and_pvh_entries() {
    if !kvm_available("hello_guest_boots_on_the_64_bit_and_pvh_entries") {
        return;
    }
    let hello = guest("hello");
    for (entry, expect) in [("linux64", "entry=Linux64"), ("pvh", "entry=Pvh")] {
        let o = vmm(&[
            "--kernel",
            hello.to_str().unwrap(),
            "--memory",
            "128M",
            "--debug-exit",
            "--boot-entry",
            entry,
            "--cmdline",
            "paddock.test=hello",
        ]);
        let text = out(&o);
        assert_eq!(o.status.code(), Some(0), "{entry}: {text}{}", err(&o));
        assert!(
            text.contains("Hello from the Paddock test guest"),
            "{entry}: {text}"
        );
        assert!(text.contains(expect), "{entry}: {text}");
        assert!(
            text.contains("cmdline=paddock.test=hello"),
            "{entry}: {text}"
        );
        // 128 MiB minus the EBDA-to-1MiB gap: the guest saw the e820 / PVH memory map.
        assert!(text.contains("ram=127 MiB regions=2"), "{entry}: {text}");
    }
}

#[test]
fn a_triple_fault_ends_the_vm_with_a_nonzero_status_and_a_register_dump() {
    if !kvm_available("a_triple_fault_ends_the_vm_with_a_nonzero_status_and_a_register_dump") {
        return;
    }
    let o = vmm(&[
        "--kernel",
        guest("crash").to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}{}", out(&o), err(&o));
    assert!(err(&o).contains("triple fault"), "{}", err(&o));
    assert!(err(&o).contains("rip="), "{}", err(&o));
}

#[test]
fn bad_options_exit_2_and_name_the_option() {
    let o = vmm(&["--kernel", "/nonexistent", "--memory", "1K"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("--memory"), "{}", err(&o));
    let o = vmm(&["--kernel", "/nonexistent", "--serial", "carrier-pigeon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("--serial"), "{}", err(&o));
    let o = vmm(&["--kernel", "/nonexistent"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("/nonexistent"), "{}", err(&o));
}

#[test]
fn mem_guest_verifies_every_region_including_above_4_gib() {
    if !kvm_available("mem_guest_verifies_every_region_including_above_4_gib") {
        return;
    }
    // 3 GiB below the 32-bit hole and 256 MiB above 4 GiB.
    let o = vmm(&[
        "--kernel",
        guest("mem").to_str().unwrap(),
        "--memory",
        "3328M",
        "--debug-exit",
    ]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(&o));
    assert!(
        text.contains("MEM region 0x100000000-0x110000000 ok (256 MiB)"),
        "{text}"
    );
    assert!(text.contains("MEM PASS"), "{text}");
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let (era, yoe) = (y.div_euclid(400), y.rem_euclid(400));
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

#[test]
fn rtc_guest_reads_the_host_wall_clock_from_cmos() {
    if !kvm_available("rtc_guest_reads_the_host_wall_clock_from_cmos") {
        return;
    }
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let o = vmm(&[
        "--kernel",
        guest("rtc").to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
    ]);
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(&o));
    let line = text.lines().find(|l| l.starts_with("RTC ")).expect(&text);
    // "RTC 2026-11-25 23:59:58 mode=0x02 valid=1": BCD, 24-hour, valid.
    assert!(line.ends_with("mode=0x02 valid=1"), "{line}");
    let f: Vec<i64> = line[4..23]
        .split(['-', ' ', ':'])
        .map(|n| n.parse().unwrap())
        .collect();
    let t = days_from_civil(f[0], f[1], f[2]) * 86_400 + f[3] * 3600 + f[4] * 60 + f[5];
    assert!(
        (before - 1..=after + 1).contains(&t),
        "guest saw {t}, host {before}..{after}: {line}"
    );
}
