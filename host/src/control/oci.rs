//! Components in an OCI registry: pushing one so that other nodes (or a
//! later deploy) can pull it, and pulling one that a deploy names.
//!
//! A component is stored as the CNCF wasm artifact: a manifest whose
//! config is `application/vnd.wasm.config.v0+json` (built by `oci-wasm`
//! from the component) and whose one layer is the component itself,
//! `application/wasm`. A reference always names the manifest's digest
//! (`REGISTRY/REPOSITORY@sha256:HEX`), so what is pulled is what was
//! pushed, whatever tags move. The registry is always the reference's
//! first segment (no Docker Hub default).
//!
//! A registry on this machine (`localhost`, 127.0.0.0/8, `::1`) is spoken
//! to over plain HTTP, every other one over HTTPS, its certificate checked
//! against the system's trust store: a component is code the gateway will
//! run, so it never travels in the clear between machines.
//!
//! Nothing the registry says is trusted: a pull checks the manifest's
//! digest against the reference, its shape (exactly one wasm layer),
//! its declared size against the caller's limit before downloading, the
//! download against that size as it arrives, and the bytes' sha256
//! against the layer's digest.

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_wasm::{WASM_LAYER_MEDIA_TYPE, WASM_MANIFEST_CONFIG_MEDIA_TYPE, WasmClient, WasmConfig};
use sha2::Digest as _;
use tokio::time::Instant;

use crate::digest::sha256_hex;

/// The environment variable with the registry user name; with
/// [`PASSWORD_ENV`] set too, every registry is asked with HTTP Basic
/// credentials (or the token they exchange for), else anonymously.
pub const USERNAME_ENV: &str = "WASMGATE_REGISTRY_USERNAME";
/// The environment variable with the registry password or token.
pub const PASSWORD_ENV: &str = "WASMGATE_REGISTRY_PASSWORD";

/// How long a whole push or pull may take. A deploy by reference waits
/// for its pull while its caller waits for the answer, and a registry
/// that is down should be a prompt 503, not a hung deploy; the 64 MiB a
/// component may have by default arrive in this time at 18 Mbit/s, far
/// below what a registry in the same network gives.
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may take to open: a registry that is up accepts
/// at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The scheme for a registry on this machine, and for all others.
const PLAIN: &str = "http";
const TLS: &str = "https";

/// Why a push or a pull failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OciError {
    /// The registry could not be reached, did not answer in time, or
    /// answered 5xx or 429: trying again later may work.
    #[error("{0}")]
    Unreachable(String),
    /// The registry has no such repository or manifest.
    #[error("{0}")]
    NotFound(String),
    /// A bad reference, or what it names is not a wasm component artifact
    /// (another media type, more layers, a digest that does not match).
    #[error("{0}")]
    Invalid(String),
    /// The component is larger than the caller allows.
    #[error("the component is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its size as the manifest declares it (or as it arrived).
        size: u64,
        /// The caller's limit.
        max: u64,
    },
    /// The registry refused the credentials (401, 403).
    #[error("{0}")]
    Denied(String),
    /// Any other failure the registry reported.
    #[error("{0}")]
    Registry(String),
}

/// A registry's `HOST[:PORT]`, and whether it is on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Host {
    /// As written, e.g. `127.0.0.1:5000` or `[::1]:5000`.
    authority: String,
    /// `localhost`, 127.0.0.0/8 or `::1`: plain HTTP.
    loopback: bool,
}

