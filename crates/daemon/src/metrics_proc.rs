//! Metrics read from the kernel rather than from the VMMs: per VM the CPU time of its vCPU
//! threads and of its whole VMM process and its resident memory (from `/proc/<pid>`), and per
//! host the CPUs and memory it has and what running VMs were given of them.

use std::fmt::Write;

use paddock_api::Vm;

use crate::driver::Status;
use crate::metrics::{family, label};

/// CPU time of one process or thread, in clock ticks, from the text of its `stat` file.
/// Fields after the command name (which may hold spaces and parentheses) are split on
/// whitespace; utime and stime are fields 14 and 15 of the whole line.
pub fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Whether a thread named `comm` runs guest code: paddock-vmm names them `vcpuN`, QEMU (with
/// `debug-threads=on`) `CPU N/KVM` or `CPU N/TCG`.
pub fn is_vcpu_thread(comm: &str) -> bool {
    comm.starts_with("vcpu") || comm.starts_with("CPU ")
}

/// Ticks per second of the `stat` clocks.
fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// What `/proc` says about one VMM process.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ProcessUsage {
    /// Seconds of CPU its vCPU threads used.
    pub vcpu_seconds: f64,
    /// Seconds of CPU the whole process used.
    pub process_seconds: f64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
}

/// Reads the usage of process `pid`, or `None` when it is gone.
pub fn usage(pid: u32) -> Option<ProcessUsage> {
    let hz = ticks_per_second();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let process = stat_ticks(&stat)? as f64 / hz;
    let mut vcpu = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if is_vcpu_thread(comm.trim_end()) {
            let s = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            vcpu += stat_ticks(&s).unwrap_or(0);
        }
    }
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(ProcessUsage {
        vcpu_seconds: vcpu as f64 / hz,
        process_seconds: process,
        rss_bytes: pages * rustix::param::page_size() as u64,
    })
}

/// `MemTotal` and `MemAvailable` from the text of `/proc/meminfo`, in bytes.
pub fn meminfo(text: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// Renders the per-VM process metrics and the host metrics for `vms`.
pub fn render(vms: &[(Vm, Option<Status>)]) -> String {
    let mut out = String::new();
    let live: Vec<(&Vm, ProcessUsage)> = vms
        .iter()
        .filter(|(vm, _)| vm.state.has_process())
        .filter_map(|(vm, _)| Some((vm, usage(vm.pid?)?)))
        .collect();
    type Pick = fn(&ProcessUsage) -> String;
    let per_vm: [(&str, &str, &str, Pick); 3] = [
        (
            "paddock_vm_vcpu_seconds_total",
            "counter",
            "CPU time of the VM's vCPU threads, in seconds, since its VMM started.",
            |u| format!("{:.2}", u.vcpu_seconds),
        ),
        (
            "paddock_vm_process_cpu_seconds_total",
            "counter",
            "CPU time of the VM's whole VMM process (vCPUs, devices, emulation), in seconds.",
            |u| format!("{:.2}", u.process_seconds),
        ),
        (
            "paddock_vm_rss_bytes",
            "gauge",
            "Resident memory of the VM's VMM process (guest memory it touched included).",
            |u| u.rss_bytes.to_string(),
        ),
    ];
    for (name, kind, help, pick) in per_vm {
        family(&mut out, name, kind, help);
        for (vm, u) in &live {
            let _ = writeln!(out, "{name}{{vm=\"{}\"}} {}", label(&vm.name), pick(u));
        }
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (mem_total, mem_available) =
        meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
    let running = vms.iter().filter(|(vm, _)| vm.state.has_process());
    let (vcpus, memory) = running.fold((0u64, 0u64), |(c, m), (vm, _)| {
        (
            c + u64::from(vm.spec.cpus.count),
            m + (vm.spec.memory.size_mib << 20),
        )
    });
    let host: [(&str, &str, Option<u64>); 5] = [
        (
            "paddock_host_cpus",
            "CPUs this host offers (what the daemon may use).",
            Some(cpus as u64),
        ),
        (
            "paddock_host_memory_bytes",
            "Memory of this host (MemTotal).",
            mem_total,
        ),
        (
            "paddock_host_memory_available_bytes",
            "Memory available for new work (MemAvailable).",
            mem_available,
        ),
        (
            "paddock_host_allocated_vcpus",
            "vCPUs given to VMs that have a process.",
            Some(vcpus),
        ),
        (
            "paddock_host_allocated_memory_bytes",
            "Guest memory given to VMs that have a process.",
            Some(memory),
        ),
    ];
    for (name, help, v) in host {
        if let Some(v) = v {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {v}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_skip_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (CPU 0/TCG) (x)) S 1 4242 4242 0 -1 4194560 500 0 0 0 123 45 0 0 20 0 3 0";
        assert_eq!(stat_ticks(line), Some(168));
        assert_eq!(stat_ticks("4242 (vcpu0) S 1"), None);
        assert_eq!(stat_ticks("garbage"), None);
    }

    #[test]
    fn vcpu_threads_of_both_drivers_are_recognised() {
        for comm in ["vcpu0", "vcpu15", "CPU 0/KVM", "CPU 3/TCG"] {
            assert!(is_vcpu_thread(comm), "{comm}");
        }
        for comm in [
            "paddock-vmm",
            "api",
            "virtio-blk",
            "qemu-system-x86",
            "worker",
        ] {
            assert!(!is_vcpu_thread(comm), "{comm}");
        }
    }

    #[test]
    fn meminfo_reads_total_and_available() {
        let text = "MemTotal:       24590000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(
            meminfo(text),
            (Some(24_590_000 * 1024), Some(20_000_000 * 1024))
        );
        assert_eq!(meminfo(""), (None, None));
    }

    #[test]
    fn this_process_has_usage_and_no_vcpu_threads() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.rss_bytes > 0);
        assert_eq!(u.vcpu_seconds, 0.0);
        assert!(usage(u32::MAX).is_none());
    }
}
