//! Accounts through the real binary: `keyward users create`, and a whole
//! sign-in life (password, TOTP, recovery code, password change, wrong
//! guesses) whose log must hold none of the secrets that went by.

use crate::support::{keyward, ServeProcess};
use serde_json::{json, Value};

const PASSWORD: &str = "a long enough passphrase 7";

/// One browser's requests: a cookie jar and the server's origin.
struct Client {
    url: String,
    origin: String,
    http: reqwest::Client,
    cookies: Vec<(String, String)>,
    rt: tokio::runtime::Runtime,
}

impl Client {
    fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            origin: url.to_owned(),
            http: reqwest::Client::new(),
            cookies: Vec::new(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    fn post(&mut self, path: &str, body: Value) -> (u16, Value) {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let req = self
            .http
            .post(format!("{}{path}", self.url))
            .header("origin", &self.origin)
            .header("cookie", cookie)
            .json(&body);
        let (status, set, text) = self.rt.block_on(async {
            let r = req.send().await.unwrap();
            let set: Vec<String> = r
                .headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            (r.status().as_u16(), set, r.text().await.unwrap())
        });
        for c in set {
            let pair = c.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            self.cookies.retain(|(name, _)| name != k);
            if !v.is_empty() {
                self.cookies.push((k.to_owned(), v.to_owned()));
            }
        }
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

fn totp_now(secret: &str) -> String {
    let bytes = totp_rs::Secret::Encoded(secret.to_owned())
        .to_bytes()
        .unwrap();
    totp_rs::TOTP::new_unchecked(totp_rs::Algorithm::SHA1, 6, 1, 30, bytes)
        .generate_current()
        .unwrap()
}

fn create_user(server: &ServeProcess, email: &str, password: &str) -> Value {
    let out = keyward()
        .args([
            "users", "create", "--email", email, "--org", "acme", "--role", "owner", "--json",
        ])
        .env("KEYWARD_URL", &server.url)
        .env("KEYWARD_ADMIN_KEY", server.admin_key())
        .env("KEYWARD_PASSWORD", password)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn users_create_prints_the_new_users_id_and_the_user_signs_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &["--public-url", "http://127.0.0.1:9"]);
    let user = create_user(&server, "ada@example.com", PASSWORD);
    assert!(user["id"].as_str().unwrap().starts_with("usr_"));
    assert_eq!(user["role"], "owner");
    // A weak password is refused with its code, and no user is made.
    let out = keyward()
        .args([
            "users",
            "create",
            "--email",
            "bob@example.com",
            "--org",
            "acme",
            "--role",
            "viewer",
            "--json",
        ])
        .env("KEYWARD_URL", &server.url)
        .env("KEYWARD_ADMIN_KEY", server.admin_key())
        .env("KEYWARD_PASSWORD", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 15 characters"), "{err}");
    let mut c = Client::new(&server.url);
    // The browser is on the public URL's origin, which the server trusts.
    c.origin = "http://127.0.0.1:9".into();
    let (s, v) = c.post(
        "/auth/login",
        json!({"email": "ada@example.com", "password": PASSWORD}),
    );
    assert_eq!((s, v["status"].as_str()), (200, Some("signed_in")), "{v}");
    assert!(c
        .cookies
        .iter()
        .any(|(k, _)| k.ends_with("keyward_session")));
}

#[test]
fn a_whole_sign_in_life_leaves_no_secret_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start_logging(dir.path(), &[], "debug");
    create_user(&server, "ada@example.com", PASSWORD);
    let mut secrets: Vec<String> = vec![PASSWORD.into()];
    let mut c = Client::new(&server.url);
    let wrong = "a wrong guess of a passphrase";
    secrets.push(wrong.into());
    assert_eq!(
        c.post(
            "/auth/login",
            json!({"email": "ada@example.com", "password": wrong})
        )
        .0,
        401
    );
    assert_eq!(
        c.post(
            "/auth/login",
            json!({"email": "ada@example.com", "password": PASSWORD})
        )
        .0,
        200
    );
    let (_, totp) = c.post("/auth/totp", json!({}));
    let secret = totp["secret"].as_str().unwrap().to_owned();
    secrets.push(secret.clone());
    let (s, codes) = c.post("/auth/totp/confirm", json!({"code": totp_now(&secret)}));
    assert_eq!(s, 200, "{codes}");
    let codes: Vec<String> = codes["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    secrets.extend(codes.iter().cloned());
    secrets.extend(c.cookies.iter().map(|(_, v)| v.clone()));
    c.post("/auth/logout", json!({}));
    // Sign in again with a recovery code, then change the password.
    let mut d = Client::new(&server.url);
    let (_, v) = d.post(
        "/auth/login",
        json!({"email": "ada@example.com", "password": PASSWORD}),
    );
    assert_eq!(v["status"], "second_factor_required");
    secrets.extend(d.cookies.iter().map(|(_, v)| v.clone()));
    assert_eq!(
        d.post(
            "/auth/login/second-factor",
            json!({"recovery_code": codes[0]})
        )
        .0,
        200
    );
    secrets.extend(d.cookies.iter().map(|(_, v)| v.clone()));
    let new = "the next long passphrase 8";
    secrets.push(new.into());
    let (s, v) = d.post(
        "/auth/password",
        json!({"current_password": PASSWORD, "new_password": new}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        d.post("/auth/reauthenticate", json!({"totp": "000000"})).0,
        401
    );
    let log = server.log.lock().unwrap().join("\n");
    assert!(
        log.contains("DEBUG") || log.contains("debug") || log.lines().count() > 3,
        "the log was captured"
    );
    for s in &secrets {
        assert!(s.len() >= 8);
        assert!(
            !log.contains(s.as_str()),
            "the log holds a secret ({} chars): {log}",
            s.len()
        );
    }
}

#[test]
fn serve_refuses_oidc_settings_that_cannot_work_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |extra: &[&str]| {
        let out = keyward()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--upstream",
                "simulated",
                "--data-dir",
            ])
            .arg(dir.path())
            .args(extra)
            .env_remove("KEYWARD_CONFIG")
            .env_remove("KEYWARD_TEST_OIDC_SECRET_NEVER_SET")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let issuer = ["--oidc-issuer", "https://accounts.google.com"];
    let err = serve(&issuer);
    assert!(
        err.contains("--oidc-client-id") && err.contains("--oidc-client-secret-env"),
        "{err}"
    );
    let all = [
        &issuer[..],
        &["--oidc-client-id", "keyward"],
        &[
            "--oidc-client-secret-env",
            "KEYWARD_TEST_OIDC_SECRET_NEVER_SET",
        ],
    ]
    .concat();
    let err = serve(&all);
    assert!(err.contains("--public-url"), "{err}");
    let err = serve(&[&all[..], &["--public-url", "https://keys.example.com"]].concat());
    assert!(err.contains("KEYWARD_TEST_OIDC_SECRET_NEVER_SET"), "{err}");
    let err = serve(&["--oidc-allowed-domains", "example.com"]);
    assert!(err.contains("--oidc-issuer"), "{err}");
    assert!(
        !dir.path().join("initial-admin-key").exists(),
        "refused before the first admin key was written"
    );
}
