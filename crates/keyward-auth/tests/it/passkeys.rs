//! Passkey ceremonies against a software authenticator: a real P-256 credential that
//! builds attestation objects and assertions byte for byte as the WebAuthn and CTAP2
//! specs lay them out, behind a "browser" that writes clientDataJSON with the origin it
//! is on. Every answer goes through `Passkeys` exactly as the server will pass it: the
//! states serialised to JSON and back, the responses as `PublicKeyCredential.toJSON()`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use keyward_auth::passkeys::{
    AuthenticationState, PasskeyConfig, PasskeyError, Passkeys, RegistrationState, StoredPasskey,
};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

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

// ---- a minimal CBOR encoder (RFC 8949), canonical as CTAP2 requires ----

enum Cbor {
    Int(i64),
    Bytes(Vec<u8>),
    Text(&'static str),
    Map(Vec<(Cbor, Cbor)>),
}

fn cbor_head(major: u8, len: u64, out: &mut Vec<u8>) {
    let major = major << 5;
    match len {
        0..=23 => out.push(major | len as u8),
        24..=0xff => out.extend([major | 24, len as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend((len as u16).to_be_bytes());
        }
        _ => {
            out.push(major | 26);
            out.extend((len as u32).to_be_bytes());
        }
    }
}

fn cbor(value: &Cbor, out: &mut Vec<u8>) {
    match value {
        Cbor::Int(n) if *n >= 0 => cbor_head(0, *n as u64, out),
        Cbor::Int(n) => cbor_head(1, (-1 - *n) as u64, out),
        Cbor::Bytes(bytes) => {
            cbor_head(2, bytes.len() as u64, out);
            out.extend(bytes);
        }
        Cbor::Text(text) => {
            cbor_head(3, text.len() as u64, out);
            out.extend(text.as_bytes());
        }
        Cbor::Map(entries) => {
            cbor_head(5, entries.len() as u64, out);
            for (key, value) in entries {
                cbor(key, out);
                cbor(value, out);
            }
        }
    }
}

// ---- the authenticator ----

/// One credential on a security key: its key pair, id, signature counter and the RP it
/// was made for. `Clone` models copying the key out of the device (a cloned authenticator).
#[derive(Clone)]
struct SoftKey {
    key: SigningKey,
    credential_id: Vec<u8>,
    rp_id: String,
    user_handle: Vec<u8>,
    counter: u32,
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).expect("OS randomness");
    bytes
}

fn auth_data(rp_id: &str, flags: u8, counter: u32, attested: &[u8]) -> Vec<u8> {
    let mut data = Sha256::digest(rp_id.as_bytes()).to_vec();
    data.push(flags);
    data.extend(counter.to_be_bytes());
    data.extend(attested);
    data
}

const USER_PRESENT: u8 = 0x01;
const ATTESTED_DATA: u8 = 0x40;

impl SoftKey {
    /// authenticatorMakeCredential: a fresh P-256 key for `rp_id`, "none" attestation.
    fn make_credential(rp_id: &str, user_handle: &[u8]) -> (SoftKey, Vec<u8>) {
        SoftKey::make_credential_with_id(rp_id, user_handle, random::<32>().to_vec())
    }

