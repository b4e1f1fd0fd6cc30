//! Seccomp filters, one per thread kind, built with `seccompiler`: the VMM thread (main and
//! control API), vCPU threads and device worker threads. Each thread installs its own filter
//! once its start-up is done; a syscall outside the allow-list kills the whole process
//! (`SECCOMP_RET_KILL_PROCESS`, the process dies of SIGSYS). `--seccomp off` disables them,
//! for debugging only.
//!
//! A second, small filter on every thread refuses `open`/`openat` with `EACCES` instead of
//! killing: glibc opens `/proc/sys/vm/overcommit_memory` once, lazily, the first time a thread
//! shrinks a per-thread malloc arena (which can happen in any thread at any time, depending on
//! which thread frees what). Refused, glibc falls back to `madvise`; killed, the VM would die at
//! random. The allow-lists therefore list `openat`; the kernel applies the most restrictive
//! answer of all stacked filters, so the refusal wins and nothing can be opened.
//!
//! Filters stack across thread creation: device workers are started by the vCPU thread that
//! writes DRIVER_OK, so they run under the vCPU filter *and* their own. The vCPU list therefore
//! also holds what a worker needs (file I/O on disk images); the worker list narrows it back.

mod rules;

use std::fmt;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

/// Kinds of threads, each with its filter (the main and API threads share one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread after start-up: waits for the end, then tears the VM down.
    Main,
    /// The control API thread.
    Api,
    /// A vCPU thread.
    Vcpu,
    /// A virtio device worker thread.
    Worker,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Main,
        ThreadKind::Api,
        ThreadKind::Vcpu,
        ThreadKind::Worker,
    ];

    /// The name used on the command line (`--seccomp-selftest`).
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Api => "api",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Worker => "worker",
        }
    }

    /// Parses [`ThreadKind::name`].
    pub fn parse(s: &str) -> Result<Self, String> {
        ThreadKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("'{s}': use main, api, vcpu or worker"))
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter did not compile.
    #[error("seccomp filter for {kind} threads: {source}")]
    Build {
        /// Which filter.
        kind: ThreadKind,
        /// Why.
        #[source]
        source: seccompiler::Error,
    },
    /// The kernel refused it.
    #[error("installing the seccomp filter for a {kind} thread: {source}")]
    Install {
        /// Which filter.
        kind: ThreadKind,
        /// Why.
        #[source]
        source: seccompiler::Error,
    },
}

/// The compiled filters of one thread kind: its allow-list and the refusals shared by all.
#[derive(Debug, Clone)]
pub struct ThreadFilter {
    allow: BpfProgram,
    refuse: BpfProgram,
}

/// The compiled filters.
pub struct Filters {
    vmm: ThreadFilter,
    vcpu: ThreadFilter,
    worker: ThreadFilter,
}

/// Compiles the filters for `kind`.
pub fn build(kind: ThreadKind) -> Result<ThreadFilter, SeccompError> {
    Ok(ThreadFilter {
        allow: build_allow_list(kind)?,
        refuse: build_refusals(kind)?,
    })
}

/// The allow-list: anything else kills the process.
fn build_allow_list(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let err = |source| SeccompError::Build { kind, source };
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| err(seccompiler::Error::Backend(e)))?;
    let filter = SeccompFilter::new(
        rules::for_kind(kind).map_err(|e| err(seccompiler::Error::Backend(e)))?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| err(seccompiler::Error::Backend(e)))?;
    filter
        .try_into()
        .map_err(|e| err(seccompiler::Error::Backend(e)))
}

impl Filters {
    /// Compiles every filter (before any is installed, so a build error stops start-up).
    pub fn build() -> Result<Filters, SeccompError> {
        Ok(Filters {
            vmm: build(ThreadKind::Main)?,
            vcpu: build(ThreadKind::Vcpu)?,
            worker: build(ThreadKind::Worker)?,
        })
    }

    /// The filters for `kind`.
    pub fn get(&self, kind: ThreadKind) -> &ThreadFilter {
        match kind {
            ThreadKind::Main | ThreadKind::Api => &self.vmm,
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Worker => &self.worker,
        }
    }
}

/// The refusals: the listed calls fail with `EACCES`, everything else is left to the
/// allow-list.
fn build_refusals(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let err = |source| SeccompError::Build { kind, source };
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| err(seccompiler::Error::Backend(e)))?;
    let filter = SeccompFilter::new(
        rules::refused(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )
    .map_err(|e| err(seccompiler::Error::Backend(e)))?;
    filter
        .try_into()
        .map_err(|e| err(seccompiler::Error::Backend(e)))
}

