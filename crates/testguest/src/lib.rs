//! Runtime for Paddock's freestanding x86_64 test guests.
//!
//! A test guest is a static ELF linked at 16 MiB (`guest.ld`) with two ways in:
//! - `_start64`, the ELF entry point, for VMMs that enter in 64-bit long mode with their own
//!   page tables and `rsi` pointing at Linux `boot_params` (paddock-vmm, Firecracker);
//! - `_start32`, named by a PVH ELF note, for VMMs that enter in 32-bit protected mode with
//!   paging off and `ebx` pointing at an `hvm_start_info` (Cloud Hypervisor, QEMU).
//!
//! Both paths load the guest's own GDT and identity page tables (8 GiB of 2 MiB pages, user
//! accessible), enable SSE, and then drop to ring 3 with IOPL 3: under nested
//! KVM (PVM) guest ring-0 code is emulated slowly, while ring-3 code runs at full speed and can
//! still do port I/O. The guest reports on COM1 and ends the VM by writing its status to the
//! debug-exit port 0xf4 (paddock-vmm `--debug-exit`, QEMU `isa-debug-exit`).
//!
//! `.bss` is not cleared by the guest: ELF loaders (and the PVH boot path) place the image in
//! fresh, zeroed guest memory and zero everything past each segment's file size, and clearing
//! ~150 KiB with `rep stosb` in ring 0 costs tens of milliseconds where ring 0 is emulated.
#![no_std]
#![allow(clippy::missing_safety_doc)]

pub mod boot;
pub mod io;
pub mod pci;
pub mod virtio;

use core::arch::global_asm;

pub use boot::BootInfo;

/// Where the runtime's page tables live (the start of the `.pt` section, see `guest.ld`).
pub const PT_BASE: u64 = 0x100_0000;
/// GiB of memory identity-mapped by the runtime's page tables.
pub const MAPPED_GIB: usize = 8;

const PAGE: usize = 4096;
const ENTRIES: usize = 512;

/// The runtime's page tables: PML4, one PDPT, and a page directory per mapped GiB.
#[repr(C, align(4096))]
pub struct PageTables {
    pml4: [u64; ENTRIES],
    pdpt: [u64; ENTRIES],
    pd: [[u64; ENTRIES]; MAPPED_GIB],
}

/// Present, writable, user.
const TABLE_FLAGS: u64 = 0x7;
/// Present, writable, user, 2 MiB page.
const LARGE_FLAGS: u64 = 0x87;

impl PageTables {
    const fn build() -> Self {
        let mut t = PageTables {
            pml4: [0; ENTRIES],
            pdpt: [0; ENTRIES],
            pd: [[0; ENTRIES]; MAPPED_GIB],
        };
        t.pml4[0] = (PT_BASE + PAGE as u64) | TABLE_FLAGS;
        let mut g = 0;
        while g < MAPPED_GIB {
            t.pdpt[g] = (PT_BASE + ((2 + g) * PAGE) as u64) | TABLE_FLAGS;
            let mut i = 0;
            while i < ENTRIES {
                t.pd[g][i] = (((g * ENTRIES + i) as u64) << 21) | LARGE_FLAGS;
                i += 1;
            }
            g += 1;
        }
        t
    }
}

#[used]
#[link_section = ".pt"]
static PAGE_TABLES: PageTables = PageTables::build();

/// GDT: null, kernel code64 (0x08), kernel data (0x10), user data (0x18), user code64 (0x20),
/// and a 16-byte TSS descriptor (0x28) filled in at run time.
#[used]
#[no_mangle]
static mut GUEST_GDT: [u64; 7] = [
    0,
    0x00af_9a00_0000_ffff,
    0x00cf_9200_0000_ffff,
    0x00cf_f200_0000_ffff,
    0x00af_fa00_0000_ffff,
    0,
    0,
];

/// A 64-bit TSS followed by an all-zero I/O permission bitmap: every port is allowed from
/// ring 3. (IOPL 3 is set as well, but nested hypervisors such as PVM check the bitmap.)
#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
    iomap: [u8; 8192],
    iomap_end: u8,
}

static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: 104,
    iomap: [0; 8192],
    iomap_end: 0xff,
};

