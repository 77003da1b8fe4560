//! TOTP codes: RFC 6238's test vector, the ±1 step window, no reuse.

use keyward_auth::totp;

/// RFC 6238 appendix B's SHA-1 key ("12345678901234567890") in base32.
const RFC_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

#[test]
fn the_rfc_6238_test_vector_is_accepted_at_its_time() {
    // T = 59 s: 94287082 as 8 digits, so 287082 as 6.
    assert_eq!(totp::verify(RFC_SECRET, "287082", 59_000, None), Some(1));
    // T = 1111111109 s: 07081804 → 081804.
    assert_eq!(
        totp::verify(RFC_SECRET, "081804", 1_111_111_109_000, None),
        Some(37_037_036)
    );
}

#[test]
fn one_step_of_drift_either_way_is_accepted_two_are_not() {
    let step = 1_111_111_109_000 / 30_000;
    let at = |steps: i64| (step + steps) * 30_000 + 1_000;
    assert!(totp::verify(RFC_SECRET, "081804", at(1), None).is_some());
    assert!(totp::verify(RFC_SECRET, "081804", at(-1), None).is_some());
    assert!(totp::verify(RFC_SECRET, "081804", at(2), None).is_none());
    assert!(totp::verify(RFC_SECRET, "081804", at(-2), None).is_none());
}

#[test]
fn a_code_is_never_accepted_for_a_step_already_used() {
    let step = totp::verify(RFC_SECRET, "081804", 1_111_111_109_000, None).unwrap();
    assert_eq!(
        totp::verify(RFC_SECRET, "081804", 1_111_111_109_000, Some(step)),
        None
    );
    assert_eq!(
        totp::verify(RFC_SECRET, "081804", 1_111_111_109_000, Some(step + 5)),
        None
    );
    assert!(totp::verify(RFC_SECRET, "081804", 1_111_111_109_000, Some(step - 1)).is_some());
}

#[test]
fn malformed_codes_are_refused_and_secrets_are_160_bits() {
    for bad in ["", "12345", "1234567", "abcdef", "12 34 5x"] {
        assert_eq!(totp::verify(RFC_SECRET, bad, 59_000, None), None, "{bad:?}");
    }
    assert_eq!(totp::verify(RFC_SECRET, " 287 082 ", 59_000, None), Some(1));
    let s = totp::generate_secret();
    assert_eq!(s.expose().len(), 32, "160 bits in base32");
    assert!(
        !format!("{s:?}").contains(s.expose()),
        "Debug redacts the secret"
    );
    let uri = totp::otpauth_uri(s.expose(), "ada@example.com", "keyward");
    assert!(uri.starts_with("otpauth://totp/keyward:ada%40example.com?secret="));
    assert!(uri.contains("&period=30") && uri.contains("&digits=6"));
}
