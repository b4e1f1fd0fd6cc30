//! Request failures, each with its HTTP status and a message that says what to fix.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use paddock_api::ErrorBody;

use crate::driver::{DriverError, Unsupported};
use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request itself is malformed (not JSON, unknown field, wrong type).
    #[error("{0}")]
    BadRequest(String),
    /// The body is too large.
    #[error("{0}")]
    TooLarge(String),
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// The object's state does not allow the request, or the name is taken.
    #[error("{0}")]
    Conflict(String),
    /// A field does not validate or the driver cannot run it.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What to do.
        message: String,
    },
    /// The driver failed.
    #[error("{0}")]
    Driver(String),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Something else on the host failed.
    #[error("{0}")]
    Internal(String),
}

impl OpError {
    /// No VM has `name`.
    pub fn no_vm(name: &str) -> Self {
        OpError::NotFound(format!(
            "no VM named '{name}'; `paddock vm list` shows the defined VMs"
        ))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            OpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            OpError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            OpError::NotFound(_) => StatusCode::NOT_FOUND,
            OpError::Conflict(_) => StatusCode::CONFLICT,
            OpError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            OpError::Driver(_) | OpError::Store(_) | OpError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl From<Unsupported> for OpError {
    fn from(u: Unsupported) -> Self {
        OpError::Invalid {
            field: u.feature,
            message: u.reason,
        }
    }
}

impl From<DriverError> for OpError {
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::Unsupported(u) => u.into(),
            other => OpError::Driver(other.to_string()),
        }
    }
}

impl IntoResponse for OpError {
    fn into_response(self) -> Response {
        let field = match &self {
            OpError::Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: self.to_string(),
            field,
        };
        (self.status(), Json(body)).into_response()
    }
}
