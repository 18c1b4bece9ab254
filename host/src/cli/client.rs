//! A client of the admin API, for the commands that drive a running
//! gateway ([`super::manage`]): typed calls, and answers read as the API's
//! own views ([`crate::admin::views`]).
//!
//! Plain HTTP/1.1 over one TCP connection per call: the admin listener
//! belongs on localhost or a private network (reach a remote one through
//! an SSH tunnel), so there is no TLS, and a command makes two calls at
//! most. The token comes from the environment, never from the command
//! line, where `ps` would show it to every user of the machine.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::DeserializeOwned;
use sha2::Digest as _;

use crate::admin::views::{
    CONFIG_HEADER, ErrorBody, HandlerFromOci, HandlerList, HandlerPatch, HandlerView, Reloaded,
    StaticPut, TenantList, TenantPut, TenantView, WriteResult,
};
use crate::control::oci::OciReference;
use crate::control::shared::ClusterStatus;

/// The environment variable holding the token the commands send.
pub const TOKEN_ENV: &str = "WASMGATE_ADMIN_TOKEN";
/// The environment variable that overrides [`DEFAULT_URL`].
pub const URL_ENV: &str = "WASMGATE_ADMIN_URL";
/// The admin listener of a gateway with the default config.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9090";

/// How long a connection may take to open: a gateway that is up answers
/// at once; a dropped packet should not leave a deploy script hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answer may take: an upload is compiled before it is
/// answered, which for a big component on a busy machine takes minutes.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
/// The largest answer read: a long handler list is kilobytes; anything
/// near this is not the admin API.
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// What a path segment (a tenant's or a handler's name) sends as is: the
/// unreserved characters of RFC 3986.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// What a route sends as is in a query value: also `/`, `:`, `@` and
/// the sub-delims but `&` and `+` (which a query decodes as a space).
const ROUTE: &AsciiSet = &SEGMENT
    .remove(b'/')
    .remove(b':')
    .remove(b'@')
    .remove(b'!')
    .remove(b'$')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b',')
    .remove(b';')
    .remove(b'=');

/// Why a call failed. Each message is one line saying what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// `--admin` (or the environment's URL) is not an `http://` URL.
    #[error("invalid admin URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token variable is unset or empty.
    #[error(
        "no admin token: set {TOKEN_ENV} to the gateway's root token (or to the tenant's token)"
    )]
    NoToken,
    /// The token cannot be sent in a header.
    #[error("{TOKEN_ENV} holds a character that cannot be sent in an HTTP header (a line break?)")]
    BadToken,
    /// The component file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why; in the message, not a `source`, so that printing the
        /// error with its causes does not say it twice.
        error: std::io::Error,
    },
    /// No connection to the admin listener.
    #[error(
        "cannot reach the admin API at {url}: {error} (is `wasmgate serve` running? \
         point --admin or {URL_ENV} at its admin listener)"
    )]
    Unreachable {
        /// The admin URL.
        url: String,
        /// Why the connection failed (in the message, as for `Read`).
        error: std::io::Error,
    },
    /// A new handler was deployed without a route.
    #[error("{tenant}/{name} is a new handler: give it a route with --route /path")]
    NeedsRoute {
        /// The tenant.
        tenant: String,
        /// The handler.
        name: String,
    },
    /// Connected, but no answer in time.
    #[error("the admin API at {url} did not answer within {} s", timeout.as_secs())]
    Timeout {
        /// The admin URL.
        url: String,
        /// The bound that passed.
        timeout: Duration,
    },
    /// The connection broke, or the answer was not HTTP.
    #[error("talking to the admin API at {url}: {reason}")]
    Http {
        /// The admin URL.
        url: String,
        /// What went wrong, with its causes.
        reason: String,
    },
    /// The gateway refused the call and said why.
    #[error("{status} {code}: {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The API's stable error code (`invalid_component`, ...).
        code: String,
        /// The API's explanation.
        message: String,
    },
    /// Something answered that is not the admin API.
    #[error(
        "{url} answered {status} with something other than the admin API's JSON \
         (is it the admin listener?): {excerpt}"
    )]
    NotAdminApi {
        /// The admin URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of what it said.
        excerpt: String,
    },
}

/// An answer: its meaning and the JSON it came as, for `--json`.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    /// The parsed answer.
    pub value: T,
    /// The body as the gateway sent it.
    pub json: String,
}

