//! The request as a guest sees it: hyper's head and the collected body,
//! lowered into guest memory without a copy on the request path (the
//! `wasmgate:handler` world) or handed to `wasi:http` as a request (the
//! `wasi:http/proxy` world); and what its guest may call upstream.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use http_body_util::Full;

use super::bindings::Request;
use super::outbound::Outbound;

/// The request header that tells a guest the route prefix it was routed
/// by (`/api` for a handler at `--route /api`), so it can match paths
/// relative to it, as the SDK's router does. The gateway sets it on every
/// request it passes to a guest and removes any a client sent, so a client
/// cannot change what the guest believes its route is.
pub const ROUTE_HEADER: &str = "x-wasmgate-route";

/// The request header that tells a guest whether the request came over
/// `https` or `http`. Like [`ROUTE_HEADER`], the gateway sets it on every
/// request it passes to a guest, replacing any a client sent.
pub const PROTO_HEADER: &str = "x-forwarded-proto";

/// A request on its way to a guest: hyper's parsed head and the collected
/// body, moved from the connection task to a worker as they are. The
/// worker lowers them into guest memory straight from these buffers, so the
/// request path copies nothing and allocates nothing for the guest.
#[derive(Debug)]
pub struct GuestRequest {
    head: http::request::Parts,
    body: bytes::Bytes,
    /// The tenant's outbound policy: what the guest may call.
    outbound: Arc<Outbound>,
    /// Whether it came over HTTPS: `wasi:http` guests see the scheme.
    https: bool,
    /// The headers the gateway sets ([`GuestRequest::routed`]), if it did.
    /// They are kept beside hyper's map, not inserted into it: growing
    /// the map on the connection's thread is a `realloc`, which always
    /// takes the malloc arena's lock, and under load that lock is
    /// contended by other threads freeing into the arena (measured: a
    /// fifth of the gateway's futex calls).
    routed: Option<Routed>,
}

/// What [`GuestRequest::routed`] tells the guest.
#[derive(Debug)]
struct Routed {
    /// [`ROUTE_HEADER`]'s value; `None` leaves the header out.
    route: Option<HeaderValue>,
}

impl GuestRequest {
    /// The request with head `head` and the whole body `body`; its guest
    /// may call no upstream.
    pub fn new(head: http::request::Parts, body: bytes::Bytes) -> Self {
        Self {
            head,
            body,
            outbound: Outbound::deny_all(),
            https: false,
            routed: None,
        }
    }

    /// The request as the gateway passes it to a guest: any
    /// [`ROUTE_HEADER`] and [`PROTO_HEADER`] a client sent are gone, and
    /// the guest sees the gateway's instead: `route` (left out when
    /// `None`) and the request's scheme, after the other headers.
    pub fn routed(mut self, route: Option<HeaderValue>) -> Self {
        self.head.headers.remove(ROUTE_HEADER);
        self.head.headers.remove(PROTO_HEADER);
        self.routed = Some(Routed { route });
        self
    }

    /// `https` or `http`, as [`PROTO_HEADER`] says.
    fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    /// The request, marked as having come over HTTPS (or not).
    pub fn with_https(mut self, https: bool) -> Self {
        self.https = https;
        self
    }

    /// Whether it came over HTTPS.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The request whose guest calls upstreams under `outbound`.
    pub fn with_outbound(mut self, outbound: Arc<Outbound>) -> Self {
        self.outbound = outbound;
        self
    }

    /// The policy the guest's outbound calls follow.
    pub(super) fn outbound(&self) -> Arc<Outbound> {
        Arc::clone(&self.outbound)
    }

    /// The request as `wasi:http` takes it: the same head (the authority
    /// is the `host` the request was routed by) and body.
    pub(super) fn to_http(&self) -> http::Request<Full<bytes::Bytes>> {
        let mut request = http::Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.head.method.clone();
        *request.uri_mut() = self.head.uri.clone();
        *request.version_mut() = self.head.version;
        *request.headers_mut() = self.head.headers.clone();
        if let Some(routed) = &self.routed {
            let headers = request.headers_mut();
            if let Some(route) = &routed.route {
                headers.insert(HeaderName::from_static(ROUTE_HEADER), route.clone());
            }
            let scheme = HeaderValue::from_static(self.scheme());
            headers.insert(HeaderName::from_static(PROTO_HEADER), scheme);
        }
        if request.uri().authority().is_none()
            && !request.headers().contains_key(http::header::HOST)
        {
            // HTTP/1.0 may leave the host out; wasi:http requires one.
            request.headers_mut().insert(
                http::header::HOST,
                http::HeaderValue::from_static("localhost"),
            );
        }
        request
    }

    /// The request's path, without the query.
    pub fn path(&self) -> &str {
        self.head.uri.path()
    }

