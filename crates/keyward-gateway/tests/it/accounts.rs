//! Accounts through the real server: sign-in, second factors, sessions, the
//! cross-site check, throttling and lockout. Each test is named after what an
//! attacker tries, or what a user must be able to count on.

use crate::support::{Keyward, Upstream};
use keyward_core::Clock;
use reqwest::header::{HeaderMap, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const PASSWORD: &str = "correct horse battery staple 42";
const START_MS: i64 = 1_800_000_000_000;

/// A browser for one person: its own cookie jar, and `Origin` set to the
/// server's on every request, as a same-origin page's fetches carry it.
pub struct Browser {
    pub url: String,
    pub http: reqwest::Client,
    pub cookies: BTreeMap<String, String>,
    pub origin: Option<String>,
}

impl Browser {
    pub fn new(kw: &Keyward) -> Self {
        Self {
            url: kw.url.clone(),
            http: reqwest::Client::new(),
            cookies: BTreeMap::new(),
            origin: Some(kw.url.clone()),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn remember(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            let text = v.to_str().unwrap();
            let (pair, attrs) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") || value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    pub async fn send(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if !self.cookies.is_empty() {
            req = req.header("cookie", self.cookie_header());
        }
        if let Some(o) = &self.origin {
            req = req.header("origin", o);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        self.remember(&headers);
        let text = r.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, value)
    }

    pub async fn post(&mut self, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, _, v) = self.send(reqwest::Method::POST, path, Some(body)).await;
        (s, v)
    }

    pub async fn get(&mut self, path: &str) -> (StatusCode, Value) {
        let (s, _, v) = self.send(reqwest::Method::GET, path, None).await;
        (s, v)
    }

    pub async fn delete(&mut self, path: &str) -> (StatusCode, Value) {
        let (s, _, v) = self.send(reqwest::Method::DELETE, path, None).await;
        (s, v)
    }

    /// Signs in with a password; panics unless the answer is `signed_in`.
    pub async fn sign_in(&mut self, email: &str, password: &str) {
        let (s, v) = self
            .post("/auth/login", json!({"email": email, "password": password}))
            .await;
        assert_eq!(
            (s, v["status"].as_str()),
            (StatusCode::OK, Some("signed_in")),
            "{v}"
        );
    }
}

/// Creates a user through the management API (bootstrap key); returns its id.
pub async fn create_user(kw: &Keyward, email: &str, org: &str, role: &str) -> String {
    let r = kw
        .admin_post(
            "/api/v1/users",
            json!({"email": email, "org": org, "role": role, "password": PASSWORD}),
        )
        .await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

pub async fn server_at(clock: Clock) -> (Upstream, Keyward) {
    let upstream = Upstream::start().await;
    let kw = Keyward::start_full(&upstream.base_url(), |_| {}, clock, "127.0.0.1:0").await;
    (upstream, kw)
}

/// The TOTP code of `secret` (base32) at `ms`, computed independently of
/// keyward with the `totp-rs` crate.
pub fn totp_code(secret: &str, ms: i64) -> String {
    let bytes = totp_rs::Secret::Encoded(secret.to_owned())
        .to_bytes()
        .unwrap();
    let totp = totp_rs::TOTP::new_unchecked(totp_rs::Algorithm::SHA1, 6, 1, 30, bytes);
    totp.generate((ms / 1_000) as u64)
}

/// Enrols TOTP for a signed-in browser; returns (secret, recovery codes).
pub async fn enrol_totp(b: &mut Browser, clock: &Clock) -> (String, Vec<String>) {
    let (s, v) = b.post("/auth/totp", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let secret = v["secret"].as_str().unwrap().to_owned();
    assert!(v["otpauth_uri"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/"));
    let code = totp_code(&secret, clock.now_ms());
    let (s, v) = b.post("/auth/totp/confirm", json!({"code": code})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let codes: Vec<String> = v["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    (secret, codes)
}

#[tokio::test]
async fn a_password_sign_in_sets_an_httponly_lax_session_cookie_and_me_says_who() {
    let (_up, kw) = server_at(Clock::system()).await;
    let id = create_user(&kw, "Ada@Example.com", "acme", "admin").await;
    let mut b = Browser::new(&kw);
    let (s, headers, v) = b
        .send(
            reqwest::Method::POST,
            "/auth/login",
            Some(json!({"email": "ada@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("signed_in"))
    );
    let cookie = headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("keyward_session="))
        .expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Path=/")
    );
    assert!(
        !cookie.contains("Secure"),
        "plain http to loopback: no Secure"
    );
    let secret = b.cookies["keyward_session"].clone();
    assert_eq!(secret.len(), 64, "256 bits as hex");
    let (s, me) = b.get("/auth/me").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["id"], id);
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["org"], "acme");
    assert_eq!(me["role"], "admin");
    assert_eq!(me["second_factors"], json!([]));
    // The secret is stored only as its digest.
    assert!(kw
        .state
        .store
        .session_by_token_hash(&secret)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn the_session_cookie_is_host_prefixed_and_secure_behind_an_https_public_url() {
    let upstream = Upstream::start().await;
    let kw = Keyward::start_with(&upstream.base_url(), |c| {
        c.accounts.public_url = Some("https://keys.example.com".parse().unwrap());
    })
    .await;
    create_user(&kw, "ada@example.com", "acme", "admin").await;
    let mut b = Browser::new(&kw);
    b.origin = Some("https://keys.example.com".into());
    let (_, headers, _) = b
        .send(
            reqwest::Method::POST,
            "/auth/login",
            Some(json!({"email": "ada@example.com", "password": PASSWORD})),
        )
        .await;
    let cookie = headers.get(SET_COOKIE).unwrap().to_str().unwrap();
    assert!(cookie.starts_with("__Host-keyward_session="), "{cookie}");
    assert!(cookie.contains("; Secure") && cookie.contains("Path=/") && !cookie.contains("Domain"));
}

#[tokio::test]
async fn an_unknown_email_and_a_wrong_password_get_the_same_answer() {
    let (_up, kw) = server_at(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut b = Browser::new(&kw);
    let wrong = b
        .post(
            "/auth/login",
            json!({"email": "ada@example.com", "password": "not the password at all"}),
        )
        .await;
    let unknown = b
        .post(
            "/auth/login",
            json!({"email": "nobody@example.com", "password": "not the password at all"}),
        )
        .await;
    assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong, unknown);
    assert_eq!(wrong.1["error"]["code"], "invalid_credentials");
    assert!(b.cookies.is_empty());
}

#[tokio::test]
async fn an_ended_session_is_refused_on_its_very_next_request() {
    let (_up, kw) = server_at(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut laptop = Browser::new(&kw);
    let mut phone = Browser::new(&kw);
    laptop.sign_in("ada@example.com", PASSWORD).await;
    phone.sign_in("ada@example.com", PASSWORD).await;
    assert_eq!(phone.get("/auth/me").await.0, StatusCode::OK, "cached now");
    let (_, list) = laptop.get("/auth/sessions").await;
    let sessions = list["data"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let other = sessions.iter().find(|s| s["current"] == false).unwrap();
    assert!(other["ip"].as_str().unwrap().starts_with("127.0.0.1"));
    let (s, _) = laptop
        .delete(&format!("/auth/sessions/{}", other["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(phone.get("/auth/me").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(laptop.get("/auth/me").await.0, StatusCode::OK);
}

#[tokio::test]
async fn another_users_session_cannot_be_ended_by_its_id() {
    let (_up, kw) = server_at(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "owner").await;
    create_user(&kw, "bob@example.com", "acme", "member").await;
    let mut ada = Browser::new(&kw);
    let mut bob = Browser::new(&kw);
    ada.sign_in("ada@example.com", PASSWORD).await;
    bob.sign_in("bob@example.com", PASSWORD).await;
    let (_, list) = bob.get("/auth/sessions").await;
    let bobs = list["data"][0]["id"].as_str().unwrap().to_owned();
    let (s, v) = ada.delete(&format!("/auth/sessions/{bobs}")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    assert_eq!(bob.get("/auth/me").await.0, StatusCode::OK);
}

#[tokio::test]
async fn log_out_everywhere_refuses_every_session_including_this_one() {
    let (_up, kw) = server_at(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut browsers = Vec::new();
    for _ in 0..3 {
        let mut b = Browser::new(&kw);
        b.sign_in("ada@example.com", PASSWORD).await;
        assert_eq!(b.get("/auth/me").await.0, StatusCode::OK);
        browsers.push(b);
    }
    let (s, v) = browsers[0].post("/auth/sessions/end-all", json!({})).await;
    assert_eq!((s, v["ended"].as_u64()), (StatusCode::OK, Some(3)));
    for b in &mut browsers {
        assert_eq!(b.get("/auth/me").await.0, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn a_password_change_ends_every_other_session_and_the_old_password_stops() {
    let (_up, kw) = server_at(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut here = Browser::new(&kw);
    let mut stolen = Browser::new(&kw);
    here.sign_in("ada@example.com", PASSWORD).await;
    stolen.sign_in("ada@example.com", PASSWORD).await;
    assert_eq!(stolen.get("/auth/me").await.0, StatusCode::OK);
    let new = "a different long passphrase 2026";
    let (s, v) = here
        .post(
            "/auth/password",
            json!({"current_password": "wrong wrong wrong wrong", "new_password": new}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_credentials"))
    );
    let (s, v) = here
        .post(
            "/auth/password",
            json!({"current_password": PASSWORD, "new_password": new}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["sessions_ended"], 1);
    assert_eq!(stolen.get("/auth/me").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(here.get("/auth/me").await.0, StatusCode::OK);
    let (s, _) = Browser::new(&kw)
        .post(
            "/auth/login",
            json!({"email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    Browser::new(&kw).sign_in("ada@example.com", new).await;
}

#[tokio::test]
async fn weak_new_passwords_are_refused_with_the_stable_codes() {
    let (_up, kw) = server_at(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut b = Browser::new(&kw);
    b.sign_in("ada@example.com", PASSWORD).await;
    let long = "x".repeat(5_000);
    for (new, code) in [
        ("short but ok?", "password_too_short"),
        (long.as_str(), "password_too_long"),
        ("ada@example.com", "password_blocklisted"),
        ("keyward-keyward", "password_blocklisted"),
    ] {
        let (s, v) = b
            .post(
                "/auth/password",
                json!({"current_password": PASSWORD, "new_password": new}),
            )
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{new:.20}"
        );
        assert!(
            !v.to_string().contains(&new[..new.len().min(40)]) || new.len() < 16,
            "the refusal does not echo the password"
        );
    }
    // A user created with a short password is refused the same way.
    let r = kw
        .admin_post("/api/v1/users", json!({"email": "bob@example.com", "org": "acme", "role": "viewer", "password": "short"}))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "password_too_short");
}

#[tokio::test]
async fn enrolling_totp_needs_a_recent_sign_in_and_ends_every_other_session() {
    let clock = Clock::manual(START_MS);
    let (_up, kw) = server_at(clock.clone()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut here = Browser::new(&kw);
    let mut other = Browser::new(&kw);
    here.sign_in("ada@example.com", PASSWORD).await;
    other.sign_in("ada@example.com", PASSWORD).await;
    clock.advance(11 * 60_000);
    let (s, v) = here.post("/auth/totp", json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("reauthentication_required"))
    );
    let (s, _) = here
        .post(
            "/auth/reauthenticate",
            json!({"password": "nope nope nope nope"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = here
        .post("/auth/reauthenticate", json!({"password": PASSWORD}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (secret, _) = enrol_totp(&mut here, &clock).await;
    assert_eq!(secret.len(), 32, "160 bits in base32");
    assert_eq!(
        other.get("/auth/me").await.0,
        StatusCode::UNAUTHORIZED,
        "MFA change ends other sessions"
    );
    let (s, me) = here.get("/auth/me").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["second_factors"], json!(["totp"]));
}

#[tokio::test]
async fn a_totp_code_is_never_accepted_twice() {
    let clock = Clock::manual(START_MS);
    let (_up, kw) = server_at(clock.clone()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut b = Browser::new(&kw);
    b.sign_in("ada@example.com", PASSWORD).await;
    let (secret, _) = enrol_totp(&mut b, &clock).await;
    clock.advance(30_000);
    let code = totp_code(&secret, clock.now_ms());
    let mut first = Browser::new(&kw);
    let (s, v) = first
        .post(
            "/auth/login",
            json!({"email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("second_factor_required"))
    );
    assert!(v["methods"].as_array().unwrap().contains(&json!("totp")));
    assert_eq!(
        first.get("/auth/me").await.0,
        StatusCode::UNAUTHORIZED,
        "a pending sign-in is no session"
    );
    let (s, v) = first
        .post("/auth/login/second-factor", json!({"totp": code}))
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("signed_in")),
        "{v}"
    );
    assert_eq!(first.get("/auth/me").await.0, StatusCode::OK);
    // An attacker who watched the code being typed replays it at once.
    let mut replay = Browser::new(&kw);
    replay
        .post(
            "/auth/login",
            json!({"email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
    let (s, v) = replay
        .post("/auth/login/second-factor", json!({"totp": code}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_credentials"))
    );
    assert_eq!(replay.get("/auth/me").await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_recovery_code_signs_in_once() {
    let clock = Clock::manual(START_MS);
    let (_up, kw) = server_at(clock.clone()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut b = Browser::new(&kw);
    b.sign_in("ada@example.com", PASSWORD).await;
    let (_, codes) = enrol_totp(&mut b, &clock).await;
    for expected in [StatusCode::OK, StatusCode::UNAUTHORIZED] {
        let mut c = Browser::new(&kw);
        c.post(
            "/auth/login",
            json!({"email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
        let (s, _) = c
            .post(
                "/auth/login/second-factor",
                json!({"recovery_code": codes[0]}),
            )
            .await;
        assert_eq!(s, expected);
    }
    let mut c = Browser::new(&kw);
    c.post(
        "/auth/login",
        json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await;
    let (s, _) = c
        .post(
            "/auth/login/second-factor",
            json!({"recovery_code": codes[1].to_uppercase()}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "another code still works, typed in capitals"
    );
}

#[tokio::test]
async fn a_state_changing_request_from_another_site_is_refused() {
    let (_up, kw) = server_at(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "owner").await;
    let mut b = Browser::new(&kw);
    b.sign_in("ada@example.com", PASSWORD).await;
    b.origin = Some("https://evil.example".into());
    let (s, v) = b.post("/auth/sessions/end-others", json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("cross_site_request"))
    );
    let (s, _) = b
        .post(
            "/api/v1/keys",
            json!({"project": "app", "name": "k", "create_project": true}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    b.origin = None;
    let (s, _) = b.post("/auth/sessions/end-others", json!({})).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "no Origin and no Sec-Fetch-Site: refused"
    );
    assert_eq!(
        b.get("/auth/me").await.0,
        StatusCode::OK,
        "reads need no Origin"
    );
    let (s, _, _) = {
        let r = b
            .http
            .post(format!("{}/auth/sessions/end-others", kw.url))
            .header("cookie", b.cookie_header())
            .header("sec-fetch-site", "same-origin")
            .send()
            .await
            .unwrap();
        (r.status(), (), ())
    };
    assert_eq!(s, StatusCode::OK);
    // Login CSRF: a form on another site cannot sign the victim in.
    let mut victim = Browser::new(&kw);
    victim.origin = Some("https://evil.example".into());
    let (s, _) = victim
        .post(
            "/auth/login",
            json!({"email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn auth_and_api_answers_carry_strict_headers_and_are_never_cached() {
    let (_up, kw) = server_at(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "owner").await;
    let mut b = Browser::new(&kw);
    b.sign_in("ada@example.com", PASSWORD).await;
    for path in [
        "/auth/me",
        "/auth/sessions",
        "/api/v1/keys",
        "/api/v1/nothing-here",
    ] {
        let (_, h, _) = b.send(reqwest::Method::GET, path, None).await;
        assert_eq!(h["cache-control"], "no-store", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'"));
    }
}

#[tokio::test]
async fn password_guessing_is_slowed_then_locked_and_an_admin_unlocks() {
    let clock = Clock::manual(START_MS);
    let (_up, kw) = server_at(clock.clone()).await;
    let id = create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut attacker = Browser::new(&kw);
    let mut throttled = false;
    for i in 0..100 {
        let (s, headers, _) = attacker
            .send(reqwest::Method::POST, "/auth/login", Some(json!({"email": "ada@example.com", "password": format!("guess number {i:04} xx")})))
            .await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            throttled = true;
            let wait: i64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(wait >= 1);
            clock.advance(wait * 1_000);
            let (s, _, _) = attacker
                .send(reqwest::Method::POST, "/auth/login", Some(json!({"email": "ada@example.com", "password": format!("guess number {i:04} xx")})))
                .await;
            assert_eq!(s, StatusCode::UNAUTHORIZED);
        } else {
            assert_eq!(s, StatusCode::UNAUTHORIZED);
        }
    }
    assert!(throttled, "growing delays kicked in before 100 guesses");
    let user = kw
        .state
        .store
        .user_by_email("ada@example.com")
        .await
        .unwrap()
        .unwrap();
    assert!(
        user.locked_at.is_some(),
        "locked after 100 consecutive failures"
    );
    clock.advance(24 * 3_600_000);
    // The right password on a locked account: the same answer as a wrong one.
    let (s, v) = Browser::new(&kw)
        .post(
            "/auth/login",
            json!({"email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_credentials"))
    );
    let r = kw
        .http
        .patch(format!("{}/api/v1/users/{id}", kw.url))
        .bearer_auth(&kw.admin_key)
        .json(&json!({"unlock": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    Browser::new(&kw).sign_in("ada@example.com", PASSWORD).await;
}

#[tokio::test]
async fn a_sign_in_from_a_new_device_is_flagged_once_and_a_known_one_never() {
    let (_up, kw) = server_at(Clock::system()).await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut laptop = Browser::new(&kw);
    laptop.sign_in("ada@example.com", PASSWORD).await;
    laptop.sign_in("ada@example.com", PASSWORD).await;
    let count = |events: &[keyward_store::AuditEvent], action: &str| {
        events.iter().filter(|e| e.action == action).count()
    };
    let events = kw.state.store.list_audit(None, 100).await.unwrap();
    assert_eq!(
        count(&events, "user.new_device"),
        0,
        "the first device, then the same one"
    );
    // Another browser: no device cookie, another user agent.
    let mut other = Browser::new(&kw);
    other.http = reqwest::Client::builder()
        .user_agent("Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0")
        .build()
        .unwrap();
    other.sign_in("ada@example.com", PASSWORD).await;
    other.sign_in("ada@example.com", PASSWORD).await;
    let events = kw.state.store.list_audit(None, 100).await.unwrap();
    assert_eq!(count(&events, "user.new_device"), 1);
    assert_eq!(count(&events, "user.signed_in"), 4);
}

/// A server that emails through a test SMTP server; returns the mails' text.
async fn server_with_mail() -> (
    Upstream,
    Keyward,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use keyward_gateway::notify::email::{SmtpSecurity, SmtpSettings};
    let (port, mail) = crate::notify::smtp_server().await;
    let upstream = Upstream::start().await;
    let kw = Keyward::start_with(&upstream.base_url(), |c| {
        c.leaks.notify.smtp = Some(SmtpSettings {
            host: "127.0.0.1".into(),
            port,
            security: SmtpSecurity::None,
            sender: "keyward <keyward@example.com>".into(),
            credentials: None,
        });
    })
    .await;
    (upstream, kw, mail)
}

/// The link's secret in a mail (the 64 hex digits after `token=`).
fn token_in(mail: &str) -> String {
    let text = mail.replace("=\n", "").replace("=3D", "=");
    let at = text.find("#token=").expect("a link in the mail") + "#token=".len();
    text[at..at + 64].to_owned()
}

async fn next_mail(mail: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    mail.recv().await.expect("a mail")
}

#[tokio::test]
async fn a_reset_request_says_the_same_for_any_address_and_its_link_works_once() {
    let (_up, kw, mut mail) = server_with_mail().await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut signed_in = Browser::new(&kw);
    signed_in.sign_in("ada@example.com", PASSWORD).await;
    let mut anyone = Browser::new(&kw);
    let known = anyone
        .post("/auth/password-reset", json!({"email": "ada@example.com"}))
        .await;
    let unknown = anyone
        .post("/auth/password-reset", json!({"email": "who@example.com"}))
        .await;
    assert_eq!(known.0, StatusCode::ACCEPTED);
    assert_eq!(
        known, unknown,
        "the answer does not tell whether an account exists"
    );
    let text = next_mail(&mut mail).await;
    assert!(text.contains("ada@example.com"));
    let token = token_in(&text);
    let new = "a brand new long passphrase";
    let (s, v) = anyone
        .post(
            "/auth/password-reset/confirm",
            json!({"token": token, "new_password": new}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        signed_in.get("/auth/me").await.0,
        StatusCode::UNAUTHORIZED,
        "a reset ends every session"
    );
    let (s, _) = anyone
        .post(
            "/auth/password-reset/confirm",
            json!({"token": token, "new_password": "yet another long passphrase"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "the link works once");
    Browser::new(&kw).sign_in("ada@example.com", new).await;
    assert!(mail.try_recv().is_err(), "no mail for an unknown address");
}

#[tokio::test]
async fn after_a_reset_the_second_factor_is_still_asked() {
    let (_up, kw, mut mail) = server_with_mail().await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut b = Browser::new(&kw);
    b.sign_in("ada@example.com", PASSWORD).await;
    enrol_totp(&mut b, &Clock::system()).await;
    Browser::new(&kw)
        .post("/auth/password-reset", json!({"email": "ada@example.com"}))
        .await;
    let token = token_in(&next_mail(&mut mail).await);
    let new = "a brand new long passphrase";
    let (s, _) = Browser::new(&kw)
        .post(
            "/auth/password-reset/confirm",
            json!({"token": token, "new_password": new}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = Browser::new(&kw)
        .post(
            "/auth/login",
            json!({"email": "ada@example.com", "password": new}),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("second_factor_required"))
    );
}

#[tokio::test]
async fn an_invitation_link_makes_one_account_in_the_inviters_organization() {
    let (_up, kw, mut mail) = server_with_mail().await;
    create_user(&kw, "owner@example.com", "acme", "owner").await;
    let mut owner = Browser::new(&kw);
    owner.sign_in("owner@example.com", PASSWORD).await;
    let (s, v) = owner
        .post(
            "/api/v1/invitations",
            json!({"email": "New@Example.com", "role": "member"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let token = token_in(&next_mail(&mut mail).await);
    assert!(v["invitation_url"].as_str().unwrap().ends_with(&token));
    let mut invitee = Browser::new(&kw);
    let (s, v) = invitee
        .post(
            "/auth/invitations/accept",
            json!({"token": token, "password": "short"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("password_too_short"))
    );
    let (s, _) = invitee
        .post(
            "/auth/invitations/accept",
            json!({"token": token, "password": PASSWORD}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, me) = invitee.get("/auth/me").await;
    assert_eq!(
        (
            me["email"].as_str(),
            me["role"].as_str(),
            me["org"].as_str()
        ),
        (Some("new@example.com"), Some("member"), Some("acme"))
    );
    let (s, _) = Browser::new(&kw)
        .post(
            "/auth/invitations/accept",
            json!({"token": token, "password": PASSWORD}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "single use");
    let mut viewer_b = Browser::new(&kw);
    create_user(&kw, "viewer@example.com", "acme", "viewer").await;
    viewer_b.sign_in("viewer@example.com", PASSWORD).await;
    let (s, _) = viewer_b
        .post(
            "/api/v1/invitations",
            json!({"email": "x@example.com", "role": "owner"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "only owners invite");
}

#[tokio::test]
async fn this_wasnt_me_ends_every_session_and_asks_for_a_new_password() {
    let (_up, kw, mut mail) = server_with_mail().await;
    create_user(&kw, "ada@example.com", "acme", "member").await;
    let mut ada = Browser::new(&kw);
    ada.sign_in("ada@example.com", PASSWORD).await;
    let mut thief = Browser::new(&kw);
    thief.http = reqwest::Client::builder()
        .user_agent("curl/8.0")
        .build()
        .unwrap();
    thief.sign_in("ada@example.com", PASSWORD).await;
    let text = next_mail(&mut mail).await;
    assert!(text.contains("new device"), "{text}");
    let token = token_in(&text);
    let (s, v) = Browser::new(&kw)
        .post("/auth/not-me", json!({"token": token}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(thief.get("/auth/me").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(ada.get("/auth/me").await.0, StatusCode::UNAUTHORIZED);
    let (s, _) = Browser::new(&kw)
        .post(
            "/auth/login",
            json!({"email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a reset is required first");
}
