//! "Sign in with Google" through the real server, against a real OpenID provider
//! (`oidc-provider` on node, started by the test on loopback). The browser is
//! played with reqwest, following no redirect by itself: keyward's 303 to the
//! provider, the provider's pages, and the provider's redirect back to keyward's
//! registered callback, `{public_url}/auth/oidc/callback`.
//!
//! The ID token's own checks (nonce, audience, issuer, altered claims, PKCE) are
//! keyward-auth's tests; these are about what the server does with a callback.

use crate::accounts::{create_user, enrol_totp, Browser, PASSWORD};
use crate::oidc_provider::{self, browse_to_redirect, TestProvider};
use crate::support::{Keyward, Upstream};
use keyward_core::Clock;
use keyward_gateway::config::OidcSettings;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::io::Write;
use std::sync::{Arc, Mutex, Once, OnceLock};

const SECRET_ENV: &str = "KEYWARD_TEST_GATEWAY_OIDC_SECRET";
const SECRET: &str = "gateway-oidc-client-secret-for-tests-only";

/// keyward (its socket bound first, so that its callback can be registered),
/// then the provider, then keyward's configuration pointing at the provider.
struct Setup {
    kw: Keyward,
    provider: TestProvider,
    _upstream: Upstream,
}

impl Setup {
    async fn start() -> Option<Self> {
        static SECRET_SET: Once = Once::new();
        SECRET_SET.call_once(|| std::env::set_var(SECRET_ENV, SECRET));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let public_url = format!("http://{}", listener.local_addr().unwrap());
        let provider = oidc_provider::start(&json!({
            "clients": [{
                "client_id": "keyward",
                "client_secret": SECRET,
                "redirect_uris": [format!("{public_url}/auth/oidc/callback")],
            }],
            "accounts": [
                // A newcomer in the allowed domain.
                { "id": "jo", "email": "Jo@Corp.Test", "email_verified": true },
                // A stranger whose domain is not allowed.
                { "id": "sam", "email": "sam@elsewhere.test", "email_verified": true },
                // Claims an existing user's email without the provider vouching for it.
                { "id": "eve", "email": "pat@corp.test", "email_verified": false },
                // The owners of existing password accounts.
                { "id": "lee", "email": "lee@corp.test", "email_verified": true },
                { "id": "tia", "email": "tia@corp.test", "email_verified": true },
                { "id": "dan", "email": "dan@corp.test", "email_verified": true },
                // Lee's address, given to someone else after Lee linked it.
                { "id": "lee-successor", "email": "lee@corp.test", "email_verified": true },
            ],
        }))?;
        let upstream = Upstream::start().await;
        let issuer = provider.issuer.clone();
        let kw = Keyward::start_on(
            listener,
            &upstream.base_url(),
            |c| {
                c.accounts.public_url = Some(public_url.parse().unwrap());
                c.accounts.oidc = Some(OidcSettings {
                    issuer_url: issuer,
                    client_id: "keyward".into(),
                    client_secret_env: SECRET_ENV.into(),
                    allowed_domains: vec!["corp.test".into()],
                    org: Some("acme".into()),
                });
            },
            Clock::system(),
        )
        .await;
        // The organization just-in-time users join, made with its owner.
        create_user(&kw, "owner@corp.test", "acme", "owner").await;
        Some(Self {
            kw,
            provider,
            _upstream: upstream,
        })
    }

    fn callback_url(&self) -> String {
        format!("{}/auth/oidc/callback", self.kw.url)
    }

    /// A browser that stops at every redirect, as the test must see each one.
    fn browser(&self) -> Browser {
        let mut b = Browser::new(&self.kw);
        b.http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        b
    }

    /// `GET /auth/oidc/start` in `b`, then the provider's pages as `login`:
    /// the callback's path and query, not yet delivered.
    async fn to_callback(&self, b: &mut Browser, login: &str) -> String {
        let (s, h, v) = b.send(Method::GET, "/auth/oidc/start", None).await;
        assert_eq!(s, StatusCode::SEE_OTHER, "{v}");
        let authorize = h[LOCATION].to_str().unwrap().to_owned();
        assert!(authorize.starts_with(&self.provider.issuer), "{authorize}");
        assert!(b.cookies.contains_key("keyward_oidc"), "the binding cookie");
        let back = browse_to_redirect(&authorize, login, &self.callback_url()).await;
        format!("{}?{}", back.path(), back.query().unwrap())
    }

    /// The whole trip; the callback's answer.
    async fn sign_in(&self, b: &mut Browser, login: &str) -> (StatusCode, HeaderMap, Value) {
        let callback = self.to_callback(b, login).await;
        b.send(Method::GET, &callback, None).await
    }

    async fn user_id(&self, email: &str) -> Option<String> {
        let user = self.kw.state.store.user_by_email(email).await.unwrap();
        user.map(|u| u.id.to_string())
    }

