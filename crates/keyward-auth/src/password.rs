//! Passwords per NIST SP 800-63B-4: length rules, no composition rules, a
//! blocklist, never truncated, argon2id with OWASP's parameters.
//!
//! How the server uses it: [`check_new_password`] on every new password (with
//! the user's context words), [`hash`] to store it, [`verify`] at sign-in (and
//! re-hash when `needs_rehash`), [`verify_dummy`] when the email is unknown so
//! that the answer takes the same time. The three argon2 calls are CPU-heavy
//! (about 20 ms each): run them on a blocking thread.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::LazyLock;
use unicode_normalization::UnicodeNormalization;

/// The longest password accepted, in bytes as sent, checked before anything
/// else touches it: hashing cost must not grow with the input. 512 bytes is
/// 64 characters of any script and far more of ASCII.
pub const MAX_PASSWORD_BYTES: usize = 512;
/// The shortest password for an account without a second factor.
pub const MIN_CHARS_SINGLE_FACTOR: usize = 15;
/// The shortest password for an account with a second factor.
pub const MIN_CHARS_WITH_SECOND_FACTOR: usize = 8;

/// OWASP's current argon2id parameters: 19 MiB, 2 passes, 1 lane.
const MEMORY_KIB: u32 = 19_456;
const PASSES: u32 = 2;
const LANES: u32 = 1;

/// Why a new password was refused. The message never repeats the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordRefusal {
    /// Fewer characters than the account's minimum.
    #[error("a password needs at least {min} characters{why}")]
    TooShort {
        /// The minimum that applies.
        min: usize,
        /// Why that minimum.
        why: &'static str,
    },
    /// More bytes than [`MAX_PASSWORD_BYTES`].
    #[error("a password is at most {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    /// Common, breached, or made of the product's name or the user's details.
    #[error("this password is too easy to guess ({0}): choose another")]
    Blocklisted(&'static str),
}

impl PasswordRefusal {
    /// The API's stable code.
    pub fn code(&self) -> &'static str {
        match self {
            PasswordRefusal::TooShort { .. } => "password_too_short",
            PasswordRefusal::TooLong => "password_too_long",
            PasswordRefusal::Blocklisted(_) => "password_blocklisted",
        }
    }
}

/// The form a password is hashed and compared in: NFKC, so that the same
/// characters typed on two keyboards are the same password.
pub fn normalize(password: &str) -> String {
    password.nfkc().collect()
}

/// Refuses a new password that is too short or too long, or that is common,
/// breached, or made of `context` words (the product's name is always one;
/// callers add the user's email and the organization's name). No composition
/// rule: length and the blocklist are what make a password hard to guess.
///
/// A password counts as made of context words when it equals one, or when
/// removing every context word of four or more characters leaves fewer than
/// [`MIN_CHARS_WITH_SECOND_FACTOR`] characters ("keyward-keyward!").
pub fn check_new_password(
    password: &str,
    has_second_factor: bool,
    context: &[&str],
) -> Result<(), PasswordRefusal> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordRefusal::TooLong);
    }
    let normalized = normalize(password);
    let (min, why) = if has_second_factor {
        (MIN_CHARS_WITH_SECOND_FACTOR, "")
    } else {
        (
            MIN_CHARS_SINGLE_FACTOR,
            " (8 once a second factor is enrolled)",
        )
    };
    if normalized.chars().count() < min {
        return Err(PasswordRefusal::TooShort { min, why });
    }
    let lower = normalized.to_lowercase();
    if crate::blocklist::contains(&lower) {
        return Err(PasswordRefusal::Blocklisted(
            "a common or breached password",
        ));
    }
    let mut chars = lower.chars();
    let first = chars.next();
    if chars.all(|c| Some(c) == first) {
        return Err(PasswordRefusal::Blocklisted("one character repeated"));
    }
    if made_of_context(&lower, context) {
        return Err(PasswordRefusal::Blocklisted(
            "made of the product's name or your account's details",
        ));
    }
    Ok(())
}

