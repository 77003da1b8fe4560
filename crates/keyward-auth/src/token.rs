//! Opaque bearer secrets (session tokens, reset and invitation links, recovery
//! codes): drawn from the OS CSPRNG, stored only as their SHA-256.

use sha2::{Digest, Sha256};

/// The length of a secret from [`generate`]: a presented value of another
/// length is refused before any lookup.
pub const SECRET_HEX_LEN: usize = 64;

/// A fresh 256-bit secret from the OS CSPRNG, as 64 lowercase hex digits.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the OS random number generator is unavailable");
    hex::encode(bytes)
}

/// What is stored in place of a bearer secret: its SHA-256, hex. A 256-bit random
/// secret needs no salt or slow hash: it cannot be guessed from its hash.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares two digests in constant time.
pub fn digests_match(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}
