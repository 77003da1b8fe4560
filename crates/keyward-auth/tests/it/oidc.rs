//! OpenID Connect sign-in against a real OpenID provider (`oidc-provider` on node),
//! over real HTTP: discovery, the browser's trip through the provider, code exchange
//! with PKCE, ID token validation. Each attack test gets a genuine response from the
//! provider and tampers with exactly one thing.

use std::sync::Once;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use keyward_auth::oidc::{link_decision, Link, OidcClient, OidcConfig, OidcError};
use serde_json::json;

use crate::oidc_provider::{self, sign_in_at_provider, TestProvider, REDIRECT_URL};

const SECRET_ENV: &str = "KEYWARD_TEST_OIDC_KEYWARD_SECRET";
const SECRET: &str = "keyward-client-secret-for-tests-only";
const OTHER_SECRET_ENV: &str = "KEYWARD_TEST_OIDC_OTHER_SECRET";
const OTHER_SECRET: &str = "other-relying-party-secret";

fn set_secrets() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var(SECRET_ENV, SECRET);
        std::env::set_var(OTHER_SECRET_ENV, OTHER_SECRET);
    });
}

/// Two relying parties (keyward and another site) and three people at the provider.
fn start_provider() -> Option<TestProvider> {
    set_secrets();
    let client = |id: &str, secret: &str| json!({ "client_id": id, "client_secret": secret, "redirect_uris": [REDIRECT_URL] });
    oidc_provider::start(&json!({
        "clients": [client("keyward", SECRET), client("other-site", OTHER_SECRET)],
        "accounts": [
            { "id": "alice", "email": "Alice@Keyward.Test", "email_verified": true },
            { "id": "eve", "email": "eve@keyward.test", "email_verified": false },
            { "id": "bob", "email": "bob@elsewhere.test", "email_verified": true },
        ],
    }))
}

fn config(provider: &TestProvider, client_id: &str, secret_env: &str) -> OidcConfig {
    OidcConfig {
        issuer_url: provider.issuer.clone(),
        client_id: client_id.into(),
        client_secret_env: secret_env.into(),
        redirect_url: REDIRECT_URL.into(),
        allowed_domains: vec!["keyward.test".into()],
    }
}

async fn keyward_client(provider: &TestProvider) -> OidcClient {
    let http = keyward_auth::oidc::http_client().expect("http client");
    OidcClient::discover(&config(provider, "keyward", SECRET_ENV), http)
        .await
        .expect("discovery against the real provider")
}

#[tokio::test]
async fn full_sign_in_yields_the_verified_lowercased_email() {
    let Some(provider) = start_provider() else {
        return;
    };
    let client = keyward_client(&provider).await;
    let (url, pending) = client.begin();
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    assert!(!url.contains(&pending.pkce_verifier));

    // The server stores the pending login between the two requests.
    let stored = serde_json::to_string(&pending).unwrap();
    let pending = serde_json::from_str(&stored).unwrap();

    let (state, code) = sign_in_at_provider(&url, "alice").await;
    let identity = client
        .finish(&pending, &state, &code)
        .await
        .expect("sign-in");
    assert_eq!(identity.email, "alice@keyward.test");
    assert_eq!(identity.subject, "alice");
    assert_eq!(identity.issuer, provider.issuer);
    assert!(identity.email_verified);
    assert_eq!(
        link_decision(&identity, true, client.allowed_domains()),
        Link::ExistingUser
    );
    assert_eq!(
        link_decision(&identity, false, client.allowed_domains()),
        Link::CreateUser
    );

    // The code is single-use: replaying the same callback fails at the provider.
    let replay = client.finish(&pending, &state, &code).await.unwrap_err();
    assert_eq!(replay.code(), "oidc_code_rejected", "{replay}");
}

#[tokio::test]
async fn forged_callback_with_another_state_is_refused() {
    let Some(provider) = start_provider() else {
        return;
    };
    let client = keyward_client(&provider).await;
    // The victim's pending sign-in, and an attacker's own genuine callback (login
    // CSRF: signing the victim in as the attacker).
    let (_, victim_pending) = client.begin();
    let (attacker_url, _) = client.begin();
    let (attacker_state, attacker_code) = sign_in_at_provider(&attacker_url, "alice").await;
    let err = client
        .finish(&victim_pending, &attacker_state, &attacker_code)
        .await
        .unwrap_err();
    assert_eq!(err, OidcError::StateMismatch);
    assert_eq!(err.code(), "oidc_state_mismatch");
}

