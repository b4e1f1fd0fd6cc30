//! Managed networks: a Linux bridge per network (created over netlink with `rtnetlink`),
//! NAT through one nftables table per network (`nft -f -`), DHCP through one `dnsmasq` per
//! network, and a TAP device per VM NIC, enslaved to the network's bridge while the VM has
//! a process.
//!
//! Names the daemon owns (documented in `docs/DAEMON.md`, "Networks"):
//! - bridges: `pd-<network>` unless the network names its own (names starting `pdt` are
//!   refused: they are the TAPs'); at start, a bridge named `pd-*` that no network has is
//!   deleted;
//! - TAPs: `pdt` + the first 11 hex digits of the VM's id + the NIC's index in hex (one
//!   digit, so at most 16 network NICs a VM): 15 characters, IFNAMSIZ's limit; at start a
//!   `pdt*` TAP of no VM with a process is deleted;
//! - nftables: table `inet paddock_<network>` (`-` as `_`);
//! - dnsmasq: `<state-dir>/networks/<network>/dnsmasq.{pid,leases,log}`;
//! - MACs: `02:50:44:xx:xx:xx` (locally administered, unicast; `50:44` is "PD"), random,
//!   unique across the store's VMs.

pub mod dnsmasq;
pub mod link;
pub mod nft;
pub mod nics;
pub mod ops;
pub mod routes;
pub mod spec;
pub mod store;

pub use nics::{placeholder_taps, plug, prepare, render_metrics, unplug};
pub use ops::{lock, reconcile};
pub use routes::router;

/// The prefix of bridges the daemon names itself.
pub const BRIDGE_PREFIX: &str = "pd-";
/// The prefix of every TAP the daemon makes.
pub const TAP_PREFIX: &str = "pdt";
