//! Method dispatch and path parameters inside one handler.
//!
//! The gateway routes a request to a handler by path prefix; a handler
//! deployed at `/api` that serves several resources under it dispatches
//! again on the method and the rest of the path. [`Router`] does that with
//! patterns like `/users/{id}`, matched against the path below the route
//! the gateway routed the request by ([`RequestExt::relative_path`]), so
//! the same handler works at any route.

use http::header::{ALLOW, HeaderValue};
use http::{Method, StatusCode};

use crate::request::PathParams;
use crate::{IntoResponse, Request, RequestExt, Response};

/// A function of a request, boxed so routes of different types share a list.
type BoxedHandler = Box<dyn Fn(Request) -> Response>;

/// Dispatches a request to one of several functions by method and by its
/// path below the handler's route: deployed at `/api`, the handler below
/// answers `GET /api/users` with `list` (at `/`, `GET /users`).
///
/// ```
/// use wasmgate_sdk::{Request, RequestExt, Response, Router};
///
/// #[wasmgate_sdk::handler]
/// fn users(req: Request) -> Response {
///     Router::new()
///         .get("/users", list)
///         .get("/users/{id}", show)
///         .post("/users", create)
///         .handle(req)
/// }
///
/// fn list(_req: Request) -> &'static str {
///     "alice\nbob\n"
/// }
///
/// fn show(req: Request) -> String {
///     format!("user {}\n", req.param("id").unwrap_or_default())
/// }
///
/// fn create(req: Request) -> (wasmgate_sdk::http::StatusCode, Vec<u8>) {
///     (wasmgate_sdk::http::StatusCode::CREATED, req.into_body())
/// }
/// # fn main() {}
/// ```
///
/// Patterns are `/`-separated segments, each literal text or a `{name}`
/// that matches any one non-empty segment, available to the route's function
/// as `req.param("name")` (percent-decoded). They are matched against
/// [`RequestExt::relative_path`]: the path with the route the gateway
/// routed the request by taken off (`/` for the route itself), or the
/// whole path when the request carries no route (a native test without
/// [`testing::routed`](crate::testing::routed)). The query is not part of
/// the match. Routes are tried in the order they were added; the first
/// whose pattern and method match handles the request, which still sees
/// the whole path in `req.uri()`. When the path matches but the method
/// does not, the answer is 405 with an `Allow` header; when no pattern
/// matches, 404 naming the path no pattern matched.
#[derive(Default)]
pub struct Router {
    /// In the order added: the first match wins.
    routes: Vec<Route>,
}

/// One method and pattern and what handles them.
struct Route {
    /// The method this route answers.
    method: Method,
    /// The pattern's segments, parsed once when the route is added.
    segments: Vec<Segment>,
    /// The function called on a match.
    handler: BoxedHandler,
}

/// One `/`-separated piece of a pattern.
#[derive(Debug, PartialEq, Eq)]
enum Segment {
    /// Must equal the path's segment.
    Literal(String),
    /// `{name}`: captures any non-empty segment.
    Param(String),
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|r| (&r.method, &r.segments)))
            .finish()
    }
}

impl Router {
    /// A router without routes (everything is 404).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route for `method` and `pattern`.
    ///
    /// # Panics
    ///
    /// If `pattern` does not start with `/`, has a `{` or `}` that is not a
    /// whole `{name}` segment, or names a parameter twice. Patterns are
    /// written in the source, so a unit test that builds the router finds
    /// the mistake.
    pub fn route<R: IntoResponse>(
        mut self,
        method: Method,
        pattern: &str,
        handler: impl Fn(Request) -> R + 'static,
    ) -> Self {
        let segments = parse_pattern(pattern).unwrap_or_else(|reason| {
            panic!("wasmgate_sdk::Router: invalid route pattern {pattern:?}: {reason}")
        });
        self.routes.push(Route {
            method,
            segments,
            handler: Box::new(move |req| handler(req).into_response()),
        });
        self
    }

    /// Adds a `GET` route; see [`Router::route`].
    pub fn get<R: IntoResponse>(
        self,
        pattern: &str,
        handler: impl Fn(Request) -> R + 'static,
    ) -> Self {
        self.route(Method::GET, pattern, handler)
    }

    /// Adds a `POST` route; see [`Router::route`].
    pub fn post<R: IntoResponse>(
        self,
        pattern: &str,
        handler: impl Fn(Request) -> R + 'static,
    ) -> Self {
        self.route(Method::POST, pattern, handler)
    }

    /// Adds a `PUT` route; see [`Router::route`].
    pub fn put<R: IntoResponse>(
        self,
        pattern: &str,
        handler: impl Fn(Request) -> R + 'static,
    ) -> Self {
        self.route(Method::PUT, pattern, handler)
    }

    /// Adds a `PATCH` route; see [`Router::route`].
    pub fn patch<R: IntoResponse>(
        self,
        pattern: &str,
        handler: impl Fn(Request) -> R + 'static,
    ) -> Self {
        self.route(Method::PATCH, pattern, handler)
    }