global_asm!(
    r#"
    .section .text.entry, "ax"
    .code32
    .global _start32
_start32:
    cli
    mov edi, ebx
    mov esi, 2
    lgdt [{gdtp}]
    mov eax, cr4
    or eax, 0x620
    mov cr4, eax
    mov eax, {pt}
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    and eax, 0xFFFFFFFB
    or eax, 0x80000003
    mov cr0, eax
    .byte 0xea
    .long 2f
    .word 0x08
    .code64
    .global _start64
_start64:
    cli
    mov rdi, rsi
    mov esi, 1
    lgdt [rip + {gdtp}]
    mov rax, {pt}
    mov cr3, rax
    mov rax, cr4
    or rax, 0x620
    mov cr4, rax
    mov rax, cr0
    and rax, 0xFFFFFFFFFFFFFFFB
    or rax, 2
    mov cr0, rax
    push 0x08
    lea rax, [rip + 2f]
    push rax
    retfq
2:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov r12d, edi
    mov r13d, esi
    lea rsp, [rip + {kstack} + {kstack_size}]
    mov rdi, r12
    mov rsi, r13
    call {enter}
    ud2

    .section .note.pvh, "a"
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long _start32
    "#,
    gdtp = sym GDT_POINTER,
    pt = const PT_BASE,
    kstack = sym KERNEL_STACK,
    kstack_size = const STACK_SIZE,
    enter = sym enter_user,
);

#[repr(C, packed)]
struct GdtPointer {
    limit: u16,
    base: *const [u64; 7],
}

// SAFETY: the pointer is to an immutable static; it is only read by `lgdt`.
unsafe impl Sync for GdtPointer {}

#[used]
#[no_mangle]
static GDT_POINTER: GdtPointer = GdtPointer {
    limit: 7 * 8 - 1,
    base: core::ptr::addr_of!(GUEST_GDT),
};

const STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

static mut KERNEL_STACK: Stack = Stack([0; STACK_SIZE]);
static mut USER_STACK: Stack = Stack([0; STACK_SIZE]);

/// Ring 0's last step: leave for ring 3 with IOPL 3 and interrupts off.
#[no_mangle]
unsafe extern "C" fn enter_user(info: u64, kind: u64) -> ! {
    // SAFETY: single-threaded ring-0 start-up code; nothing else touches the GDT or TSS yet.
    unsafe {
        let tss = core::ptr::addr_of_mut!(TSS);
        (*tss).rsp[0] = core::ptr::addr_of_mut!(KERNEL_STACK) as u64 + STACK_SIZE as u64;
        let base = tss as u64;
        let limit = core::mem::size_of::<Tss>() as u64 - 1;
        let gdt = core::ptr::addr_of_mut!(GUEST_GDT);
        (*gdt)[5] = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        (*gdt)[6] = base >> 32;
        core::arch::asm!("ltr {0:x}", in(reg) 0x28u16, options(nostack));
    }
    // As if called: the ABI wants rsp + 8 to be 16-byte aligned at function entry.
    let user_rsp = core::ptr::addr_of_mut!(USER_STACK) as u64 + STACK_SIZE as u64 - 8;
    // SAFETY: builds an iretq frame to ring 3 (CS 0x23, SS 0x1b) with IOPL 3; the page tables
    // map everything user-accessible, and `user_main` never returns.
    unsafe {
        core::arch::asm!(
            "pushfq",
            "or qword ptr [rsp], 0x3000",
            "popfq",
            "push 0x1b",
            "push {rsp}",
            "push 0x3002",
            "push 0x23",
            "push {rip}",
            "iretq",
            rsp = in(reg) user_rsp,
            rip = in(reg) user_main as *const () as usize,
            in("rdi") info,
            in("rsi") kind,
            options(noreturn)
        )
    }
}

extern "Rust" {
    fn guest_main(boot: &BootInfo) -> u32;
}

extern "C" fn user_main(info: u64, kind: u64) -> ! {
    let boot = BootInfo::parse(info, kind);
    // SAFETY: `guest_main` is defined by the `entry!` macro of the guest binary.
    let status = unsafe { guest_main(&boot) };
    io::exit(status)
}

/// Declares the guest's main function: `fn(&BootInfo) -> u32`, the exit status.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        fn guest_main(boot: &$crate::BootInfo) -> u32 {
            $main(boot)
        }
        #[panic_handler]
        fn panic(info: &core::panic::PanicInfo) -> ! {
            $crate::println!("PANIC: {}", info);
            $crate::io::exit(101)
        }
    };
}

/// `memcpy` for the freestanding link (the compiler emits calls to it).
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees non-overlapping valid ranges of `n` bytes.
    unsafe {
        core::arch::asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _, options(nostack));
    }
    dst
}

/// `memmove` for the freestanding link.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        // SAFETY: forward copy is safe when dst is before src or the ranges do not overlap.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: backward copy with the direction flag set, restored afterwards.
    unsafe {
        core::arch::asm!(
            "std", "rep movsb", "cld",
            inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _, inout("rcx") n => _,
            options(nostack)
        );
    }
    dst
}

/// `memset` for the freestanding link.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees a valid range of `n` bytes.
    unsafe {
        core::arch::asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") c as u8, options(nostack));
    }
    dst
}

/// `memcmp` for the freestanding link.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees valid ranges of `n` bytes.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// `bcmp` for the freestanding link.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
