//! The allow-lists. Every thread gets the base list (memory, futexes, signal return, reads and
//! writes on descriptors it already holds, exit); each kind adds what its work needs, with
//! argument filters where the arguments say what the call does (`ioctl` request numbers,
//! `tgkill` signal, `prctl` option, `fcntl` command, `clone` flags).

use std::collections::BTreeMap;

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;
use crate::kvm::ioctl_numbers as kvm;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn allow(rules: &mut Rules, syscalls: &[i64]) {
    for &nr in syscalls {
        rules.insert(nr, Vec::new());
    }
}

/// Allows `nr` when argument `arg` (32-bit compare) equals one of `values`.
fn allow_arg(rules: &mut Rules, nr: i64, arg: u8, values: &[u64]) -> Result<(), BackendError> {
    let entry = rules.entry(nr).or_default();
    for &v in values {
        entry.push(SeccompRule::new(vec![SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            v,
        )?])?);
    }
    Ok(())
}

/// What every thread needs.
fn base() -> Result<Rules, BackendError> {
    let mut r = Rules::new();
    allow(
        &mut r,
        &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_mmap,
            libc::SYS_munmap,
            libc::SYS_mprotect,
            libc::SYS_mremap,
            libc::SYS_brk,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_getrandom,
            libc::SYS_clock_gettime,
            libc::SYS_gettid,
            libc::SYS_exit,
            libc::SYS_exit_group,
            // Refused with EACCES by the second filter (see `refused`); listed here so that
            // the refusal, not a kill, is the answer.
            libc::SYS_open,
            libc::SYS_openat,
        ],
    );
    // Thread stacks are released with MADV_DONTNEED; allocators return memory the same way.
    allow_arg(
        &mut r,
        libc::SYS_madvise,
        2,
        &[libc::MADV_DONTNEED as u64, libc::MADV_FREE as u64],
    )?;
    // Debug builds of std check a descriptor with F_GETFD before closing it.
    allow_arg(&mut r, libc::SYS_fcntl, 1, &[libc::F_GETFD as u64])?;
    Ok(r)
}

/// Calls every thread may make but that must fail (`EACCES`) rather than kill: opening files.
pub fn refused() -> Rules {
    let mut r = Rules::new();
    allow(
        &mut r,
        &[libc::SYS_open, libc::SYS_openat, libc::SYS_openat2],
    );
    r
}

/// File and event I/O of a device worker (disk images, eventfds, epoll).
fn worker_io(r: &mut Rules) -> Result<(), BackendError> {
    // Host backends: the TAP (read/write in the base set), the vsock Unix sockets (host
    // listeners, per-port connections), the console's input (poll on stdin).
    allow_arg(r, libc::SYS_socket, 0, &[libc::AF_UNIX as u64])?;
    // Non-blocking host sockets.
    allow_arg(r, libc::SYS_ioctl, 1, &[libc::FIONBIO])?;
    allow(
        r,
        &[
            libc::SYS_connect,
            libc::SYS_accept4,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_shutdown,
            libc::SYS_epoll_ctl,
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_lseek,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_fallocate,
            libc::SYS_ftruncate,
            libc::SYS_fstat,
            libc::SYS_statx,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
        ],
    );
    Ok(())
}

/// The request numbers of the KVM ioctls a running vCPU makes (its own exits, register
/// dumps, and the interrupt and doorbell set-up a guest driver triggers through PCI).
pub fn vcpu_ioctls() -> [u64; 6] {
    [
        kvm::KVM_RUN(),
        kvm::KVM_GET_REGS(),
        kvm::KVM_GET_SREGS(),
        kvm::KVM_IRQFD(),
        kvm::KVM_IOEVENTFD(),
        kvm::KVM_SET_GSI_ROUTING(),
    ]
    .map(u64::from)
}

/// The rules for `kind`.
pub fn for_kind(kind: ThreadKind) -> Result<Rules, BackendError> {
    let mut r = base()?;
    let kick = crate::vcpu::kick_signal() as u64;
    match kind {
        ThreadKind::Main | ThreadKind::Api => {
            allow(
                &mut r,
                &[
                    libc::SYS_accept4,
                    libc::SYS_epoll_ctl,
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                    libc::SYS_poll,
                    libc::SYS_ppoll,
                    libc::SYS_recvfrom,
                    libc::SYS_sendto,
                    libc::SYS_shutdown,
                    libc::SYS_getpid,
                    libc::SYS_unlink,
                    // Teardown flushes disk images (qcow2 writes its metadata back).
                    libc::SYS_pread64,
                    libc::SYS_pwrite64,
                    libc::SYS_lseek,
                    libc::SYS_fsync,
                    libc::SYS_fdatasync,
                    libc::SYS_ftruncate,
                    libc::SYS_fallocate,
                    // Asynchronous teardown closes every descriptor but the VM's at exit.
                    libc::SYS_close_range,
                ],
            );
            // Kicking vCPU threads (pause, stop) and nothing else.
            allow_arg(&mut r, libc::SYS_tgkill, 2, &[kick])?;
            allow_arg(&mut r, libc::SYS_ioctl, 1, &[libc::FIONBIO])?;
            allow_arg(
                &mut r,
                libc::SYS_setsockopt,
                2,
                &[libc::SO_RCVTIMEO as u64, libc::SO_SNDTIMEO as u64],
            )?;
            allow_arg(
                &mut r,
                libc::SYS_fcntl,
                1,
                &[
                    libc::F_GETFL as u64,
                    libc::F_SETFL as u64,
                    libc::F_GETFD as u64,
                ],
            )?;
        }
        ThreadKind::Vcpu => {
            allow_arg(&mut r, libc::SYS_ioctl, 1, &vcpu_ioctls())?;
            // Starting a device worker (DRIVER_OK): its eventfds and epoll, the thread, its
            // name, and the worker installing its own (narrower) filter.
            allow(
                &mut r,
                &[
                    libc::SYS_eventfd2,
                    libc::SYS_epoll_create1,
                    libc::SYS_epoll_ctl,
                    libc::SYS_clone3,
                    libc::SYS_set_robust_list,
                    libc::SYS_rseq,
                    libc::SYS_seccomp,
                    libc::SYS_sched_getaffinity,
                    libc::SYS_getpid,
                    // COM1 output to a socket client (`--serial socket=`) is sent from the
                    // vCPU thread that wrote the UART register.
                    libc::SYS_sendto,
                ],
            );
            allow_arg(&mut r, libc::SYS_fcntl, 1, &[libc::F_DUPFD_CLOEXEC as u64])?;
            let thread_flags = (libc::CLONE_VM
                | libc::CLONE_FS
                | libc::CLONE_FILES
                | libc::CLONE_SIGHAND
                | libc::CLONE_THREAD
                | libc::CLONE_SYSVSEM) as u64;
            r.insert(
                libc::SYS_clone,
                vec![SeccompRule::new(vec![SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(thread_flags),
                    thread_flags,
                )?])?],
            );
            allow_arg(
                &mut r,
                libc::SYS_prctl,
                0,
                &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
            )?;
            allow_arg(&mut r, libc::SYS_tgkill, 2, &[kick])?;
            // Device workers run under this filter too (see the module doc).
            worker_io(&mut r)?;
        }
        ThreadKind::Worker => worker_io(&mut r)?,
    }
    Ok(r)
}
