//! Error answers: a status and `{"error": {"code", "message"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::protocol::{ErrorBody, ErrorDetail};

/// Seconds a `503 overloaded` answer asks the client to wait.
pub(crate) const OVERLOADED_RETRY_AFTER: u32 = 2;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// A snake_case code.
    pub code: &'static str,
    /// One line naming the object.
    pub message: String,
    /// Seconds to wait before trying again (sent as `Retry-After`).
    pub retry_after: Option<u32>,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `503 overloaded`: the server lacks a budget for this request just
    /// now; the client is asked to retry after
    /// [`OVERLOADED_RETRY_AFTER`] seconds.
    pub(crate) fn overloaded(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(OVERLOADED_RETRY_AFTER),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

/// Seconds a client is asked to wait while the store recovers from a
/// failed write.
const RECOVERING_RETRY_AFTER: u32 = 5;

impl From<tessera::Error> for ApiError {
    fn from(e: tessera::Error) -> Self {
        use tessera::Error as E;
        if let E::Poisoned { cause } = &e {
            // The engine's advice (reopen the store) is the server's
            // business, not the client's (see `recovery.rs`).
            tracing::error!(error = %e, "write refused: the store is recovering from a failed write");
            return ApiError {
                retry_after: Some(RECOVERING_RETRY_AFTER),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("the server is not taking writes after a failed write ({cause}); it resumes on its own once the cause is gone: try again shortly"),
                )
            };
        }
        let (status, code) = match &e {
            E::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            E::RangeOutOfBounds { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "range"),
            E::Rejected { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
            E::ChunksMissing { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "chunks_missing"),
            E::Refused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "refused_by_policy"),
            E::TensorUnreadable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "tensor_unreadable"),
            E::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            E::LeaseHeld { .. } => (StatusCode::CONFLICT, "lease_held"),
            E::StoreLocked { .. } | E::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            e if e.is_corruption() => (StatusCode::INTERNAL_SERVER_ERROR, "damaged"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        ApiError::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut r = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}
