//! Browsers on other origins (issue 17, item 11): preflights, the origin check on
//! the request that follows, and a real page in headless Chromium.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const PAGE: &str = "http://127.0.0.1:5173";
const OTHER: &str = "https://evil.example";

fn chat_body() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

async fn preflight(kw: &Keyward, origin: &str) -> reqwest::Response {
    kw.http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", kw.url),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap()
}

async fn chat_from(kw: &Keyward, key: &str, origin: &str) -> reqwest::Response {
    kw.http
        .post(format!("{}/v1/chat/completions", kw.url))
        .bearer_auth(key)
        .header("origin", origin)
        .json(&chat_body())
        .send()
        .await
        .unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn preflight_is_answered_only_for_an_origin_a_key_lists() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;

    // No key lists any origin yet: refused, with nothing a browser could use.
    let r = preflight(&kw, PAGE).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&r, "access-control-allow-origin"), None);

    kw.create_key_with(json!({"policy": {"origins": ["HTTP://127.0.0.1:5173/"]}}))
        .await;
    let r = preflight(&kw, PAGE).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(PAGE));
    assert_eq!(header(&r, "access-control-allow-methods"), Some("POST"));
    assert_eq!(
        header(&r, "access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(header(&r, "vary"), Some("Origin"));
    assert_eq!(header(&r, "access-control-allow-credentials"), None);

    // Another origin still gets nothing, and never `*`.
    let r = preflight(&kw, OTHER).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    assert!(
        up.seen().is_empty(),
        "a preflight never reaches the upstream"
    );
}

#[tokio::test]
async fn page_of_an_unlisted_origin_cannot_spend_a_key() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let listed = kw
        .create_key_with(json!({"policy": {"origins": [PAGE]}}))
        .await;
    let listed = listed["key"].as_str().unwrap();
    let (_, plain) = kw.create_key("app", "server-side").await;

    // The listed origin: answered, and readable by the page.
    let r = chat_from(&kw, listed, PAGE).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(PAGE));
    assert!(header(&r, "access-control-expose-headers")
        .unwrap()
        .contains("x-request-id"));

    // Another origin with a key that lists a different one: refused before the upstream.
    let r = chat_from(&kw, listed, OTHER).await;
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    assert_openai_error(r, 403, Some("origin_not_allowed")).await;
    // A key that lists no origin cannot be used from any page, even from an
    // origin another key lists.
    let r = chat_from(&kw, &plain, PAGE).await;
    assert_openai_error(r, 403, Some("origin_not_allowed")).await;
    assert_eq!(up.seen().len(), 1, "only the allowed request was forwarded");

    // Clients that send no Origin (servers, SDKs) are unaffected.
    assert_eq!(kw.chat(&plain, chat_body()).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn token_cannot_widen_its_parents_origins() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let parent = kw
        .create_key_with(json!({"policy": {"origins": [PAGE, "https://app.example.com"]}}))
        .await;
    let id = parent["id"].as_str().unwrap();

    let r = kw
        .admin_post(
            &format!("/api/v1/keys/{id}/ephemeral"),
            json!({"policy": {"origins": [OTHER]}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A token with no list of its own has its parent's.
    let r = kw
        .admin_post(&format!("/api/v1/keys/{id}/ephemeral"), json!({}))
        .await;
    let inherits: Value = r.json().await.unwrap();
    let inherits = inherits["key"].as_str().unwrap();
    assert_eq!(
        chat_from(&kw, inherits, PAGE).await.status(),
        StatusCode::OK
    );

    // A narrowed token is refused from the parent's other origin.
    let r = kw
        .admin_post(
            &format!("/api/v1/keys/{id}/ephemeral"),
            json!({"policy": {"origins": ["https://app.example.com"]}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let narrowed: Value = r.json().await.unwrap();
    let narrowed = narrowed["key"].as_str().unwrap();
    let r = chat_from(&kw, narrowed, PAGE).await;
    assert_openai_error(r, 403, Some("origin_not_allowed")).await;
    let r = chat_from(&kw, narrowed, "https://app.example.com").await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn wildcard_origin_is_refused_when_the_key_is_created() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    for bad in [
        "*",
        "https://*.example.com",
        "https://app.example.com/path",
        "null",
    ] {
        let r = kw
            .admin_post(
                "/api/v1/keys",
                json!({"project": "app", "name": "k", "create_project": true,
                       "policy": {"origins": [bad]}}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = preflight(&kw, "null").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn revoking_the_key_stops_its_origin_preflights_at_once() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let key = kw
        .create_key_with(json!({"policy": {"origins": [PAGE]}}))
        .await;
    assert_eq!(preflight(&kw, PAGE).await.status(), StatusCode::NO_CONTENT);
    let id = key["id"].as_str().unwrap();
    let r = kw
        .admin_post(&format!("/api/v1/keys/{id}/revoke"), json!({}))
        .await;
    assert!(r.status().is_success());
    assert_eq!(preflight(&kw, PAGE).await.status(), StatusCode::FORBIDDEN);
}

/// The browser this machine has, if any.
fn chromium() -> Option<String> {
    if let Ok(path) = std::env::var("KEYWARD_TEST_CHROMIUM") {
        return Some(path);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_owned)
}

/// A page on one loopback origin calls the gateway on another with `fetch`,
/// as a browser app holding an ephemeral token does, and posts what it saw
/// back to the page server.
#[tokio::test]
async fn cross_origin_fetch_from_headless_chromium() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but no chromium: install the chromium package"
        );
        eprintln!(
            "skipping cross_origin_fetch_from_headless_chromium: no chromium on this machine"
        );
        return;
    };
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;

    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", page_listener.local_addr().unwrap());
    let parent = kw
        .create_key_with(json!({"policy": {"origins": [page_origin]}}))
        .await;
    let id = parent["id"].as_str().unwrap();
    let token: Value = kw
        .admin_post(&format!("/api/v1/keys/{id}/ephemeral"), json!({}))
        .await
        .json()
        .await
        .unwrap();
    let token = token["key"].as_str().unwrap();
    let (_, unlisted) = kw.create_key("other", "no-origins").await;

    let html = format!(
        r#"<!doctype html><script>
const call = (key) => fetch("{gw}/v1/chat/completions", {{
  method: "POST",
  headers: {{"Authorization": "Bearer " + key, "Content-Type": "application/json"}},
  body: JSON.stringify({{model: "gpt-4o-mini", messages: [{{role: "user", content: "hi"}}]}})
}}).then(async r => ({{status: r.status, body: await r.json()}}), e => ({{failed: String(e)}}));
Promise.all([call("{token}"), call("{unlisted}")]).then(results =>
  fetch("/report", {{method: "POST", body: JSON.stringify(results)}}));
</script>"#,
        gw = kw.url
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(html) }),
        )
        .route(
            "/report",
            axum::routing::post(move |body: String| async move {
                let _ = tx.send(body).await;
            }),
        );
    tokio::spawn(async move { axum::serve(page_listener, app).await });

    let profile = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(&browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("{page_origin}/"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let report = tokio::select! {
        r = rx.recv() => r.unwrap(),
        status = child.wait() => panic!("chromium exited before the page reported: {status:?}"),
    };
    let _ = child.kill().await;
    let results: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(results[0]["status"], 200, "the token's call: {report}");
    assert_eq!(results[0]["body"]["object"], "chat.completion", "{report}");
    assert_eq!(
        results[1]["status"], 403,
        "the unlisted key's call: {report}"
    );
    assert_eq!(
        results[1]["body"]["error"]["code"], "origin_not_allowed",
        "{report}"
    );
}
