//! The request path: a public request routed by the published table, its
//! body read within its bounds, admitted, run in its guest on the worker
//! pool (or served from a static mount), and answered.
//!
//! [`gateway`] reads route -> body -> admit -> submit -> wait, top to
//! bottom; [`static_files`] serves mounted directories without a guest;
//! [`body`] holds buffered bodies and the memory budget they draw from.
//! Nothing here blocks an async thread or runs guest code.

pub mod body;
pub mod gateway;
pub mod static_files;