    /// As `make_credential`, with a chosen credential id (a misbehaving client).
    fn make_credential_with_id(
        rp_id: &str,
        user_handle: &[u8],
        credential_id: Vec<u8>,
    ) -> (SoftKey, Vec<u8>) {
        let key = loop {
            if let Ok(key) = SigningKey::from_slice(&random::<32>()) {
                break key;
            }
        };
        let soft = SoftKey {
            key,
            credential_id,
            rp_id: rp_id.to_owned(),
            user_handle: user_handle.to_vec(),
            counter: 0,
        };
        let point = soft.key.verifying_key().to_encoded_point(false);
        let cose_key = Cbor::Map(vec![
            (Cbor::Int(1), Cbor::Int(2)),  // kty: EC2
            (Cbor::Int(3), Cbor::Int(-7)), // alg: ES256
            (Cbor::Int(-1), Cbor::Int(1)), // crv: P-256
            (Cbor::Int(-2), Cbor::Bytes(point.x().expect("x").to_vec())),
            (Cbor::Int(-3), Cbor::Bytes(point.y().expect("y").to_vec())),
        ]);
        let mut attested = vec![0u8; 16]; // AAGUID: none
        attested.extend((soft.credential_id.len() as u16).to_be_bytes());
        attested.extend(&soft.credential_id);
        cbor(&cose_key, &mut attested);
        let auth_data = auth_data(rp_id, USER_PRESENT | ATTESTED_DATA, soft.counter, &attested);
        let mut attestation_object = Vec::new();
        cbor(
            &Cbor::Map(vec![
                (Cbor::Text("fmt"), Cbor::Text("none")),
                (Cbor::Text("attStmt"), Cbor::Map(vec![])),
                (Cbor::Text("authData"), Cbor::Bytes(auth_data)),
            ]),
            &mut attestation_object,
        );
        (soft, attestation_object)
    }

    /// authenticatorGetAssertion: counter + 1, signature over authData || SHA-256(clientDataJSON).
    fn get_assertion(&mut self, rp_id: &str, client_data_json: &[u8]) -> (Vec<u8>, Vec<u8>) {
        self.counter += 1;
        let auth_data = auth_data(rp_id, USER_PRESENT, self.counter, &[]);
        let mut signed = auth_data.clone();
        signed.extend(Sha256::digest(client_data_json));
        let signature: Signature = self.key.sign(&signed);
        (auth_data, signature.to_der().as_bytes().to_vec())
    }
}

// ---- the browser ----

/// The client: on `origin`, it writes clientDataJSON as browsers do and asks the
/// authenticator for the RP id in the options.
struct Browser {
    origin: &'static str,
}

impl Browser {
    fn client_data(&self, kind: &str, challenge: &str) -> Vec<u8> {
        format!(
            r#"{{"type":"{kind}","challenge":"{challenge}","origin":"{}","crossOrigin":false}}"#,
            self.origin
        )
        .into_bytes()
    }

