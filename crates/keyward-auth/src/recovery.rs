//! Recovery codes: ten single-use codes shown once when TOTP is enrolled, for
//! the day the phone is lost. Each is 80 random bits as `xxxx-xxxx-xxxx-xxxx`
//! (base32, no 0/1/8 lookalikes), stored only as the SHA-256 of its
//! normalised form; 80 random bits need no slow hash. Single use is the
//! store's conditional update.

/// How many codes a user gets.
pub const COUNT: usize = 10;

const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// Ten fresh codes to show once, and their digests to store.
pub fn generate() -> (Vec<String>, Vec<String>) {
    let codes: Vec<String> = (0..COUNT).map(|_| one()).collect();
    let digests = codes.iter().map(|c| digest(c)).collect();
    (codes, digests)
}

fn one() -> String {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).expect("the OS random number generator is unavailable");
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// A typed code as compared: lowercase, without spaces or dashes.
pub fn normalize(input: &str) -> String {
    input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// What is stored for a code (typed or generated).
pub fn digest(code: &str) -> String {
    crate::token::digest(&normalize(code))
}