    async fn actions(&self, user_id: &str) -> Vec<(String, Value)> {
        let events = self
            .kw
            .state
            .store
            .list_audit(Some(user_id), 100)
            .await
            .unwrap();
        events.into_iter().map(|e| (e.action, e.detail)).collect()
    }
}

fn has_session(b: &Browser) -> bool {
    b.cookies.keys().any(|k| k.ends_with("keyward_session"))
}

fn assert_refused(answer: &(StatusCode, HeaderMap, Value), status: StatusCode, code: &str) {
    let (s, h, v) = answer;
    assert_eq!(
        (*s, v["error"]["code"].as_str()),
        (status, Some(code)),
        "{v}"
    );
    assert!(
        h.get_all(SET_COOKIE)
            .iter()
            .all(|c| !c.to_str().unwrap().contains("keyward_session=")),
        "no session on a refusal"
    );
}

#[tokio::test]
async fn a_newcomer_in_an_allowed_domain_gets_a_member_account_and_a_session() {
    let Some(t) = Setup::start().await else {
        return;
    };
    let mut b = t.browser();
    let (s, h, _) = t.sign_in(&mut b, "jo").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[LOCATION], "/");
    assert!(has_session(&b));
    assert!(
        !b.cookies.contains_key("keyward_oidc"),
        "the binding cookie is removed once used"
    );
    let (s, me) = b.get("/auth/me").await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["email"], "jo@corp.test");
    assert_eq!(me["org"], "acme");
    assert_eq!(me["role"], "member");
    assert_eq!(me["second_factors"], json!([]));
    let id = me["id"].as_str().unwrap();
    let user =
        t.kw.state
            .store
            .user_by_email("jo@corp.test")
            .await
            .unwrap();
    assert!(user.unwrap().password_hash.is_none(), "no password was set");
    let actions = t.actions(id).await;
    let names: Vec<&str> = actions.iter().map(|(a, _)| a.as_str()).collect();
    for expected in ["user.created", "user.oidc_linked", "user.signed_in"] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    let signed_in = actions.iter().find(|(a, _)| a == "user.signed_in").unwrap();
    assert_eq!(signed_in.1["method"], "oidc");
}

#[tokio::test]
async fn a_stranger_from_a_domain_not_allowed_gets_no_account() {
    let Some(t) = Setup::start().await else {
        return;
    };
    let mut b = t.browser();
    let answer = t.sign_in(&mut b, "sam").await;
    assert_refused(&answer, StatusCode::FORBIDDEN, "oidc_domain_not_allowed");
    assert!(!has_session(&b));
    assert_eq!(t.user_id("sam@elsewhere.test").await, None);
}

