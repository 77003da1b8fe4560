//! The key format: `<stem><kind>_<32 random base62><6 base62 CRC32>`.
//!
//! The checksum lets a scanner (ours, GitHub's) recognise a real keyward key offline,
//! and lets the gateway reject a mistyped or made-up key without a storage lookup.
//! Only the SHA-256 of the whole key is ever stored.

use crate::base62;
use crate::secret::Secret;
use subtle::ConstantTimeEq;

/// Length of the random part.
pub const RANDOM_LEN: usize = 32;
/// Length of the checksum part.
pub const CHECKSUM_LEN: usize = 6;

/// What a key is for; the letter after the stem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// `k`: a standard key for the gateway.
    Standard,
    /// `e`: a short-lived client token derived from a standard key.
    Ephemeral,
    /// `a`: a management (admin) key for `/api/v1`.
    Admin,
}

impl KeyKind {
    /// The letter that follows the stem.
    pub fn letter(self) -> char {
        match self {
            KeyKind::Standard => 'k',
            KeyKind::Ephemeral => 'e',
            KeyKind::Admin => 'a',
        }
    }

    fn from_letter(c: u8) -> Option<Self> {
        match c {
            b'k' => Some(KeyKind::Standard),
            b'e' => Some(KeyKind::Ephemeral),
            b'a' => Some(KeyKind::Admin),
            _ => None,
        }
    }

    /// Name used in storage and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Standard => "standard",
            KeyKind::Ephemeral => "ephemeral",
            KeyKind::Admin => "admin",
        }
    }
}

/// Why a string is not a key of this deployment. Messages never include the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyParseError {
    /// The prefix is not `<stem><kind>_`.
    #[error("the key does not have this deployment's prefix")]
    Prefix,
    /// Wrong length or characters outside base62.
    #[error("the key is malformed")]
    Malformed,
    /// The CRC32 checksum does not match: a typo or a made-up key.
    #[error("the key's checksum is wrong")]
    Checksum,
}

/// The deployment's key prefix stem (`kw` by default; `acme` gives `acmek_…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFormat {
    stem: String,
}

impl Default for KeyFormat {
    fn default() -> Self {
        Self { stem: "kw".into() }
    }
}

/// A key that passed format and checksum validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedKey {
    /// Its kind.
    pub kind: KeyKind,
    /// SHA-256 of the whole key, the only form in which it is stored.
    pub hash: KeyHash,
}

impl KeyFormat {
    /// A format with a custom stem: 1-16 ASCII lowercase letters or digits.
    pub fn new(stem: &str) -> Option<Self> {
        let ok = (1..=16).contains(&stem.len())
            && stem
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        ok.then(|| Self {
            stem: stem.to_owned(),
        })
    }

    /// The stem.
    pub fn stem(&self) -> &str {
        &self.stem
    }

    /// The full prefix of a kind, e.g. `kwk_`.
    pub fn prefix(&self, kind: KeyKind) -> String {
        format!("{}{}_", self.stem, kind.letter())
    }

    /// A fresh key of `kind` from the OS CSPRNG.
    pub fn generate(&self, kind: KeyKind) -> Secret {
        let random = base62::random(RANDOM_LEN);
        Secret::new(format!(
            "{}{}{}",
            self.prefix(kind),
            random,
            checksum(&random)
        ))
    }

    /// Validates prefix, length, alphabet and checksum, and hashes the key.
    pub fn parse(&self, key: &str) -> Result<ParsedKey, KeyParseError> {
        let rest = key
            .strip_prefix(self.stem.as_str())
            .ok_or(KeyParseError::Prefix)?;
        let (&letter, rest) = rest.as_bytes().split_first().ok_or(KeyParseError::Prefix)?;
        let kind = KeyKind::from_letter(letter).ok_or(KeyParseError::Prefix)?;
        let body = rest.strip_prefix(b"_").ok_or(KeyParseError::Prefix)?;
        if body.len() != RANDOM_LEN + CHECKSUM_LEN || !body.iter().all(u8::is_ascii_alphanumeric) {
            return Err(KeyParseError::Malformed);
        }
        let (random, sum) = body.split_at(RANDOM_LEN);
        let random = std::str::from_utf8(random).map_err(|_| KeyParseError::Malformed)?;
        if !bool::from(checksum(random).as_bytes().ct_eq(sum)) {
            return Err(KeyParseError::Checksum);
        }
        Ok(ParsedKey {
            kind,
            hash: KeyHash::of(key),
        })
    }
}

/// CRC32 (IEEE) of the random part, base62, left-padded to 6 characters.
pub fn checksum(random: &str) -> String {
    base62::encode_padded(u64::from(crc32fast::hash(random.as_bytes())), CHECKSUM_LEN)
}