fn made_of_context(lower: &str, context: &[&str]) -> bool {
    let mut words: Vec<String> = vec!["keyward".into()];
    for c in context {
        let c = normalize(c).to_lowercase();
        if let Some((local, domain)) = c.split_once('@') {
            words.push(local.to_owned());
            words.extend(domain.split('.').map(str::to_owned));
        }
        words.push(c);
    }
    if words.iter().any(|w| !w.is_empty() && w == lower) {
        return true;
    }
    let mut rest = lower.to_owned();
    let mut removed = false;
    for w in words.iter().filter(|w| w.chars().count() >= 4) {
        if rest.contains(w.as_str()) {
            rest = rest.replace(w.as_str(), "");
            removed = true;
        }
    }
    removed && rest.chars().count() < MIN_CHARS_WITH_SECOND_FACTOR
}

fn hasher() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashing failed (the OS random generator, or an impossible parameter).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) of a password, with a
/// fresh 128-bit salt.
pub fn hash(password: &str) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| HashError(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| HashError(e.to_string()))?;
    hasher()
        .hash_password(normalize(password).as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// What checking a password found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The password is right.
    pub ok: bool,
    /// It is right and was hashed with other parameters than today's: store
    /// [`hash`] of it again.
    pub needs_rehash: bool,
}

/// Checks `password` against a stored PHC string. A malformed stored string
/// is "wrong", never a panic.
pub fn verify(password: &str, phc: &str) -> Verified {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return Verified {
            ok: false,
            needs_rehash: false,
        };
    };
    if password.len() > MAX_PASSWORD_BYTES {
        return Verified {
            ok: false,
            needs_rehash: false,
        };
    }
    let ok = hasher()
        .verify_password(normalize(password).as_bytes(), &parsed)
        .is_ok();
    Verified {
        ok,
        needs_rehash: ok && !current(&parsed),
    }
}

fn current(parsed: &PasswordHash<'_>) -> bool {
    let Ok(params) = Params::try_from(parsed) else {
        return false;
    };
    parsed.algorithm.as_str() == "argon2id"
        && parsed.version == Some(0x13)
        && params.m_cost() == MEMORY_KIB
        && params.t_cost() == PASSES
        && params.p_cost() == LANES
}

/// A hash of a password nobody knows, made once, for [`verify_dummy`].
static DUMMY: LazyLock<String> = LazyLock::new(|| {
    hash(&crate::token::generate()).unwrap_or_else(|_| {
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo0NTY3ODk".into()
    })
});

/// Does the work of [`verify`] against a hash nobody's password matches, so
/// that an unknown email costs the same time as a wrong password.
pub fn verify_dummy(password: &str) {
    let _ = verify(password, &DUMMY);
}

/// The optional breach check could not be done.
#[derive(Debug, thiserror::Error)]
#[error("breach check failed: {0}")]
pub struct BreachCheckError(String);

/// Asks a Pwned-Passwords-style range API whether `password` appears in known
/// breaches, sending only the first 5 hex digits of its SHA-1 (k-anonymity)
/// and asking for padding so the answer's size tells an observer nothing.
pub async fn breached(
    client: &reqwest::Client,
    base_url: &str,
    password: &str,
) -> Result<bool, BreachCheckError> {
    use sha1::{Digest, Sha1};
    let digest = hex::encode_upper(Sha1::digest(normalize(password).as_bytes()));
    let (prefix, suffix) = digest.split_at(5);
    let url = format!("{}/range/{prefix}", base_url.trim_end_matches('/'));
    let answer = client
        .get(&url)
        .header("Add-Padding", "true")
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| BreachCheckError(format!("range API unreachable: {}", e.without_url())))?;
    if !answer.status().is_success() {
        return Err(BreachCheckError(format!(
            "range API answered {}",
            answer.status()
        )));
    }
    let body = answer
        .text()
        .await
        .map_err(|e| BreachCheckError(e.without_url().to_string()))?;
    Ok(body.lines().any(|line| {
        let Some((s, count)) = line.trim().split_once(':') else {
            return false;
        };
        s.eq_ignore_ascii_case(suffix) && count.trim().parse::<u64>().is_ok_and(|n| n > 0)
    }))
}
