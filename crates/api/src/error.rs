//! Errors of the API crate: binding the socket, and every way a request can
//! be refused before it reaches the VMM. Each one maps to an HTTP status and
//! a one-line `fault_message` that names the path, resource or field at fault.

use std::path::PathBuf;

use thiserror::Error;

use crate::response::ApiResponse;

/// An error of the API layer.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The socket path is already taken (Firecracker refuses to reuse it too).
    #[error("API socket {0} already exists; remove it or choose another path")]
    SocketExists(PathBuf),
    /// `bind(2)` or `listen(2)` on the socket failed.
    #[error("cannot bind the API socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No route for this method and path.
    #[error("Invalid request method and/or path: {method} {path}")]
    InvalidRoute { method: String, path: String },
    /// A PUT or PATCH that needs a body came without one.
    #[error("empty {method} request body for {path}")]
    EmptyBody { method: String, path: String },
    /// A request that takes no body came with one.
    #[error("{method} {path} takes no request body")]
    UnexpectedBody { method: String, path: String },
    /// The path's id segment is empty or not a valid id.
    #[error("invalid {what} in the path: {reason}")]
    InvalidPathId { what: &'static str, reason: String },
    /// The id in the path and the id in the body differ.
    #[error(
        "the {field} in the path ({path_id}) does not match the {field} in the body ({body_id})"
    )]
    IdMismatch {
        field: &'static str,
        path_id: String,
        body_id: String,
    },
    /// The body is not valid JSON for the resource (syntax, types, missing
    /// or unknown fields); `message` names the field where serde can.
    #[error("invalid {resource} body: {message}")]
    InvalidBody {
        resource: &'static str,
        message: String,
    },
    /// The body parsed but a field's value is out of range.
    #[error("invalid {resource}: {field}: {reason}")]
    InvalidField {
        resource: &'static str,
        field: String,
        reason: String,
    },
}

impl ApiError {
    /// The HTTP status this error is answered with. Every request error is a
    /// 400, as in Firecracker; socket errors never reach a client.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::SocketExists(_) | ApiError::Bind { .. } => 500,
            _ => 400,
        }
    }

    /// The response a client gets for this error.
    pub fn to_response(&self) -> ApiResponse {
        ApiResponse::fault(self.status(), &self.to_string())
    }
}
