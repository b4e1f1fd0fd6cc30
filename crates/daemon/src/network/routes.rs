//! `/api/v1/networks`: define, list, show, delete.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use paddock_api::network::{Network, NetworkSpec};

use super::ops;
use crate::error::OpError;
use crate::peer::Peer;
use crate::routes::{body_bytes, parse, Body};
use crate::supervisor::Supervisor;

type Sup = State<Arc<Supervisor>>;

/// The network routes, merged into the daemon's router.
pub fn router() -> Router<Arc<Supervisor>> {
    Router::new()
        .route("/api/v1/networks", get(list).post(define))
        .route("/api/v1/networks/{name}", get(show).delete(delete))
}

async fn list(State(sup): Sup) -> Result<Json<Vec<Network>>, OpError> {
    Ok(Json(ops::list(&sup)?))
}

async fn show(State(sup): Sup, Path(name): Path<String>) -> Result<Json<Network>, OpError> {
    Ok(Json(ops::get(&sup, &name)?))
}

async fn define(
    State(sup): Sup,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: Body,
) -> Result<Response, OpError> {
    let bytes = body_bytes(body)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(OpError::BadRequest(
            "send a network as the JSON body: {\"name\": ..., \"ipv4\": ..., \"nat\": ..., \"dhcp\": ...}".into(),
        ));
    }
    let spec: NetworkSpec = parse(&bytes, "network")?;
    let net = ops::define(sup, peer.uid, spec).await?;
    Ok((StatusCode::CREATED, Json(net)).into_response())
}

async fn delete(
    State(sup): Sup,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
) -> Result<StatusCode, OpError> {
    ops::delete(sup, peer.uid, name).await?;
    Ok(StatusCode::NO_CONTENT)
}
