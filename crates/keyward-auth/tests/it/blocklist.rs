use keyward_auth::password::{self, PasswordRefusal};
use keyward_auth::{blocklist, token};

/// What `check_new_password` looks up: NFKC, then lowercase.
fn as_looked_up(password: &str) -> String {
    password::normalize(password).to_lowercase()
}

#[test]
fn the_list_holds_at_least_100000_entries() {
    assert!(blocklist::len() >= 100_000, "{} entries", blocklist::len());
}

#[test]
fn dictionary_attack_favourites_are_on_the_list() {
    for common in [
        "password1234",
        "qwertyuiop",
        "iloveyou123",
        "passwordpassword",
        "123456789012345",
        "1q2w3e4r5t",
        "qwerty123456",
        "trustno1",
        "zaq12wsx",
        "letmein123",
        "iloveyouforever",
    ] {
        assert!(blocklist::contains(common), "{common:?} not on the list");
    }
}

#[test]
fn a_breached_password_typed_with_capitals_or_decomposed_accents_is_still_found() {
    // "CONTRASEÑA" typed with a combining tilde (NFD): the same password as the
    // list's "contraseña" once normalized the way callers do.
    assert!(blocklist::contains(&as_looked_up("CONTRASEN\u{303}A")));
    assert!(blocklist::contains(&as_looked_up("PassWord1234")));
    // Full-width digits fold to ASCII under NFKC.
    assert!(blocklist::contains(&as_looked_up("password１２３４")));
}

#[test]
fn a_long_random_password_is_not_on_the_list() {
    for _ in 0..100 {
        let random = token::generate();
        assert!(!blocklist::contains(&random), "{random}");
        assert!(!blocklist::contains(&random[..20]), "{random}");
    }
}

#[test]
fn a_breached_password_long_enough_for_an_account_without_mfa_is_refused() {
    // 15 characters passes the length rule without a second factor, so only
    // the list stops it.
    assert!(matches!(
        password::check_new_password("Iloveyouforever", false, &[]),
        Err(PasswordRefusal::Blocklisted(_))
    ));
    assert!(matches!(
        password::check_new_password("Qwerty123456", true, &[]),
        Err(PasswordRefusal::Blocklisted(_))
    ));
}
