use keyward_auth::token;

#[test]
fn generated_secrets_are_256_bits_and_distinct() {
    let a = token::generate();
    let b = token::generate();
    assert_eq!(a.len(), 64);
    assert_ne!(a, b);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn a_digest_does_not_reveal_the_secret() {
    let secret = token::generate();
    let digest = token::digest(&secret);
    assert_ne!(digest, secret);
    assert!(token::digests_match(&digest, &token::digest(&secret)));
    assert!(!token::digests_match(&digest, &token::digest("other")));
}
