//! Certificates made at run time for the HTTPS tests: a CA, leaf
//! certificates it signs for given names (valid or expired), written as
//! PEM files.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A certificate authority the tests' clients trust.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, DER.
    pub der: Vec<u8>,
}

/// A leaf certificate and its key, as PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
    /// The certificate, DER: what a client sees in the handshake.
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wasmgate test CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names`, valid from 2019 to 2100.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_until(names, (2100, 1, 1))
    }

    /// A certificate for `names` that expired in 2020.
    pub fn expired(&self, names: &[&str]) -> Leaf {
        self.leaf_until(names, (2020, 1, 1))
    }

    fn leaf_until(&self, names: &[&str], (year, month, day): (i32, u8, u8)) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

impl Leaf {
    /// Writes `NAME.pem` and `NAME.key` into `dir`; the TOML inline table
    /// naming them (`{ cert = "...", key = "..." }`).
    pub fn write(&self, dir: &Path, name: &str) -> String {
        let (cert, key) = self.paths(dir, name);
        std::fs::write(&cert, &self.cert).expect("write cert");
        std::fs::write(&key, &self.key).expect("write key");
        format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            cert.display(),
            key.display()
        )
    }

    /// Where [`Leaf::write`] puts them.
    pub fn paths(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        )
    }
}
