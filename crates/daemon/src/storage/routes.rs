//! The storage API: `/api/v1/pools...` and `/api/v1/tasks...`. Handlers parse the body, run
//! the operation on the blocking pool, and audit every request that reaches a pool, volume
//! or task (refused ones too).

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use paddock_api::storage::{
    CloneOutcome, Pool, PoolRequest, Task, Volume, VolumeClone, VolumeCreate, VolumeImport,
    VolumeResize,
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::Storage;
use crate::error::OpError;
use crate::peer::Peer;
use crate::routes::{body_bytes, parse, Body};
use crate::supervisor::Supervisor;

type St = State<Arc<Storage>>;
type Who = ConnectInfo<Peer>;

/// The storage routes over `sup`, ready to merge into the daemon's router.
pub fn routes<S: Clone + Send + Sync + 'static>(sup: Arc<Supervisor>) -> Router<S> {
    let vol = "/api/v1/pools/{pool}/volumes/{volume}";
    Router::new()
        .route("/api/v1/pools", get(list_pools).post(define_pool))
        .route("/api/v1/pools/{pool}", get(show_pool).delete(delete_pool))
        .route(
            "/api/v1/pools/{pool}/volumes",
            get(list_volumes).post(create_volume),
        )
        .route("/api/v1/pools/{pool}/volumes/import", post(import_volume))
        .route("/api/v1/pools/{pool}/volumes/clone", post(clone_volume))
        .route(vol, get(show_volume).delete(delete_volume))
        .route(&format!("{vol}/resize"), post(resize_volume))
        .route("/api/v1/tasks", get(list_tasks))
        .route("/api/v1/tasks/{id}", get(show_task))
        .route("/api/v1/tasks/{id}/cancel", post(cancel_task))
        .with_state(Arc::new(Storage::new(sup)))
}

/// Parses a required JSON body.
fn json_body<T: DeserializeOwned>(body: Body, what: &str) -> Result<T, OpError> {
    let bytes = body_bytes(body)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(OpError::BadRequest(format!(
            "send a {what} as the JSON body"
        )));
    }
    parse(&bytes, what)
}

/// Runs `f` on the blocking pool and audits the outcome as `action` on `target`.
async fn run<T: Send + 'static>(
    st: &Arc<Storage>,
    uid: Option<u32>,
    action: &str,
    target: String,
    f: impl FnOnce(&Storage) -> Result<T, OpError> + Send + 'static,
) -> Result<T, OpError> {
    let s = st.clone();
    let r = tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| OpError::Internal(format!("storage task failed: {e}")))
        .and_then(|r| r);
    st.sup.audit(uid, action, &target, &r);
    r
}

/// Runs a read-only `f` on the blocking pool.
async fn read<T: Send + 'static>(
    st: &Arc<Storage>,
    f: impl FnOnce(&Storage) -> Result<T, OpError> + Send + 'static,
) -> Result<T, OpError> {
    let s = st.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| OpError::Internal(format!("storage task failed: {e}")))?
}

async fn list_pools(State(st): St) -> Result<Json<Vec<Pool>>, OpError> {
    read(&st, |s| s.list_pools()).await.map(Json)
}

async fn show_pool(State(st): St, Path(pool): Path<String>) -> Result<Json<Pool>, OpError> {
    read(&st, move |s| s.get_pool(&pool)).await.map(Json)
}

async fn define_pool(
    State(st): St,
    ConnectInfo(peer): Who,
    body: Body,
) -> Result<Response, OpError> {
    let req: PoolRequest = json_body(body, "pool (name, path)")?;
    let target = req.name.clone();
    let pool = run(&st, peer.uid, "pool-define", target, move |s| {
        s.define_pool(req)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(pool)).into_response())
}