    /// Adds a `DELETE` route; see [`Router::route`].
    pub fn delete<R: IntoResponse>(
        self,
        pattern: &str,
        handler: impl Fn(Request) -> R + 'static,
    ) -> Self {
        self.route(Method::DELETE, pattern, handler)
    }

    /// Calls the first route matching the request's method and path below
    /// its route, or answers 404 or 405. A router whose patterns repeat its
    /// route (`/users/{id}` for a handler at `/users`, as routers were
    /// written before the route was taken off) still matches: when no
    /// pattern matches the path below the route, the whole path is tried.
    pub fn handle(&self, mut req: Request) -> Response {
        let relative = req.relative_path();
        let whole = req.uri().path();
        let candidates = [relative, whole];
        let Some(path) = candidates
            .into_iter()
            .take(if relative == whole { 1 } else { 2 })
            .map(|p| p.split('/').skip(1).collect::<Vec<&str>>())
            .find(|path| {
                self.routes
                    .iter()
                    .any(|r| match_path(&r.segments, path).is_some())
            })
            .map(|path| path.into_iter().map(str::to_owned).collect::<Vec<_>>())
        else {
            return (StatusCode::NOT_FOUND, not_found(&req)).into_response();
        };
        // Owned: the request is lent to the handler below.
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let mut allowed: Vec<&Method> = Vec::new();
        for route in &self.routes {
            let Some(params) = match_path(&route.segments, &path) else {
                continue;
            };
            if route.method != req.method() {
                if !allowed.contains(&&route.method) {
                    allowed.push(&route.method);
                }
                continue;
            }
            req.extensions_mut().insert(PathParams(params));
            return (route.handler)(req);
        }
        let allow = allowed
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut resp = (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response();
        // Method names are tokens, always a valid header value.
        if let Ok(value) = HeaderValue::from_str(&allow) {
            resp.headers_mut().insert(ALLOW, value);
        }
        resp
    }
}

/// The body of a 404: the path no pattern matched and, when a route was
/// taken off it, the whole path and the route, so a handler deployed at an
/// unexpected route says so.
fn not_found(req: &Request) -> String {
    let (path, relative) = (req.uri().path(), req.relative_path());
    match req.route() {
        Some(route) if relative != path => format!(
            "not found: no route of this handler matches {relative:?} \
             (the path {path:?} below the route {route:?})\n"
        ),
        _ => format!("not found: no route of this handler matches {path:?}\n"),
    }
}

/// Splits a pattern into segments, or says what is wrong with it.
fn parse_pattern(pattern: &str) -> Result<Vec<Segment>, String> {
    let rest = pattern
        .strip_prefix('/')
        .ok_or("a pattern starts with `/`")?;
    let mut segments = Vec::new();
    for part in rest.split('/') {
        let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) => {
                if name.is_empty() || name.contains(['{', '}']) {
                    return Err(format!("`{part}` is not a `{{name}}` parameter"));
                }
                if segments.contains(&Segment::Param(name.to_owned())) {
                    return Err(format!("parameter `{name}` appears twice"));
                }
                Segment::Param(name.to_owned())
            }
            None if part.contains(['{', '}']) => {
                return Err(format!(
                    "`{part}`: a parameter is a whole segment, like `/users/{{id}}`"
                ));
            }
            None => Segment::Literal(part.to_owned()),
        };
        segments.push(segment);
    }
    Ok(segments)
}

