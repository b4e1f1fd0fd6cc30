//! The REST API: axum routes under `/api/v1`, `/openapi.json` and `/metrics`. Handlers parse
//! and check input, then hand over to the [`Supervisor`]; every error is an [`ErrorBody`]
//! with a 4xx or 5xx status, and a refused request changes nothing.
//!
//! [`ErrorBody`]: paddock_api::ErrorBody

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use paddock_api::{StopRequest, Vm};
use paddock_spec::VmSpec;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast::error::RecvError;

use crate::error::OpError;
use crate::lifecycle::Request;
use crate::metrics;
use crate::peer::Peer;
use crate::supervisor::Supervisor;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 1 << 20;

type Sup = State<Arc<Supervisor>>;
type Who = ConnectInfo<Peer>;
pub(crate) type Body = Result<Bytes, BytesRejection>;

/// The router over `sup`.
pub fn router(sup: Arc<Supervisor>) -> Router {
    let vm = "/api/v1/vms/{name}";
    let mut r = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(get_metrics))
        .route("/api/v1/vms", get(list).post(define))
        .route(vm, get(show).delete(delete))
        .route(&format!("{vm}/console"), get(crate::ws::console::console))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/events", get(crate::ws::events::events))
        .merge(crate::storage::routes(sup.clone()));
    for request in [
        Request::Start,
        Request::Stop,
        Request::Restart,
        Request::Pause,
        Request::Resume,
    ] {
        r = r.route(
            &format!("{vm}/{}", request.as_str()),
            post(move |s: Sup, w: Who, p: Path<String>, b: Body| act(s, w, p, b, request)),
        );
    }
    r = r.merge(crate::tokens::routes());
    r.merge(crate::network::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(sup)
}

async fn not_found() -> OpError {
    OpError::NotFound("no such path; GET /openapi.json lists the API".into())
}

async fn method_not_allowed() -> Response {
    let body = paddock_api::ErrorBody {
        error: "method not allowed on this path; GET /openapi.json lists the API".into(),
        field: None,
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// The body, or the error a client should see.
pub(crate) fn body_bytes(body: Body) -> Result<Bytes, OpError> {
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            OpError::TooLarge(format!("request body over {} bytes", BODY_LIMIT))
        } else {
            OpError::BadRequest(format!("cannot read the request body: {}", rej.body_text()))
        }
    })
}

/// Parses JSON, naming the position of a syntax error or the field serde refused.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, OpError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                OpError::BadRequest(format!("the body is not valid JSON: {e}"))
            }
            Category::Data => OpError::BadRequest(format!("the body is not a valid {what}: {e}")),
        }
    })
}

async fn openapi() -> Json<serde_json::Value> {
    Json(paddock_api::openapi::document())
}

/// `GET /api/v1/vms?view=full|summary`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    view: Option<String>,
}

async fn list(
    State(sup): Sup,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, OpError> {
    let bad = || OpError::Invalid {
        field: "view".into(),
        message: "the query takes view=full (the default) or view=summary".into(),
    };
    match query.map_err(|_| bad())?.0.view.as_deref() {
        None | Some("full") => Ok(Json(sup.list()?).into_response()),
        Some("summary") => Ok(Json(sup.store().summaries()?).into_response()),
        Some(_) => Err(bad()),
    }
}

async fn show(State(sup): Sup, Path(name): Path<String>) -> Result<Json<Vm>, OpError> {
    Ok(Json(sup.get(&name)?))
}

async fn define(State(sup): Sup, ConnectInfo(peer): Who, body: Body) -> Result<Response, OpError> {
    let bytes = body_bytes(body)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(OpError::BadRequest(
            "send a VM spec as the JSON body".into(),
        ));
    }
    // An optional top-level `driver` (`paddock-vmm`, `qemu`) beside the spec's fields.
    let mut body: serde_json::Value = parse(&bytes, "VM spec")?;
    let driver = match body.as_object_mut().and_then(|o| o.remove("driver")) {
        None => None,
        Some(serde_json::Value::String(d)) => Some(d),
        Some(_) => {
            return Err(OpError::Invalid {
                field: "driver".into(),
                message: "a driver name: paddock-vmm or qemu".into(),
            })
        }
    };
    let spec: VmSpec = serde_json::from_value(body)
        .map_err(|e| OpError::BadRequest(format!("the body is not a valid VM spec: {e}")))?;
    let vm = sup.define(peer.uid, spec, driver).await?;
    Ok((StatusCode::CREATED, Json(vm)).into_response())
}

/// `DELETE /api/v1/vms/{name}?volumes=keep|delete`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default)]
    volumes: Option<String>,
}

async fn delete(
    State(sup): Sup,
    ConnectInfo(peer): Who,
    Path(name): Path<String>,
    query: Result<axum::extract::Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, OpError> {
    let bad = || OpError::Invalid {
        field: "volumes".into(),
        message: "the query takes volumes=keep (the default) or volumes=delete".into(),
    };
    let volumes = match query.map_err(|_| bad())?.0.volumes.as_deref() {
        None | Some("keep") => false,
        Some("delete") => true,
        Some(_) => return Err(bad()),
    };
    sup.delete(peer.uid, &name, volumes).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn act(
    State(sup): Sup,
    ConnectInfo(peer): Who,
    Path(name): Path<String>,
    body: Body,
    request: Request,
) -> Result<Json<Vm>, OpError> {
    let bytes = body_bytes(body)?;
    let stop = if bytes.iter().all(u8::is_ascii_whitespace) {
        StopRequest::default()
    } else if matches!(request, Request::Stop | Request::Restart) {
        parse::<StopRequest>(&bytes, "stop request")?
    } else {
        // The other actions take no parameters; an empty object is allowed.
        parse::<EmptyBody>(&bytes, "request (no fields are accepted)")?;
        StopRequest::default()
    };
    Ok(Json(sup.act(peer.uid, &name, request, stop).await?))
}

/// The body of actions without parameters: `{}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

pub(crate) async fn console(
    State(sup): Sup,
    Path(name): Path<String>,
) -> Result<Response, OpError> {
    let vm = sup.get(&name)?;
    let path = sup.paths(vm.id).console();
    let text = match tokio::fs::read(&path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(OpError::Internal(format!("{}: {e}", path.display()))),
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

async fn audit(State(sup): Sup) -> Result<Json<Vec<paddock_api::AuditEntry>>, OpError> {
    Ok(Json(sup.audit_log()?))
}

async fn get_metrics(State(sup): Sup) -> Result<Response, OpError> {
    let mut rows = Vec::new();
    for vm in sup.list()? {
        let st = if vm.state.has_process() {
            sup.runtime_status(vm.id).await
        } else {
            None
        };
        rows.push((vm, st));
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&rows)
            + &crate::metrics_proc::render(&rows)
            + &crate::storage::metrics::render(sup.store())
            + &crate::network::render_metrics(&rows),
    )
        .into_response())
}

pub(crate) async fn events(
    State(sup): Sup,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = sup.subscribe();
    let s = stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let data = serde_json::to_string(&ev).unwrap_or_default();
                    let sse = SseEvent::default().event(ev.kind()).data(data);
                    return Some((Ok(sse), rx));
                }
                // A slow reader misses events rather than holding the daemon back.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(s).keep_alive(KeepAlive::default())
}
