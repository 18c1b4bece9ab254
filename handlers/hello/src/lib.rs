//! `hello`: the smallest useful handler, routed wherever the gateway
//! configuration mounts it (the examples use `/hello`).
//!
//! Answers 200 with `hello from wasmgate`, or `{greeting} from wasmgate:
//! hello` when the handler's config sets `greeting`, followed by `, NAME`
//! when the query has `name=NAME`. Counts each request in the guest counter
//! `hello_requests`.

use wasmgate_sdk::{Request, RequestExt, config, metrics};

#[wasmgate_sdk::handler]
fn hello(req: Request) -> String {
    metrics::counter_add("hello_requests", 1);
    let greeting = match config::get("greeting") {
        Some(greeting) => format!("{greeting} from wasmgate: hello"),
        None => "hello from wasmgate".to_owned(),
    };
    match req.query("name") {
        Some(name) => format!("{greeting}, {name}\n"),
        None => format!("{greeting}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing::{Context, get};

    #[test]
    fn greets_without_config() {
        let mut t = Context::new();
        let resp = t.call(hello, get("/hello"));
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.body(), b"hello from wasmgate\n");
        assert_eq!(t.counter("hello_requests"), 1);
    }

    #[test]
    fn uses_the_configured_greeting_and_the_name_in_the_query() {
        let mut t = Context::new().config("greeting", "hi");
        let resp = t.call(hello, get("/hello?x=1&name=a%20b"));
        assert_eq!(resp.body(), b"hi from wasmgate: hello, a b\n");
        t.call(hello, get("/hello"));
        assert_eq!(t.counter("hello_requests"), 2);
    }
}
