//! The password policy and argon2id hashing.

use keyward_auth::password::{self, PasswordRefusal};

#[test]
fn length_rules_follow_nist_and_count_characters_not_bytes() {
    let ok = "fifteen chars!!";
    assert_eq!(ok.chars().count(), 15);
    assert!(password::check_new_password(ok, false, &[]).is_ok());
    let r = password::check_new_password("fourteen chars", false, &[]).unwrap_err();
    assert_eq!(r.code(), "password_too_short");
    assert!(
        password::check_new_password("8 chars!", true, &[]).is_ok(),
        "8 with a second factor"
    );
    // 15 characters of a 3-byte script: 45 bytes, still 15 characters.
    assert!(password::check_new_password("日本語のパスワードは長くて安全だ", false, &[]).is_ok());
    // No composition rules: all lowercase letters is fine.
    assert!(password::check_new_password("correcthorsebatterystaple", false, &[]).is_ok());
}

#[test]
fn long_passwords_are_accepted_up_to_the_cap_and_refused_past_it_unhashed() {
    let sixty_four = "a long passphrase ".repeat(4);
    assert!(password::check_new_password(&sixty_four, false, &[]).is_ok());
    let max = "xy".repeat(password::MAX_PASSWORD_BYTES / 2);
    assert!(password::check_new_password(&max, false, &[]).is_ok());
    let over = format!("{max}z");
    assert_eq!(
        password::check_new_password(&over, false, &[]),
        Err(PasswordRefusal::TooLong)
    );
    assert!(
        !password::verify(&over, &password::hash(&max).unwrap()).ok,
        "never truncated"
    );
}

#[test]
fn blocklisted_and_context_passwords_are_refused_without_echoing_them() {
    for (pw, ctx) in [
        ("password1234", vec![]),
        ("PASSWORD1234", vec![]),
        ("aaaaaaaaaaaaaaaaaaaa", vec![]),
        ("keyward-keyward!", vec![]),
        ("ada.lovelace@example.com", vec!["ada.lovelace@example.com"]),
        ("acme-industries-2026", vec!["acme-industries"]),
    ] {
        let r = password::check_new_password(pw, true, &ctx).unwrap_err();
        assert_eq!(r.code(), "password_blocklisted", "{pw}");
        assert!(!r.to_string().to_lowercase().contains(&pw.to_lowercase()));
    }
    assert!(password::check_new_password("keyward is where my keys live", true, &[]).is_ok());
}

#[test]
fn hashes_are_argon2id_with_owasp_parameters_and_unicode_is_normalised() {
    let h = password::hash("correct horse battery staple").unwrap();
    assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
    assert_ne!(
        h,
        password::hash("correct horse battery staple").unwrap(),
        "salted"
    );
    let v = password::verify("correct horse battery staple", &h);
    assert!(v.ok && !v.needs_rehash);
    assert!(!password::verify("correct horse battery stapler", &h).ok);
    // "ﬁ" (U+FB01) and "fi" are the same password after NFKC.
    let h = password::hash("ﬁfteen characters").unwrap();
    assert!(password::verify("fifteen characters", &h).ok);
}

#[test]
fn a_hash_made_with_older_parameters_verifies_and_asks_for_a_rehash() {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(4096, 3, 1, None).unwrap();
    let old = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(
            b"an older stored passphrase",
            &SaltString::encode_b64(b"0123456789abcdef").unwrap(),
        )
        .unwrap()
        .to_string();
    let v = password::verify("an older stored passphrase", &old);
    assert!(v.ok && v.needs_rehash);
    assert!(
        !password::verify("wrong", &old).needs_rehash,
        "only a right password is re-hashed"
    );
    assert!(!password::verify("anything", "not a phc string").ok);
    password::verify_dummy("anything at all");
}

#[tokio::test]
async fn the_breach_check_sends_only_a_prefix_and_finds_the_suffix() {
    use axum::extract::Path;
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    // SHA-1("correct horse battery staple") = ABF7AAD6438836DBE526AA231ABDE2D0EEF74D42
    let app = axum::Router::new().route(
        "/range/{prefix}",
        axum::routing::get(move |Path(prefix): Path<String>, headers: axum::http::HeaderMap| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(format!(
                    "{prefix} padding={}",
                    headers.get("add-padding").is_some()
                ));
                if prefix == "ABF7A" {
                    "0000000000000000000000000000000000A:0\r\nAD6438836DBE526AA231ABDE2D0EEF74D42:3\r\n"
                        .to_string()
                } else {
                    "AD6438836DBE526AA231ABDE2D0EEF74D42:0\r\n".to_string()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();
    assert!(
        password::breached(&http, &url, "correct horse battery staple")
            .await
            .unwrap()
    );
    assert!(
        !password::breached(&http, &url, "a passphrase nobody has used")
            .await
            .unwrap()
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0], "ABF7A padding=true");
    assert!(
        seen.iter().all(|s| s.len() == "ABF7A padding=true".len()),
        "only 5 hex digits leave"
    );
    assert!(password::breached(&http, "http://127.0.0.1:1", "x")
        .await
        .is_err());
}
