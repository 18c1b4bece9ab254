//! `router`: several resources in one handler with the SDK's `Router`,
//! routed wherever the gateway configuration mounts it (the tests use
//! `/api`). Its patterns are relative to that route, so deployed at `/api`
//! it answers `/api/users`, and at `/` it answers `/users`.
//!
//! - `GET /users`: `alice` and `bob`, one a line.
//! - `GET /users/{id}`: `user ID`.
//! - `POST /users`: 201 with the body as sent.
//! - `GET /where`: the whole path, the path below the route and the route,
//!   one `name: value` line each (`-` for no route).
//!
//! Any other path is 404 naming it; another method on a known path is 405.

use wasmgate_sdk::http::StatusCode;
use wasmgate_sdk::{Request, RequestExt, Response, Router};

#[wasmgate_sdk::handler]
fn router(req: Request) -> Response {
    Router::new()
        .get("/users", |_| "alice\nbob\n")
        .get("/users/{id}", |req: Request| {
            format!("user {}\n", req.param("id").unwrap_or_default())
        })
        .post("/users", |req: Request| {
            (StatusCode::CREATED, req.into_body())
        })
        .get("/where", |req: Request| {
            format!(
                "path: {}\nrelative: {}\nroute: {}\n",
                req.uri().path(),
                req.relative_path(),
                req.route().unwrap_or("-")
            )
        })
        .handle(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing::{Context, get, post, routed};

    fn text(resp: &Response) -> &str {
        std::str::from_utf8(resp.body()).expect("utf-8")
    }

    #[test]
    fn answers_below_its_route() {
        let mut t = Context::new();
        let resp = t.call(router, routed("/api", get("/api/users")));
        assert_eq!(resp.status(), 200);
        assert_eq!(text(&resp), "alice\nbob\n");
        let resp = t.call(router, routed("/api", get("/api/users/7")));
        assert_eq!(text(&resp), "user 7\n");
        let resp = t.call(router, routed("/api", post("/api/users", "carol")));
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.body(), b"carol");
    }

    #[test]
    fn shows_the_whole_path_the_relative_path_and_the_route() {
        let mut t = Context::new();
        let resp = t.call(router, routed("/api", get("/api/where?x=1")));
        assert_eq!(
            text(&resp),
            "path: /api/where\nrelative: /where\nroute: /api\n"
        );
        let resp = t.call(router, get("/where"));
        assert_eq!(text(&resp), "path: /where\nrelative: /where\nroute: -\n");
    }

    #[test]
    fn an_unknown_path_is_404_naming_it() {
        let mut t = Context::new();
        let resp = t.call(router, routed("/api", get("/api/nope")));
        assert_eq!(resp.status(), 404);
        assert!(text(&resp).contains("\"/nope\""), "{}", text(&resp));
        assert!(text(&resp).contains("\"/api/nope\""), "{}", text(&resp));
    }
}