/// The answer to a deploy.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The tenant deployed to.
    pub tenant: String,
    /// What changed.
    pub outcome: WriteResult,
    /// The handler as it serves now.
    pub handler: Reply<HandlerView>,
}

/// The answer to a tenant's PUT.
#[derive(Debug, Clone)]
pub struct TenantWritten {
    /// Whether the tenant is new (201), not changed settings (200).
    pub created: bool,
    /// The tenant as it is now.
    pub tenant: Reply<TenantView>,
}

/// The body of a handler's PUT.
struct Put {
    content_type: &'static str,
    /// `Content-Digest`, if sent.
    digest: Option<String>,
    /// [`CONFIG_HEADER`], if sent.
    config_header: Option<String>,
    body: Vec<u8>,
}

/// `config` as the value of [`CONFIG_HEADER`]: JSON with every character
/// outside printable ASCII escaped, so that any config string makes a
/// valid header value.
fn config_header(config: &BTreeMap<String, String>) -> String {
    // Serialising strings cannot fail.
    let json = serde_json::to_string(config).unwrap_or_default();
    let mut ascii = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            ascii.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(ascii, "\\u{unit:04x}");
            }
        }
    }
    ascii
}

/// A connection to one gateway's admin API, with a token.
#[derive(Debug, Clone)]
pub struct Client {
    /// The URL as given, for messages.
    url: String,
    /// What to connect to: a name or an address.
    host: String,
    /// Its port.
    port: u16,
    /// The `Host` header.
    authority: String,
    /// The URL's path without a trailing `/`, for an admin listener behind
    /// a reverse proxy's prefix.
    prefix: String,
    /// `Bearer <token>`, marked sensitive so it is never printed.
    authorization: HeaderValue,
}

