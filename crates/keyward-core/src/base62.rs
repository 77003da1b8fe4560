//! Base62 (`0-9A-Za-z`), the alphabet of every keyward key.

/// The 62 characters in value order.
pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Encodes `value` in base62, left-padded with `0` to at least `width` characters.
pub fn encode_padded(mut value: u64, width: usize) -> String {
    let mut digits = Vec::with_capacity(width.max(11));
    while value > 0 {
        digits.push(ALPHABET[(value % 62) as usize]);
        value /= 62;
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).expect("alphabet is ASCII")
}

/// True when every byte of `s` is in the base62 alphabet.
pub fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `n` characters drawn uniformly from the alphabet with the OS CSPRNG.
///
/// Rejection sampling keeps the distribution uniform: bytes >= 248 (4 * 62) are
/// discarded instead of being folded onto the first characters.
pub fn random(n: usize) -> String {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::getrandom(&mut buf).expect("the OS random number generator is available");
        for &b in &buf {
            if b < 248 && out.len() < n {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_fixed_vectors() {
        assert_eq!(encode_padded(0, 6), "000000");
        assert_eq!(encode_padded(61, 6), "00000z");
        assert_eq!(encode_padded(62, 6), "000010");
        assert_eq!(encode_padded(u32::MAX as u64, 6), "4gfFC3");
    }

    #[test]
    fn random_is_base62_of_requested_length() {
        let r = random(100);
        assert_eq!(r.len(), 100);
        assert!(is_base62(&r));
        assert_ne!(random(32), random(32));
    }
}
