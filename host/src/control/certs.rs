//! Tenants' TLS certificates: where they are kept, how they are checked
//! and loaded, and the table of loaded ones the HTTPS listener reads.
//!
//! A certificate is a PEM chain and its private key, named in the config
//! file ([`TlsFiles`], paths) or sent through the admin API ([`TlsPem`],
//! text, which the API stores as files in the data dir). Either is loaded
//! into a [`Certificate`] only if the chain parses, the key matches its
//! first certificate and that certificate has not expired; one that fails
//! is refused and the certificate loaded before keeps serving.
//!
//! Like the routing table, the published [`CertTable`] is an immutable
//! snapshot replaced whole: a handshake reads it once and never waits for
//! a writer, and a connection keeps the certificate it was handshaken
//! with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

/// A certificate lets a warning be logged this long before it expires.
pub const EXPIRY_WARNING_SECONDS: u64 = 14 * 24 * 3600;

/// A certificate and key as files: `tls = { cert = "a.pem", key = "a.key" }`
/// in the config file (relative to its folder; absolute once read), and
/// how the desired state names every tenant's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The PEM certificate chain, the tenant's own certificate first.
    pub cert: PathBuf,
    /// The PEM private key of that certificate.
    pub key: PathBuf,
}

/// A certificate and key as PEM text, as `PUT /admin/tenants/{t}` sends
/// them. Its `Debug` leaves the key out, so it never reaches a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPem {
    /// The PEM certificate chain, the tenant's own certificate first.
    pub cert: String,
    /// The PEM private key of that certificate.
    pub key: String,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// Why a certificate was refused: the file (or PEM field) at fault and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct CertError {
    /// The file, or `cert`/`key` for PEM text.
    pub file: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A checked certificate, ready to serve.
pub struct Certificate {
    /// The chain and signing key rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The DNS names of its subject alternative names.
    pub names: Vec<String>,
    /// When it expires: its `notAfter`, in Unix seconds.
    pub not_after: u64,
    /// The sha256 of the chain's and key's bytes: a file rewritten with the
    /// same content changes nothing.
    pub digest: String,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Reads the files and checks them, unless they hold what `loaded`
    /// was made from: then that is kept as it is.
    pub fn load(
        files: &TlsFiles,
        loaded: Option<&Arc<Self>>,
        now: u64,
    ) -> Result<Arc<Self>, CertError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| CertError {
                file: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let cert = read(&files.cert)?;
        let key = read(&files.key)?;
        if let Some(loaded) = loaded
            && loaded.digest == digest(&cert, &key)
        {
            return Ok(Arc::clone(loaded));
        }
        Self::from_pem(
            (&cert, &files.cert.display().to_string()),
            (&key, &files.key.display().to_string()),
            now,
        )
        .map(Arc::new)
    }

    /// Checks a chain and key given as PEM bytes, each with the name its
    /// errors give: the chain parses, the key matches its first
    /// certificate, which has not expired at `now` (Unix seconds).
    pub fn from_pem(
        (cert_pem, cert_name): (&[u8], &str),
        (key_pem, key_name): (&[u8], &str),
        now: u64,
    ) -> Result<Self, CertError> {
        let cert_error = |reason: String| CertError {
            file: cert_name.to_owned(),
            reason,
        };
        let key_error = |reason: String| CertError {
            file: key_name.to_owned(),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_error(format!("not a PEM certificate chain: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(cert_error(
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            ));
        };
        let not_after = not_after(leaf)
            .ok_or_else(|| cert_error("its first certificate is not X.509 DER".into()))?;
        let names = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| cert_error(format!("its first certificate does not parse: {e}")))?
            .valid_dns_names()
            .map(str::to_owned)
            .collect();
        if not_after <= now {
            return Err(cert_error(format!(
                "the certificate expired at {}",
                httpdate::fmt_http_date(unix_time(not_after))
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| key_error(format!("not a PEM private key: {e}")))?;
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => key_error(format!(
                "the key does not match the certificate {cert_name}"
            )),
            other => key_error(format!("not a usable private key: {other}")),
        })?;
        Ok(Self {
            key: Arc::new(key),
            names,
            not_after,
            digest: digest(cert_pem, key_pem),
        })
    }

    /// Seconds left before it expires at `now`, if fewer than
    /// [`EXPIRY_WARNING_SECONDS`].
    pub fn expires_soon(&self, now: u64) -> Option<u64> {
        let left = self.not_after.saturating_sub(now);
        (left < EXPIRY_WARNING_SECONDS).then_some(left)
    }
}