impl Client {
    /// A client of the admin API at `url` (`http://HOST:PORT`, the scheme
    /// optional) sending `token`.
    pub fn new(url: &str, token: &str) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        match uri.scheme_str() {
            None | Some("http") => {}
            Some("https") => {
                return Err(invalid(
                    "the admin API speaks plain HTTP; reach a remote gateway through an SSH tunnel",
                ));
            }
            Some(_) => return Err(invalid("write it as http://HOST:PORT")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| invalid("write it as http://HOST:PORT"))?;
        if authority.as_str().contains('@') {
            return Err(invalid(
                "user info is not used: the token comes from the environment",
            ));
        }
        if uri.query().is_some() {
            return Err(invalid("a query is not allowed"));
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if token.is_empty() {
            return Err(ClientError::NoToken);
        }
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ClientError::BadToken)?;
        authorization.set_sensitive(true);
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            authorization,
        })
    }

    /// [`Client::new`] with the token from [`TOKEN_ENV`].
    pub fn from_env(url: &str) -> Result<Self, ClientError> {
        let token = std::env::var(TOKEN_ENV).map_err(|e| match e {
            std::env::VarError::NotPresent => ClientError::NoToken,
            std::env::VarError::NotUnicode(_) => ClientError::BadToken,
        })?;
        Self::new(url, &token)
    }

    /// Uploads the component in `file` as `tenant`'s handler `name`, at
    /// `route` (needed for a new handler; without it a handler keeps its
    /// route), with `config` as its config strings (without them it keeps
    /// the handler's): one new version.
    pub async fn deploy_file(
        &self,
        file: &Path,
        tenant: &str,
        name: &str,
        route: Option<&str>,
        config: Option<&BTreeMap<String, String>>,
    ) -> Result<Deployed, ClientError> {
        let path = file.to_owned();
        let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
        let bytes = read
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|error| ClientError::Read {
                path: file.to_owned(),
                error,
            })?;
        self.deploy(bytes, tenant, name, route, config).await
    }

    /// Uploads `component` as `tenant`'s handler `name`; see
    /// [`Client::deploy_file`].
    pub async fn deploy(
        &self,
        component: Vec<u8>,
        tenant: &str,
        name: &str,
        route: Option<&str>,
        config: Option<&BTreeMap<String, String>>,
    ) -> Result<Deployed, ClientError> {
        let digest = sha2::Sha256::digest(&component);
        let digest = format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode(digest)
        );
        let put = Put {
            content_type: "application/wasm",
            digest: Some(digest),
            config_header: config.map(config_header),
            body: component,
        };
        self.put_handler(put, tenant, name, route, config).await
    }

    /// Has the gateway pull the component `reference` names from its
    /// registry and deploy it as `tenant`'s handler `name`; see
    /// [`Client::deploy_file`].
    pub async fn deploy_oci(
        &self,
        reference: &OciReference,
        tenant: &str,
        name: &str,
        route: Option<&str>,
        config: Option<&BTreeMap<String, String>>,
    ) -> Result<Deployed, ClientError> {
        let body = HandlerFromOci {
            oci: reference.to_string(),
            config: config.cloned(),
        };
        let put = Put {
            content_type: "application/json",
            digest: None,
            config_header: None,
            // Serialising strings cannot fail.
            body: serde_json::to_vec(&body).unwrap_or_default(),
        };
        self.put_handler(put, tenant, name, route, config).await
    }

    /// Sends `put` to `tenant`'s handler `name`, at `route` when given,
    /// carrying `config` when given.
    async fn put_handler(
        &self,
        put: Put,
        tenant: &str,
        name: &str,
        route: Option<&str>,
        config: Option<&BTreeMap<String, String>>,
    ) -> Result<Deployed, ClientError> {
        // The answer to a replace and to a no-op are alike (200, the
        // handler); what was serving before tells them apart.
        let before = match self.handler(tenant, name).await {
            Ok(answer) => Some(answer.value.version),
            Err(ClientError::Rejected { status: 404, .. }) => None,
            Err(e) => return Err(e),
        };
        let mut path = self.handler_path(tenant, name);
        if let Some(route) = route {
            path.push_str("?route=");
            path.extend(utf8_percent_encode(route, ROUTE));
        }
        let mut request = self
            .request(Method::PUT, &path)
            .header(header::CONTENT_TYPE, put.content_type);
        if let Some(digest) = put.digest {
            request = request.header("content-digest", digest);
        }
        if let Some(config) = put.config_header {
            request = request.header(CONFIG_HEADER, config);
        }
        let request = request.body(Full::new(Bytes::from(put.body)));
        let (status, body) = self.exchange(request).await?;
        let handler: Reply<HandlerView> = match self.answer(status, &body) {
            // The API's own words ("?route=/path") are for curl users.
            Err(ClientError::Rejected {
                status: 400, code, ..
            }) if code == "invalid_request" && route.is_none() && before.is_none() => {
                return Err(ClientError::NeedsRoute {
                    tenant: tenant.to_owned(),
                    name: name.to_owned(),
                });
            }
            answer => answer?,
        };
        let outcome = if status == StatusCode::CREATED {
            WriteResult::Created
        } else if before == Some(handler.value.version) {
            WriteResult::Unchanged
        } else {
            WriteResult::Replaced
        };
        // A gateway older than the config header deploys without it: set
        // the config with a second version, as such a gateway needs.
        let handler = match config {
            Some(config) if handler.value.config != *config => {
                let patch = HandlerPatch {
                    route: None,
                    config: Some(config.clone()),
                };
                self.patch_handler(tenant, name, &patch).await?
            }
            _ => handler,
        };
        Ok(Deployed {
            tenant: tenant.to_owned(),
            outcome,
            handler,
        })
    }

    /// One handler with its kept versions.
    pub async fn handler(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Reply<HandlerView>, ClientError> {
        let request = self
            .request(Method::GET, &self.handler_path(tenant, name))
            .body(Full::default());
        let (status, body) = self.exchange(request).await?;
        self.answer(status, &body)
    }

    /// Makes `version` of the handler serve again, or without it the
    /// version before the serving one.
    pub async fn rollback(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u64>,
    ) -> Result<Reply<HandlerView>, ClientError> {
        let mut path = format!("{}/rollback", self.handler_path(tenant, name));
        if let Some(version) = version {
            let _ = write!(path, "?version={version}");
        }
        let request = self.request(Method::POST, &path).body(Full::default());
        let (status, body) = self.exchange(request).await?;
        self.answer(status, &body)
    }

    /// A tenant's handlers.
    pub async fn list(&self, tenant: &str) -> Result<Reply<HandlerList>, ClientError> {
        let path = format!("{}/handlers", self.tenant_path(tenant));
        let request = self.request(Method::GET, &path).body(Full::default());
        let (status, body) = self.exchange(request).await?;
        self.answer(status, &body)
    }

    /// Gives a handler a new route or config strings (or both): a new
    /// version with the same component.
    pub async fn patch_handler(
        &self,
        tenant: &str,
        name: &str,
        patch: &HandlerPatch,
    ) -> Result<Reply<HandlerView>, ClientError> {
        // Serialising plain strings cannot fail.
        let body = serde_json::to_vec(patch).unwrap_or_default();
        let request = self
            .request(Method::PATCH, &self.handler_path(tenant, name))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let (status, body) = self.exchange(request).await?;
        self.answer(status, &body)
    }

    /// Removes a handler with all its versions.
    pub async fn delete_handler(&self, tenant: &str, name: &str) -> Result<(), ClientError> {
        let request = self
            .request(Method::DELETE, &self.handler_path(tenant, name))
            .body(Full::default());
        let (status, body) = self.exchange(request).await?;
        self.no_content(status, &body)
    }

    /// The cluster as the replica sees it; `None` from a single node.
    pub async fn cluster(&self) -> Result<Option<Reply<ClusterStatus>>, ClientError> {
        let request = self
            .request(Method::GET, "/admin/cluster")
            .body(Full::default());
        let (status, body) = self.exchange(request).await?;
        match self.answer(status, &body) {
            Err(ClientError::Rejected { status: 404, .. }) => Ok(None),
            other => other.map(Some),
        }
    }

    /// Every tenant.
    pub async fn tenants(&self) -> Result<Reply<TenantList>, ClientError> {
        let request = self
            .request(Method::GET, "/admin/tenants")
            .body(Full::default());
        let (status, body) = self.exchange(request).await?;
        self.answer(status, &body)
    }

    /// Creates `tenant` or replaces its settings with `settings`.
    pub async fn put_tenant(
        &self,
        tenant: &str,
        settings: &TenantPut,
    ) -> Result<TenantWritten, ClientError> {
        // Serialising plain strings and numbers cannot fail.
        let body = serde_json::to_vec(settings).unwrap_or_default();
        let request = self
            .request(Method::PUT, &self.tenant_path(tenant))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let (status, body) = self.exchange(request).await?;
        let tenant = self.answer(status, &body)?;
        Ok(TenantWritten {
            created: status == StatusCode::CREATED,
            tenant,
        })
    }

    /// Mounts `dir` at `route` of `tenant` (`PUT .../statics?route=`).
    pub async fn put_static(
        &self,
        tenant: &str,
        route: &str,
        dir: &Path,
    ) -> Result<Reply<TenantView>, ClientError> {
        let body = StaticPut {
            dir: dir.to_path_buf(),
        };
        // Serialising a path that is valid UTF-8 cannot fail; one that is
        // not becomes an empty body, which the gateway refuses.
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let request = self
            .request(Method::PUT, &self.static_path(tenant, route))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let (status, body) = self.exchange(request).await?;
        self.answer(status, &body)
    }

    /// Removes the mount the API added at `route` of `tenant`.
    pub async fn delete_static(&self, tenant: &str, route: &str) -> Result<(), ClientError> {
        let request = self
            .request(Method::DELETE, &self.static_path(tenant, route))
            .body(Full::default());
        let (status, body) = self.exchange(request).await?;
        self.no_content(status, &body)
    }

    fn static_path(&self, tenant: &str, route: &str) -> String {
        format!(
            "{}/statics?route={}",
            self.tenant_path(tenant),
            utf8_percent_encode(route, ROUTE)
        )
    }

    /// Hands a tenant's hosts, limits and cpu_weight back to the config
    /// file (its handlers stay).
    pub async fn follow_config(&self, tenant: &str) -> Result<Reply<TenantView>, ClientError> {
        let path = format!("{}/follow-config", self.tenant_path(tenant));
        let request = self.request(Method::POST, &path).body(Full::default());
        let (status, body) = self.exchange(request).await?;
        self.answer(status, &body)
    }

    /// Removes a tenant with all its handlers.
    pub async fn delete_tenant(&self, tenant: &str) -> Result<(), ClientError> {
        let request = self
            .request(Method::DELETE, &self.tenant_path(tenant))
            .body(Full::default());
        let (status, body) = self.exchange(request).await?;
        self.no_content(status, &body)
    }

    /// Applies the gateway's config file again.
    pub async fn reload(&self) -> Result<Reply<Reloaded>, ClientError> {
        let request = self
            .request(Method::POST, "/admin/reload")
            .body(Full::default());
        let (status, body) = self.exchange(request).await?;
        self.answer(status, &body)
    }

    fn tenant_path(&self, tenant: &str) -> String {
        format!("/admin/tenants/{}", utf8_percent_encode(tenant, SEGMENT))
    }

    fn handler_path(&self, tenant: &str, name: &str) -> String {
        format!(
            "{}/handlers/{}",
            self.tenant_path(tenant),
            utf8_percent_encode(name, SEGMENT)
        )
    }

    fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(header::HOST, &self.authority)
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::ACCEPT, "application/json")
    }

    /// Sends `request` on a new connection and reads the whole answer.
    async fn exchange(
        &self,
        request: Result<Request<Full<Bytes>>, http::Error>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let http_error = |reason: String| ClientError::Http {
            url: self.url.clone(),
            reason,
        };
        // Names and routes are percent-encoded, so only a bad prefix in the
        // URL can make an invalid request.
        let request = request.map_err(|e| ClientError::InvalidUrl {
            url: self.url.clone(),
            reason: e.to_string(),
        })?;
        let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                return Err(ClientError::Unreachable {
                    url: self.url.clone(),
                    error,
                });
            }
            Err(_) => {
                return Err(ClientError::Timeout {
                    url: self.url.clone(),
                    timeout: CONNECT_TIMEOUT,
                });
            }
        };
        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| http_error(chain(&e)))?;
            // Drives the connection; it ends when the answer is read and
            // the sender dropped.
            tokio::spawn(connection);
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| http_error(chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| http_error(chain(&*e)))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                url: self.url.clone(),
                timeout: ANSWER_TIMEOUT,
            })?
    }

    fn answer<T: DeserializeOwned>(
        &self,
        status: StatusCode,
        body: &[u8],
    ) -> Result<Reply<T>, ClientError> {
        parse_reply(&self.url, status.as_u16(), body)
    }

    /// Reads the answer to a delete: no body on success.
    fn no_content(&self, status: StatusCode, body: &[u8]) -> Result<(), ClientError> {
        if status.is_success() {
            return Ok(());
        }
        self.answer::<serde::de::IgnoredAny>(status, body)
            .map(|_| ())
    }
}

