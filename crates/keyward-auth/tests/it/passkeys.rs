//! Passkey ceremonies against the software authenticator of `soft_authenticator.rs`.
//! Every answer goes through `Passkeys` exactly as the server will pass it: the
//! states serialised to JSON and back, the responses as `PublicKeyCredential.toJSON()`.

use crate::soft_authenticator::{random, Browser, SoftKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use keyward_auth::passkeys::{
    AuthenticationState, PasskeyConfig, PasskeyError, Passkeys, RegistrationState, StoredPasskey,
};
use serde_json::{json, Value};

const RP_ID: &str = "keyward.example";
const ORIGIN: &str = "https://keyward.example";
/// A look-alike site that relays keyward's challenges to the victim's browser.
const PHISHING_ORIGIN: &str = "https://keyward-example.login.test";

fn passkeys() -> Passkeys {
    Passkeys::new(PasskeyConfig {
        rp_id: RP_ID.to_owned(),
        rp_origin: ORIGIN.to_owned(),
        rp_name: "keyward".to_owned(),
    })
    .expect("valid config")
}

/// What the server does with a state between the two requests: store it, load it.
fn through_storage<T: serde::Serialize + serde::de::DeserializeOwned>(state: T) -> T {
    let stored = serde_json::to_string(&state).expect("state serialises");
    serde_json::from_str(&stored).expect("state deserialises")
}

fn keyward() -> Browser {
    Browser::on(ORIGIN)
}

fn phishing_site() -> Browser {
    Browser::on(PHISHING_ORIGIN)
}

fn register(
    rp: &Passkeys,
    user_id: &[u8],
    existing: &[StoredPasskey],
    name: &str,
) -> (SoftKey, StoredPasskey) {
    let (options, state) = rp
        .start_registration(user_id, "ada@keyward.example", "Ada Lovelace", existing)
        .expect("start registration");
    let state: RegistrationState = through_storage(state);
    let (key, response) = keyward().create(&options);
    let stored = rp
        .finish_registration(state, &response, name.to_owned(), 1_000)
        .expect("registration verifies");
    (key, stored)
}

fn sign_in(
    rp: &Passkeys,
    browser: &Browser,
    key: &mut SoftKey,
    passkeys: &mut [StoredPasskey],
    now_ms: i64,
) -> Result<String, PasskeyError> {
    let (options, state) = rp
        .start_authentication(passkeys)
        .expect("start authentication");
    let state: AuthenticationState = through_storage(state);
    let response = browser.get(&options, key);
    rp.finish_authentication(state, &response, passkeys, now_ms)
}

#[test]
fn two_named_passkeys_register_and_each_signs_in() {
    let rp = passkeys();
    let (mut yubikey, first) = register(&rp, b"usr_ada", &[], "YubiKey 5");
    assert_eq!(first.name, "YubiKey 5");
    assert_eq!(first.id, B64URL.encode(&yubikey.credential_id));
    assert_eq!((first.created_at, first.last_used_at), (1_000, None));

    // The second registration tells the browser to exclude the first key.
    let (options, _) = rp
        .start_registration(
            b"usr_ada",
            "ada@keyward.example",
            "Ada",
            std::slice::from_ref(&first),
        )
        .expect("start");
    let excluded: Vec<&str> = options["excludeCredentials"]
        .as_array()
        .expect("excludeCredentials")
        .iter()
        .map(|c| c["id"].as_str().expect("id"))
        .collect();
    assert_eq!(excluded, [first.id.as_str()]);
    assert_eq!(options["rp"]["name"], "keyward");
    let (mut laptop, second) = register(&rp, b"usr_ada", std::slice::from_ref(&first), "Laptop");
    assert_ne!(first.id, second.id);

    let mut stored = vec![first, second];
    let options = rp.start_authentication(&stored).expect("start").0;
    assert_eq!(
        options["allowCredentials"].as_array().map(Vec::len),
        Some(2)
    );

    let used =
        sign_in(&rp, &keyward(), &mut yubikey, &mut stored, 2_000).expect("YubiKey signs in");
    assert_eq!(used, stored[0].id);
    assert_eq!(stored[0].last_used_at, Some(2_000));
    assert_eq!(stored[1].last_used_at, None);

    let used = sign_in(&rp, &keyward(), &mut laptop, &mut stored, 3_000).expect("laptop signs in");
    assert_eq!(used, stored[1].id);
    assert_eq!(stored[1].last_used_at, Some(3_000));

    // The updated records go through storage and keep working, counter and all.
    let mut reloaded: Vec<StoredPasskey> = through_storage(stored);
    sign_in(&rp, &keyward(), &mut yubikey, &mut reloaded, 4_000).expect("YubiKey again");
}

#[test]
fn replayed_response_to_another_challenge_is_refused() {
    let rp = passkeys();
    let (mut key, stored) = register(&rp, b"usr_ada", &[], "YubiKey");
    let mut stored = vec![stored];

    let (old_options, _old_state) = rp.start_authentication(&stored).expect("start");
    let captured = keyward().get(&old_options, &mut key);
    let (_, new_state) = rp.start_authentication(&stored).expect("start");
    let err = rp
        .finish_authentication(through_storage(new_state), &captured, &mut stored, 2_000)
        .expect_err("an answer to an old challenge must not sign in");
    assert_eq!(err.code(), "passkey_challenge_mismatch");
    assert_eq!(stored[0].last_used_at, None);

    // The same at registration: an attestation for one ceremony does not finish another.
    let (options, _) = rp
        .start_registration(b"usr_ada", "ada@keyward.example", "Ada", &[])
        .expect("start");
    let (_, other_state) = rp
        .start_registration(b"usr_ada", "ada@keyward.example", "Ada", &[])
        .expect("start");
    let (_, response) = keyward().create(&options);
    let err = rp
        .finish_registration(through_storage(other_state), &response, "Key".into(), 0)
        .expect_err("registration answer to another challenge");
    assert_eq!(err.code(), "passkey_challenge_mismatch");
}

#[test]
fn phishing_site_relaying_the_challenge_is_refused() {
    let rp = passkeys();
    let (mut key, stored) = register(&rp, b"usr_ada", &[], "YubiKey");
    let mut stored = vec![stored];

    // The look-alike site got keyward's options and had the victim's browser answer
    // them: the browser writes the origin it is really on.
    let err = sign_in(&rp, &phishing_site(), &mut key, &mut stored, 2_000)
        .expect_err("an assertion made on another origin must not sign in");
    assert_eq!(err.code(), "passkey_origin_mismatch");
    assert_eq!(stored[0].last_used_at, None);

    // Registration through the phishing site is refused the same way.
    let (options, state) = rp
        .start_registration(b"usr_ada", "ada@keyward.example", "Ada", &[])
        .expect("start");
    let (_, response) = phishing_site().create(&options);
    let err = rp
        .finish_registration(through_storage(state), &response, "Key".into(), 0)
        .expect_err("registration made on another origin");
    assert_eq!(err.code(), "passkey_origin_mismatch");

    // And the genuine origin still works with the same key.
    sign_in(&rp, &keyward(), &mut key, &mut stored, 3_000).expect("genuine origin signs in");
}

#[test]
fn assertion_signed_for_another_rp_id_is_refused() {
    let rp = passkeys();
    let (mut key, stored) = register(&rp, b"usr_ada", &[], "YubiKey");
    let mut stored = vec![stored];
    let (mut options, state) = rp.start_authentication(&stored).expect("start");
    // A relaying proxy that also rewrote the RP id: the authenticator data names the
    // other RP even though the origin in clientDataJSON is keyward's.
    options["rpId"] = json!("login.test");
    key.rp_id = "login.test".to_owned();
    let response = keyward().get(&options, &mut key);
    let err = rp
        .finish_authentication(through_storage(state), &response, &mut stored, 2_000)
        .expect_err("authenticator data for another RP id");
    assert_eq!(err.code(), "passkey_origin_mismatch");
}

#[test]
fn unknown_credential_is_refused() {
    let rp = passkeys();
    let (_ada_key, ada) = register(&rp, b"usr_ada", &[], "YubiKey");
    let (mut mallory_key, _mallory) = register(&rp, b"usr_mallory", &[], "Mallory's key");
    let mut ada_passkeys = vec![ada];

    // Mallory answers Ada's second-factor challenge with her own registered passkey.
    let err = sign_in(&rp, &keyward(), &mut mallory_key, &mut ada_passkeys, 2_000)
        .expect_err("another user's passkey must not sign in");
    assert_eq!(err.code(), "passkey_unknown_credential");

    // And with a key that was never registered anywhere.
    let (mut stranger, _) = SoftKey::make_credential(RP_ID, &random::<32>());
    let err = sign_in(&rp, &keyward(), &mut stranger, &mut ada_passkeys, 2_000)
        .expect_err("an unregistered credential must not sign in");
    assert_eq!(err.code(), "passkey_unknown_credential");
    assert_eq!(ada_passkeys[0].last_used_at, None);
}

#[test]
fn cloned_authenticator_counter_regression_is_refused() {
    let rp = passkeys();
    let (mut original, stored) = register(&rp, b"usr_ada", &[], "YubiKey");
    let mut stored = vec![stored];
    let mut clone = original.clone();
    sign_in(&rp, &keyward(), &mut original, &mut stored, 2_000).expect("counter 1");
    sign_in(&rp, &keyward(), &mut original, &mut stored, 3_000).expect("counter 2");
    clone.counter = 1; // the copy was taken after the first sign-in: it signs with 2 again
    let err = sign_in(&rp, &keyward(), &mut clone, &mut stored, 4_000)
        .expect_err("a counter that did not grow means a copy of the key");
    assert_eq!(err.code(), "passkey_counter_regression");
    assert_eq!(stored[0].last_used_at, Some(3_000));
}

#[test]
fn forged_signature_is_refused() {
    let rp = passkeys();
    let (mut key, stored) = register(&rp, b"usr_ada", &[], "YubiKey");
    let mut stored = vec![stored];
    // An attacker who knows the credential id but not the private key signs with another key.
    let (options, state) = rp.start_authentication(&stored).expect("start");
    let (impostor, _) = SoftKey::make_credential(RP_ID, b"usr_ada");
    key.key = impostor.key;
    let response = keyward().get(&options, &mut key);
    let err = rp
        .finish_authentication(through_storage(state), &response, &mut stored, 2_000)
        .expect_err("a signature by another key");
    assert_eq!(err.code(), "passkey_invalid");
}

#[test]
fn client_ignoring_exclude_credentials_cannot_register_a_key_twice() {
    let rp = passkeys();
    let (key, first) = register(&rp, b"usr_ada", &[], "YubiKey");
    let (options, state) = rp
        .start_registration(
            b"usr_ada",
            "ada@keyward.example",
            "Ada",
            std::slice::from_ref(&first),
        )
        .expect("start");
    // A client that registers the same credential id again despite excludeCredentials.
    let user = B64URL
        .decode(options["user"]["id"].as_str().expect("user.id"))
        .expect("base64url");
    let (_, attestation) =
        SoftKey::make_credential_with_id(RP_ID, &user, key.credential_id.clone());
    let (_, mut response) = keyward().create(&options);
    let id = B64URL.encode(&key.credential_id);
    response["id"] = json!(id);
    response["rawId"] = json!(id);
    response["response"]["attestationObject"] = json!(B64URL.encode(attestation));
    let err = rp
        .finish_registration(through_storage(state), &response, "Again".into(), 0)
        .expect_err("the same credential registered twice");
    assert_eq!(err.code(), "passkey_already_registered");
}

#[test]
fn error_codes_and_messages_carry_no_response_data() {
    let rp = passkeys();
    let (mut key, stored) = register(&rp, b"usr_ada", &[], "YubiKey");
    let mut stored = vec![stored];
    let (options, _) = rp.start_authentication(&stored).expect("start");
    let (_, state) = rp.start_authentication(&stored).expect("start");
    let response = keyward().get(&options, &mut key);
    let err = rp
        .finish_authentication(through_storage(state), &response, &mut stored, 0)
        .expect_err("mismatch");
    let challenge = options["challenge"].as_str().expect("challenge");
    for shown in [err.to_string(), format!("{err:?}"), err.code().to_owned()] {
        assert!(!shown.contains(challenge), "{shown}");
        assert!(!shown.contains(&stored[0].id), "{shown}");
    }
}

#[test]
fn tampered_or_mixed_up_state_is_refused() {
    let rp = passkeys();
    let (mut key, stored) = register(&rp, b"usr_ada", &[], "YubiKey");
    let mut stored = vec![stored];
    let (options, state) = rp.start_authentication(&stored).expect("start");
    let response = keyward().get(&options, &mut key);

    // A registration state handed to the authentication half (a server bug or a row
    // read for the wrong ceremony) does not decode as one.
    let (_, registration) = rp
        .start_registration(b"usr_ada", "ada@keyward.example", "Ada", &[])
        .expect("start");
    let mut wrong: Value = serde_json::to_value(&registration).expect("serialise");
    wrong.as_object_mut().expect("object").remove("excluded");
    let wrong: AuthenticationState = serde_json::from_value(wrong).expect("same shape");
    let err = rp
        .finish_authentication(wrong, &response, &mut stored, 0)
        .expect_err("registration state used for authentication");
    assert_eq!(err.code(), "passkey_storage_invalid");

    // A stored state whose bytes were altered is refused, not trusted.
    let mut altered: Value = serde_json::to_value(&state).expect("serialise");
    altered["server"] = json!("AAAA");
    let altered: AuthenticationState = serde_json::from_value(altered).expect("shape");
    let err = rp
        .finish_authentication(altered, &response, &mut stored, 0)
        .expect_err("altered state");
    assert_eq!(err.code(), "passkey_storage_invalid");
    assert_eq!(stored[0].last_used_at, None);
}

#[test]
fn sign_in_needs_a_registered_passkey() {
    let err = passkeys()
        .start_authentication(&[])
        .expect_err("no passkeys, no ceremony");
    assert_eq!(err.code(), "passkey_none_registered");
}
