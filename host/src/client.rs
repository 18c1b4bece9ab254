//! A client of the admin API, for the `deploy`, `rollback` and `list`
//! commands: typed calls and answers, and the lines and table the commands
//! print.
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
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::Digest as _;

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
/// How many hex digits of a sha256 the lines and the table show: enough
/// to tell versions apart at a glance.
const SHA_PREFIX: usize = 12;

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

/// A handler as the admin API describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Handler {
    /// Its name within the tenant.
    pub name: String,
    /// The path prefix it serves.
    pub route: String,
    /// Hex sha256 of the active component.
    pub sha256: String,
    /// The component's size in bytes.
    pub size: u64,
    /// The active version's number.
    pub version: u64,
    /// When the active version was created, in seconds since the epoch.
    pub loaded_at: u64,
    /// `config` or `api`: who made the active version.
    pub source: String,
    /// The strings its guest reads with `config::get`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// The kept versions, oldest first (single-handler answers only).
    #[serde(default)]
    pub versions: Vec<HandlerVersion>,
}

/// One kept version of a handler.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HandlerVersion {
    /// Its number.
    pub version: u64,
    /// Hex sha256 of its component.
    pub sha256: String,
    /// The component's size in bytes.
    pub size: u64,
    /// Its route.
    pub route: String,
    /// Who made it.
    pub source: String,
    /// When it was created, in seconds since the epoch.
    pub loaded_at: u64,
    /// Whether it is the one serving.
    pub active: bool,
}

/// A tenant's handlers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HandlerList {
    /// The tenant.
    pub tenant: String,
    /// Its handlers, by name.
    pub handlers: Vec<Handler>,
}

/// An answer: its meaning and the JSON it came as, for `--json`.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    /// The parsed answer.
    pub value: T,
    /// The body as the gateway sent it.
    pub json: String,
}

/// What a deploy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler is new.
    Created,
    /// A new version is serving.
    Replaced,
    /// The same component, route and config were serving already.
    Unchanged,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Replaced => "replaced",
            Self::Unchanged => "unchanged",
        }
    }
}

/// The answer to a deploy.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The tenant deployed to.
    pub tenant: String,
    /// What changed.
    pub outcome: Outcome,
    /// The handler as it serves now.
    pub handler: Answer<Handler>,
}

impl Deployed {
    /// One line for a person: `deployed demo/greet version 3 (sha256
    /// 0123456789ab, 113.2 KiB) at /greet: created`.
    pub fn summary(&self) -> String {
        let h = &self.handler.value;
        format!(
            "deployed {}/{} version {} (sha256 {}, {}) at {}: {}",
            self.tenant,
            h.name,
            h.version,
            sha_prefix(&h.sha256),
            format_size(h.size),
            h.route,
            self.outcome.as_str()
        )
    }
}

/// One line for a person after a rollback.
pub fn rollback_summary(tenant: &str, handler: &Handler) -> String {
    format!(
        "rolled back {tenant}/{}: version {} (sha256 {}, {}) serves at {}",
        handler.name,
        handler.version,
        sha_prefix(&handler.sha256),
        format_size(handler.size),
        handler.route
    )
}