#[tokio::test]
async fn id_token_with_another_sign_ins_nonce_is_refused() {
    let Some(provider) = start_provider() else {
        return;
    };
    let client = keyward_client(&provider).await;
    let (url, mut pending) = client.begin();
    let (state, code) = sign_in_at_provider(&url, "alice").await;
    // The ID token will carry the nonce of the sign-in that began; the pending login
    // now expects another one (as if the token were injected from another sign-in).
    let (_, other) = client.begin();
    pending.nonce = other.nonce;
    let err = client.finish(&pending, &state, &code).await.unwrap_err();
    assert_eq!(err, OidcError::NonceMismatch);
    assert_eq!(err.code(), "oidc_nonce_mismatch");
}

#[tokio::test]
async fn callback_for_a_sign_in_begun_long_ago_is_refused() {
    let Some(provider) = start_provider() else {
        return;
    };
    let client = keyward_client(&provider).await;
    let (url, mut pending) = client.begin();
    let (state, code) = sign_in_at_provider(&url, "alice").await;
    // A pending login kept (or leaked) past its lifetime.
    pending.created_at_unix -= keyward_auth::oidc::PENDING_LOGIN_LIFETIME.as_secs() + 60;
    let err = client.finish(&pending, &state, &code).await.unwrap_err();
    assert_eq!(err, OidcError::LoginExpired);
}

#[tokio::test]
async fn code_with_a_swapped_pkce_verifier_is_refused() {
    let Some(provider) = start_provider() else {
        return;
    };
    let client = keyward_client(&provider).await;
    let (url, mut pending) = client.begin();
    let (state, code) = sign_in_at_provider(&url, "alice").await;
    // A stolen code is useless without the verifier that only keyward holds.
    let (_, other) = client.begin();
    pending.pkce_verifier = other.pkce_verifier;
    let err = client.finish(&pending, &state, &code).await.unwrap_err();
    assert_eq!(err, OidcError::CodeRejected("invalid_grant".into()));
}

#[tokio::test]
async fn id_token_issued_to_another_site_is_refused() {
    let Some(provider) = start_provider() else {
        return;
    };
    let keyward = keyward_client(&provider).await;
    // Another relying party of the same provider signs alice in and so holds a
    // genuine, correctly signed ID token for her, issued to itself. Presenting it
    // to keyward (token substitution) must fail on the audience.
    let http = keyward_auth::oidc::http_client().unwrap();
    let other = OidcClient::discover(&config(&provider, "other-site", OTHER_SECRET_ENV), http)
        .await
        .unwrap();
    let (url, pending) = other.begin();
    let (_state, code) = sign_in_at_provider(&url, "alice").await;
    let raw_id_token = raw_id_token(
        &provider,
        "other-site",
        OTHER_SECRET,
        &code,
        &pending.pkce_verifier,
    )
    .await;
    // The token is genuine: the site it was issued to accepts it.
    let at_other = other
        .verify_id_token_str(&raw_id_token, &pending.nonce)
        .unwrap();
    assert_eq!(at_other.email, "alice@keyward.test");

    let err = keyward
        .verify_id_token_str(&raw_id_token, &pending.nonce)
        .unwrap_err();
    assert_eq!(err, OidcError::AudienceMismatch);
    assert_eq!(err.code(), "oidc_audience_mismatch");
}

#[tokio::test]
async fn id_token_with_altered_claims_is_refused() {
    let Some(provider) = start_provider() else {
        return;
    };
    let client = keyward_client(&provider).await;
    let (url, pending) = client.begin();
    let (_state, code) = sign_in_at_provider(&url, "eve").await;
    let genuine = raw_id_token(&provider, "keyward", SECRET, &code, &pending.pkce_verifier).await;
    // Eve's genuine token says her email is unverified; she rewrites the payload to
    // say it is, keeping the provider's signature.
    let parts: Vec<&str> = genuine.split('.').collect();
    assert_eq!(parts.len(), 3);
    let payload = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
    let mut claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(claims["email_verified"], json!(false));
    claims["email_verified"] = json!(true);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    let err = client
        .verify_id_token_str(&forged, &pending.nonce)
        .unwrap_err();
    assert_eq!(err.code(), "oidc_invalid_id_token", "{err}");
    // The untouched token is checked the same way and refused only for its email.
    let err = client
        .verify_id_token_str(&genuine, &pending.nonce)
        .unwrap_err();
    assert_eq!(err, OidcError::EmailUnverified);
}

#[tokio::test]
async fn code_issued_to_another_site_is_refused() {
    let Some(provider) = start_provider() else {
        return;
    };
    let keyward = keyward_client(&provider).await;
    let http = keyward_auth::oidc::http_client().unwrap();
    let other = OidcClient::discover(&config(&provider, "other-site", OTHER_SECRET_ENV), http)
        .await
        .unwrap();
    // A code the provider issued to the other site, injected into keyward's callback
    // along with a pending login whose state matches (the attacker controls both).
    let (url, mut pending) = other.begin();
    let (_state, code) = sign_in_at_provider(&url, "alice").await;
    let (_, keyward_pending) = keyward.begin();
    pending.state = keyward_pending.state.clone();
    let err = keyward
        .finish(&pending, &keyward_pending.state, &code)
        .await
        .unwrap_err();
    assert_eq!(err, OidcError::CodeRejected("invalid_grant".into()));
}

