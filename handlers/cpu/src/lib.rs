//! `cpu`: the seed CPU workload, routed wherever the gateway configuration
//! mounts it (the examples use `/cpu`).
//!
//! Runs [`cpu_work::spin`] for `?iters=N` rounds (default
//! [`cpu_work::DEFAULT_ITERS`], about 4 ms of native CPU) and answers 200 with
//! the result and a newline; if `iters` repeats, the first counts. A
//! malformed `iters` gets 400. There is no upper
//! bound here: the gateway's fuel budget stops runaway requests. Each request
//! records its iteration count in the guest histogram `cpu_iterations`.

use wasmgate_sdk::http::StatusCode;
use wasmgate_sdk::{Request, RequestExt, metrics};

#[wasmgate_sdk::handler]
fn cpu(req: Request) -> Result<String, (StatusCode, String)> {
    let iters = iters(req.query("iters").as_deref())?;
    metrics::histogram_observe("cpu_iterations", iters as f64);
    Ok(format!("{}\n", cpu_work::spin(iters)))
}

/// The `iters` query parameter's value, or the default when absent.
fn iters(value: Option<&str>) -> Result<u64, (StatusCode, String)> {
    match value {
        None => Ok(cpu_work::DEFAULT_ITERS),
        Some(v) => v.parse().map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                format!("iters must be a non-negative integer, got {v:?}\n"),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing::{Context, get};

    #[test]
    fn iters_from_the_query() {
        let mut t = Context::new();
        for (uri, iters) in [
            ("/cpu?iters=7", 7),
            ("/cpu?x=1&iters=9", 9),
            ("/cpu?iters=3&iters=9", 3),
            ("/cpu", cpu_work::DEFAULT_ITERS),
            ("/cpu?x=1", cpu_work::DEFAULT_ITERS),
        ] {
            let resp = t.call(cpu, get(uri));
            assert_eq!(resp.status(), 200, "{uri}");
            assert_eq!(t.values("cpu_iterations").last(), Some(&(iters as f64)));
        }
        let resp = t.call(cpu, get("/cpu?iters=7"));
        assert_eq!(resp.body(), format!("{}\n", cpu_work::spin(7)).as_bytes());
    }

    #[test]
    fn malformed_iters_is_400_and_records_nothing() {
        let mut t = Context::new();
        for uri in ["/cpu?iters=-1", "/cpu?iters=", "/cpu?iters=lots"] {
            let resp = t.call(cpu, get(uri));
            assert_eq!(resp.status(), 400, "{uri}");
        }
        assert!(t.values("cpu_iterations").is_empty());
    }
}