impl Host {
    fn parse(authority: &str) -> Result<Self, String> {
        let parsed: http::uri::Authority = authority
            .parse()
            .map_err(|_| format!("{authority:?} is not HOST[:PORT]"))?;
        if authority.contains('@') {
            return Err("credentials do not belong in the address: set \
                 WASMGATE_REGISTRY_USERNAME and WASMGATE_REGISTRY_PASSWORD"
                .to_owned());
        }
        let host = parsed.host();
        let port_ok = match authority.strip_prefix(host) {
            Some("") => true,
            Some(rest) => rest
                .strip_prefix(':')
                .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())),
            None => false,
        };
        if !port_ok {
            return Err(format!("{authority:?} is not HOST[:PORT]"));
        }
        let ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<IpAddr>()
            .ok();
        let name_ok = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if host.is_empty() || (ip.is_none() && !name_ok) {
            return Err(format!("{authority:?} is not HOST[:PORT]"));
        }
        let loopback = ip.map_or(host.eq_ignore_ascii_case("localhost"), |ip| {
            ip.is_loopback()
        });
        Ok(Self {
            authority: authority.to_owned(),
            loopback,
        })
    }

    fn scheme(&self) -> &'static str {
        if self.loopback { PLAIN } else { TLS }
    }
}

/// Checks an OCI repository name: lower-case segments joined by `/`, each
/// alphanumeric runs joined by `.`, `_`, `__` or dashes.
fn check_repository(repository: &str) -> Result<(), String> {
    let segment_ok = |segment: &str| {
        let bytes = segment.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
            return false;
        };
        alnum(first)
            && alnum(last)
            && segment
                .split(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                .all(|sep| {
                    sep.is_empty()
                        || matches!(sep, "." | "_" | "__")
                        || sep.bytes().all(|b| b == b'-')
                })
    };
    if !repository.is_empty() && repository.split('/').all(segment_ok) {
        Ok(())
    } else {
        Err(format!(
            "repository {repository:?} is not an OCI repository name \
             (lower-case letters and digits, separated by '.', '_', '-' or '/')"
        ))
    }
}

/// `[cluster] registry`: where uploaded components are pushed, e.g.
/// `http://127.0.0.1:5000/wasmgate`. Plain `http://` only for a registry
/// on this machine, `https://` for all others.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct RegistryBase {
    host: Host,
    repository: String,
}

impl RegistryBase {
    /// The registry's `HOST[:PORT]`.
    pub fn registry(&self) -> &str {
        &self.host.authority
    }

    /// The repository components are pushed to.
    pub fn repository(&self) -> &str {
        &self.repository
    }
}

impl FromStr for RegistryBase {
    type Err = OciError;

    fn from_str(url: &str) -> Result<Self, OciError> {
        let invalid = |why: String| {
            OciError::Invalid(format!(
                "{url:?}: {why}: write http://HOST[:PORT]/REPOSITORY for a registry on this \
                 machine, https://HOST[:PORT]/REPOSITORY for any other"
            ))
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("no scheme".to_owned()))?;
        if rest.contains(['?', '#']) {
            return Err(invalid("a query or fragment is not allowed".to_owned()));
        }
        let (authority, repository) = rest
            .split_once('/')
            .ok_or_else(|| invalid("no repository".to_owned()))?;
        let host = Host::parse(authority).map_err(invalid)?;
        let repository = repository.trim_end_matches('/');
        check_repository(repository).map_err(invalid)?;
        let base = Self {
            host,
            repository: repository.to_owned(),
        };
        match (scheme, base.host.loopback) {
            (PLAIN, true) | (TLS, false) => Ok(base),
            (PLAIN, false) => Err(OciError::Invalid(format!(
                "plain http is only for a registry on this machine (localhost, 127.0.0.0/8, \
                 ::1), as components are code: write {base}"
            ))),
            (TLS, true) => Err(OciError::Invalid(format!(
                "a registry on this machine is reached over plain http: write {base}"
            ))),
            _ => Err(invalid(format!("unknown scheme {scheme:?}"))),
        }
    }
}

impl TryFrom<String> for RegistryBase {
    type Error = OciError;

    fn try_from(url: String) -> Result<Self, OciError> {
        url.parse()
    }
}

