//! `GET /metrics`: the Prometheus text exposition format (0.0.4), written by hand: per VM its
//! state, vCPUs, memory and disk counters from the VMM; per host the VMs in each state.

use std::fmt::Write;

use paddock_api::{Vm, VmState};

use crate::driver::Status;

/// Escapes a label value.
pub(crate) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes a metric family's HELP and TYPE lines.
pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders the metrics for `vms`, each with the VMM's status when it has a process.
pub fn render(vms: &[(Vm, Option<Status>)]) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "paddock_vms",
        "gauge",
        "VMs on this host by state.",
    );
    for state in VmState::ALL {
        let n = vms.iter().filter(|(v, _)| v.state == state).count();
        let _ = writeln!(out, "paddock_vms{{state=\"{state}\"}} {n}");
    }
    family(
        &mut out,
        "paddock_vm_state",
        "gauge",
        "1 for the state the VM is in, 0 for the others.",
    );
    for (vm, _) in vms {
        for state in VmState::ALL {
            let v = u8::from(vm.state == state);
            let _ = writeln!(
                out,
                "paddock_vm_state{{vm=\"{}\",state=\"{state}\"}} {v}",
                label(&vm.name)
            );
        }
    }
    family(
        &mut out,
        "paddock_vm_vcpus",
        "gauge",
        "vCPUs (the VMM's count while it runs, else the spec's).",
    );
    for (vm, st) in vms {
        let n = st.as_ref().map_or(vm.spec.cpus.count, |s| s.vcpus);
        let _ = writeln!(out, "paddock_vm_vcpus{{vm=\"{}\"}} {n}", label(&vm.name));
    }
    family(
        &mut out,
        "paddock_vm_memory_bytes",
        "gauge",
        "Guest memory in bytes.",
    );
    for (vm, st) in vms {
        let n = st
            .as_ref()
            .map_or(vm.spec.memory.size_mib << 20, |s| s.memory_bytes);
        let _ = writeln!(
            out,
            "paddock_vm_memory_bytes{{vm=\"{}\"}} {n}",
            label(&vm.name)
        );
    }
    type Pick = fn(&crate::driver::DiskCounters) -> u64;
    let disk_families: [(&str, &str, Pick); 4] = [
        (
            "paddock_vm_disk_read_bytes_total",
            "Bytes the guest read from the disk.",
            |d| d.read_bytes,
        ),
        (
            "paddock_vm_disk_written_bytes_total",
            "Bytes the guest wrote to the disk.",
            |d| d.write_bytes,
        ),
        (
            "paddock_vm_disk_read_requests_total",
            "Read requests.",
            |d| d.read_requests,
        ),
        (
            "paddock_vm_disk_write_requests_total",
            "Write requests.",
            |d| d.write_requests,
        ),
    ];
    for (name, help, pick) in disk_families {
        family(
            &mut out,
            name,
            "counter",
            &format!("{help} Since the VMM started."),
        );
        for (vm, st) in vms {
            for d in st.iter().flat_map(|s| &s.disks) {
                let _ = writeln!(
                    out,
                    "{name}{{vm=\"{}\",disk=\"{}\"}} {}",
                    label(&vm.name),
                    label(&d.name),
                    pick(d)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
