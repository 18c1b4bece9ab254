//! The admin write API's routing: which method and path is which
//! operation, who may call it, and its metric.
//!
//! Every request names its caller with a bearer token (`auth.rs`). Tenants
//! as a whole and reloads are the root's; a tenant's handlers are also
//! the tenant's own.

use http::{Method, Request, Response, header};
use hyper::body::Incoming;

use super::Admin;
use super::bodies::drain;
use super::ops::{Call, Operation};
use super::wire::Rejection;
use crate::request::body::ResponseBody;

/// The header that carries the cluster revision an answer reflects.
pub const REVISION_HEADER: &str = "x-wasmgate-revision";

/// An operation and the tenant and handler its path names.
type Route<'a> = (Operation, Option<&'a str>, Option<&'a str>);

/// The operation `method` on `path` (after `/admin/`) asks for.
fn route<'a>(method: &Method, path: &'a str) -> Option<Route<'a>> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let route = match (method, segments.as_slice()) {
        (&Method::GET, ["tenants"]) => (Operation::ListTenants, None, None),
        (&Method::PUT, ["tenants", t]) => (Operation::PutTenant, Some(*t), None),
        (&Method::DELETE, ["tenants", t]) => (Operation::DeleteTenant, Some(*t), None),
        (&Method::GET, ["tenants", t, "handlers"]) => (Operation::ListHandlers, Some(*t), None),
        (&Method::GET, ["tenants", t, "handlers", h]) => {
            (Operation::GetHandler, Some(*t), Some(*h))
        }
        (&Method::PUT, ["tenants", t, "handlers", h]) => {
            (Operation::PutHandler, Some(*t), Some(*h))
        }
        (&Method::PATCH, ["tenants", t, "handlers", h]) => {
            (Operation::PatchHandler, Some(*t), Some(*h))
        }
        (&Method::POST, ["tenants", t, "handlers", h, "rollback"]) => {
            (Operation::Rollback, Some(*t), Some(*h))
        }
        (&Method::DELETE, ["tenants", t, "handlers", h]) => {
            (Operation::DeleteHandler, Some(*t), Some(*h))
        }
        (&Method::POST, ["reload"]) => (Operation::Reload, None, None),
        (&Method::GET, ["cluster"]) => (Operation::Cluster, None, None),
        (&Method::PUT, ["tenants", t, "statics"]) => (Operation::PutStatic, Some(*t), None),
        (&Method::DELETE, ["tenants", t, "statics"]) => (Operation::DeleteStatic, Some(*t), None),
        (&Method::POST, ["tenants", t, "follow-config"]) => {
            (Operation::FollowConfig, Some(*t), None)
        }
        _ => return None,
    };
    Some(route)
}

/// Answers a request under `/admin/`.
pub(super) async fn handle(admin: &Admin, request: Request<Incoming>) -> Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    let Some((operation, tenant, handler)) =
        route(request.method(), path.trim_start_matches("/admin/"))
    else {
        drain(request.into_body()).await;
        return Rejection::not_found().into_response();
    };
    let (tenant, handler) = (tenant.map(str::to_owned), handler.map(str::to_owned));
    let scope = if operation.tenant_may() {
        tenant.as_deref()
    } else {
        None
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    // In cluster mode every answer reflects each write acknowledged before
    // the request came, through whichever replica took it (tokens named
    // there too): this replica first catches up with the store.
    // `/admin/cluster` reads the store itself, and says when it is behind.
    if !matches!(operation, Operation::Cluster)
        && let Some(shared) = admin.registry.shared()
    {
        shared.catch_up().await;
    }
    let caller = admin.tokens().authorize(authorization.as_deref(), scope);
    let result = match caller {
        Err(denied) => {
            drain(request.into_body()).await;
            if operation.writes() {
                tracing::info!(
                    operation = operation.as_str(),
                    tenant = tenant.as_deref().unwrap_or("-"),
                    handler = handler.as_deref().unwrap_or("-"),
                    result = %format!("denied: {denied}"),
                    "admin write"
                );
            }
            Err(Rejection::from(denied))
        }
        Ok(caller) => {
            let call = Call {
                admin,
                caller,
                operation,
                tenant,
                handler,
            };
            match operation {
                Operation::ListTenants => call.list_tenants().await,
                Operation::PutTenant => call.put_tenant(request).await,
                Operation::DeleteTenant => call.delete_tenant().await,
                Operation::ListHandlers => call.list_handlers().await,
                Operation::GetHandler => call.get_handler().await,
                Operation::PutHandler => call.put_handler(request).await,
                Operation::PatchHandler => call.patch_handler(request).await,
                Operation::Rollback => call.rollback(request).await,
                Operation::DeleteHandler => call.delete_handler(request).await,
                Operation::Reload => call.reload().await,
                Operation::FollowConfig => call.follow_config().await,
                Operation::PutStatic => call.put_static(request).await,
                Operation::DeleteStatic => call.delete_static(request).await,
                Operation::Cluster => call.cluster().await,
            }
        }
    };
    let mut response = result.unwrap_or_else(Rejection::into_response);
    // In cluster mode every answer says which revision it reflects: a
    // write's is at least the one it committed.
    if let Some(shared) = admin.registry.shared() {
        response.headers_mut().insert(
            REVISION_HEADER,
            header::HeaderValue::from(shared.applied_revision()),
        );
    }
    admin
        .metrics
        .admin_request(operation.as_str(), response.status());
    response
}