impl std::fmt::Display for RegistryBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (scheme, authority) = (self.host.scheme(), &self.host.authority);
        write!(f, "{scheme}://{authority}/{}", self.repository)
    }
}

/// `REGISTRY/REPOSITORY@sha256:HEX`: a component in a registry, by the
/// digest of its manifest. Parsed with or without an `oci://` prefix;
/// shown without.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OciReference {
    host: Host,
    repository: String,
    /// `sha256:` and 64 lower-case hex digits.
    digest: String,
}

impl OciReference {
    /// The registry's `HOST[:PORT]`.
    pub fn registry(&self) -> &str {
        &self.host.authority
    }

    /// The repository.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The manifest's digest, `sha256:HEX`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    fn image(&self) -> Reference {
        Reference::with_digest(
            self.host.authority.clone(),
            self.repository.clone(),
            self.digest.clone(),
        )
    }
}

/// Whether `digest` is `sha256:` and 64 lower-case hex digits.
fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl FromStr for OciReference {
    type Err = OciError;

    fn from_str(text: &str) -> Result<Self, OciError> {
        let invalid = |why: String| {
            OciError::Invalid(format!(
                "{text:?} is not an OCI reference REGISTRY/REPOSITORY@sha256:HEX: {why}"
            ))
        };
        let reference = text.strip_prefix("oci://").unwrap_or(text);
        let (name, digest) = reference
            .split_once('@')
            .ok_or_else(|| invalid("it names no digest (a tag is not enough)".to_owned()))?;
        if !is_sha256_digest(digest) {
            return Err(invalid(format!(
                "the digest {digest:?} is not sha256: and 64 lower-case hex digits"
            )));
        }
        let (registry, repository) = name
            .split_once('/')
            .ok_or_else(|| invalid("it names no registry".to_owned()))?;
        let host = Host::parse(registry).map_err(invalid)?;
        check_repository(repository).map_err(invalid)?;
        Ok(Self {
            host,
            repository: repository.to_owned(),
            digest: digest.to_owned(),
        })
    }
}

impl TryFrom<String> for OciReference {
    type Error = OciError;

    fn try_from(text: String) -> Result<Self, OciError> {
        text.parse()
    }
}

impl From<OciReference> for String {
    fn from(reference: OciReference) -> Self {
        reference.to_string()
    }
}

impl std::fmt::Display for OciReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (registry, repository) = (&self.host.authority, &self.repository);
        write!(f, "{registry}/{repository}@{}", self.digest)
    }
}

/// A registry client: pushes and pulls components. Cheap to clone.
#[derive(Clone)]
pub struct Oci {
    inner: Arc<Clients>,
}

struct Clients {
    /// For registries on this machine. Each client is made at first use:
    /// making one loads the root certificates, about half a megabyte of
    /// heap that a gateway which never pulls would keep for nothing.
    plain: OnceLock<Client>,
    /// For all others.
    tls: OnceLock<Client>,
    auth: RegistryAuth,
}

impl std::fmt::Debug for Oci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        let auth = match &self.inner.auth {
            RegistryAuth::Basic(user, _) => format!("basic ({user})"),
            RegistryAuth::Bearer(_) => "bearer".to_owned(),
            RegistryAuth::Anonymous => "anonymous".to_owned(),
        };
        f.debug_struct("Oci").field("auth", &auth).finish()
    }
}

