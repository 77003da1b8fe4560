//! TOTP second factor (RFC 6238: HMAC-SHA-1, 6 digits, 30-second steps), the
//! codes authenticator apps show.
//!
//! [`verify`] accepts the current step and one on either side (clock drift),
//! and returns the step it accepted: the caller stores it and passes it back as
//! `last_used_step`, so a code is never accepted twice (a code read over a
//! shoulder or phished in real time is dead once used).

use keyward_core::Secret;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

const DIGITS: usize = 6;
const STEP_SECONDS: u64 = 30;

fn totp(secret_b32: &str) -> Option<TOTP> {
    let bytes = totp_rs::Secret::Encoded(secret_b32.to_owned())
        .to_bytes()
        .ok()?;
    Some(TOTP::new_unchecked(
        Algorithm::SHA1,
        DIGITS,
        1,
        STEP_SECONDS,
        bytes,
    ))
}

/// A new 160-bit secret (RFC 4226's recommended size), base32 as apps take it.
pub fn generate_secret() -> Secret {
    let mut bytes = [0u8; 20];
    getrandom::getrandom(&mut bytes).expect("the OS random number generator is unavailable");
    Secret::new(
        totp_rs::Secret::Raw(bytes.to_vec())
            .to_encoded()
            .to_string(),
    )
}

/// The `otpauth://` URI an authenticator app reads from a QR code.
pub fn otpauth_uri(secret_b32: &str, account: &str, issuer: &str) -> String {
    format!(
        "otpauth://totp/{}:{}?secret={secret_b32}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
        encode(issuer),
        encode(account),
        encode(issuer)
    )
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The step a code is accepted for, if it is right for the step at `now_ms`
/// or one on either side, and later than `last_used_step`.
pub fn verify(
    secret_b32: &str,
    code: &str,
    now_ms: i64,
    last_used_step: Option<u64>,
) -> Option<u64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = totp(secret_b32)?;
    let now_step = (now_ms.max(0) as u64) / 1_000 / STEP_SECONDS;
    let mut accepted = None;
    for step in [now_step.saturating_sub(1), now_step, now_step + 1] {
        let expected = totp.generate(step * STEP_SECONDS);
        // Every candidate is compared, in constant time, whatever matched.
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) && accepted.is_none() {
            accepted = Some(step);
        }
    }
    accepted.filter(|step| last_used_step.is_none_or(|last| *step > last))
}
