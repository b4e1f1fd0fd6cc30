//! Starts every application processor and has each report on COM1. The BSP (in ring 3, with
//! the LAPIC page user-accessible) copies a trampoline below 1 MiB, then sends INIT, SIPI,
//! SIPI to every enabled AP that the VMM's MP table lists. Each AP goes from real mode to
//! protected mode (paging off) to long mode on the runtime's page tables, takes a stack, prints
//! `CPU n up` under a spinlock shared with the BSP, counts itself, and halts. The BSP waits
//! (bounded) for all of them.
#![no_std]
#![no_main]

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use paddock_testguest::{entry, println, BootInfo, PT_BASE};

entry!(main);

/// Where the trampoline runs: SIPI vector 0x08.
const TRAMP_BASE: u64 = 0x8000;
const LAPIC: u64 = 0xfee0_0000;
const MAX_CPUS: usize = 64;
const AP_STACK: usize = 16 * 1024;

global_asm!(
    r#"
    .section .text.smp_tramp, "ax"
    .global smp_tramp_start
    .global smp_tramp_end
    .global smp_tramp_entry
    .global smp_tramp_stacks
    .global smp_tramp_next
    .code16
smp_tramp_start:
    cli
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (smp_tramp_gdtp - smp_tramp_start)
    movl %cr0, %eax
    andl $0x9ffffffb, %eax
    orl $0x3, %eax
    movl %eax, %cr0
    .byte 0x66, 0xea
    .long {base} + (smp_tramp32 - smp_tramp_start)
    .word 0x08
    .code32
smp_tramp32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $0x620, %eax
    movl %eax, %cr4
    movl ${pt}, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    .byte 0xea
    .long {base} + (smp_tramp64 - smp_tramp_start)
    .word 0x18
    .code64
smp_tramp64:
    movl $1, %eax
    lock xaddl %eax, ({base} + (smp_tramp_next - smp_tramp_start))
    movq ({base} + (smp_tramp_stacks - smp_tramp_start)), %rsp
    leal 1(%rax), %ecx
    shlq $14, %rcx
    addq %rcx, %rsp
    movl %eax, %edi
    movq ({base} + (smp_tramp_entry - smp_tramp_start)), %rax
    callq *%rax
    ud2
    .balign 8
smp_tramp_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
smp_tramp_gdtp:
    .word 31
    .long {base} + (smp_tramp_gdt - smp_tramp_start)
    .balign 8
smp_tramp_entry:
    .quad 0
smp_tramp_stacks:
    .quad 0
smp_tramp_next:
    .long 0
smp_tramp_end:
    "#,
    base = const TRAMP_BASE,
    pt = const PT_BASE,
    options(att_syntax),
);

extern "C" {
    static smp_tramp_start: u8;
    static smp_tramp_end: u8;
    static smp_tramp_entry: u8;
    static smp_tramp_stacks: u8;
    static smp_tramp_next: u8;
}

#[repr(C, align(16))]
struct Stacks([[u8; AP_STACK]; MAX_CPUS]);

static mut AP_STACKS: Stacks = Stacks([[0; AP_STACK]; MAX_CPUS]);
/// APs that reported.
static UP: AtomicU32 = AtomicU32::new(0);
/// Serialises COM1 between all CPUs.
static COM1_LOCK: AtomicBool = AtomicBool::new(false);

fn locked(f: impl FnOnce()) {
    while COM1_LOCK
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    f();
    COM1_LOCK.store(false, Ordering::Release);
}

/// This CPU's APIC ID, from its LAPIC (CPUID under a nested hypervisor may show the host's).
fn apic_id() -> u32 {
    lapic_read(0x20) >> 24
}

fn lapic_write(reg: u64, v: u32) {
    // SAFETY: the LAPIC page is identity-mapped; the access exits to KVM's in-kernel LAPIC.
    unsafe { core::ptr::write_volatile((LAPIC + reg) as *mut u32, v) }
}

fn lapic_read(reg: u64) -> u32 {
    // SAFETY: as for `lapic_write`.
    unsafe { core::ptr::read_volatile((LAPIC + reg) as *const u32) }
}

