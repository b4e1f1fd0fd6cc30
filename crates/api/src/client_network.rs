//! [`Client`] methods for managed networks (`/api/v1/networks`).

use crate::client::{segment, Client, ClientError};
use crate::network::{Network, NetworkSpec};

impl Client {
    /// Defines a network; the daemon creates its bridge (and NAT, DHCP) at once.
    pub fn define_network(&self, spec: &NetworkSpec) -> Result<Network, ClientError> {
        let body = serde_json::to_vec(spec).map_err(|e| ClientError::Protocol {
            socket: self.socket().to_path_buf(),
            message: e.to_string(),
        })?;
        self.json("POST", "/api/v1/networks", Some(&body))
    }

    /// Every network, by name.
    pub fn networks(&self) -> Result<Vec<Network>, ClientError> {
        self.json("GET", "/api/v1/networks", None)
    }

    /// One network.
    pub fn network(&self, name: &str) -> Result<Network, ClientError> {
        self.json("GET", &format!("/api/v1/networks/{}", segment(name)), None)
    }

    /// Deletes a network no VM uses, with its bridge, NAT table and dnsmasq.
    pub fn delete_network(&self, name: &str) -> Result<(), ClientError> {
        self.raw(
            "DELETE",
            &format!("/api/v1/networks/{}", segment(name)),
            None,
        )
        .map(drop)
    }
}