/// The display hint kept beside the hash: the prefix and the last 4 characters.
pub fn hint(key: &str) -> String {
    let prefix_end = key.find('_').map(|i| i + 1).unwrap_or(0);
    let tail = key.len().saturating_sub(4).max(prefix_end);
    format!("{}…{}", &key[..prefix_end], &key[tail..])
}

/// SHA-256 of a whole key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Hashes a key (or any token: leak reports hash what they were given).
    pub fn of(key: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// Lowercase hex, the form stored and compared in databases.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    /// Constant-time equality, for comparisons where an attacker controls one side.
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A hash is not the key, but a short form is enough to tell records apart.
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn key_hash_is_sha256_of_the_whole_key() {
        // FIPS 180-2's test vectors.
        assert_eq!(
            KeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            KeyHash::of("").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    use super::*;
    use proptest::prelude::*;

    // Fixed vectors, cross-checked with Python's zlib.crc32 and a hand base62 encoder.
    #[test]
    fn checksum_fixed_vectors() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(checksum("123456789"), base62::encode_padded(0xCBF4_3926, 6));
        assert_eq!(checksum("123456789"), "3jZRME");
        assert_eq!(checksum("00000000000000000000000000000000"), "2wjyrI");
    }

    #[test]
    fn parses_a_hand_built_key() {
        let random = "abcdefghijklmnopqrstuvwxyzABCDEF";
        let key = format!("kwk_{random}{}", checksum(random));
        assert_eq!(key.len(), 4 + 38);
        let parsed = KeyFormat::default().parse(&key).unwrap();
        assert_eq!(parsed.kind, KeyKind::Standard);
        assert_eq!(parsed.hash, KeyHash::of(&key));
    }

    #[test]
    fn rejects_bad_prefix_length_alphabet_and_checksum() {
        let f = KeyFormat::default();
        let key = f.generate(KeyKind::Admin);
        let k = key.expose();
        assert!(k.starts_with("kwa_"));
        assert_eq!(
            f.parse(&k.replacen("kwa_", "kwx_", 1)),
            Err(KeyParseError::Prefix)
        );
        assert_eq!(
            f.parse(&k.replacen("kwa_", "sk-", 1)),
            Err(KeyParseError::Prefix)
        );
        assert_eq!(f.parse(&k[..k.len() - 1]), Err(KeyParseError::Malformed));
        assert_eq!(
            f.parse(&format!("{}-", &k[..k.len() - 1])),
            Err(KeyParseError::Malformed)
        );
        assert_eq!(f.parse(""), Err(KeyParseError::Prefix));
        assert_eq!(f.parse("kw"), Err(KeyParseError::Prefix));
    }

    #[test]
    fn custom_stem_keys_are_distinct() {
        let acme = KeyFormat::new("acme").unwrap();
        let k = acme.generate(KeyKind::Standard);
        assert!(k.expose().starts_with("acmek_"));
        assert!(acme.parse(k.expose()).is_ok());
        assert_eq!(
            KeyFormat::default().parse(k.expose()),
            Err(KeyParseError::Prefix)
        );
        assert!(KeyFormat::new("Bad-Stem").is_none());
        assert!(KeyFormat::new("").is_none());
    }

    #[test]
    fn hint_shows_prefix_and_last_four() {
        assert_eq!(hint("kwk_abcdefghij"), "kwk_…ghij");
        assert_eq!(hint("kwk_ab"), "kwk_…ab");
    }

    proptest! {
        #[test]
        fn every_generated_key_parses(kind in prop_oneof![Just(KeyKind::Standard), Just(KeyKind::Ephemeral), Just(KeyKind::Admin)]) {
            let f = KeyFormat::default();
            let k = f.generate(kind);
            let parsed = f.parse(k.expose()).unwrap();
            prop_assert_eq!(parsed.kind, kind);
            prop_assert_eq!(k.expose().len(), 4 + RANDOM_LEN + CHECKSUM_LEN);
        }

        /// Any single-character change either fails validation or yields another hash
        /// (so the storage lookup cannot find the original record).
        #[test]
        fn single_character_change_is_caught(pos in 0usize..42, c in proptest::sample::select(base62::ALPHABET.to_vec())) {
            let f = KeyFormat::default();
            let key = f.generate(KeyKind::Standard);
            let original = key.expose().as_bytes().to_vec();
            let mut changed = original.clone();
            prop_assume!(changed[pos] != c);
            changed[pos] = c;
            let changed = String::from_utf8(changed).unwrap();
            match f.parse(&changed) {
                Err(_) => {}
                Ok(p) => prop_assert_ne!(p.hash, KeyHash::of(key.expose())),
            }
            // Inside the random part, CRC32 catches every single-character change.
            if (4..4 + RANDOM_LEN).contains(&pos) {
                prop_assert_eq!(f.parse(&changed).unwrap_err(), KeyParseError::Checksum);
            }
        }
    }
}