#[tokio::test]
async fn an_unverified_email_is_not_linked_to_the_account_that_has_it() {
    let Some(t) = Setup::start().await else {
        return;
    };
    let pat = create_user(&t.kw, "pat@corp.test", "acme", "admin").await;
    let mut b = t.browser();
    let answer = t.sign_in(&mut b, "eve").await;
    assert_refused(&answer, StatusCode::FORBIDDEN, "oidc_email_unverified");
    assert!(!has_session(&b));
    let store = &t.kw.state.store;
    assert_eq!(
        store.oidc_user(&t.provider.issuer, "eve").await.unwrap(),
        None
    );
    let actions = t.actions(&pat).await;
    assert!(
        actions.iter().all(|(a, _)| a != "user.oidc_linked"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn a_password_user_with_the_same_verified_email_is_linked_then_found_by_subject() {
    let Some(t) = Setup::start().await else {
        return;
    };
    let lee = create_user(&t.kw, "lee@corp.test", "acme", "admin").await;
    let mut b = t.browser();
    let (s, h, _) = t.sign_in(&mut b, "lee").await;
    assert_eq!(
        (s, h[LOCATION].to_str().unwrap()),
        (StatusCode::SEE_OTHER, "/")
    );
    let (_, me) = b.get("/auth/me").await;
    assert_eq!(
        (me["id"].as_str(), me["role"].as_str()),
        (Some(lee.as_str()), Some("admin"))
    );
    let store = &t.kw.state.store;
    let linked = store.oidc_user(&t.provider.issuer, "lee").await.unwrap();
    assert_eq!(linked.map(|u| u.to_string()), Some(lee.clone()));

    // The next sign-in finds the user by (issuer, subject): no second link.
    let mut again = t.browser();
    let (s, _, _) = t.sign_in(&mut again, "lee").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(has_session(&again));
    let actions = t.actions(&lee).await;
    let links = actions
        .iter()
        .filter(|(a, _)| a == "user.oidc_linked")
        .count();
    let sign_ins = actions
        .iter()
        .filter(|(a, d)| a == "user.signed_in" && d["method"] == "oidc")
        .count();
    assert_eq!((links, sign_ins), (1, 2), "{actions:?}");
    // The password still works alongside.
    Browser::new(&t.kw).sign_in("lee@corp.test", PASSWORD).await;
}

#[tokio::test]
async fn a_reassigned_email_does_not_hand_over_an_account_linked_to_its_first_owner() {
    let Some(t) = Setup::start().await else {
        return;
    };
    let lee = create_user(&t.kw, "lee@corp.test", "acme", "admin").await;
    let (s, _, _) = t.sign_in(&mut t.browser(), "lee").await;
    assert_eq!(s, StatusCode::SEE_OTHER, "Lee links the account");
    // The provider now gives lee@corp.test to a different person (subject).
    let mut successor = t.browser();
    let answer = t.sign_in(&mut successor, "lee-successor").await;
    assert_refused(&answer, StatusCode::FORBIDDEN, "oidc_account_refused");
    assert!(!has_session(&successor));
    let store = &t.kw.state.store;
    assert!(store
        .oidc_user(&t.provider.issuer, "lee-successor")
        .await
        .unwrap()
        .is_none());
    let refusals = t.actions(&lee).await;
    assert!(
        refusals.iter().any(
            |(a, d)| a == "user.sign_in_refused" && d["reason"] == "linked_to_another_identity"
        ),
        "{refusals:?}"
    );
}

#[tokio::test]
async fn a_totp_user_signing_in_through_the_provider_still_gives_the_second_factor() {
    let Some(t) = Setup::start().await else {
        return;
    };
    create_user(&t.kw, "tia@corp.test", "acme", "member").await;
    let mut enrolling = Browser::new(&t.kw);
    enrolling.sign_in("tia@corp.test", PASSWORD).await;
    let (_, recovery_codes) = enrol_totp(&mut enrolling, &Clock::system()).await;

    let mut b = t.browser();
    let (s, h, _) = t.sign_in(&mut b, "tia").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[LOCATION], "/sign-in/second-factor");
    assert!(!has_session(&b), "no session before the second factor");
    assert!(b.cookies.contains_key("keyward_pending"));
    let (s, _) = b.get("/auth/me").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let (s, v) = b
        .post(
            "/auth/login/second-factor",
            json!({"recovery_code": recovery_codes[0]}),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("signed_in")),
        "{v}"
    );
    let (s, me) = b.get("/auth/me").await;
    assert_eq!(
        (s, me["email"].as_str()),
        (StatusCode::OK, Some("tia@corp.test"))
    );
}

#[tokio::test]
async fn a_replayed_callback_is_refused() {
    let Some(t) = Setup::start().await else {
        return;
    };
    let mut b = t.browser();
    let callback = t.to_callback(&mut b, "jo").await;
    let binding = b.cookies["keyward_oidc"].clone();
    let (s, _, _) = b.send(Method::GET, &callback, None).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    // The same URL again, even with the binding cookie put back.
    let mut replay = t.browser();
    replay.cookies.insert("keyward_oidc".into(), binding);
    let answer = replay.send(Method::GET, &callback, None).await;
    assert_refused(&answer, StatusCode::BAD_REQUEST, "oidc_sign_in_unknown");
    assert!(!has_session(&replay));
}

#[tokio::test]
async fn a_callback_opened_in_a_browser_without_the_binding_cookie_is_refused() {
    let Some(t) = Setup::start().await else {
        return;
    };
    let mut began = t.browser();
    let callback = t.to_callback(&mut began, "jo").await;
    // The URL alone (leaked from history or a log) signs no one in elsewhere.
    let mut elsewhere = t.browser();
    let answer = elsewhere.send(Method::GET, &callback, None).await;
    assert_refused(&answer, StatusCode::FORBIDDEN, "oidc_browser_mismatch");
    assert!(!has_session(&elsewhere));
    // And it is used up: a sign-in is tried once.
    let answer = began.send(Method::GET, &callback, None).await;
    assert_refused(&answer, StatusCode::BAD_REQUEST, "oidc_sign_in_unknown");
}

#[tokio::test]
async fn an_attackers_callback_pushed_into_a_victims_browser_is_refused() {
    let Some(t) = Setup::start().await else {
        return;
    };
    // Login CSRF: the attacker signs in at the provider as themselves and gets
    // the victim's browser to open the callback, to sign the victim in as them.
    let mut attacker = t.browser();
    let attackers_callback = t.to_callback(&mut attacker, "jo").await;
    let mut victim = t.browser();
    let (s, _, _) = victim.send(Method::GET, "/auth/oidc/start", None).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_ne!(
        victim.cookies["keyward_oidc"],
        attacker.cookies["keyward_oidc"]
    );
    let answer = victim.send(Method::GET, &attackers_callback, None).await;
    assert_refused(&answer, StatusCode::FORBIDDEN, "oidc_browser_mismatch");
    assert!(!has_session(&victim));
    assert_eq!(t.user_id("jo@corp.test").await, None, "no account was made");
}

#[tokio::test]
async fn a_disabled_user_is_refused_though_the_provider_vouches_for_them() {
    let Some(t) = Setup::start().await else {
        return;
    };
    let dan = create_user(&t.kw, "dan@corp.test", "acme", "member").await;
    let r =
        t.kw.http
            .patch(format!("{}/api/v1/users/{dan}", t.kw.url))
            .bearer_auth(&t.kw.admin_key)
            .json(&json!({"disabled": true}))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut b = t.browser();
    let answer = t.sign_in(&mut b, "dan").await;
    assert_refused(&answer, StatusCode::FORBIDDEN, "oidc_account_refused");
    assert!(!has_session(&b));
    let actions = t.actions(&dan).await;
    assert!(
        actions
            .iter()
            .any(|(a, d)| a == "user.sign_in_refused" && d["reason"] == "disabled"),
        "{actions:?}"
    );
    assert!(actions.iter().all(|(a, _)| a != "user.oidc_linked"));
}

#[tokio::test]
async fn a_provider_that_says_no_ends_the_sign_in_without_echoing_its_answer() {
    let Some(t) = Setup::start().await else {
        return;
    };
    let mut b = t.browser();
    let (_, h, _) = b.send(Method::GET, "/auth/oidc/start", None).await;
    let authorize = reqwest::Url::parse(h[LOCATION].to_str().unwrap()).unwrap();
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let answer = b
        .send(
            Method::GET,
            &format!("/auth/oidc/callback?state={state}&error=access_denied"),
            None,
        )
        .await;
    assert_refused(&answer, StatusCode::BAD_REQUEST, "oidc_provider_error");
    assert!(answer.2.to_string().contains("access_denied"));
    assert!(!answer.2.to_string().contains(&state));
}

#[tokio::test]
async fn without_oidc_configured_its_routes_say_so() {
    let upstream = Upstream::start().await;
    let kw = Keyward::start(&upstream.base_url()).await;
    let mut b = Browser::new(&kw);
    for path in ["/auth/oidc/start", "/auth/oidc/callback?state=x&code=y"] {
        let (s, v) = b.get(path).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("oidc_not_configured")),
            "{path}: {v}"
        );
    }
}

