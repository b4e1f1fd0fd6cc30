//! VM NICs on managed networks: MACs allocated at define time, a TAP per NIC while the VM
//! has a process, and the TAPs' counters in `/metrics`.

use std::borrow::Cow;
use std::fmt::Write;

use paddock_api::Vm;
use paddock_spec::{MacAddr, VmSpec};
use uuid::Uuid;

use super::{link, TAP_PREFIX};
use crate::driver::Status;
use crate::error::OpError;
use crate::metrics::label;
use crate::supervisor::Supervisor;

/// The locally administered, unicast prefix of the MACs paddockd allocates ("PD").
pub const MAC_PREFIX: [u8; 3] = [0x02, 0x50, 0x44];
/// Most network NICs a VM may have (one hex digit in the TAP name).
pub const MAX_NETWORK_NICS: usize = 16;

/// The TAP names of VM `id` start with this (`pdt` and 11 hex digits of the id).
pub fn tap_prefix(id: Uuid) -> String {
    format!("{TAP_PREFIX}{}", &id.simple().to_string()[..11])
}

/// The TAP of NIC `index` of VM `id`.
pub fn tap_name(id: Uuid, index: usize) -> String {
    format!("{}{index:x}", tap_prefix(id))
}

fn invalid(field: String, message: String) -> OpError {
    OpError::Invalid { field, message }
}

/// A fresh random MAC under [`MAC_PREFIX`].
fn random_mac() -> MacAddr {
    let r = Uuid::new_v4().into_bytes();
    MacAddr([
        MAC_PREFIX[0],
        MAC_PREFIX[1],
        MAC_PREFIX[2],
        r[0],
        r[1],
        r[2],
    ])
}

/// Checks the NICs of a spec being defined and gives each one without a MAC a fresh one,
/// unique across the store's VMs. The caller holds [`super::lock`] until the VM is stored.
pub fn prepare(sup: &Supervisor, mut spec: VmSpec) -> Result<VmSpec, OpError> {
    let store = sup.store();
    let on_networks = spec.nics.iter().filter(|n| n.network.is_some()).count();
    if on_networks > MAX_NETWORK_NICS {
        return Err(invalid(
            "nics".into(),
            format!("{on_networks} NICs on networks; at most {MAX_NETWORK_NICS}"),
        ));
    }
    let taken: Vec<MacAddr> = spec.nics.iter().filter_map(|n| n.mac).collect();
    for (i, nic) in spec.nics.iter_mut().enumerate() {
        if let Some(net) = &nic.network {
            if nic.tap.is_some() {
                return Err(invalid(
                    format!("nics[{i}].tap"),
                    "give a tap or a network, not both (the daemon makes the network's TAP)".into(),
                ));
            }
            if store.network(net)?.is_none() {
                return Err(invalid(
                    format!("nics[{i}].network"),
                    format!("no network named '{net}'; `paddock network list` shows them"),
                ));
            }
        }
        match nic.mac {
            Some(mac) => {
                if let Some(owner) = store.mac_owner(&mac.to_string())? {
                    return Err(invalid(
                        format!("nics[{i}].mac"),
                        format!("{mac} is VM '{owner}''s; leave mac out to get a fresh one"),
                    ));
                }
            }
            None => {
                let mac = loop {
                    let m = random_mac();
                    if !taken.contains(&m) && store.mac_owner(&m.to_string())?.is_none() {
                        break m;
                    }
                };
                nic.mac = Some(mac);
            }
        }
    }
    Ok(spec)
}

/// The spec with a stand-in TAP name on each NIC that joins a network, so drivers that
/// insist on a TAP (QEMU) accept a spec whose TAPs the daemon makes at start.
pub fn placeholder_taps(spec: &VmSpec) -> Cow<'_, VmSpec> {
    if spec
        .nics
        .iter()
        .all(|n| n.network.is_none() || n.tap.is_some())
    {
        return Cow::Borrowed(spec);
    }
    let mut s = spec.clone();
    for n in &mut s.nics {
        if n.network.is_some() && n.tap.is_none() {
            n.tap = Some(TAP_PREFIX.to_string());
        }
    }
    Cow::Owned(s)
}

