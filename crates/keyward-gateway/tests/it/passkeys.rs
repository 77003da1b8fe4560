//! Passkeys through the real server, with the software authenticator keyward-auth's
//! tests use (a real P-256 credential, byte-exact CTAP2 and WebAuthn answers): enrol,
//! sign in with one as the second factor, re-authenticate with one, remove one, and
//! the attacks on each step.

use crate::accounts::{create_user, Browser, PASSWORD};
use crate::soft_authenticator::{Browser as Client, SoftKey};
use crate::support::{Keyward, Upstream};
use keyward_core::Clock;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The public URL: a domain (browsers refuse an IP address as RP id) on plain
/// http, which WebAuthn allows for localhost only. Requests go to the test
/// server's real address; the browser's `Origin` says this.
const PUBLIC: &str = "http://localhost:8788";
const START_MS: i64 = 1_800_000_000_000;

async fn server(clock: Clock) -> (Upstream, Keyward) {
    let upstream = Upstream::start().await;
    let kw = Keyward::start_full(
        &upstream.base_url(),
        |c| c.accounts.public_url = Some(PUBLIC.parse().unwrap()),
        clock,
        "127.0.0.1:0",
    )
    .await;
    (upstream, kw)
}

fn browser(kw: &Keyward) -> Browser {
    let mut b = Browser::new(kw);
    b.origin = Some(PUBLIC.into());
    b
}