#[tokio::test]
async fn provider_account_with_unverified_email_is_refused() {
    let Some(provider) = start_provider() else {
        return;
    };
    let client = keyward_client(&provider).await;
    let (url, pending) = client.begin();
    let (state, code) = sign_in_at_provider(&url, "eve").await;
    let err = client.finish(&pending, &state, &code).await.unwrap_err();
    assert_eq!(err, OidcError::EmailUnverified);
    assert_eq!(err.code(), "oidc_email_unverified");
}

#[tokio::test]
async fn verified_stranger_from_an_unlisted_domain_cannot_create_an_account() {
    let Some(provider) = start_provider() else {
        return;
    };
    let client = keyward_client(&provider).await;
    let (url, pending) = client.begin();
    let (state, code) = sign_in_at_provider(&url, "bob").await;
    let identity = client
        .finish(&pending, &state, &code)
        .await
        .expect("bob signs in");
    assert_eq!(identity.email, "bob@elsewhere.test");
    let decision = link_decision(&identity, false, client.allowed_domains());
    assert_eq!(decision, Link::Refuse(OidcError::DomainNotAllowed));
    if let Link::Refuse(e) = decision {
        assert_eq!(e.code(), "oidc_domain_not_allowed");
    }
    // An operator-created account with that email may still sign in.
    assert_eq!(
        link_decision(&identity, true, client.allowed_domains()),
        Link::ExistingUser
    );
}

#[tokio::test]
async fn unreachable_provider_is_reported_as_such() {
    set_secrets();
    // A port that was free a moment ago: nothing answers there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = OidcConfig {
        issuer_url: format!("http://127.0.0.1:{port}"),
        client_id: "keyward".into(),
        client_secret_env: SECRET_ENV.into(),
        redirect_url: REDIRECT_URL.into(),
        allowed_domains: vec![],
    };
    let err = OidcClient::discover(&config, keyward_auth::oidc::http_client().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "oidc_provider_unreachable", "{err}");
}

#[tokio::test]
async fn missing_client_secret_names_the_variable_and_nothing_else() {
    let config = OidcConfig {
        issuer_url: "https://accounts.google.com".into(),
        client_id: "keyward".into(),
        client_secret_env: "KEYWARD_TEST_OIDC_SECRET_THAT_IS_NEVER_SET".into(),
        redirect_url: REDIRECT_URL.into(),
        allowed_domains: vec![],
    };
    let err = OidcClient::discover(&config, keyward_auth::oidc::http_client().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "oidc_client_secret_missing");
    assert!(err
        .to_string()
        .contains("KEYWARD_TEST_OIDC_SECRET_THAT_IS_NEVER_SET"));
}

#[tokio::test]
async fn remote_provider_over_plain_http_is_refused() {
    set_secrets();
    let config = OidcConfig {
        issuer_url: "http://accounts.example.com".into(),
        client_id: "keyward".into(),
        client_secret_env: SECRET_ENV.into(),
        redirect_url: REDIRECT_URL.into(),
        allowed_domains: vec![],
    };
    // Refused before any request is made (example.com is never contacted).
    let err = OidcClient::discover(&config, keyward_auth::oidc::http_client().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "oidc_config", "{err}");
}

#[tokio::test]
async fn errors_and_debug_output_never_hold_the_secret_or_the_verifier() {
    let Some(provider) = start_provider() else {
        return;
    };
    let client = keyward_client(&provider).await;
    let (_, pending) = client.begin();
    let debug = format!("{client:?} {pending:?}");
    assert!(!debug.contains(SECRET));
    assert!(!debug.contains(&pending.pkce_verifier));
    assert!(!debug.contains(&pending.nonce));
    let err = client
        .finish(&pending, &pending.state, "not-a-real-code")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "oidc_code_rejected");
    assert!(!format!("{err} {err:?}").contains(SECRET));
}

/// Does the other site's token request itself (its own client credentials, code and
/// verifier) to get hold of the raw ID token the provider issued to it.
async fn raw_id_token(
    provider: &TestProvider,
    client_id: &str,
    secret: &str,
    code: &str,
    verifier: &str,
) -> String {
    let response: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/token", provider.issuer))
        .basic_auth(client_id, Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URL),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token response");
    response["id_token"].as_str().expect("id_token").to_owned()
}
