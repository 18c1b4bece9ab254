//! Reading what handlers usually need from a request: query parameters, path
//! parameters captured by a [`Router`](crate::Router), the route the gateway
//! routed it by and the path below it, and (with the `serde` feature) a JSON
//! body.

use crate::Request;

/// The request header in which the gateway tells a handler the route prefix
/// it was routed by (`/api` for a handler deployed at `--route /api`). The
/// gateway sets it on every request and drops any a client sent, so it can
/// be trusted; [`RequestExt::route`] reads it.
pub const ROUTE_HEADER: &str = "x-wasmgate-route";

/// The path parameters a [`Router`](crate::Router) route captured, kept in
/// the request's extensions for [`RequestExt::param`].
#[derive(Clone, Debug, Default)]
pub(crate) struct PathParams(
    /// Name and percent-decoded value, in pattern order.
    pub(crate) Vec<(String, String)>,
);

/// Helpers on [`Request`]; bring them in with `use wasmgate_sdk::RequestExt`.
pub trait RequestExt: private::Sealed {
    /// The first value of query parameter `name`, decoded as a form
    /// (`%20` and `+` are spaces), or `None` if the query has no such
    /// parameter. `?name` alone gives `Some("")`.
    ///
    /// ```
    /// use wasmgate_sdk::{RequestExt, testing};
    ///
    /// let req = testing::get("/hello?x=1&name=a%20b+c");
    /// assert_eq!(req.query("name").as_deref(), Some("a b c"));
    /// assert_eq!(req.query("missing"), None);
    /// ```
    fn query(&self, name: &str) -> Option<String>;

    /// The path parameter `name` captured by the [`Router`](crate::Router)
    /// route that matched (`{id}` in `/users/{id}`), percent-decoded; `None`
    /// if the route has no such parameter or no router handled the request.
    fn param(&self, name: &str) -> Option<&str>;

    /// The route prefix the gateway routed this request by (the handler's
    /// `route`, such as `/api`), from [`ROUTE_HEADER`]; `None` when the
    /// request did not come through the gateway's router (a native test
    /// without [`testing::routed`](crate::testing::routed), `wasmgate
    /// call`).
    fn route(&self) -> Option<&str>;

    /// The request's path below its [`route`](RequestExt::route): for a
    /// handler at `/api`, `/users` for `/api/users` and `/` for `/api`.
    /// Without a route, or when the path is not under it, the whole path.
    /// The query is not part of it; `req.uri().path()` is the whole path.
    ///
    /// ```
    /// use wasmgate_sdk::{RequestExt, testing};
    ///
    /// let req = testing::routed("/api", testing::get("/api/users?page=2"));
    /// assert_eq!(req.route(), Some("/api"));
    /// assert_eq!(req.relative_path(), "/users");
    /// assert_eq!(req.uri().path(), "/api/users");
    /// ```
    fn relative_path(&self) -> &str;

    /// The body parsed as JSON into `T`. The error becomes a 400 response
    /// naming what is wrong, so a handler can use `?`:
    ///
    /// ```
    /// use wasmgate_sdk::{Json, JsonError, Request, RequestExt};
    ///
    /// #[derive(serde::Deserialize, serde::Serialize)]
    /// struct Point {
    ///     x: i64,
    ///     y: i64,
    /// }
    ///
    /// fn mirror(req: Request) -> Result<Json<Point>, JsonError> {
    ///     let p: Point = req.json()?;
    ///     Ok(Json(Point { x: p.y, y: p.x }))
    /// }
    /// ```
    #[cfg(feature = "serde")]
    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, JsonError>;
}

impl RequestExt for Request {
    fn query(&self, name: &str) -> Option<String> {
        let query = self.uri().query()?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }

    fn param(&self, name: &str) -> Option<&str> {
        let PathParams(params) = self.extensions().get::<PathParams>()?;
        params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn route(&self) -> Option<&str> {
        let route = self.headers().get(ROUTE_HEADER)?.to_str().ok()?;
        route.starts_with('/').then_some(route)
    }

    fn relative_path(&self) -> &str {
        let path = self.uri().path();
        match self.route() {
            Some(route) => strip_route(path, route),
            None => path,
        }
    }

    #[cfg(feature = "serde")]
    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, JsonError> {
        Ok(serde_json::from_slice(self.body())?)
    }
}

/// `path` below `route`, as the gateway matches routes: on whole segments,
/// a trailing `/` of the route ignored, `/` when nothing is left. `path`
/// itself when it is not under `route`.
fn strip_route<'a>(path: &'a str, route: &str) -> &'a str {
    match path.strip_prefix(route.trim_end_matches('/')) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    }
}