impl Oci {
    /// A client with the credentials in [`USERNAME_ENV`] and
    /// [`PASSWORD_ENV`] when both are set, else anonymous.
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self::new(var(USERNAME_ENV).zip(var(PASSWORD_ENV)))
    }

    /// A client sending `credentials` (user name, password) to every
    /// registry, or none.
    pub fn new(credentials: Option<(String, String)>) -> Self {
        let auth = credentials.map_or(RegistryAuth::Anonymous, |(user, password)| {
            RegistryAuth::Basic(user, password)
        });
        Self {
            inner: Arc::new(Clients {
                plain: OnceLock::new(),
                tls: OnceLock::new(),
                auth,
            }),
        }
    }

    fn client(&self, host: &Host) -> &Client {
        let (cell, protocol) = if host.loopback {
            (&self.inner.plain, ClientProtocol::Http)
        } else {
            (&self.inner.tls, ClientProtocol::Https)
        };
        cell.get_or_init(|| {
            // reqwest takes the process's default rustls provider and
            // panics without one; wasmgate links only ring. An error means
            // one is installed already, which serves as well.
            let _ = rustls::crypto::ring::default_provider().install_default();
            Client::new(ClientConfig {
                protocol,
                connect_timeout: Some(CONNECT_TIMEOUT),
                read_timeout: Some(TIMEOUT),
                // An image index is refused, not resolved to a platform.
                platform_resolver: None,
                ..ClientConfig::default()
            })
        })
    }

    /// Pushes `component` to `base`'s repository, tagged
    /// `sha256-<hex of the component>`. The same bytes always make the
    /// same manifest (its `created` time is the epoch), so pushing again
    /// gives the same reference. Returns the manifest's reference.
    pub async fn push(
        &self,
        base: &RegistryBase,
        component: &[u8],
    ) -> Result<OciReference, OciError> {
        // The component model's binary header: a core module would push
        // (`oci-wasm` takes modules too) and then never load.
        if !component.starts_with(b"\0asm\x0d\0\x01\0") {
            return Err(OciError::Invalid(
                "not a WebAssembly component (its first bytes are not a component's)".to_owned(),
            ));
        }
        let tag = format!("sha256-{}", sha256_hex(component));
        let image = Reference::with_tag(
            base.host.authority.clone(),
            base.repository.clone(),
            tag.clone(),
        );
        let bytes = component.to_vec();
        // Reading the component's WIT is CPU work.
        let built =
            tokio::task::spawn_blocking(move || WasmConfig::from_raw_component(bytes, None))
                .await
                .map_err(|e| OciError::Invalid(format!("reading the component: {e}")))?;
        let (mut config, layer) =
            built.map_err(|e| OciError::Invalid(format!("not a WebAssembly component: {e:#}")))?;
        config.created = Default::default();
        let client = WasmClient::new(self.client(&base.host).clone());
        let auth = &self.inner.auth;
        let context = format!("pushing to {base}");
        let push = async {
            client
                .push(&image, auth, layer, config, None)
                .await
                .map_err(|e| match e.downcast::<OciDistributionError>() {
                    Ok(e) => classify(&e, &context),
                    Err(e) => OciError::Registry(format!("{context}: {e:#}")),
                })?;
            let digest = client
                .fetch_manifest_digest(&image, auth)
                .await
                .map_err(|e| classify(&e, &context))?;
            if !is_sha256_digest(&digest) {
                return Err(OciError::Registry(format!(
                    "{context}: the registry names the manifest {digest:?}, not a sha256 digest"
                )));
            }
            Ok(OciReference {
                host: base.host.clone(),
                repository: base.repository.clone(),
                digest,
            })
        };
        tokio::time::timeout(TIMEOUT, push)
            .await
            .map_err(|_| timed_out(&context))?
    }

    /// Pulls the component `reference` names: its manifest must have that
    /// digest and be a wasm component artifact of at most `max_bytes`;
    /// see [`Oci::find`] and [`Artifact::download`].
    pub async fn pull(
        &self,
        reference: &OciReference,
        max_bytes: u64,
    ) -> Result<Vec<u8>, OciError> {
        self.find(reference, max_bytes).await?.download().await
    }

    /// Reads and checks the manifest `reference` names, without
    /// downloading the component: its digest must be the reference's, it
    /// must have exactly one `application/wasm` layer (served by the
    /// registry itself) and a wasm config, and that layer must declare at
    /// most `max_bytes`. This and the download that may follow share one
    /// 30 s bound.
    pub async fn find(
        &self,
        reference: &OciReference,
        max_bytes: u64,
    ) -> Result<Artifact, OciError> {
        let deadline = Instant::now() + TIMEOUT;
        let context = format!("pulling {reference}");
        let image = reference.image();
        let client = self.client(&reference.host);
        let (manifest, digest) =
            tokio::time::timeout_at(deadline, client.pull_manifest(&image, &self.inner.auth))
                .await
                .map_err(|_| timed_out(&context))?
                .map_err(|e| classify(&e, &context))?;
        if digest != reference.digest {
            return Err(OciError::Invalid(format!(
                "{context}: the registry sent the manifest {digest}"
            )));
        }
        let not_wasm = |why: String| {
            OciError::Invalid(format!(
                "{reference} is not a wasm component artifact: {why}"
            ))
        };
        let manifest = match manifest {
            OciManifest::Image(manifest) => manifest,
            OciManifest::ImageIndex(_) => return Err(not_wasm("it is an image index".to_owned())),
        };
        if manifest.config.media_type != WASM_MANIFEST_CONFIG_MEDIA_TYPE {
            return Err(not_wasm(format!(
                "its config is {:?}, not {WASM_MANIFEST_CONFIG_MEDIA_TYPE}",
                manifest.config.media_type
            )));
        }
        let [layer] = <[OciDescriptor; 1]>::try_from(manifest.layers)
            .map_err(|layers| not_wasm(format!("it has {} layers, not one", layers.len())))?;
        if layer.media_type != WASM_LAYER_MEDIA_TYPE {
            return Err(not_wasm(format!(
                "its layer is {:?}, not {WASM_LAYER_MEDIA_TYPE}",
                layer.media_type
            )));
        }
        // A layer elsewhere would make the gateway fetch any URL a
        // manifest names.
        if layer.urls.as_ref().is_some_and(|urls| !urls.is_empty()) {
            return Err(not_wasm(
                "its layer is to be fetched from other URLs".to_owned(),
            ));
        }
        if !is_sha256_digest(&layer.digest) {
            return Err(not_wasm(format!(
                "its layer's digest {:?} is not sha256",
                layer.digest
            )));
        }
        let size = u64::try_from(layer.size)
            .ok()
            .filter(|&size| size > 0)
            .ok_or_else(|| not_wasm(format!("its layer's size is {}", layer.size)))?;
        if size > max_bytes {
            return Err(OciError::TooLarge {
                size,
                max: max_bytes,
            });
        }
        Ok(Artifact {
            client: client.clone(),
            image,
            layer,
            size,
            max_bytes,
            deadline,
            context,
        })
    }
}

