//! Managed networks end to end: a real paddockd run INSIDE a network namespace the test
//! creates (`ip netns exec`, `common::netns`), so its bridges, TAPs, nftables tables and
//! dnsmasq live there and vanish with it; the namespace is deleted even when a test fails.
//! VMs are paddock-vmm test guests under KVM.

mod common;

use common::netns::{can_run, ok, run, tap_of, Netns, NsDaemon};
use common::{alive, guest, kvm_available, wait_until};
use paddock_api::network::{Network, NetworkSpec};
use paddock_api::VmState;
use serde_json::{json, Value};

fn lan(name: &str, dhcp: bool) -> NetworkSpec {
    serde_json::from_value(json!({
        "name": name,
        "ipv4": "10.77.0.1/24",
        "nat": true,
        "dhcp": if dhcp { json!({ "start": "10.77.0.50", "end": "10.77.0.60" }) } else { Value::Null },
    }))
    .unwrap()
}

fn dnsmasq_pid(d: &NsDaemon, net: &str) -> Option<u32> {
    let path = d.state_dir().join(format!("networks/{net}/dnsmasq.pid"));
    let pid = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

#[test]
fn a_network_gets_its_bridge_nat_table_and_dhcp_and_loses_them_on_delete() {
    let test = "a_network_gets_its_bridge_nat_table_and_dhcp_and_loses_them_on_delete";
    if !can_run(test, &["busybox"]) {
        return;
    }
    let ns = Netns::create("net");
    let d = NsDaemon::start(&ns);
    let c = d.client();

    let net = c.define_network(&lan("lan", true)).expect("define");
    assert_eq!(net.bridge, "pd-lan");
    let addr = ns.addr("pd-lan");
    let flags: Vec<&str> = addr["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(flags.contains(&"UP"), "{addr}");
    let inet: Vec<(String, u64)> = addr["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| {
            (
                a["local"].as_str().unwrap().to_string(),
                a["prefixlen"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(inet, vec![("10.77.0.1".to_string(), 24)], "{addr}");
    assert_eq!(
        ns.link("pd-lan").unwrap()["linkinfo"]["info_kind"],
        "bridge"
    );
    assert!(ns.has_table("paddock_lan"), "NAT table");
    let ruleset = ok(&[
        "ip",
        "netns",
        "exec",
        &ns.0,
        "nft",
        "list",
        "table",
        "inet",
        "paddock_lan",
    ]);
    assert!(ruleset.contains("masquerade"), "{ruleset}");
    assert_eq!(
        ok(&[
            "ip",
            "netns",
            "exec",
            &ns.0,
            "cat",
            "/proc/sys/net/ipv4/ip_forward"
        ])
        .trim(),
        "1"
    );
    let dns = dnsmasq_pid(&d, "lan").expect("dnsmasq runs");

    // A refused define changes nothing.
    let (status, body) = d.call("POST", "/api/v1/networks", Some(&json!({ "name": "lan" })));
    assert_eq!(status, 409, "{body}");
    let (status, body) = d.call(
        "POST",
        "/api/v1/networks",
        Some(&json!({ "name": "x", "ipv4": "10.1.1.0/24" })),
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("ipv4")),
        "{body}"
    );
    let (status, body) = d.call(
        "POST",
        "/api/v1/networks",
        Some(&json!({ "name": "x", "colour": "red" })),
    );
    assert_eq!(status, 400, "{body}");
    assert!(ns.link("pd-x").is_none());
    assert_eq!(c.networks().unwrap().len(), 1);

    // DHCP: a client in a second namespace, on a veth whose other end is on the bridge.
    let client_ns = Netns::create("dhcp");
    ok(&[
        "ip",
        "-n",
        &ns.0,
        "link",
        "add",
        "pdv0",
        "type",
        "veth",
        "peer",
        "name",
        "pdv1",
        "netns",
        &client_ns.0,
    ]);
    ok(&[
        "ip", "-n", &ns.0, "link", "set", "pdv0", "master", "pd-lan", "up",
    ]);
    ok(&["ip", "-n", &client_ns.0, "link", "set", "pdv1", "up"]);
    let o = run(&[
        "ip",
        "netns",
        "exec",
        &client_ns.0,
        "busybox",
        "udhcpc",
        "-i",
        "pdv1",
        "-n",
        "-q",
        "-f",
        "-t",
        "10",
        "-T",
        "1",
        "-s",
        "/bin/true",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "udhcpc: {text}");
    let lease = text
        .split_whitespace()
        .skip_while(|w| *w != "of")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let last: u8 = lease.rsplit('.').next().unwrap_or("0").parse().unwrap_or(0);
    assert!(
        lease.starts_with("10.77.0.") && (50..=60).contains(&last),
        "lease {lease}: {text}"
    );
    let mac = ns_mac(&client_ns, "pdv1");
    let leases =
        std::fs::read_to_string(d.state_dir().join("networks/lan/dnsmasq.leases")).unwrap();
    assert!(leases.contains(&mac) && leases.contains(&lease), "{leases}");

    c.delete_network("lan").expect("delete");
    assert!(ns.link("pd-lan").is_none(), "bridge gone");
    assert!(!ns.has_table("paddock_lan"), "NAT table gone");
    wait_until(10, "dnsmasq to end", || !alive(dns));
    assert!(!d.state_dir().join("networks/lan").exists());
    assert_eq!(c.network("lan").unwrap_err().status(), Some(404));
    let audit: Vec<String> = c
        .audit()
        .unwrap()
        .iter()
        .map(|e| format!("{} {} {}", e.action, e.target, e.result))
        .collect();
    assert!(
        audit.contains(&"network-define lan ok".to_string()),
        "{audit:?}"
    );
    assert!(
        audit.contains(&"network-delete lan ok".to_string()),
        "{audit:?}"
    );
}

fn ns_mac(ns: &Netns, dev: &str) -> String {
    ns.link(dev).unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn vm_nics_get_taps_on_the_bridge_while_their_vm_runs() {
    let test = "vm_nics_get_taps_on_the_bridge_while_their_vm_runs";
    if !kvm_available(test) || !can_run(test, &[]) {
        return;
    }
    let ns = Netns::create("tap");
    let mut d = NsDaemon::start(&ns);
    let c = d.client();
    c.define_network(&lan("lan", false))
        .expect("define network");

    let a = d.define_vm("a", "wait", json!([{ "network": "lan" }]));
    let b = d.define_vm("b", "net", json!([{ "network": "lan" }]));
    let (mac_a, mac_b) = (a.spec.nics[0].mac.unwrap(), b.spec.nics[0].mac.unwrap());
    assert_ne!(mac_a, mac_b, "two VMs get different MACs");
    for m in [mac_a, mac_b] {
        assert!(m.to_string().starts_with("02:50:44:"), "{m}");
    }
    assert_eq!(c.get("a").unwrap().spec.nics[0].mac, Some(mac_a), "stored");
    let (status, body) = d.call(
        "POST",
        "/api/v1/vms",
        Some(&json!({ "name": "dup", "memory": { "size_mib": 64 },
            "boot": { "kind": "kernel", "kernel": guest("wait") },
            "nics": [{ "network": "lan", "mac": mac_a.to_string() }] })),
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("nics[0].mac")),
        "{body}"
    );
    assert_eq!(
        c.network("lan").unwrap().vms,
        vec!["a".to_string(), "b".to_string()]
    );

    // Running: a TAP on the bridge, up, named into the config the VMM runs.
    c.action("a", paddock_api::client::Action::Start, None)
        .expect("start a");
    let tap = tap_of(&a, 0);
    let link = ns.link(&tap).expect("a's TAP exists");
    assert_eq!(link["master"], "pd-lan", "{link}");
    assert!(
        link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{link}"
    );
    let cfg: Value = serde_json::from_slice(
        &std::fs::read(d.state_dir().join(format!("vms/{}/vm.json", a.id))).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["nics"][0]["tap"], tap.as_str());
    assert_eq!(cfg["nics"][0]["mac"], mac_a.to_string().as_str());
    let metrics = String::from_utf8(c.raw("GET", "/metrics", None).unwrap()).unwrap();
    for m in ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets"] {
        let line = format!("paddock_vm_net_{m}_total{{vm=\"a\",nic=\"0\"}} ");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }

    // The net guest reads the allocated MAC from its virtio-net device and sends a frame
    // with it; then its VMM is killed (a crash): its TAP goes with its process.
    let b = c
        .action("b", paddock_api::client::Action::Start, None)
        .expect("start b");
    let want = format!("mac={mac_b} link=1");
    wait_until(60, "the net guest's MAC line", || {
        String::from_utf8_lossy(&c.console("b").unwrap()).contains(&want)
    });
    assert!(ns.link(&tap_of(&b, 0)).is_some(), "b's TAP exists");
    ok(&["kill", "-KILL", &b.pid.unwrap().to_string()]);
    d.wait_state("b", &[VmState::Crashed]);
    assert!(
        ns.link(&tap_of(&b, 0)).is_none(),
        "b's TAP went with its VMM"
    );

    // A network in use is not deleted.
    let e = c.delete_network("lan").unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(ns.link("pd-lan").is_some());

    // A daemon restart keeps a running VM's TAP and removes strays of ours.
    ok(&[
        "ip",
        "-n",
        &ns.0,
        "tuntap",
        "add",
        "dev",
        "pdt0123456789a0",
        "mode",
        "tap",
    ]);
    ok(&[
        "ip", "-n", &ns.0, "link", "add", "pd-stray", "type", "bridge",
    ]);
    ok(&[
        "ip", "-n", &ns.0, "link", "add", "keepme0", "type", "bridge",
    ]);
    d.restart();
    assert!(ns.link("pdt0123456789a0").is_none(), "stray TAP removed");
    assert!(ns.link("pd-stray").is_none(), "stray bridge removed");
    assert!(ns.link("keepme0").is_some(), "not ours: kept");
    assert!(ns.link(&tap).is_some(), "a runs: its TAP stays");
    assert!(ns.link("pd-lan").is_some());
    assert_eq!(c.get("a").unwrap().state, VmState::Running);

    c.action(
        "a",
        paddock_api::client::Action::Stop,
        Some(paddock_api::StopRequest {
            timeout_secs: Some(0),
        }),
    )
    .expect("stop a");
    assert!(ns.link(&tap).is_none(), "stop: TAP gone");

    c.delete("a").unwrap();
    c.delete("b").unwrap();
    c.delete_network("lan").expect("delete once unused");
    assert!(ns.link("pd-lan").is_none());
    let _: Vec<Network> = c.networks().unwrap();
}
