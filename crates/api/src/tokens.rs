//! API tokens for remote access (`paddockd --listen`): what `POST /api/v1/tokens` takes and
//! answers, and what `GET /api/v1/tokens` lists. The secret exists only in the creation
//! answer; the daemon keeps its SHA-256.

use serde::{Deserialize, Serialize};

/// The prefix of every token secret, so secret scanners can find leaked ones.
pub const TOKEN_PREFIX: &str = "pdk_";

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// A unique name (1-64 of `A-Z a-z 0-9 . _ -`); the audit log records `token:<name>`.
    pub name: String,
    /// Days until the token stops working (1-3650); absent: it never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<u32>,
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// Its name.
    pub name: String,
    /// When it was created (RFC 3339, UTC).
    pub created_at: String,
    /// When it last authenticated a request, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    /// When it stops working, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// The answer to `POST /api/v1/tokens`: the token and, this once, its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// The token.
    #[serde(flatten)]
    pub token: Token,
    /// `pdk_` and 32 random bytes in unpadded base64url; send it as
    /// `Authorization: Bearer <secret>`. It is not stored and cannot be shown again.
    pub secret: String,
}