/// A request body that is not the JSON the handler expects. As a response
/// it is 400 with the reason, e.g. `invalid JSON body: missing field `x` at
/// line 1 column 8`.
#[cfg(feature = "serde")]
#[derive(Debug, thiserror::Error)]
#[error("invalid JSON body: {0}")]
pub struct JsonError(#[from] serde_json::Error);

#[cfg(feature = "serde")]
impl crate::IntoResponse for JsonError {
    fn into_response(self) -> crate::Response {
        (http::StatusCode::BAD_REQUEST, format!("{self}\n")).into_response()
    }
}

/// For handlers whose error type is a [`Response`](crate::Response).
#[cfg(feature = "serde")]
impl From<JsonError> for crate::Response {
    fn from(err: JsonError) -> Self {
        crate::IntoResponse::into_response(err)
    }
}

mod private {
    /// Only [`Request`](crate::Request) gets the helpers.
    pub trait Sealed {}
    impl Sealed for crate::Request {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::get;

    #[test]
    fn query_finds_a_parameter_anywhere_and_decodes_it() {
        assert_eq!(get("/h?x=1&name=you").query("name").as_deref(), Some("you"));
        assert_eq!(
            get("/h?name=a%20b&x=1").query("name").as_deref(),
            Some("a b")
        );
        assert_eq!(get("/h?name=a+b").query("name").as_deref(), Some("a b"));
        assert_eq!(get("/h?name=%C3%A9").query("name").as_deref(), Some("é"));
        assert_eq!(get("/h?name").query("name").as_deref(), Some(""));
        assert_eq!(get("/h?name=1&name=2").query("name").as_deref(), Some("1"));
    }

    #[test]
    fn query_matches_whole_names_only() {
        assert_eq!(get("/h?names=x&xname=y").query("name"), None);
        assert_eq!(get("/h").query("name"), None);
        assert_eq!(get("/h?").query("name"), None);
        // The name is decoded too.
        assert_eq!(get("/h?my%20key=v").query("my key").as_deref(), Some("v"));
    }

    #[test]
    fn the_relative_path_is_the_path_below_the_route() {
        for (route, path, relative) in [
            ("/api", "/api/users", "/users"),
            ("/api", "/api/users/7/", "/users/7/"),
            ("/api", "/api", "/"),
            ("/api", "/api/", "/"),
            ("/a/b", "/a/b/c", "/c"),
            // A route with a trailing `/` covers the paths below it.
            ("/dir/", "/dir/x", "/x"),
            ("/dir/", "/dir/", "/"),
            // The root route leaves the path as it is.
            ("/", "/users", "/users"),
            ("/", "/", "/"),
            // Not under the route (on segment boundaries): the whole path.
            ("/api", "/apiary", "/apiary"),
            ("/api", "/other", "/other"),
        ] {
            assert_eq!(strip_route(path, route), relative, "{route} {path}");
        }
    }

    #[test]
    fn the_route_comes_from_the_gateways_header() {
        let req = crate::testing::routed("/api", get("/api/users?x=1"));
        assert_eq!(req.route(), Some("/api"));
        assert_eq!(req.relative_path(), "/users");
        // Without the header, nothing is stripped.
        let req = get("/api/users");
        assert_eq!(req.route(), None);
        assert_eq!(req.relative_path(), "/api/users");
        // A value that is no route is ignored.
        let mut req = get("/api/users");
        req.headers_mut()
            .insert(ROUTE_HEADER, http::HeaderValue::from_static("api"));
        assert_eq!(req.route(), None);
        assert_eq!(req.relative_path(), "/api/users");
    }

    #[test]
    fn param_is_none_without_a_router() {
        assert_eq!(get("/users/1").param("id"), None);
    }

    #[cfg(feature = "serde")]
    mod json {
        use super::*;
        use crate::testing::post;
        use crate::{IntoResponse, Json, Response};

        #[derive(Debug, PartialEq, serde::Deserialize, serde::Serialize)]
        struct Point {
            x: i64,
            y: i64,
        }

        fn mirror(req: Request) -> Result<Json<Point>, JsonError> {
            let p: Point = req.json()?;
            Ok(Json(Point { x: p.y, y: p.x }))
        }

        #[test]
        fn json_body_parses() {
            let p: Point = post("/", r#"{"x":1,"y":2}"#).json().expect("valid");
            assert_eq!(p, Point { x: 1, y: 2 });
        }

        #[test]
        fn bad_json_is_400_with_the_reason() {
            for (body, reason) in [
                (r#"{"x":1}"#, "missing field `y`"),
                ("{", "EOF while parsing"),
                (r#"{"x":"1","y":2}"#, "invalid type: string"),
            ] {
                let resp = mirror(post("/", body)).into_response();
                assert_eq!(resp.status(), 400, "{body}");
                let text = String::from_utf8(resp.body().clone()).expect("utf-8");
                assert!(text.starts_with("invalid JSON body: "), "{text}");
                assert!(text.contains(reason), "{text}");
            }
        }

        #[test]
        fn json_error_converts_into_a_response() {
            let err = post("/", "[").json::<Point>().expect_err("bad json");
            let resp = Response::from(err);
            assert_eq!(resp.status(), 400);
        }

        #[test]
        fn json_round_trip_through_a_handler() {
            let resp = mirror(post("/", r#"{"x":1,"y":2}"#)).into_response();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "application/json");
            assert_eq!(resp.body(), br#"{"x":2,"y":1}"#);
        }
    }
}