/// A wasm component artifact whose manifest was read and checked; its
/// component is not downloaded yet.
pub struct Artifact {
    client: Client,
    image: Reference,
    layer: OciDescriptor,
    /// The layer's declared size, at most `max_bytes`.
    size: u64,
    max_bytes: u64,
    /// When the pull it is part of runs out of time.
    deadline: Instant,
    /// `pulling REFERENCE`, for messages.
    context: String,
}

impl std::fmt::Debug for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifact")
            .field("image", &self.image.whole())
            .field("layer", &self.layer.digest)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Artifact {
    /// The component's size as the manifest declares it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Downloads the component: no more than the declared size is read,
    /// and the bytes must have the layer's sha256.
    pub async fn download(self) -> Result<Vec<u8>, OciError> {
        let context = &self.context;
        let download = async {
            let mut stream = self
                .client
                .pull_blob_stream(&self.image, &self.layer)
                .await
                .map_err(|e| classify(&e, context))?;
            if let Some(length) = stream.content_length
                && length > self.size
            {
                return Err(self.overrun(length));
            }
            // The size is at most `max_bytes`, which the caller can hold.
            let mut bytes = Vec::with_capacity(usize::try_from(self.size).unwrap_or(0));
            let mut sha256 = sha2::Sha256::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| broken(&e, context))?;
                if (bytes.len() + chunk.len()) as u64 > self.size {
                    return Err(self.overrun((bytes.len() + chunk.len()) as u64));
                }
                sha256.update(&chunk);
                bytes.extend_from_slice(&chunk);
            }
            let got = format!("sha256:{}", hex(&sha256.finalize()));
            if bytes.len() as u64 != self.size || got != self.layer.digest {
                return Err(OciError::Invalid(format!(
                    "{context}: the layer arrived as {} bytes with digest {got}, not the {} \
                     bytes with digest {} its manifest declares",
                    bytes.len(),
                    self.size,
                    self.layer.digest
                )));
            }
            Ok(bytes)
        };
        tokio::time::timeout_at(self.deadline, download)
            .await
            .map_err(|_| timed_out(context))?
    }

    /// The registry sends more than the manifest declared.
    fn overrun(&self, size: u64) -> OciError {
        if size > self.max_bytes {
            OciError::TooLarge {
                size,
                max: self.max_bytes,
            }
        } else {
            OciError::Invalid(format!(
                "{}: the registry sends more than the {} bytes the manifest declares",
                self.context, self.size
            ))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn timed_out(context: &str) -> OciError {
    OciError::Unreachable(format!(
        "{context}: no answer within {} s",
        TIMEOUT.as_secs()
    ))
}

/// A download that broke off: the digest check of `oci-client` is a
/// verdict on the content, anything else the connection's fault.
fn broken(error: &std::io::Error, context: &str) -> OciError {
    let message = format!("{context}: {}", causes(error));
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<DigestError>())
    {
        Some(_) => OciError::Invalid(message),
        None => OciError::Unreachable(message),
    }
}

/// Sorts a failure of `oci-client` by what the caller can do about it.
fn classify(error: &OciDistributionError, context: &str) -> OciError {
    use OciDistributionError as E;
    type Make = fn(String) -> OciError;
    const UNREACHABLE: (Make, &str) = (
        OciError::Unreachable,
        "the registry cannot be reached or is failing",
    );
    const NOT_FOUND: (Make, &str) = (OciError::NotFound, "not found in the registry");
    const DENIED: (Make, &str) = (
        OciError::Denied,
        "the registry refused the credentials (WASMGATE_REGISTRY_USERNAME and \
         WASMGATE_REGISTRY_PASSWORD)",
    );
    const INVALID: (Make, &str) = (OciError::Invalid, "not a wasm component artifact");
    const MISMATCH: (Make, &str) = (OciError::Invalid, "the content does not match its digest");
    const OTHER: (Make, &str) = (OciError::Registry, "the registry failed");
    let by_status = |status: u16| match status {
        401 | 403 => DENIED,
        404 => NOT_FOUND,
        408 | 429 | 500..=599 => UNREACHABLE,
        _ => OTHER,
    };
    let (make, what) = match error {
        E::RequestError(e) => match e.status() {
            Some(status) => by_status(status.as_u16()),
            None if e.is_builder() => OTHER,
            // Connecting, timing out, or the connection breaking.
            None => UNREACHABLE,
        },
        E::ServerError { code, .. } => by_status(*code),
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => DENIED,
        E::RegistryError { envelope, .. } => {
            let has =
                |codes: &[OciErrorCode]| envelope.errors.iter().any(|e| codes.contains(&e.code));
            if has(&[
                OciErrorCode::ManifestUnknown,
                OciErrorCode::BlobUnknown,
                OciErrorCode::NameUnknown,
                OciErrorCode::NotFound,
            ]) {
                NOT_FOUND
            } else if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                DENIED
            } else if has(&[OciErrorCode::Toomanyrequests]) {
                UNREACHABLE
            } else {
                OTHER
            }
        }
        E::ImageManifestNotFoundError(_) => NOT_FOUND,
        E::DigestError(_) => MISMATCH,
        E::ManifestParsingError(_)
        | E::VersionedParsingError(_)
        | E::UnsupportedMediaTypeError(_)
        | E::UnsupportedSchemaVersionError(_)
        | E::ManifestEncodingError(_)
        | E::JsonError(_)
        | E::IncompatibleLayerMediaTypeError(_)
        | E::ImageIndexParsingNoPlatformResolverError => INVALID,
        _ => OTHER,
    };
    make(format!("{context}: {what}: {}", causes(error)))
}