#[tokio::test]
async fn a_flood_of_sign_in_starts_from_one_address_is_cut_off() {
    let Some(setup) = Setup::start().await else {
        return;
    };
    let mut b = setup.browser();
    for _ in 0..keyward_gateway::accounts::OIDC_STARTS_PER_MINUTE {
        let (s, _, _) = b.send(reqwest::Method::GET, "/auth/oidc/start", None).await;
        assert_eq!(s, StatusCode::SEE_OTHER);
    }
    let (s, headers, v) = b.send(reqwest::Method::GET, "/auth/oidc/start", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("too_many_attempts")),
        "{v}"
    );
    assert!(headers.contains_key("retry-after"));
}

/// Everything the process logs, from the first test that asks on. Each test
/// runs in its own process under nextest; under `cargo test` other tests'
/// lines are in it too, which only makes the search wider.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        log
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_whole_provider_sign_in_leaves_no_code_state_token_or_secret_in_the_log() {
    let log = captured_log();
    let Some(t) = Setup::start().await else {
        return;
    };
    let mut b = t.browser();
    let callback = t.to_callback(&mut b, "jo").await;
    let mut secrets = vec![SECRET.to_owned(), b.cookies["keyward_oidc"].clone()];
    let back = reqwest::Url::parse(&format!("{}{callback}", t.kw.url)).unwrap();
    for (k, v) in back.query_pairs() {
        if k == "state" || k == "code" {
            secrets.push(v.into_owned());
        }
    }
    assert_eq!(secrets.len(), 4, "state and code in {callback}");
    let (s, _, _) = b.send(Method::GET, &callback, None).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    secrets.extend(b.cookies.values().cloned());
    let (s, _) = b.get("/auth/me").await;
    assert_eq!(s, StatusCode::OK);
    // A refused replay logs nothing of what it carried either.
    let mut replay = t.browser();
    replay.send(Method::GET, &callback, None).await;

    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    assert!(text.lines().count() > 3, "the log was captured: {text}");
    for secret in &secrets {
        assert!(secret.len() >= 16);
        assert!(
            !text.contains(secret.as_str()),
            "the log holds a secret ({} chars): {text}",
            secret.len()
        );
    }
    // ID tokens (and any other JWT) begin with the base64 of `{"`.
    assert!(!text.contains("eyJ"), "the log holds a JWT: {text}");
}
