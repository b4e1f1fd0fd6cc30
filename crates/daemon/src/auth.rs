//! Bearer-token authentication for the TCP + TLS listener, and who the audit log names.
//!
//! Every request on the TLS listener passes [`require_token`]: it must carry
//! `Authorization: Bearer <secret>` of a live token, or it is answered 401 before any
//! handler runs. The token's name is then the caller for the rest of the request: handlers
//! see it as a [`TokenCaller`] extension, and the audit log (through [`who`]) records
//! `token:<name>` for whatever the request changes, without the supervisor's methods taking
//! a new argument. On the Unix socket the caller is the peer's uid (`uid:N`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use paddock_api::ErrorBody;

use crate::supervisor::{now, Supervisor};
use crate::token_store::Authenticated;

tokio::task_local! {
    /// The caller of the request being served, when it came over TCP (`token:<name>`).
    static CALLER: String;
}

/// The token that authenticated a TCP request (a request extension; absent on the socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCaller(pub String);

/// Who the audit log names for a change: the token of the TCP request being served, else
/// `uid:N` for a socket caller, else nobody (the daemon's own changes).
pub fn who(uid: Option<u32>) -> Option<String> {
    CALLER
        .try_with(Clone::clone)
        .ok()
        .or_else(|| uid.map(|u| format!("uid:{u}")))
}

const HOW: &str = "create a token on the daemon's host with `paddock token create NAME` and \
                   pass it with --token or PADDOCK_TOKEN (header `Authorization: Bearer pdk_...`)";

fn unauthorized(why: &str) -> Response {
    let body = ErrorBody {
        error: format!("{why}; {HOW}"),
        field: None,
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"paddockd\"")],
        Json(body),
    )
        .into_response()
}

/// The secret of an `Authorization: Bearer <secret>` header.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.trim().split_once(' ')?;
    let secret = secret.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty()).then_some(secret)
}

/// Middleware of the TLS listener: answers 401 unless the request carries a live token,
/// then serves it with the token as the caller.
pub async fn require_token(
    State(sup): State<Arc<Supervisor>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(secret) = bearer(&req) else {
        return unauthorized("this request carries no bearer token");
    };
    let name = match sup.store().token_authenticate(secret, &now()) {
        Ok(Authenticated::Token(name)) => name,
        Ok(Authenticated::Expired(name, at)) => {
            return unauthorized(&format!("token '{name}' expired at {at}"))
        }
        Ok(Authenticated::Unknown) => {
            return unauthorized("the bearer token is unknown or was revoked")
        }
        Err(e) => return crate::error::OpError::from(e).into_response(),
    };
    req.extensions_mut().insert(TokenCaller(name.clone()));
    CALLER.scope(format!("token:{name}"), next.run(req)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_caller_is_the_token_inside_a_request_and_the_uid_outside() {
        assert_eq!(who(Some(7)).as_deref(), Some("uid:7"));
        assert_eq!(who(None), None);
        let inside = CALLER
            .scope("token:ci".into(), async { (who(None), who(Some(7))) })
            .await;
        assert_eq!(inside, (Some("token:ci".into()), Some("token:ci".into())));
    }

    #[test]
    fn bearer_headers_are_parsed() {
        let req = |v: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, v)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(bearer(&req("Bearer pdk_x")), Some("pdk_x"));
        assert_eq!(bearer(&req("bearer  pdk_x ")), Some("pdk_x"));
        assert_eq!(bearer(&req("Basic abc")), None);
        assert_eq!(bearer(&req("Bearer ")), None);
    }
}