    /// navigator.credentials.create(options), then `.toJSON()`.
    fn create(&self, options: &Value) -> (SoftKey, Value) {
        let challenge = options["challenge"].as_str().expect("challenge");
        let rp_id = options["rp"]["id"].as_str().expect("rp.id");
        let user_handle = B64URL
            .decode(options["user"]["id"].as_str().expect("user.id"))
            .expect("user.id is base64url");
        let client_data = self.client_data("webauthn.create", challenge);
        let (key, attestation_object) = SoftKey::make_credential(rp_id, &user_handle);
        let id = B64URL.encode(&key.credential_id);
        let response = json!({
            "id": id,
            "rawId": id,
            "type": "public-key",
            "response": {
                "clientDataJSON": B64URL.encode(&client_data),
                "attestationObject": B64URL.encode(&attestation_object),
                "transports": ["usb"],
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "cross-platform",
        });
        (key, response)
    }

    /// navigator.credentials.get(options) with `key`, then `.toJSON()`. Signs for the
    /// RP id the options name, as the authenticator holding the credential would.
    fn get(&self, options: &Value, key: &mut SoftKey) -> Value {
        let challenge = options["challenge"].as_str().expect("challenge");
        let rp_id = options["rpId"].as_str().expect("rpId").to_owned();
        assert_eq!(
            rp_id, key.rp_id,
            "an authenticator only signs for its own RP id"
        );
        let client_data = self.client_data("webauthn.get", challenge);
        let (auth_data, signature) = key.get_assertion(&rp_id, &client_data);
        let id = B64URL.encode(&key.credential_id);
        json!({
            "id": id,
            "rawId": id,
            "type": "public-key",
            "response": {
                "clientDataJSON": B64URL.encode(&client_data),
                "authenticatorData": B64URL.encode(&auth_data),
                "signature": B64URL.encode(&signature),
                "userHandle": B64URL.encode(&key.user_handle),
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "cross-platform",
        })
    }
}

const KEYWARD: Browser = Browser { origin: ORIGIN };
const PHISHING_SITE: Browser = Browser {
    origin: PHISHING_ORIGIN,
};

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
    let (key, response) = KEYWARD.create(&options);
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

    let used = sign_in(&rp, &KEYWARD, &mut yubikey, &mut stored, 2_000).expect("YubiKey signs in");
    assert_eq!(used, stored[0].id);
    assert_eq!(stored[0].last_used_at, Some(2_000));
    assert_eq!(stored[1].last_used_at, None);

    let used = sign_in(&rp, &KEYWARD, &mut laptop, &mut stored, 3_000).expect("laptop signs in");
    assert_eq!(used, stored[1].id);
    assert_eq!(stored[1].last_used_at, Some(3_000));

    // The updated records go through storage and keep working, counter and all.
    let mut reloaded: Vec<StoredPasskey> = through_storage(stored);
    sign_in(&rp, &KEYWARD, &mut yubikey, &mut reloaded, 4_000).expect("YubiKey again");
}

#[test]
fn replayed_response_to_another_challenge_is_refused() {
    let rp = passkeys();
    let (mut key, stored) = register(&rp, b"usr_ada", &[], "YubiKey");
    let mut stored = vec![stored];

    let (old_options, _old_state) = rp.start_authentication(&stored).expect("start");
    let captured = KEYWARD.get(&old_options, &mut key);
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
    let (_, response) = KEYWARD.create(&options);
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
    let err = sign_in(&rp, &PHISHING_SITE, &mut key, &mut stored, 2_000)
        .expect_err("an assertion made on another origin must not sign in");
    assert_eq!(err.code(), "passkey_origin_mismatch");
    assert_eq!(stored[0].last_used_at, None);

    // Registration through the phishing site is refused the same way.
    let (options, state) = rp
        .start_registration(b"usr_ada", "ada@keyward.example", "Ada", &[])
        .expect("start");
    let (_, response) = PHISHING_SITE.create(&options);
    let err = rp
        .finish_registration(through_storage(state), &response, "Key".into(), 0)
        .expect_err("registration made on another origin");
    assert_eq!(err.code(), "passkey_origin_mismatch");

    // And the genuine origin still works with the same key.
    sign_in(&rp, &KEYWARD, &mut key, &mut stored, 3_000).expect("genuine origin signs in");
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
    let response = KEYWARD.get(&options, &mut key);
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
    let err = sign_in(&rp, &KEYWARD, &mut mallory_key, &mut ada_passkeys, 2_000)
        .expect_err("another user's passkey must not sign in");
    assert_eq!(err.code(), "passkey_unknown_credential");

    // And with a key that was never registered anywhere.
    let (mut stranger, _) = SoftKey::make_credential(RP_ID, &random::<32>());
    let err = sign_in(&rp, &KEYWARD, &mut stranger, &mut ada_passkeys, 2_000)
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
    sign_in(&rp, &KEYWARD, &mut original, &mut stored, 2_000).expect("counter 1");
    sign_in(&rp, &KEYWARD, &mut original, &mut stored, 3_000).expect("counter 2");
    clone.counter = 1; // the copy was taken after the first sign-in: it signs with 2 again
    let err = sign_in(&rp, &KEYWARD, &mut clone, &mut stored, 4_000)
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
    let response = KEYWARD.get(&options, &mut key);
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
    let (_, mut response) = KEYWARD.create(&options);
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
    let response = KEYWARD.get(&options, &mut key);
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
    let response = KEYWARD.get(&options, &mut key);

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