/// Registers a passkey named `name` for a signed-in browser; returns the key.
async fn enrol(b: &mut Browser, name: &str) -> (SoftKey, Value) {
    let (s, v) = b.post("/auth/passkeys/registration", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (key, credential) = Client::on(PUBLIC).create(&v["options"]);
    let (s, done) = b
        .post(
            "/auth/passkeys",
            json!({"ceremony": v["ceremony"], "name": name, "credential": credential}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{done}");
    (key, done)
}

/// Password, then the passkey challenge; returns the challenge.
async fn password_then_challenge(b: &mut Browser, email: &str) -> Value {
    let (s, v) = b
        .post("/auth/login", json!({"email": email, "password": PASSWORD}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "second_factor_required", "{v}");
    assert!(v["methods"].as_array().unwrap().contains(&json!("passkey")));
    let (s, challenge) = b.post("/auth/login/passkey", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{challenge}");
    challenge
}

async fn answer(b: &mut Browser, challenge: &Value, credential: Value) -> (StatusCode, Value) {
    b.post(
        "/auth/login/second-factor",
        json!({"passkey": {"ceremony": challenge["ceremony"], "credential": credential}}),
    )
    .await
}

#[tokio::test]
async fn a_passkey_enrols_and_then_signs_in_as_the_second_factor() {
    let (_up, kw) = server(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut b = browser(&kw);
    b.sign_in("ada@example.com", PASSWORD).await;
    let (mut key, done) = enrol(&mut b, "YubiKey 5").await;
    assert_eq!(done["name"], "YubiKey 5");
    let (s, list) = b.get("/auth/passkeys").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["name"], "YubiKey 5");
    assert!(
        list["data"][0].get("data").is_none(),
        "the verifier's record stays server-side"
    );
    let (_, me) = b.get("/auth/me").await;
    assert_eq!(me["second_factors"], json!(["passkey"]));

    let mut later = browser(&kw);
    let challenge = password_then_challenge(&mut later, "ada@example.com").await;
    let credential = Client::on(PUBLIC).get(&challenge["options"], &mut key);
    let (s, v) = answer(&mut later, &challenge, credential).await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("signed_in"))
    );
    assert_eq!(later.get("/auth/me").await.0, StatusCode::OK);
    let (_, list) = later.get("/auth/passkeys").await;
    assert!(list["data"][0]["last_used_at"].is_i64(), "{list}");
}

#[tokio::test]
async fn a_password_alone_does_not_sign_in_a_user_with_a_passkey() {
    let (_up, kw) = server(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut b = browser(&kw);
    b.sign_in("ada@example.com", PASSWORD).await;
    enrol(&mut b, "laptop").await;
    let mut thief = browser(&kw);
    password_then_challenge(&mut thief, "ada@example.com").await;
    assert_eq!(thief.get("/auth/me").await.0, StatusCode::UNAUTHORIZED);
    let (s, _) = thief
        .post("/auth/login/second-factor", json!({"totp": "123456"}))
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "no TOTP enrolled: no way around"
    );
}

#[tokio::test]
async fn an_answer_relayed_from_a_phishing_site_is_refused() {
    let (_up, kw) = server(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut b = browser(&kw);
    b.sign_in("ada@example.com", PASSWORD).await;
    let (mut key, _) = enrol(&mut b, "laptop").await;
    // The phisher typed Ada's password into keyward and relays the challenge
    // to Ada's browser, which is on the look-alike site.
    let mut phisher = browser(&kw);
    let challenge = password_then_challenge(&mut phisher, "ada@example.com").await;
    let credential =
        Client::on("https://keyward-login.example").get(&challenge["options"], &mut key);
    let (s, v) = answer(&mut phisher, &challenge, credential).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_credentials"))
    );
    assert_eq!(phisher.get("/auth/me").await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_replayed_passkey_answer_is_refused() {
    let (_up, kw) = server(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut b = browser(&kw);
    b.sign_in("ada@example.com", PASSWORD).await;
    let (mut key, _) = enrol(&mut b, "laptop").await;
    let mut first = browser(&kw);
    let challenge = password_then_challenge(&mut first, "ada@example.com").await;
    let credential = Client::on(PUBLIC).get(&challenge["options"], &mut key);
    assert_eq!(
        answer(&mut first, &challenge, credential.clone()).await.0,
        StatusCode::OK
    );
    // An attacker who captured the answer and the password tries it again.
    let mut attacker = browser(&kw);
    password_then_challenge(&mut attacker, "ada@example.com").await;
    let (s, _) = answer(&mut attacker, &challenge, credential).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(attacker.get("/auth/me").await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn another_users_passkey_cannot_answer_for_this_user() {
    let (_up, kw) = server(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    create_user(&kw, "eve@example.com", "acme", "member").await;
    let mut ada = browser(&kw);
    ada.sign_in("ada@example.com", PASSWORD).await;
    enrol(&mut ada, "ada's key").await;
    let mut eve = browser(&kw);
    eve.sign_in("eve@example.com", PASSWORD).await;
    let (mut eves_key, _) = enrol(&mut eve, "eve's key").await;
    // Eve knows Ada's password and answers Ada's challenge with her own key.
    let mut attack = browser(&kw);
    let challenge = password_then_challenge(&mut attack, "ada@example.com").await;
    let credential = Client::on(PUBLIC).get(&challenge["options"], &mut eves_key);
    let (s, _) = answer(&mut attack, &challenge, credential).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // And Eve's own challenge cannot be spent in Ada's pending sign-in.
    let mut eve_again = browser(&kw);
    let eves_challenge = password_then_challenge(&mut eve_again, "eve@example.com").await;
    let credential = Client::on(PUBLIC).get(&eves_challenge["options"], &mut eves_key);
    let mut attack = browser(&kw);
    password_then_challenge(&mut attack, "ada@example.com").await;
    let (s, _) = answer(&mut attack, &eves_challenge, credential).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn enrolling_or_removing_a_passkey_needs_a_recent_sign_in_and_ends_other_sessions() {
    let clock = Clock::manual(START_MS);
    let (_up, kw) = server(clock.clone()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut here = browser(&kw);
    let mut other = browser(&kw);
    here.sign_in("ada@example.com", PASSWORD).await;
    other.sign_in("ada@example.com", PASSWORD).await;
    clock.advance(11 * 60_000);
    let (s, v) = here.post("/auth/passkeys/registration", json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("reauthentication_required"))
    );
    let (s, _) = here
        .post("/auth/reauthenticate", json!({"password": PASSWORD}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (mut key, done) = enrol(&mut here, "laptop").await;
    assert_eq!(done["sessions_ended"], 1);
    assert_eq!(other.get("/auth/me").await.0, StatusCode::UNAUTHORIZED);

    // A second session, then removal after the window: re-authenticate with
    // the passkey itself.
    let mut third = browser(&kw);
    let challenge = password_then_challenge(&mut third, "ada@example.com").await;
    let credential = Client::on(PUBLIC).get(&challenge["options"], &mut key);
    assert_eq!(
        answer(&mut third, &challenge, credential).await.0,
        StatusCode::OK
    );
    clock.advance(11 * 60_000);
    let id = done["id"].as_str().unwrap().to_owned();
    let (s, v) = here.delete(&format!("/auth/passkeys/{id}")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("reauthentication_required"))
    );
    let (s, challenge) = here.post("/auth/reauthenticate/passkey", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{challenge}");
    let credential = Client::on(PUBLIC).get(&challenge["options"], &mut key);
    let (s, v) = here
        .post(
            "/auth/reauthenticate",
            json!({"passkey": {"ceremony": challenge["ceremony"], "credential": credential}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = here.delete(&format!("/auth/passkeys/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["sessions_ended"], 1);
    assert_eq!(third.get("/auth/me").await.0, StatusCode::UNAUTHORIZED);
    let (_, me) = here.get("/auth/me").await;
    assert_eq!(me["second_factors"], json!([]));
}

#[tokio::test]
async fn another_users_passkey_cannot_be_removed_by_its_id() {
    let (_up, kw) = server(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    create_user(&kw, "eve@example.com", "acme", "admin").await;
    let mut ada = browser(&kw);
    ada.sign_in("ada@example.com", PASSWORD).await;
    let (_, done) = enrol(&mut ada, "laptop").await;
    let mut eve = browser(&kw);
    eve.sign_in("eve@example.com", PASSWORD).await;
    let id = done["id"].as_str().unwrap();
    let (s, _) = eve.delete(&format!("/auth/passkeys/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, list) = ada.get("/auth/passkeys").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_registration_answer_is_used_once_and_an_authenticator_only_once() {
    let (_up, kw) = server(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut b = browser(&kw);
    b.sign_in("ada@example.com", PASSWORD).await;
    let (s, v) = b.post("/auth/passkeys/registration", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (_, credential) = Client::on(PUBLIC).create(&v["options"]);
    let body = json!({"ceremony": v["ceremony"], "name": "laptop", "credential": credential});
    assert_eq!(
        b.post("/auth/passkeys", body.clone()).await.0,
        StatusCode::CREATED
    );
    let (s, v) = b.post("/auth/passkeys", body).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("passkey_ceremony_unknown"))
    );
    // The same credential answered to a fresh challenge: already registered.
    let (_, v) = b.post("/auth/passkeys/registration", json!({})).await;
    let excluded = v["options"]["excludeCredentials"].as_array().unwrap();
    assert_eq!(excluded.len(), 1, "the browser is told to skip it");
    let (s, _) = b
        .post(
            "/auth/passkeys",
            json!({"ceremony": v["ceremony"], "name": "again", "credential": credential}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "answers another challenge");
}

#[tokio::test]
async fn a_passkey_name_with_control_characters_is_refused() {
    let (_up, kw) = server(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut b = browser(&kw);
    b.sign_in("ada@example.com", PASSWORD).await;
    let (_, v) = b.post("/auth/passkeys/registration", json!({})).await;
    let (_, credential) = Client::on(PUBLIC).create(&v["options"]);
    let (s, v) = b
        .post(
            "/auth/passkeys",
            json!({"ceremony": v["ceremony"], "name": "lap\u{1b}[2Jtop", "credential": credential}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("passkey_name_invalid"))
    );
}

#[tokio::test]
async fn passkeys_say_what_to_configure_when_the_public_url_is_an_ip_address() {
    let upstream = Upstream::start().await;
    let kw = Keyward::start(&upstream.base_url()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut b = Browser::new(&kw);
    b.sign_in("ada@example.com", PASSWORD).await;
    let (s, v) = b.post("/auth/passkeys/registration", json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("passkeys_unavailable"))
    );
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--public-url"));
}