impl HandlerList {
    /// A table for a person: one row per handler, columns aligned.
    pub fn table(&self) -> String {
        if self.handlers.is_empty() {
            return format!("tenant {} has no handlers", self.tenant);
        }
        let header = [
            "NAME", "ROUTE", "VERSION", "SHA256", "SIZE", "SOURCE", "LOADED",
        ];
        let rows: Vec<[String; 7]> = self
            .handlers
            .iter()
            .map(|h| {
                [
                    h.name.clone(),
                    h.route.clone(),
                    h.version.to_string(),
                    sha_prefix(&h.sha256).to_owned(),
                    format_size(h.size),
                    h.source.clone(),
                    format_unix_time(h.loaded_at),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut table = String::new();
        let mut line = |cells: &[&str]| {
            let mut text = String::new();
            for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    text.push_str(cell);
                } else {
                    let _ = write!(text, "{cell:<width$}  ");
                }
            }
            table.push_str(text.trim_end());
            table.push('\n');
        };
        line(&header);
        for row in &rows {
            line(&row.each_ref().map(String::as_str));
        }
        table.pop();
        table
    }
}

/// A size for a person: bytes below 1 KiB, then KiB and MiB with one
/// decimal.
pub fn format_size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    match bytes {
        0..KIB => format!("{bytes} B"),
        KIB..0x10_0000 => format!("{:.1} KiB", bytes as f64 / KIB as f64),
        _ => format!("{:.1} MiB", bytes as f64 / (KIB * KIB) as f64),
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_unix_time(seconds: u64) -> String {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Days to a civil date in the proleptic Gregorian calendar (Howard
    // Hinnant's `civil_from_days`), counted from 0000-03-01 so that leap
    // days fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

fn sha_prefix(sha256: &str) -> &str {
    sha256.get(..SHA_PREFIX).unwrap_or(sha256)
}

/// The body of a rejection.
#[derive(Deserialize)]
struct ErrorBody {
    /// The stable code scripts can match on.
    error: String,
    /// What a person should know.
    message: String,
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
    /// route).
    pub async fn deploy_file(
        &self,
        file: &Path,
        tenant: &str,
        name: &str,
        route: Option<&str>,
    ) -> Result<Deployed, ClientError> {
        let path = file.to_owned();
        let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
        let bytes = read
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|error| ClientError::Read {
                path: file.to_owned(),
                error,
            })?;
        self.deploy(bytes, tenant, name, route).await
    }

    /// Uploads `component` as `tenant`'s handler `name`; see
    /// [`Client::deploy_file`].
    pub async fn deploy(
        &self,
        component: Vec<u8>,
        tenant: &str,
        name: &str,
        route: Option<&str>,
    ) -> Result<Deployed, ClientError> {
        // The answer to a replace and to a no-op are alike (200, the
        // handler); what was serving before tells them apart.
        let before = match self.handler(tenant, name).await {
            Ok(answer) => Some(answer.value.version),
            Err(ClientError::Rejected { status: 404, .. }) => None,
            Err(e) => return Err(e),
        };
        let digest = sha2::Sha256::digest(&component);
        let digest = format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode(digest)
        );
        let mut path = self.handler_path(tenant, name);
        if let Some(route) = route {
            path.push_str("?route=");
            path.push_str(&encode(route, b"/:@!$'()*+,;="));
        }
        let request = self
            .request(Method::PUT, &path)
            .header(header::CONTENT_TYPE, "application/wasm")
            .header("content-digest", digest)
            .body(Full::new(Bytes::from(component)));
        let (status, body) = self.exchange(request).await?;
        let handler: Answer<Handler> = match self.answer(status, &body) {
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
            Outcome::Created
        } else if before == Some(handler.value.version) {
            Outcome::Unchanged
        } else {
            Outcome::Replaced
        };
        Ok(Deployed {
            tenant: tenant.to_owned(),
            outcome,
            handler,
        })
    }

    /// One handler with its kept versions.
    pub async fn handler(&self, tenant: &str, name: &str) -> Result<Answer<Handler>, ClientError> {
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
    ) -> Result<Answer<Handler>, ClientError> {
        let mut path = format!("{}/rollback", self.handler_path(tenant, name));
        if let Some(version) = version {
            let _ = write!(path, "?version={version}");
        }
        let request = self.request(Method::POST, &path).body(Full::default());
        let (status, body) = self.exchange(request).await?;
        self.answer(status, &body)
    }

    /// A tenant's handlers.
    pub async fn list(&self, tenant: &str) -> Result<Answer<HandlerList>, ClientError> {
        let path = format!("/admin/tenants/{}/handlers", encode(tenant, b""));
        let request = self.request(Method::GET, &path).body(Full::default());
        let (status, body) = self.exchange(request).await?;
        self.answer(status, &body)
    }

    fn handler_path(&self, tenant: &str, name: &str) -> String {
        format!(
            "/admin/tenants/{}/handlers/{}",
            encode(tenant, b""),
            encode(name, b"")
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
    ) -> Result<Answer<T>, ClientError> {
        parse_answer(&self.url, status.as_u16(), body)
    }
}

/// Reads an answer: the value of a success, the code and message of a
/// rejection, or an error saying it is not the admin API at all.
fn parse_answer<T: DeserializeOwned>(
    url: &str,
    status: u16,
    body: &[u8],
) -> Result<Answer<T>, ClientError> {
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
        Ok(Answer { value, json })
    } else {
        let rejection: ErrorBody = serde_json::from_slice(body).map_err(|_| not_admin_api())?;
        Err(ClientError::Rejected {
            status,
            code: rejection.error,
            message: rejection.message,
        })
    }
}

/// Percent-encodes every byte of `text` but the unreserved ones and
/// `keep`.
fn encode(text: &str, keep: &[u8]) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || keep.contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
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

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn handler(name: &str, route: &str, version: u64, size: u64, loaded_at: u64) -> Handler {
        Handler {
            name: name.to_owned(),
            route: route.to_owned(),
            sha256: SHA.to_owned(),
            size,
            version,
            loaded_at,
            source: "api".to_owned(),
            config: BTreeMap::new(),
            versions: Vec::new(),
        }
    }

    #[test]
    fn a_handler_answer_is_parsed_with_its_versions_and_kept_as_sent() {
        let body = format!(
            r#"{{
  "name": "greet", "route": "/greet", "sha256": "{SHA}", "size": 115900,
  "version": 3, "loaded_at": 1700000000, "source": "api",
  "config": {{"greeting": "hi"}},
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
        let answer: Answer<Handler> =
            parse_answer("http://x", 201, body.as_bytes()).expect("parses");
        assert_eq!(answer.value.name, "greet");
        assert_eq!(answer.value.version, 3);
        assert_eq!(answer.value.config["greeting"], "hi");
        assert_eq!(answer.value.versions.len(), 2);
        assert!(answer.value.versions[1].active);
        assert_eq!(answer.value.versions[0].source, "config");
        assert_eq!(answer.json, body.trim_end(), "--json prints what was sent");
    }

    #[test]
    fn a_rejection_becomes_status_code_and_message() {
        let body = br#"{"error": "route_taken", "message": "route \"/a\" is already used"}"#;
        let error = parse_answer::<Handler>("http://x", 409, body).expect_err("rejected");
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
            let error = parse_answer::<HandlerList>("http://h:1", status, body.as_bytes())
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
    fn the_deploy_line_names_tenant_handler_version_digest_size_route_and_outcome() {
        let deployed = Deployed {
            tenant: "demo".to_owned(),
            outcome: Outcome::Created,
            handler: Answer {
                value: handler("greet", "/greet", 3, 115_900, 0),
                json: String::new(),
            },
        };
        assert_eq!(
            deployed.summary(),
            "deployed demo/greet version 3 (sha256 0123456789ab, 113.2 KiB) at /greet: created"
        );
        let deployed = Deployed {
            outcome: Outcome::Unchanged,
            ..deployed
        };
        assert!(deployed.summary().ends_with(": unchanged"));
        assert_eq!(
            rollback_summary("demo", &handler("greet", "/g", 1, 12, 0)),
            "rolled back demo/greet: version 1 (sha256 0123456789ab, 12 B) serves at /g"
        );
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let list = HandlerList {
            tenant: "demo".to_owned(),
            handlers: vec![
                handler("greet", "/greet", 12, 115_900, 1_700_000_000),
                handler("a", "/a/longer/route", 1, 3 << 20, 0),
            ],
        };
        let expected = "\
NAME   ROUTE            VERSION  SHA256        SIZE       SOURCE  LOADED
greet  /greet           12       0123456789ab  113.2 KiB  api     2023-11-14 22:13:20 UTC
a      /a/longer/route  1        0123456789ab  3.0 MiB    api     1970-01-01 00:00:00 UTC";
        assert_eq!(list.table(), expected);
        let empty = HandlerList {
            tenant: "demo".to_owned(),
            handlers: Vec::new(),
        };
        assert_eq!(empty.table(), "tenant demo has no handlers");
    }

    #[test]
    fn sizes_and_times_read_as_people_write_them() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size((1 << 20) - 1), "1024.0 KiB");
        assert_eq!(format_size(1 << 20), "1.0 MiB");
        assert_eq!(format_unix_time(0), "1970-01-01 00:00:00 UTC");
        // A leap day, the last second of a year, and a century leap year.
        assert_eq!(format_unix_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_unix_time(1_704_067_199), "2023-12-31 23:59:59 UTC");
        assert_eq!(format_unix_time(1_709_164_800), "2024-02-29 00:00:00 UTC");
        assert_eq!(format_unix_time(4_107_542_400), "2100-03-01 00:00:00 UTC");
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
        assert_eq!(encode("demo-1_x.y~", b""), "demo-1_x.y~");
        assert_eq!(encode("a/b c", b""), "a%2Fb%20c");
        assert_eq!(encode("/a/b&c=d#é", b"/="), "/a/b%26c=d%23%C3%A9");
    }
}