/// The captured parameters if `path` (the request path's segments after the
/// leading `/`) matches `segments`.
fn match_path(segments: &[Segment], path: &[&str]) -> Option<Vec<(String, String)>> {
    if segments.len() != path.len() {
        return None;
    }
    let mut params = Vec::new();
    for (segment, part) in segments.iter().zip(path) {
        match segment {
            Segment::Literal(text) if text == part => {}
            Segment::Param(name) if !part.is_empty() => {
                let value = percent_encoding::percent_decode_str(part).decode_utf8_lossy();
                params.push((name.clone(), value.into_owned()));
            }
            _ => return None,
        }
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestExt;
    use crate::testing::{get, post, request, routed};

    fn show(req: Request) -> String {
        format!("show {}", req.param("id").unwrap_or("-"))
    }

    fn router() -> Router {
        Router::new()
            .get("/users", |_| "list")
            .get("/users/me", |_| "me")
            .get("/users/{id}", show)
            .post("/users", |req: Request| {
                (StatusCode::CREATED, req.into_body())
            })
            .delete("/users/{id}", |_| StatusCode::NO_CONTENT)
            .get("/users/{id}/posts/{post}", |req: Request| {
                format!(
                    "{}/{}",
                    req.param("id").unwrap_or("-"),
                    req.param("post").unwrap_or("-")
                )
            })
    }

    fn text(resp: &Response) -> &str {
        std::str::from_utf8(resp.body()).expect("utf-8")
    }

    #[test]
    fn dispatches_on_method_and_path() {
        let r = router();
        assert_eq!(text(&r.handle(get("/users"))), "list");
        let created = r.handle(post("/users", "alice"));
        assert_eq!(created.status(), 201);
        assert_eq!(created.body(), b"alice");
        let deleted = r.handle(request(Method::DELETE, "/users/7", Vec::new()));
        assert_eq!(deleted.status(), 204);
    }

    #[test]
    fn captures_and_decodes_parameters() {
        let r = router();
        assert_eq!(text(&r.handle(get("/users/42"))), "show 42");
        assert_eq!(text(&r.handle(get("/users/a%20b?x=1"))), "show a b");
        assert_eq!(text(&r.handle(get("/users/3/posts/9"))), "3/9");
    }

    #[test]
    fn first_added_route_wins() {
        assert_eq!(text(&router().handle(get("/users/me"))), "me");
    }

    #[test]
    fn unknown_path_is_404() {
        let r = router();
        for path in ["/", "/users/", "/users//posts/1", "/users/1/2", "/other"] {
            let resp = r.handle(get(path));
            assert_eq!(resp.status(), 404, "{path}");
        }
        assert_eq!(Router::new().handle(get("/")).status(), 404);
    }

    #[test]
    fn patterns_match_the_path_below_the_route() {
        let r = router();
        let at_api = |path: &str| r.handle(routed_at("/api", path));
        assert_eq!(text(&at_api("/api/users")), "list");
        assert_eq!(text(&at_api("/api/users/42?x=1")), "show 42");
        assert_eq!(text(&at_api("/api/users/3/posts/9")), "3/9");
        assert_eq!(at_api("/api").status(), 404);
        // The route is taken off once: `/api/api/users` is `/api/users`.
        assert_eq!(at_api("/api/api/users").status(), 404);
        // A trailing `/` of the route does not matter; the root route
        // takes nothing off.
        assert_eq!(text(&r.handle(routed_at("/api/", "/api/users"))), "list");
        assert_eq!(text(&r.handle(routed_at("/", "/users"))), "list");
    }

    #[test]
    fn a_route_function_still_sees_the_whole_path() {
        let r = Router::new().get("/where", |req: Request| {
            format!("{} {}", req.uri().path(), req.relative_path())
        });
        let resp = r.handle(routed_at("/api", "/api/where"));
        assert_eq!(text(&resp), "/api/where /where");
    }

    #[test]
    fn the_404_names_the_path_no_pattern_matched() {
        let r = router();
        let resp = r.handle(get("/nope?x=1"));
        assert_eq!(resp.status(), 404);
        assert_eq!(
            text(&resp),
            "not found: no route of this handler matches \"/nope\"\n"
        );
        let resp = r.handle(routed_at("/api", "/api/nope"));
        assert_eq!(resp.status(), 404);
        assert_eq!(
            text(&resp),
            "not found: no route of this handler matches \"/nope\" \
             (the path \"/api/nope\" below the route \"/api\")\n"
        );
    }

    /// `GET path` as the gateway passes it to a handler at `route`.
    fn routed_at(route: &str, path: &str) -> Request {
        routed(route, get(path))
    }

    #[test]
    fn patterns_that_repeat_the_route_still_match_the_whole_path() {
        // `router()`'s patterns start with `/users`: written for the whole
        // path, deployed at `/users`.
        let r = router();
        assert_eq!(text(&r.handle(routed_at("/users", "/users"))), "list");
        let deleted = r.handle(routed(
            "/users",
            request(Method::DELETE, "/users/7", Vec::new()),
        ));
        assert_eq!(deleted.status(), 204);
        // Below the route comes first: `/{id}` at `/users` is `/users/7`.
        let relative = Router::new().get("/{id}", |req: Request| {
            req.param("id").unwrap_or_default().to_owned()
        });
        assert_eq!(text(&relative.handle(routed_at("/users", "/users/7"))), "7");
    }

    #[test]
    fn known_path_with_other_method_is_405_with_allow() {
        let r = router();
        let resp = r.handle(request(Method::PUT, "/users", Vec::new()));
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()[ALLOW], "GET, POST");
        let resp = r.handle(post("/users/7", ""));
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()[ALLOW], "GET, DELETE");
    }

    #[test]
    fn invalid_patterns_are_rejected_with_the_reason() {
        for (pattern, reason) in [
            ("users", "starts with `/`"),
            ("/users/{}", "is not a `{name}` parameter"),
            ("/users/{id", "a parameter is a whole segment"),
            ("/users/x{id}", "a parameter is a whole segment"),
            ("/{id}/{id}", "appears twice"),
        ] {
            let err = parse_pattern(pattern).expect_err(pattern);
            assert!(err.contains(reason), "{pattern}: {err}");
        }
        let panic = std::panic::catch_unwind(|| Router::new().get("nope", |_| "x"))
            .expect_err("invalid pattern");
        let msg = panic.downcast_ref::<String>().expect("message");
        assert!(
            msg.contains("invalid route pattern \"nope\": a pattern starts with `/`"),
            "{msg}"
        );
    }
}