/// Sends an IPI `cmd` (ICR low) to APIC ID `dest` and waits until it is delivered.
fn ipi(dest: u32, cmd: u32) -> bool {
    lapic_write(0x310, dest << 24);
    lapic_write(0x300, cmd);
    (0..10_000_000).any(|_| lapic_read(0x300) & (1 << 12) == 0)
}

/// Where each AP lands in long mode (ring 0), with its own stack.
extern "C" fn ap_main(index: u32) -> ! {
    let id = apic_id();
    locked(|| println!("CPU {id} up (AP {index})"));
    UP.fetch_add(1, Ordering::SeqCst);
    loop {
        // SAFETY: interrupts stay off; the AP sleeps for good.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: the address is in identity-mapped low RAM or the BIOS area the VMM filled.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// APIC IDs of the enabled processors in the MP table (floating pointer in the EBDA or the
/// BIOS area); returns how many were found.
fn mp_cpus(ids: &mut [u32; MAX_CPUS]) -> Option<usize> {
    let fp = (0x9_fc00..0xa_0000u64)
        .chain(0xf_0000..0x10_0000)
        .step_by(16)
        .find(|&a| read::<[u8; 4]>(a) == *b"_MP_")?;
    let table = read::<u32>(fp + 4) as u64;
    if table == 0 || read::<[u8; 4]>(table) != *b"PCMP" {
        return None;
    }
    let entries = read::<u16>(table + 34);
    let (mut at, mut n) = (table + 44, 0);
    for _ in 0..entries {
        match read::<u8>(at) {
            0 => {
                if read::<u8>(at + 3) & 1 != 0 && n < MAX_CPUS {
                    ids[n] = read::<u8>(at + 1) as u32;
                    n += 1;
                }
                at += 20;
            }
            1..=4 => at += 8,
            _ => return None,
        }
    }
    Some(n)
}

fn main(_boot: &BootInfo) -> u32 {
    let mut ids = [0u32; MAX_CPUS];
    let Some(count) = mp_cpus(&mut ids) else {
        println!("smp: FAILED: no MP table");
        return 1;
    };
    let bsp = apic_id();
    locked(|| println!("smp: {count} CPUs in the MP table; CPU {bsp} up (BSP)"));
    // SAFETY: the trampoline symbols delimit bytes of this image; the copy goes to free low
    // RAM (below the EBDA, away from the VMM's boot structures the guest no longer uses).
    unsafe {
        let start = core::ptr::addr_of!(smp_tramp_start);
        let len = core::ptr::addr_of!(smp_tramp_end) as usize - start as usize;
        let dst = TRAMP_BASE as *mut u8;
        for i in 0..len {
            core::ptr::write_volatile(dst.add(i), core::ptr::read(start.add(i)));
        }
        let field =
            |sym: *const u8| (TRAMP_BASE as usize + (sym as usize - start as usize)) as *mut u64;
        core::ptr::write_volatile(
            field(core::ptr::addr_of!(smp_tramp_entry)),
            ap_main as *const () as u64,
        );
        core::ptr::write_volatile(
            field(core::ptr::addr_of!(smp_tramp_stacks)),
            core::ptr::addr_of!(AP_STACKS) as u64,
        );
        core::ptr::write_volatile(field(core::ptr::addr_of!(smp_tramp_next)) as *mut u32, 0);
    }
    // Software-enable the LAPIC (spurious vector 0xff).
    lapic_write(0xf0, lapic_read(0xf0) | 0x1ff);
    let vector = (TRAMP_BASE >> 12) as u32;
    for &id in ids[..count].iter().filter(|&&id| id != bsp) {
        let sent = ipi(id, 0x4500) && ipi(id, 0x4600 | vector) && ipi(id, 0x4600 | vector);
        if !sent {
            locked(|| println!("smp: IPIs to APIC ID {id} were not delivered"));
        }
    }
    let want = count as u32 - 1;
    let mut spins = 0u64;
    while UP.load(Ordering::SeqCst) < want && spins < 20_000_000_000 {
        core::hint::spin_loop();
        spins += 1;
    }
    let up = UP.load(Ordering::SeqCst);
    if up != want {
        locked(|| println!("smp: FAILED: {up} of {want} APs came up"));
        return 1;
    }
    locked(|| println!("SMP PASS: {count} CPUs up"));
    0
}
