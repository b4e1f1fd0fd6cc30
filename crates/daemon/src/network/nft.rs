//! NAT through nftables: one table `inet paddock_<network>` per network, written whole by
//! `nft -f -` (so a rerun replaces it) and deleted the same way.

use std::io::{self, Write};
use std::process::{Command, Stdio};

use paddock_api::network::Network;

use super::spec::{host_net, nft_table};

/// The `nft` program: `PADDOCK_NFT`, else `nft` on `PATH`.
fn nft_program() -> String {
    std::env::var("PADDOCK_NFT")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "nft".into())
}

fn run(script: &str) -> io::Result<()> {
    let mut child = Command::new(nft_program())
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run nft ({e}); install nftables (Debian: nftables)"),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "nft refused: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The ruleset of `net` (which has NAT and an address): masquerade what leaves the subnet
/// through any interface other than its bridge.
pub fn ruleset(net: &Network) -> Option<String> {
    let addr = host_net(net)?;
    let table = nft_table(&net.name);
    Some(format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {subnet} oifname != \"{bridge}\" masquerade\n\
         \t}}\n\
         }}\n",
        subnet = addr.subnet(),
        bridge = net.bridge,
    ))
}

/// Installs (or replaces) `net`'s table and turns IPv4 forwarding on.
pub fn apply(net: &Network) -> io::Result<()> {
    let Some(script) = ruleset(net) else {
        return Ok(());
    };
    run(&script)?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| io::Error::new(e.kind(), format!("enabling net.ipv4.ip_forward: {e}")))
}

/// Deletes network `name`'s table; an absent one is fine.
pub fn remove(name: &str) -> io::Result<()> {
    let table = nft_table(name);
    // Declaring the table first makes the delete succeed when it does not exist.
    run(&format!("table inet {table}\ndelete table inet {table}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_masquerades_the_subnet() {
        let net = Network {
            name: "my-lan".into(),
            bridge: "pd-my-lan".into(),
            ipv4: Some("10.77.0.1/24".into()),
            nat: true,
            dhcp: None,
            created_at: "t".into(),
            vms: vec![],
        };
        let r = ruleset(&net).unwrap();
        assert!(
            r.starts_with("table inet paddock_my_lan\ndelete table inet paddock_my_lan\n"),
            "{r}"
        );
        assert!(
            r.contains("ip saddr 10.77.0.0/24 oifname != \"pd-my-lan\" masquerade"),
            "{r}"
        );
        assert!(ruleset(&Network { ipv4: None, ..net }).is_none());
    }
}
