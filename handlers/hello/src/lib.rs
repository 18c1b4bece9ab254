//! `hello`: the smallest useful handler, routed wherever the gateway
//! configuration mounts it (the examples use `/hello`).
//!
//! Answers 200 with `hello from wasmgate`, or `{greeting} from wasmgate:
//! hello` when the handler's config sets `greeting`, and counts each request
//! in the guest counter `hello_requests`.

use wasmgate_sdk::{Request, config, metrics};

#[wasmgate_sdk::handler]
fn hello(_req: Request) -> String {
    metrics::counter_add("hello_requests", 1);
    match config::get("greeting") {
        Some(greeting) => format!("{greeting} from wasmgate: hello\n"),
        None => "hello from wasmgate\n".to_owned(),
    }
}
