//! PLACEHOLDER (not committed): replaced by the oci branch.
#![allow(missing_docs, dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryBase(String);
impl std::str::FromStr for RegistryBase {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Self, OciError> { Ok(Self(s.to_owned())) }
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciReference(String);
impl std::str::FromStr for OciReference {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Self, OciError> { Ok(Self(s.to_owned())) }
}
impl std::fmt::Display for OciReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(&self.0) }
}
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("invalid: {0}")]
    Invalid(String),
}
#[derive(Debug, Clone)]
pub struct Oci;
impl Oci {
    pub fn from_env() -> Self { Self }
    pub async fn push(&self, _base: &RegistryBase, _c: &[u8]) -> Result<OciReference, OciError> { Err(OciError::Unreachable("placeholder".into())) }
    pub async fn pull(&self, _r: &OciReference, _max: u64) -> Result<Vec<u8>, OciError> { Err(OciError::Unreachable("placeholder".into())) }
}
