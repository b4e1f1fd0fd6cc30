//! API tokens in the state store: only a token's SHA-256 is kept, with its name, creation
//! time, last use and optional expiry. Presented secrets are hashed and compared with every
//! stored hash in constant time.

use paddock_api::tokens::Token;
use rusqlite::params;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{Store, StoreError};

/// The schema change that adds the `tokens` table and the audit log's `who` column
/// (appended to the store's migrations).
pub(crate) const MIGRATION: &str = "CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        hash BLOB NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        last_used TEXT,
        expires_at TEXT
    );
    ALTER TABLE audit ADD COLUMN who TEXT;";

/// What a presented secret turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticated {
    /// A live token with this name.
    Token(String),
    /// The token called `.0` expired at `.1`.
    Expired(String, String),
    /// No token has this secret (never issued, or revoked).
    Unknown,
}

/// The SHA-256 of a secret, as stored.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Store {
    /// Adds a token; `Ok(false)` when the name is taken.
    pub fn token_insert(&self, token: &Token, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let r = self.conn().execute(
            "INSERT INTO tokens (name, hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![token.name, &hash[..], token.created_at, token.expires_at],
        );
        match r {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Ok(false)
            }
            r => r.map(|_| true).map_err(Into::into),
        }
    }

    /// Every token, by name.
    pub fn token_list(&self) -> Result<Vec<Token>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, created_at, last_used, expires_at FROM tokens ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok(Token {
                name: r.get(0)?,
                created_at: r.get(1)?,
                last_used: r.get(2)?,
                expires_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the token called `name`; whether there was one.
    pub fn token_delete(&self, name: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM tokens WHERE name = ?1", params![name])?;
        Ok(n > 0)
    }

    /// Finds the token whose secret is `secret` at time `now` (RFC 3339, as the API
    /// writes it) and records its use.
    pub fn token_authenticate(&self, secret: &str, now: &str) -> Result<Authenticated, StoreError> {
        let presented = hash(secret);
        let conn = self.conn();
        let mut found = None;
        {
            let mut stmt = conn.prepare("SELECT name, hash, expires_at FROM tokens")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })?;
            // Every row is compared, in constant time, whatever matched before.
            for row in rows {
                let (name, stored, expires) = row?;
                if bool::from(stored.as_slice().ct_eq(&presented[..])) {
                    found = Some((name, expires));
                }
            }
        }
        Ok(match found {
            None => Authenticated::Unknown,
            Some((name, Some(at))) if at.as_str() <= now => Authenticated::Expired(name, at),
            Some((name, _)) => {
                conn.execute(
                    "UPDATE tokens SET last_used = ?2 WHERE name = ?1",
                    params![name, now],
                )?;
                Authenticated::Token(name)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, expires_at: Option<&str>) -> Token {
        Token {
            name: name.into(),
            created_at: "2025-01-01T00:00:00.000Z".into(),
            last_used: None,
            expires_at: expires_at.map(Into::into),
        }
    }

    #[test]
    fn tokens_authenticate_until_revoked_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.db")).unwrap();
        assert!(s.token_insert(&token("a", None), &hash("pdk_a")).unwrap());
        assert!(!s
            .token_insert(&token("a", None), &hash("pdk_other"))
            .unwrap());
        let old = Some("2025-06-01T00:00:00.000Z");
        assert!(s.token_insert(&token("b", old), &hash("pdk_b")).unwrap());
        let now = "2025-07-01T00:00:00.000Z";
        assert_eq!(
            s.token_authenticate("pdk_a", now).unwrap(),
            Authenticated::Token("a".into())
        );
        assert_eq!(s.token_list().unwrap()[0].last_used.as_deref(), Some(now));
        assert!(matches!(
            s.token_authenticate("pdk_b", now).unwrap(),
            Authenticated::Expired(n, _) if n == "b"
        ));
        assert_eq!(
            s.token_authenticate("pdk_b", "2025-05-01T00:00:00.000Z")
                .unwrap(),
            Authenticated::Token("b".into())
        );
        assert_eq!(
            s.token_authenticate("pdk_x", now).unwrap(),
            Authenticated::Unknown
        );
        assert!(s.token_delete("a").unwrap());
        assert!(!s.token_delete("a").unwrap());
        assert_eq!(
            s.token_authenticate("pdk_a", now).unwrap(),
            Authenticated::Unknown
        );
    }
}