/// An error and its causes on one line.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut all: Vec<String> = std::iter::successors(Some(error), |e| e.source())
        .map(ToString::to_string)
        .collect();
    // reqwest and hyper repeat their causes' words.
    all.dedup();
    all.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_registry_base_is_plain_http_only_on_this_machine() {
        for url in [
            "http://127.0.0.1:5000/wasmgate",
            "http://127.9.9.9/a/b-c/d_e",
            "http://localhost:5000/wasmgate/",
            "http://[::1]:5000/wasmgate",
            "https://registry.example.com/team/wasmgate",
            "https://10.0.0.5:443/x",
        ] {
            let base: RegistryBase = url.parse().unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(base.to_string(), url.trim_end_matches('/'));
        }
        let base: RegistryBase = "http://127.0.0.1:5000/a/b".parse().expect("valid");
        assert_eq!(
            (base.registry(), base.repository()),
            ("127.0.0.1:5000", "a/b")
        );
        for (url, why) in [
            (
                "http://registry.example.com/wasmgate",
                "only for a registry on this machine (localhost, 127.0.0.0/8, ::1), as \
                 components are code: write https://registry.example.com/wasmgate",
            ),
            (
                "http://10.0.0.5:5000/wasmgate",
                "only for a registry on this machine",
            ),
            (
                "http://[::2]:5000/wasmgate",
                "only for a registry on this machine",
            ),
            (
                "https://127.0.0.1:5000/wasmgate",
                "reached over plain http: write http://127.0.0.1:5000/wasmgate",
            ),
            ("ftp://127.0.0.1/wasmgate", "unknown scheme"),
            ("127.0.0.1:5000/wasmgate", "no scheme"),
            ("http://127.0.0.1:5000", "no repository"),
            ("http://127.0.0.1:5000/", "not an OCI repository name"),
            ("http://127.0.0.1:5000/Upper", "not an OCI repository name"),
            ("http://127.0.0.1:5000/a//b", "not an OCI repository name"),
            ("http://u:p@127.0.0.1:5000/a", "credentials do not belong"),
            ("http://127.0.0.1:5000/a?x=1", "query"),
        ] {
            let error = url.parse::<RegistryBase>().expect_err(url);
            assert!(matches!(error, OciError::Invalid(_)), "{url}: {error:?}");
            assert!(error.to_string().contains(why), "{url}: {error}");
        }
    }

    #[test]
    fn a_registry_base_deserializes_from_a_string() {
        #[derive(serde::Deserialize)]
        struct Cluster {
            registry: RegistryBase,
        }
        let cluster: Cluster =
            toml::from_str("registry = \"http://127.0.0.1:5000/wasmgate\"").expect("valid");
        assert_eq!(cluster.registry.repository(), "wasmgate");
        let error = toml::from_str::<Cluster>("registry = \"http://example.com/wasmgate\"")
            .err()
            .expect("refused");
        assert!(error.to_string().contains("plain http"), "{error}");
    }

    #[test]
    fn references_parse_with_or_without_the_scheme_and_print_without() {
        let text = format!("127.0.0.1:5000/wasmgate/hello@sha256:{HEX}");
        for input in [text.clone(), format!("oci://{text}")] {
            let reference: OciReference = input.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(reference.to_string(), text);
            assert_eq!(reference.registry(), "127.0.0.1:5000");
            assert_eq!(reference.repository(), "wasmgate/hello");
            assert_eq!(reference.digest(), format!("sha256:{HEX}"));
            assert!(reference.host.loopback);
        }
        let remote: OciReference = format!("ghcr.io/acme/h@sha256:{HEX}")
            .parse()
            .expect("valid");
        assert!(!remote.host.loopback);
        assert_eq!(remote.host.scheme(), "https");
        let json = serde_json::to_string(&remote).expect("serializes");
        assert_eq!(json, format!("\"ghcr.io/acme/h@sha256:{HEX}\""));
        let back: OciReference = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, remote);
        assert!(serde_json::from_str::<OciReference>("\"ghcr.io/acme/h:latest\"").is_err());
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        let upper = HEX.to_uppercase();
        for (input, why) in [
            ("ghcr.io/acme/h:latest".to_owned(), "names no digest"),
            ("ghcr.io/acme/h@sha256:abc".to_owned(), "64 lower-case hex"),
            (
                format!("ghcr.io/acme/h@sha256:{upper}"),
                "64 lower-case hex",
            ),
            (format!("ghcr.io/acme/h@sha512:{HEX}"), "64 lower-case hex"),
            (format!("ghcr.io/acme/h@sha256:{HEX}0"), "64 lower-case hex"),
            (format!("hello@sha256:{HEX}"), "names no registry"),
            (
                format!("ghcr.io/Acme@sha256:{HEX}"),
                "not an OCI repository name",
            ),
            (
                format!("ghcr.io/a-@sha256:{HEX}"),
                "not an OCI repository name",
            ),
            (
                format!("ghcr.io/a..b@sha256:{HEX}"),
                "not an OCI repository name",
            ),
            (format!("gh cr.io/a@sha256:{HEX}"), "not HOST[:PORT]"),
            (format!("ghcr.io:x/a@sha256:{HEX}"), "not HOST[:PORT]"),
            (String::new(), "names no digest"),
        ] {
            let error = input.parse::<OciReference>().expect_err(&input);
            assert!(matches!(error, OciError::Invalid(_)), "{input}: {error:?}");
            assert!(error.to_string().contains(why), "{input}: {error}");
        }
        for good in ["a__b", "a.b", "a---b", "a_b/c.d/e-f", "0"] {
            assert!(check_repository(good).is_ok(), "{good}");
        }
        for bad in ["a___b", "a._b", "_a", "a/", "a.-b"] {
            assert!(check_repository(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for (authority, loopback) in [
            ("127.0.0.1:5000", true),
            ("127.200.0.1", true),
            ("localhost:1", true),
            ("LOCALHOST", true),
            ("[::1]:5000", true),
            ("128.0.0.1", false),
            ("localhost.example.com", false),
            ("[::2]", false),
        ] {
            assert_eq!(
                Host::parse(authority).expect(authority).loopback,
                loopback,
                "{authority}"
            );
        }
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        // A port just released: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let reference: OciReference = format!("127.0.0.1:{port}/x@sha256:{HEX}")
            .parse()
            .expect("valid");
        let error = Oci::new(None)
            .pull(&reference, 1 << 20)
            .await
            .expect_err("nothing there");
        assert!(matches!(error, OciError::Unreachable(_)), "{error:?}");
        // The HTTPS client is made too (reqwest panics if no rustls
        // provider is installed; only ring is linked).
        let remote = Host::parse("registry.example.com").expect("valid");
        assert!(!remote.loopback);
        let _ = Oci::new(None).client(&remote);
        let base: RegistryBase = format!("http://127.0.0.1:{port}/x").parse().expect("valid");
        for junk in [&b"\0asm\x01\0\0\0"[..], b"hello"] {
            let error = Oci::new(None)
                .push(&base, junk)
                .await
                .expect_err("not a component");
            assert!(matches!(error, OciError::Invalid(_)), "{error:?}");
        }
    }
}
