//! `/api/v1/tokens`: create (on the Unix socket only; the secret is answered once), list
//! (never secrets) and revoke API tokens for the TCP + TLS listener. Every change and every
//! refused change is audited.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use base64::Engine;
use paddock_api::tokens::{NewToken, Token, TokenRequest, TOKEN_PREFIX};
use paddock_api::ErrorBody;
use rand::RngCore;

use crate::auth::TokenCaller;
use crate::error::OpError;
use crate::peer::Peer;
use crate::supervisor::{now, Supervisor};
use crate::token_store::hash;

/// Longest expiry, in days.
const MAX_DAYS: u32 = 3650;

type Sup = State<Arc<Supervisor>>;

/// The token routes, merged into the API router.
pub fn routes() -> Router<Arc<Supervisor>> {
    Router::new()
        .route("/api/v1/tokens", get(list).post(create))
        .route("/api/v1/tokens/{name}", delete(revoke))
}

/// A new secret: the prefix and 32 random bytes from the OS in unpadded base64url.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn check_name(name: &str) -> Result<(), OpError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(OpError::Invalid {
            field: "name".into(),
            message: "1-64 characters of A-Z a-z 0-9 . _ -".into(),
        })
    }
}

fn expiry(days: Option<u32>) -> Result<Option<String>, OpError> {
    let Some(days) = days else { return Ok(None) };
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(OpError::Invalid {
            field: "expires_in_days".into(),
            message: format!("between 1 and {MAX_DAYS}, or absent for a token that never expires"),
        });
    }
    let at = SystemTime::now() + Duration::from_secs(u64::from(days) * 86_400);
    Ok(Some(humantime::format_rfc3339_millis(at).to_string()))
}

fn issue(sup: &Supervisor, body: Result<Bytes, BytesRejection>) -> Result<NewToken, OpError> {
    let bytes =
        body.map_err(|r| OpError::BadRequest(format!("cannot read the body: {}", r.body_text())))?;
    let req: TokenRequest = serde_json::from_slice(&bytes).map_err(|e| {
        OpError::BadRequest(format!(
            "the body is not a token request ({{\"name\": ..., \"expires_in_days\": N}}): {e}"
        ))
    })?;
    check_name(&req.name)?;
    let token = Token {
        expires_at: expiry(req.expires_in_days)?,
        name: req.name,
        created_at: now(),
        last_used: None,
    };
    let secret = new_secret();
    if !sup.store().token_insert(&token, &hash(&secret))? {
        return Err(OpError::Conflict(format!(
            "a token named '{}' exists; revoke it first (`paddock token revoke {}`) or pick another name",
            token.name, token.name
        )));
    }
    Ok(NewToken { token, secret })
}

async fn create(
    State(sup): Sup,
    ConnectInfo(peer): ConnectInfo<Peer>,
    caller: Option<Extension<TokenCaller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if caller.is_some() {
        let error = "tokens are created on the daemon's host, over its Unix socket \
                     (`paddock token create NAME`), so a leaked token cannot mint others";
        sup.record(peer.uid, "token-create", "", error);
        let body = ErrorBody {
            error: error.into(),
            field: None,
        };
        return (StatusCode::FORBIDDEN, Json(body)).into_response();
    }
    // The name asked for, for the audit log of a refusal.
    let target = body
        .as_ref()
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .unwrap_or_default();
    match issue(&sup, body) {
        Ok(t) => {
            sup.record(peer.uid, "token-create", &t.token.name, "ok");
            (StatusCode::CREATED, Json(t)).into_response()
        }
        Err(e) => {
            // Unreadable requests are not audited, as elsewhere in the API.
            if !matches!(e, OpError::BadRequest(_)) {
                sup.record(peer.uid, "token-create", &target, &e.to_string());
            }
            e.into_response()
        }
    }
}

async fn list(State(sup): Sup) -> Result<Json<Vec<Token>>, OpError> {
    Ok(Json(sup.store().token_list()?))
}

async fn revoke(
    State(sup): Sup,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
) -> Result<StatusCode, OpError> {
    let r = match sup.store().token_delete(&name) {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(OpError::NotFound(format!(
            "no token named '{name}'; `paddock token list` shows them"
        ))),
        Err(e) => Err(e.into()),
    };
    let result = match &r {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    sup.record(peer.uid, "token-revoke", &name, &result);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_random_and_url_safe() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("pdk_"));
        assert_eq!(a.len(), 4 + 43);
        assert!(a[4..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn names_and_expiries_are_checked() {
        assert!(check_name("ci-runner.1").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(expiry(None).unwrap(), None);
        assert!(expiry(Some(1)).unwrap().unwrap() > now());
        assert!(expiry(Some(0)).is_err() && expiry(Some(MAX_DAYS + 1)).is_err());
    }
}