/// Makes the TAPs of `vm`'s network NICs (on their networks' bridges, recreating a missing
/// bridge) and answers the spec its driver runs: each such NIC with its TAP.
pub fn plug(sup: &Supervisor, vm: &Vm) -> Result<VmSpec, OpError> {
    let mut spec = vm.spec.clone();
    for (i, nic) in spec.nics.iter_mut().enumerate() {
        let Some(name) = &nic.network else { continue };
        let net = sup.store().network(name)?.ok_or_else(|| {
            invalid(
                format!("nics[{i}].network"),
                format!("no network named '{name}'; define it again or delete the VM"),
            )
        })?;
        let tap = tap_name(vm.id, i);
        let made = link::ensure_bridge(
            &net.bridge,
            super::spec::host_net(&net).map(|n| (n.addr, n.prefix)),
        )
        .and_then(|()| link::create_tap(&tap, &net.bridge));
        if let Err(e) = made {
            unplug(vm.id);
            return Err(OpError::Driver(format!(
                "nics[{i}]: cannot attach to network '{name}': {e}"
            )));
        }
        nic.tap = Some(tap);
    }
    Ok(spec)
}

/// Deletes every TAP of VM `id` (after its process ended); failures are logged.
pub fn unplug(id: Uuid) {
    let prefix = tap_prefix(id);
    let links = match link::list() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("paddockd: cannot list links to remove {prefix}*: {e}");
            return;
        }
    };
    for l in links.iter().filter(|l| l.name.starts_with(&prefix)) {
        if let Err(e) = link::delete(&l.name) {
            eprintln!("paddockd: {e}");
        }
    }
}

fn stat(tap: &str, counter: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/class/net/{tap}/statistics/{counter}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Per NIC of each VM with a process, from the guest's point of view: `rx` is what the
/// guest received (its TAP's transmit counters), `tx` what it sent (the TAP's receive
/// counters). `nic` is the NIC's index in the spec.
pub fn render_metrics(vms: &[(Vm, Option<Status>)]) -> String {
    let mut rows = Vec::new();
    for (vm, _) in vms.iter().filter(|(v, _)| v.state.has_process()) {
        for (i, nic) in vm.spec.nics.iter().enumerate() {
            let tap = match (&nic.tap, &nic.network) {
                (Some(t), _) => t.clone(),
                (None, Some(_)) => tap_name(vm.id, i),
                (None, None) => continue,
            };
            rows.push((label(&vm.name), i, tap));
        }
    }
    let mut out = String::new();
    for (metric, counter, help) in [
        (
            "rx_bytes",
            "tx_bytes",
            "Bytes the guest received on the NIC (its TAP's transmit count).",
        ),
        (
            "rx_packets",
            "tx_packets",
            "Packets the guest received on the NIC.",
        ),
        (
            "tx_bytes",
            "rx_bytes",
            "Bytes the guest sent on the NIC (its TAP's receive count).",
        ),
        (
            "tx_packets",
            "rx_packets",
            "Packets the guest sent on the NIC.",
        ),
    ] {
        let name = format!("paddock_vm_net_{metric}_total");
        crate::metrics::family(&mut out, &name, "counter", help);
        for (vm, i, tap) in &rows {
            if let Some(v) = stat(tap, counter) {
                let _ = writeln!(out, "{name}{{vm=\"{vm}\",nic=\"{i}\"}} {v}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_ifnamsiz_and_share_the_vm_prefix() {
        let id = Uuid::new_v4();
        let t = tap_name(id, 15);
        assert_eq!(t.len(), 15);
        assert!(t.starts_with(&tap_prefix(id)) && t.starts_with("pdt") && t.ends_with('f'));
        assert_ne!(tap_name(id, 0), tap_name(id, 1));
    }

    #[test]
    fn allocated_macs_are_local_unicast_under_our_prefix() {
        for _ in 0..64 {
            let m = random_mac();
            assert!(m.is_unicast());
            assert_eq!(m.0[0] & 0x02, 0x02, "locally administered");
            assert_eq!(&m.0[..3], &MAC_PREFIX);
        }
    }
}
