//! One error type for every JSON route: the agent's [`Error`] mapped to a
//! status code by its variant. Causes the client cannot act on are logged and
//! answered with a short message; no message holds a secret.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use edgeseal_agent::Error;
use tracing::{debug, error};

/// What an error answer carries.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong, naming the field or the thing not found.
    pub error: String,
}

/// An error answered as `{"error": message}` with the status its variant calls for.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        ApiError(e)
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match &self.0 {
            Error::BadInput(_) => StatusCode::BAD_REQUEST,
            Error::NoSuchStream(_) | Error::NoSuchPeer(_) | Error::NoSuchGrant { .. } => StatusCode::NOT_FOUND,
            Error::NoBroker(_) | Error::PairingFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::BrokerUnreachable(_) | Error::BrokerRefused(_) | Error::Mqtt(_) => StatusCode::BAD_GATEWAY,
            Error::BrokerTimedOut(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Integrity(_) | Error::Busy(_) => StatusCode::CONFLICT,
            Error::NotInitialised(_) | Error::StoreUnreachable(_) | Error::Stopping(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Config(_)
            | Error::Store(_)
            | Error::Local(_)
            | Error::Keystore(_)
            | Error::Io { .. }
            | Error::Core(_)
            | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told: the message where it can act on it, else a short one (the cause is logged).
    pub fn message(&self) -> String {
        match &self.0 {
            Error::Local(_) | Error::Io { .. } | Error::Core(_) | Error::Internal(_) | Error::Keystore(_) => {
                "the agent failed to do that; its log says why".into()
            }
            Error::Store(_) => "the store failed; the agent's log says why".into(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            error!("HTTP {status}: {}", self.0);
        } else {
            debug!("HTTP {status}: {}", self.0);
        }
        (status, Json(ErrorBody { error: self.message() })).into_response()
    }
}
