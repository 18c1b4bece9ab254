//! `cpu`: the seed CPU workload, routed wherever the gateway configuration
//! mounts it (the examples use `/cpu`).
//!
//! Runs [`cpu_work::spin`] for `?iters=N` rounds (default
//! [`cpu_work::DEFAULT_ITERS`], about 4 ms of native CPU) and answers 200 with
//! the result and a newline. A malformed `iters` gets 400. There is no upper
//! bound here: the gateway's fuel budget stops runaway requests. Each request
//! records its iteration count in the guest histogram `cpu_iterations`.

use wasmgate_sdk::http::StatusCode;
use wasmgate_sdk::{Request, metrics};

#[wasmgate_sdk::handler]
fn cpu(req: Request) -> Result<String, (StatusCode, String)> {
    let iters = iters(req.uri().query())?;
    metrics::histogram_observe("cpu_iterations", iters as f64);
    Ok(format!("{}\n", cpu_work::spin(iters)))
}

/// The `iters` query parameter, or the default when absent; the last one wins
/// if repeated.
fn iters(query: Option<&str>) -> Result<u64, (StatusCode, String)> {
    let value = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.strip_prefix("iters="))
        .next_back();
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

    #[test]
    fn iters_from_query() {
        assert_eq!(iters(None), Ok(cpu_work::DEFAULT_ITERS));
        assert_eq!(iters(Some("x=1")), Ok(cpu_work::DEFAULT_ITERS));
        assert_eq!(iters(Some("iters=7")), Ok(7));
        assert_eq!(iters(Some("a=b&iters=1&iters=9")), Ok(9));
        let (status, _) = iters(Some("iters=-1")).expect_err("negative");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(iters(Some("iters=")).is_err());
    }
}
