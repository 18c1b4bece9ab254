//! Content digests: components are named by the hex sha256 of their bytes
//! in the data dir, the code cache, the admin API and the logs.

use sha2::{Digest, Sha256};

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