async fn delete_pool(
    State(st): St,
    ConnectInfo(peer): Who,
    Path(pool): Path<String>,
) -> Result<StatusCode, OpError> {
    let p = pool.clone();
    run(&st, peer.uid, "pool-delete", pool, move |s| {
        s.delete_pool(&p)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_volumes(
    State(st): St,
    Path(pool): Path<String>,
) -> Result<Json<Vec<Volume>>, OpError> {
    read(&st, move |s| s.list_volumes(&pool)).await.map(Json)
}

async fn show_volume(
    State(st): St,
    Path((pool, volume)): Path<(String, String)>,
) -> Result<Json<Volume>, OpError> {
    read(&st, move |s| s.get_volume(&pool, &volume))
        .await
        .map(Json)
}

async fn create_volume(
    State(st): St,
    ConnectInfo(peer): Who,
    Path(pool): Path<String>,
    body: Body,
) -> Result<Response, OpError> {
    let req: VolumeCreate = json_body(body, "volume (name, capacity, format)")?;
    let target = format!("{pool}/{}", req.name);
    let v = run(&st, peer.uid, "volume-create", target, move |s| {
        s.create_volume(&pool, req)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn import_volume(
    State(st): St,
    ConnectInfo(peer): Who,
    Path(pool): Path<String>,
    body: Body,
) -> Result<Response, OpError> {
    let req: VolumeImport = json_body(body, "volume import (name, source, format, convert_to)")?;
    let target = format!("{pool}/{}", req.name);
    let t = run(&st, peer.uid, "volume-import", target, move |s| {
        s.import_volume(&pool, req)
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(t)).into_response())
}

async fn clone_volume(
    State(st): St,
    ConnectInfo(peer): Who,
    Path(pool): Path<String>,
    body: Body,
) -> Result<Response, OpError> {
    let req: VolumeClone = json_body(body, "volume clone (name, from, linked)")?;
    let target = format!("{pool}/{}", req.name);
    let outcome = run(&st, peer.uid, "volume-clone", target, move |s| {
        s.clone_volume(&pool, req)
    })
    .await?;
    Ok(match outcome {
        CloneOutcome::Volume(v) => (StatusCode::CREATED, Json(v)).into_response(),
        CloneOutcome::Task(t) => (StatusCode::ACCEPTED, Json(t)).into_response(),
    })
}

async fn resize_volume(
    State(st): St,
    ConnectInfo(peer): Who,
    Path((pool, volume)): Path<(String, String)>,
    body: Body,
) -> Result<Json<Volume>, OpError> {
    let req: VolumeResize = json_body(body, "volume resize (capacity, shrink)")?;
    let target = format!("{pool}/{volume}");
    run(&st, peer.uid, "volume-resize", target, move |s| {
        s.resize_volume(&pool, &volume, req)
    })
    .await
    .map(Json)
}

async fn delete_volume(
    State(st): St,
    ConnectInfo(peer): Who,
    Path((pool, volume)): Path<(String, String)>,
) -> Result<StatusCode, OpError> {
    let target = format!("{pool}/{volume}");
    run(&st, peer.uid, "volume-delete", target, move |s| {
        s.delete_volume(&pool, &volume)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn task_id(id: &str) -> Result<Uuid, OpError> {
    Uuid::parse_str(id).map_err(|_| {
        OpError::NotFound(format!(
            "no task {id} (task ids are UUIDs); `paddock task list` shows them"
        ))
    })
}

async fn list_tasks(State(st): St) -> Result<Json<Vec<Task>>, OpError> {
    read(&st, |s| s.tasks.list()).await.map(Json)
}

async fn show_task(State(st): St, Path(id): Path<String>) -> Result<Json<Task>, OpError> {
    let id = task_id(&id)?;
    read(&st, move |s| s.tasks.get(id)).await.map(Json)
}

async fn cancel_task(
    State(st): St,
    ConnectInfo(peer): Who,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Task>, OpError> {
    let bytes = body_bytes(body)?;
    if !bytes.iter().all(u8::is_ascii_whitespace) && &bytes[..] != b"{}" {
        return Err(OpError::BadRequest(
            "cancel takes no body (no fields are accepted)".into(),
        ));
    }
    let r = match task_id(&id) {
        Ok(uuid) => st.tasks.cancel(uuid).await,
        Err(e) => Err(e),
    };
    st.sup.audit(peer.uid, "task-cancel", &id, &r);
    r.map(Json)
}
