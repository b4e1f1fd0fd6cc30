//! The client's remote side: a [`Client`] over TCP + TLS, and the token calls.

use std::path::PathBuf;
use std::sync::Arc;

use crate::client::{Client, ClientError};
use crate::remote::Remote;
use crate::tokens::{NewToken, Token, TokenRequest};

/// Percent-encodes a path segment.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Client {
    /// A client for a remote daemon over TCP + TLS.
    pub fn remote(remote: Remote) -> Self {
        Client {
            socket: PathBuf::from(remote.url()),
            remote: Some(Arc::new(remote)),
        }
    }

    /// Whether this client talks to a remote daemon.
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(bytes).map_err(|e| ClientError::Protocol {
            socket: self.socket.clone(),
            message: format!("unexpected answer: {e}"),
        })
    }

    /// Creates a token; the answer holds its secret, shown this once.
    pub fn create_token(&self, request: &TokenRequest) -> Result<NewToken, ClientError> {
        let body = serde_json::to_vec(request).unwrap_or_default();
        let bytes = self.raw("POST", "/api/v1/tokens", Some(&body))?;
        self.decode(&bytes)
    }

    /// Every token, by name (never their secrets).
    pub fn tokens(&self) -> Result<Vec<Token>, ClientError> {
        let bytes = self.raw("GET", "/api/v1/tokens", None)?;
        self.decode(&bytes)
    }

    /// Revokes (deletes) the token called `name`.
    pub fn revoke_token(&self, name: &str) -> Result<(), ClientError> {
        self.raw("DELETE", &format!("/api/v1/tokens/{}", segment(name)), None)
            .map(drop)
    }
}