/// The sha256 of a chain and key together: what names them in the data
/// dir, and tells a changed file from a rewritten one.
pub fn digest(cert: &[u8], key: &[u8]) -> String {
    let mut both = cert.to_vec();
    both.extend_from_slice(key);
    crate::digest::sha256_hex(&both)
}

/// `secs` since the Unix epoch as a [`std::time::SystemTime`].
fn unix_time(secs: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

/// The loaded certificates: each tenant's that has one, and the default
/// for names no tenant with a certificate claims.
#[derive(Debug, Clone, Default)]
pub struct Certs {
    /// By tenant name.
    pub tenants: HashMap<String, Arc<Certificate>>,
    /// `server.tls_default`.
    pub default: Option<Arc<Certificate>>,
}

/// The published certificates; the registry replaces them, handshakes
/// read them.
#[derive(Debug, Default)]
pub struct CertTable(RwLock<Arc<Certs>>);

impl CertTable {
    /// The certificates as they are now.
    pub fn current(&self) -> Arc<Certs> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces them: handshakes that come after see `certs`.
    pub(super) fn publish(&self, certs: Certs) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(certs);
    }
}

/// One DER element: its tag, its content and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b))
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

/// The `notAfter` of an X.509 certificate, in Unix seconds (RFC 5280
/// 4.1: `Certificate { tbsCertificate { [0] version, serialNumber,
/// signature, issuer, validity { notBefore, notAfter } ... } ... }`).
/// rustls does not expose it.
fn not_after(der: &[u8]) -> Option<u64> {
    const SEQUENCE: u8 = 0x30;
    const VERSION: u8 = 0xa0;
    let (SEQUENCE, certificate, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = element(certificate)? else {
        return None;
    };
    if let (VERSION, _, rest) = element(tbs)? {
        tbs = rest;
    }
    // serialNumber, signature, issuer
    for _ in 0..3 {
        tbs = element(tbs)?.2;
    }
    let (SEQUENCE, validity, _) = element(tbs)? else {
        return None;
    };
    let (_, _, after_not_before) = element(validity)?;
    let (tag, time, _) = element(after_not_before)?;
    asn1_time(tag, time)
}

/// An ASN.1 `UTCTime` (tag 0x17, `YYMMDDHHMMSSZ`) or `GeneralizedTime`
/// (0x18, `YYYYMMDDHHMMSSZ`) in Unix seconds.
fn asn1_time(tag: u8, text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let (yy, rest) = text.split_at_checked(2)?;
            let yy: i64 = yy.parse().ok()?;
            // RFC 5280 4.1.2.5.1: 50 and up are the 1900s.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, rest)
        }
        0x18 => {
            let (yyyy, rest) = text.split_at_checked(4)?;
            (yyyy.parse().ok()?, rest)
        }
        _ => return None,
    };
    if rest.len() != 10 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |at: usize| rest.get(at..at + 2).and_then(|s| s.parse::<i64>().ok());
    let (month, day) = (field(0)?, field(2)?);
    let seconds = field(4)? * 3600 + field(6)? * 60 + field(8)?;
    let days = days_from_civil(year, month, day);
    u64::try_from(days * 86_400 + seconds).ok()
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asn1_times_are_unix_seconds() {
        assert_eq!(asn1_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(asn1_time(0x17, b"000301000000Z"), Some(951_868_800));
        assert_eq!(asn1_time(0x18, b"20381231235959Z"), Some(2_177_452_799));
        assert_eq!(asn1_time(0x18, b"2038123123595Z"), None);
        assert_eq!(asn1_time(0x17, b"700101000000"), None);
        assert_eq!(asn1_time(0x04, b"700101000000Z"), None);
    }

    #[test]
    fn text_that_is_not_pem_names_its_file() {
        let error =
            Certificate::from_pem((b"hello", "a.pem"), (b"", "a.key"), 0).expect_err("not PEM");
        assert_eq!(error.file, "a.pem");
        assert!(error.reason.contains("no PEM certificate"), "{error}");
    }

    #[test]
    fn the_key_never_shows_in_debug() {
        let pem = TlsPem {
            cert: "CERT".into(),
            key: "SECRET".into(),
        };
        assert!(!format!("{pem:?}").contains("SECRET"));
    }
}
