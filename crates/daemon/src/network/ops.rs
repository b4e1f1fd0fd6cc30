//! Defining and deleting networks (bridge, NAT table, dnsmasq, row) and reconciling the
//! host with the store when the daemon starts.

use std::sync::{Arc, Mutex, MutexGuard};

use paddock_api::network::{Network, NetworkSpec};

use super::dnsmasq::{self, Files};
use super::nics::tap_prefix;
use super::store::InsertError;
use super::{link, nft, spec, BRIDGE_PREFIX, TAP_PREFIX};
use crate::error::OpError;
use crate::supervisor::{now, Supervisor};

static LOCK: Mutex<()> = Mutex::new(());

/// Serialises network changes against VM definitions, so a network cannot be deleted while
/// a VM joining it is being defined, and two VMs cannot take one fresh MAC.
pub fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn no_network(name: &str) -> OpError {
    OpError::NotFound(format!(
        "no network named '{name}'; `paddock network list` shows them"
    ))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OpError> + Send + 'static,
) -> Result<T, OpError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OpError::Internal(format!("network task failed: {e}")))?
}

/// Every network.
pub fn list(sup: &Supervisor) -> Result<Vec<Network>, OpError> {
    Ok(sup.store().networks()?)
}

/// The network called `name`.
pub fn get(sup: &Supervisor, name: &str) -> Result<Network, OpError> {
    sup.store().network(name)?.ok_or_else(|| no_network(name))
}

/// Removes what the host holds for `net`; every step runs, the errors are collected.
fn teardown(net: &Network, files: &Files) -> Vec<String> {
    let mut errors = Vec::new();
    if let Err(e) = dnsmasq::stop(files) {
        errors.push(format!("stopping dnsmasq: {e}"));
    }
    if net.nat {
        if let Err(e) = nft::remove(&net.name) {
            errors.push(e.to_string());
        }
    }
    if let Err(e) = link::delete(&net.bridge) {
        errors.push(e.to_string());
    }
    errors
}

/// Creates (or completes) what the host holds for `net`.
fn build(net: &Network, files: &Files) -> std::io::Result<()> {
    link::ensure_bridge(&net.bridge, spec::host_net(net).map(|n| (n.addr, n.prefix)))?;
    if net.nat {
        nft::apply(net)?;
    }
    dnsmasq::ensure(net, files)
}

/// Defines a network and builds it on the host; on failure nothing is left.
pub async fn define(
    sup: Arc<Supervisor>,
    uid: Option<u32>,
    request: NetworkSpec,
) -> Result<Network, OpError> {
    let name = request.name.clone();
    let s = sup.clone();
    let r = blocking(move || define_blocking(&s, &request)).await;
    sup.audit(uid, "network-define", &name, &r);
    r
}

fn define_blocking(sup: &Supervisor, request: &NetworkSpec) -> Result<Network, OpError> {
    let _guard = lock();
    let net = spec::resolve(request, now())?;
    let store = sup.store();
    if store.network(&net.name)?.is_some() {
        return Err(OpError::Conflict(format!(
            "a network named '{}' exists; pick another name, or delete it first",
            net.name
        )));
    }
    if store.bridge_taken(&net.bridge)? {
        return Err(OpError::Conflict(format!(
            "another network has bridge '{}'; give another bridge",
            net.bridge
        )));
    }
    let exists = link::find(&net.bridge).map_err(|e| OpError::Internal(e.to_string()))?;
    if exists.is_some() {
        return Err(OpError::Conflict(format!(
            "a link named '{}' exists on this host; give another bridge name",
            net.bridge
        )));
    }
    let files = Files::new(sup.state_dir(), &net.name);
    if let Err(e) = build(&net, &files) {
        let left = teardown(&net, &files);
        return Err(OpError::Driver(format!(
            "building network '{}': {e}{}",
            net.name,
            if left.is_empty() {
                String::new()
            } else {
                format!("; cleaning up: {}", left.join("; "))
            }
        )));
    }
    match store.insert_network(&net) {
        Ok(()) => Ok(net),
        Err(e) => {
            teardown(&net, &files);
            match e {
                InsertError::Taken(n) => Err(OpError::Conflict(format!(
                    "a network named '{n}' or with its bridge exists"
                ))),
                InsertError::Store(e) => Err(e.into()),
            }
        }
    }
}

/// Deletes a network no VM uses, with its bridge, NAT table and dnsmasq.
pub async fn delete(sup: Arc<Supervisor>, uid: Option<u32>, name: String) -> Result<(), OpError> {
    let s = sup.clone();
    let n = name.clone();
    let r = blocking(move || delete_blocking(&s, &n)).await;
    sup.audit(uid, "network-delete", &name, &r);
    r
}

fn delete_blocking(sup: &Supervisor, name: &str) -> Result<(), OpError> {
    let _guard = lock();
    let net = get(sup, name)?;
    if !net.vms.is_empty() {
        return Err(OpError::Conflict(format!(
            "network '{name}' has NICs of VM(s) {}; delete those VMs (or redefine them without the NIC) first",
            net.vms.join(", ")
        )));
    }
    let errors = teardown(&net, &Files::new(sup.state_dir(), name));
    if !errors.is_empty() {
        return Err(OpError::Internal(format!(
            "deleting network '{name}': {}; the network stays defined, delete it again",
            errors.join("; ")
        )));
    }
    sup.store().delete_network(name)?;
    Ok(())
}

/// After a daemon start (and re-attach): rebuilds what is missing of every network, and
/// deletes TAPs of ours that no VM with a process owns and `pd-*` bridges that no network
/// has. Each change is audited; failures are logged and do not stop the daemon.
pub fn reconcile(sup: &Supervisor) {
    let store = sup.store();
    let nets = match store.networks() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("paddockd: networks: {e}");
            return;
        }
    };
    for net in &nets {
        let files = Files::new(sup.state_dir(), &net.name);
        let missing = !matches!(link::find(&net.bridge), Ok(Some(_)))
            || (net.dhcp.is_some() && dnsmasq::running(&files).is_none());
        let r = build(net, &files).map_err(|e| OpError::Driver(e.to_string()));
        if missing || r.is_err() {
            sup.audit(None, "network-rebuild", &net.name, &r);
        }
    }
    let live: Vec<String> = match store.list() {
        Ok(vms) => vms
            .iter()
            .filter(|v| v.state.has_process())
            .map(|v| tap_prefix(v.id))
            .collect(),
        Err(e) => {
            eprintln!("paddockd: networks: {e}");
            return;
        }
    };
    let links = match link::list() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("paddockd: networks: cannot list links: {e}");
            return;
        }
    };
    for l in links {
        let stray_tap = l.name.starts_with(TAP_PREFIX)
            && l.kind.as_deref() == Some("tun")
            && !live.iter().any(|p| l.name.starts_with(p.as_str()));
        let stray_bridge = l.name.starts_with(BRIDGE_PREFIX)
            && l.kind.as_deref() == Some("bridge")
            && !nets.iter().any(|n| n.bridge == l.name);
        if stray_tap || stray_bridge {
            let r = link::delete(&l.name).map_err(|e| OpError::Internal(e.to_string()));
            sup.audit(None, "network-remove-stray", &l.name, &r);
        }
    }
}