    /// Calls `f` with the guest's view of the request, borrowed from
    /// `self`: method, path and query (`/` when the URI has none), headers
    /// (a repeated name's values together, as the WIT says), and body.
    #[cfg(test)]
    pub(super) fn with_view<R>(&self, f: impl FnOnce(Request<'_>) -> R) -> R {
        let headers = self.header_view();
        f(self.view(&headers))
    }

    /// The headers as the guest sees them, for [`GuestRequest::view`].
    pub(super) fn header_view(&self) -> Vec<(&str, &[u8])> {
        let mut view = Vec::with_capacity(self.head.headers.len() + 2);
        view.extend(
            self.head
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes())),
        );
        if let Some(routed) = &self.routed {
            if let Some(route) = &routed.route {
                view.push((ROUTE_HEADER, route.as_bytes()));
            }
            view.push((PROTO_HEADER, self.scheme().as_bytes()));
        }
        view
    }

    /// The guest's view of the request with `headers` from
    /// [`GuestRequest::header_view`]; split from it so an async call can
    /// keep both alive across its awaits.
    pub(super) fn view<'a>(&'a self, headers: &'a [(&'a str, &'a [u8])]) -> Request<'a> {
        Request {
            method: self.head.method.as_str(),
            uri: self
                .head
                .uri
                .path_and_query()
                .map_or("/", http::uri::PathAndQuery::as_str),
            headers,
            body: &self.body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned copy of what the guest is shown.
    struct Seen {
        method: String,
        uri: String,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    }

    fn guest_view(request: http::Request<&'static str>) -> Seen {
        let (head, body) = request.into_parts();
        GuestRequest::new(head, bytes::Bytes::from_static(body.as_bytes())).with_view(|view| Seen {
            method: view.method.to_owned(),
            uri: view.uri.to_owned(),
            headers: view
                .headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
                .collect(),
            body: view.body.to_vec(),
        })
    }

    #[test]
    fn the_guest_sees_method_path_and_query_headers_in_order_and_body() {
        let request = http::Request::post("/items?id=7")
            .header("x-a", "1")
            .header("Host", "example.com")
            .header("x-a", "2")
            .body("payload")
            .expect("valid request");
        let seen = guest_view(request);
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.uri, "/items?id=7");
        let headers: Vec<(&str, &[u8])> = seen
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        // `HeaderMap` keeps a repeated name's values together, in order.
        assert_eq!(
            headers,
            [("x-a", &b"1"[..]), ("x-a", b"2"), ("host", b"example.com")]
        );
        assert_eq!(seen.body, b"payload");
    }

    #[test]
    fn the_route_and_scheme_headers_are_the_gateways_whatever_the_client_sent() {
        let spoofed = || {
            let (head, ()) = http::Request::get("/api/users")
                .header(ROUTE_HEADER, "/")
                .header("x-a", "1")
                .header("X-Wasmgate-Route", "/api/users")
                .header(PROTO_HEADER, "https")
                .body(())
                .expect("valid request")
                .into_parts();
            GuestRequest::new(head, bytes::Bytes::new())
        };
        let headers = |request: &GuestRequest| -> Vec<(String, String)> {
            request
                .header_view()
                .iter()
                .map(|(n, v)| ((*n).to_owned(), String::from_utf8_lossy(v).into_owned()))
                .collect()
        };
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        };

        let routed = spoofed().routed(HeaderValue::from_str("/api").ok());
        let want = pairs(&[("x-a", "1"), (ROUTE_HEADER, "/api"), (PROTO_HEADER, "http")]);
        assert_eq!(headers(&routed), want);
        let http = routed.to_http();
        assert_eq!(http.headers().get_all(ROUTE_HEADER).iter().count(), 1);
        assert_eq!(http.headers()[ROUTE_HEADER], "/api");
        assert_eq!(http.headers()[PROTO_HEADER], "http");

        // Over HTTPS; a route that is no header value leaves it out, never
        // the client's in its place.
        let routed = spoofed().with_https(true).routed(None);
        assert_eq!(
            headers(&routed),
            pairs(&[("x-a", "1"), (PROTO_HEADER, "https")])
        );
        assert!(routed.to_http().headers().get(ROUTE_HEADER).is_none());

        // Not routed by the gateway (`wasmgate call`): as the client sent it.
        assert_eq!(headers(&spoofed()).len(), 4);
    }

    #[test]
    fn an_absolute_uri_without_a_path_is_seen_as_slash() {
        let request = http::Request::get("http://example.com")
            .body("")
            .expect("valid request");
        let seen = guest_view(request);
        assert_eq!(seen.uri, "/");
        assert!(seen.body.is_empty());
    }
}
