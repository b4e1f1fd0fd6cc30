//! Checks a [`NetworkSpec`] and resolves its defaults into a [`Network`].

use std::net::Ipv4Addr;

use paddock_api::network::{Network, NetworkSpec};

use super::{BRIDGE_PREFIX, TAP_PREFIX};
use crate::error::OpError;

/// Longest interface name (IFNAMSIZ less the NUL).
pub const IFNAME_MAX: usize = 15;

fn invalid(field: &str, message: impl Into<String>) -> OpError {
    OpError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// An IPv4 interface address: the host's address and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length, 1 to 30.
    pub prefix: u8,
}

impl Ipv4Net {
    /// Parses `10.77.0.1/24`.
    pub fn parse(s: &str) -> Option<Ipv4Net> {
        let (a, p) = s.split_once('/')?;
        let addr: Ipv4Addr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok()?;
        (1..=30)
            .contains(&prefix)
            .then_some(Ipv4Net { addr, prefix })
    }

    /// The netmask.
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(self.prefix)))
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & u32::from(self.mask()))
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !u32::from(self.mask()))
    }

    /// Whether `a` is a host address of this subnet (not the network or broadcast address).
    pub fn holds(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & u32::from(self.mask()) == u32::from(self.network())
            && a != self.network()
            && a != self.broadcast()
    }

    /// `10.77.0.0/24`.
    pub fn subnet(&self) -> String {
        format!("{}/{}", self.network(), self.prefix)
    }
}

/// The host address of `net`, if it has one (a stored network always parses).
pub fn host_net(net: &Network) -> Option<Ipv4Net> {
    net.ipv4.as_deref().and_then(Ipv4Net::parse)
}

/// Whether `name` may be an interface name we create.
fn ifname_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Checks `spec`; answers the network it defines (no VMs, `created_at` as given).
pub fn resolve(spec: &NetworkSpec, created_at: String) -> Result<Network, OpError> {
    let name = &spec.name;
    let name_ok = name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        return Err(invalid(
            "name",
            format!("'{name}': use 1 to 32 of a-z, 0-9 and '-', starting with a letter"),
        ));
    }
    let bridge = match &spec.bridge {
        Some(b) => {
            if !ifname_ok(b) {
                return Err(invalid(
                    "bridge",
                    format!("'{b}': an interface name is 1 to 15 of A-Z, a-z, 0-9, '-', '_', '.'"),
                ));
            }
            if b.starts_with(TAP_PREFIX) {
                return Err(invalid(
                    "bridge",
                    format!(
                        "'{b}': names starting '{TAP_PREFIX}' are paddockd's TAPs; pick another"
                    ),
                ));
            }
            b.clone()
        }
        None => {
            let b = format!("{BRIDGE_PREFIX}{name}");
            if b.len() > IFNAME_MAX {
                return Err(invalid(
                    "bridge",
                    format!("the default bridge name '{b}' is over {IFNAME_MAX} characters; give a bridge name or a network name of at most 12 characters"),
                ));
            }
            b
        }
    };
    let ipv4 = match &spec.ipv4 {
        None => None,
        Some(s) => {
            let net = Ipv4Net::parse(s).ok_or_else(|| {
                invalid(
                    "ipv4",
                    format!("'{s}' is not an address with a prefix length of 1 to 30, like 10.77.0.1/24"),
                )
            })?;
            if !net.holds(net.addr) {
                return Err(invalid(
                    "ipv4",
                    format!(
                        "{} is the network or broadcast address of {}; give a host address",
                        net.addr,
                        net.subnet()
                    ),
                ));
            }
            Some(net)
        }
    };
    if spec.nat && ipv4.is_none() {
        return Err(invalid(
            "nat",
            "NAT needs the network's ipv4 (the subnet to masquerade)",
        ));
    }
    if let Some(d) = &spec.dhcp {
        let Some(net) = ipv4 else {
            return Err(invalid(
                "dhcp",
                "DHCP needs the network's ipv4 (dnsmasq serves from the bridge's address)",
            ));
        };
        for (field, a) in [("dhcp.start", d.start), ("dhcp.end", d.end)] {
            if !net.holds(a) {
                return Err(invalid(
                    field,
                    format!("{a} is not a host address of {}", net.subnet()),
                ));
            }
        }
        if u32::from(d.start) > u32::from(d.end) {
            return Err(invalid(
                "dhcp",
                format!("start {} is after end {}", d.start, d.end),
            ));
        }
        if (u32::from(d.start)..=u32::from(d.end)).contains(&u32::from(net.addr)) {
            return Err(invalid(
                "dhcp",
                format!("the range holds the host's own address {}", net.addr),
            ));
        }
    }
    Ok(Network {
        name: name.clone(),
        bridge,
        ipv4: ipv4.map(|n| format!("{}/{}", n.addr, n.prefix)),
        nat: spec.nat,
        dhcp: spec.dhcp,
        created_at,
        vms: Vec::new(),
    })
}

/// The nftables table of network `name`.
pub fn nft_table(name: &str) -> String {
    format!("paddock_{}", name.replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_api::network::DhcpRange;

    fn spec(json: &str) -> NetworkSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_are_resolved() {
        let n = resolve(&spec(r#"{"name":"lan","ipv4":"10.77.0.1/24","nat":true,"dhcp":{"start":"10.77.0.10","end":"10.77.0.20"}}"#), "t".into()).unwrap();
        assert_eq!(n.bridge, "pd-lan");
        assert_eq!(n.ipv4.as_deref(), Some("10.77.0.1/24"));
        assert_eq!(
            n.dhcp,
            Some(DhcpRange {
                start: "10.77.0.10".parse().unwrap(),
                end: "10.77.0.20".parse().unwrap()
            })
        );
        let net = host_net(&n).unwrap();
        assert_eq!(net.subnet(), "10.77.0.0/24");
        assert_eq!(net.mask().to_string(), "255.255.255.0");
        assert_eq!(nft_table("my-lan"), "paddock_my_lan");
    }

    #[test]
    fn bad_fields_are_named() {
        for (json, field) in [
            (r#"{"name":"Lan"}"#, "name"),
            (r#"{"name":"averyveryverylongname"}"#, "bridge"),
            (r#"{"name":"a","bridge":"pdt0"}"#, "bridge"),
            (r#"{"name":"a","bridge":"b r"}"#, "bridge"),
            (r#"{"name":"a","ipv4":"10.77.0.1"}"#, "ipv4"),
            (r#"{"name":"a","ipv4":"10.77.0.0/24"}"#, "ipv4"),
            (r#"{"name":"a","ipv4":"10.77.0.1/31"}"#, "ipv4"),
            (r#"{"name":"a","nat":true}"#, "nat"),
            (
                r#"{"name":"a","dhcp":{"start":"10.0.0.2","end":"10.0.0.3"}}"#,
                "dhcp",
            ),
            (
                r#"{"name":"a","ipv4":"10.77.0.1/24","dhcp":{"start":"10.78.0.2","end":"10.77.0.3"}}"#,
                "dhcp.start",
            ),
            (
                r#"{"name":"a","ipv4":"10.77.0.1/24","dhcp":{"start":"10.77.0.9","end":"10.77.0.3"}}"#,
                "dhcp",
            ),
            (
                r#"{"name":"a","ipv4":"10.77.0.5/24","dhcp":{"start":"10.77.0.2","end":"10.77.0.9"}}"#,
                "dhcp",
            ),
        ] {
            match resolve(&spec(json), "t".into()) {
                Err(OpError::Invalid { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }
}
