//! Vireo's REST API, the HTTP side: the Firecracker-compatible JSON models
//! ([`models`]), the router that turns a method, path and body into a typed
//! [`ApiRequest`] ([`router`]), responses ([`ApiResponse`]) and an HTTP/1.1
//! server on a Unix socket that hands each request to the VMM over a
//! channel ([`server`]). It knows nothing of the VMM: the VMM receives
//! [`VmmRequest`]s and answers each with an [`ApiResponse`].
//! See docs/api.md for the design.

pub mod client;
pub mod error;
mod http;
pub mod models;
pub mod response;
pub mod router;
pub mod server;

pub use error::ApiError;
pub use response::ApiResponse;
pub use router::{parse_request, ApiRequest, Method, ROUTES};
pub use server::{ApiServer, ServerLimits, VmmRequest};
