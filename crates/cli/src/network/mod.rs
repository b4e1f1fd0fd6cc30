//! `paddock network`: managed networks (bridge, NAT, DHCP) through the daemon's REST API.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use paddock_api::network::{DhcpRange, Network, NetworkSpec};
use paddock_api::{Client, ClientError};

use crate::output::print_json;

/// Options every `paddock network` command takes.
#[derive(Args, Debug)]
pub struct NetworkArgs {
    /// The daemon's socket.
    #[arg(long, global = true, env = "PADDOCK_SOCKET", default_value = paddock_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: NetworkCommand,
}

/// The network subcommands.
#[derive(Subcommand, Debug)]
enum NetworkCommand {
    /// Defines a network; the daemon creates its bridge, NAT table and DHCP server at once.
    Define {
        /// The network's name (a-z, 0-9, '-').
        name: String,
        /// The bridge's name (default pd-NAME).
        #[arg(long)]
        bridge: Option<String>,
        /// The host's address on the bridge with its prefix length, like 10.77.0.1/24.
        #[arg(long, value_name = "ADDR/LEN")]
        ipv4: Option<String>,
        /// Masquerade the subnet to the host's other interfaces (needs --ipv4).
        #[arg(long)]
        nat: bool,
        /// Serve DHCP from this range, like 10.77.0.50-10.77.0.99 (needs --ipv4).
        #[arg(long, value_name = "START-END", value_parser = parse_range)]
        dhcp: Option<DhcpRange>,
    },
    /// Lists the networks.
    List,
    /// Shows one network.
    Show {
        /// The network.
        name: String,
    },
    /// Deletes a network no VM uses, with its bridge, NAT table and DHCP server.
    Delete {
        /// The network.
        name: String,
    },
}

fn parse_range(s: &str) -> Result<DhcpRange, String> {
    let bad = || format!("'{s}' is not a range like 10.77.0.50-10.77.0.99");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
    let end: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
    Ok(DhcpRange { start, end })
}

/// Runs a `paddock network` command.
pub fn run(args: NetworkArgs, remote: &crate::remote::RemoteArgs) -> ExitCode {
    remote.run(&args.socket, args.json, |client| {
        execute(client, args.command, args.json)
    })
}

fn execute(client: &Client, command: NetworkCommand, json: bool) -> Result<(), ClientError> {
    let show = |n: Network| {
        if json {
            print_json(&n);
        } else {
            print!("{}", detail(&n));
        }
    };
    match command {
        NetworkCommand::Define {
            name,
            bridge,
            ipv4,
            nat,
            dhcp,
        } => show(client.define_network(&NetworkSpec {
            name,
            bridge,
            ipv4,
            nat,
            dhcp,
        })?),
        NetworkCommand::List => {
            let nets = client.networks()?;
            if json {
                print_json(&nets);
            } else {
                print!("{}", list(&nets));
            }
        }
        NetworkCommand::Show { name } => show(client.network(&name)?),
        NetworkCommand::Delete { name } => {
            client.delete_network(&name)?;
            if json {
                print_json(&serde_json::json!({ "deleted": name }));
            } else {
                println!("deleted {name}");
            }
        }
    }
    Ok(())
}

fn dhcp_text(d: &Option<DhcpRange>) -> String {
    d.map_or("-".into(), |d| format!("{}-{}", d.start, d.end))
}

/// The networks as an aligned table.
fn list(nets: &[Network]) -> String {
    let mut rows = vec![["NAME", "BRIDGE", "IPV4", "NAT", "DHCP", "VMS"].map(String::from)];
    for n in nets {
        rows.push([
            n.name.clone(),
            n.bridge.clone(),
            n.ipv4.clone().unwrap_or_else(|| "-".into()),
            if n.nat { "yes" } else { "no" }.into(),
            dhcp_text(&n.dhcp),
            n.vms.len().to_string(),
        ]);
    }
    crate::output::table(&rows)
}

/// One network as `key: value` lines.
fn detail(n: &Network) -> String {
    let vms = if n.vms.is_empty() {
        "-".to_string()
    } else {
        n.vms.join(", ")
    };
    format!(
        "name:     {}\nbridge:   {}\nipv4:     {}\nnat:      {}\ndhcp:     {}\nvms:      {vms}\ncreated:  {}\n",
        n.name,
        n.bridge,
        n.ipv4.as_deref().unwrap_or("-"),
        if n.nat { "yes" } else { "no" },
        dhcp_text(&n.dhcp),
        n.created_at
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_tables_align() {
        let r = parse_range("10.77.0.50-10.77.0.99").unwrap();
        assert_eq!(r.start.to_string(), "10.77.0.50");
        assert!(parse_range("10.77.0.50").is_err());
        let n = Network {
            name: "lan".into(),
            bridge: "pd-lan".into(),
            ipv4: Some("10.77.0.1/24".into()),
            nat: true,
            dhcp: Some(r),
            created_at: "t".into(),
            vms: vec!["web".into()],
        };
        let t = list(std::slice::from_ref(&n));
        assert!(t.starts_with("NAME  BRIDGE  IPV4"), "{t}");
        assert!(
            t.contains("lan   pd-lan  10.77.0.1/24  yes  10.77.0.50-10.77.0.99  1"),
            "{t}"
        );
        assert!(detail(&n).contains("vms:      web"));
    }
}
