//! Asynchronous VM teardown.
//!
//! When the last reference to a KVM VM goes away the host kernel destroys it (in-kernel
//! irqchip, PIT, memory slots); under nested KVM (PVM) that takes 15–30 ms, and it happens
//! inside the VMM's own exit, before whoever waits for the VMM sees it end. So, before any
//! vCPU runs, [`start`] clones a tiny helper process that shares the VMM's descriptor table
//! (`CLONE_FILES`) and memory (`CLONE_VM`, so no page tables are copied) and keeps one
//! duplicate of the VM descriptor in that table. At the very end [`finish`] closes every other
//! descriptor (stdio included, so readers see end-of-file; sockets and images were already
//! closed, flushed and removed by then) and the VMM exits; the kernel then kills the helper
//! (`PR_SET_PDEATHSIG`), and the VM is destroyed in the helper's exit, after the VMM's parent
//! has seen the VMM end. The helper blocks every signal it can, runs under a seccomp filter
//! that allows nothing but waiting and exiting, and only makes raw system calls.
//!
//! If the helper cannot be started, or dies early, nothing changes but the timing: the VMM
//! then destroys the VM itself, as it did before.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

/// The duplicate of the VM descriptor the helper keeps alive; -1 when there is none.
static KEEP: AtomicI32 = AtomicI32::new(-1);

/// Stack of the helper (shared memory: it must outlive the helper, so it is never freed).
const STACK: usize = 64 * 1024;

/// What the helper needs, prepared by the parent (the helper may not allocate).
struct HelperArgs {
    parent: libc::pid_t,
    filter: libc::sock_fprog,
}

/// Starts the helper that will destroy the VM behind `vm_fd` after this process exits.
/// Call it once, before the vCPUs start and before the main thread's seccomp filter.
pub fn start(vm_fd: RawFd) -> std::io::Result<()> {
    let program: &'static BpfProgram = Box::leak(Box::new(helper_filter()?));
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor this process owns; the duplicate is never
    // closed by this process before `finish`.
    let keep = unsafe { libc::fcntl(vm_fd, libc::F_DUPFD_CLOEXEC, 0) };
    if keep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let args: &'static HelperArgs = Box::leak(Box::new(HelperArgs {
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        filter: libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_ptr() as *mut libc::sock_filter,
        },
    }));
    // SAFETY: an anonymous private mapping; checked below.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        // SAFETY: closes the duplicate made above.
        unsafe { libc::close(keep) };
        return Err(e);
    }
    // SAFETY: the helper runs `helper` on its own stack (the top of the mapping above, which
    // is never unmapped) with `args`, which is leaked; it shares memory and descriptors but
    // makes only raw system calls and touches nothing of the parent's.
    let pid = unsafe {
        libc::clone(
            helper,
            (stack as *mut u8).add(STACK) as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_FILES,
            args as *const HelperArgs as *mut libc::c_void,
        )
    };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: closes the duplicate made above; the stack is left mapped (64 KiB, untouched).
        unsafe { libc::close(keep) };
        return Err(e);
    }
    KEEP.store(keep, Ordering::SeqCst);
    Ok(())
}

/// The helper's filter: waiting and exiting only; anything else kills it.
fn helper_filter() -> std::io::Result<BpfProgram> {
    let bad = |e: String| std::io::Error::other(format!("teardown helper filter: {e}"));
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| bad(e.to_string()))?;
    let rules = [
        libc::SYS_pause,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_rt_sigreturn,
    ]
    .into_iter()
    .map(|s| (s, vec![]))
    .collect();
    SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .and_then(BpfProgram::try_from)
    .map_err(|e| bad(e.to_string()))
}

/// The helper process: blocks signals, dies with its parent, confines itself, and waits.
extern "C" fn helper(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the leaked `HelperArgs` of `start`. Only raw system calls follow: no
    // allocation, locks or thread-local state, since memory is shared with the parent. None
    // of these calls fails with valid arguments, so `syscall` never writes `errno`.
    unsafe {
        let args = &*(arg as *const HelperArgs);
        let all: u64 = !0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            &all as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
        );
        // The parent may have died before the line above: then nothing would kill us.
        if libc::syscall(libc::SYS_getppid) as libc::pid_t != args.parent {
            libc::syscall(libc::SYS_exit, 0);
        }
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_NO_NEW_PRIVS,
            1u64,
            0u64,
            0u64,
            0u64,
        );
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0u64,
            &args.filter as *const libc::sock_fprog,
        );
        loop {
            libc::syscall(libc::SYS_pause);
        }
    }
}

/// Closes every descriptor but the helper's (flushing stdout first), so that nothing but the
/// VM outlives this process; call it just before exiting. Does nothing without a helper.
pub fn finish() {
    let keep = KEEP.load(Ordering::SeqCst);
    if keep < 0 {
        return;
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: every owner of these descriptors has been dropped (the VM has ended and been
    // torn down); the process exits right after this.
    unsafe {
        if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (keep - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
    }
}
