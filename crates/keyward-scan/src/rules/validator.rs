//! Checksum validators: offline proof that a token has a provider's format.

use serde::Deserialize;

/// A validator a rule may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ValidatorKind {
    /// GitHub-style tokens (GitHub classic tokens, npm, keyward): the token ends
    /// with the CRC32 of the random part, base62-encoded (`0-9A-Za-z`) and
    /// left-padded with `0` to 6 characters. The random part is what follows the
    /// last `_` and precedes the checksum.
    #[serde(rename = "crc32-base62")]
    Crc32Base62,
}

impl ValidatorKind {
    /// Whether `secret` passes this validator.
    pub fn validate(self, secret: &[u8]) -> bool {
        match self {
            ValidatorKind::Crc32Base62 => crc32_base62_ok(secret),
        }
    }
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// CRC32 of `data` as 6 base62 characters, left-padded with `0`.
pub fn crc32_base62(data: &[u8]) -> [u8; 6] {
    let mut n = crc32fast::hash(data);
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

fn crc32_base62_ok(secret: &[u8]) -> bool {
    let body = match secret.iter().rposition(|&b| b == b'_') {
        Some(i) => &secret[i + 1..],
        None => secret,
    };
    if body.len() <= 6 || !body.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let (random, checksum) = body.split_at(body.len() - 6);
    crc32_base62(random) == checksum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_round_trip() {
        let random = b"0123456789abcdefghijABCDEFGHIJ";
        let mut token = b"ghp_".to_vec();
        token.extend_from_slice(random);
        token.extend_from_slice(&crc32_base62(random));
        assert!(ValidatorKind::Crc32Base62.validate(&token));
        let last = token.len() - 1;
        token[last] = if token[last] == b'A' { b'B' } else { b'A' };
        assert!(!ValidatorKind::Crc32Base62.validate(&token));
    }

    #[test]
    fn padding_is_zero() {
        // The checksum is always 6 characters even for small CRC values.
        assert_eq!(crc32_base62(b"").len(), 6);
        assert_eq!(&crc32_base62(b""), b"000000");
    }
}