/// Reads an answer: the value of a success, the code and message of a
/// rejection, or an error saying it is not the admin API at all.
fn parse_reply<T: DeserializeOwned>(
    url: &str,
    status: u16,
    body: &[u8],
) -> Result<Reply<T>, ClientError> {
    let not_admin_api = || {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let mut excerpt: String = text.chars().take(200).collect();
        if excerpt.len() < text.len() {
            excerpt.push_str("...");
        }
        if excerpt.is_empty() {
            excerpt = "(an empty body)".to_owned();
        }
        ClientError::NotAdminApi {
            url: url.to_owned(),
            status,
            excerpt: excerpt.escape_debug().to_string(),
        }
    };
    if (200..300).contains(&status) {
        let value = serde_json::from_slice(body).map_err(|_| not_admin_api())?;
        let json = String::from_utf8_lossy(body).trim_end().to_owned();
        Ok(Reply { value, json })
    } else {
        let rejection: ErrorBody = serde_json::from_slice(body).map_err(|_| not_admin_api())?;
        Err(ClientError::Rejected {
            status,
            code: rejection.error,
            message: rejection.message,
        })
    }
}

/// An error and its causes on one line: hyper's own messages ("error
/// sending request") say little without them.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state::Source;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn any_config_makes_a_printable_ascii_header_that_parses_back() {
        let config = BTreeMap::from([
            ("greeting".to_owned(), "h\u{e9}, \u{1f600}".to_owned()),
            ("lines".to_owned(), "a\nb\t\"c\"\\\u{7f}".to_owned()),
            ("".to_owned(), String::new()),
        ]);
        let header = config_header(&config);
        assert!(
            header.bytes().all(|b| (b' '..=b'~').contains(&b)),
            "{header}"
        );
        assert!(HeaderValue::from_str(&header).is_ok());
        let back: BTreeMap<String, String> = serde_json::from_str(&header).expect("JSON");
        assert_eq!(back, config);
    }

    #[test]
    fn a_handler_answer_is_parsed_with_its_versions_and_kept_as_sent() {
        let body = format!(
            r#"{{
  "name": "greet", "route": "/greet", "sha256": "{SHA}", "size": 115900,
  "version": 3, "loaded_at": 1700000000, "source": "api",
  "config": {{"greeting": "hi"}}, "result": "created",
  "versions": [
    {{"version": 2, "sha256": "{SHA}", "size": 1, "route": "/g", "config": {{}},
      "source": "config", "loaded_at": 1, "active": false}},
    {{"version": 3, "sha256": "{SHA}", "size": 115900, "route": "/greet",
      "config": {{"greeting": "hi"}}, "source": "api", "loaded_at": 1700000000,
      "active": true}}
  ]
}}
"#
        );
        let answer: Reply<HandlerView> =
            parse_reply("http://x", 201, body.as_bytes()).expect("parses");
        assert_eq!(answer.value.name, "greet");
        assert_eq!(answer.value.version, 3);
        assert_eq!(answer.value.config["greeting"], "hi");
        assert_eq!(answer.value.versions.len(), 2);
        assert!(answer.value.versions[1].active);
        assert_eq!(answer.value.versions[0].source, Source::Config);
        assert_eq!(answer.value.result, Some(WriteResult::Created));
        assert_eq!(answer.json, body.trim_end(), "--json prints what was sent");
    }

    #[test]
    fn a_rejection_becomes_status_code_and_message() {
        let body = br#"{"error": "route_taken", "message": "route \"/a\" is already used"}"#;
        let error = parse_reply::<HandlerView>("http://x", 409, body).expect_err("rejected");
        assert!(
            matches!(&error, ClientError::Rejected { status: 409, code, .. } if code == "route_taken"),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            r#"409 route_taken: route "/a" is already used"#
        );
    }

    #[test]
    fn an_answer_that_is_not_the_admin_api_says_so() {
        for (status, body) in [
            (404, "not found\n".to_owned()),
            (200, "ready\n".to_owned()),
            (502, String::new()),
            (200, format!("{{\"x\": \"{}\"}}", "y".repeat(500))),
        ] {
            let error = parse_reply::<HandlerList>("http://h:1", status, body.as_bytes())
                .expect_err("not the API");
            let text = error.to_string();
            assert!(
                text.starts_with(&format!(
                    "http://h:1 answered {status} with something other"
                )),
                "{text}"
            );
            assert!(text.contains("is it the admin listener?"), "{text}");
            assert!(text.len() < 400, "the excerpt is bounded: {text}");
            assert!(!text.contains('\n'), "one line: {text}");
        }
    }

    #[test]
    fn urls_are_checked_and_the_token_is_required() {
        let client = Client::new("http://localhost:9090/", "t").expect("valid");
        assert_eq!((client.host.as_str(), client.port), ("localhost", 9090));
        assert_eq!(client.prefix, "");
        let client = Client::new("127.0.0.1:7", "t").expect("scheme optional");
        assert_eq!((client.host.as_str(), client.port), ("127.0.0.1", 7));
        let client = Client::new("localhost:9090", "t").expect("scheme optional");
        assert_eq!((client.host.as_str(), client.port), ("localhost", 9090));
        let client = Client::new("http://[::1]/gw/", "t").expect("IPv6, prefix");
        assert_eq!((client.host.as_str(), client.port), ("::1", 80));
        assert_eq!(client.prefix, "/gw");
        for (url, reason) in [
            ("https://h", "plain HTTP"),
            ("ftp://h", "http://HOST:PORT"),
            ("/admin", "http://HOST:PORT"),
            ("http://u:p@h", "user info"),
            ("http://h?x=1", "query"),
            ("http://h h", "invalid"),
        ] {
            let error = Client::new(url, "t").expect_err(url).to_string();
            assert!(error.contains(reason), "{url}: {error}");
        }
        assert!(matches!(
            Client::new("http://h", ""),
            Err(ClientError::NoToken)
        ));
        assert!(matches!(
            Client::new("http://h", "a\nb"),
            Err(ClientError::BadToken)
        ));
    }

    #[test]
    fn names_and_routes_are_percent_encoded() {
        let encode = |text, set| utf8_percent_encode(text, set).to_string();
        assert_eq!(encode("demo-1_x.y~", SEGMENT), "demo-1_x.y~");
        assert_eq!(encode("a/b c", SEGMENT), "a%2Fb%20c");
        assert_eq!(encode("/a/b&c=d#é", ROUTE), "/a/b%26c=d%23%C3%A9");
        assert_eq!(encode("/a?b c", ROUTE), "/a%3Fb%20c");
    }
}
