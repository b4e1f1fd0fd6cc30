//! Human output for `paddock vm`: a table for lists, `key: value` lines for one VM.

use paddock_api::{Vm, VmSummary};

use crate::output::human_size;

/// The VM list as an aligned table.
pub fn list(vms: &[VmSummary]) -> String {
    let mut rows = vec![["NAME", "STATE", "CPUS", "MEMORY", "PID", "DRIVER"].map(String::from)];
    for vm in vms {
        rows.push([
            vm.name.clone(),
            vm.state.to_string(),
            vm.cpus.to_string(),
            human_size(vm.memory_mib << 20),
            vm.pid.map_or("-".into(), |p| p.to_string()),
            vm.driver.clone(),
        ]);
    }
    crate::output::table(&rows)
}

/// One VM as `key: value` lines.
pub fn detail(vm: &Vm) -> String {
    let mut out = format!(
        "name: {}\nid: {}\nstate: {}\ndriver: {}\ncpus: {}\nmemory: {}\ncreated: {}\nupdated: {}\n",
        vm.name,
        vm.id,
        vm.state,
        vm.driver,
        vm.spec.cpus.count,
        human_size(vm.spec.memory.size_mib << 20),
        vm.created_at,
        vm.updated_at
    );
    if let Some(pid) = vm.pid {
        out += &format!("pid: {pid}\n");
    }
    if let Some(s) = vm.exit_status {
        out += &format!("exit status: {s}\n");
    }
    if let Some(m) = &vm.message {
        out += &format!("note: {m}\n");
    }
    out
}
