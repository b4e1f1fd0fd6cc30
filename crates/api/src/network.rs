//! Managed networks: a Linux bridge with an optional host address, NAT to the host's
//! default route and a DHCP range served by dnsmasq (`/api/v1/networks`).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A DHCP address range (inclusive), inside the network's subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpRange {
    /// First address handed out.
    pub start: Ipv4Addr,
    /// Last address handed out.
    pub end: Ipv4Addr,
}

/// What `POST /api/v1/networks` takes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// The network's name: 1 to 32 of `a-z`, `0-9` and `-`, starting with a letter.
    pub name: String,
    /// The bridge's name (default `pd-<name>`, which needs a name of at most 12 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The host's address on the bridge with its prefix length (`10.77.0.1/24`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// Masquerade the subnet's traffic to the host's other interfaces (needs `ipv4`).
    #[serde(default)]
    pub nat: bool,
    /// Serve DHCP on the bridge from this range (needs `ipv4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpRange>,
}

/// A defined network as the daemon answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Its name.
    pub name: String,
    /// The Linux bridge.
    pub bridge: String,
    /// The host's address on the bridge, with its prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// Whether the subnet is masqueraded.
    pub nat: bool,
    /// The DHCP range, if dnsmasq serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpRange>,
    /// When it was defined.
    pub created_at: String,
    /// The VMs with a NIC on it, by name.
    #[serde(default)]
    pub vms: Vec<String>,
}