/// Installs `filter` on the calling thread.
pub fn install(kind: ThreadKind, filter: &ThreadFilter) -> Result<(), SeccompError> {
    for prog in [&filter.refuse, &filter.allow] {
        seccompiler::apply_filter(prog).map_err(|source| SeccompError::Install { kind, source })?;
    }
    Ok(())
}

static WORKER_FILTER: OnceLock<ThreadFilter> = OnceLock::new();
static SELFTEST: OnceLock<ThreadKind> = OnceLock::new();

/// Makes every device worker started from now on install `filter` (set once per process).
pub fn set_worker_filter(filter: ThreadFilter) {
    let _ = WORKER_FILTER.set(filter);
}

/// Called first in each device worker thread: installs the worker filter if one was set.
pub fn enter_worker_thread() -> Result<(), SeccompError> {
    if let Some(prog) = WORKER_FILTER.get() {
        install(ThreadKind::Worker, prog)?;
    }
    selftest_point(ThreadKind::Worker);
    Ok(())
}

/// Arms the self-test: the first thread of `kind` to reach its self-test point makes a
/// forbidden syscall (`socket(AF_INET)`), which must kill the process when filters are on.
pub fn set_selftest(kind: ThreadKind) {
    let _ = SELFTEST.set(kind);
}

/// A thread of `kind` calls this once its filter is installed; see [`set_selftest`].
pub fn selftest_point(kind: ThreadKind) {
    if SELFTEST.get() != Some(&kind) {
        return;
    }
    // What glibc's malloc opens lazily: refused, not fatal.
    match std::fs::File::open("/proc/sys/vm/overcommit_memory") {
        Ok(_) => eprintln!("paddock-vmm: seccomp self-test: open was allowed"),
        Err(e) => eprintln!(
            "paddock-vmm: seccomp self-test: the {kind} thread's open was refused: {}",
            e.raw_os_error().unwrap_or(0)
        ),
    }
    eprintln!("paddock-vmm: seccomp self-test: the {kind} thread calls socket(AF_INET)");
    match std::net::UdpSocket::bind(("127.0.0.1", 0)) {
        Ok(_) => eprintln!("paddock-vmm: seccomp self-test: socket(AF_INET) was allowed"),
        Err(e) => eprintln!("paddock-vmm: seccomp self-test: socket(AF_INET) failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles_and_kinds_parse() {
        let f = Filters::build().unwrap();
        for k in ThreadKind::ALL {
            assert!(!f.get(k).allow.is_empty(), "{k}");
            assert!(!f.get(k).refuse.is_empty(), "{k}");
            assert_eq!(ThreadKind::parse(k.name()).unwrap(), k);
        }
        assert!(ThreadKind::parse("gpu").is_err());
    }

    #[test]
    fn no_filter_allows_creating_sockets_or_running_programs() {
        for k in ThreadKind::ALL {
            let r = rules::for_kind(k).unwrap();
            for nr in [libc::SYS_execve, libc::SYS_execveat, libc::SYS_fork] {
                assert!(!r.contains_key(&nr), "{k} allows syscall {nr}");
            }
            // Sockets: none for the main and API threads; device workers (and the vCPU
            // threads whose filter they inherit) get one conditional rule, socket(AF_UNIX,
            // ...), for vsock's host connections. The self-test proves AF_INET is killed.
            match k {
                ThreadKind::Main | ThreadKind::Api => {
                    assert!(!r.contains_key(&libc::SYS_socket), "{k} allows socket")
                }
                _ => assert_eq!(
                    r[&libc::SYS_socket].len(),
                    1,
                    "{k}: socket must be AF_UNIX only"
                ),
            }
        }
        // Only vCPU threads (which start device workers) may create threads.
        for k in [ThreadKind::Main, ThreadKind::Api, ThreadKind::Worker] {
            assert!(
                !rules::for_kind(k).unwrap().contains_key(&libc::SYS_clone3),
                "{k}"
            );
        }
        // The request numbers the ioctl filters compare with are Linux's.
        let n = rules::vcpu_ioctls();
        assert_eq!(
            n,
            [
                0xae80,
                0x8090_ae81,
                0x8138_ae83,
                0x4020_ae76,
                0x4040_ae79,
                0x4008_ae6a
            ]
        );
        // Workers make no KVM ioctl (their KVM work is eventfd writes): only FIONBIO, for
        // non-blocking host sockets.
        assert_eq!(
            rules::for_kind(ThreadKind::Worker).unwrap()[&libc::SYS_ioctl].len(),
            1,
            "workers: FIONBIO only"
        );
    }
}
