//! Starts the real OpenID provider (`oidc-provider` on node, configured by
//! tests/oidc-provider/provider.mjs) on 127.0.0.1, and plays the browser against it.
//! keyward-gateway's tests include this file too (`#[path]`), so that both crates
//! run against the same provider set up the same way.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The redirect URI registered for the test clients. Nothing listens there: the
/// test's browser stops at the redirect and hands `state` and `code` to keyward.
pub const REDIRECT_URL: &str = "http://127.0.0.1:9/auth/oidc/callback";

/// A running provider; killed when dropped.
pub struct TestProvider {
    child: Child,
    /// The provider's issuer URL, as it printed it.
    pub issuer: String,
}

impl Drop for TestProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/oidc-provider")
}

/// Starts the provider with `config` (clients and accounts, see provider.mjs), or
/// returns None after printing one line when node or the npm packages are missing.
/// Under CI=true a missing tool is a failure, not a skip.
pub fn start(config: &serde_json::Value) -> Option<TestProvider> {
    let node = std::env::var("KEYWARD_TEST_NODE").unwrap_or_else(|_| "node".into());
    let dir = provider_dir();
    let node_ok = Command::new(&node)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let missing = if !node_ok {
        Some(format!("`{node}` not found"))
    } else if !dir.join("node_modules/oidc-provider").is_dir() {
        Some(
            "tests/oidc-provider/node_modules missing (run `npm ci --prefix tests/oidc-provider`)"
                .into(),
        )
    } else {
        None
    };
    if let Some(why) = missing {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("OIDC provider test cannot run under CI: {why}");
        }
        println!("skipping OIDC test against a real provider: {why}");
        return None;
    }

    let mut child = Command::new(&node)
        .arg("provider.mjs")
        .current_dir(&dir)
        .env("OIDC_PROVIDER_PORT", "0")
        .env("OIDC_PROVIDER_CONFIG", config.to_string())
        .stdin(Stdio::piped()) // closed when the test ends: the provider exits
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node provider.mjs");
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    stdout
        .read_line(&mut line)
        .expect("read the provider's first line");
    // Keep reading what it prints later (notices): a closed pipe would kill it.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let issuer = line.trim().to_owned();
    if !issuer.starts_with("http://127.0.0.1:") {
        let _ = child.kill();
        let mut err = String::new();
        let _ = child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err);
        panic!("the OIDC provider did not start: {err}");
    }
    // The provider's errors would explain a failing test; its start-up warnings
    // (in-memory adapter, node version) are expected and left out.
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !line.starts_with("oidc-provider WARNING") {
                eprintln!("oidc-provider: {line}");
            }
        }
    });
    Some(TestProvider { child, issuer })
}

/// Plays the browser: follows the provider's redirects (login and consent are
/// granted by provider.mjs for the account named by `login_hint`), keeping its
/// cookies, until the provider redirects to [`REDIRECT_URL`]. Returns that
/// redirect's `state` and `code`.
pub async fn sign_in_at_provider(authorize_url: &str, login_hint: &str) -> (String, String) {
    let next = browse_to_redirect(authorize_url, login_hint, REDIRECT_URL).await;
    let param = |name: &str| {
        next.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no {name} in the callback: {next}"))
    };
    (param("state"), param("code"))
}

/// Plays the browser through the provider as [`sign_in_at_provider`] does, until
/// the provider redirects to a URL starting with `redirect_url` (a relying
/// party's registered callback); returns that whole URL, query and all, for the
/// caller to deliver (or tamper with).
pub async fn browse_to_redirect(
    authorize_url: &str,
    login_hint: &str,
    redirect_url: &str,
) -> reqwest::Url {
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("browser client");
    let mut url = reqwest::Url::parse(authorize_url).expect("authorize url");
    url.query_pairs_mut().append_pair("login_hint", login_hint);
    for _ in 0..20 {
        let response = browser
            .get(url.clone())
            .send()
            .await
            .expect("provider request");
        let status = response.status();
        if !status.is_redirection() {
            let body = response.text().await.unwrap_or_default();
            panic!("the provider answered {status} at {url}: {body}");
        }
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .expect("redirect without Location")
            .to_str()
            .expect("Location is ASCII");
        let next = url.join(location).expect("Location is a URL");
        if next.as_str().starts_with(redirect_url) {
            return next;
        }
        url = next;
    }
    panic!("the provider never redirected back to the relying party");
}
